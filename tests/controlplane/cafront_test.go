package controlplane

import (
	"crypto/tls"
	"net/http"
	"strings"
	"testing"

	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/ca"
)

// frontClient is a step-ca client that reaches the CA through front, by
// the CA's hostname, verifying the CA's (or the front's) TLS certificate
// against the CA's root; cert, when set, is presented for mTLS.
func frontClient(t *testing.T, s *StepCA, front *CAFront, cert *tls.Certificate) (*ca.Client, http.RoundTripper) {
	t.Helper()
	conf := &tls.Config{RootCAs: s.PKI().RootPool(), MinVersion: tls.VersionTLS12}
	if cert != nil {
		conf.Certificates = []tls.Certificate{*cert}
	}
	tr := &http.Transport{DialContext: s.DialContext, TLSClientConfig: conf, DisableKeepAlives: true}
	c, err := ca.NewClient(front.URL(), ca.WithTransport(tr))
	if err != nil {
		t.Fatal(err)
	}
	return c, tr
}

// TestCAFrontRefusesRenewalsOnce: through a front armed for one answer,
// the first mTLS renewal gets step-ca's own 401 from the front (step-ca
// never sees it), and the next one reaches the real step-ca, client
// certificate and all, and is renewed. Requests without a client
// certificate pass while armed (a sign through the front), and a rekey is
// answered like a renewal.
func TestCAFrontRefusesRenewalsOnce(t *testing.T) {
	t.Parallel()
	s, err := StartStepCA(StepCAOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	front, err := StartCAFront(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { front.Close() })

	front.Refuse(2, FrontAnswer{})
	anon, _ := frontClient(t, s, front, nil)
	tok, err := s.Token("gpu-0007")
	if err != nil {
		t.Fatal(err)
	}
	req, key, err := ca.CreateSignRequest(tok)
	if err != nil {
		t.Fatal(err)
	}
	sign, err := anon.Sign(req)
	if err != nil {
		t.Fatalf("a sign through the armed front: %v", err)
	}
	cert, err := ca.TLSCertificate(sign, key)
	if err != nil {
		t.Fatal(err)
	}
	c, tr := frontClient(t, s, front, cert)

	if _, err := c.Renew(tr); statusOf(err) != http.StatusUnauthorized {
		t.Fatalf("first renewal: %v (status %d), want the front's 401", err, statusOf(err))
	}
	csr, _, err := ca.CreateCertificateRequest("gpu-0007", "gpu-0007")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Rekey(&api.RekeyRequest{CsrPEM: *csr}, tr); statusOf(err) != http.StatusUnauthorized {
		t.Fatalf("first rekey: %v (status %d), want the front's 401", err, statusOf(err))
	}
	if front.Pending() != 0 {
		t.Fatalf("%d answers still pending, want 0", front.Pending())
	}
	renewed, err := c.Renew(tr)
	if err != nil {
		t.Fatalf("renewal after the front's answers: %v", err)
	}
	if renewed.ServerPEM.SerialNumber.Cmp(sign.ServerPEM.SerialNumber) == 0 {
		t.Fatal("the renewal returned the same serial")
	}
	var answered, signs int
	for _, ev := range front.Events() {
		if ev.Answered {
			answered++
			if !ev.ClientCert || ev.Status != 401 || !isRenewalPath(ev.Path) {
				t.Errorf("answered %+v, want a renewal with a client certificate, 401", ev)
			}
		}
		if strings.HasSuffix(ev.Path, "/sign") && !ev.Answered && ev.Status == http.StatusCreated {
			signs++
		}
	}
	if answered != 2 || signs != 1 || front.Relayed() == 0 {
		t.Fatalf("answered %d, relayed signs %d, relayed connections %d; want 2, 1, >0 (events %+v)", answered, signs, front.Relayed(), front.Events())
	}
}

// TestCAFrontCustomAnswer: the armed answer can be anything a proxy sends,
// such as a plain-text 401 that is not step-ca's JSON.
func TestCAFrontCustomAnswer(t *testing.T) {
	t.Parallel()
	s, err := StartStepCA(StepCAOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	front, err := StartCAFront(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { front.Close() })
	leaf, err := s.PKI().IssueClientCert("gpu-0008")
	if err != nil {
		t.Fatal(err)
	}
	cert := leaf.TLSCertificate()
	c, tr := frontClient(t, s, front, &cert)
	front.Refuse(1, FrontAnswer{Status: 401, ContentType: "text/plain", Body: "Unauthorized\n"})
	_, err = c.Renew(tr)
	if err == nil || !strings.Contains(err.Error(), "failed decoding CA error response") {
		t.Fatalf("renewal: %v, want a non-JSON error answer", err)
	}
	if _, err := c.Renew(tr); err != nil {
		t.Fatalf("renewal after the answer: %v", err)
	}
}
