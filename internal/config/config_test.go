package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const fp = "3f2a9c1d0b7e6a5f4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5"

// full is a valid config with every key set; line numbers matter to the
// tests below, which blank or replace single lines so the rest keep theirs.
var full = []string{
	/* 1 */ `node_id = "gpu-0042"`,
	/* 2 */ ``,
	/* 3 */ `[[hosts]]`,
	/* 4 */ `name = "node-api.cp.internal"`,
	/* 5 */ `ip   = "10.40.0.10"`,
	/* 6 */ ``,
	/* 7 */ `[ca]`,
	/* 8 */ `url         = "https://ca.cp.internal:9000"`,
	/* 9 */ `fingerprint = "` + fp + `"`,
	/* 10 */ `token_file  = "/run/provision/token"`,
	/* 11 */ ``,
	/* 12 */ `[node_api]`,
	/* 13 */ `url          = "https://node-api.cp.internal:8443"`,
	/* 14 */ `wait_path    = "/v1/nodes/{node_id}/tasks/wait"`,
	/* 15 */ `wait_timeout = "1s"`,
	/* 16 */ ``,
	/* 17 */ `[paths]`,
	/* 18 */ `hosts_file = "/etc/hosts"`,
	/* 19 */ `pki_dir    = "/var/lib/provision/pki"`,
	/* 20 */ `state_dir  = "/var/lib/provision"`,
	/* 21 */ ``,
	/* 22 */ `[bootstrap]`,
	/* 23 */ `deadline        = "10m"`,
	/* 24 */ `request_timeout = "5s"`,
}

// with returns the full config with the given 1-based lines replaced.
func with(repl map[int]string) string {
	ls := append([]string(nil), full...)
	for n, s := range repl {
		ls[n-1] = s
	}
	return strings.Join(ls, "\n") + "\n"
}

type want struct {
	key  string
	line int
	msg  string // substring of Problem.Msg
}

func TestParseBad(t *testing.T) {
	dupHosts := with(map[int]string{6: `[[hosts]]
name = "NODE-API.cp.internal"
ip = "10.40.0.11"`})
	tests := []struct {
		name  string
		toml  string
		want  []want
		never string // must not appear in the error text
	}{
		{name: "unknown top-level key with did-you-mean", toml: with(map[int]string{2: `nodeid = "x"`}),
			want: []want{{"nodeid", 2, `unknown key (did you mean "node_id"?)`}}},
		{name: "unknown key inside [ca]", toml: with(map[int]string{11: `fingerprnt = "x"`}),
			want: []want{{"ca.fingerprnt", 11, `unknown key (did you mean "ca.fingerprint"?)`}}},
		{name: "unknown key inside [[hosts]] without a close match", toml: with(map[int]string{6: `aliases = ["x"]`}),
			want: []want{{"hosts.aliases", 6, "unknown key"}}},
		{name: "misspelt table", toml: with(map[int]string{22: `[bootstrp]`}),
			want: []want{{"bootstrp", 22, `unknown key (did you mean "bootstrap"?)`}, {"bootstrp.deadline", 23, "unknown key"}, {"bootstrp.request_timeout", 24, "unknown key"}}},
		{name: "unknown key inside [node_api] close to a real one", toml: with(map[int]string{16: `wait_timout = "2s"`}),
			want: []want{{"node_api.wait_timout", 16, `did you mean "node_api.wait_timeout"?`}}},
		{name: "missing node_id", toml: with(map[int]string{1: ``}),
			want: []want{{"node_id", 0, "required"}}},
		{name: "node_id with a space", toml: with(map[int]string{1: `node_id = "gpu 0042"`}),
			want: []want{{"node_id", 1, `"gpu 0042" is not a valid node id`}}},
		{name: "node_id with a slash", toml: with(map[int]string{1: `node_id = "../gpu"`}),
			want: []want{{"node_id", 1, "is not a valid node id"}}},
		{name: "node_id too long", toml: with(map[int]string{1: `node_id = "` + strings.Repeat("a", 64) + `"`}),
			want: []want{{"node_id", 1, "at most 63 characters"}}},
		{name: "node_id as a number", toml: with(map[int]string{1: `node_id = 42`}),
			want: []want{{"node_id", 1, "incompatible types"}}},
		{name: "IP literal in node_api.url", toml: with(map[int]string{13: `url = "https://10.40.0.10:8443"`}),
			want: []want{{"node_api.url", 13, "uses the IP address 10.40.0.10; use the node API hostname"}}},
		{name: "IPv6 literal in node_api.url", toml: with(map[int]string{13: `url = "https://[fd00::10]:8443"`}),
			want: []want{{"node_api.url", 13, "use the node API hostname"}}},
		{name: "node_api host not in [[hosts]]", toml: with(map[int]string{13: `url = "https://other.cp.internal:8443"`}),
			want: []want{{"node_api.url", 13, `hostname "other.cp.internal" has no [[hosts]] entry`}}},
		{name: "http node_api.url", toml: with(map[int]string{13: `url = "http://node-api.cp.internal:8443"`}),
			want: []want{{"node_api.url", 13, "must be an https:// URL"}}},
		{name: "http ca.url", toml: with(map[int]string{8: `url = "http://ca.cp.internal:9000"`}),
			want: []want{{"ca.url", 8, "must be an https:// URL"}}},
		{name: "node_api.url with a path", toml: with(map[int]string{13: `url = "https://node-api.cp.internal:8443/v1"`}),
			want: []want{{"node_api.url", 13, `must not carry a path ("/v1")`}}},
		{name: "node_api.url with a query", toml: with(map[int]string{13: `url = "https://node-api.cp.internal:8443?x=1"`}),
			want: []want{{"node_api.url", 13, "must not carry credentials, a query or a fragment"}}},
		{name: "node_api.url with an empty query", toml: with(map[int]string{13: `url = "https://node-api.cp.internal:8443?"`}),
			want: []want{{"node_api.url", 13, "a query or a fragment"}}},
		{name: "node_api.url with an empty fragment", toml: with(map[int]string{13: `url = "https://node-api.cp.internal:8443#"`}),
			want: []want{{"node_api.url", 13, "a query or a fragment"}}},
		{name: "ca.url with userinfo: password never echoed", toml: with(map[int]string{8: `url = "https://admin:s3cr3t-pw@ca.cp.internal:9000"`}),
			want: []want{{"ca.url", 8, "must not carry credentials"}}, never: "s3cr3t-pw"},
		{name: "ca.url without a host", toml: with(map[int]string{8: `url = "https:///x"`}),
			want: []want{{"ca.url", 8, "has no host"}}},
		{name: "ca.url with a bad port", toml: with(map[int]string{8: `url = "https://ca.cp.internal:port"`}),
			want: []want{{"ca.url", 8, "not a URL"}}},
		{name: "missing ca.url reported at [ca]", toml: with(map[int]string{8: ``}),
			want: []want{{"ca.url", 7, "required"}}},
		{name: "fingerprint too short", toml: with(map[int]string{9: `fingerprint = "3f2a9c"`}),
			want: []want{{"ca.fingerprint", 9, "must be 64 hex characters (SHA-256 of the root certificate's DER), got 6 characters"}}},
		{name: "fingerprint not hex", toml: with(map[int]string{9: `fingerprint = "` + strings.Repeat("g", 64) + `"`}),
			want: []want{{"ca.fingerprint", 9, "must be 64 hex characters"}}},
		{name: "fingerprint of SHA-1 length", toml: with(map[int]string{9: `fingerprint = "` + strings.Repeat("ab", 20) + `"`}),
			want: []want{{"ca.fingerprint", 9, "got 40 characters"}}},
		{name: "missing fingerprint reported at [ca]", toml: with(map[int]string{9: ``}),
			want: []want{{"ca.fingerprint", 7, "required: the hex SHA-256"}}},
		{name: "missing hosts", toml: with(map[int]string{3: ``, 4: ``, 5: ``}),
			want: []want{{"node_api.url", 13, "has no [[hosts]] entry"}, {"hosts", 0, "required: at least one [[hosts]] entry"}}},
		{name: "bad host IP", toml: with(map[int]string{5: `ip = "10.40.0.300"`}),
			want: []want{{"hosts[0].ip", 5, `"10.40.0.300" is not an IP address`}}},
		{name: "host IP with a zone", toml: with(map[int]string{5: `ip = "fe80::1%eth0"`}),
			want: []want{{"hosts[0].ip", 5, "is not an IP address"}}},
		{name: "missing host IP reported at its [[hosts]]", toml: with(map[int]string{5: ``}),
			want: []want{{"hosts[0].ip", 3, "required"}}},
		{name: "bad host name", toml: with(map[int]string{4: `name = "node_api!"`}),
			want: []want{{"hosts[0].name", 4, `"node_api!" is not a valid hostname`}, {"node_api.url", 13, "has no [[hosts]] entry"}}},
		{name: "duplicate host names, differing in case", toml: dupHosts,
			want: []want{{"hosts[1].name", 7, `"NODE-API.cp.internal" is already mapped by hosts[0]`}}},
		{name: "hosts as a string", toml: "node_id = \"a\"\nhosts = \"node-api\"\n",
			want: []want{{"hosts", 2, "incompatible types"}}},
		{name: "ca as a string instead of a table", toml: "node_id = \"a\"\nca = \"https://ca\"\n",
			want: []want{{"ca", 2, "expected table but found string"}}},
		{name: "bad duration", toml: with(map[int]string{15: `wait_timeout = "5 seconds"`}),
			want: []want{{"node_api.wait_timeout", 15, `not a duration like "5s" or "10m": "5 seconds"`}}},
		{name: "duration as an integer", toml: with(map[int]string{23: `deadline = 600`}),
			want: []want{{"bootstrap.deadline", 23, "not a duration"}}},
		{name: "negative wait_timeout", toml: with(map[int]string{15: `wait_timeout = "-1s"`}),
			want: []want{{"node_api.wait_timeout", 15, "must be between 0s and 10m, got -1s"}}},
		{name: "wait_timeout too long", toml: with(map[int]string{15: `wait_timeout = "11m"`}),
			want: []want{{"node_api.wait_timeout", 15, "got 11m0s"}}},
		{name: "negative request_timeout", toml: with(map[int]string{24: `request_timeout = "-5s"`}),
			want: []want{{"bootstrap.request_timeout", 24, "must be between 100ms and 5m, got -5s"}}},
		{name: "deadline below a second", toml: with(map[int]string{23: `deadline = "500ms"`}),
			want: []want{{"bootstrap.deadline", 23, "must be between 1s and 24h, got 500ms"}}},
		{name: "relative token_file", toml: with(map[int]string{10: `token_file = "run/token"`}),
			want: []want{{"ca.token_file", 10, `must be an absolute path, got "run/token"`}}},
		{name: "relative pki_dir", toml: with(map[int]string{19: `pki_dir = "pki"`}),
			want: []want{{"paths.pki_dir", 19, "must be an absolute path"}}},
		{name: "relative hosts_file and state_dir", toml: with(map[int]string{18: `hosts_file = "etc/hosts"`, 20: `state_dir = "./state"`}),
			want: []want{{"paths.hosts_file", 18, "must be an absolute path"}, {"paths.state_dir", 20, "must be an absolute path"}}},
		{name: "relative paths in an inline table, in a fixed order", toml: with(map[int]string{2: `paths = { state_dir = "s", hosts_file = "h", pki_dir = "p" }`, 17: ``, 18: ``, 19: ``, 20: ``}),
			want: []want{{"paths.hosts_file", 2, `got "h"`}, {"paths.pki_dir", 2, `got "p"`}, {"paths.state_dir", 2, `got "s"`}}},
		{name: "wait_path without {node_id}", toml: with(map[int]string{14: `wait_path = "/v1/tasks/wait"`}),
			want: []want{{"node_api.wait_path", 14, "must contain {node_id}"}}},
		{name: "wait_path not starting with a slash", toml: with(map[int]string{14: `wait_path = "v1/nodes/{node_id}/tasks/wait"`}),
			want: []want{{"node_api.wait_path", 14, "must start with '/'"}}},
		{name: "wait_path with a query", toml: with(map[int]string{14: `wait_path = "/v1/nodes/{node_id}/wait?timeout=5"`}),
			want: []want{{"node_api.wait_path", 14, "without query"}}},
		{name: "wait_path with a broken percent escape (found by FuzzParse)", toml: with(map[int]string{14: `wait_path = "/v1%nodes/{node_id}/tasks/wait"`}),
			want: []want{{"node_api.wait_path", 14, "must be a URL path"}}},
		{name: "wait_path with a non-ASCII character", toml: with(map[int]string{14: `wait_path = "/v1/nødes/{node_id}/wait"`}),
			want: []want{{"node_api.wait_path", 14, "must be a URL path"}}},
		{name: "TOML syntax error: unterminated string", toml: with(map[int]string{14: `wait_path = "/v1/nodes/{node_id}/tasks/wait`}),
			want: []want{{"node_api.wait_path", 14, "TOML syntax"}}},
		{name: "TOML syntax error: duplicate key", toml: with(map[int]string{2: `node_id = "b"`}),
			want: []want{{"node_id", 2, "has already been defined"}}},
		{name: "TOML syntax error: bare word", toml: with(map[int]string{11: `this is not toml`}),
			want: []want{{"ca", 11, "TOML syntax: expected '.' or '='"}}},
		{name: "NUL bytes", toml: with(map[int]string{2: "\x00\x00"}),
			want: []want{{"--config", 0, "not UTF-8 text"}}},
		{name: "binary file", toml: "\x7fELF\x02\x01\x01\x00\xff\xfe",
			want: []want{{"--config", 0, "not UTF-8 text"}}},
		{name: "empty file", toml: "",
			want: []want{{"node_id", 0, "required"}, {"hosts", 0, "required"}, {"ca.url", 0, "required"}, {"ca.fingerprint", 0, "required"}, {"node_api.url", 0, "required"}}},
		{name: "several problems at once, in line order", toml: with(map[int]string{1: `node_id = "gpu 42"`, 8: `url = "http://ca"`, 9: `fingerprint = "zz"`, 19: `pki_dir = "pki"`, 24: `request_timeout = "1ms"`}),
			want: []want{{"node_id", 1, "not a valid node id"}, {"ca.url", 8, "https://"}, {"ca.fingerprint", 9, "64 hex"}, {"paths.pki_dir", 19, "absolute"}, {"bootstrap.request_timeout", 24, "between 100ms and 5m"}}},
	}
	if len(tests) < 30 {
		t.Fatalf("only %d bad configs", len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("/etc/provision/provision.toml", []byte(tt.toml))
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", c)
			}
			if c != nil {
				t.Fatalf("Parse returned a config with an error")
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %T is not *config.Error: %v", err, err)
			}
			if ce.Path != "/etc/provision/provision.toml" || !strings.HasPrefix(err.Error(), "config /etc/provision/provision.toml: ") {
				t.Fatalf("error does not name the file: %v", err)
			}
			if len(ce.Problems) != len(tt.want) {
				t.Fatalf("%d problems, want %d: %v", len(ce.Problems), len(tt.want), err)
			}
			for i, w := range tt.want {
				p := ce.Problems[i]
				if p.Key != w.key || p.Line != w.line || !strings.Contains(p.Msg, w.msg) {
					t.Fatalf("problem %d = {%q line %d %q}, want {%q line %d containing %q}", i, p.Key, p.Line, p.Msg, w.key, w.line, w.msg)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error spans lines: %q", err)
			}
			if tt.never != "" && strings.Contains(err.Error(), tt.never) {
				t.Fatalf("error echoes %q: %v", tt.never, err)
			}
			// The same text through Load gives the same error.
			path := filepath.Join(t.TempDir(), "provision.toml")
			if err := os.WriteFile(path, []byte(tt.toml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, lerr := Load(path)
			if lerr == nil || strings.TrimPrefix(lerr.Error(), "config "+path) != strings.TrimPrefix(err.Error(), "config /etc/provision/provision.toml") {
				t.Fatalf("Load = %v, Parse = %v", lerr, err)
			}
		})
	}
}

func TestProblemString(t *testing.T) {
	if got := (Problem{Key: "ca.url", Line: 8, Msg: "required"}).String(); got != "ca.url (line 8): required" {
		t.Fatalf("got %q", got)
	}
	if got := (Problem{Key: "node_id", Msg: "required"}).String(); got != "node_id: required" {
		t.Fatalf("got %q", got)
	}
	e := &Error{Path: "p", Problems: []Problem{{Key: "a", Line: 1, Msg: "x"}, {Key: "b", Msg: "y"}}}
	if e.Error() != "config p: a (line 1): x; b: y" {
		t.Fatalf("got %q", e.Error())
	}
}

func TestLoadFileProblems(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, []byte(strings.Repeat("# padding\n", (1<<20)/10+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	exact := filepath.Join(dir, "exact.toml")
	body := with(nil)
	if err := os.WriteFile(exact, []byte(body+strings.Repeat("#", (1<<20)-len(body))), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(exact); err != nil {
		t.Fatalf("a valid config of exactly 1 MiB: %v", err)
	}
	for _, tc := range []struct{ path, msg string }{
		{filepath.Join(dir, "missing.toml"), "file does not exist"},
		{big, "larger than 1 MiB"},
		{dir, "reading: "},
	} {
		_, err := Load(tc.path)
		var ce *Error
		if !errors.As(err, &ce) || len(ce.Problems) != 1 {
			t.Fatalf("Load(%s) = %v", tc.path, err)
		}
		p := ce.Problems[0]
		if p.Key != "--config" || !strings.Contains(p.Msg, tc.msg) || ce.Path != tc.path {
			t.Fatalf("Load(%s): %+v, want --config %q", tc.path, p, tc.msg)
		}
	}
}

func TestParseMinimalAppliesDefaults(t *testing.T) {
	src := `node_id = "gpu-0042"
[[hosts]]
name = "node-api.cp.internal"
ip = "10.40.0.10"
[ca]
url = "https://ca.cp.internal:9000"
fingerprint = "` + strings.ToUpper(fp[:2]) + ":" + fp[2:] + `"
[node_api]
url = "https://node-api.cp.internal:8443"
`
	c, err := Parse("min", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"node_id", c.NodeID, "gpu-0042"},
		{"fingerprint normalised", c.CA.Fingerprint, fp},
		{"token_file", c.CA.TokenFile, DefaultTokenFile},
		{"token_file value", DefaultTokenFile, "/run/provision/token"},
		{"wait_path", c.NodeAPI.WaitPath, "/v1/nodes/{node_id}/tasks/wait"},
		{"wait_timeout", c.NodeAPI.WaitTimeout.Duration, time.Second},
		{"hosts_file", c.Paths.HostsFile, "/etc/hosts"},
		{"pki_dir", c.Paths.PKIDir, "/var/lib/provision/pki"},
		{"state_dir", c.Paths.StateDir, "/var/lib/provision"},
		{"deadline", c.Bootstrap.Deadline.Duration, 10 * time.Minute},
		{"request_timeout", c.Bootstrap.RequestTimeout.Duration, 5 * time.Second},
		{"wait URL", c.WaitURL(), "https://node-api.cp.internal:8443/v1/nodes/gpu-0042/tasks/wait?timeout=1"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
}

func TestParseFull(t *testing.T) {
	src := with(map[int]string{
		6:  "[[hosts]]\nname = \"CA.cp.internal\"\nip = \"fd00::9\"",
		9:  `fingerprint = "` + strings.ToUpper(fp) + `"`,
		10: `token_file = "/etc/provision/token"`,
		13: `url = "https://Node-API.cp.internal:8443/"`,
		14: `wait_path = "/api/{node_id}/wait/{node_id}"`,
		15: `wait_timeout = "25s"`,
		18: `hosts_file = "/srv/etc/hosts"`,
		19: `pki_dir = "/srv/pki"`,
		20: `state_dir = "/srv/state"`,
		23: `deadline = "1h"`,
		24: `request_timeout = "250ms"`,
	})
	c, err := Parse("full", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Hosts) != 2 || c.Hosts[1] != (Host{Name: "CA.cp.internal", IP: "fd00::9"}) {
		t.Fatalf("hosts = %+v", c.Hosts)
	}
	hm := c.HostMap()
	if len(hm) != 2 || hm["node-api.cp.internal"] != netip.MustParseAddr("10.40.0.10") || hm["ca.cp.internal"] != netip.MustParseAddr("fd00::9") {
		t.Fatalf("HostMap = %v", hm)
	}
	if c.CA.Fingerprint != fp || c.CA.TokenFile != "/etc/provision/token" || c.CA.URL != "https://ca.cp.internal:9000" {
		t.Fatalf("ca = %+v", c.CA)
	}
	if c.NodeAPI.WaitTimeout.Duration != 25*time.Second || c.Bootstrap.Deadline.Duration != time.Hour || c.Bootstrap.RequestTimeout.Duration != 250*time.Millisecond {
		t.Fatalf("durations = %v %v %v", c.NodeAPI.WaitTimeout, c.Bootstrap.Deadline, c.Bootstrap.RequestTimeout)
	}
	if c.Paths != (Paths{HostsFile: "/srv/etc/hosts", PKIDir: "/srv/pki", StateDir: "/srv/state"}) {
		t.Fatalf("paths = %+v", c.Paths)
	}
	if got, want := c.WaitURL(), "https://Node-API.cp.internal:8443/api/gpu-0042/wait/gpu-0042?timeout=25"; got != want {
		t.Fatalf("WaitURL = %q, want %q", got, want)
	}
}

func TestWaitURL(t *testing.T) {
	tests := []struct {
		name    string
		url     string
		path    string
		nodeID  string
		timeout time.Duration
		want    string
	}{
		{"plain", "https://api:8443", "/v1/nodes/{node_id}/tasks/wait", "gpu-0042", time.Second, "https://api:8443/v1/nodes/gpu-0042/tasks/wait?timeout=1"},
		{"trailing slash on the URL", "https://api:8443/", "/n/{node_id}", "n1", 30 * time.Second, "https://api:8443/n/n1?timeout=30"},
		{"node id escaped as one path segment", "https://api", "/n/{node_id}/w", "a b/c?d#e%f", time.Second, "https://api/n/a%20b%2Fc%3Fd%23e%25f/w?timeout=1"},
		{"dots kept", "https://api", "/n/{node_id}", "gpu.rack-1_a", time.Second, "https://api/n/gpu.rack-1_a?timeout=1"},
		{"fractional timeout rounds up", "https://api", "/{node_id}", "n", 1500 * time.Millisecond, "https://api/n?timeout=2"},
		{"sub-second timeout still asks the API to hold", "https://api", "/{node_id}", "n", 500 * time.Millisecond, "https://api/n?timeout=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Config{NodeID: tt.nodeID, NodeAPI: NodeAPI{URL: tt.url, WaitPath: tt.path, WaitTimeout: Duration{tt.timeout}}}
			if got := c.WaitURL(); got != tt.want {
				t.Fatalf("WaitURL = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestDurationText(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("1m30s")); err != nil || d.Duration != 90*time.Second {
		t.Fatalf("UnmarshalText: %v %v", d, err)
	}
	if b, _ := d.MarshalText(); string(b) != "1m30s" {
		t.Fatalf("MarshalText = %q", b)
	}
	if err := d.UnmarshalText([]byte("soon")); err == nil {
		t.Fatal("accepted soon")
	}
}

// TestDurationMarshalText: a duration encodes as an operator writes it and
// decodes back to the same value.
func TestDurationMarshalText(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"}, {100 * time.Millisecond, "100ms"}, {1500 * time.Millisecond, "1.5s"}, {5 * time.Second, "5s"},
		{10 * time.Minute, "10m"}, {90 * time.Second, "1m30s"}, {time.Hour, "1h"}, {90 * time.Minute, "1h30m"},
		{24 * time.Hour, "24h"}, {time.Hour + time.Second, "1h0m1s"}, {-time.Second, "-1s"},
	} {
		b, err := Duration{tc.d}.MarshalText()
		if err != nil || string(b) != tc.want {
			t.Errorf("%v: MarshalText = %q, %v; want %q", tc.d, b, err, tc.want)
			continue
		}
		var back Duration
		if err := back.UnmarshalText(b); err != nil || back.Duration != tc.d {
			t.Errorf("%q: read back as %v, %v; want %v", b, back.Duration, err, tc.d)
		}
	}
}
