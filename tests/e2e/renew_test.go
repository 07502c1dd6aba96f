package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// The exit codes of renew --check (README, "Exit codes").
const (
	checkDue         = 0
	checkNotDue      = 30
	checkCannotRenew = 31
)

// reenroll is the sentence every report of a certificate that cannot be
// renewed carries (README, runbook).
const reenroll = "re-enrollment with a fresh one-time token is needed (provision bootstrap)"

// leafSerial is the serial of the certificate the node-agent reads now.
func (n *node) leafSerial() string {
	n.T.Helper()
	leaf, _ := n.loadPair()
	return leaf.SerialNumber.String()
}

// renewRecord is state_dir/renew.json as its documented fields name it,
// decoded independently of internal/state.
type renewRecord struct {
	NodeID      string    `json:"node_id"`
	Serial      string    `json:"serial"`
	NotAfter    time.Time `json:"not_after"`
	RenewAfter  time.Time `json:"renew_after"`
	DueAt       time.Time `json:"due_at"`
	LastAttempt time.Time `json:"last_attempt"`
	LastResult  string    `json:"last_result"`
	LastError   string    `json:"last_error"`
	FailedLayer string    `json:"failed_layer"`
}

func (n *node) renewRecord() renewRecord {
	n.T.Helper()
	var r renewRecord
	if err := json.Unmarshal(readFile(n.T, filepath.Join(n.Files.StateDir, "renew.json")), &r); err != nil {
		n.T.Fatal(err)
	}
	return r
}

// TestRenewBinary: the real binary against a real step-ca. Right after a
// bootstrap nothing is due: --check exits 30 (0 with --force), and renew
// exits 0 quickly without a new certificate. renew --force exits 0 with a
// new serial, proven, and verify passes with it; --format json carries
// every documented field, and renew.json records the run.
func TestRenewBinary(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, true)
	nodetest.WantExit(t, n.RunJSON("bootstrap"), 0)
	first := n.leafSerial()

	r := n.Run("renew", "--check")
	nodetest.WantExit(t, r, checkNotDue)
	if !strings.HasPrefix(r.Stdout, "provision renew --check: not due: the certificate (serial "+first+")") || !strings.HasSuffix(r.Stdout, "(exit 30)\n") {
		t.Errorf("renew --check said %q", r.Stdout)
	}
	if r := n.RunJSON("renew", "--check"); !r.Report.OK || r.Report.Command != "renew" || r.Report.FailedLayer != "" {
		t.Errorf("renew --check --format json: %+v", r.Report)
	}
	nodetest.WantExit(t, n.Run("renew", "--check", "--force"), checkDue)

	// Nothing due: exit 0 at once, no new certificate, no new generation.
	gens := generations(t, n.Files.PKIDir)
	r = n.RunJSON("renew")
	nodetest.WantExit(t, r, 0)
	if !r.Report.OK || !strings.HasPrefix(r.Report.Summary, "not due") || len(r.Report.Checks) != 0 {
		t.Errorf("renew with nothing due: %+v", r.Report)
	}
	if r.Took > 10*time.Second { // no proof, no long poll: a roots fetch
		t.Errorf("renew with nothing due took %s", r.Took)
	}
	if s := n.leafSerial(); s != first {
		t.Errorf("renew with nothing due changed the certificate: %s -> %s", first, s)
	}
	if g := generations(t, n.Files.PKIDir); strings.Join(g, " ") != strings.Join(gens, " ") {
		t.Errorf("renew with nothing due changed the generations: %v -> %v", gens, g)
	}
	if rec := n.renewRecord(); rec.LastResult != "not-due" || rec.Serial != first || rec.DueAt.Before(rec.RenewAfter) || !rec.NotAfter.After(rec.DueAt) {
		t.Errorf("renew.json after a run with nothing due: %+v", rec)
	}

	// --force: a new certificate, proven before it was published.
	r = n.Run("renew", "--force", "--format", "json")
	nodetest.WantExit(t, r, 0)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.Stdout), &raw); err != nil || strings.Count(strings.TrimSpace(r.Stdout), "\n") != 0 {
		t.Fatalf("renew --format json is not one JSON line (%v):\n%s", err, r.Stdout)
	}
	for _, k := range []string{"ok", "command", "node_id", "failed_layer", "owner", "failed_check", "summary", "remedy", "transient", "exit_code", "checks"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("renew's JSON report lacks %q:\n%s", k, r.Stdout)
		}
	}
	var checks []map[string]json.RawMessage
	json.Unmarshal(raw["checks"], &checks)
	if len(checks) == 0 {
		t.Fatalf("renew --force reports no checks of its proof:\n%s", r.Stdout)
	}
	// remedy and evidence are left out of a check when empty (README).
	evidence := false
	for _, c := range checks {
		for _, k := range []string{"name", "layer", "owner", "status", "message", "duration_ms"} {
			if _, ok := c[k]; !ok {
				t.Errorf("a check of renew's report lacks %q: %s", k, c["name"])
			}
		}
		_, has := c["evidence"]
		evidence = evidence || has
	}
	if !evidence {
		t.Errorf("no check of renew's proof carries evidence:\n%s", r.Stdout)
	}
	var rep nodetest.Report
	json.Unmarshal([]byte(r.Stdout), &rep)
	second := n.leafSerial()
	if second == first {
		t.Fatalf("renew --force exited 0 but the serial is still %s", first)
	}
	if !rep.OK || rep.Command != "renew" || rep.NodeID != n.ID || *rep.ExitCode != 0 ||
		!strings.HasPrefix(rep.Summary, "renewed: serial "+second+" replaced "+first) || !strings.Contains(rep.Summary, "proven by tasks/wait") {
		t.Errorf("renew --force report: %+v", rep)
	}
	if cs := rep.LayerChecks("tasks-wait"); len(cs) != 1 || cs[0].Status != "pass" {
		t.Errorf("renew --force: its proof's tasks-wait check: %+v", cs)
	}
	if rec := n.renewRecord(); rec.LastResult != "renewed" || rec.Serial != second || rec.NodeID != n.ID || rec.LastError != "" {
		t.Errorf("renew.json after renew --force: %+v", rec)
	}
	if r := n.RunJSON("verify"); r.Code != 0 {
		t.Fatalf("verify after renew --force:\n%s", r)
	}
	nodetest.WantExit(t, n.Run("renew", "--check"), checkNotDue)
}

// TestRenewCannotRenewBinary: an expired certificate the CA will not renew
// after expiry stops renew with exit 12, a stale one with 13, each saying
// that re-enrollment with a fresh one-time token is needed. renew --check
// exits 31 for a stale one (seen offline against the installed ca.pem, or,
// when the node's ca.pem is as stale as its certificate, once a renew run
// found it against the CA's roots) and 0 for an expired one: only the CA
// can say whether it renews after expiry, so the renew unit must run.
func TestRenewCannotRenewBinary(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		plant  func(t *testing.T, cp *controlplane.ControlPlane, n *node) (*controlplane.Leaf, []byte)
		code   int
		layer  string
		prefix string
		// offline: --check finds it before any renew run.
		offline bool
	}{
		{"expired", func(t *testing.T, cp *controlplane.ControlPlane, n *node) (*controlplane.Leaf, []byte) {
			// The CA's own certificate, ended ten minutes ago; this CA does
			// not allow renewal after expiry.
			l, err := cp.CA.IssueNodeCertAt(n.ID, time.Now().Add(-40*time.Minute), time.Now().Add(-10*time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			return l, cp.CA.RootPEM()
		}, 12, "credentials", "certificate expired: the certificate expired at ", false},
		{"stale, ca.pem current", func(t *testing.T, cp *controlplane.ControlPlane, n *node) (*controlplane.Leaf, []byte) {
			l, err := cp.IssueStaleCert(n.ID)
			if err != nil {
				t.Fatal(err)
			}
			return l, cp.CA.RootPEM()
		}, 13, "ca", "certificate stale: the node certificate (issuer ", true},
		{"stale, ca.pem as stale", func(t *testing.T, cp *controlplane.ControlPlane, n *node) (*controlplane.Leaf, []byte) {
			l, err := cp.IssueStaleCert(n.ID)
			if err != nil {
				t.Fatal(err)
			}
			return l, cp.Unrelated.RootPEM()
		}, 13, "ca", "certificate stale: the node certificate (issuer ", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cp := controlplane.Start(t, controlplane.Options{})
			n := newNode(t, cp, true)
			nodetest.WantExit(t, n.Run("bootstrap"), 0)
			l, caPEM := tc.plant(t, cp, n)
			if err := os.RemoveAll(n.Files.PKIDir); err != nil {
				t.Fatal(err)
			}
			if err := controlplane.WriteNodeCredentials(n.Root, n.Cfg.Paths.PKIDir, l, caPEM); err != nil {
				t.Fatal(err)
			}
			certBefore := readFile(t, n.CertPath())

			check := n.Run("renew", "--check")
			if tc.offline {
				nodetest.WantExit(t, check, checkCannotRenew)
				if !strings.Contains(check.Stdout, tc.prefix) || !strings.Contains(check.Stdout, reenroll) {
					t.Errorf("renew --check said %q", check.Stdout)
				}
				// The JSON names the reason's own layer, as the renewal run does.
				if j := n.RunJSON("renew", "--check"); j.Report.FailedLayer != tc.layer || j.Report.OK {
					t.Errorf("renew --check --format json: ok=%v failed_layer %q, want %q", j.Report.OK, j.Report.FailedLayer, tc.layer)
				}
			}

			r := n.RunJSON("renew")
			nodetest.WantFailure(t, r, tc.code, tc.layer, "")
			if !strings.HasPrefix(r.Report.Summary, tc.prefix) || !strings.Contains(r.Report.Summary, reenroll) {
				t.Errorf("summary %q: want %q ... %q", r.Report.Summary, tc.prefix, reenroll)
			}
			if !strings.Contains(r.Report.Remedy, "provision bootstrap") {
				t.Errorf("remedy %q does not say to bootstrap", r.Report.Remedy)
			}
			if r.Took > 20*time.Second {
				t.Errorf("renew took %s to stop: it must stop at once", r.Took)
			}
			// --force changes nothing: it cannot renew either.
			nodetest.WantExit(t, n.Run("renew", "--force"), tc.code)
			if string(readFile(t, n.CertPath())) != string(certBefore) {
				t.Error("renew changed the certificate it cannot renew")
			}
			if rec := n.renewRecord(); rec.LastResult != "re-enroll" || rec.FailedLayer != tc.layer || rec.Serial != l.Cert.SerialNumber.String() {
				t.Errorf("renew.json: %+v", rec)
			}
			// After the run, --check knows, even with --force (an expired
			// one stays due: the CA may allow renewal after expiry later).
			for _, args := range [][]string{{"renew", "--check"}, {"renew", "--check", "--force"}} {
				c := n.Run(args...)
				if tc.layer == "credentials" {
					nodetest.WantExit(t, c, 0)
					continue
				}
				nodetest.WantExit(t, c, checkCannotRenew)
				if !strings.Contains(c.Stdout, tc.prefix) || !strings.Contains(c.Stdout, reenroll) {
					t.Errorf("%v said %q", args, c.Stdout)
				}
			}
			// And a fresh token is the way out.
			n.GiveToken()
			nodetest.WantExit(t, n.RunJSON("bootstrap"), 0)
			nodetest.WantExit(t, n.Run("renew", "--check"), checkNotDue)
			if _, err := os.Stat(n.Files.TokenPath); err == nil {
				t.Error("the used token is still on disk")
			}
		})
	}
}
