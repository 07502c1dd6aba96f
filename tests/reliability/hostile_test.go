package reliability

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// hostileRun is one command run on a hostile node and what it must give.
type hostileRun struct {
	cmd   string // "bootstrap", "verify", "renew", "renew --check", "renew --force"
	text  bool   // the text report (else --format json)
	exit  int
	layer string   // JSON: the failed layer ("" for exit 0)
	owner string   // JSON: its owner ("" not checked)
	says  []string // in the summary (JSON) or anywhere in stdout (text)
}

// hostileCase is a machine left in a hostile state (issue 24): a shared
// directory as pki_dir or state_dir, a FIFO where provision reads, a peer
// or hook writing control characters, an API handing out odd tasks.
type hostileCase struct {
	name    string
	cfg     func(*controlplane.NodeConfig)
	booted  bool                        // a healthy bootstrap first
	plant   func(t *testing.T, n *node) // the hostile state
	runs    []hostileRun
	changes bool                        // the runs may change files (a run that succeeds)
	check   func(t *testing.T, n *node) // after the runs
}

// TestHostileState runs the real binary on a node in a hostile state and
// checks, for each command: the documented exit code, layer and owner; a
// summary naming what it refused; no hang (a FIFO read would block until
// nodetest.RunTimeout kills it, which fails the test); and, for a refusal,
// every file that existed before unchanged. It prints the count as
// "hostile-state: N cases, M runs".
func TestHostileState(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	var cases []hostileCase
	cases = append(cases, foreignDirCases(cp)...)
	cases = append(cases, blockingReadCases()...)
	cases = append(cases, peerTextCases(t, cp)...)
	cases = append(cases, taskCases()...)
	var runs, passed atomic.Int64
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := plantedNode(t, cp, fmt.Sprintf("gpu-hostile-%02d", i), tc.cfg, tc.booted, tc.plant)
			for _, hr := range tc.runs {
				before := safeSnapshot(t, n.Files.Root)
				runHostile(t, n, hr)
				runs.Add(1)
				if !tc.changes && hr.exit != 0 {
					if l := lost(before, safeSnapshot(t, n.Files.Root)); len(l) > 0 {
						t.Errorf("%s changed files it refused: %v", hr.cmd, l)
					}
				}
			}
			if tc.check != nil {
				tc.check(t, n)
			}
			if !t.Failed() {
				passed.Add(1)
			}
		})
	}
	t.Logf("hostile-state: %d cases, %d runs, %d passed, %d failed", len(cases), runs.Load(), passed.Load(), int64(len(cases))-passed.Load())
}

func runHostile(t *testing.T, n *node, hr hostileRun) {
	t.Helper()
	args := strings.Fields(hr.cmd)
	if hr.text {
		r := n.Run(args...)
		if r.Code != hr.exit {
			t.Fatalf("%s: exit %d, want %d\n%s", hr.cmd, r.Code, hr.exit, r)
		}
		for _, s := range hr.says {
			if !strings.Contains(r.Stdout, s) {
				t.Errorf("%s: the output does not say %q:\n%s", hr.cmd, s, r.Stdout)
			}
		}
		checkTerminalSafe(t, hr.cmd, r.Stdout+r.Stderr)
		return
	}
	r := n.RunJSON(args[0], args[1:]...)
	rep := r.Report
	if r.Code != hr.exit || rep.FailedLayer != hr.layer || (hr.owner != "" && rep.Owner != hr.owner) {
		t.Fatalf("%s: exit %d layer %q owner %q, want %d %q %q\n%s", hr.cmd, r.Code, rep.FailedLayer, rep.Owner, hr.exit, hr.layer, hr.owner, r)
	}
	for _, s := range hr.says {
		if !strings.Contains(rep.Summary, s) {
			t.Errorf("%s: the summary does not say %q: %s", hr.cmd, s, rep.Summary)
		}
	}
	if hr.exit != 0 && rep.Remedy == "" {
		t.Errorf("%s: a failure without a remedy: %s", hr.cmd, rep.Summary)
	}
	t.Logf("ran %s, exit %d %s/%s: %.160s", hr.cmd, r.Code, rep.FailedLayer, rep.Owner, rep.Summary)
}

// checkTerminalSafe fails if out could drive a terminal: a control
// character other than a line break, a bidi control, or bytes that are not
// UTF-8.
func checkTerminalSafe(t *testing.T, cmd, out string) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Errorf("%s: the output is not valid UTF-8: %q", cmd, out)
	}
	for _, r := range out {
		if r != '\n' && (unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)) {
			t.Errorf("%s: the output carries %U: %q", cmd, r, out)
			return
		}
	}
}

// safeSnapshot is takeSnapshot for a tree that may hold FIFOs (never
// opened: a FIFO is recorded by its kind).
func safeSnapshot(t *testing.T, root string) snapshot {
	t.Helper()
	s := snapshot{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		info, err := os.Lstat(p)
		if err != nil {
			return nil
		}
		switch m := info.Mode(); {
		case m&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			s[rel] = "link " + l
		case m.IsDir():
			s[rel] = fmt.Sprintf("dir %v", m.Perm())
		case m.IsRegular():
			b, _ := os.ReadFile(p)
			sum := sha256.Sum256(b)
			s[rel] = fmt.Sprintf("file %v %s", m.Perm(), hex.EncodeToString(sum[:8]))
		default:
			s[rel] = "special " + m.String()
		}
		return nil
	})
	return s
}

// writeFiles writes name -> content under dir (a node path), creating dir
// with mode.
func writeFiles(t *testing.T, n *node, dir string, mode os.FileMode, files map[string]string) {
	t.Helper()
	d := n.Path(dir)
	if err := os.MkdirAll(d, mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, mode)
	for name, content := range files {
		p := filepath.Join(d, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// fifoAt replaces the node path p with a FIFO.
func fifoAt(p string) func(t *testing.T, n *node) {
	return func(t *testing.T, n *node) {
		t.Helper()
		host := n.Path(p)
		os.MkdirAll(filepath.Dir(host), 0o755)
		os.Remove(host)
		if err := syscall.Mkfifo(host, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// foreignDirCases: issue 24 item 1.
func foreignDirCases(cp *controlplane.ControlPlane) []hostileCase {
	refusedEverywhere := func(key, dir string, says ...string) []hostileRun {
		var rs []hostileRun
		for _, cmd := range []string{"bootstrap", "renew", "renew --check", "verify"} {
			rs = append(rs, hostileRun{cmd: cmd, exit: 3, layer: "config", owner: "node", says: append([]string{key + ` = "` + dir + `"`, "not provision's own directory"}, says...)})
		}
		return rs
	}
	rootPEM := string(cp.CA.RootPEM())
	return []hostileCase{
		{name: "pki_dir a shared /etc/pki holding ca.pem and cert.pem (the repro)",
			cfg: func(c *controlplane.NodeConfig) { c.Paths.PKIDir = "/etc/pki" },
			plant: func(t *testing.T, n *node) {
				writeFiles(t, n, "/etc/pki", 0o755, map[string]string{"ca.pem": rootPEM, "cert.pem": rootPEM})
			},
			runs: refusedEverywhere("paths.pki_dir", "/etc/pki", "ca.pem")},
		{name: "pki_dir /etc/ssl",
			cfg: func(c *controlplane.NodeConfig) { c.Paths.PKIDir = "/etc/ssl" },
			plant: func(t *testing.T, n *node) {
				writeFiles(t, n, "/etc/ssl", 0o755, map[string]string{"openssl.cnf": "[req]\n", "certs/ca-certificates.crt": rootPEM, "private/ssl-cert-snakeoil.key": "KEY"})
			},
			runs: refusedEverywhere("paths.pki_dir", "/etc/ssl", "openssl.cnf")},
		{name: "state_dir a data directory",
			cfg: func(c *controlplane.NodeConfig) { c.Paths.StateDir = "/srv/data" },
			plant: func(t *testing.T, n *node) {
				writeFiles(t, n, "/srv/data", 0o755, map[string]string{"db.sqlite": "SQLite format 3"})
			},
			runs: refusedEverywhere("paths.state_dir", "/srv/data", "db.sqlite")},
		{name: "state_dir a link to somebody else's volume",
			plant: func(t *testing.T, n *node) {
				writeFiles(t, n, "/mnt/volume", 0o755, map[string]string{"postgres/PG_VERSION": "16"})
				os.RemoveAll(n.Files.StateDir)
				os.MkdirAll(filepath.Dir(n.Files.StateDir), 0o755)
				if err := os.Symlink("/mnt/volume", n.Files.StateDir); err != nil {
					t.Fatal(err)
				}
			},
			runs: refusedEverywhere("paths.state_dir", "/var/lib/provision", "postgres")},
		{name: "state_dir a link to an empty volume (a documented layout) works",
			plant: func(t *testing.T, n *node) {
				writeFiles(t, n, "/mnt/volume", 0o755, nil)
				os.RemoveAll(n.Files.StateDir)
				os.MkdirAll(filepath.Dir(n.Files.StateDir), 0o755)
				if err := os.Symlink("/mnt/volume", n.Files.StateDir); err != nil {
					t.Fatal(err)
				}
				cp.API.QueueTask(n.ID, controlplane.Task{Kind: "noop"})
			},
			runs:    []hostileRun{{cmd: "bootstrap"}, {cmd: "verify"}},
			changes: true,
			check: func(t *testing.T, n *node) {
				if st, err := os.Lstat(n.Files.StateDir); err != nil || st.Mode()&os.ModeSymlink == 0 {
					t.Errorf("state_dir is no longer the link: %v", err)
				}
				if _, err := os.Stat(n.Path("/mnt/volume/pki/current/key.pem")); err != nil {
					t.Errorf("the key is not on the volume: %v", err)
				}
			}},
	}
}

// blockingReadCases: issue 24 item 4. Each FIFO would hang the command.
func blockingReadCases() []hostileCase {
	state := controlplane.DefaultStateDir
	return []hostileCase{
		{name: "a FIFO at state_dir/renew.json", booted: true, plant: fifoAt(state + "/renew.json"),
			runs: []hostileRun{
				{cmd: "verify", exit: 21, layer: "state", owner: "node", says: []string{"renew.json is a FIFO"}},
				{cmd: "renew --check", exit: 21, layer: "state", owner: "node", says: []string{"renew.json is a FIFO"}},
				{cmd: "renew", exit: 21, layer: "state", owner: "node", says: []string{"renew.json is a FIFO"}},
				{cmd: "bootstrap", exit: 21, layer: "state", owner: "node", says: []string{"renew.json is a FIFO"}},
			}},
		{name: "a FIFO at receipt.json", booted: true, plant: fifoAt(state + "/receipt.json"),
			runs: []hostileRun{
				{cmd: "bootstrap", exit: 21, layer: "state", owner: "node", says: []string{"receipt.json is a FIFO"}},
				{cmd: "verify", exit: 21, layer: "state", owner: "node", says: []string{"receipt.json is a FIFO"}},
			}},
		{name: "a FIFO at the key-exposure record", booted: true, plant: fifoAt(state + "/key-exposed.json"),
			runs: []hostileRun{{cmd: "bootstrap", exit: 21, layer: "state", owner: "node", says: []string{"key-exposed.json is a FIFO"}}}},
		{name: "a FIFO at /etc/hosts", booted: true, plant: fifoAt("/etc/hosts"),
			runs: []hostileRun{
				{cmd: "verify", exit: 10, layer: "hosts", owner: "node", says: []string{"/etc/hosts"}},
				{cmd: "bootstrap", exit: 10, layer: "hosts", owner: "node", says: []string{"/etc/hosts", "FIFO"}},
			}},
		{name: "a FIFO among cloud-init's config files", booted: true, plant: fifoAt("/etc/cloud/cloud.cfg.d/99-hostile.cfg"),
			runs: []hostileRun{{cmd: "verify"}}},
		{name: "a FIFO at /etc/machine-id", plant: fifoAt("/etc/machine-id"),
			runs: []hostileRun{{cmd: "bootstrap"}}, changes: true},
		{name: "a FIFO in place of the current key", booted: true, plant: fifoAt(controlplane.DefaultPKIDir + "/current/key.pem"),
			runs: []hostileRun{
				{cmd: "verify", exit: 12, layer: "credentials", owner: "node", says: []string{"key.pem is a FIFO"}},
				{cmd: "renew --check", exit: 31, layer: "credentials", owner: "node", says: []string{"key.pem is a FIFO"}},
			}},
	}
}

// peerTextCases: issue 24 item 5. What a peer or a hook says reaches the
// text report inert.
func peerTextCases(t *testing.T, cp *controlplane.ControlPlane) []hostileCase {
	forged := "CA says no\n[PASS] ca-root        the pinned root is served (forged)\n\x1b[2K\x1b[1A\x1b[32mall good\x1b[0m\r\xff\xfe"
	proxy := startCAProxy(t, cp)
	proxy.setInject(func(r *http.Request, _ int) (int, http.Header, string, bool) {
		if strings.HasPrefix(r.URL.Path, "/root") { // the roots fetch's first request, /roots or /root/<fingerprint>
			return 500, http.Header{"Content-Type": {"text/plain"}}, forged, true
		}
		return 0, nil, "", false
	})
	hook := filepath.Join(t.TempDir(), "reload-agent")
	script := "#!/bin/sh\nprintf 'reloading\\r[PASS] hook ok\\033[2J\\033]0;owned\\007\\377\\376\\n'\nexit 1\n"
	if err := os.WriteFile(hook, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return []hostileCase{
		{name: "a CA error body forging a check line and escapes", booted: true,
			plant: func(t *testing.T, n *node) {
				n.Cfg.CA.URL = withPort(n.Cfg.CA.URL, proxy.port())
				n.RewriteConfig()
			},
			runs: []hostileRun{{cmd: "verify", text: true, exit: 13, says: []string{"[FAIL] ca-root", `\x1b[2K`, `\xff`}}},
			check: func(t *testing.T, n *node) {
				r := n.Run("verify")
				for _, l := range strings.Split(r.Stdout, "\n") {
					if strings.HasPrefix(l, "[PASS] ca-root") {
						t.Errorf("a forged line reached the report: %q", l)
					}
				}
			}},
		{name: "hook output with CR, escapes and invalid UTF-8", booted: true, changes: true,
			cfg: func(c *controlplane.NodeConfig) {
				c.Renew = &controlplane.RenewConfig{PostHook: []string{hook}, PostHookTimeout: "5s"}
			},
			runs: []hostileRun{{cmd: "renew --force", text: true, exit: 22, says: []string{"renew.post_hook failed", `\x1b[2J`, `\xff`}}}},
	}
}

// taskCases: issue 24 item 3. Raw bodies go through the real node API,
// after its identity check.
func taskCases() []hostileCase {
	queue := func(bodies ...string) func(t *testing.T, n *node) {
		return func(t *testing.T, n *node) {
			for i, b := range bodies {
				n.CP.API.QueueTask(n.ID, controlplane.Task{ID: fmt.Sprint("raw-", i), Raw: []byte(b)})
			}
		}
	}
	tasksIn := func(want map[string]string) func(t *testing.T, n *node) {
		return func(t *testing.T, n *node) {
			t.Helper()
			dir := filepath.Join(n.Files.StateDir, "tasks")
			ents, _ := os.ReadDir(dir)
			got := map[string]string{}
			for _, e := range ents {
				b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
				got[e.Name()] = strings.TrimSuffix(string(b), "\n")
			}
			for name, body := range want {
				if strings.HasSuffix(name, "*") { // a redelivery: any digest
					found := false
					for g, gb := range got {
						if strings.HasPrefix(g, strings.TrimSuffix(name, "*")) && gb == body {
							found = true
						}
					}
					if !found {
						t.Errorf("no %s holding %.60s; tasks: %v", name, body, keys(got))
					}
					continue
				}
				if got[name] != body {
					t.Errorf("%s holds %.60q, want %.60q; tasks: %v", name, got[name], body, keys(got))
				}
			}
			// The bootstrap's noop task is there too.
			if len(got) != len(want)+1 {
				t.Errorf("tasks %v, want %d of them", keys(got), len(want)+1)
			}
		}
	}
	large := `{"id":"large","pad":"` + strings.Repeat("x", 3<<20) + `"}`
	huge := `{"id":"huge","pad":"` + strings.Repeat("x", probe.MaxTask) + `"}`
	return []hostileCase{
		{name: "the same task id redelivered with another payload", booted: true, changes: true,
			plant: queue(`{"id":"t-7","kind":"reimage","image":"a"}`, `{"id":"t-7","kind":"reimage","image":"b"}`),
			runs:  []hostileRun{{cmd: "verify"}, {cmd: "verify"}},
			check: tasksIn(map[string]string{"t-7.json": `{"id":"t-7","kind":"reimage","image":"a"}`, "t-7.redelivered-*": `{"id":"t-7","kind":"reimage","image":"b"}`})},
		{name: "numeric task ids past float precision", booted: true, changes: true,
			plant: queue(`{"id":12345678901234567891,"kind":"drain"}`, `{"id":12345678901234567892,"kind":"reboot"}`),
			runs:  []hostileRun{{cmd: "verify"}, {cmd: "verify"}},
			check: tasksIn(map[string]string{"12345678901234567891.json": `{"id":12345678901234567891,"kind":"drain"}`, "12345678901234567892.json": `{"id":12345678901234567892,"kind":"reboot"}`})},
		{name: "a task of 3 MiB", booted: true, changes: true, plant: queue(large),
			runs: []hostileRun{{cmd: "verify"}}, check: tasksIn(map[string]string{"large.json": large})},
		{name: "a task over the bound", booted: true, plant: queue(huge),
			runs:  []hostileRun{{cmd: "verify", exit: 19, layer: "tasks-wait", owner: "api", says: []string{"larger than", "not handed off"}}},
			check: tasksIn(map[string]string{})},
		{name: "a 200 whose body is JSON null", booted: true, plant: queue("null", "null"),
			runs: []hostileRun{
				{cmd: "verify", exit: 19, layer: "tasks-wait", owner: "api", says: []string{"not a task"}},
				{cmd: "bootstrap", exit: 19, layer: "tasks-wait", owner: "api", says: []string{"not a task"}},
			},
			check: tasksIn(map[string]string{})},
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

var _ = nodetest.RunTimeout // a run that hangs is killed at this bound and fails

// plantedNode is a node for a hostile-state case: bootstrapped first when
// booted (a task queued, so the proof's poll has one to hand off), then
// plant, when set, puts the hostile state in place.
func plantedNode(t *testing.T, cp *controlplane.ControlPlane, id string, cfg func(*controlplane.NodeConfig), booted bool, plant func(*testing.T, *node)) *node {
	t.Helper()
	n := newNode(t, cp, id, cfg)
	if booted {
		cp.API.QueueTask(n.ID, controlplane.Task{Kind: "noop"})
		wantExit(t, n.bootstrap(), 0)
	}
	if plant != nil {
		plant(t, n)
	}
	return n
}
