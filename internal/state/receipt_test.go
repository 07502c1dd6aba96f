package state

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestReceiptRoundTrip(t *testing.T) {
	proved := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	base := Receipt{
		NodeID: "gpu-0042", Serial: "123456789", Issuer: "CN=Control Plane Test Intermediate", Subject: "CN=" + "gpu-0042",
		RootFingerprint: strings.Repeat("ab", 32), NotAfter: proved.Add(24 * time.Hour),
		Endpoint: "https://node-api.cp.internal:8443", ResolvedAddr: "127.0.0.1:8443", ProbeStatus: 204,
		Enrolled: true, ProvedAt: proved, Version: "test",
	}
	const mid = "0123456789abcdef0123456789abcdef"
	tests := []struct {
		name      string
		machineID string
	}{
		{"with machine id", mid},
		{"without machine id", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			r := base
			r.MachineID = tt.machineID
			if err := WriteReceipt(dir, &r, nil); err != nil {
				t.Fatalf("WriteReceipt: %v", err)
			}
			got, err := ReadReceipt(dir)
			if err != nil {
				t.Fatalf("ReadReceipt: %v", err)
			}
			if !reflect.DeepEqual(*got, r) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", *got, r)
			}
			// The JSON field names are an interface.
			b, _ := os.ReadFile(filepath.Join(dir, ReceiptFile))
			var m map[string]any
			json.Unmarshal(b, &m)
			for _, k := range []string{"node_id", "serial", "issuer", "root_fingerprint", "not_after", "endpoint", "proved_at"} {
				if _, ok := m[k]; !ok {
					t.Errorf("receipt JSON lacks %q", k)
				}
			}
			marker := filepath.Join(dir, DoneDir, mid)
			_, err = os.Stat(marker)
			switch {
			case tt.machineID != "" && err != nil:
				t.Fatalf("done marker missing: %v", err)
			case tt.machineID == "":
				if _, err := os.Stat(filepath.Join(dir, DoneDir)); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("a done directory was written without a machine id (%v)", err)
				}
			default:
				mb, _ := os.ReadFile(marker)
				var mm map[string]string
				if err := json.Unmarshal(mb, &mm); err != nil || mm["serial"] != r.Serial {
					t.Fatalf("done marker %s does not carry the serial (%v)", mb, err)
				}
			}
		})
	}
	if _, err := ReadReceipt(filepath.Join(t.TempDir(), "none")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ReadReceipt of nothing = %v, want ErrNotExist", err)
	}
}

// TestPendingMarker: the first marker is created in place, a second
// replaces it whole, a torn one (what a power cut during the first write
// can leave, before the token was sent) reads as none and is replaced, and
// a link where the marker goes is refused with the link left as it was.
func TestPendingMarker(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, PendingFile)
	t0 := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	for i, p := range []Pending{{TokenSHA256: strings.Repeat("a", 64), Started: t0}, {TokenSHA256: strings.Repeat("b", 64), Started: t0.Add(time.Minute)}} {
		if err := WritePending(dir, p, nil); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		got, ok := ReadPending(context.Background(), dir)
		if st, err := os.Stat(path); !ok || got != p || err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("write %d: read %+v %v (stat %v), want %+v, 0600", i, got, ok, err, p)
		}
	}
	if err := os.WriteFile(path, []byte(`{"token_sha2`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok := ReadPending(context.Background(), dir); ok {
		t.Fatal("a torn marker read as a marker")
	}
	p := Pending{TokenSHA256: strings.Repeat("c", 64), Started: t0}
	if err := WritePending(dir, p, nil); err != nil {
		t.Fatal(err)
	}
	if got, ok := ReadPending(context.Background(), dir); !ok || got != p {
		t.Fatalf("after a torn marker: %+v %v, want %+v", got, ok, p)
	}
	os.Remove(path)
	if err := os.Symlink(filepath.Join(dir, "elsewhere"), path); err != nil {
		t.Fatal(err)
	}
	if err := WritePending(dir, p, nil); err == nil {
		t.Fatal("a marker was written through a symbolic link")
	}
	if target, err := os.Readlink(path); err != nil || target != filepath.Join(dir, "elsewhere") {
		t.Fatalf("the link became %q (%v)", target, err)
	}
}
