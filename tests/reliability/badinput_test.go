package reliability

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

const cfgPath = "/etc/provision/provision.toml"

// baseConfig is a complete, valid config written by hand (not by an
// encoder) so cases can edit its text line by line.
func baseConfig(cp *controlplane.ControlPlane, id string) string {
	return fmt.Sprintf(`node_id = %q

[[hosts]]
name = "node-api.cp.internal"
ip = "127.0.0.1"

[[hosts]]
name = "ca.cp.internal"
ip = "127.0.0.1"

[ca]
url = %q
fingerprint = %q
token_file = "/run/provision/token"

[node_api]
url = %q
wait_path = "/v1/nodes/{node_id}/tasks/wait"
wait_timeout = "1s"

[paths]
hosts_file = "/etc/hosts"
pki_dir = "/var/lib/provision/pki"
state_dir = "/var/lib/provision"

[bootstrap]
deadline = "2s"
request_timeout = "500ms"
`, id, cp.CA.URL(), cp.CA.Fingerprint(), cp.API.URL())
}

type badCase struct {
	name    string
	cmd     string                                            // default "bootstrap"
	edit    func(cfg string) string                           // the config text
	prepare func(t *testing.T, n *badNode)                    // other files, servers
	exit    int                                               // documented exit code
	last    []string                                          // the last line must name these
	check   func(t *testing.T, n *badNode, r nodetest.Result) // extra assertions
}

type badNode struct {
	*node
}

func replace(old, new string) func(string) string {
	return func(s string) string {
		if !strings.Contains(s, old) {
			panic("case edits a line that is not in the base config: " + old)
		}
		return strings.Replace(s, old, new, 1)
	}
}

func dropLine(prefix string) func(string) string {
	return func(s string) string {
		var out []string
		found := false
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, prefix) && !found {
				found = true
				continue
			}
			out = append(out, l)
		}
		if !found {
			panic("no line " + prefix)
		}
		return strings.Join(out, "\n")
	}
}

func writeHosts(content string) func(t *testing.T, n *badNode) {
	return func(t *testing.T, n *badNode) {
		if err := os.WriteFile(n.Files.HostsPath, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func setToken(tok string) func(t *testing.T, n *badNode) {
	return func(t *testing.T, n *badNode) {
		if err := controlplane.WriteToken(n.Files.Root, "/run/provision/token", tok); err != nil {
			t.Fatal(err)
		}
	}
}

func mintToken(opts ...controlplane.TokenOption) func(t *testing.T, n *badNode) {
	return func(t *testing.T, n *badNode) {
		setToken(n.MintToken(opts...))(t, n)
	}
}

const (
	beginM = "# BEGIN provision managed block: do not edit, run 'provision hosts'"
	endM   = "# END provision managed block"
	tokF   = "/run/provision/token"
	hostsF = "/etc/hosts"
)

// TestBadInputMatrix runs the real binary on bad input of every kind: config
// syntax and keys, hosts files, tokens, CA and API answers. Each case must
// end with a last line that names the input (the key, the file or the token
// file), exit with its documented code (internal/cli's table), and leave
// every file that existed before byte-identical (new files such as the lock
// are allowed; nothing may be lost or changed).
func TestBadInputMatrix(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	html := startFake(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, "<html><body>Welcome to nginx!</body></html>")
	})
	caProxyHTML := startCAProxy(t, cp)
	caProxyHTML.setInject(func(r *http.Request, _ int) (int, http.Header, string, bool) {
		return 502, http.Header{"Content-Type": {"text/html"}}, "<html><body>502 Bad Gateway</body></html>", true
	})
	usedToken := func(t *testing.T, n *badNode) {
		tok, err := n.CP.Token(n.ID)
		if err != nil {
			t.Fatal(err)
		}
		// Redeem it from a throwaway root with the same node id.
		other := newNode(t, cp, n.ID, nil)
		controlplane.WriteToken(other.Files.Root, tokF, tok)
		cp.API.QueueTask(n.ID, controlplane.Task{Kind: "noop"})
		if r := other.bootstrap(); r.Code != 0 {
			t.Fatalf("redeeming the token elsewhere: %s", r)
		}
		setToken(tok)(t, n)
	}
	cases := []badCase{
		// config: syntax, keys, values (exit 3)
		{name: "toml syntax", edit: replace(`node_id = "gpu-bad"`, `node_id = "gpu-bad`), exit: 3, last: []string{cfgPath, "line 1"}},
		{name: "toml table syntax", edit: replace("[ca]", "[ca"), exit: 3, last: []string{cfgPath}},
		{name: "unknown top-level key", edit: replace(`node_id = "gpu-bad"`, "node_id = \"gpu-bad\"\nnodeid = \"x\""), exit: 3, last: []string{"nodeid"}},
		{name: "misspelt key in a table", edit: replace(`request_timeout = "500ms"`, `request_timout = "500ms"`), exit: 3, last: []string{"bootstrap.request_timout"}},
		{name: "unknown table", edit: func(s string) string { return s + "\n[extra]\nx = 1\n" }, exit: 3, last: []string{"extra"}},
		{name: "missing node_id", edit: dropLine("node_id"), exit: 3, last: []string{"node_id"}},
		{name: "missing ca.url", edit: dropLine("url = \"https://ca."), exit: 3, last: []string{"ca.url"}},
		{name: "missing ca.fingerprint", edit: dropLine("fingerprint"), exit: 3, last: []string{"ca.fingerprint"}},
		{name: "missing node_api.url", edit: dropLine("url = \"https://node-api"), exit: 3, last: []string{"node_api.url"}},
		{name: "IP literal in node_api.url", edit: replace("https://node-api.cp.internal", "https://127.0.0.1"), exit: 3, last: []string{"node_api.url"}},
		{name: "http node_api.url", edit: replace("https://node-api.cp.internal", "http://node-api.cp.internal"), exit: 3, last: []string{"node_api.url"}},
		{name: "path in node_api.url", edit: func(s string) string {
			return strings.Replace(s, cp.API.URL()+`"`, cp.API.URL()+`/v1"`, 1)
		}, exit: 3, last: []string{"node_api.url"}},
		{name: "http ca.url", edit: replace("https://ca.cp.internal", "http://ca.cp.internal"), exit: 3, last: []string{"ca.url"}},
		{name: "fingerprint too short", edit: replace(cp.CA.Fingerprint(), "abc123"), exit: 3, last: []string{"ca.fingerprint"}},
		{name: "fingerprint not hex", edit: replace(cp.CA.Fingerprint(), strings.Repeat("zz", 32)), exit: 3, last: []string{"ca.fingerprint"}},
		{name: "wait_path without node_id", edit: replace("/v1/nodes/{node_id}/tasks/wait", "/v1/tasks/wait"), exit: 3, last: []string{"node_api.wait_path"}},
		{name: "deadline not a duration", edit: replace(`deadline = "2s"`, `deadline = "soon"`), exit: 3, last: []string{"bootstrap.deadline"}},
		{name: "deadline too short", edit: replace(`deadline = "2s"`, `deadline = "10ms"`), exit: 3, last: []string{"bootstrap.deadline"}},
		{name: "request_timeout too long", edit: replace(`request_timeout = "500ms"`, `request_timeout = "1h"`), exit: 3, last: []string{"bootstrap.request_timeout"}},
		{name: "relative token_file", edit: replace(`token_file = "/run/provision/token"`, `token_file = "token"`), exit: 3, last: []string{"ca.token_file"}},
		{name: "relative pki_dir", edit: replace(`pki_dir = "/var/lib/provision/pki"`, `pki_dir = "pki"`), exit: 3, last: []string{"paths.pki_dir"}},
		{name: "bad hosts ip", edit: replace(`ip = "127.0.0.1"`, `ip = "10.0.0.300"`), exit: 3, last: []string{"hosts[0].ip"}},
		{name: "bad hosts name", edit: replace(`name = "node-api.cp.internal"`, `name = "node api!"`), exit: 3, last: []string{"hosts[0].name"}},
		{name: "bad node_id", edit: replace(`node_id = "gpu-bad"`, `node_id = "gpu bad/../x"`), exit: 3, last: []string{"node_id"}},
		{name: "node_id wrong type", edit: replace(`node_id = "gpu-bad"`, `node_id = 42`), exit: 3, last: []string{"node_id"}},
		{name: "duplicate key", edit: replace(`node_id = "gpu-bad"`, "node_id = \"gpu-bad\"\nnode_id = \"gpu-bad\""), exit: 3, last: []string{"node_id"}},
		{name: "empty config", edit: func(string) string { return "" }, exit: 3, last: []string{cfgPath}},
		{name: "binary config", edit: func(string) string { return "\x00\xff\xfe\x01garbage" }, exit: 3, last: []string{cfgPath}},
		{name: "config missing", edit: func(string) string { return "" }, prepare: func(t *testing.T, n *badNode) {
			os.Remove(filepath.Join(n.Files.Root, cfgPath))
		}, exit: 3, last: []string{cfgPath}},

		// config that cannot work (issue 12 items 4, 6, 9): each was accepted
		// and then broke the node, hung until the deadline or burnt CPU.
		{name: "pki_dir traversal to /etc", edit: replace(`pki_dir = "/var/lib/provision/pki"`, `pki_dir = "/var/lib/provision/../../../etc"`), exit: 3, last: []string{"paths.pki_dir", "'..'"}},
		{name: "pki_dir the root", edit: replace(`pki_dir = "/var/lib/provision/pki"`, `pki_dir = "/"`), exit: 3, last: []string{"paths.pki_dir", "root directory"}},
		{name: "state_dir a system directory", edit: replace(`state_dir = "/var/lib/provision"`, `state_dir = "/var/lib"`), exit: 3, last: []string{"paths.state_dir", "/var/lib"}},
		{name: "token_file with ..", edit: replace(`token_file = "/run/provision/token"`, `token_file = "/run/provision/../../etc/shadow"`), exit: 3, last: []string{"ca.token_file"}},
		{name: "hosts_file unclean", edit: replace(`hosts_file = "/etc/hosts"`, `hosts_file = "/etc//hosts"`), exit: 3, last: []string{"paths.hosts_file"}},
		{name: "node API port 99999", edit: func(s string) string { return strings.Replace(s, cp.API.URL(), withPort(cp.API.URL(), 99999), 1) },
			exit: 3, last: []string{"node_api.url", "99999"}},
		{name: "CA port 0", edit: func(s string) string { return strings.Replace(s, cp.CA.URL(), withPort(cp.CA.URL(), 0), 1) },
			exit: 3, last: []string{"ca.url"}},
		{name: "IPv4-mapped hosts ip", edit: replace(`ip = "127.0.0.1"`, `ip = "::ffff:127.0.0.1"`), exit: 3, last: []string{"hosts[0].ip", `"127.0.0.1"`}},
		{name: "deadline 0s is not the default", edit: replace(`deadline = "2s"`, `deadline = "0s"`), exit: 3, last: []string{"bootstrap.deadline", "0s"}},
		{name: "request_timeout 0s is not the default", edit: replace(`request_timeout = "500ms"`, `request_timeout = "0s"`), exit: 3, last: []string{"bootstrap.request_timeout"}},
		{name: "wait_timeout past the ingress's timeout", edit: replace(`wait_timeout = "1s"`, `wait_timeout = "90s"`), exit: 3, last: []string{"node_api.wait_timeout"}},
		// timeouts that cannot fit in the deadline (issue 24 item 6): each
		// was accepted, and verify's budget, built from request_timeout,
		// ran for minutes past a 2s deadline.
		{name: "request_timeout longer than the deadline", cmd: "verify", edit: replace(`request_timeout = "500ms"`, `request_timeout = "5m"`),
			exit: 3, last: []string{"bootstrap.request_timeout", "bootstrap.deadline (2s)"}},
		{name: "wait_timeout plus request_timeout past the deadline", edit: replace(`request_timeout = "500ms"`, `request_timeout = "1500ms"`),
			exit: 3, last: []string{"node_api.wait_timeout", "bootstrap.request_timeout", "bootstrap.deadline (2s)"}},
		{name: "post_hook_timeout longer than the deadline", cmd: "renew", edit: func(s string) string {
			return s + "\n[renew]\npost_hook = [\"/bin/true\"]\npost_hook_timeout = \"5m\"\n"
		}, exit: 3, last: []string{"renew.post_hook_timeout", "bootstrap.deadline (2s)"}},
		{name: "empty pki_dir is not the default", edit: replace(`pki_dir = "/var/lib/provision/pki"`, `pki_dir = ""`), exit: 3, last: []string{"paths.pki_dir"}},
		{name: "45,000 unknown keys", edit: func(s string) string {
			var b strings.Builder
			for i := range 45000 {
				fmt.Fprintf(&b, "k%05d = 1\n", i)
			}
			return b.String() + s
		}, exit: 3, last: []string{"k00000", "and 44980 more problems"},
			check: func(t *testing.T, n *badNode, r nodetest.Result) {
				if l := len(r.Stdout) + len(r.Stderr); l > 16<<10 {
					t.Errorf("%d bytes of output for a config error, want a short report", l)
				}
			}},
		{name: "wait_timeout 0s works: no long poll, not 1s", edit: replace(`wait_timeout = "1s"`, `wait_timeout = "0s"`), exit: 0, last: []string{"done"},
			check: func(t *testing.T, n *badNode, r nodetest.Result) {
				waits := 0
				for _, q := range n.CP.API.Requests() {
					if strings.Contains(q.Path, "/"+n.ID+"/") {
						waits++
						if q.RawQuery != "timeout=0" {
							t.Errorf("tasks/wait asked with %q, want timeout=0", q.RawQuery)
						}
					}
				}
				if waits == 0 {
					t.Errorf("no tasks/wait request from %s", n.ID)
				}
			}},

		// hosts file (exit 10)
		{name: "hosts lone BEGIN", prepare: writeHosts("127.0.0.1 localhost\n" + beginM + "\n10.0.0.1 x\n"), exit: 10, last: []string{hostsF, "BEGIN"}},
		{name: "hosts lone END", prepare: writeHosts("127.0.0.1 localhost\n" + endM + "\n"), exit: 10, last: []string{hostsF, "END"}},
		{name: "hosts duplicate BEGIN", prepare: writeHosts(beginM + "\n" + beginM + "\n" + endM + "\n"), exit: 10, last: []string{hostsF}},
		{name: "hosts END before BEGIN", prepare: writeHosts(endM + "\n" + beginM + "\n"), exit: 10, last: []string{hostsF}},
		{name: "hosts conflicting line", prepare: writeHosts("127.0.0.1 localhost\n10.9.9.9 node-api.cp.internal\n"), exit: 10, last: []string{hostsF, "node-api.cp.internal"}},
		{name: "hosts binary", prepare: writeHosts("127.0.0.1 localhost\n\x00\x01\x02\xff\n"), exit: 10, last: []string{hostsF}},
		{name: "hosts huge", prepare: writeHosts(strings.Repeat("# padding line of a file that is not a hosts file\n", 100000)), exit: 10, last: []string{hostsF}},
		{name: "hosts CRLF works", prepare: writeHosts("127.0.0.1 localhost\r\n" + userLine + "\r\n"), exit: 0, last: []string{"done"},
			check: func(t *testing.T, n *badNode, r nodetest.Result) {
				b, _ := os.ReadFile(n.Files.HostsPath)
				if !bytes.HasPrefix(b, []byte("127.0.0.1 localhost\r\n"+userLine+"\r\n")) || bytes.Count(b, []byte("\n")) != bytes.Count(b, []byte("\r\n")) {
					t.Errorf("CRLF hosts file not kept as CRLF with its lines:\n%q", b)
				}
			}},

		// token (exit 20): the last line must name the token file
		{name: "token missing", prepare: func(t *testing.T, n *badNode) { os.Remove(n.Files.TokenPath) }, exit: 20, last: []string{tokF}},
		{name: "token empty", prepare: setToken(""), exit: 20, last: []string{tokF}},
		{name: "token garbage", prepare: setToken("not-a-token"), exit: 20, last: []string{tokF}},
		{name: "token garbage JWT shape", prepare: setToken("aaa.bbb.ccc"), exit: 20, last: []string{tokF}},
		{name: "token expired", prepare: mintToken(controlplane.TokenExpired()), exit: 20, last: []string{tokF}},
		{name: "token not yet valid", prepare: mintToken(controlplane.TokenNotYetValid()), exit: 20, last: []string{tokF}},
		{name: "token for another node", prepare: mintToken(controlplane.TokenForNode("gpu-other")), exit: 20, last: []string{tokF, "gpu-other"}},
		{name: "token for another CA", prepare: mintToken(controlplane.TokenWrongSHA()), exit: 20, last: []string{tokF}},
		{name: "token unknown signing key", prepare: mintToken(controlplane.TokenUnknownKey()), exit: 20, last: []string{tokF}},
		{name: "token already used", prepare: usedToken, exit: 20, last: []string{tokF}},

		// CA and API answers
		{name: "wrong fingerprint", edit: replace(cp.CA.Fingerprint(), strings.Repeat("ab", 32)), exit: 13, last: []string{"ca.fingerprint"}},
		{name: "CA answering HTML", edit: func(s string) string { return strings.Replace(s, cp.CA.URL(), withPort(cp.CA.URL(), html.port()), 1) },
			exit: 13, last: []string{"ca.url"}},
		{name: "CA behind a proxy answering 502 HTML", edit: func(s string) string {
			return strings.Replace(s, cp.CA.URL(), withPort(cp.CA.URL(), caProxyHTML.port()), 1)
		}, exit: 13, last: []string{"CA"}},
		{name: "API answering HTML 200", prepare: func(t *testing.T, n *badNode) {
			n.CP.API.QueueTask(n.ID, controlplane.Task{Kind: "noop"})
			if r := n.bootstrap(); r.Code != 0 {
				t.Fatalf("first bootstrap: %s", r)
			}
			n.CP.API.FailAlways(controlplane.Fault{Status: 200, Body: "<html><body>Welcome</body></html>"})
		}, exit: 17, last: []string{"layer route", "not a JSON task"}},
	}
	var seq atomic.Int64
	passed := atomic.Int64{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("gpu-bad-%d", seq.Add(1))
			if strings.HasPrefix(tc.name, "API") {
				id = "gpu-bad-api"
			}
			n := &badNode{node: newNode(t, cp, id, nil)}
			text := baseConfig(cp, "gpu-bad")
			if tc.edit != nil {
				text = tc.edit(text)
			}
			text = strings.Replace(text, `node_id = "gpu-bad"`, fmt.Sprintf("node_id = %q", id), 1)
			if err := os.WriteFile(n.Files.ConfigPath, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			// Past the config, the hosts block is already in place, so
			// "nothing changed" covers the hosts file too.
			if tc.exit != 3 && tc.exit != 10 && tc.exit != 0 {
				if r := n.run(nil, "hosts apply"); r.Code != 0 {
					t.Fatalf("hosts apply: %s", r)
				}
			}
			if tc.prepare != nil {
				tc.prepare(t, n)
			}
			if strings.HasPrefix(tc.name, "API") {
				defer cp.API.ClearFaults()
			}
			before := takeSnapshot(t, n.Files.Root)
			cmd := tc.cmd
			if cmd == "" {
				cmd = "bootstrap"
			}
			r := n.run(nil, cmd)
			if r.Code != tc.exit {
				t.Fatalf("exit %d, want %d\n%s", r.Code, tc.exit, r)
			}
			last := r.LastOutputLine()
			for _, s := range tc.last {
				if !strings.Contains(last, s) {
					t.Errorf("last line does not name %q:\n%s", s, last)
				}
			}
			if tc.exit != 0 {
				if l := lost(before, takeSnapshot(t, n.Files.Root)); len(l) > 0 {
					t.Errorf("files changed by a failed run: %v", l)
				}
			}
			if tc.check != nil {
				tc.check(t, n, r)
			}
			if !t.Failed() {
				passed.Add(1)
			}
		})
	}
	t.Logf("bad-input: %d cases, %d passed, %d failed", len(cases), passed.Load(), int64(len(cases))-passed.Load())
	if len(cases) < 40 {
		t.Errorf("only %d cases", len(cases))
	}
}
