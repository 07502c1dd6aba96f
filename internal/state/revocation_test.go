package state

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/system"
)

// TestForgetKeepsWhatIsNotTheIdentity: Forget removes the receipt, the done
// markers, the renew, exposure, enrollment and failure records, and keeps
// the revoke record, the lock and the tasks handed off to the node-agent.
func TestForgetKeepsWhatIsNotTheIdentity(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	os.Mkdir(dir, 0o700)
	if err := system.MarkOwn(dir); err != nil { // a state_dir provision made
		t.Fatal(err)
	}
	for _, f := range []string{ReceiptFile, RenewalFile, ExposedFile, PendingFile, FailureFile, RevokeFile, ".lock"} {
		os.WriteFile(filepath.Join(dir, f), []byte("{}"), 0o600)
	}
	os.MkdirAll(filepath.Join(dir, DoneDir), 0o700)
	os.WriteFile(filepath.Join(dir, DoneDir, "machine"), nil, 0o644)
	os.MkdirAll(filepath.Join(dir, "tasks"), 0o700)
	os.WriteFile(filepath.Join(dir, "tasks", "7.json"), []byte("{}"), 0o600)
	removed, err := Forget(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{ReceiptFile, RenewalFile, ExposedFile, PendingFile, FailureFile, DoneDir + "/"}
	slices.Sort(removed)
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	for _, keep := range []string{RevokeFile, ".lock", "tasks/7.json", system.OwnMark} {
		if _, err := os.Stat(filepath.Join(dir, keep)); err != nil {
			t.Errorf("%s: %v", keep, err)
		}
	}
	if again, err := Forget(dir); err != nil || len(again) != 0 {
		t.Errorf("again: %v %v", again, err)
	}
	// The record round-trips with its schema version.
	rec := &Revocation{NodeID: "n", At: time.Now().UTC(), Certificates: []RevokedCert{{Serial: "1", Result: RevokedNow}}, Removed: removed, Complete: true}
	if err := WriteRevocation(dir, rec, nil); err != nil {
		t.Fatal(err)
	}
	got := ReadRevocation(dir)
	if got == nil || got.SchemaVersion != SchemaVersion || !got.Complete || got.Certificates[0].Serial != "1" {
		t.Errorf("read back %+v", got)
	}
}
