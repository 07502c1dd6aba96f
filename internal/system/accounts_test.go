package system

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLookupGroupStreams is issue 31 item 3: a 5.5 MB /etc/group (one
// group with 500,000 members) made the lookup fail with advice to create a
// group that existed. It is streamed, so any size a host really has is
// read, and only a file past MaxAccountDB says "group too large to read".
func TestLookupGroupStreams(t *testing.T) {
	members := make([]string, 500000)
	for i := range members {
		members[i] = fmt.Sprintf("member%06d", i)
	}
	big := "everyone:x:100:" + strings.Join(members, ",")
	long := strings.Repeat("n", maxField+10) + ":x:7:"
	group := "root:x:0:\n" + big + "\n" + long + "\nbroken line\n::\nnogid:x:\nnode-agent:x:990:agent\nlast:x:991:"
	if len(group) < 5<<20 {
		t.Fatalf("the test file is only %d bytes", len(group))
	}
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	if err := os.WriteFile(filepath.Join(root, "etc/group"), []byte(group), 0o644); err != nil {
		t.Fatal(err)
	}
	h, _ := New(root)
	tests := []struct {
		name string
		gid  int
		err  string
	}{
		{"node-agent", 990, ""},
		{"everyone", 100, ""},
		{"root", 0, ""},
		{"last", 991, ""}, // no newline at the end of the file
		{"42", 42, ""},    // a numeric gid is taken as it is
		{"nogid", -1, "no numeric gid"},
		{"missing", -1, `no group "missing" in /etc/group`},
		{"broken line", -1, "no group"},
	}
	for _, tt := range tests {
		gid, err := h.LookupGroup(tt.name)
		if tt.err == "" && (err != nil || gid != tt.gid) {
			t.Errorf("LookupGroup(%s) = %d, %v; want %d", tt.name, gid, err, tt.gid)
		}
		if tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("LookupGroup(%s) = %d, %v; want an error saying %q", tt.name, gid, err, tt.err)
		}
	}
	if _, err := h.LookupGroup(strings.Repeat("n", maxField+10)); err == nil {
		t.Error("a name longer than any field provision keeps was found")
	}
	os.Remove(filepath.Join(root, "etc/group"))
	if _, err := h.LookupGroup("node-agent"); err == nil || errors.Is(err, ErrGroupTooLarge) {
		t.Errorf("LookupGroup without /etc/group: %v", err)
	}
}

// TestLookupGroupTooLarge: the one bound left says so, never "create the
// group". A sparse file past the bound costs no disk.
func TestLookupGroupTooLarge(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	f, err := os.Create(filepath.Join(root, "etc/group"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("a:x:1:\n")
	if err := f.Truncate(MaxAccountDB + 10); err != nil {
		t.Fatal(err)
	}
	f.Close()
	h, _ := New(root)
	_, err = h.LookupGroup("node-agent")
	if !errors.Is(err, ErrGroupTooLarge) || !strings.Contains(err.Error(), "group too large to read") {
		t.Fatalf("LookupGroup past the bound: %v", err)
	}
}

// BenchmarkLookupGroup is the streamed lookup of a group after a line of
// 500,000 members (about 7 MB), as renew and status do with
// paths.key_group.
func BenchmarkLookupGroup(b *testing.B) {
	members := make([]string, 500000)
	for i := range members {
		members[i] = fmt.Sprintf("member%06d", i)
	}
	root := b.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("everyone:x:100:"+strings.Join(members, ",")+"\nnode-agent:x:990:\n"), 0o644)
	h, _ := New(root)
	b.ReportAllocs()
	for b.Loop() {
		if gid, err := h.LookupGroup("node-agent"); err != nil || gid != 990 {
			b.Fatal(gid, err)
		}
	}
}
