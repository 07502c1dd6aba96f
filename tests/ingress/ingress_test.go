package ingress

import (
	"bytes"
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var tlsVersions = []uint16{tls.VersionTLS12, tls.VersionTLS13}

// TestForwardsClientCert: a node with a good certificate (leaf +
// intermediate) reaches the upstream, and the header the real program sent
// decodes to the node's leaf; a forged header of the same name sent by the
// client does not survive.
func TestForwardsClientCert(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(string(kind), func(t *testing.T) {
			Require(t, kind)
			p := newTestPKI(t)
			u := newUpstream(t)
			opts := p.options(u)
			opts.TraefikInfo = true
			in := startIngress(t, kind, opts)
			for _, v := range tlsVersions {
				t.Run(tlsName(v), func(t *testing.T) {
					cert := p.clientCert()
					forged := http.Header{http.CanonicalHeaderKey(in.Forwarding.Header): {"forged"}}
					before := u.count()
					obs := p.do(t, in, client{cert: &cert, maxVersion: v}, "/v1/echo", forged)
					if obs.err != nil || obs.status != http.StatusOK || obs.body != "upstream ok" {
						t.Fatalf("want 200 from upstream, got %v", obs)
					}
					if u.count() != before+1 {
						t.Fatalf("upstream saw %d requests, want 1", u.count()-before)
					}
					h := u.last()
					t.Logf("OBSERVED %s %s forwarded %s: %q", kind, tlsName(v), in.Forwarding.Header, h.Get(in.Forwarding.Header))
					for _, x := range []string{in.Forwarding.ChainHeader, in.Forwarding.InfoHeader, in.Forwarding.VerifyHeader, in.Forwarding.UsedHeader} {
						if x != "" {
							t.Logf("OBSERVED %s %s forwarded %s: %q", kind, tlsName(v), x, h.Get(x))
						}
					}
					certs, err := in.Forwarding.Decode(h)
					if err != nil {
						t.Fatalf("decoding the forwarded header: %v", err)
					}
					if !bytes.Equal(certs[0].Raw, p.client.cert.Raw) {
						t.Fatalf("forwarded leaf is %q, want the client's leaf", certs[0].Subject)
					}
					wantChain := in.Forwarding.Chain || in.Forwarding.ChainHeader != ""
					if wantChain && (len(certs) != 2 || !bytes.Equal(certs[1].Raw, p.inter.cert.Raw)) {
						t.Fatalf("forwarded chain has %d certificates, want leaf + intermediate", len(certs))
					}
					if !wantChain && len(certs) != 1 {
						t.Fatalf("forwarded %d certificates, want the leaf only", len(certs))
					}
				})
			}
		})
	}
}

// TestNotForwarded: without the forwarding directive the upstream is
// reached but gets no certificate header (incident: 401 with
// mtls_present=false).
func TestNotForwarded(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(string(kind), func(t *testing.T) {
			Require(t, kind)
			p := newTestPKI(t)
			u := newUpstream(t)
			opts := p.options(u)
			opts.NoForwardCert = true
			in := startIngress(t, kind, opts)
			cert := p.clientCert()
			obs := p.do(t, in, client{cert: &cert}, "/v1/echo", nil)
			if obs.err != nil || obs.status != http.StatusOK {
				t.Fatalf("want 200 from upstream, got %v", obs)
			}
			for _, h := range []string{NginxCertHeader, CaddyCertHeader, TraefikCertHeader, HAProxyChainHeader} {
				if v := u.last().Get(h); v != "" {
					t.Errorf("upstream got %s=%q with forwarding off", h, v)
				}
			}
		})
	}
}

// want is what a client must observe: an HTTP status whose body contains
// body, or an error containing err. serverCN, when set, is the CN of the
// server certificate the client was shown.
type want struct {
	status   int
	body     string
	err      string
	serverCN string
	upstream bool // the request reaches the upstream
}

func (w want) check(t *testing.T, obs observation, reached bool) {
	t.Helper()
	if w.err != "" {
		if obs.err == nil || !strings.Contains(obs.err.Error(), w.err) {
			t.Errorf("want error containing %q, got %v", w.err, obs)
		}
	} else if obs.err != nil || obs.status != w.status || !strings.Contains(obs.body, w.body) {
		t.Errorf("want HTTP %d with body containing %q, got %v", w.status, w.body, obs)
	}
	if w.serverCN != "" && obs.serverCN != w.serverCN {
		t.Errorf("want server certificate %q, got %q", w.serverCN, obs.serverCN)
	}
	if reached != w.upstream {
		t.Errorf("upstream reached: %v, want %v", reached, w.upstream)
	}
}

// What clients observe when the ingress refuses their certificate. These
// are pinned from the real programs (nginx 1.22, HAProxy 2.6 with OpenSSL 3,
// Caddy 2.6) and the Traefik emulation (Go crypto/tls), and are what
// provision's classifier must recognise.
var (
	nginxNoCert  = want{status: 400, body: "No required SSL certificate was sent"}
	nginxBadCert = want{status: 400, body: "The SSL certificate error"}
	alertUnknown = want{err: "remote error: tls: unknown certificate authority"}
	alertBad     = want{err: "remote error: tls: bad certificate"}
	// Go's server and OpenSSL agree: no certificate under "require" is
	// handshake_failure in TLS 1.2 and certificate_required in TLS 1.3.
	alertNoCert = map[uint16]want{
		tls.VersionTLS12: {err: "remote error: tls: handshake failure"},
		tls.VersionTLS13: {err: "remote error: tls: certificate required"},
	}
)

// TestRefusals: a client without a certificate, with a certificate from an
// unrelated CA, or facing an ingress that trusts the wrong CA, is refused
// before the upstream. "via callback" presents the certificate through
// GetClientCertificate; otherwise Go's client silently withholds a
// certificate whose issuer is not in the server's acceptable-CA list, which
// makes a wrong CA look like "no certificate".
func TestRefusals(t *testing.T) {
	type tcase struct {
		name string
		c    func(p *testPKI) client
		// ingressTrustsOther: the ingress's client CA is the unrelated CA.
		ingressTrustsOther bool
		want               map[Kind]func(v uint16) want
	}
	same := func(w want) func(uint16) want { return func(uint16) want { return w } }
	noCert := func(v uint16) want { return alertNoCert[v] }
	cases := []tcase{
		{"no certificate", func(p *testPKI) client { return client{} }, false,
			map[Kind]func(uint16) want{Nginx: same(nginxNoCert), HAProxy: noCert, Caddy: same(alertBad), Traefik: noCert}},
		{"unrelated CA cert", func(p *testPKI) client { c := p.otherClientCert(); return client{cert: &c} }, false,
			map[Kind]func(uint16) want{Nginx: same(nginxNoCert), HAProxy: noCert, Caddy: same(alertBad), Traefik: noCert}},
		{"unrelated CA cert via callback", func(p *testPKI) client { c := p.otherClientCert(); return client{cert: &c, viaCallback: true} }, false,
			map[Kind]func(uint16) want{Nginx: same(nginxBadCert), HAProxy: same(alertUnknown), Caddy: same(alertBad), Traefik: same(alertUnknown)}},
		{"ingress trusts wrong CA", func(p *testPKI) client { c := p.clientCert(); return client{cert: &c} }, true,
			map[Kind]func(uint16) want{Nginx: same(nginxNoCert), HAProxy: noCert, Caddy: same(alertBad), Traefik: noCert}},
		{"ingress trusts wrong CA, cert via callback", func(p *testPKI) client { c := p.clientCert(); return client{cert: &c, viaCallback: true} }, true,
			map[Kind]func(uint16) want{Nginx: same(nginxBadCert), HAProxy: same(alertUnknown), Caddy: same(alertBad), Traefik: same(alertUnknown)}},
	}
	for _, kind := range Kinds {
		t.Run(string(kind), func(t *testing.T) {
			Require(t, kind)
			p := newTestPKI(t)
			u := newUpstream(t)
			good := startIngress(t, kind, p.options(u))
			wrongCAOpts := p.options(u)
			wrongCAOpts.ClientCAFile = p.otherRootFile
			wrongCA := startIngress(t, kind, wrongCAOpts)
			for _, tc := range cases {
				for _, v := range tlsVersions {
					t.Run(tc.name+"/"+tlsName(v), func(t *testing.T) {
						in := good
						if tc.ingressTrustsOther {
							in = wrongCA
						}
						c := tc.c(p)
						c.maxVersion = v
						before := u.count()
						obs := p.do(t, in, c, "/v1/echo", nil)
						t.Logf("OBSERVED %s | %s | %s: %v", kind, tc.name, tlsName(v), obs)
						w := tc.want[kind](v)
						w.serverCN = testHostname
						w.check(t, obs, u.count() != before)
					})
				}
			}
		})
	}
}

// TestRouting: a node reaching the ingress by IP (no SNI, Host = the IP),
// or with a Host the ingress does not route, never reaches the upstream
// unverified. Caddy enables strict_sni_host by itself once client auth is
// configured, so it answers 421 (empty body) before its 404 route.
func TestRouting(t *testing.T) {
	cases := []struct {
		name string
		c    func(in *Ingress, cert *tls.Certificate) client
		want map[Kind]want
	}{
		{"raw IP", func(in *Ingress, cert *tls.Certificate) client {
			return client{cert: cert, viaCallback: true, rawIP: true}
		}, map[Kind]want{
			Nginx:   {status: 404, body: "404 Not Found", serverCN: testHostname},
			HAProxy: {status: 404, body: "404 page not found", serverCN: testHostname},
			Caddy:   {status: 421, serverCN: testHostname},
			Traefik: {status: 404, body: "404 page not found", serverCN: "TRAEFIK DEFAULT CERT"},
		}},
		{"raw IP, Host is the hostname", func(in *Ingress, cert *tls.Certificate) client {
			return client{cert: cert, viaCallback: true, rawIP: true, host: strings.TrimPrefix(in.URL, "https://")}
		}, map[Kind]want{
			// nginx: no SNI selects the default server (no client cert
			// requested); the Host then selects the mTLS server.
			Nginx: {status: 400, body: "No required SSL certificate was sent"},
			// HAProxy verifies on the bind line, whatever the SNI: the
			// certificate was verified, so the request is legitimately served.
			HAProxy: {status: 200, body: "upstream ok", upstream: true},
			Caddy:   {status: 421},
			Traefik: {status: 421, body: "Misdirected Request", serverCN: "TRAEFIK DEFAULT CERT"},
		}},
		{"SNI hostname, unknown Host", func(in *Ingress, cert *tls.Certificate) client {
			return client{cert: cert, host: "other.cp.internal"}
		}, map[Kind]want{
			Nginx:   {status: 404, body: "404 Not Found"},
			HAProxy: {status: 404, body: "404 page not found"},
			Caddy:   {status: 421},
			Traefik: {status: 421, body: "Misdirected Request"},
		}},
	}
	for _, kind := range Kinds {
		t.Run(string(kind), func(t *testing.T) {
			Require(t, kind)
			p := newTestPKI(t)
			u := newUpstream(t)
			in := startIngress(t, kind, p.options(u))
			cert := p.clientCert()
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					before := u.count()
					obs := p.do(t, in, tc.c(in, &cert), "/v1/echo", nil)
					t.Logf("OBSERVED %s | %s: %v", kind, tc.name, obs)
					tc.want[kind].check(t, obs, u.count() != before)
				})
			}
		})
	}
}

// TestLongPollTimeout: a long poll outliving the ingress's upstream timeout
// gets 504 from the ingress (the upstream never answered).
func TestLongPollTimeout(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(string(kind), func(t *testing.T) {
			Require(t, kind)
			p := newTestPKI(t)
			u := newUpstream(t)
			opts := p.options(u)
			opts.UpstreamTimeout = 500 * time.Millisecond
			in := startIngress(t, kind, opts)
			cert := p.clientCert()
			obs := p.do(t, in, client{cert: &cert}, "/wait", nil)
			t.Logf("OBSERVED %s | long poll past upstream timeout: %v", kind, obs)
			want{status: http.StatusGatewayTimeout, upstream: true}.check(t, obs, u.count() > 0)
		})
	}
}

// TestBrokenCAFile: a client-CA file that is not PEM (a wrong secret shape).
// nginx and HAProxy refuse to start; Caddy 2.6 starts and refuses every
// client certificate; the Traefik emulation closes the connection after the
// ClientHello (EOF, no server certificate).
func TestBrokenCAFile(t *testing.T) {
	startErr := map[Kind]string{
		Nginx:   "SSL_CTX_load_verify_locations",
		HAProxy: "unable to load",
	}
	clientSees := map[Kind]want{
		Caddy:   alertBad,
		Traefik: {err: "EOF"},
	}
	for _, kind := range Kinds {
		t.Run(string(kind), func(t *testing.T) {
			Require(t, kind)
			p := newTestPKI(t)
			u := newUpstream(t)
			opts := p.options(u)
			opts.ClientCAFile = p.garbageFile
			in, err := Start(t.Context(), kind, opts)
			if msg, ok := startErr[kind]; ok {
				if err == nil {
					in.Stop()
					t.Fatalf("%s started with a broken client CA file", kind)
				}
				t.Logf("OBSERVED %s | broken CA file: start fails: %v", kind, err)
				if !strings.Contains(err.Error(), msg) {
					t.Errorf("start error does not mention %q", msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer in.Stop()
			cert := p.clientCert()
			for _, v := range tlsVersions {
				obs := p.do(t, in, client{cert: &cert, viaCallback: true, maxVersion: v}, "/v1/echo", nil)
				t.Logf("OBSERVED %s | broken CA option | %s: %v", kind, tlsName(v), obs)
				clientSees[kind].check(t, obs, u.count() > 0)
				if kind == Traefik && obs.serverCN != "" {
					t.Errorf("Traefik showed a server certificate %q before closing", obs.serverCN)
				}
			}
		})
	}
}

// TestReload: an operator's fix applied the way the runbook says (put the
// right CA in the ingress's client-auth file and reload it) takes effect
// for the next connection: a running nginx that trusted the wrong CA
// refuses the node's certificate, then, after Reload, lets it through. A
// reload of a kind that has none is an error, not a silent no-op.
func TestReload(t *testing.T) {
	Require(t, Nginx)
	p := newTestPKI(t)
	u := newUpstream(t)
	caFile := filepath.Join(t.TempDir(), "client-ca.pem")
	copyFile := func(from string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(caFile, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(p.otherRootFile)
	o := p.options(u)
	o.ClientCAFile = caFile
	in := startIngress(t, Nginx, o)
	c := p.clientCert()
	if obs := p.do(t, in, client{cert: &c}, "/v1/echo", nil); obs.status == http.StatusOK {
		t.Fatalf("nginx trusting the wrong CA let the node through: %v", obs)
	}
	copyFile(p.rootFile)
	if err := in.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if obs := p.do(t, in, client{cert: &c}, "/v1/echo", nil); obs.status != http.StatusOK {
		t.Fatalf("after the fix and a reload: %v, want HTTP 200", obs)
	}
	tr := &Ingress{Kind: Traefik}
	if err := tr.Reload(context.Background()); err == nil {
		t.Error("Reload of the Traefik emulation succeeded; it has no reload")
	}
}
