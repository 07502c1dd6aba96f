package state

import (
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
