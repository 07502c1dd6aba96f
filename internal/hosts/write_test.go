package hosts

import (
	"bytes"
	"errors"
	"github.com/gpuaas/provision/internal/testenv"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/system"
)

const userHosts = "127.0.0.1 localhost\n# keep me\n::1 localhost ip6-localhost\n"

func statT(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t)
}

func applied(t *testing.T, old []byte) []byte {
	t.Helper()
	nb, changed, err := Apply(old, []Entry{api})
	if err != nil || !changed {
		t.Fatalf("Apply: changed=%v err=%v", changed, err)
	}
	return nb
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteKeepsModeAndOwner(t *testing.T) {
	for _, tc := range []struct {
		mode  os.FileMode
		umask int
	}{
		{0o640, 0o022},
		{0o644, 0o077}, // renameio's WithPermissions would give 0600 here (reference §4.6)
		{0o600, 0o000},
	} {
		dir := t.TempDir()
		path := filepath.Join(dir, "hosts")
		if err := os.WriteFile(path, []byte(userHosts), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, tc.mode); err != nil {
			t.Fatal(err)
		}
		chowned := os.Geteuid() == 0
		if chowned {
			if err := os.Chown(path, 1234, 5678); err != nil {
				t.Fatal(err)
			}
		}
		before := statT(t, path)
		data := applied(t, []byte(userHosts))

		old := syscall.Umask(tc.umask)
		strat, err := Write(path, []byte(userHosts), data, nil)
		syscall.Umask(old)
		if err != nil {
			t.Fatalf("Write: %v", err)
		}
		if strat != Renamed {
			t.Fatalf("strategy %q, want %q", strat, Renamed)
		}
		got, _ := os.ReadFile(path)
		if !bytes.Equal(got, data) {
			t.Fatalf("content %q, want %q", got, data)
		}
		st, _ := os.Stat(path)
		if st.Mode().Perm() != tc.mode {
			t.Fatalf("mode %v after Write under umask %03o, want %v", st.Mode().Perm(), tc.umask, tc.mode)
		}
		after := statT(t, path)
		if after.Ino == before.Ino {
			t.Fatalf("inode unchanged: the rename path did not rename")
		}
		if chowned && (after.Uid != 1234 || after.Gid != 5678) {
			t.Fatalf("owner %d:%d, want 1234:5678", after.Uid, after.Gid)
		}
		if names := dirNames(t, dir); !slices.Equal(names, []string{"hosts"}) {
			t.Fatalf("directory holds %v after Write, want only hosts", names)
		}
	}
}

func TestWriteNewFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hosts")
	data := applied(t, nil)
	old := syscall.Umask(0o077)
	strat, err := Write(path, nil, data, nil)
	syscall.Umask(old)
	if err != nil || strat != Renamed {
		t.Fatalf("Write = %q, %v", strat, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Fatalf("new hosts file mode %v, want 0644 (readable by non-root resolvers)", st.Mode().Perm())
	}
}

func TestWriteUnchangedDoesNotTouch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hosts")
	data := applied(t, []byte(userHosts))
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	past := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(path, past, past); err != nil {
		t.Fatal(err)
	}
	before := statT(t, path)

	// The idempotent re-run: read, Apply (no change), Write.
	cur, _ := os.ReadFile(path)
	nb, changed, err := Apply(cur, []Entry{api})
	if err != nil || changed {
		t.Fatalf("re-Apply changed=%v err=%v", changed, err)
	}
	strat, err := Write(path, cur, nb, nil)
	if err != nil || strat != Unchanged {
		t.Fatalf("Write = %q, %v; want %q", strat, err, Unchanged)
	}
	st, _ := os.Stat(path)
	if !st.ModTime().Equal(past) {
		t.Fatalf("mtime moved to %v", st.ModTime())
	}
	if after := statT(t, path); after.Ino != before.Ino || after.Ctim != before.Ctim {
		t.Fatalf("file was touched: inode %d->%d ctime %v->%v", before.Ino, after.Ino, before.Ctim, after.Ctim)
	}
}

func TestWriteDetectsConcurrentModification(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hosts")
	if err := os.WriteFile(path, []byte(userHosts), 0o644); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(path)
	data := applied(t, old)

	// cloud-init rewrites the file between our read and our write.
	theirs := []byte(userHosts + "10.1.1.1 added-by-cloud-init\n")
	if err := os.WriteFile(path, theirs, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(path, old, data, nil); err == nil || !strings.Contains(err.Error(), "changed while provision was editing it") {
		t.Fatalf("Write over a concurrently modified file: err = %v", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, theirs) {
		t.Fatalf("the other writer's content was lost: %q", got)
	}

	// The file disappears between our read and our write.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(path, old, data, nil); err == nil {
		t.Fatalf("Write recreated a file that was deleted after it was read")
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file exists after a refused Write: %v", err)
	}
}

func TestWriteSweepsTempFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hosts")
	if err := os.WriteFile(path, []byte(userHosts), 0o644); err != nil {
		t.Fatal(err)
	}
	leftovers := []string{".hosts8674665223082153551", ".hosts1", system.TempPrefix + "abc"}
	keep := []string{".hosts", ".hosts.bak", ".hostsx1", "hosts123", ".other123", "hosts.orig"}
	for _, n := range append(slices.Clone(leftovers), keep...) {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Write(path, []byte(userHosts), applied(t, []byte(userHosts)), nil); err != nil {
		t.Fatal(err)
	}
	want := append([]string{"hosts"}, keep...)
	slices.Sort(want)
	if got := dirNames(t, dir); !slices.Equal(got, want) {
		t.Fatalf("after Write the directory holds %v, want %v", got, want)
	}
}

func TestWriteInPlaceFallbackDirect(t *testing.T) {
	// WriteInPlace is what Write falls back to on EBUSY; check it keeps the
	// inode and mode and truncates a longer old file.
	dir := t.TempDir()
	path := filepath.Join(dir, "hosts")
	long := []byte(userHosts + strings.Repeat("# long tail\n", 100))
	if err := os.WriteFile(path, long, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	before := statT(t, path)
	data := applied(t, []byte(userHosts))
	if err := system.WriteInPlace(path, data); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatalf("content %q, want %q", got, data)
	}
	after := statT(t, path)
	if after.Ino != before.Ino || after.Mode&0o777 != 0o640 {
		t.Fatalf("inode %d->%d mode %o: in-place write replaced the file", before.Ino, after.Ino, after.Mode&0o777)
	}
}

const inNSEnv = "PROVISION_HOSTS_TEST_IN_MOUNT_NS"

// TestWriteBindMountFallsBackInPlace makes /etc/hosts a real bind mount, as a
// container runtime does, so rename(2) onto it fails with EBUSY, and checks
// that Write falls back to an in-place write that the bind source sees. It
// re-executes the test binary under `unshare --mount` so the mount lives in a
// private namespace and vanishes with the child.
func TestWriteBindMountFallsBackInPlace(t *testing.T) {
	if os.Getenv(inNSEnv) == "1" {
		bindMountBody(t)
		return
	}
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "needs root to bind-mount a file in a private mount namespace")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		testenv.SkipOrFail(t, "unshare(1) not found (util-linux); the EBUSY fallback is then exercised only by the reliability suite")
	}
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", os.Args[0],
		"-test.run=^TestWriteBindMountFallsBackInPlace$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), inNSEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "unshare failed") || strings.Contains(string(out), "Operation not permitted") {
			testenv.SkipOrFail(t, "cannot create a mount namespace here: %s", out)
		}
		t.Fatalf("child in a mount namespace failed: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "bind-mount body ran: strategy in-place") || strings.Contains(string(out), "SKIP") {
		t.Fatalf("child did not run the bind-mount checks:\n%s", out)
	}
}

func bindMountBody(t *testing.T) {
	dir := t.TempDir()
	etc := filepath.Join(dir, "etc")
	src := filepath.Join(dir, "host-side")
	for _, d := range []string{etc, src} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	target := filepath.Join(etc, "hosts")
	source := filepath.Join(src, "hosts")
	if err := os.WriteFile(target, []byte("placeholder\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(source, []byte(userHosts), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(source, target, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(target, syscall.MNT_DETACH) })

	// Prove the trap is real: a plain rename onto the mount point is EBUSY.
	probe := filepath.Join(etc, "probe")
	if err := os.WriteFile(probe, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(probe, target); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("rename onto the bind mount: %v, want EBUSY", err)
	}
	os.Remove(probe)

	old, err := os.ReadFile(target)
	if err != nil || string(old) != userHosts {
		t.Fatalf("reading through the mount: %q %v", old, err)
	}
	data := applied(t, old)
	strat, err := Write(target, old, data, nil)
	if err != nil {
		t.Fatalf("Write onto a bind mount: %v", err)
	}
	if strat != InPlace {
		t.Fatalf("strategy %q, want %q", strat, InPlace)
	}
	for _, p := range []string{target, source} {
		if got, _ := os.ReadFile(p); !bytes.Equal(got, data) {
			t.Fatalf("%s holds %q, want %q", p, got, data)
		}
	}
	if names := dirNames(t, etc); !slices.Equal(names, []string{"hosts"}) {
		t.Fatalf("temp files left next to the bind mount: %v", names)
	}
	// Shrinking in place truncates.
	back, _, err := Remove(data)
	if err != nil {
		t.Fatal(err)
	}
	if strat, err := Write(target, data, back, nil); err != nil || strat != InPlace {
		t.Fatalf("second in-place Write = %q, %v", strat, err)
	}
	if got, _ := os.ReadFile(source); string(got) != userHosts {
		t.Fatalf("after removing the block in place: %q", got)
	}
	t.Logf("bind-mount body ran: strategy %s", strat)
}

// TestWriteRefusesNonRegular: Write is given the file itself (callers
// resolve a symlinked hosts file to its target); a link, FIFO or directory
// at path is refused, naming it, and nothing changes.
func TestWriteRefusesNonRegular(t *testing.T) {
	for _, kind := range []string{"symlink", "fifo", "dir"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			outside := filepath.Join(dir, "outside")
			os.WriteFile(outside, []byte("127.0.0.1 localhost\n"), 0o644)
			p := filepath.Join(dir, "hosts")
			var err error
			switch kind {
			case "symlink":
				err = os.Symlink(outside, p)
			case "fifo":
				err = syscall.Mkfifo(p, 0o644)
			case "dir":
				err = os.Mkdir(p, 0o755)
			}
			if err != nil {
				t.Fatal(err)
			}
			_, err = Write(p, []byte("127.0.0.1 localhost\n"), []byte("127.0.0.1 localhost\n10.0.0.1 x\n"), nil)
			if err == nil || !strings.Contains(err.Error(), p) {
				t.Fatalf("want a refusal naming %s, got %v", p, err)
			}
			if b, _ := os.ReadFile(outside); string(b) != "127.0.0.1 localhost\n" {
				t.Fatalf("the link's target changed: %q", b)
			}
		})
	}
}

// TestApplyToFollowsOnlyRootsLinks is issue 31's path rule at the hosts
// file: a symlinked /etc/hosts is edited at its target (inside --root)
// when root owns the link in a directory only root can write; a link
// another user owns, or one in a directory another user can write, is
// refused with a line naming it and its owner, and nothing changes.
func TestApplyToFollowsOnlyRootsLinks(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "needs root to give a link to another user")
	}
	entries := []Entry{{Name: "node-api.cp.internal", IP: netip.MustParseAddr("10.40.0.10")}}
	tests := []struct {
		name     string
		linkUID  int
		etcMode  os.FileMode
		refusal  string // "" when the target is edited
		editedAt string
	}{
		{"root's link in a root-only /etc", 0, 0o755, "", "/run/hosts.real"},
		{"a user's link", 1001, 0o755, "/etc/hosts is a symbolic link owned by uid 1001", ""},
		{"root's link in an /etc others can write", 0, 0o777, "/etc/hosts is a symbolic link in /etc, which others (mode 0777) can write", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			etc, run := filepath.Join(root, "etc"), filepath.Join(root, "run")
			os.MkdirAll(etc, 0o755)
			os.MkdirAll(run, 0o755)
			os.WriteFile(filepath.Join(run, "hosts.real"), []byte("127.0.0.1 localhost\n"), 0o644)
			os.WriteFile(filepath.Join(etc, "shadow"), []byte("precious\n"), 0o640)
			if err := os.Symlink("/run/hosts.real", filepath.Join(etc, "hosts")); err != nil {
				t.Fatal(err)
			}
			os.Lchown(filepath.Join(etc, "hosts"), tt.linkUID, tt.linkUID)
			os.Chmod(etc, tt.etcMode)
			host, _ := system.New(root)
			before := testenv.TreeDigest(t, root)
			_, err := ApplyTo(host, "/etc/hosts", entries)
			if tt.refusal != "" {
				if !errors.Is(err, system.ErrUnsafePath) || !strings.Contains(err.Error(), tt.refusal) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("ApplyTo = %v, want a one-line refusal saying %q", err, tt.refusal)
				}
				if after := testenv.TreeDigest(t, root); after != before {
					t.Fatalf("a refused edit changed the root:\n%s---\n%s", before, after)
				}
				if _, remedy := Describe("/etc/hosts", err); !strings.Contains(remedy, "a link root owns") {
					t.Errorf("the remedy does not say what to do about the link: %s", remedy)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(filepath.Join(root, tt.editedAt)); !bytes.Contains(b, []byte("node-api.cp.internal")) {
				t.Fatalf("%s was not edited: %q", tt.editedAt, b)
			}
		})
	}
}

// TestApplyToLater: the block is in place when ApplyToLater returns, the
// directory's fsync is left to the sync it returns (called once, by the
// caller), and a file that already carries the block is neither written
// nor given a sync.
func TestApplyToLater(t *testing.T) {
	root := t.TempDir()
	etc := filepath.Join(root, "etc")
	os.MkdirAll(etc, 0o755)
	os.WriteFile(filepath.Join(etc, "hosts"), []byte("127.0.0.1 localhost\n"), 0o644)
	host, err := system.New(root)
	if err != nil {
		t.Fatal(err)
	}
	entries := []Entry{{Name: "node-api.cp.internal", IP: netip.MustParseAddr("10.40.0.10")}}
	s, sync, err := ApplyToLater(host, "/etc/hosts", entries)
	if err != nil || s != Renamed || sync == nil {
		t.Fatalf("ApplyToLater: %s, sync %v, %v; want renamed with a sync to call", s, sync != nil, err)
	}
	b, _ := os.ReadFile(filepath.Join(etc, "hosts"))
	if err := Check(b, entries); err != nil {
		t.Errorf("before sync the file does not carry the block: %v", err)
	}
	if err := sync(); err != nil {
		t.Fatal(err)
	}
	if s, sync, err = ApplyToLater(host, "/etc/hosts", entries); err != nil || s != Unchanged || sync != nil {
		t.Errorf("again: %s, sync %v, %v; want unchanged and nothing to sync", s, sync != nil, err)
	}
}
