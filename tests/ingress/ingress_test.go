package ingress

import (
	"bytes"
	"crypto/tls"
	"net/http"
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

// TestRefusals records what a client sees when the ingress refuses its
// certificate, per TLS version. These strings are what provision's
// classifier must recognise.
func TestRefusals(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(string(kind), func(t *testing.T) {
			Require(t, kind)
			p := newTestPKI(t)
			u := newUpstream(t)
			good := startIngress(t, kind, p.options(u))
			wrongCAOpts := p.options(u)
			wrongCAOpts.ClientCAFile = p.otherRootFile
			wrongCA := startIngress(t, kind, wrongCAOpts)

			cert, other := p.clientCert(), p.otherClientCert()
			cases := []struct {
				name string
				in   *Ingress
				c    client
			}{
				{"no certificate", good, client{}},
				{"unrelated CA cert", good, client{cert: &other}},
				{"unrelated CA cert via callback", good, client{cert: &other, viaCallback: true}},
				{"ingress trusts wrong CA", wrongCA, client{cert: &cert}},
				{"ingress trusts wrong CA, cert via callback", wrongCA, client{cert: &cert, viaCallback: true}},
			}
			for _, tc := range cases {
				for _, v := range tlsVersions {
					t.Run(tc.name+"/"+tlsName(v), func(t *testing.T) {
						c := tc.c
						c.maxVersion = v
						before := u.count()
						obs := p.do(t, tc.in, c, "/v1/echo", nil)
						t.Logf("OBSERVED %s | %s | %s: %v", kind, tc.name, tlsName(v), obs)
						if u.count() != before {
							t.Errorf("the upstream was reached")
						}
						if obs.err == nil && obs.status == http.StatusOK {
							t.Errorf("want a refusal, got %v", obs)
						}
					})
				}
			}
		})
	}
}

// TestRouting: a node reaching the ingress by IP (no SNI, Host = the IP)
// gets the default route's 404; mismatched SNI/Host is recorded.
func TestRouting(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(string(kind), func(t *testing.T) {
			Require(t, kind)
			p := newTestPKI(t)
			u := newUpstream(t)
			in := startIngress(t, kind, p.options(u))
			cert := p.clientCert()
			cases := []struct {
				name string
				c    client
			}{
				{"raw IP", client{cert: &cert, viaCallback: true, rawIP: true}},
				{"raw IP, Host is the hostname", client{cert: &cert, viaCallback: true, rawIP: true, host: in.URL[len("https://"):]}},
				{"SNI hostname, unknown Host", client{cert: &cert, host: "other.cp.internal"}},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					before := u.count()
					obs := p.do(t, in, tc.c, "/v1/echo", nil)
					t.Logf("OBSERVED %s | %s: %v", kind, tc.name, obs)
					if u.count() != before {
						t.Errorf("the upstream was reached")
					}
					if tc.name == "raw IP" && obs.status != http.StatusNotFound {
						t.Errorf("want 404, got %v", obs)
					}
				})
			}
		})
	}
}

// TestLongPollTimeout: a long poll outliving the ingress's upstream timeout
// gets a gateway error from the ingress.
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
			if obs.status != http.StatusGatewayTimeout && obs.status != http.StatusBadGateway {
				t.Errorf("want 504 or 502, got %v", obs)
			}
		})
	}
}

// TestBrokenCAFile: a client-CA file that is not PEM. The real programs
// refuse to start; the Traefik emulation closes the connection after the
// ClientHello (EOF, no server certificate).
func TestBrokenCAFile(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(string(kind), func(t *testing.T) {
			Require(t, kind)
			p := newTestPKI(t)
			u := newUpstream(t)
			opts := p.options(u)
			opts.ClientCAFile = p.garbageFile
			in, err := Start(t.Context(), kind, opts)
			if kind != Traefik {
				if err == nil {
					in.Stop()
					t.Fatalf("%s started with a broken client CA file", kind)
				}
				t.Logf("OBSERVED %s | broken CA file: start fails: %v", kind, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer in.Stop()
			cert := p.clientCert()
			for _, v := range tlsVersions {
				obs := p.do(t, in, client{cert: &cert, maxVersion: v}, "/v1/echo", nil)
				t.Logf("OBSERVED %s | broken CA option | %s: %v", kind, tlsName(v), obs)
				if obs.err == nil || obs.serverCN != "" {
					t.Errorf("want a connection closed before any server certificate, got %v", obs)
				}
			}
		})
	}
}
