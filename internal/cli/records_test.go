package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/tests/controlplane"
)

// TestDamagedRecordsWarned is issue 31 item 4 through the commands: a
// renew.json or receipt.json that is truncated, empty or binary is named by
// verify (a state-records warning in the report and the metrics) and by
// status (on its attention list) without being touched; bootstrap, which
// holds the lock, keeps it aside under a timestamped name, content intact,
// and every later report names what it kept. Nothing outside state_dir
// and the metrics directory changes.
func TestDamagedRecordsWarned(t *testing.T) {
	full := `{"node_id":"gpu-0042","serial":"42","last_result":"renewed","hook_pending":true,"proved_at":"2026-03-01T00:00:00Z"}`
	kinds := map[string]string{"truncated": full[:40], "empty": "", "binary": "\x00\x01\xfe\xff\x1b[2J"}
	for _, record := range []string{state.RenewalFile, state.ReceiptFile} {
		for kind, content := range kinds {
			t.Run(record+"/"+kind, func(t *testing.T) {
				root, prom := metricsRoot(t, "", true)
				stateDir := filepath.Join(root, "var/lib/provision")
				if _, err := system.ClaimDir(stateDir, true); err != nil {
					t.Fatal(err)
				}
				p := filepath.Join(stateDir, record)
				os.WriteFile(p, []byte(content), 0o644)
				// The managed block is provision's own: written first, so
				// the digest below holds what is not.
				if code := Run(context.Background(), []string{"hosts", "apply", "--root", root}, &bytes.Buffer{}, &bytes.Buffer{}); code != 0 {
					t.Fatalf("hosts apply: exit %d", code)
				}
				outside := treeDigest(t, filepath.Join(root, "etc"))

				// verify: named, untouched.
				m, _ := runJSON(t, root, "verify")
				warning := recordsWarning(t, m)
				if !strings.Contains(warning, record+" does not parse") {
					t.Errorf("verify's warning %q does not name %s", warning, record)
				}
				if b, _ := os.ReadFile(p); string(b) != content {
					t.Fatal("verify changed the damaged record")
				}
				if b, _ := os.ReadFile(filepath.Join(prom, "provision_verify.prom")); !strings.Contains(string(b), `provision_check_status{check="state-records",command="verify",layer="state",owner="node"} 1`) {
					t.Errorf("the metrics do not carry the warning:\n%s", b)
				}
				if a := statusAttention(t, root); !strings.Contains(a, record+" does not parse") {
					t.Errorf("status attention %q does not name %s", a, record)
				}

				// bootstrap keeps it aside (and fails later, at hosts).
				m, _ = runJSON(t, root, "bootstrap")
				ds := state.FindDamage(stateDir)
				if len(ds) != 1 || ds[0].File != record || ds[0].Aside == "" {
					t.Fatalf("after bootstrap: %+v", ds)
				}
				if b, _ := os.ReadFile(filepath.Join(stateDir, ds[0].Aside)); string(b) != content {
					t.Fatalf("the record kept aside holds %q", b)
				}
				if w := recordsWarning(t, m); !strings.Contains(w, "kept aside as "+ds[0].Aside) {
					t.Errorf("bootstrap's warning %q does not name %s", w, ds[0].Aside)
				}
				if a := statusAttention(t, root); !strings.Contains(a, "kept aside as "+ds[0].Aside) {
					t.Errorf("status attention %q does not name %s", a, ds[0].Aside)
				}
				if after := treeDigest(t, filepath.Join(root, "etc")); after != outside {
					t.Errorf("something outside provision's files changed:\n%s---\n%s", outside, after)
				}
			})
		}
	}
}

// runJSON runs a command with --format json under root and returns its
// report and exit code.
func runJSON(t *testing.T, root string, args ...string) (map[string]any, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), append(args, "--format", "json", "--root", root), &out, &errb)
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("%v: %v\n%s\n%s", args, err, out.String(), errb.String())
	}
	return m, code
}

// recordsWarning is the report's state-records check message, which must
// be a warning.
func recordsWarning(t *testing.T, m map[string]any) string {
	t.Helper()
	checks, _ := m["checks"].([]any)
	for _, c := range checks {
		c := c.(map[string]any)
		if c["name"] == RecordsCheck {
			if c["status"] != "warn" || c["layer"] != "state" || c["remedy"] == "" {
				t.Errorf("the records check is %v", c)
			}
			return c["message"].(string)
		}
	}
	t.Fatalf("no %s check in %v", RecordsCheck, m["checks"])
	return ""
}

// statusAttention is status's attention list, one line each.
func statusAttention(t *testing.T, root string) string {
	t.Helper()
	m, _ := runJSON(t, root, "status")
	var lines []string
	for _, a := range m["attention"].([]any) {
		lines = append(lines, a.(string))
	}
	return strings.Join(lines, "\n")
}

// TestStatusNamesAnEmptyBundle is issue 31 item 5: status on an empty
// ca.pem printed "no CA certificate in it: <nil>". It says what is wrong
// with the file: empty, no PEM certificate, or one that does not parse.
func TestStatusNamesAnEmptyBundle(t *testing.T) {
	p, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	l, err := p.IssueClientCert("gpu-0042")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, bundle, says string }{
		{"empty", "", "ca.pem is empty: no CA certificate in it"},
		{"blank lines", "\n\n", "ca.pem is empty"},
		{"not PEM", "hello\n", "ca.pem holds no PEM CA certificate"},
		{"a key instead", string(l.KeyPEM()), "ca.pem holds no PEM CA certificate"},
		{"a certificate that does not parse", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "ca.pem: a CA certificate in it does not parse"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := jsonRoot(t)
			if err := controlplane.WriteNodeCredentials(root, controlplane.DefaultPKIDir, l, []byte(tt.bundle)); err != nil {
				t.Fatal(err)
			}
			m, code := runJSON(t, root, "status")
			creds := m["credentials"].(map[string]any)
			msg, _ := creds["error"].(string)
			if code != ExitStatusUnusable || !strings.Contains(msg, tt.says) || strings.Contains(msg, "<nil>") {
				t.Fatalf("status: exit %d, credentials error %q; want %d and %q", code, msg, ExitStatusUnusable, tt.says)
			}
			var out bytes.Buffer
			Run(context.Background(), []string{"status", "--root", root}, &out, &bytes.Buffer{})
			if !strings.Contains(out.String(), tt.says) || strings.Contains(out.String(), "<nil>") {
				t.Fatalf("the text status does not say %q:\n%s", tt.says, out.String())
			}
		})
	}
}
