package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// parseProblems parses src and returns its problems; it fails the test if
// src is accepted or the error is not a one-line *Error.
func parseProblems(t *testing.T, src string) []Problem {
	t.Helper()
	c, err := Parse("/etc/provision/provision.toml", []byte(src))
	if err == nil {
		t.Fatalf("Parse accepted it: %+v", c)
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %T is not *config.Error: %v", err, err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("error spans lines: %q", err)
	}
	return ce.Problems
}

// wantOnly checks that problems is exactly one problem on key at line whose
// message contains every part of msg.
func wantOnly(t *testing.T, probs []Problem, key string, line int, msg ...string) {
	t.Helper()
	if len(probs) != 1 {
		t.Fatalf("%d problems, want 1 on %s: %v", len(probs), key, probs)
	}
	p := probs[0]
	if p.Key != key || p.Line != line {
		t.Fatalf("problem %q, want key %s line %d", p, key, line)
	}
	for _, m := range msg {
		if !strings.Contains(p.Msg, m) {
			t.Fatalf("problem %q does not say %q", p, m)
		}
	}
}

// pathKeys are the path keys of the full config: key, TOML name, line.
var pathKeys = []struct {
	key, name string
	line      int
	dir       bool
}{
	{"ca.token_file", "token_file", 10, false},
	{"paths.hosts_file", "hosts_file", 18, false},
	{"paths.pki_dir", "pki_dir", 19, true},
	{"paths.state_dir", "state_dir", 20, true},
}

// TestPathRules is issue 12 item 4: pki_dir = "/var/lib/provision/../../../etc"
// left <root>/etc 0700 with provision's links inside, and pki_dir = "/" made
// the root 0700. Every path key now refuses such values as config errors.
func TestPathRules(t *testing.T) {
	bad := []struct {
		name, val string
		msg       []string
	}{
		{"traversal to /etc (the repro)", "/var/lib/provision/../../../etc", []string{"must not contain '..'", `resolves to "/etc"`}},
		{"traversal inside its own tree", "/var/lib/provision/x/../y", []string{"must not contain '..'"}},
		{"parent of the root", "/..", []string{"must not contain '..'"}},
		{"the root (the repro)", "/", []string{"must not be the root directory /"}},
		{"double slash", "//srv/provision", []string{"must be a clean path", `write "/srv/provision"`}},
		{"trailing slash", "/srv/provision/", []string{"must be a clean path", `write "/srv/provision"`}},
		{"dot segment", "/srv/./provision", []string{"must be a clean path"}},
		{"relative", "srv/provision", []string{"must be an absolute path"}},
		{"relative dot", "./provision", []string{"must be an absolute path"}},
	}
	for _, pk := range pathKeys {
		for _, b := range bad {
			t.Run(pk.key+"/"+b.name, func(t *testing.T) {
				probs := parseProblems(t, with(map[int]string{pk.line: fmt.Sprintf("%s = %q", pk.name, b.val)}))
				wantOnly(t, probs, pk.key, pk.line, b.msg...)
			})
		}
	}
}

// TestPathSystemDirs: a directory provision owns (and makes 0700) must not
// be a directory the system shares; a file key naming one is refused too.
func TestPathSystemDirs(t *testing.T) {
	dirs := []string{"/etc", "/var", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/run", "/tmp", "/var/lib", "/boot", "/home", "/root", "/dev", "/proc", "/sys"}
	for _, pk := range pathKeys {
		for _, d := range dirs {
			t.Run(pk.key+d, func(t *testing.T) {
				probs := parseProblems(t, with(map[int]string{pk.line: fmt.Sprintf("%s = %q", pk.name, d)}))
				if pk.dir {
					wantOnly(t, probs, pk.key, pk.line, "must not be the shared system directory "+d+" itself", fmt.Sprintf("%q", d+"/provision"))
				} else {
					wantOnly(t, probs, pk.key, pk.line, "is the system directory "+d+", not a file")
				}
			})
		}
	}
	// Below a system directory is fine: that is where provision's own
	// directories live.
	ok := with(map[int]string{10: `token_file = "/run/provision/ott"`, 18: `hosts_file = "/etc/hosts"`, 19: `pki_dir = "/etc/provision/pki"`, 20: `state_dir = "/var/lib/provision-b"`})
	if c, err := Parse("ok", []byte(ok)); err != nil {
		t.Fatal(err)
	} else if c.Paths.PKIDir != "/etc/provision/pki" || c.Paths.StateDir != "/var/lib/provision-b" || c.CA.TokenFile != "/run/provision/ott" {
		t.Fatalf("paths = %+v %q", c.Paths, c.CA.TokenFile)
	}
}

// TestURLPorts is issue 12 item 6: a node API port of 99999 parsed as a URL,
// was retried as a TCP fault until the deadline (exit 14); it is a config
// error now, as is any port outside 1-65535, in either URL.
func TestURLPorts(t *testing.T) {
	urls := []struct {
		key, host string
		line      int
	}{
		{"ca.url", "ca.cp.internal", 8},
		{"node_api.url", "node-api.cp.internal", 13},
	}
	for _, u := range urls {
		for _, port := range []string{"99999", "0", "65536", "00000", "4294967297", "18446744073709551617"} {
			t.Run(u.key+"/"+port, func(t *testing.T) {
				probs := parseProblems(t, with(map[int]string{u.line: fmt.Sprintf(`url = "https://%s:%s"`, u.host, port)}))
				wantOnly(t, probs, u.key, u.line, "port "+port+" is out of range 1-65535")
			})
		}
		for _, port := range []string{":1", ":65535", ":443", ":08443", ":", ""} {
			t.Run(u.key+"/valid"+port, func(t *testing.T) {
				if _, err := Parse("ok", []byte(with(map[int]string{u.line: fmt.Sprintf(`url = "https://%s%s"`, u.host, port)}))); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
	// The credentials of a URL are never echoed, whatever else is wrong.
	probs := parseProblems(t, with(map[int]string{8: `url = "https://u:s3cr3t@ca.cp.internal:99999"`}))
	wantOnly(t, probs, "ca.url", 8, "must not carry credentials")
	if strings.Contains(probs[0].Msg, "s3cr3t") {
		t.Fatalf("password echoed: %s", probs[0])
	}
}

// TestHostIPs is issue 12 item 6: ip = "::ffff:127.0.0.1" was accepted and
// then always failed the hosts check, because /etc/hosts lookups return the
// unmapped IPv4 form. It is refused with the IPv4 form to write instead.
func TestHostIPs(t *testing.T) {
	bad := []struct {
		ip  string
		msg []string
	}{
		{"::ffff:127.0.0.1", []string{"IPv4-mapped IPv6 address", `write the IPv4 address "127.0.0.1"`}},
		{"::ffff:10.40.0.10", []string{`write the IPv4 address "10.40.0.10"`}},
		{"::FFFF:a28:a", []string{`write the IPv4 address "10.40.0.10"`}},
		{"0:0:0:0:0:ffff:10.40.0.10", []string{`write the IPv4 address "10.40.0.10"`}},
		{"fe80::1%eth0", []string{"is not an IP address for /etc/hosts", `zone "eth0"`}},
		{"::ffff:10.40.0.10%eth0", []string{"is not an IP address for /etc/hosts", `zone "eth0"`}},
		{"10.40.0.10%eth0", []string{"is not an IP address"}},
	}
	for _, b := range bad {
		t.Run(b.ip, func(t *testing.T) {
			probs := parseProblems(t, with(map[int]string{5: fmt.Sprintf("ip = %q", b.ip)}))
			wantOnly(t, probs, "hosts[0].ip", 5, b.msg...)
		})
	}
	for _, ip := range []string{"10.40.0.10", "fd00::10", "::1", "64:ff9b::a28:a", "::a28:a"} {
		t.Run("valid "+ip, func(t *testing.T) {
			if _, err := Parse("ok", []byte(with(map[int]string{5: fmt.Sprintf("ip = %q", ip)}))); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestDurationRules is issue 12 item 6: "0s" silently became the default,
// and wait_timeout = "0s", documented as valid, became 1s. Every duration key
// is now kept as written and checked against its documented range.
func TestDurationRules(t *testing.T) {
	bad := []struct {
		name string
		repl map[int]string
		key  string
		line int
		msg  []string
	}{
		{"deadline 0s is refused, not the default", map[int]string{23: `deadline = "0s"`}, "bootstrap.deadline", 23,
			[]string{"must be between 1s and 24h, got 0s", "0s is not the default: leave the key out for 10m"}},
		{"deadline 0 in another unit", map[int]string{23: `deadline = "0h"`}, "bootstrap.deadline", 23, []string{"must be between 1s and 24h, got 0s"}},
		{"deadline just below 1s", map[int]string{23: `deadline = "999ms"`}, "bootstrap.deadline", 23, []string{"must be between 1s and 24h, got 999ms"}},
		{"deadline negative", map[int]string{23: `deadline = "-10m"`}, "bootstrap.deadline", 23, []string{"must be between 1s and 24h, got -10m0s"}},
		{"deadline over a day", map[int]string{23: `deadline = "24h0m1s"`}, "bootstrap.deadline", 23, []string{"must be between 1s and 24h, got 24h0m1s"}},
		{"deadline of years", map[int]string{23: `deadline = "87600h"`}, "bootstrap.deadline", 23, []string{"must be between 1s and 24h"}},
		{"request_timeout 0s is refused, not the default", map[int]string{24: `request_timeout = "0s"`}, "bootstrap.request_timeout", 24,
			[]string{"must be between 100ms and 5m, got 0s", "leave the key out for 5s"}},
		{"request_timeout just below 100ms", map[int]string{24: `request_timeout = "99ms"`}, "bootstrap.request_timeout", 24, []string{"got 99ms"}},
		{"request_timeout just over 5m", map[int]string{24: `request_timeout = "5m0.001s"`}, "bootstrap.request_timeout", 24, []string{"must be between 100ms and 5m"}},
		{"wait_timeout over 10m", map[int]string{15: `wait_timeout = "11m"`}, "node_api.wait_timeout", 15,
			[]string{"must be between 0s and 10m, got 11m", "ingress's read timeout"}},
		{"wait_timeout past the 10m ceiling", map[int]string{15: `wait_timeout = "601s"`}, "node_api.wait_timeout", 15, []string{"got 10m1s"}},
		{"wait_timeout negative", map[int]string{15: `wait_timeout = "-1ns"`}, "node_api.wait_timeout", 15, []string{"got -1ns"}},
		{"wait_timeout as long as the deadline", map[int]string{15: `wait_timeout = "2s"`, 23: `deadline = "2s"`, 24: `request_timeout = "1s"`}, "node_api.wait_timeout", 15,
			[]string{"must be shorter than bootstrap.deadline (2s)"}},
		{"wait_timeout longer than the deadline", map[int]string{15: `wait_timeout = "30s"`, 23: `deadline = "10s"`}, "node_api.wait_timeout", 15,
			[]string{"must be shorter than bootstrap.deadline (10s)"}},
		{"0s deadline in a dotted key", map[int]string{2: `bootstrap.deadline = "0s"`, 23: ``}, "bootstrap.deadline", 2, []string{"got 0s"}},
		{"0s request_timeout in an inline table", map[int]string{2: `bootstrap = { request_timeout = "0s" }`, 22: ``, 23: ``, 24: ``}, "bootstrap.request_timeout", 2, []string{"got 0s"}},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			wantOnly(t, parseProblems(t, with(b.repl)), b.key, b.line, b.msg...)
		})
	}

	good := []struct {
		name              string
		repl              map[int]string
		wait, dl, req     string // as the config keeps them
		waitURLTimeoutArg string
	}{
		{"wait_timeout 0s means no long poll (the repro: it became 1s)", map[int]string{15: `wait_timeout = "0s"`}, "0s", "10m0s", "5s", "timeout=0"},
		{"wait_timeout 0s in an inline table", map[int]string{2: `node_api = { url = "https://node-api.cp.internal:8443", wait_timeout = "0s" }`, 12: ``, 13: ``, 14: ``, 15: ``}, "0s", "10m0s", "5s", "timeout=0"},
		{"upper bounds", map[int]string{15: `wait_timeout = "10m"`, 23: `deadline = "24h"`, 24: `request_timeout = "5m"`}, "10m0s", "24h0m0s", "5m0s", "timeout=600"},
		{"lower bounds", map[int]string{15: `wait_timeout = "0s"`, 23: `deadline = "1s"`, 24: `request_timeout = "100ms"`}, "0s", "1s", "100ms", "timeout=0"},
		{"a sub-second wait is rounded up", map[int]string{15: `wait_timeout = "800ms"`, 23: `deadline = "1s"`, 24: `request_timeout = "100ms"`}, "800ms", "1s", "100ms", "timeout=1"},
		{"absent keys take the defaults", map[int]string{15: ``, 22: ``, 23: ``, 24: ``}, "1s", "10m0s", "5s", "timeout=1"},
	}
	for _, g := range good {
		t.Run(g.name, func(t *testing.T) {
			c, err := Parse("ok", []byte(with(g.repl)))
			if err != nil {
				t.Fatal(err)
			}
			if got := [3]string{c.NodeAPI.WaitTimeout.String(), c.Bootstrap.Deadline.String(), c.Bootstrap.RequestTimeout.String()}; got != [3]string{g.wait, g.dl, g.req} {
				t.Fatalf("wait_timeout, deadline, request_timeout = %v, want %s %s %s", got, g.wait, g.dl, g.req)
			}
			if !strings.HasSuffix(c.WaitURL(), "?"+g.waitURLTimeoutArg) {
				t.Fatalf("WaitURL = %s, want ?%s", c.WaitURL(), g.waitURLTimeoutArg)
			}
		})
	}
}

// TestExplicitEmptyStrings: like "0s", an optional key written as "" used to
// become its default; it is an error naming the default instead.
func TestExplicitEmptyStrings(t *testing.T) {
	for _, tc := range []struct {
		key, name string
		line      int
		def       string
	}{
		{"ca.token_file", "token_file", 10, DefaultTokenFile},
		{"node_api.wait_path", "wait_path", 14, DefaultWaitPath},
		{"paths.hosts_file", "hosts_file", 18, DefaultHostsFile},
		{"paths.pki_dir", "pki_dir", 19, DefaultPKIDir},
		{"paths.state_dir", "state_dir", 20, DefaultStateDir},
	} {
		t.Run(tc.key, func(t *testing.T) {
			probs := parseProblems(t, with(map[int]string{tc.line: tc.name + ` = ""`}))
			wantOnly(t, probs, tc.key, tc.line, `is set to ""`, fmt.Sprintf("leave the key out for the default %q", tc.def))
		})
	}
}

func TestFmtDuration(t *testing.T) {
	for d, want := range map[string]string{"24h": "24h", "5m": "5m", "30s": "30s", "100ms": "100ms", "1m30s": "1m30s", "1h0m5s": "1h0m5s", "2h30m": "2h30m", "0s": "0s"} {
		if got := fmtDuration(mustDuration(t, d)); got != want {
			t.Errorf("fmtDuration(%s) = %q, want %q", d, got, want)
		}
	}
}

func mustDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	var d Duration
	if err := d.UnmarshalText([]byte(s)); err != nil {
		t.Fatal(err)
	}
	return d.Duration
}

// TestMetricsRules: [metrics] is on by default with Debian's
// node_exporter textfile directory, can be turned off, and textfile_dir is
// validated like the other path keys (a value that means something other
// than it says is refused rather than cleaned).
func TestMetricsRules(t *testing.T) {
	// full has 24 lines: [metrics] is line 25, its keys 26 and 27.
	metrics := func(lines ...string) string {
		return with(nil) + "[metrics]\n" + strings.Join(lines, "\n") + "\n"
	}
	good := []struct {
		name    string
		src     string
		enabled bool
		dir     string
	}{
		{"left out: on, Debian's directory", with(nil), true, DefaultTextfileDir},
		{"empty table: the same", metrics(), true, DefaultTextfileDir},
		{"turned off", metrics(`enabled = false`), false, DefaultTextfileDir},
		{"own directory", metrics(`textfile_dir = "/srv/node-exporter/textfile"`), true, "/srv/node-exporter/textfile"},
		{"on and named", metrics(`enabled = true`, `textfile_dir = "/var/lib/node_exporter"`), true, "/var/lib/node_exporter"},
	}
	for _, g := range good {
		t.Run(g.name, func(t *testing.T) {
			c, err := Parse("ok", []byte(g.src))
			if err != nil {
				t.Fatal(err)
			}
			if c.Metrics.Enabled != g.enabled || c.Metrics.TextfileDir != g.dir {
				t.Fatalf("metrics = %+v, want enabled=%v dir=%q", c.Metrics, g.enabled, g.dir)
			}
		})
	}
	bad := []struct {
		name, line string
		key        string
		lineNo     int
		msg        []string
	}{
		{"empty is not the default", `textfile_dir = ""`, "metrics.textfile_dir", 26, []string{"leave the key out", DefaultTextfileDir, "metrics.enabled = false"}},
		{"relative", `textfile_dir = "var/lib/prometheus/node-exporter"`, "metrics.textfile_dir", 26, []string{"must be an absolute path"}},
		{"traversal", `textfile_dir = "/var/lib/prometheus/../../../etc"`, "metrics.textfile_dir", 26, []string{"must not contain '..'", `resolves to "/etc"`}},
		{"trailing slash", `textfile_dir = "/var/lib/prometheus/node-exporter/"`, "metrics.textfile_dir", 26, []string{"must be a clean path"}},
		{"root", `textfile_dir = "/"`, "metrics.textfile_dir", 26, []string{"must not be the root directory /"}},
		{"shared /tmp", `textfile_dir = "/tmp"`, "metrics.textfile_dir", 26, []string{"shared system directory /tmp", DefaultTextfileDir}},
		{"shared /var/lib", `textfile_dir = "/var/lib"`, "metrics.textfile_dir", 26, []string{"shared system directory /var/lib"}},
		{"not a bool", `enabled = "yes"`, "metrics.enabled", 26, []string{"incompatible types"}},
		{"misspelt key", `textfiles_dir = "/x"`, "metrics.textfiles_dir", 26, []string{"unknown key", `did you mean "metrics.textfile_dir"`}},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			wantOnly(t, parseProblems(t, metrics(b.line)), b.key, b.lineNo, b.msg...)
		})
	}
}

// TestRenewRules: [renew] takes its defaults when left out, keeps what is
// written within its ranges, and refuses the rest naming the key and line:
// fraction strictly inside (0.1..0.95), splay 0s-24h, rekey a bool,
// post_hook an argv whose argv[0] is an absolute clean path (it runs
// without a shell and without PATH), post_hook_timeout 1s-10m; an unknown
// key under [renew] is named with its line.
func TestRenewRules(t *testing.T) {
	// full has 24 lines: [renew] is line 25, its keys 26 on.
	renewSrc := func(lines ...string) string {
		return with(nil) + "[renew]\n" + strings.Join(lines, "\n") + "\n"
	}
	type renewWant struct {
		fraction float64
		splay    string
		rekey    bool
		hook     []string
		timeout  string
	}
	def := renewWant{DefaultRenewFraction, "1h0m0s", true, nil, "30s"}
	good := []struct {
		name string
		src  string
		want renewWant
	}{
		{"left out: the defaults", with(nil), def},
		{"empty table: the defaults", renewSrc(), def},
		{"every key", renewSrc(`fraction = 0.5`, `splay = "10m"`, `rekey = false`, `post_hook = ["/usr/bin/systemctl", "reload", "node-agent"]`, `post_hook_timeout = "2m"`),
			renewWant{0.5, "10m0s", false, []string{"/usr/bin/systemctl", "reload", "node-agent"}, "2m0s"}},
		{"lower bounds", renewSrc(`fraction = 0.1`, `splay = "0s"`, `post_hook_timeout = "1s"`), renewWant{0.1, "0s", true, nil, "1s"}},
		{"upper bounds", renewSrc(`fraction = 0.95`, `splay = "24h"`, `post_hook_timeout = "10m"`), renewWant{0.95, "24h0m0s", true, nil, "10m0s"}},
		{"a fraction of three quarters", renewSrc(`fraction = 0.75`), renewWant{0.75, "1h0m0s", true, nil, "30s"}},
		{"an empty post_hook is no hook", renewSrc(`post_hook = []`), renewWant{DefaultRenewFraction, "1h0m0s", true, []string{}, "30s"}},
		{"a hook without arguments", renewSrc(`post_hook = ["/usr/local/sbin/reload-agent"]`), renewWant{DefaultRenewFraction, "1h0m0s", true, []string{"/usr/local/sbin/reload-agent"}, "30s"}},
		{"dotted keys", with(map[int]string{2: `renew.fraction = 0.6`}), renewWant{0.6, "1h0m0s", true, nil, "30s"}},
	}
	for _, g := range good {
		t.Run(g.name, func(t *testing.T) {
			c, err := Parse("ok", []byte(g.src))
			if err != nil {
				t.Fatal(err)
			}
			r := c.Renew
			got := renewWant{r.Fraction, r.Splay.String(), r.Rekey, r.PostHook, r.PostHookTimeout.String()}
			if got.fraction != g.want.fraction || got.splay != g.want.splay || got.rekey != g.want.rekey || got.timeout != g.want.timeout ||
				strings.Join(got.hook, "\x00") != strings.Join(g.want.hook, "\x00") {
				t.Fatalf("renew = %+v, want %+v", got, g.want)
			}
		})
	}

	bad := []struct {
		name  string
		lines []string
		key   string
		line  int
		msg   []string
	}{
		{"fraction 0", []string{`fraction = 0.0`}, "renew.fraction", 26, []string{"must be between 0.1 and 0.95", "got 0"}},
		{"fraction just below the floor", []string{`fraction = 0.09`}, "renew.fraction", 26, []string{"must be between 0.1 and 0.95", "got 0.09"}},
		{"fraction just above the ceiling", []string{`fraction = 0.951`}, "renew.fraction", 26, []string{"got 0.951"}},
		{"fraction 1: renew only at expiry", []string{`fraction = 1.0`}, "renew.fraction", 26, []string{"got 1"}},
		{"fraction negative", []string{`fraction = -0.5`}, "renew.fraction", 26, []string{"got -0.5"}},
		{"fraction nan", []string{`fraction = nan`}, "renew.fraction", 26, []string{"must be between", "got NaN"}},
		{"fraction inf", []string{`fraction = inf`}, "renew.fraction", 26, []string{"got +Inf"}},
		{"fraction as a string", []string{`fraction = "2/3"`}, "renew.fraction", 26, []string{"incompatible types"}},
		{"splay negative", []string{`splay = "-1s"`}, "renew.splay", 26, []string{"must be between 0s and 24h, got -1s"}},
		{"splay over a day", []string{`splay = "24h0m1s"`}, "renew.splay", 26, []string{"must be between 0s and 24h, got 24h0m1s"}},
		{"splay not a duration", []string{`splay = "an hour"`}, "renew.splay", 26, nil},
		{"rekey not a bool", []string{`rekey = "yes"`}, "renew.rekey", 26, []string{"incompatible types"}},
		{"post_hook relative: no PATH lookup", []string{`post_hook = ["systemctl", "reload", "node-agent"]`}, "renew.post_hook", 26,
			[]string{"must be an absolute path", "without a shell and without PATH lookup", `got "systemctl"`}},
		{"post_hook dot-relative", []string{`post_hook = ["./reload.sh"]`}, "renew.post_hook", 26, []string{"must be an absolute path"}},
		{"post_hook empty argv[0]", []string{`post_hook = [""]`}, "renew.post_hook", 26, []string{"must be an absolute path", `got ""`}},
		{"post_hook not clean", []string{`post_hook = ["/usr/bin/../bin/systemctl", "reload"]`}, "renew.post_hook", 26, []string{"must be a clean path"}},
		{"post_hook trailing slash", []string{`post_hook = ["/usr/bin/systemctl/"]`}, "renew.post_hook", 26, []string{"must be a clean path"}},
		{"post_hook as a shell string, not argv", []string{`post_hook = "/usr/bin/systemctl reload node-agent"`}, "renew.post_hook", 26, []string{"incompatible types"}},
		{"post_hook_timeout 0s is refused, not the default", []string{`post_hook_timeout = "0s"`}, "renew.post_hook_timeout", 26,
			[]string{"must be between 1s and 10m, got 0s", "leave the key out for 30s"}},
		{"post_hook_timeout just below 1s", []string{`post_hook_timeout = "999ms"`}, "renew.post_hook_timeout", 26, []string{"got 999ms"}},
		{"post_hook_timeout over 10m", []string{`post_hook_timeout = "10m0.001s"`}, "renew.post_hook_timeout", 26, []string{"must be between 1s and 10m"}},
		{"post_hook_timeout negative", []string{`post_hook_timeout = "-5s"`}, "renew.post_hook_timeout", 26, []string{"got -5s"}},
		{"unknown key names itself", []string{`splay = "5m"`, `post_hooks = ["/bin/true"]`}, "renew.post_hooks", 27,
			[]string{"unknown key", `did you mean "renew.post_hook"`}},
		{"unknown key with no near neighbour", []string{`jitter_percent = 10`}, "renew.jitter_percent", 26, []string{"unknown key"}},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			wantOnly(t, parseProblems(t, renewSrc(b.lines...)), b.key, b.line, b.msg...)
		})
	}

	// Several wrong keys are all reported at once, each on its line.
	probs := parseProblems(t, renewSrc(`fraction = 2.0`, `splay = "48h"`, `post_hook = ["reload"]`, `post_hook_timeout = "0s"`))
	var got []string
	for _, p := range probs {
		got = append(got, fmt.Sprintf("%s:%d", p.Key, p.Line))
	}
	if want := "renew.fraction:26 renew.splay:27 renew.post_hook:28 renew.post_hook_timeout:29"; strings.Join(got, " ") != want {
		t.Fatalf("problems %v, want %s", got, want)
	}
}

// TestCrossFieldRules is issue 24 item 6: deadline = "2s" with
// request_timeout = "5m" was accepted (and verify, whose budget is built
// from request_timeout, then ran for up to 20 minutes), and so was a
// post_hook_timeout longer than the deadline the hook runs inside. Every
// network timeout must fit in bootstrap.deadline, and so must the hook's;
// each error names both keys, on the line of the key that does not fit.
func TestCrossFieldRules(t *testing.T) {
	renewSrc := func(repl map[int]string, lines ...string) string {
		return with(repl) + "[renew]\n" + strings.Join(lines, "\n") + "\n"
	}
	hook := `post_hook = ["/usr/bin/systemctl", "reload", "node-agent"]`
	bad := []struct {
		name string
		src  string
		key  string
		line int
		msg  []string
	}{
		{"request_timeout longer than the deadline (the repro)", with(map[int]string{23: `deadline = "2s"`, 24: `request_timeout = "5m"`}),
			"bootstrap.request_timeout", 24, []string{"5m", "longer than bootstrap.deadline (2s)", "must fit"}},
		{"the default request_timeout in a short deadline", with(map[int]string{23: `deadline = "3s"`, 24: ``}),
			"bootstrap.request_timeout", 22, []string{"5s, the default", "bootstrap.deadline (3s)"}},
		{"a request_timeout a nanosecond over", with(map[int]string{15: `wait_timeout = "0s"`, 23: `deadline = "2s"`, 24: `request_timeout = "2.000000001s"`}),
			"bootstrap.request_timeout", 24, []string{"bootstrap.deadline (2s)"}},
		{"the proof's wait and request do not fit", with(map[int]string{15: `wait_timeout = "2s"`, 23: `deadline = "4s"`, 24: `request_timeout = "3s"`}),
			"node_api.wait_timeout", 15, []string{"node_api.wait_timeout (2s) plus bootstrap.request_timeout (3s) is 5s", "bootstrap.deadline (4s)"}},
		{"the proof with the default wait does not fit", with(map[int]string{15: ``, 23: `deadline = "5s"`, 24: `request_timeout = "4.5s"`}),
			"node_api.wait_timeout", 12, []string{"(1s, the default)", "bootstrap.request_timeout (4.5s)", "bootstrap.deadline (5s)"}},
		{"post_hook_timeout longer than the deadline", renewSrc(map[int]string{23: `deadline = "1m"`}, hook, `post_hook_timeout = "5m"`),
			"renew.post_hook_timeout", 27, []string{"5m", "longer than bootstrap.deadline (1m)", "renew.post_hook"}},
		{"the default post_hook_timeout in a short deadline", renewSrc(map[int]string{23: `deadline = "20s"`}, hook),
			"renew.post_hook_timeout", 25, []string{"30s, the default", "bootstrap.deadline (20s)"}},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			probs := parseProblems(t, b.src)
			wantOnly(t, probs, b.key, b.line, b.msg...)
		})
	}
	good := []struct {
		name string
		src  string
	}{
		{"the defaults", with(map[int]string{15: ``, 23: ``, 24: ``})},
		{"wait and request exactly the deadline", with(map[int]string{15: `wait_timeout = "1s"`, 23: `deadline = "2s"`, 24: `request_timeout = "1s"`})},
		{"request_timeout exactly the deadline without a long poll", with(map[int]string{15: `wait_timeout = "0s"`, 23: `deadline = "5s"`, 24: `request_timeout = "5s"`})},
		{"post_hook_timeout exactly the deadline", renewSrc(map[int]string{23: `deadline = "1m"`}, hook, `post_hook_timeout = "1m"`)},
		{"a post_hook_timeout with no hook to time out", renewSrc(map[int]string{23: `deadline = "20s"`}, `post_hook_timeout = "5m"`)},
	}
	for _, g := range good {
		t.Run(g.name, func(t *testing.T) {
			if _, err := Parse("ok", []byte(g.src)); err != nil {
				t.Fatal(err)
			}
		})
	}
}
