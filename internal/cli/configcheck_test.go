package cli

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// configRoot writes cfg as the default config under a fresh --root.
func configRoot(t *testing.T, cfg string) string {
	t.Helper()
	root := t.TempDir()
	p := filepath.Join(root, "etc/provision/provision.toml")
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestConfigCheck: the config alone, every problem with its key and line
// (text and JSON), exit 0 or 3; nothing but the file is read: no network
// (the CA and node API named in the config are a listener that must see no
// connection), no state (the tree under --root is unchanged, nothing is
// created), and what only a node can answer (the key group, foreign
// directories) is not judged.
func TestConfigCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	valid := fmt.Sprintf(`node_id = "gpu-0042"
[[hosts]]
name = "node-api.cp.internal"
ip   = "127.0.0.1"
[ca]
url         = "https://127.0.0.1:%d"
fingerprint = "8a273a9a13a3e237d8558b8cefadee4a752b94a957e6b2a63cb2fd2ba70bb504"
[node_api]
url = "https://node-api.cp.internal:%d"
[paths]
pki_dir   = "/srv/foreign"
key_group = "no-such-group-here"
`, port, port)
	t.Run("valid", func(t *testing.T) {
		root := configRoot(t, valid)
		// pki_dir holds somebody's file: bootstrap would refuse it; the
		// config alone cannot say so.
		os.MkdirAll(filepath.Join(root, "srv/foreign"), 0o755)
		os.WriteFile(filepath.Join(root, "srv/foreign/ca.pem"), []byte("theirs"), 0o644)
		before := treeDigest(t, root)
		out, errs, code := run("config", "check", "--root", root)
		if code != ExitOK || errs != "" || out != "provision config check: /etc/provision/provision.toml is valid: node_id gpu-0042, CA https://127.0.0.1:"+fmt.Sprint(port)+", node API https://node-api.cp.internal:"+fmt.Sprint(port)+", 1 [[hosts]] entry\n" {
			t.Fatalf("exit %d, stderr %q, stdout %q", code, errs, out)
		}
		out, _, code = run("config", "check", "--root", root, "--format", "json")
		var doc configCheckDoc
		if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 0 || !doc.OK || doc.ExitCode != 0 || doc.NodeID != "gpu-0042" || doc.Problems == nil || len(doc.Problems) != 0 || doc.SchemaVersion != SchemaVersion {
			t.Fatalf("json: exit %d %v %+v\n%s", code, err, doc, out)
		}
		if after := treeDigest(t, root); after != before {
			t.Errorf("config check changed the root:\n%s\n---\n%s", before, after)
		}
	})
	t.Run("every problem with its key and line", func(t *testing.T) {
		bad := strings.Replace(valid, `node_id = "gpu-0042"`, "node_id = \"gpu-0042\"\nnod_id = 1", 1)
		bad = strings.Replace(bad, `ip   = "127.0.0.1"`, `ip   = "not-an-ip"`, 1)
		bad = strings.Replace(bad, "[node_api]\nurl = \"https://node-api.cp.internal", "[node_api]\nurl = \"https://10.0.0.1", 1)
		root := configRoot(t, bad)
		before := treeDigest(t, root)
		out, _, code := run("config", "check", "--root", root)
		want := []string{"nod_id (line 2): unknown key", "hosts[0].ip (line 5): ", "node_api.url (line 10): ", "provision config check: FAILED at layer config (owner: node): /etc/provision/provision.toml: 3 problems. Next: "}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("text lacks %q:\n%s", w, out)
			}
		}
		if code != ExitConfig || !strings.HasSuffix(out, "(exit 3)\n") {
			t.Errorf("exit %d:\n%s", code, out)
		}
		out, _, code = run("config", "check", "--root", root, "--format", "json")
		var doc configCheckDoc
		if err := json.Unmarshal([]byte(out), &doc); err != nil || code != ExitConfig || doc.OK || doc.ExitCode != 3 || doc.FailedLayer != "config" || len(doc.Problems) != 3 || doc.Remedy == "" {
			t.Fatalf("json: exit %d %v %+v", code, err, doc)
		}
		lines := map[string]int{}
		for _, p := range doc.Problems {
			lines[p.Key] = p.Line
		}
		if lines["nod_id"] != 2 || lines["hosts[0].ip"] != 5 || lines["node_api.url"] != 10 {
			t.Errorf("keys and lines: %v", lines)
		}
		if q, _, _ := run("config", "check", "--root", root, "-q"); strings.Count(q, "\n") != 1 || !strings.HasPrefix(q, "provision config check: FAILED") {
			t.Errorf("-q: %q", q)
		}
		if after := treeDigest(t, root); after != before {
			t.Errorf("config check changed the root")
		}
	})
	t.Run("missing file", func(t *testing.T) {
		out, _, code := run("config", "check", "--root", t.TempDir(), "--config", "/etc/nope.toml", "--format", "json")
		var doc configCheckDoc
		if err := json.Unmarshal([]byte(out), &doc); err != nil || code != ExitConfig || len(doc.Problems) != 1 || doc.Problems[0].Key != "--config" || !strings.Contains(doc.Problems[0].Message, "does not exist") {
			t.Fatalf("exit %d %v %+v", code, err, doc)
		}
	})
	t.Run("usage", func(t *testing.T) {
		for _, args := range [][]string{{"config"}, {"config", "validate"}, {"config", "check", "extra"}, {"config", "check", "--root", "/no/such/dir"}} {
			if _, _, code := run(args...); code != ExitUsage {
				t.Errorf("%v: exit %d, want 2", args, code)
			}
		}
		if help, _, code := run("help", "config"); code != ExitOK || !strings.HasPrefix(help, "Usage: provision config check [flags]") {
			t.Errorf("help config: exit %d\n%s", code, help)
		}
	})
	if n := conns.Load(); n != 0 {
		t.Errorf("config check made %d connections", n)
	}
}
