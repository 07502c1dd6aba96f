package system

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// TestOverlayResolvesFirst: a name in Host.Overlay (the block a dry run
// decided and did not write) resolves to its address before the hosts file
// is read, whatever the file says or lacks; other names still resolve
// through the file.
func TestOverlayResolvesFirst(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("10.0.0.1 other.internal\n10.9.9.9 ca.cp.internal\n"), 0o644)
	h, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	h.HostsFile = "/etc/hosts"
	ca := netip.MustParseAddr("127.0.0.1")
	h.Overlay = map[string][]netip.Addr{"ca.cp.internal": {ca}, "node-api.cp.internal": {ca}}
	for name, want := range map[string]string{"CA.cp.internal": "127.0.0.1", "node-api.cp.internal": "127.0.0.1", "other.internal": "10.0.0.1"} {
		got, err := h.LookupHost(context.Background(), name)
		if err != nil || len(got) != 1 || got[0].String() != want {
			t.Errorf("%s: %v %v, want %s", name, got, err, want)
		}
	}
	if _, err := h.LookupHost(context.Background(), "missing.internal"); err == nil {
		t.Error("a name in neither resolved")
	}
}
