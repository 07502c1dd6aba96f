package state

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/system"
)

// TestDamagedRecordsKeptAndNamed is issue 31 item 4: a renew.json (or
// receipt) that does not parse was read as no record: status said "last
// renew: never" and a pending hook was forgotten. Truncated, empty, binary
// and non-object records are named as damaged (FindDamage changes
// nothing), and KeepDamaged moves each aside under a timestamped name
// with its content intact, where FindDamage still names it; ClaimDir
// still takes the directory as provision's own.
func TestDamagedRecordsKeptAndNamed(t *testing.T) {
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	full := `{"node_id":"gpu-0042","serial":"42","last_result":"renewed","hook_pending":true}`
	contents := map[string]string{
		"truncated":     full[:len(full)/2],
		"empty":         "",
		"binary":        "\x00\x01\xfe\xffSQLite format 3\x00",
		"not an object": "null",
		"a list":        "[1,2]",
	}
	for _, record := range []string{RenewalFile, ReceiptFile} {
		for kind, content := range contents {
			t.Run(record+"/"+kind, func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "provision")
				if _, err := system.ClaimDir(dir, true); err != nil {
					t.Fatal(err)
				}
				p := filepath.Join(dir, record)
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
				var de *DamagedError
				if record == RenewalFile {
					if r, err := LoadRenewal(dir); !errors.As(err, &de) || r != nil || !strings.Contains(err.Error(), p) {
						t.Errorf("LoadRenewal = %v, %v; want a *DamagedError naming %s", r, err, p)
					}
				} else if r, err := ReadReceipt(dir); !errors.As(err, &de) || r != nil {
					t.Errorf("ReadReceipt = %v, %v; want a *DamagedError", r, err)
				}
				ds := FindDamage(dir)
				if len(ds) != 1 || ds[0].File != record || ds[0].Aside != "" || !strings.Contains(ds[0].String(), record+" does not parse") {
					t.Fatalf("FindDamage = %+v", ds)
				}
				if b, _ := os.ReadFile(p); string(b) != content {
					t.Fatal("FindDamage changed the record")
				}
				moved, err := KeepDamaged(dir, now)
				if err != nil || len(moved) != 1 {
					t.Fatalf("KeepDamaged = %+v, %v", moved, err)
				}
				aside := record + ".damaged-20260310T120000Z"
				if moved[0].Aside != aside {
					t.Errorf("kept aside as %s, want %s", moved[0].Aside, aside)
				}
				if b, err := os.ReadFile(filepath.Join(dir, aside)); err != nil || string(b) != content {
					t.Errorf("the record kept aside holds %q, %v; want it unchanged", b, err)
				}
				if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the damaged record is still in place: %v", err)
				}
				ds = FindDamage(dir)
				if len(ds) != 1 || ds[0].Aside != aside || !strings.Contains(ds[0].String(), "kept aside as "+aside) || ds[0].Remedy() == "" {
					t.Errorf("after KeepDamaged FindDamage = %+v", ds)
				}
				// The same second again: a second name, nothing replaced.
				os.WriteFile(p, []byte(content), 0o644)
				if moved, err := KeepDamaged(dir, now); err != nil || len(moved) != 1 || moved[0].Aside != aside+"-2" {
					t.Errorf("a second damaged record the same second: %+v, %v", moved, err)
				}
				if _, err := system.ClaimDir(dir, false); err != nil {
					t.Errorf("ClaimDir refused a state_dir holding a record kept aside: %v", err)
				}
			})
		}
	}
}

// TestGoodRecordsAreNotDamaged: a record that parses, a missing one, and
// what ClaimDir refuses (a FIFO) are not named damaged.
func TestGoodRecordsAreNotDamaged(t *testing.T) {
	dir := t.TempDir()
	if err := WriteRenewal(dir, &Renewal{NodeID: "gpu-1", LastResult: Renewed}); err != nil {
		t.Fatal(err)
	}
	if ds := FindDamage(dir); len(ds) != 0 {
		t.Fatalf("FindDamage of a good record = %+v", ds)
	}
	if moved, err := KeepDamaged(dir, time.Now()); err != nil || len(moved) != 0 {
		t.Fatalf("KeepDamaged of a good record = %+v, %v", moved, err)
	}
	if r, err := LoadRenewal(dir); err != nil || r.NodeID != "gpu-1" {
		t.Fatalf("the good record: %+v, %v", r, err)
	}
}
