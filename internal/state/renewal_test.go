package state

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/system"
)

// TestReadRefusesNonRegular is issue 24 item 4 for state_dir/renew.json: a
// FIFO there hung verify, renew, renew --check and bootstrap until killed,
// and the record was read without a size bound. Load opens it as a regular
// file without blocking and within MaxRenewalSize, and says why it refuses; Read,
// for callers that only want the record, returns nil then.
func TestReadRefusesNonRegular(t *testing.T) {
	good := &Renewal{NodeID: "gpu-0042", Serial: "42", LastResult: Renewed, LastAttempt: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	tests := []struct {
		name    string
		plant   func(t *testing.T, p string)
		wantErr string // "" means the record is read
		missing bool
	}{
		{"regular", func(t *testing.T, p string) {
			if err := WriteRenewal(filepath.Dir(p), good); err != nil {
				t.Fatal(err)
			}
		}, "", false},
		{"missing", func(t *testing.T, p string) {}, "", true},
		{"FIFO", func(t *testing.T, p string) { must(t, syscall.Mkfifo(p, 0o600)) }, "FIFO", false},
		{"directory", func(t *testing.T, p string) { must(t, os.Mkdir(p, 0o700)) }, "directory", false},
		{"symlink", func(t *testing.T, p string) { must(t, os.Symlink("/etc/passwd", p)) }, "symbolic link", false},
		{"larger than the bound", func(t *testing.T, p string) {
			must(t, os.WriteFile(p, []byte(`{"node_id":"`+strings.Repeat("x", MaxRenewalSize)+`"}`), 0o644))
		}, "larger than", false},
		{"not JSON", func(t *testing.T, p string) { must(t, os.WriteFile(p, []byte("garbage"), 0o644)) }, "renew.json", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, RenewalFile)
			tt.plant(t, p)
			type result struct {
				rec  *Renewal
				err  error
				read *Renewal
			}
			ch := make(chan result, 1)
			go func() {
				r, err := LoadRenewal(dir)
				ch <- result{r, err, ReadRenewal(dir)}
			}()
			var got result
			select {
			case got = <-ch:
			case <-time.After(30 * time.Second):
				t.Fatal("reading renew.json did not return: it blocks on what is there")
			}
			switch {
			case tt.wantErr != "":
				if got.err == nil || !strings.Contains(got.err.Error(), tt.wantErr) || !strings.Contains(got.err.Error(), p) || got.rec != nil || got.read != nil {
					t.Errorf("Load = %v, %v (Read %v); want a refusal naming %s and saying %q", got.rec, got.err, got.read, p, tt.wantErr)
				}
				if tt.name != "not JSON" && tt.name != "larger than the bound" && !errors.Is(got.err, system.ErrUnsafeFile) {
					t.Errorf("Load error %v is not a system.ErrUnsafeFile", got.err)
				}
			case tt.missing:
				if got.err != nil || got.rec != nil || got.read != nil {
					t.Errorf("Load = %v, %v; want nothing and no error", got.rec, got.err)
				}
			default:
				if got.err != nil || got.rec == nil || got.rec.Serial != "42" || got.read == nil || got.read.Serial != "42" {
					t.Errorf("Load = %+v, %v; Read %+v; want the record", got.rec, got.err, got.read)
				}
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
