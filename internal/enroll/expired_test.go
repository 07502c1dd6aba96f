package enroll_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/tests/controlplane"
)

// shortLifetime is the certificates' life where a test waits for one to
// expire: the shortest step-ca (v0.30.2) renews after expiry, since it
// verifies a renew token's chain at a minute before the certificate's end.
const shortLifetime = time.Minute

// startCAWith starts a real step-ca with opts (Dir filled in). It leaves
// STEPPATH alone, so parallel tests may use it: ca.DisableIdentity (set by
// controlplane and by the client) keeps a developer's step identity out.
func startCAWith(t *testing.T, opts controlplane.StepCAOptions) *controlplane.StepCA {
	t.Helper()
	opts.Dir = t.TempDir()
	s, err := controlplane.StartStepCA(opts)
	if err != nil {
		t.Fatalf("starting step-ca: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// enrolled redeems a fresh token at s: a certificate issued by the real
// step-ca (with its provisioner extension, which the CA's after-expiry
// rule looks up), as a tls.Certificate.
func enrolled(t *testing.T, s *controlplane.StepCA) (*enroll.Client, *dialCounter, *enroll.Roots, tls.Certificate) {
	t.Helper()
	c, dc, roots, tok, _ := setupSign(t, s)
	issued, err := c.Sign(context.Background(), tok, roots)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return c, dc, roots, tlsCert(issued)
}

func tlsCert(is *enroll.Issued) tls.Certificate {
	out := tls.Certificate{PrivateKey: is.Key, Leaf: is.Chain[0]}
	for _, c := range is.Chain {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out
}

// waitExpired sleeps until cert has expired by the CA's clock (step-ca
// compares whole seconds): real time must pass for a real CA to judge a
// real certificate expired.
func waitExpired(t *testing.T, cert tls.Certificate) {
	t.Helper()
	time.Sleep(time.Until(cert.Leaf.NotAfter.Add(1100 * time.Millisecond)))
}

// TestRenewExpiredRealCA: a certificate the real step-ca signed, left to
// expire in real time (a minute), is refused by the CA's TLS layer
// (Renew: CertExpired), then renewed without any token through
// RenewExpired once the provisioner allows it: same key, a new serial,
// valid now, chaining to the CA. While the provisioner does not allow it,
// the refusal is AfterExpiryRefused, not transient and not CertRefused.
// Each call signs its own token, so a second call renews again (the CA
// marks renew tokens used). It waits a minute, in parallel with the rest.
func TestRenewExpiredRealCA(t *testing.T) {
	t.Parallel()
	s := startCAWith(t, controlplane.StepCAOptions{Lifetime: shortLifetime})
	c, dc, roots, cert := enrolled(t, s)
	waitExpired(t, cert)

	_, err := c.Renew(context.Background(), cert, roots, false)
	if e := asError(t, err); e.Kind != enroll.CertExpired {
		t.Fatalf("mTLS renew of an expired certificate: kind %s (%v), want %s", e.Kind, err, enroll.CertExpired)
	}

	dc.n.Store(0)
	_, err = c.RenewExpired(context.Background(), cert, roots)
	e := asError(t, err)
	if e.Kind != enroll.AfterExpiryRefused || e.Transient() || e.Status != 401 {
		t.Fatalf("claim off: kind %s status %d transient=%v (%v), want %s, 401, permanent", e.Kind, e.Status, e.Transient(), err, enroll.AfterExpiryRefused)
	}
	if !strings.Contains(err.Error(), "allowRenewalAfterExpiry") {
		t.Errorf("the refusal %q does not name the claim", err)
	}
	if n := dc.n.Load(); n != 1 {
		t.Errorf("RenewExpired opened %d connections, want 1", n)
	}

	if err := s.SetAllowRenewalAfterExpiry(true); err != nil {
		t.Fatal(err)
	}
	prev := cert.Leaf
	for i := range 2 {
		issued, err := c.RenewExpired(context.Background(), cert, roots)
		if err != nil {
			t.Fatalf("claim on, call %d: %v", i+1, err)
		}
		leaf := issued.Chain[0]
		if leaf.SerialNumber.Cmp(prev.SerialNumber) == 0 || leaf.SerialNumber.Cmp(cert.Leaf.SerialNumber) == 0 {
			t.Fatalf("call %d: serial %s was not renewed", i+1, leaf.SerialNumber)
		}
		if !time.Now().Before(leaf.NotAfter) || leaf.Subject.CommonName != nodeID {
			t.Fatalf("call %d: renewed certificate CN %q valid until %s", i+1, leaf.Subject.CommonName, leaf.NotAfter)
		}
		if issued.Key != cert.PrivateKey {
			t.Fatalf("call %d: the key changed; renewal after expiry keeps it", i+1)
		}
		if err := verifies(issued, roots); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
		prev = leaf
	}
}

// verifies checks an issued chain against the CA's current roots now, for
// client auth.
func verifies(is *enroll.Issued, roots *enroll.Roots) error {
	inter := x509.NewCertPool()
	for _, c := range is.Chain[1:] {
		inter.AddCert(c)
	}
	_, err := is.Chain[0].Verify(x509.VerifyOptions{Roots: roots.Pool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

// TestRenewExpiredDaysAgo: a node powered off for days comes back with a
// certificate that expired five days ago (issued by the CA's intermediate
// as its provisioner would have: step-ca judges it as its own). With the
// claim, it is renewed for the same lifetime from now; without, refused as
// AfterExpiryRefused.
func TestRenewExpiredDaysAgo(t *testing.T) {
	t.Parallel()
	for _, allow := range []bool{true, false} {
		t.Run(fmt.Sprintf("allowRenewalAfterExpiry=%v", allow), func(t *testing.T) {
			s := startCAWith(t, controlplane.StepCAOptions{AllowRenewalAfterExpiry: allow, Age: 30 * 24 * time.Hour})
			c, _ := caClient(t, s, s.Fingerprint())
			roots, err := c.FetchRoots(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			end := time.Now().Add(-5 * 24 * time.Hour)
			leaf, err := s.IssueNodeCertAt(nodeID, end.Add(-24*time.Hour), end)
			if err != nil {
				t.Fatal(err)
			}
			issued, err := c.RenewExpired(context.Background(), leaf.TLSCertificate(), roots)
			if !allow {
				if e := asError(t, err); e.Kind != enroll.AfterExpiryRefused || e.Transient() {
					t.Fatalf("kind %s transient=%v (%v), want %s", e.Kind, e.Transient(), err, enroll.AfterExpiryRefused)
				}
				return
			}
			if err != nil {
				t.Fatalf("RenewExpired: %v", err)
			}
			got := issued.Chain[0]
			if life := got.NotAfter.Sub(got.NotBefore); life < 23*time.Hour || !time.Now().Before(got.NotAfter) {
				t.Fatalf("renewed certificate valid %s to %s, want a day from now", got.NotBefore, got.NotAfter)
			}
			if err := verifies(issued, roots); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRenewExpiredRevokedIsRefused: a revoked certificate is refused on the
// token path as on mTLS: CertRefused (a 401 that does not say expired),
// not AfterExpiryRefused. The token path works for a certificate still
// valid too, so nothing waits here.
func TestRenewExpiredRevokedIsRefused(t *testing.T) {
	s := startCAWith(t, controlplane.StepCAOptions{Revocation: true, AllowRenewalAfterExpiry: true})
	c, _, roots, cert := enrolled(t, s)
	if _, err := c.RenewExpired(context.Background(), cert, roots); err != nil {
		t.Fatalf("renewing a valid certificate by token: %v", err)
	}
	if err := c.Revoke(context.Background(), cert, roots, "test"); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	_, err := c.RenewExpired(context.Background(), cert, roots)
	if e := asError(t, err); e.Kind != enroll.CertRefused || e.Status != 401 || e.Transient() {
		t.Fatalf("revoked: kind %s status %d transient=%v (%v), want %s 401", e.Kind, e.Status, e.Transient(), err, enroll.CertRefused)
	}
}

// TestRenewExpiredNodeClock: the renew token's window is the node's clock's.
// A node clock 90 s ahead of the CA's still renews (the token is backdated
// a minute and carries no iat); ten minutes ahead, the CA refuses the
// token's time claims and the error says it is the clock (RenewClock),
// not the certificate.
func TestRenewExpiredNodeClock(t *testing.T) {
	s := startCAWith(t, controlplane.StepCAOptions{AllowRenewalAfterExpiry: true})
	c, _, roots, cert := enrolled(t, s)
	tests := []struct {
		ahead time.Duration
		kind  enroll.Kind // "": renewed
	}{
		{90 * time.Second, ""},
		{10 * time.Minute, enroll.RenewClock},
	}
	for _, tt := range tests {
		t.Run(tt.ahead.String(), func(t *testing.T) {
			skewed := *c
			skewed.Now = func() time.Time { return time.Now().Add(tt.ahead) }
			_, err := skewed.RenewExpired(context.Background(), cert, roots)
			if tt.kind == "" {
				if err != nil {
					t.Fatalf("RenewExpired: %v", err)
				}
				return
			}
			if e := asError(t, err); e.Kind != tt.kind || e.Transient() {
				t.Fatalf("kind %s (%v), want %s", e.Kind, err, tt.kind)
			}
		})
	}
}

// TestRenewExpiredStaleNotSent: a certificate from another CA is refused
// before anything is sent (the CA would refuse its chain).
func TestRenewExpiredStaleNotSent(t *testing.T) {
	s := startCA(t)
	c, dc := caClient(t, s, s.Fingerprint())
	roots, err := c.FetchRoots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	other, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := other.IssueClientCert(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	dc.n.Store(0)
	_, err = c.RenewExpired(context.Background(), leaf.TLSCertificate(), roots)
	if e := asError(t, err); e.Kind != enroll.CertUnknownCA {
		t.Fatalf("kind %s (%v), want %s", e.Kind, err, enroll.CertUnknownCA)
	}
	if n := dc.n.Load(); n != 0 {
		t.Fatalf("%d connections for a certificate the CA cannot renew, want 0", n)
	}
}

// TestRenewExpiredTransient: the CA down, or answering 5xx/429 (itself or
// a proxy in front), is transient: the caller tries again. Other answers
// keep their meaning. The fake answers stand in for shapes a real step-ca
// cannot be made to give on demand; the certificate is a real one.
func TestRenewExpiredTransient(t *testing.T) {
	s := startCA(t)
	_, _, roots, cert := enrolled(t, s)
	leaf, err := s.PKI().IssueServerCert(s.Hostname())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		status    int
		body      string
		kind      enroll.Kind
		transient bool
	}{
		{"503 from step-ca", 503, `{"status":503,"message":"Service Unavailable"}`, enroll.Unavailable, true},
		{"502 from a proxy", 502, "<html>Bad Gateway</html>", enroll.Unavailable, true},
		{"429", 429, `{"status":429,"message":"Too Many Requests"}`, enroll.Unavailable, true},
		{"401 expired", 401, `{"status":401,"message":"The request lacked necessary authorization to be completed: certificate expired on 2026-01-01 00:00:00 +0000 UTC"}`, enroll.AfterExpiryRefused, false},
		{"401 default message", 401, `{"status":401,"message":"The request lacked necessary authorization to be completed. Please see the certificate authority logs for more info."}`, enroll.CertRefused, false},
		{"401 from a proxy", 401, "Unauthorized", enroll.NotStepCA, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var auth atomic.Value
			c := answering(t, s, leaf, tt.status, tt.body, &auth)
			_, err := c.RenewExpired(context.Background(), cert, roots)
			e := asError(t, err)
			if e.Kind != tt.kind || e.Transient() != tt.transient {
				t.Fatalf("kind %s transient=%v (%v), want %s transient=%v", e.Kind, e.Transient(), err, tt.kind, tt.transient)
			}
			if a, _ := auth.Load().(string); !strings.HasPrefix(a, "Bearer ") {
				t.Fatalf("Authorization %q, want a bearer token", a)
			}
		})
	}
	t.Run("CA down", func(t *testing.T) {
		c := clientFor(t, closedPort(t), s)
		_, err := c.RenewExpired(context.Background(), cert, roots)
		if e := asError(t, err); e.Kind != enroll.Unreachable || !e.Transient() {
			t.Fatalf("kind %s transient=%v (%v), want %s transient", e.Kind, e.Transient(), err, enroll.Unreachable)
		}
	})
}

// answering is a client for a server that holds a certificate for the CA's
// hostname (something in front of the CA) and answers every request with
// status and body, recording the Authorization header in auth.
func answering(t *testing.T, s *controlplane.StepCA, leaf *controlplane.Leaf, status int, body string, auth *atomic.Value) *enroll.Client {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth.Store(r.Header.Get("Authorization"))
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return clientFor(t, srv.Listener.Addr().String(), s)
}

// TestRenewProxyAnswers: on the mTLS renewal and rekey too, a 5xx page
// from a proxy in front of the CA (not step-ca's JSON) is transient, as
// step-ca's own 5xx is; a non-JSON 4xx stays "not step-ca".
func TestRenewProxyAnswers(t *testing.T) {
	s := startCA(t)
	_, _, roots, cert := enrolled(t, s)
	leaf, err := s.PKI().IssueServerCert(s.Hostname())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		status    int
		body      string
		kind      enroll.Kind
		transient bool
	}{
		{502, "<html>502 Bad Gateway</html>", enroll.Unavailable, true},
		{503, "upstream connect error", enroll.Unavailable, true},
		{503, `{"status":503,"message":"Service Unavailable"}`, enroll.Unavailable, true},
		{401, "<html>401 Authorization Required</html>", enroll.NotStepCA, false},
		{401, `{"status":401,"message":"The request lacked necessary authorization to be completed."}`, enroll.CertRefused, false},
	}
	for _, tt := range tests {
		for _, rekey := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d %.12s rekey=%v", tt.status, tt.body, rekey), func(t *testing.T) {
				var auth atomic.Value
				c := answering(t, s, leaf, tt.status, tt.body, &auth)
				_, err := c.Renew(context.Background(), cert, roots, rekey)
				e := asError(t, err)
				if e.Kind != tt.kind || e.Transient() != tt.transient || e.Status != tt.status {
					t.Fatalf("kind %s status %d transient=%v (%v), want %s %d transient=%v", e.Kind, e.Status, e.Transient(), err, tt.kind, tt.status, tt.transient)
				}
			})
		}
	}
}

// TestRenewEmptyChainEntries: a renewal answer whose certChain holds empty
// entries ("" and null decode to no certificate) gives a chain without
// them, never a nil certificate for the caller to trip on.
func TestRenewEmptyChainEntries(t *testing.T) {
	s := startCA(t)
	_, _, roots, cert := enrolled(t, s)
	leaf, err := s.PKI().IssueServerCert(s.Hostname())
	if err != nil {
		t.Fatal(err)
	}
	own := strings.ReplaceAll(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Leaf.Raw})), "\n", `\n`)
	body := `{"crt":"` + own + `","ca":"","certChain":["` + own + `","",null]}`
	var auth atomic.Value
	c := answering(t, s, leaf, http.StatusCreated, body, &auth)
	for _, renew := range []func() (*enroll.Issued, error){
		func() (*enroll.Issued, error) { return c.RenewExpired(context.Background(), cert, roots) },
		func() (*enroll.Issued, error) { return c.Renew(context.Background(), cert, roots, false) },
	} {
		issued, err := renew()
		if err != nil {
			t.Fatal(err)
		}
		for i, x := range issued.Chain {
			if x == nil {
				t.Fatalf("chain[%d] is nil (chain %v)", i, issued.Chain)
			}
		}
		if len(issued.Chain) != 1 {
			t.Fatalf("chain has %d certificates, want the leaf alone", len(issued.Chain))
		}
	}
}

// clientFor is a client for the CA's hostname whose connections go to addr
// on loopback.
func clientFor(t *testing.T, addr string, s *controlplane.StepCA) *enroll.Client {
	t.Helper()
	_, port, _ := strings.Cut(addr, ":")
	u, err := url.Parse("https://" + s.Hostname() + ":" + port)
	if err != nil {
		t.Fatal(err)
	}
	return &enroll.Client{URL: u, Fingerprint: s.Fingerprint(), Dial: s.DialContext, Timeout: 5 * time.Second, Retries: 2, Policy: fastPolicy}
}
