package system

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// plant creates kind at p: a regular file, a symlink to outside, a FIFO or
// a directory.
func plant(t *testing.T, kind, p, outside string) {
	t.Helper()
	var err error
	switch kind {
	case "regular":
		err = os.WriteFile(p, []byte("12345"), 0o600)
	case "symlink":
		err = os.Symlink(outside, p)
	case "fifo":
		err = syscall.Mkfifo(p, 0o600)
	case "dir":
		err = os.Mkdir(p, 0o700)
	case "missing":
	default:
		t.Fatalf("unknown kind %s", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenRegular(t *testing.T) {
	tests := []struct {
		kind, wantKind string // wantKind "" means the open succeeds
		flag           int
	}{
		{"regular", "", os.O_RDWR},
		{"missing", "", os.O_RDWR | os.O_CREATE},
		{"symlink", "symbolic link", os.O_RDWR | os.O_CREATE},
		{"symlink", "symbolic link", os.O_RDONLY},
		{"fifo", "FIFO", os.O_RDWR | os.O_CREATE},
		{"fifo", "FIFO", os.O_RDONLY},
		{"fifo", "FIFO", os.O_WRONLY},
		{"dir", "directory", os.O_RDWR},
		{"dir", "directory", os.O_RDONLY},
	}
	for _, tt := range tests {
		t.Run(tt.kind+"/"+flagName(tt.flag), func(t *testing.T) {
			dir := t.TempDir()
			outside := filepath.Join(dir, "outside")
			os.WriteFile(outside, []byte("outside"), 0o644)
			p := filepath.Join(dir, ".lock")
			plant(t, tt.kind, p, outside)
			done := make(chan struct{})
			var f *os.File
			var err error
			go func() { f, err = OpenRegular(p, tt.flag, 0o600); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("OpenRegular blocked")
			}
			if tt.wantKind == "" {
				if err != nil {
					t.Fatal(err)
				}
				f.Close()
				return
			}
			var ue *UnsafeFileError
			if !errors.As(err, &ue) || ue.Kind != tt.wantKind || !strings.Contains(err.Error(), p) {
				t.Fatalf("want a %s refusal naming %s, got %v", tt.wantKind, p, err)
			}
			if b, _ := os.ReadFile(outside); string(b) != "outside" {
				t.Fatalf("the link's target changed: %q", b)
			}
		})
	}
}

func flagName(f int) string {
	s := map[int]string{os.O_RDONLY: "r", os.O_WRONLY: "w", os.O_RDWR: "rw"}[f&3]
	if f&os.O_CREATE != 0 {
		s += "c"
	}
	return s
}

func TestReadRegular(t *testing.T) {
	tests := []struct {
		name, kind string
		size       int
		max        int64
		want       string // substring of the error, "" for success
	}{
		{"small file", "regular", 5, 64, ""},
		{"exactly max", "regular", 5, 5, ""},
		{"over max", "regular", 5, 4, "larger than 4 bytes"},
		{"fifo", "fifo", 0, 64, "FIFO"},
		{"symlink", "symlink", 0, 64, "symbolic link"},
		{"directory", "dir", 0, 64, "directory"},
		{"missing", "missing", 0, 64, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			outside := filepath.Join(dir, "outside")
			os.WriteFile(outside, []byte("outside"), 0o644)
			p := filepath.Join(dir, "token")
			plant(t, tt.kind, p, outside)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			b, err := ReadRegular(ctx, p, tt.max)
			if time.Since(start) > 2*time.Second {
				t.Fatalf("ReadRegular took %s", time.Since(start))
			}
			if tt.want == "" {
				if err != nil || len(b) != tt.size {
					t.Fatalf("got %q, %v", b, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want an error with %q, got %q, %v", tt.want, b, err)
			}
		})
	}
}

func TestReadRegularHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := filepath.Join(t.TempDir(), "token")
	os.WriteFile(p, []byte("x"), 0o600)
	// A read that finished first may win the race; either way it returns.
	for range 20 {
		if _, err := ReadRegular(ctx, p, 64); err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled read: %v", err)
		}
	}
}

func TestEnsurePrivateDir(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(t *testing.T, p string)
		followLink bool
		wantErr    string
		wantMode   os.FileMode
		created    bool
		tightened  bool
	}{
		{name: "missing", setup: func(t *testing.T, p string) {}, wantMode: 0o700, created: true},
		{name: "exists 0777", setup: mkdirMode(0o777), wantMode: 0o700, tightened: true},
		{name: "exists 0775", setup: mkdirMode(0o775), wantMode: 0o700, tightened: true},
		{name: "exists 0755 kept", setup: mkdirMode(0o755), wantMode: 0o755},
		{name: "exists 0700", setup: mkdirMode(0o700), wantMode: 0o700},
		{name: "regular file", setup: func(t *testing.T, p string) { os.MkdirAll(filepath.Dir(p), 0o755); os.WriteFile(p, nil, 0o600) }, wantErr: "regular file"},
		{name: "symlink refused", setup: linkToDir, wantErr: "symbolic link"},
		{name: "symlink followed", setup: linkToDir, followLink: true, wantMode: 0o700, tightened: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			parent := filepath.Join(base, "var", "lib")
			p := filepath.Join(parent, "provision")
			tt.setup(t, p)
			os.MkdirAll(parent, 0o777)
			os.Chmod(parent, 0o777) // a parent provision did not create is never chmodded
			s, err := EnsurePrivateDir(p, tt.followLink)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), p) {
					t.Fatalf("want an error with %q naming %s, got %v", tt.wantErr, p, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(p)
			if err != nil || st.Mode().Perm() != tt.wantMode {
				t.Fatalf("mode %v (%v), want %04o", st.Mode(), err, tt.wantMode)
			}
			if s.Created != tt.created || s.Tightened != tt.tightened {
				t.Errorf("state %+v, want created %v tightened %v", s, tt.created, tt.tightened)
			}
			if pst, _ := os.Stat(parent); pst.Mode().Perm() != 0o777 {
				t.Errorf("parent chmodded to %v", pst.Mode())
			}
		})
	}
}

func mkdirMode(m os.FileMode) func(t *testing.T, p string) {
	return func(t *testing.T, p string) {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, m)
	}
}

func linkToDir(t *testing.T, p string) {
	real := filepath.Join(filepath.Dir(filepath.Dir(p)), "volume")
	os.MkdirAll(real, 0o777)
	os.Chmod(real, 0o777)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.Symlink(real, p); err != nil {
		t.Fatal(err)
	}
}

func TestResolveStaysInRoot(t *testing.T) {
	root := t.TempDir()
	h, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(p string) {
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(root, p), nil, 0o644)
	}
	ln := func(target, p string) {
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
			t.Fatal(err)
		}
	}
	mk("/etc/hosts.real")
	mk("/run/net/hosts")
	ln("/etc/hosts.real", "/a/abs")                     // absolute: under the root
	ln("hosts.real", "/etc/rel")                        // relative to the link's directory
	ln("../../../../../../run/net/hosts", "/etc/climb") // ".." stops at the root
	ln("/run/net", "/etc/netdir")                       // a linked directory in the middle
	ln("/a/abs", "/b/chain")                            // a chain
	ln("/loop2", "/loop1")
	ln("/loop1", "/loop2")
	ln("/etc/missing", "/etc/dangling")

	tests := []struct{ in, want, err string }{
		{"/etc/hosts.real", "/etc/hosts.real", ""},
		{"/a/abs", "/etc/hosts.real", ""},
		{"/etc/rel", "/etc/hosts.real", ""},
		{"/etc/climb", "/run/net/hosts", ""},
		{"/etc/netdir/hosts", "/run/net/hosts", ""},
		{"/b/chain", "/etc/hosts.real", ""},
		{"/etc/dangling", "/etc/missing", ""},
		{"/no/such/file", "/no/such/file", ""},
		{"/loop1", "", "too many levels"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := h.Resolve(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("want error %q, got %q, %v", tt.err, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Resolve(%s) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
			if !strings.HasPrefix(h.Path(got), root) {
				t.Fatalf("%s left the root", h.Path(got))
			}
		})
	}
}
