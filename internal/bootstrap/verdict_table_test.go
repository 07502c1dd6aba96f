package bootstrap

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/internal/verify"
	"github.com/gpuaas/provision/tests/controlplane"
)

// TestCredentialStatesAgree is issue 13's table: for every state a node's
// credentials can be in, verify's answer (the check, its status, layer,
// owner and remedy) and what bootstrap then does, with and without a fresh
// token, come from the one credential verdict and agree: a remedy that says
// "no token needed" is done by bootstrap without one; one that asks for a
// token fails bootstrap without one (exit 20, enroll) and is done with one.
func TestCredentialStatesAgree(t *testing.T) {
	now := time.Now()
	type outcome struct {
		ok, enrolled bool
		layer        diag.Layer // when !ok
	}
	keep := outcome{ok: true}
	enrolls := outcome{ok: true, enrolled: true}
	needsToken := outcome{layer: diag.Enroll}
	tests := []struct {
		name  string
		plant func(t *testing.T, n *node)
		// verify's answer
		check        string
		status       report.Status
		owner        diag.Owner
		remedy       string
		noTok, withT outcome
		after        func(t *testing.T, n *node) // after the no-token bootstrap
	}{
		{name: "healthy", plant: func(*testing.T, *node) {}, check: "credentials", status: report.Pass, noTok: keep, withT: keep},
		{name: "missing", plant: func(t *testing.T, n *node) { os.RemoveAll(n.files.PKIDir) },
			check: "credentials", status: report.Fail, owner: diag.Node, remedy: "enroll: write a one-time token", noTok: needsToken, withT: enrolls},
		{name: "key of another certificate", plant: func(t *testing.T, n *node) {
			other := leaf(t, n, controlplane.LeafRequest{})
			l := leaf(t, n, controlplane.LeafRequest{})
			l.Key = other.Key
			plantSet(t, n, l, n.cp.CA.RootPEM())
		}, check: "credentials", status: report.Fail, owner: diag.Node, remedy: "fresh one-time token", noTok: needsToken, withT: enrolls},
		{name: "certificate for another node_id", plant: func(t *testing.T, n *node) {
			plantSet(t, n, leaf(t, n, controlplane.LeafRequest{CommonName: "gpu-other", DNSNames: []string{"gpu-other"}}), n.cp.CA.RootPEM())
		}, check: "credentials", status: report.Fail, owner: diag.Node, remedy: "for this node_id", noTok: needsToken, withT: enrolls},
		{name: "expired", plant: func(t *testing.T, n *node) {
			plantSet(t, n, leaf(t, n, controlplane.LeafRequest{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}), n.cp.CA.RootPEM())
		}, check: "credentials", status: report.Fail, owner: diag.Node, remedy: "fresh one-time token", noTok: needsToken, withT: enrolls},
		{name: "past the renewal point", plant: func(t *testing.T, n *node) {
			plantSet(t, n, leaf(t, n, controlplane.LeafRequest{NotBefore: now.Add(-20 * time.Hour), NotAfter: now.Add(4 * time.Hour)}), n.cp.CA.RootPEM())
			// Renewed over mTLS with the current certificate: a token is only
			// the fallback when that fails.
		}, check: "credentials", status: report.Warn, remedy: "renew before it expires", noTok: keep, withT: keep},
		{name: "issued by another CA (stale)", plant: func(t *testing.T, n *node) {
			l, err := n.cp.IssueStaleCert(nodeID)
			if err != nil {
				t.Fatal(err)
			}
			plantSet(t, n, l, n.cp.CA.RootPEM())
		}, check: "ca-chain", status: report.Fail, owner: diag.Node, remedy: "no longer uses", noTok: needsToken, withT: enrolls},
		{name: "key 0644", plant: func(t *testing.T, n *node) {
			plantSet(t, n, leaf(t, n, controlplane.LeafRequest{}), n.cp.CA.RootPEM())
			os.Chmod(filepath.Join(n.files.PKIDir, credstore.KeyFile), 0o644)
		}, check: "credentials", status: report.Fail, owner: diag.Node, remedy: "restricts the key to 0600 at once (no token needed)", noTok: keep, withT: enrolls,
			after: func(t *testing.T, n *node) { wantMode(t, filepath.Join(n.files.PKIDir, credstore.KeyFile), 0o600) }},
		{name: "pki_dir 0755", plant: func(t *testing.T, n *node) { os.Chmod(n.files.PKIDir, 0o755) },
			check: "credentials", status: report.Fail, owner: diag.Node, remedy: "to 0700 (no token needed)", noTok: keep, withT: keep,
			after: func(t *testing.T, n *node) { wantMode(t, n.files.PKIDir, 0o700) }},
		{name: "ca.pem from another CA", plant: func(t *testing.T, n *node) {
			plantSet(t, n, leaf(t, n, controlplane.LeafRequest{}), n.cp.Unrelated.RootPEM())
		}, check: "ca-chain", status: report.Fail, owner: diag.Node, remedy: "refreshes ca.pem from the CA's current roots (no token needed)", noTok: keep, withT: keep},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := prepareNode(t)
			if out := n.run(t); !out.Report.OK {
				t.Fatalf("first bootstrap: %s", out.Report.Summary)
			}
			tt.plant(t, n)

			env := observe.NewEnv(n.cfg, n.host)
			rep := report.New("verify", nodeID, verify.Run(context.Background(), env, verify.Checks(), nil), 0)
			var got *report.Result
			for i := range rep.Checks {
				if rep.Checks[i].Name == tt.check {
					got = &rep.Checks[i]
				}
			}
			if got == nil || got.Status != tt.status || (tt.owner != "" && got.Owner != tt.owner) || !strings.Contains(got.Remedy, tt.remedy) {
				t.Fatalf("verify's %s: %+v\nwant status %s owner %q remedy containing %q", tt.check, got, tt.status, tt.owner, tt.remedy)
			}
			if tt.status == report.Fail && (rep.FailedCheck != tt.check || rep.Remedy != got.Remedy) {
				t.Errorf("verify's root cause is %s (%s), want %s", rep.FailedCheck, rep.Summary, tt.check)
			}

			os.Remove(n.files.TokenPath)
			expect := func(label string, out *pipeline.Outcome, want outcome) {
				t.Helper()
				if out.Report.OK != want.ok || out.Enrolled != want.enrolled || (!want.ok && out.Report.FailedLayer != want.layer) {
					t.Errorf("bootstrap %s: ok=%v enrolled=%v layer=%s (%s), want ok=%v enrolled=%v layer=%s",
						label, out.Report.OK, out.Enrolled, out.Report.FailedLayer, out.Report.Summary, want.ok, want.enrolled, want.layer)
				}
			}
			// The dry run says what the run is about to do: where a token is
			// needed and missing it stops at the same layer (and plans the
			// enrollment), and with a token it plans an enrollment exactly
			// when the run enrolls.
			p := n.dryRun(t)
			needs := !tt.noTok.ok && tt.noTok.layer == diag.Enroll
			if p.Report.OK != tt.noTok.ok || (!tt.noTok.ok && p.Report.FailedLayer != tt.noTok.layer) || (p.Plan == "enroll") != needs {
				t.Errorf("dry run: ok=%v layer=%s plan %q (%s); the runs: %+v without a token, %+v with one", p.Report.OK, p.Report.FailedLayer, p.Plan, p.Report.Summary, tt.noTok, tt.withT)
			}
			expect("without a token", n.run(t), tt.noTok)
			if tt.after != nil {
				tt.after(t, n)
			}
			tok, err := n.cp.Token(nodeID)
			if err != nil {
				t.Fatal(err)
			}
			if err := controlplane.WriteToken(n.files.Root, n.cfg.CA.TokenFile, tok); err != nil {
				t.Fatal(err)
			}
			if tt.noTok.ok {
				tt.plant(t, n) // the first run repaired what it could
			}
			if p := n.dryRun(t); !p.Report.OK || (p.Plan == "enroll") != tt.withT.enrolled || (p.Token.Use == "enroll") != tt.withT.enrolled {
				t.Errorf("dry run with a token: ok=%v plan %q token %+v (%s); the run: %+v", p.Report.OK, p.Plan, p.Token, p.Report.Summary, tt.withT)
			}
			expect("with a fresh token", n.run(t), tt.withT)
		})
	}
}

// dryRun is bootstrap --dry-run on n; the node's files are the same after.
func (n *node) dryRun(t *testing.T) *pipeline.Preview {
	t.Helper()
	before := testenv.TreeDigest(t, n.files.Root)
	p := DryRun(context.Background(), n.cfg, n.host, pipeline.Options{Ladder: verify.Ladder,
		Policy: retry.Policy{Base: time.Millisecond, Cap: 10 * time.Millisecond}, Sleep: retry.Sleep})
	if after := testenv.TreeDigest(t, n.files.Root); after != before {
		t.Errorf("the dry run changed the node's files:\n%s\n---\n%s", before, after)
	}
	return p
}

func leaf(t *testing.T, n *node, req controlplane.LeafRequest) *controlplane.Leaf {
	t.Helper()
	if req.CommonName == "" {
		req.CommonName, req.DNSNames = nodeID, []string{nodeID}
	}
	req.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	l, err := n.cp.CA.PKI().IssueLeaf(req)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// plantSet replaces pki_dir with plain files: key, chain and bundle.
func plantSet(t *testing.T, n *node, l *controlplane.Leaf, caPEM []byte) {
	t.Helper()
	os.RemoveAll(n.files.PKIDir)
	if err := controlplane.WriteNodeCredentials(n.files.Root, n.cfg.Paths.PKIDir, l, caPEM); err != nil {
		t.Fatal(err)
	}
}

func wantMode(t *testing.T, p string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != want {
		t.Errorf("%s: mode %v (%v), want %04o", p, st.Mode().Perm(), err, want)
	}
}

// TestStepsInOrder: every step of bootstrap's list reads only stages an
// earlier step wrote (pipeline.CheckOrder).
func TestStepsInOrder(t *testing.T) {
	if err := pipeline.CheckOrder(Steps); err != nil {
		t.Fatal(err)
	}
}
