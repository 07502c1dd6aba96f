package system

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// finishes runs f and fails the test if it does not return: a read that
// blocks on a FIFO never would. The bound is a liveness limit, not a speed
// assertion.
func finishes(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not return: it blocks on what it reads", what)
	}
}

// TestHostReadsRefuseNonRegular is issue 24 item 4 for the host seam: a
// FIFO at /etc/machine-id or at the hosts file the --root resolver reads
// hung every command that looked at them. Both are opened as regular files
// without blocking (a link is resolved inside the root first, as the node
// sees it), and bounded in size.
func TestHostReadsRefuseNonRegular(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef"
	for _, kind := range []string{"fifo", "dir", "regular", "symlink-in-root", "huge"} {
		t.Run(kind, func(t *testing.T) {
			root := t.TempDir()
			etc := filepath.Join(root, "etc")
			os.MkdirAll(etc, 0o755)
			for _, name := range []string{"machine-id", "hosts"} {
				p := filepath.Join(etc, name)
				content := id + "\n"
				if name == "hosts" {
					content = "10.40.0.10 node-api.cp.internal\n"
				}
				switch kind {
				case "symlink-in-root":
					os.WriteFile(filepath.Join(etc, name+".real"), []byte(content), 0o644)
					if err := os.Symlink("/etc/"+name+".real", p); err != nil {
						t.Fatal(err)
					}
				case "huge":
					os.WriteFile(p, []byte(content+strings.Repeat("#", MaxHostsFile)), 0o644)
				default:
					plant(t, kind, p, "")
					if kind == "regular" {
						os.WriteFile(p, []byte(content), 0o644)
					}
				}
			}
			h, err := New(root)
			if err != nil {
				t.Fatal(err)
			}
			var got string
			finishes(t, "MachineID", func() { got = h.MachineID() })
			if want := map[bool]string{true: id, false: ""}[kind == "regular" || kind == "symlink-in-root"]; got != want {
				t.Errorf("MachineID = %q, want %q", got, want)
			}
			var lerr error
			finishes(t, "LookupHost", func() { _, lerr = h.LookupHost(context.Background(), "node-api.cp.internal") })
			switch kind {
			case "regular", "symlink-in-root":
				if lerr != nil {
					t.Errorf("LookupHost: %v", lerr)
				}
			case "huge":
				if lerr == nil || !strings.Contains(lerr.Error(), "larger than") {
					t.Errorf("LookupHost on a huge hosts file: %v, want a size refusal", lerr)
				}
			default:
				if !errors.Is(lerr, ErrUnsafeFile) || !strings.Contains(lerr.Error(), filepath.Join(etc, "hosts")) {
					t.Errorf("LookupHost on a %s: %v, want a refusal naming the file", kind, lerr)
				}
			}
		})
	}
}
