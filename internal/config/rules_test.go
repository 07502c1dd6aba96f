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
