package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/gpuaas/provision/internal/testenv"
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
		testenv.SkipOrFail(t, "giving files to a group needs root (CI runs as root)")
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
	task := cp.API.QueueTask(n.ID, controlplane.Task{Kind: "probe"})
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	modes("bootstrap", 0o640, 0o750, 4242)
	// The way to the key, and the task the proof received, are the
	// group's too: state_dir 0710, tasks/ 0750 and the task 0640.
	for path, want := range map[string]os.FileMode{
		n.Files.StateDir: 0o710, filepath.Join(n.Files.StateDir, "tasks"): 0o750,
		filepath.Join(n.Files.StateDir, "tasks", task.ID+".json"): 0o640,
	} {
		if mode, gid := modeOf(t, path); mode != want || gid != 4242 {
			t.Errorf("%s is %04o group %d, want %04o group 4242", path, mode, gid, want)
		}
	}
	nodetest.WantExit(t, n.Run("verify"), 0)
	nodetest.WantExit(t, n.Run("renew"), 0)
	nodetest.WantExit(t, n.Run("status"), 0)
	nodetest.WantExit(t, n.Run("renew", "--force"), 0)
	modes("renewal", 0o640, 0o750, 4242)

	// verify and status walk the path as the group would: state_dir
	// closed to the group is a key the node-agent cannot read, whatever
	// the key's own mode (exit 12, key-unreachable; status attention);
	// renew opens it again.
	os.Chmod(n.Files.StateDir, 0o700)
	r := n.RunJSON("verify")
	nodetest.WantFailure(t, r, 12, "credentials", "node")
	if !strings.Contains(r.Report.Summary, "cannot search") || !strings.Contains(r.Report.Summary, "/var/lib/provision") {
		t.Errorf("verify with state_dir 0700: %q, want the directory that stops the group", r.Report.Summary)
	}
	if st := n.Run("status"); st.Code != 30 || !strings.Contains(st.Stdout, "key-unreachable") {
		t.Errorf("status with state_dir 0700: exit %d, want 30 naming key-unreachable\n%s", st.Code, st)
	}
	nodetest.WantExit(t, n.Run("renew"), 0)
	nodetest.WantExit(t, n.Run("verify"), 0)

	// A group the node does not know: exit 3, naming the key.
	os.WriteFile(n.Path("/etc/group"), []byte("root:x:0:\n"), 0o644)
	r = n.RunJSON("verify")
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

// modeOf is a path's permission bits and group.
func modeOf(t *testing.T, path string) (os.FileMode, uint32) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Gid
}

// TestKeyGroupChownRefused is issue 30's first finding: under a sandbox
// without CAP_CHOWN (the units' empty bounding set), bootstrap burnt the
// token before it failed to give the key its group, and renew --force
// threw away a new certificate every run. Now the run proves it can give a
// file to the group before anything irreversible: refused, it stops at
// credentials (check key-group) with the token unused, which a later run
// spends, naming the key-group drop-in; renew --force asks the CA for
// nothing; and as a member of the group (what the drop-in gives the
// units), without CAP_CHOWN, renew gives the new key to it.
func TestKeyGroupChownRefused(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "giving files to a group needs root (CI runs as root)")
	}
	setpriv := testenv.RequireProgram(t, "setpriv", "util-linux")
	noChown := []string{setpriv, "--bounding-set=-chown"}
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, true, func(c *controlplane.NodeConfig) { c.Paths.KeyGroup = "node-agent" })
	if err := os.WriteFile(n.Path("/etc/group"), []byte("root:x:0:\nnode-agent:x:4242:agent\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	refused := func(label string, r nodetest.Result) {
		t.Helper()
		var rep nodetest.Report
		if err := json.Unmarshal([]byte(r.Stdout), &rep); err != nil || r.Code != 12 || rep.FailedLayer != "credentials" || rep.FailedCheck != "key-group" ||
			!strings.Contains(rep.Summary, "operation not permitted") || !strings.Contains(rep.Remedy, "SupplementaryGroups=node-agent") {
			t.Fatalf("%s without CAP_CHOWN: want exit 12 at credentials, check key-group, naming the refused chown and the key-group drop-in:\n%s", label, r)
		}
	}
	refused("bootstrap", n.RunVia(noChown, "bootstrap", "--format", "json"))
	if _, err := os.Stat(n.Files.TokenPath); err != nil {
		t.Fatalf("the token is gone after a bootstrap that could not give the key its group: %v", err)
	}
	if _, err := os.Stat(filepath.Join(n.Files.StateDir, "enroll-pending.json")); err == nil {
		t.Fatal("enroll-pending.json exists: the token was sent although the run could not give the key its group")
	}
	// The same token, with CAP_CHOWN: it was never spent.
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	serial := n.Receipt().Serial
	gens, _ := os.ReadDir(n.Files.PKIDir)
	refused("renew --force", n.RunVia(noChown, "renew", "--force", "--format", "json"))
	after, _ := os.ReadDir(n.Files.PKIDir)
	if len(after) != len(gens) || n.Receipt().Serial != serial {
		t.Errorf("renew --force without CAP_CHOWN changed pki_dir (%d entries, then %d) or the receipt: it asked the CA for a certificate it could not keep", len(gens), len(after))
	}
	// What the units do (the key-group drop-in): no CAP_CHOWN, but a
	// member of the group, which root may give its own files to.
	asMember := []string{setpriv, "--bounding-set=-chown", "--groups=4242"}
	nodetest.WantExit(t, n.RunVia(asMember, "renew", "--force"), 0)
	if after := n.Receipt().Serial; after == serial {
		t.Errorf("renew --force as a member of the group, without CAP_CHOWN, did not renew")
	}
}

// TestKeyGroupParentClosed: a directory provision did not make, above
// pki_dir, that the group cannot search. Bootstrap names it before the
// token is spent (provision never changes it); once it lets the group
// through, the same token enrolls.
func TestKeyGroupParentClosed(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "giving files to a group needs root (CI runs as root)")
	}
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, true, func(c *controlplane.NodeConfig) {
		c.Paths.KeyGroup = "node-agent"
		c.Paths.PKIDir = "/srv/keys/pki"
	})
	if err := os.WriteFile(n.Path("/etc/group"), []byte("root:x:0:\nnode-agent:x:4242:agent\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(n.Path("/srv/keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(n.Path("/srv"), 0o755)
	r := n.RunJSON("bootstrap")
	nodetest.WantFailure(t, r, 12, "credentials", "node")
	if r.Report.FailedCheck != "key-group" || !strings.Contains(r.Report.Summary, "cannot search /srv/keys") || !strings.Contains(r.Report.Summary, "token") {
		t.Fatalf("bootstrap under a closed /srv/keys: %s", r)
	}
	if mode, _ := modeOf(t, n.Path("/srv/keys")); mode != 0o700 {
		t.Errorf("provision changed /srv/keys, which it did not make: %04o", mode)
	}
	if _, err := os.Stat(n.Files.TokenPath); err != nil {
		t.Fatalf("the token is gone: %v", err)
	}
	os.Chmod(n.Path("/srv/keys"), 0o711)
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	nodetest.WantExit(t, n.Run("verify"), 0)
}
