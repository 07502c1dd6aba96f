package system

import (
	"bytes"
	"errors"
	"github.com/gpuaas/provision/internal/testenv"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// withUmask runs f under umask m. The umask is per process, so tests using
// it never run in parallel.
func withUmask(m int, f func()) {
	old := syscall.Umask(m)
	defer syscall.Umask(old)
	f()
}

func TestWriteFileAtomicMode(t *testing.T) {
	tests := []struct {
		name     string
		existing os.FileMode // 0: no existing file
		umask    int
		mode     os.FileMode
	}{
		// The renameio trap: WriteFile would keep 0644 on a key.
		{"existing 0644 key becomes 0600 under umask 077", 0o644, 0o077, 0o600},
		{"existing 0644 key becomes 0600 under umask 022", 0o644, 0o022, 0o600},
		{"existing 0666 becomes 0600", 0o666, 0o000, 0o600},
		{"new file 0644 under umask 077 stays 0644", 0, 0o077, 0o644},
		{"new key 0600 under umask 000", 0, 0o000, 0o600},
		{"existing 0600 widened to 0640 on purpose", 0o600, 0o077, 0o640},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "key.pem")
			if tt.existing != 0 {
				if err := os.WriteFile(path, []byte("old key"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, tt.existing); err != nil {
					t.Fatal(err)
				}
			}
			data := []byte("-----BEGIN EC PRIVATE KEY-----\nnew\n-----END EC PRIVATE KEY-----\n")
			var err error
			withUmask(tt.umask, func() { err = WriteFileAtomic(path, data, WriteOptions{Mode: tt.mode}) })
			if err != nil {
				t.Fatalf("WriteFileAtomic: %v", err)
			}
			st, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if !st.Mode().IsRegular() || st.Mode().Perm() != tt.mode {
				t.Fatalf("mode %v, want %v", st.Mode(), tt.mode)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
				t.Fatalf("content %q", got)
			}
			if n := names(t, dir); !slices.Equal(n, []string{"key.pem"}) {
				t.Fatalf("directory holds %v, want only key.pem", n)
			}
		})
	}
}

func TestWriteFileAtomicOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "needs root to chown a file to another user")
	}
	for _, keep := range []bool{true, false} {
		dir := t.TempDir()
		path := filepath.Join(dir, "hosts")
		if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, 1234, 5678); err != nil {
			t.Fatal(err)
		}
		if err := WriteFileAtomic(path, []byte("new"), WriteOptions{Mode: 0o644, KeepOwner: keep}); err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(path)
		sys := st.Sys().(*syscall.Stat_t)
		wantUID, wantGID := uint32(0), uint32(0)
		if keep {
			wantUID, wantGID = 1234, 5678
		}
		if sys.Uid != wantUID || sys.Gid != wantGID {
			t.Fatalf("KeepOwner=%v: owner %d:%d, want %d:%d", keep, sys.Uid, sys.Gid, wantUID, wantGID)
		}
	}
}

func TestWriteFileAtomicRefusesNonRegular(t *testing.T) {
	// A link (or FIFO, or directory) where provision writes its own file was
	// planted: the write is refused, naming it, and neither the link nor its
	// target changes.
	for _, kind := range []string{"symlink", "fifo", "dir"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			target := filepath.Join(dir, "elsewhere")
			if err := os.WriteFile(target, []byte("theirs"), 0o644); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "receipt.json")
			var err error
			switch kind {
			case "symlink":
				err = os.Symlink(target, p)
			case "fifo":
				err = syscall.Mkfifo(p, 0o600)
			case "dir":
				err = os.Mkdir(p, 0o700)
			}
			if err != nil {
				t.Fatal(err)
			}
			before, _ := os.Lstat(p)
			err = WriteFileAtomic(p, []byte("mine"), WriteOptions{Mode: 0o600})
			if !errors.Is(err, ErrUnsafeFile) || !strings.Contains(err.Error(), p) {
				t.Fatalf("want a refusal naming %s, got %v", p, err)
			}
			after, _ := os.Lstat(p)
			if after.Mode() != before.Mode() {
				t.Errorf("%s changed from %v to %v", p, before.Mode(), after.Mode())
			}
			if got, _ := os.ReadFile(target); string(got) != "theirs" {
				t.Errorf("target written: %q", got)
			}
		})
	}
}

func TestWriteFileAtomicErrors(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFileAtomic(filepath.Join(dir, "missing", "f"), []byte("x"), WriteOptions{Mode: 0o600}); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
	// Renaming a file over a directory fails; the temp file is cleaned up.
	if err := os.Mkdir(filepath.Join(dir, "isdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "isdir", "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(filepath.Join(dir, "isdir"), []byte("x"), WriteOptions{Mode: 0o600}); err == nil {
		t.Fatal("replacing a non-empty directory succeeded")
	}
	if n := names(t, dir); !slices.Equal(n, []string{"isdir"}) {
		t.Fatalf("leftovers after a failed write: %v", n)
	}
	if err := SyncDir(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("SyncDir of a missing directory succeeded")
	}
	if err := SyncDir(dir); err != nil {
		t.Fatalf("SyncDir: %v", err)
	}
}

func TestWriteInPlace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hosts")
	if err := os.WriteFile(path, []byte(strings.Repeat("long old content\n", 50)), 0o640); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(path)
	for _, data := range []string{"short\n", strings.Repeat("longer than before\n", 80), ""} {
		if err := WriteInPlace(path, []byte(data)); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(path); string(got) != data {
			t.Fatalf("content %q, want %q", got, data)
		}
		after, _ := os.Stat(path)
		if !os.SameFile(before, after) || after.Mode().Perm() != 0o640 {
			t.Fatalf("in-place write changed the inode or mode: %v", after.Mode())
		}
	}
	if err := WriteInPlace(filepath.Join(dir, "absent"), []byte("x")); err == nil {
		t.Fatal("WriteInPlace created a missing file")
	}
	if _, err := os.Stat(filepath.Join(dir, "absent")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("absent file now exists: %v", err)
	}
}

func TestSweepTemp(t *testing.T) {
	dir := t.TempDir()
	leftovers := []string{
		TempPrefix + "receipt.json",
		".key.pem5577006791947779410",
		".cert.pem1",
		".hosts42",
	}
	keep := []string{
		"key.pem", "cert.pem", "hosts",
		".key.pem",                    // no digits
		".key.pemx1",                  // not only digits
		".key.pem.1",                  // not only digits
		".key.pem-1",                  // not only digits
		"key.pem123",                  // no leading dot
		".ca.pem123",                  // a name not swept for
		"provision-tmp-x",             // no leading dot
		".provision-tm-x",             // not the prefix
		"notes" + TempPrefix + "file", // prefix not at the start
	}
	for _, n := range append(slices.Clone(leftovers), keep...) {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A leftover temp directory (e.g. a staged credential set) goes too.
	tmpDir := filepath.Join(dir, TempPrefix+"set")
	if err := os.MkdirAll(filepath.Join(tmpDir, "nested"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmpDir, "nested", "key.pem"), []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}

	SweepTemp(dir, "key.pem", "cert.pem", "hosts")

	want := slices.Clone(keep)
	slices.Sort(want)
	if got := names(t, dir); !slices.Equal(got, want) {
		t.Fatalf("after SweepTemp: %v\nwant %v", got, want)
	}
	SweepTemp(filepath.Join(dir, "missing")) // must not panic
}

// TestSyncAll: files and a directory fsynced together; a file that cannot be
// fsynced (closed here) makes it fail, naming that file, whatever the others
// did.
func TestSyncAll(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) *os.File {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(name)
		t.Cleanup(func() { f.Close() })
		return f
	}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	a, b := open("a"), open("b")
	if err := SyncAll(a, b, d); err != nil {
		t.Fatalf("SyncAll of two files and their directory: %v", err)
	}
	if err := SyncAll(); err != nil {
		t.Fatalf("SyncAll of nothing: %v", err)
	}
	c := open("c")
	c.Close()
	err = SyncAll(a, c, d)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "c")) {
		t.Fatalf("SyncAll with a closed file = %v, want an error naming %s", err, filepath.Join(dir, "c"))
	}
}

// TestCreateDurable: a new file gets exactly its data and mode (umask
// ignored) and the crash point of an atomic write; an existing path, a
// symbolic link among them, is fs.ErrExist and left as it was.
func TestCreateDurable(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "marker.json")
	var points []string
	if err := CreateDurable(p, []byte("{}\n"), 0o640, func(s string) { points = append(points, s) }); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	st, serr := os.Stat(p)
	if err != nil || serr != nil || string(b) != "{}\n" || st.Mode().Perm() != 0o640 {
		t.Fatalf("created %q mode %v (%v %v), want {} 0640", b, st.Mode(), err, serr)
	}
	if !slices.Equal(points, []string{"before rename marker.json"}) {
		t.Fatalf("crash points %q", points)
	}
	if err := CreateDurable(p, []byte("x"), 0o600, nil); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("over an existing file: %v, want fs.ErrExist", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "{}\n" {
		t.Fatalf("the existing file became %q", b)
	}
	link := filepath.Join(dir, "link.json")
	target := filepath.Join(dir, "target")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := CreateDurable(link, []byte("x"), 0o600, nil); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("at a dangling link: %v, want fs.ErrExist", err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the link's target was created: %v", err)
	}
}

// TestWriteAtomicAll: the files are written whole with their exact modes,
// replacing what was there; a name that is not a regular file refuses the
// whole write before anything is renamed (the other file keeps its old
// content), and no temp file is left either way.
func TestWriteAtomicAll(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.json"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var renames []string
	hook := Hook(func(point string) { renames = append(renames, point) })
	files := []Named{{Name: "a.json", Data: []byte("new a"), Mode: 0o644}, {Name: "b.json", Data: []byte("new b"), Mode: 0o600}}
	withUmask(0o077, func() { err = d.WriteAtomicAll(files, hook) })
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		got, err := os.ReadFile(filepath.Join(dir, f.Name))
		st, _ := os.Stat(filepath.Join(dir, f.Name))
		if err != nil || string(got) != string(f.Data) || st.Mode().Perm() != f.Mode {
			t.Errorf("%s: %q %v (%v), want %q %v", f.Name, got, st.Mode().Perm(), err, f.Data, f.Mode)
		}
	}
	if want := []string{"before rename a.json", "before rename b.json"}; !slices.Equal(renames, want) {
		t.Errorf("hook points %q, want %q", renames, want)
	}

	if err := os.Symlink(filepath.Join(dir, "elsewhere"), filepath.Join(dir, "c.json")); err != nil {
		t.Fatal(err)
	}
	err = d.WriteAtomicAll([]Named{{Name: "a.json", Data: []byte("newer a"), Mode: 0o644}, {Name: "c.json", Data: []byte("c"), Mode: 0o644}}, nil)
	if !errors.Is(err, ErrUnsafeFile) {
		t.Fatalf("a link at c.json: got %v, want a refusal", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "a.json")); string(got) != "new a" {
		t.Errorf("a.json is %q after a refused write, want it unchanged", got)
	}
	if got := names(t, dir); !slices.Equal(got, []string{"a.json", "b.json", "c.json"}) {
		t.Errorf("directory holds %q, want no temp file", got)
	}
}
