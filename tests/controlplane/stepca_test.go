package controlplane

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/ca"
	"github.com/smallstep/certificates/errs"
	"go.step.sm/crypto/jose"
)

// caClient pins the root by fingerprint over the loopback URL (127.0.0.1 is
// one of the CA's dnsNames), then talks to the CA by its hostname through a
// dialer that maps the hostname to loopback, verifying the CA's TLS
// certificate for that hostname against the pinned root only.
func caClient(t *testing.T, s *StepCA, fp string) *ca.Client {
	t.Helper()
	pinned, err := ca.NewClient(s.LoopbackURL(), ca.WithRootSHA256(fp))
	if err != nil {
		t.Fatalf("pinned client: %v", err)
	}
	c, err := ca.NewClient(s.URL(), ca.WithTransport(&http.Transport{
		DialContext:     s.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: pinned.GetRootCAs(), MinVersion: tls.VersionTLS12},
	}))
	if err != nil {
		t.Fatalf("client by hostname: %v", err)
	}
	return c
}

func statusOf(err error) int {
	var e *errs.Error
	if errors.As(err, &e) {
		return e.StatusCode()
	}
	return 0
}

func TestStepCASignsWithMintedTokenAndRefusesReuse(t *testing.T) {
	t.Parallel()
	cp := Start(t, Options{})
	const node = "gpu-0001"
	client := caClient(t, cp.CA, cp.CA.Fingerprint())

	if got, err := client.RootFingerprint(); err != nil || got != cp.CA.Fingerprint() {
		t.Fatalf("RootFingerprint() = %q, %v; want %q", got, err, cp.CA.Fingerprint())
	}
	tok, err := cp.Token(node)
	if err != nil {
		t.Fatal(err)
	}
	req, _, err := ca.CreateSignRequest(tok)
	if err != nil {
		t.Fatal(err)
	}
	sign, err := client.Sign(req)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	leaf := sign.ServerPEM.Certificate
	if leaf.Subject.CommonName != node || !slices.Equal(leaf.DNSNames, []string{node}) {
		t.Errorf("leaf CN=%q DNS=%v, want %q", leaf.Subject.CommonName, leaf.DNSNames, node)
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		t.Errorf("leaf EKU %v lacks clientAuth", leaf.ExtKeyUsage)
	}
	inter := x509.NewCertPool()
	inter.AddCert(sign.CaPEM.Certificate)
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: cp.CA.PKI().RootPool(), Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Errorf("issued cert does not chain to the step root: %v", err)
	}

	_, err = client.Sign(req)
	if statusOf(err) != http.StatusUnauthorized {
		t.Fatalf("reusing the token: err=%v (status %d), want 401", err, statusOf(err))
	}
}

func TestStepCARejectsBadTokens(t *testing.T) {
	t.Parallel()
	cp := Start(t, Options{})
	client := caClient(t, cp.CA, cp.CA.Fingerprint())
	const node = "gpu-0002"
	tests := []struct {
		name string
		opt  TokenOption
		want int
	}{
		{"expired", TokenExpired(), http.StatusUnauthorized},
		{"not yet valid", TokenNotYetValid(), http.StatusUnauthorized},
		{"unknown signing key", TokenUnknownKey(), http.StatusUnauthorized},
		{"minted for another node", TokenForNode("gpu-9999"), http.StatusForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := cp.Token(node, tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			// The node builds its CSR from its own node_id, not the token.
			csr, _, err := ca.CreateCertificateRequest(node, node)
			if err != nil {
				t.Fatal(err)
			}
			_, err = client.Sign(&api.SignRequest{CsrPEM: *csr, OTT: tok})
			if got := statusOf(err); got != tc.want {
				t.Fatalf("sign: err=%v status=%d, want %d", err, got, tc.want)
			}
		})
	}
}

func TestTokenClaims(t *testing.T) {
	t.Parallel()
	cp := Start(t, Options{})
	tests := []struct {
		name    string
		opts    []TokenOption
		wantSub string
		wrongSH bool
	}{
		{"good", nil, "gpu-1", false},
		{"wrong sha", []TokenOption{TokenWrongSHA()}, "gpu-1", true},
		{"other node", []TokenOption{TokenForNode("gpu-2")}, "gpu-2", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := cp.Token("gpu-1", tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			jwt, err := jose.ParseSigned(tok)
			if err != nil {
				t.Fatal(err)
			}
			var c ottClaims
			if err := jwt.UnsafeClaimsWithoutVerification(&c); err != nil {
				t.Fatal(err)
			}
			if c.Subject != tc.wantSub || !slices.Equal(c.SANs, []string{tc.wantSub}) {
				t.Errorf("sub=%q sans=%v, want %q", c.Subject, c.SANs, tc.wantSub)
			}
			if (c.SHA != cp.CA.Fingerprint()) != tc.wrongSH {
				t.Errorf("sha=%q fingerprint=%q wrongSHA=%v", c.SHA, cp.CA.Fingerprint(), tc.wrongSH)
			}
			wantAud := "https://" + DefaultCAHostname + ":"
			if len(c.Audience) != 1 || !strings.HasPrefix(c.Audience[0], wantAud) || !strings.HasSuffix(c.Audience[0], "/1.0/sign") {
				t.Errorf("aud=%v", c.Audience)
			}
			if c.Expiry == nil || c.ID == "" || c.Issuer != DefaultProvisioner {
				t.Errorf("claims %+v lack exp/jti/iss", c.Claims)
			}
		})
	}
}

func TestRotateCAChangesRootOnSameAddress(t *testing.T) {
	t.Parallel()
	cp := Start(t, Options{})
	const node = "gpu-0003"
	oldFP, oldAddr := cp.CA.Fingerprint(), cp.CA.Addr()
	before, err := cp.IssueNodeCert(node)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.RotateCA(); err != nil {
		t.Fatal(err)
	}
	if cp.CA.Fingerprint() == oldFP {
		t.Fatal("fingerprint unchanged by rotation")
	}
	if cp.CA.Addr() != oldAddr {
		t.Fatalf("address moved from %s to %s", oldAddr, cp.CA.Addr())
	}
	if _, err := ca.NewClient(cp.CA.LoopbackURL(), ca.WithRootSHA256(oldFP)); err == nil {
		t.Fatal("pinning the old fingerprint succeeded after rotation")
	}
	client := caClient(t, cp.CA, cp.CA.Fingerprint())
	tok, err := cp.Token(node)
	if err != nil {
		t.Fatal(err)
	}
	req, _, err := ca.CreateSignRequest(tok)
	if err != nil {
		t.Fatal(err)
	}
	sign, err := client.Sign(req)
	if err != nil {
		t.Fatalf("sign after rotation: %v", err)
	}
	if _, err := sign.ServerPEM.Certificate.Verify(x509.VerifyOptions{
		Roots: cp.CA.PKI().RootPool(), Intermediates: poolOf(sign.CaPEM.Certificate),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Errorf("new cert does not chain to the new root: %v", err)
	}
	var unknown x509.UnknownAuthorityError
	if _, err := before.Cert.Verify(x509.VerifyOptions{
		Roots: cp.CA.PKI().RootPool(), Intermediates: poolOf(before.Intermediate),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); !errors.As(err, &unknown) {
		t.Errorf("pre-rotation cert against the new root: %v, want UnknownAuthorityError", err)
	}
}

func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// TestConcurrentSignsOnOneCA guards the single dnsName: with more than one,
// step-ca v0.30.2's Audiences.All appends into a shared slice and -race
// fails any suite that enrolls two nodes against one CA at once.
func TestConcurrentSignsOnOneCA(t *testing.T) {
	t.Parallel()
	cp := Start(t, Options{})
	client := caClient(t, cp.CA, cp.CA.Fingerprint())
	const n = 8
	errc := make(chan error, n)
	for i := range n {
		go func() {
			tok, err := cp.Token(fmt.Sprintf("gpu-%04d", i))
			if err == nil {
				var req *api.SignRequest
				if req, _, err = ca.CreateSignRequest(tok); err == nil {
					_, err = client.Sign(req)
				}
			}
			errc <- err
		}()
	}
	for range n {
		if err := <-errc; err != nil {
			t.Errorf("concurrent sign: %v", err)
		}
	}
}

// TestNewPKIAtAnyDay: a PKI built at a fixed instant, years from the real
// time on either side, verifies a leaf at that instant, so a test with a
// fixed clock does not depend on the day it runs.
func TestNewPKIAtAnyDay(t *testing.T) {
	for _, at := range []time.Time{
		time.Date(2019, 1, 2, 3, 4, 5, 0, time.UTC),
		time.Date(2041, 6, 1, 12, 0, 0, 0, time.UTC),
	} {
		p, err := NewPKIAt(t.TempDir(), "AnyDay", at)
		if err != nil {
			t.Fatal(err)
		}
		l, err := p.IssueClientCert("gpu-1")
		if err != nil {
			t.Fatal(err)
		}
		if !l.Cert.NotBefore.Before(at) || !l.Cert.NotAfter.After(at) {
			t.Fatalf("leaf valid %s..%s does not cover %s", l.Cert.NotBefore, l.Cert.NotAfter, at)
		}
		inter := x509.NewCertPool()
		inter.AddCert(p.Intermediate)
		if _, err := l.Cert.Verify(x509.VerifyOptions{Roots: p.RootPool(), Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("at %s: %v", at, err)
		}
	}
}
