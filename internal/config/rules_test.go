package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
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
