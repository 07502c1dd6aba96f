package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// TestKeyGroup: with paths.key_group, a node-agent in that group can read
// its key: key.pem 0640 and pki_dir and the generation 0750, owned by the
// group, through bootstrap and a renewal; bootstrap, verify, renew and
// status agree that this is healthy (the one verdict judges the mode). A
// group the node does not know is a config error naming the key, and
// taking the setting away again restricts the key as exposed.
func TestKeyGroup(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("giving files to a group needs root (CI runs as root)")
	}
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, true, func(c *controlplane.NodeConfig) { c.Paths.KeyGroup = "node-agent" })
	// The node's /etc/group knows the agent's group.
	if err := os.WriteFile(n.Path("/etc/group"), []byte("root:x:0:\nnode-agent:x:4242:agent\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	modes := func(label string, key, dir os.FileMode, gid uint32) {
		t.Helper()
		gen, _ := os.Readlink(filepath.Join(n.Files.PKIDir, "current"))
		for _, c := range []struct {
			path string
			want os.FileMode
		}{{filepath.Join(n.Files.PKIDir, gen, "key.pem"), key}, {n.Files.PKIDir, dir}, {filepath.Join(n.Files.PKIDir, gen), dir}} {
			st, err := os.Stat(c.path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != c.want || (gid != 0 && st.Sys().(*syscall.Stat_t).Gid != gid) {
				t.Errorf("%s: %s is %04o group %d, want %04o group %d", label, c.path, st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Gid, c.want, gid)
			}
		}
	}
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	modes("bootstrap", 0o640, 0o750, 4242)
	nodetest.WantExit(t, n.Run("verify"), 0)
	nodetest.WantExit(t, n.Run("renew"), 0)
	nodetest.WantExit(t, n.Run("status"), 0)
	nodetest.WantExit(t, n.Run("renew", "--force"), 0)
	modes("renewal", 0o640, 0o750, 4242)

	// A group the node does not know: exit 3, naming the key.
	os.WriteFile(n.Path("/etc/group"), []byte("root:x:0:\n"), 0o644)
	r := n.RunJSON("verify")
	nodetest.WantFailure(t, r, 3, "config", "")
	if !strings.Contains(r.Report.Summary, "paths.key_group") {
		t.Errorf("summary %q does not name paths.key_group", r.Report.Summary)
	}

	// The setting taken away: the key was readable by that group, so the
	// next run restricts it and records it as exposed.
	n.Cfg.Paths.KeyGroup = ""
	n.RewriteConfig()
	nodetest.WantExit(t, n.Run("renew"), 0)
	modes("key_group removed", 0o600, 0o700, 0)
	if _, err := os.Stat(filepath.Join(n.Files.StateDir, "key-exposed.json")); err != nil {
		t.Errorf("the exposure was not recorded: %v", err)
	}
}
