package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/internal/verify"
)

const hostsTestConfig = `node_id = "gpu-0042"
[[hosts]]
name = "node-api.cp.internal"
ip   = "10.40.0.10"
[ca]
url         = "https://ca.cp.internal:9000"
fingerprint = "8a273a9a13a3e237d8558b8cefadee4a752b94a957e6b2a63cb2fd2ba70bb504"
[node_api]
url = "https://node-api.cp.internal:8443"
`

const userLines = "127.0.0.1\tlocalhost\n# keep me\n10.1.2.3\tbuild-cache.internal\n"

func hostsRoot(t *testing.T) (root, hostsPath string) {
	t.Helper()
	root = t.TempDir()
	for p, data := range map[string]string{"etc/provision/provision.toml": hostsTestConfig, "etc/hosts": userLines} {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root, filepath.Join(root, "etc/hosts")
}

func runHostsCmd(t *testing.T, root string, sub string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), []string{"hosts", sub, "--root", root}, &out, &errb)
	// A failure is a report on stdout, like every command's; the tests
	// look for the wording in either stream.
	return code, out.String(), out.String() + errb.String()
}

func TestHostsCommands(t *testing.T) {
	root, hostsPath := hostsRoot(t)

	if code, _, stderr := runHostsCmd(t, root, "show"); code != 10 || !strings.Contains(stderr, "no provision managed block") {
		t.Fatalf("show before apply: exit %d, stderr %q; want 10 saying the override is missing", code, stderr)
	}
	if code, out, _ := runHostsCmd(t, root, "apply"); code != 0 || !strings.Contains(out, "managed block written") {
		t.Fatalf("apply: exit %d, %q", code, out)
	}
	b, _ := os.ReadFile(hostsPath)
	if !strings.HasPrefix(string(b), userLines) || !strings.Contains(string(b), "10.40.0.10\tnode-api.cp.internal") {
		t.Fatalf("after apply the file is %q", b)
	}
	if code, out, _ := runHostsCmd(t, root, "apply"); code != 0 || !strings.Contains(out, "already up to date") {
		t.Fatalf("second apply: exit %d, %q", code, out)
	}
	if code, out, _ := runHostsCmd(t, root, "show"); code != 0 || !strings.Contains(out, "10.40.0.10\tnode-api.cp.internal") {
		t.Fatalf("show: exit %d, %q", code, out)
	}

	// A right block with a conflicting line outside it: show names that
	// line, not the block.
	conflict := append([]byte("10.9.9.9 node-api.cp.internal\n"), b...)
	os.WriteFile(hostsPath, conflict, 0o644)
	if code, _, stderr := runHostsCmd(t, root, "show"); code != 10 || !strings.Contains(stderr, "line 1") || !strings.Contains(stderr, "outside the managed block") {
		t.Fatalf("show with a conflicting line: exit %d, stderr %q", code, stderr)
	}
	if code, _, _ := runHostsCmd(t, root, "apply"); code != 10 {
		t.Fatalf("apply over a conflicting line: exit %d, want 10", code)
	}
	if got, _ := os.ReadFile(hostsPath); !bytes.Equal(got, conflict) {
		t.Fatal("a refused apply changed the file")
	}

	// A hand-edited block: show says it differs from the config.
	os.WriteFile(hostsPath, bytes.Replace(b, []byte("10.40.0.10"), []byte("10.40.0.11"), 1), 0o644)
	if code, _, stderr := runHostsCmd(t, root, "show"); code != 10 || !strings.Contains(stderr, "differs from the config") {
		t.Fatalf("show with an edited block: exit %d, stderr %q", code, stderr)
	}

	if code, out, _ := runHostsCmd(t, root, "remove"); code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("remove: exit %d, %q", code, out)
	}
	if got, _ := os.ReadFile(hostsPath); string(got) != userLines {
		t.Fatalf("after remove the file is %q, want the user lines only", got)
	}
	if code, out, _ := runHostsCmd(t, root, "remove"); code != 0 || !strings.Contains(out, "nothing to remove") {
		t.Fatalf("second remove: exit %d, %q", code, out)
	}
}

func TestHostsCommandUsage(t *testing.T) {
	root, _ := hostsRoot(t)
	for _, args := range [][]string{{"hosts"}, {"hosts", "list"}, {"hosts", "apply", "extra"}} {
		var out, errb bytes.Buffer
		if code := Run(context.Background(), append(args, "--root", root), &out, &errb); code != ExitUsage {
			t.Errorf("%v: exit %d, want %d (stderr %q)", args, code, ExitUsage, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := Run(context.Background(), []string{"hosts", "apply", "--root", root, "--config", "/nope.toml"}, &out, &errb); code != ExitConfig {
		t.Errorf("missing config: exit %d, want %d", code, ExitConfig)
	}
}

// TestHostsSymlinked: /etc/hosts is a symbolic link (as on images that keep
// it on another volume). apply, show and remove edit the link's target,
// resolved inside --root (an absolute target is taken under the root), keep
// the link a link, keep every user line, and never touch a file outside the
// root, even one the link names literally.
func TestHostsSymlinked(t *testing.T) {
	outsideDir := t.TempDir()
	outside := filepath.Join(outsideDir, "hosts")
	if err := os.WriteFile(outside, []byte("outside\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, link string // link target as written in the link
		target     string // the file edited, as a node path under the root
	}{
		{"absolute inside", "/run/hosts.real", "/run/hosts.real"},
		{"relative", "../run/hosts.real", "/run/hosts.real"},
		{"relative climbing above the root", "../../../../../../../../run/hosts.real", "/run/hosts.real"},
		{"absolute naming a file outside the root", outside, outside},
		{"chain of links", "/etc/hosts.link2", "/run/hosts.real"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, hostsPath := hostsRoot(t)
			target := filepath.Join(root, tt.target)
			os.MkdirAll(filepath.Dir(target), 0o755)
			if err := os.WriteFile(target, []byte(userLines), 0o640); err != nil {
				t.Fatal(err)
			}
			os.Remove(hostsPath)
			if err := os.Symlink(tt.link, hostsPath); err != nil {
				t.Fatal(err)
			}
			if tt.name == "chain of links" {
				os.Symlink("/run/hosts.real", filepath.Join(root, "etc/hosts.link2"))
			}
			code, out, stderr := runHostsCmd(t, root, "apply")
			if code != 0 || !strings.Contains(out, "managed block written") || !strings.Contains(out, "edited its target "+tt.target) {
				t.Fatalf("apply: exit %d, %q %q", code, out, stderr)
			}
			if l, err := os.Readlink(hostsPath); err != nil || l != tt.link {
				t.Fatalf("/etc/hosts is no longer the link: %q %v", l, err)
			}
			b, _ := os.ReadFile(target)
			if !strings.HasPrefix(string(b), userLines) || !strings.Contains(string(b), "10.40.0.10\tnode-api.cp.internal") {
				t.Fatalf("the target is %q", b)
			}
			if st, _ := os.Stat(target); st.Mode().Perm() != 0o640 {
				t.Errorf("the target's mode changed to %v", st.Mode())
			}
			if got, _ := os.ReadFile(outside); string(got) != "outside\n" {
				t.Fatalf("a file outside the root changed: %q", got)
			}
			if code, out, _ := runHostsCmd(t, root, "show"); code != 0 || !strings.Contains(out, "node-api.cp.internal") {
				t.Fatalf("show through the link: exit %d %q", code, out)
			}
			if code, _, _ := runHostsCmd(t, root, "remove"); code != 0 {
				t.Fatalf("remove through the link: exit %d", code)
			}
			if b, _ := os.ReadFile(target); string(b) != userLines {
				t.Fatalf("after remove the target is %q", b)
			}
			if l, _ := os.Readlink(hostsPath); l != tt.link {
				t.Fatal("remove replaced the link")
			}
		})
	}
}

// TestHostsJudgedAlike: for every hosts file, 'hosts check', verify's
// hosts checks (hosts-block and hosts-resolve, through the resolver under
// --root) and 'hosts apply' give one answer. A file check accepts, verify
// passes; a file apply can fix, apply fixes and then both pass; a file
// apply refuses, apply leaves unchanged and both still fail.
func TestHostsJudgedAlike(t *testing.T) {
	block := "# BEGIN provision managed block: do not edit, run 'provision hosts'\n10.40.0.10\tnode-api.cp.internal\n# END provision managed block\n"
	tests := []struct {
		name      string
		file      string
		ok        bool // check and verify pass as it is
		applyFix  bool // apply makes it right
		wantInMsg string
	}{
		{"healthy", userLines + block, true, true, ""},
		{"no block", userLines, false, true, "no provision managed block"},
		{"block with another address", userLines + strings.Replace(block, "10.40.0.10", "10.40.0.11", 1), false, true, "differs from the config"},
		{"block with an extra name", userLines + strings.Replace(block, "# END", "10.40.0.12\tother.internal\n# END", 1), false, true, "is not in the config"},
		{"same mapping also outside the block", "10.40.0.10 node-api.cp.internal\n" + userLines + block, true, true, ""},
		{"conflicting line outside the block", "10.9.9.9 node-api.cp.internal\n" + userLines + block, false, false, "outside the managed block"},
		{"lone BEGIN marker", userLines + "# BEGIN provision managed block: do not edit, run 'provision hosts'\n", false, false, "BEGIN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, hostsPath := hostsRoot(t)
			os.WriteFile(hostsPath, []byte(tt.file), 0o644)
			judge := func() (checkOK, verifyOK bool, msg string) {
				code, out, _ := runHostsCmd(t, root, "check")
				host, err := system.New(root)
				if err != nil {
					t.Fatal(err)
				}
				cfg, err := config.Load(host.Path("/etc/provision/provision.toml"))
				if err != nil {
					t.Fatal(err)
				}
				var hostsChecks []verify.Check
				for _, c := range verify.Checks() {
					if c.Name == "hosts-block" || c.Name == "hosts-resolve" {
						hostsChecks = append(hostsChecks, c)
					}
				}
				rep := report.New("verify", cfg.NodeID, verify.Run(context.Background(), observe.NewEnv(cfg, host), hostsChecks, nil), 0)
				return code == 0, rep.OK, out + rep.Summary
			}
			c, v, msg := judge()
			if c != tt.ok || v != tt.ok {
				t.Fatalf("as written: hosts check ok=%v, verify ok=%v, want both %v:\n%s", c, v, tt.ok, msg)
			}
			if !tt.ok && !strings.Contains(msg, tt.wantInMsg) {
				t.Errorf("the failure does not say %q:\n%s", tt.wantInMsg, msg)
			}
			code, _, _ := runHostsCmd(t, root, "apply")
			after, _ := os.ReadFile(hostsPath)
			if (code == 0) != tt.applyFix || (!tt.applyFix && string(after) != tt.file) {
				t.Fatalf("apply: exit %d, want fixed=%v and, if refused, the file unchanged", code, tt.applyFix)
			}
			c, v, msg = judge()
			if c != tt.applyFix || v != tt.applyFix {
				t.Fatalf("after apply: hosts check ok=%v, verify ok=%v, want both %v:\n%s", c, v, tt.applyFix, msg)
			}
		})
	}
}
