package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	return code, out.String(), errb.String()
}

func TestHostsCommands(t *testing.T) {
	root, hostsPath := hostsRoot(t)

	if code, _, stderr := runHostsCmd(t, root, "show"); code != 10 || !strings.Contains(stderr, "missing") {
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
