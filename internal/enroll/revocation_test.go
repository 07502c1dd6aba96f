package enroll_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/tests/controlplane"
)

// TestCheckRevocationRealCA: against a real step-ca with its CRL enabled,
// a certificate really revoked at the CA (passive revocation by the
// certificate itself, as bootstrap revokes a replaced one) is Revoked with
// the CA's reason code; a fresh certificate, and the revoked one before
// its revocation, are NotRevoked.
func TestCheckRevocationRealCA(t *testing.T) {
	t.Parallel()
	s := startCAWith(t, controlplane.StepCAOptions{CRL: true})
	c, _, roots, doomed := enrolled(t, s)
	_, _, _, fresh := enrolled(t, s)
	chain := func(tc tls.Certificate) []*x509.Certificate {
		var out []*x509.Certificate
		for _, der := range tc.Certificate {
			x, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, x)
		}
		return out
	}
	if r := c.CheckRevocation(context.Background(), chain(doomed), roots); r.Status != enroll.NotRevoked {
		t.Fatalf("before revocation: %s (%s), want %s", r.Status, r.Reason, enroll.NotRevoked)
	}
	if err := c.Revoke(context.Background(), doomed, roots, "superseded in a test"); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	r := c.CheckRevocation(context.Background(), chain(doomed), roots)
	if r.Status != enroll.Revoked || r.ReasonCode != 4 || r.RevokedAt.IsZero() {
		t.Fatalf("revoked: %s reason code %d at %s (%s), want %s, 4 (superseded)", r.Status, r.ReasonCode, r.RevokedAt, r.Reason, enroll.Revoked)
	}
	if !strings.Contains(r.Reason, doomed.Leaf.SerialNumber.String()) {
		t.Errorf("reason %q does not name the serial", r.Reason)
	}
	if r := c.CheckRevocation(context.Background(), chain(fresh), roots); r.Status != enroll.NotRevoked || r.NextUpdate.IsZero() {
		t.Fatalf("fresh: %s (%s), want %s with a next update", r.Status, r.Reason, enroll.NotRevoked)
	}
}

// TestCheckRevocationNoCRL: a real step-ca without a CRL (the default;
// here with a database that can revoke) gives no evidence: Unknown, not
// transient, saying the CA serves no CRL. Down, it is Unknown and
// transient.
func TestCheckRevocationNoCRL(t *testing.T) {
	t.Parallel()
	s := startCAWith(t, controlplane.StepCAOptions{Revocation: true})
	c, _, roots, cert := enrolled(t, s)
	if err := c.Revoke(context.Background(), cert, roots, "test"); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	chain := []*x509.Certificate{cert.Leaf, s.PKI().Intermediate}
	r := c.CheckRevocation(context.Background(), chain, roots)
	if r.Status != enroll.RevocationUnknown || r.Transient || !strings.Contains(r.Reason, "serves no CRL") {
		t.Fatalf("no CRL: %s transient=%v (%s), want %s, not transient, no CRL", r.Status, r.Transient, r.Reason, enroll.RevocationUnknown)
	}
	down := clientFor(t, closedPort(t), s)
	if r := down.CheckRevocation(context.Background(), chain, roots); r.Status != enroll.RevocationUnknown || !r.Transient {
		t.Fatalf("CA down: %s transient=%v (%s), want %s and transient", r.Status, r.Transient, r.Reason, enroll.RevocationUnknown)
	}
}

// crlSpec builds one CRL for the table below.
type crlSpec struct {
	signer     *x509.Certificate
	key        crypto.Signer
	list       bool          // list the node's serial
	reason     int           // the entry's CRLReason (default 1, keyCompromise)
	thisUpdate time.Duration // from now; default an hour ago
	nextUpdate time.Duration // from now; negative: stale
	ext        []pkix.Extension
	pem        bool
}

func buildCRL(t *testing.T, serial *big.Int, sp crlSpec) []byte {
	t.Helper()
	now := time.Now()
	if sp.thisUpdate == 0 {
		sp.thisUpdate = -time.Hour
	}
	if sp.reason == 0 {
		sp.reason = 1
	}
	rl := &x509.RevocationList{Number: big.NewInt(7), ThisUpdate: now.Add(sp.thisUpdate), NextUpdate: now.Add(sp.nextUpdate), ExtraExtensions: sp.ext}
	if sp.list {
		rl.RevokedCertificateEntries = []x509.RevocationListEntry{{SerialNumber: serial, RevocationTime: now.Add(-time.Minute), ReasonCode: sp.reason}}
	}
	der, err := x509.CreateRevocationList(rand.Reader, rl, sp.signer, sp.key)
	if err != nil {
		t.Fatal(err)
	}
	if sp.pem {
		return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	}
	return der
}

// TestCheckRevocationForgedAndPartialCRLs: only a CRL that verifies, signed
// by the key that issued the node's certificate, complete and current
// (within its thisUpdate and nextUpdate), is evidence, and only a listing
// with a final reason is a revocation: a hold (certificateHold) or its
// release (removeFromCRL) is not, nor a listing in a stale CRL. A CRL listing the serial but signed by another CA of the same
// name (a forged one), by the root instead of the issuing intermediate,
// or carrying what provision cannot interpret, is Unknown, never Revoked.
// The answers come from a server holding a certificate for the CA's name
// (something in front of the CA); the node's certificate is the real
// CA's, and a genuine CRL is signed with the CA's own intermediate key.
func TestCheckRevocationForgedAndPartialCRLs(t *testing.T) {
	t.Parallel()
	s := startCAWith(t, controlplane.StepCAOptions{})
	_, _, roots, cert := enrolled(t, s)
	p := s.PKI()
	forger, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	critical := func(oid asn1.ObjectIdentifier, v []byte) []pkix.Extension {
		return []pkix.Extension{{Id: oid, Critical: true, Value: v}}
	}
	onlyCA, _ := asn1.Marshal(struct {
		OnlyCA bool `asn1:"optional,tag:2"`
	}{true})
	userOnly, _ := asn1.Marshal(struct {
		OnlyUser bool `asn1:"optional,tag:1"`
	}{true})
	deltaBase, _ := asn1.Marshal(big.NewInt(6))
	genuine := crlSpec{signer: p.Intermediate, key: p.IntermediateKey, nextUpdate: time.Hour}
	with := func(f func(*crlSpec)) crlSpec { sp := genuine; f(&sp); return sp }
	tests := []struct {
		name   string
		body   []byte
		status int
		want   enroll.RevocationStatus
		reason string
	}{
		{"genuine, listed", buildCRL(t, cert.Leaf.SerialNumber, with(func(c *crlSpec) { c.list = true })), 200, enroll.Revoked, "lists serial"},
		{"genuine PEM, listed", buildCRL(t, cert.Leaf.SerialNumber, with(func(c *crlSpec) { c.list, c.pem = true, true })), 200, enroll.Revoked, "lists serial"},
		{"genuine, not listed", buildCRL(t, cert.Leaf.SerialNumber, genuine), 200, enroll.NotRevoked, "does not list"},
		{"genuine, user certs only, not listed", buildCRL(t, cert.Leaf.SerialNumber, with(func(c *crlSpec) { c.ext = critical(asn1.ObjectIdentifier{2, 5, 29, 28}, userOnly) })), 200, enroll.NotRevoked, "does not list"},
		{"genuine, listed superseded", buildCRL(t, cert.Leaf.SerialNumber, with(func(c *crlSpec) { c.list, c.reason = true, 4 })), 200, enroll.Revoked, "superseded"},
		{"genuine, listed on hold: not revoked", buildCRL(t, cert.Leaf.SerialNumber, with(func(c *crlSpec) { c.list, c.reason = true, 6 })), 200, enroll.RevocationUnknown, "certificateHold"},
		{"genuine, listed removeFromCRL: not revoked", buildCRL(t, cert.Leaf.SerialNumber, with(func(c *crlSpec) { c.list, c.reason = true, 8 })), 200, enroll.RevocationUnknown, "removeFromCRL"},
		{"genuine, stale, listed: no evidence now", buildCRL(t, cert.Leaf.SerialNumber, with(func(c *crlSpec) { c.list, c.nextUpdate = true, -time.Minute })), 200, enroll.RevocationUnknown, "stale"},
		{"genuine, stale, listed on hold", buildCRL(t, cert.Leaf.SerialNumber, with(func(c *crlSpec) { c.list, c.reason, c.nextUpdate = true, 6, -time.Minute })), 200, enroll.RevocationUnknown, "stale"},
		{"genuine, not valid yet, listed", buildCRL(t, cert.Leaf.SerialNumber, with(func(c *crlSpec) { c.list, c.thisUpdate = true, 10*time.Minute })), 200, enroll.RevocationUnknown, "not valid yet"},
		{"genuine, stale, not listed", buildCRL(t, cert.Leaf.SerialNumber, with(func(c *crlSpec) { c.nextUpdate = -time.Minute })), 200, enroll.RevocationUnknown, "stale"},
		{"forged: another CA of the same name", buildCRL(t, cert.Leaf.SerialNumber, crlSpec{signer: forger.Intermediate, key: forger.IntermediateKey, list: true, nextUpdate: time.Hour}), 200, enroll.RevocationUnknown, "not signed by the certificate's issuer"},
		{"signed by the root, not the issuer", buildCRL(t, cert.Leaf.SerialNumber, crlSpec{signer: p.Root, key: p.RootKey, list: true, nextUpdate: time.Hour}), 200, enroll.RevocationUnknown, "not by the certificate's issuer"},
		{"delta CRL", buildCRL(t, cert.Leaf.SerialNumber, with(func(c *crlSpec) { c.ext = critical(asn1.ObjectIdentifier{2, 5, 29, 27}, deltaBase) })), 200, enroll.RevocationUnknown, "delta CRL"},
		{"CA certificates only", buildCRL(t, cert.Leaf.SerialNumber, with(func(c *crlSpec) { c.ext = critical(asn1.ObjectIdentifier{2, 5, 29, 28}, onlyCA) })), 200, enroll.RevocationUnknown, "scopes it"},
		{"unknown critical extension, listed", buildCRL(t, cert.Leaf.SerialNumber, with(func(c *crlSpec) {
			c.list, c.ext = true, critical(asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, []byte{5, 0})
		})), 200, enroll.RevocationUnknown, "critical extension"},
		{"not a CRL", []byte("<html>hello</html>"), 200, enroll.RevocationUnknown, "not a CRL"},
		{"proxy 404 page", []byte("404 page not found"), 404, enroll.RevocationUnknown, "could not be fetched"},
	}
	leaf, err := p.IssueServerCert(s.Hostname())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/crl" {
					http.NotFound(w, r)
					return
				}
				w.WriteHeader(tt.status)
				w.Write(tt.body)
			}))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}, MinVersion: tls.VersionTLS12}
			srv.StartTLS()
			defer srv.Close()
			c := clientFor(t, srv.Listener.Addr().String(), s)
			r := c.CheckRevocation(context.Background(), []*x509.Certificate{cert.Leaf, p.Intermediate}, roots)
			if r.Status != tt.want || !strings.Contains(r.Reason, tt.reason) {
				t.Fatalf("%s (%s), want %s with %q", r.Status, r.Reason, tt.want, tt.reason)
			}
		})
	}
}

// TestJudgeCRLFixedClock: the judgement takes its time from the caller, so
// a CRL built at a fixed instant is judged at that instant on any day.
func TestJudgeCRLFixedClock(t *testing.T) {
	at := time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)
	p, err := controlplane.NewPKIAt(t.TempDir(), controlplane.CAName, at)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := p.IssueClientCert(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	rl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: at.Add(-time.Minute), NextUpdate: at.Add(time.Hour)}
	der, err := x509.CreateRevocationList(rand.Reader, rl, p.Intermediate, p.IntermediateKey)
	if err != nil {
		t.Fatal(err)
	}
	chain := []*x509.Certificate{leaf.Cert, p.Intermediate}
	tests := []struct {
		name string
		now  time.Time
		want enroll.RevocationStatus
	}{
		{"current", at, enroll.NotRevoked},
		{"after its next update", at.Add(2 * time.Hour), enroll.RevocationUnknown},
		{"before the CA existed", at.Add(-48 * time.Hour), enroll.RevocationUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r := enroll.JudgeCRL(der, chain, []*x509.Certificate{p.Root}, tt.now); r.Status != tt.want {
				t.Fatalf("%s (%s), want %s", r.Status, r.Reason, tt.want)
			}
		})
	}
	if r := enroll.JudgeCRL(der, []*x509.Certificate{leaf.Cert}, []*x509.Certificate{p.Root}, at); r.Status != enroll.RevocationUnknown {
		t.Fatalf("without the issuer in the chain: %s (%s), want unknown", r.Status, r.Reason)
	}
}
