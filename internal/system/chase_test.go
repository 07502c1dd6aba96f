package system

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/gpuaas/provision/internal/testenv"
)

// TestChasePathRule is issue 31's path rule as a table: link owners
// (root, a user), the modes of the directory holding the link (root only,
// group-writable, a user's, sticky), relative and absolute targets, a link
// in a parent component and at the file itself, provision's own
// directories' parents, and --root kept a sandbox. Nothing outside the
// root and nothing provision did not create changes.
func TestChasePathRule(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "needs root to give links and directories to another user")
	}
	base := []string{
		"etc/passwd", "etc/sudoers.d/", "etc/sudoers.d/README",
		"var/lib/prometheus/ @1001", "var/lib/prometheus/node-exporter/ @1001",
	}
	unsafe := func(parts ...string) []string { return parts }
	tests := []struct {
		name    string
		entries []string
		path    string
		o       ChaseOptions
		dir     string   // the node path of the directory Chase ends in
		file    string   // the name it returns
		refused []string // an *UnsafePathError saying these
		err     string   // another error saying this
	}{
		{name: "a user's real directory is entered (the textfile directory)", path: "/var/lib/prometheus/node-exporter", o: ChaseOptions{Dir: true},
			dir: "/var/lib/prometheus/node-exporter"},
		{name: "a user's link in the user's directory (the repro: node-exporter -> /etc/sudoers.d)",
			entries: []string{"var/lib/prometheus/textfile -> /etc/sudoers.d @1001"}, path: "/var/lib/prometheus/textfile", o: ChaseOptions{Dir: true},
			refused: unsafe("/var/lib/prometheus/textfile is a symbolic link owned by uid 1001 (prometheus)")},
		{name: "root's link in a user's directory", entries: []string{"var/lib/prometheus/textfile -> /etc/sudoers.d"},
			path: "/var/lib/prometheus/textfile", o: ChaseOptions{Dir: true},
			refused: unsafe("/var/lib/prometheus/textfile is a symbolic link in /var/lib/prometheus, which uid 1001 (prometheus) can write")},
		{name: "a user's link in a root-only directory", entries: []string{"srv/textfile -> /etc/sudoers.d @1001"},
			path: "/srv/textfile", o: ChaseOptions{Dir: true}, refused: unsafe("/srv/textfile is a symbolic link owned by uid 1001")},
		{name: "root's link in a root-only directory, absolute target", entries: []string{"srv/textfile -> /var/lib/prometheus/node-exporter"},
			path: "/srv/textfile", o: ChaseOptions{Dir: true}, dir: "/var/lib/prometheus/node-exporter"},
		{name: "root's link in a root-only directory, relative target", entries: []string{"srv/textfile -> ../var/lib/prometheus/node-exporter"},
			path: "/srv/textfile", o: ChaseOptions{Dir: true}, dir: "/var/lib/prometheus/node-exporter"},
		{name: "root's link in a directory another group can write", entries: []string{"srv/ @0:50 %2775", "srv/textfile -> /etc/sudoers.d"},
			path: "/srv/textfile", o: ChaseOptions{Dir: true}, refused: unsafe("/srv/textfile is a symbolic link in /srv, which group 50 (staff) (mode 2775) can write")},
		{name: "root's link in a directory root's own group can write", entries: []string{"srv/ %775", "srv/textfile -> /etc/sudoers.d"},
			path: "/srv/textfile", o: ChaseOptions{Dir: true}, dir: "/etc/sudoers.d"},
		{name: "root's link in a world-writable directory", entries: []string{"srv/ %777", "srv/textfile -> /etc/sudoers.d"},
			path: "/srv/textfile", o: ChaseOptions{Dir: true}, refused: unsafe("/srv/textfile is a symbolic link in /srv, which others (mode 0777) can write")},
		{name: "root's link in a sticky world-writable directory", entries: []string{"tmp/ %1777", "tmp/textfile -> /etc/sudoers.d"},
			path: "/tmp/textfile", o: ChaseOptions{Dir: true}, dir: "/etc/sudoers.d"},
		{name: "a user's link in a sticky directory", entries: []string{"tmp/ %1777", "tmp/textfile -> /etc/sudoers.d @1001"},
			path: "/tmp/textfile", o: ChaseOptions{Dir: true}, refused: unsafe("/tmp/textfile is a symbolic link owned by uid 1001")},
		{name: "a user's link in a parent component", entries: []string{"srv/data -> /etc @1001"},
			path: "/srv/data/sudoers.d/provision.prom", refused: unsafe("/srv/data is a symbolic link owned by uid 1001")},
		{name: "root's link in a parent component", entries: []string{"srv/data -> /etc"},
			path: "/srv/data/sudoers.d/provision.prom", dir: "/etc/sudoers.d", file: "provision.prom"},
		{name: "a link at the file itself is not followed unless asked", entries: []string{"etc/hosts -> /etc/sudoers.d/README @1001"},
			path: "/etc/hosts", dir: "/etc", file: "hosts"},
		{name: "a user's link at the file itself, followed", entries: []string{"etc/hosts -> /etc/sudoers.d/README @1001"},
			path: "/etc/hosts", o: ChaseOptions{FollowLast: true}, refused: unsafe("/etc/hosts is a symbolic link owned by uid 1001")},
		{name: "root's link at the file itself, followed (a symlinked /etc/hosts)", entries: []string{"etc/hosts -> ../run/hosts", "run/hosts"},
			path: "/etc/hosts", o: ChaseOptions{FollowLast: true}, dir: "/run", file: "hosts"},
		{name: "an absolute target outside the root is taken under it", entries: []string{"etc/hosts -> /../../../run/hosts", "run/hosts"},
			path: "/etc/hosts", o: ChaseOptions{FollowLast: true}, dir: "/run", file: "hosts"},
		{name: "a relative target climbing above the root stops at it", entries: []string{"etc/hosts -> ../../../../../../run/hosts", "run/hosts"},
			path: "/etc/hosts", o: ChaseOptions{FollowLast: true}, dir: "/run", file: "hosts"},
		{name: "a loop", entries: []string{"srv/a -> /srv/b", "srv/b -> /srv/a"}, path: "/srv/a/x", err: "too many levels of symbolic links"},
		{name: "provision's own directory under a user's directory", path: "/var/lib/prometheus/provision", o: ChaseOptions{Own: true},
			refused: unsafe("/var/lib/prometheus/provision is in /var/lib/prometheus, which uid 1001 (prometheus) can write")},
		{name: "provision's own directory two levels under a user's", entries: []string{"home/alice/ @1001", "home/alice/state/"},
			path: "/home/alice/state/provision", o: ChaseOptions{Own: true}, refused: unsafe("/home/alice/state is in /home/alice, which uid 1001")},
		{name: "provision's own directory to be created under a user's", entries: []string{"home/alice/ @1001"},
			path: "/home/alice/new/provision", o: ChaseOptions{Own: true, Mkdir: true}, refused: unsafe("/home/alice/new is in /home/alice, which uid 1001")},
		{name: "provision's own directory under root's", path: "/var/lib/provision", o: ChaseOptions{Own: true}, dir: "/var/lib", file: "provision"},
		{name: "provision's own directory a root link on another volume", entries: []string{"mnt/volume/", "var/lib/provision -> /mnt/volume"},
			path: "/var/lib/provision", o: ChaseOptions{Own: true, FollowLast: true}, dir: "/mnt", file: "volume"},
		{name: "missing directories are created with Mkdir", path: "/opt/a/b/file", o: ChaseOptions{Mkdir: true}, dir: "/opt/a/b", file: "file"},
		{name: "a missing directory without Mkdir", path: "/opt/a/b/file", err: "does not exist"},
		{name: "a file on the way", path: "/etc/passwd/x", err: "/etc/passwd is a regular file, not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			tree(t, root, append(base, tt.entries...)...)
			os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nprometheus:x:1001:1001::/var/lib/prometheus:/usr/sbin/nologin\n"), 0o644)
			os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nstaff:x:50:\n"), 0o644)
			before := testenv.TreeDigest(t, root)
			h, err := New(root)
			if err != nil {
				t.Fatal(err)
			}
			d, name, err := h.Chase(tt.path, tt.o)
			switch {
			case tt.refused != nil:
				var ue *UnsafePathError
				if !errors.As(err, &ue) || !errors.Is(err, ErrUnsafePath) {
					t.Fatalf("Chase(%s) = %v, want a refusal by the path rule", tt.path, err)
				}
				for _, s := range tt.refused {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("the refusal does not say %q: %v", s, err)
					}
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("the refusal is not one line: %q", err)
				}
			case tt.err != "":
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Chase(%s) = %v, want an error saying %q", tt.path, err, tt.err)
				}
			default:
				if err != nil {
					t.Fatalf("Chase(%s): %v", tt.path, err)
				}
				defer d.Close()
				if d.Node() != tt.dir || name != tt.file || d.Path() != filepath.Join(root, tt.dir) {
					t.Fatalf("Chase(%s) = %s (%s) %q, want %s %q", tt.path, d.Node(), d.Path(), name, tt.dir, tt.file)
				}
			}
			if after := testenv.TreeDigest(t, root); after != before && (!tt.o.Mkdir || err != nil) {
				t.Errorf("Chase changed the root:\n%s\n---\n%s", before, after)
			}
		})
	}
}

// TestChaseHoldsWhatItJudged: the directory is used through the
// descriptor Chase opened. The textfile directory's owner swapping it for a
// link to /etc/sudoers.d after the check, before the write, changes
// nothing: the file lands in the directory judged, now under its new name.
func TestChaseHoldsWhatItJudged(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "needs root to give a directory to another user")
	}
	root := t.TempDir()
	tree(t, root, "etc/sudoers.d/", "var/lib/prometheus/ @1001", "var/lib/prometheus/node-exporter/ @1001")
	h, _ := New(root)
	d, _, err := h.Chase("/var/lib/prometheus/node-exporter", ChaseOptions{Dir: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	prom := filepath.Join(root, "var/lib/prometheus")
	os.Rename(filepath.Join(prom, "node-exporter"), filepath.Join(prom, "moved"))
	os.Symlink(filepath.Join(root, "etc/sudoers.d"), filepath.Join(prom, "node-exporter"))
	if err := d.WriteAtomic("provision_verify.prom", []byte("x 1\n"), WriteOptions{Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "etc/sudoers.d")); len(ents) != 0 {
		t.Fatalf("the write followed the swapped link: /etc/sudoers.d holds %v", ents)
	}
	if _, err := os.Stat(filepath.Join(prom, "moved", "provision_verify.prom")); err != nil {
		t.Fatalf("the file is not in the directory judged: %v", err)
	}
}

// TestChaseNotExist: a missing component is fs.ErrNotExist, for callers
// that treat a missing directory as "not configured here".
func TestChaseNotExist(t *testing.T) {
	h, _ := New(t.TempDir())
	if _, _, err := h.Chase("/var/lib/prometheus/node-exporter", ChaseOptions{Dir: true}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Chase of a missing directory: %v, want fs.ErrNotExist", err)
	}
}

// TestChaseDirMadeMeanwhile: two runs creating the same parents at once
// (cloud-init's and the unit's, tests/reliability TestConcurrentRuns):
// a directory the open did not find but the look after it does was made
// by the other run in between, and is entered, not reported missing.
func TestChaseDirMadeMeanwhile(t *testing.T) {
	h, _ := New(t.TempDir())
	made := 0
	afterOpenFailed = func(dirfd int, name string) {
		if made == 0 && name == "lib" {
			made++
			if err := unix.Mkdirat(dirfd, name, 0o755); err != nil {
				t.Errorf("making %s meanwhile: %v", name, err)
			}
		}
	}
	defer func() { afterOpenFailed = func(int, string) {} }()
	d, name, err := h.Chase("/var/lib/provision", ChaseOptions{Mkdir: true, Own: true, FollowLast: true})
	if err != nil {
		t.Fatalf("Chase with a parent made meanwhile: %v", err)
	}
	defer d.Close()
	if made != 1 || d.Node() != "/var/lib" || name != "provision" {
		t.Fatalf("made %d meanwhile; chased to %s %s, want /var/lib provision", made, d.Node(), name)
	}
}
