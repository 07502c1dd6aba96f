package ingress

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"

	"github.com/gpuaas/provision/clientcert"
)

// TestHeaderNamesMatchClientcert keeps the harness's header names equal to
// clientcert's defaults, so an API built on clientcert with no header
// configuration reads every ingress here.
func TestHeaderNamesMatchClientcert(t *testing.T) {
	d := clientcert.DefaultHeaderNames()
	for _, tc := range []struct{ harness, clientcert string }{
		{NginxCertHeader, d.Nginx},
		{HAProxyCertHeader, d.HAProxy},
		{HAProxyChainHeader, d.HAProxyChain},
		{CaddyCertHeader, d.Caddy},
		{TraefikCertHeader, d.Traefik},
		{TraefikInfoHeader, d.TraefikInfo},
	} {
		if http.CanonicalHeaderKey(tc.harness) != http.CanonicalHeaderKey(tc.clientcert) {
			t.Errorf("harness sends %q, clientcert reads %q by default", tc.harness, tc.clientcert)
		}
	}
}

// TestClientcertReadsRealIngress feeds what each real ingress actually sent
// (captured live, not written from documentation) into the clientcert
// package behind it, as the node API would: the upstream is a clientcert
// Verifier trusting the ingress's loopback address, with format detection
// and default header names. The verified identity must be the node's CN.
// Without forwarding, the API's 401 must say mtls_present=false.
//
// nginx and Caddy forward the leaf only, so an API behind them can verify
// the node only if it also holds the intermediate: with the root alone it
// answers 401 reason=unknown-authority (asserted below). HAProxy (chain
// header) and Traefik (comma-joined chain) forward the intermediate the node
// sent, and the root alone suffices.
func TestClientcertReadsRealIngress(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(string(kind), func(t *testing.T) {
			Require(t, kind)
			p := newTestPKI(t)
			fwd := ForwardingFor(kind, Options{})
			leafOnly := !fwd.Chain && fwd.ChainHeader == ""
			roots := p.pool
			if leafOnly {
				roots = roots.Clone()
				roots.AddCert(p.inter.cert)
			}
			v, err := clientcert.NewVerifier(clientcert.Config{
				Roots:          roots,
				TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			})
			if err != nil {
				t.Fatal(err)
			}
			rootOnly, err := clientcert.NewVerifier(clientcert.Config{
				Roots:          p.pool,
				TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			})
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var got []clientcert.Result
			var headers []http.Header
			api := httptest.NewServer(v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				res, _ := clientcert.ResultFromContext(r.Context())
				mu.Lock()
				got = append(got, res)
				headers = append(headers, r.Header.Clone())
				mu.Unlock()
				io.WriteString(w, "upstream ok")
			}), clientcert.MiddlewareOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}))
			defer api.Close()
			u := &upstream{srv: api}

			for _, forward := range []bool{true, false} {
				opts := p.options(u)
				opts.NoForwardCert = !forward
				in := startIngress(t, kind, opts)
				cert := p.clientCert()
				obs := p.do(t, in, client{cert: &cert}, "/v1/nodes/"+testNodeCN+"/tasks/wait", nil)
				if !forward {
					var body clientcert.RejectionBody
					if obs.err != nil || obs.status != http.StatusUnauthorized || json.Unmarshal([]byte(obs.body), &body) != nil {
						t.Fatalf("without forwarding: want the API's 401, got %v", obs)
					}
					if body.MTLSPresent || body.Reason != clientcert.ReasonMissing {
						t.Errorf("without forwarding: 401 body %+v, want mtls_present=false reason=missing", body)
					}
					continue
				}
				if obs.err != nil || obs.status != http.StatusOK {
					t.Fatalf("want 200 through %s and clientcert, got %v", kind, obs)
				}
				mu.Lock()
				res, h := got[len(got)-1], headers[len(headers)-1]
				mu.Unlock()
				t.Logf("captured %s = %q", in.Forwarding.Header, h.Get(in.Forwarding.Header))
				if !res.MTLSPresent || !res.Verified || res.Reason != clientcert.ReasonOK {
					t.Fatalf("clientcert result %+v, want verified", res)
				}
				if res.Identity != testNodeCN {
					t.Errorf("identity %q, want %q", res.Identity, testNodeCN)
				}
				if string(res.Format) != in.Forwarding.Format {
					t.Errorf("clientcert detected format %q, harness says %s sends %q", res.Format, kind, in.Forwarding.Format)
				}
				// The same captured header through the header-only parser.
				chain, format, err := clientcert.Parse(h, clientcert.ParseOptions{})
				if err != nil || len(chain) == 0 || chain[0].Subject.CommonName != testNodeCN {
					t.Fatalf("clientcert.Parse(captured) = %d certs, %q, %v", len(chain), format, err)
				}
				// An API trusting only the root.
				r := rootOnly.VerifyChain(chain, format, testNodeCN)
				wantReason := clientcert.ReasonOK
				if leafOnly {
					wantReason = clientcert.ReasonUnknownAuthority
				}
				if r.Reason != wantReason {
					t.Errorf("root-only API: reason %q, want %q (%d certificates forwarded)", r.Reason, wantReason, len(chain))
				}
			}
		})
	}
}
