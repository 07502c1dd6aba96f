package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/certificates/ca"
	"github.com/smallstep/certificates/errs"

	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// revokeRecord is state_dir/revoke.json as its documented fields name it.
type revokeRecord struct {
	SchemaVersion int       `json:"schema_version"`
	RevokedAt     time.Time `json:"revoked_at"`
	Certificates  []struct {
		Serial string `json:"serial"`
		Result string `json:"result"`
		Detail string `json:"detail"`
	} `json:"certificates"`
	Removed  []string `json:"removed"`
	Complete bool     `json:"complete"`
}

func (n *node) revokeRecord() revokeRecord {
	n.T.Helper()
	var r revokeRecord
	if err := json.Unmarshal(readFile(n.T, filepath.Join(n.Files.StateDir, "revoke.json")), &r); err != nil {
		n.T.Fatal(err)
	}
	return r
}

// pairIn loads the key pair of one generation directory under pki_dir.
func pairIn(t *testing.T, dir string) tls.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// caRenewWith asks step-ca, with the smallstep client itself (not
// provision's), to renew cert over mTLS; it returns the CA's status.
func caRenewWith(t *testing.T, cp *controlplane.ControlPlane, cert tls.Certificate) int {
	t.Helper()
	tr := &http.Transport{DialContext: cp.CA.DialContext, TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: cp.CA.PKI().RootPool(), ServerName: cp.CA.Hostname(), MinVersion: tls.VersionTLS12}}
	client, err := ca.NewClient(cp.CA.URL(), ca.WithTransport(tr), ca.WithTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.Renew(tr)
	var se *errs.Error
	switch {
	case err == nil:
		return http.StatusCreated
	case errors.As(err, &se):
		return se.StatusCode()
	}
	t.Fatalf("renew at the CA: %v", err)
	return 0
}

// crlSerials are the serials the CA's CRL lists (GET /crl, DER, verified
// against the CA's intermediate).
func crlSerials(t *testing.T, cp *controlplane.ControlPlane) map[string]bool {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: cp.CA.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: cp.CA.PKI().RootPool(), ServerName: cp.CA.Hostname(), MinVersion: tls.VersionTLS12}}}
	resp, err := c.Get(cp.CA.URL() + "/crl")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	der, _ := io.ReadAll(resp.Body)
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatalf("CRL (%s): %v", resp.Status, err)
	}
	if err := crl.CheckSignatureFrom(cp.CA.PKI().Intermediate); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	out := map[string]bool{}
	for _, e := range crl.RevokedCertificateEntries {
		out[e.SerialNumber.String()] = true
	}
	return out
}

// TestRevoke: provision revoke against the real step-ca (with its CRL) on
// a node that renewed once, so pki_dir holds two valid certificates (the
// current one and the rollback target). Without --yes on the healthy node
// it changes nothing (exit 2). With --yes both are revoked, each by
// itself; the CA then refuses to renew either (401, asked with the
// smallstep client) and its signed CRL lists both; the credentials, the
// receipt, the done marker and renew.json are gone; revoke.json says what
// was done; status says the node was taken out of service; a second run
// has nothing to revoke; a fresh token re-enrolls the node (re-imaging).
func TestRevoke(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{CACRL: true})
	n := newNode(t, cp, true)
	n.SetMachineID("0123456789abcdef0123456789abcdef")
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	nodetest.WantExit(t, n.Run("renew", "--force"), 0)
	current := pairIn(t, filepath.Join(n.Files.PKIDir, "current"))
	previous := pairIn(t, filepath.Join(n.Files.PKIDir, "previous"))
	if caRenewWith(t, cp, previous) != http.StatusCreated {
		t.Fatal("before revoke: the CA does not renew the rollback target: the checks below would prove nothing")
	}
	serials := []string{current.Leaf.SerialNumber.String(), previous.Leaf.SerialNumber.String()}

	before := treeHash(t, n.Root)
	r := n.RunJSON("revoke")
	if r.Code != 2 || r.Report.FailedLayer != "usage" || !strings.Contains(r.Report.Remedy, "--yes") {
		t.Fatalf("revoke without --yes on a healthy node:\n%s", r)
	}
	if treeHash(t, n.Root) != before {
		t.Fatal("revoke without --yes changed the node root")
	}

	r = n.RunJSON("revoke", "--yes")
	if r.Code != 0 || !r.Report.OK {
		t.Fatalf("revoke --yes:\n%s", r)
	}
	revokedLines := 0
	for _, c := range r.Report.Checks {
		if c.Name == "revoke" && c.Status == "pass" && strings.Contains(c.Message, ": revoked: ") {
			revokedLines++
		}
	}
	if revokedLines != 2 {
		t.Errorf("%d revoke lines say revoked, want 2:\n%s", revokedLines, r)
	}
	// Refused by the CA and listed by its CRL.
	for _, pair := range []tls.Certificate{current, previous} {
		if got := caRenewWith(t, cp, pair); got != http.StatusUnauthorized {
			t.Errorf("the CA answered %d to renewing revoked serial %s, want 401", got, pair.Leaf.SerialNumber)
		}
	}
	crl := crlSerials(t, cp)
	for _, s := range serials {
		if !crl[s] {
			t.Errorf("the CA's CRL does not list serial %s", s)
		}
	}
	// Removed, and recorded.
	for _, p := range []string{n.KeyPath(), n.CertPath(), filepath.Join(n.Files.PKIDir, "current"), filepath.Join(n.Files.PKIDir, "previous"), n.ReceiptPath(),
		n.DonePath("0123456789abcdef0123456789abcdef"), filepath.Join(n.Files.StateDir, "renew.json")} {
		if fileExists(p) {
			t.Errorf("%s is still there", p)
		}
	}
	if g := generations(t, n.Files.PKIDir); len(g) != 0 {
		t.Errorf("generations left: %v", g)
	}
	rec := n.revokeRecord()
	if !rec.Complete || rec.SchemaVersion != 1 || len(rec.Certificates) != 2 || len(rec.Removed) == 0 {
		t.Fatalf("revoke.json: %+v", rec)
	}
	for _, c := range rec.Certificates {
		if c.Result != "revoked" {
			t.Errorf("revoke.json: serial %s %s (%s)", c.Serial, c.Result, c.Detail)
		}
	}
	d, sr := n.status(t)
	if sr.Code != 31 || !strings.Contains(d.Summary, "provision revoke") {
		t.Errorf("status after revoke: exit %d %+v", sr.Code, d)
	}
	// Again: nothing to revoke, still exit 0.
	if again := n.RunJSON("revoke"); again.Code != 0 || !strings.HasPrefix(again.Report.Summary, "nothing to revoke") {
		t.Errorf("second revoke:\n%s", again)
	}
	// Re-imaged: a fresh token enrolls the node again.
	n.GiveToken()
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
}

// TestRevokeFailsClosed: the CA unreachable, revoke --yes stops at layer
// ca with the next step named, and removes nothing; an expired certificate
// (no identity any more) is revoked without --yes: not revocable, only
// removed.
func TestRevokeFailsClosed(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{CACRL: true})
	n := newNode(t, cp, true, func(c *controlplane.NodeConfig) { c.Bootstrap.Deadline, c.Bootstrap.RequestTimeout = "3s", "1s" })
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	pki := snapshot(t, n.Files.PKIDir)
	receipt := readFile(t, n.ReceiptPath())
	cp.CA.Close()
	r := n.Run("revoke", "--yes")
	if r.Code != 13 || !strings.Contains(r.LastLine(), "FAILED at layer ca") || !strings.Contains(r.LastLine(), "nothing was revoked or removed") || !strings.Contains(r.LastLine(), "Next: ") {
		t.Fatalf("CA down:\n%s", r)
	}
	if d := diffSnapshots(pki, snapshot(t, n.Files.PKIDir)); len(d) != 0 {
		t.Fatalf("revoke changed pki_dir with the CA down: %v", d)
	}
	if string(readFile(t, n.ReceiptPath())) != string(receipt) {
		t.Fatal("revoke changed the receipt with the CA down")
	}

	// An expired certificate: unhealthy, so no --yes needed; not revocable.
	cp2 := controlplane.Start(t, controlplane.Options{})
	m := newNode(t, cp2, false)
	l, err := cp2.CA.IssueNodeCertAt(m.ID, time.Now().Add(-3*time.Hour), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := controlplane.WriteNodeCredentials(m.Root, m.Cfg.Paths.PKIDir, l, cp2.CA.RootPEM()); err != nil {
		t.Fatal(err)
	}
	r = m.Run("revoke")
	if r.Code != 0 || !strings.Contains(r.Stdout, "not-revocable: expired") || fileExists(m.KeyPath()) {
		t.Fatalf("expired certificate:\n%s", r)
	}
	if rec := m.revokeRecord(); !rec.Complete || len(rec.Certificates) != 1 || rec.Certificates[0].Result != "not-revocable" {
		t.Fatalf("revoke.json: %+v", rec)
	}
}
