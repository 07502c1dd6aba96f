package enroll_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/smallstep/certificates/api"

	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/tests/controlplane"
)

// TestFetchRootsConnections: FetchRoots sends the pinned-root fetch over a
// connection it verifies only afterwards, against that root, and asks
// /roots and /federation only over a verified connection: the same one
// when it stays open, a new one verified in its handshake when the CA
// closed it. A CA whose certificate does not chain to the pinned root, on
// the first connection or only on a later one, is never asked for /roots.
func TestFetchRootsConnections(t *testing.T) {
	for _, tc := range []struct {
		name string
		// closeAfterPin: the CA closes the connection after the pinned root.
		closeAfterPin bool
		// untrustedFrom is the connection (1-based) from which the CA
		// presents a certificate of another CA; 0: never.
		untrustedFrom int
		wantDials     int32
		wantErr       enroll.Kind // "" = the roots are fetched
		wantRoots     int32       // /roots requests the CA saw
		wantConnsUsed int         // distinct connections that carried a request
	}{
		{"kept open: one connection", false, 0, 1, "", 1, 1},
		{"closed by the CA: a second, verified connection", true, 0, 2, "", 1, 2},
		{"untrusted from the start: refused before /roots", false, 1, 1, enroll.TrustMismatch, 0, 1},
		{"untrusted on the second connection: its handshake fails", true, 2, 2, enroll.TrustMismatch, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
			if err != nil {
				t.Fatal(err)
			}
			other, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
			if err != nil {
				t.Fatal(err)
			}
			good, err := p.IssueServerCert("", net.ParseIP("127.0.0.1"))
			if err != nil {
				t.Fatal(err)
			}
			bad, err := other.IssueServerCert("", net.ParseIP("127.0.0.1")) // same names, another CA
			if err != nil {
				t.Fatal(err)
			}
			var conns atomic.Int32
			var roots atomic.Int32
			var mu sync.Mutex
			used := map[string]bool{}
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				used[r.RemoteAddr] = true
				mu.Unlock()
				switch r.URL.Path {
				case "/root/" + p.Fingerprint():
					if tc.closeAfterPin {
						w.Header().Set("Connection", "close")
					}
					json.NewEncoder(w).Encode(api.RootResponse{RootPEM: api.NewCertificate(p.Root)})
				case "/roots":
					roots.Add(1)
					json.NewEncoder(w).Encode(api.RootsResponse{Certificates: []api.Certificate{api.NewCertificate(p.Root)}})
				case "/federation":
					json.NewEncoder(w).Encode(api.FederationResponse{Certificates: []api.Certificate{api.NewCertificate(p.Root)}})
				default:
					http.NotFound(w, r)
				}
			}))
			// Per connection (no SNI for an IP, so not GetCertificate).
			srv.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
				c := good.TLSCertificate()
				if n := int(conns.Add(1)); tc.untrustedFrom > 0 && n >= tc.untrustedFrom {
					c = bad.TLSCertificate()
				}
				return &tls.Config{Certificates: []tls.Certificate{c}}, nil
			}}
			srv.StartTLS()
			defer srv.Close()
			c, dc := fakeClient(t, srv.URL, p.Fingerprint())
			got, err := c.FetchRoots(context.Background())
			if tc.wantErr == "" {
				if err != nil || len(got.Current) != 1 || !got.Current[0].Equal(p.Root) {
					t.Fatalf("FetchRoots = %+v, %v; want the pinned root as the current one", got, err)
				}
			} else {
				e := asError(t, err)
				var cve *tls.CertificateVerificationError
				if e.Kind != tc.wantErr || e.Op != "fetch roots" || e.Transient() || !errors.As(err, &cve) {
					t.Fatalf("got %s in %q (transient %v): %v; want a permanent %s in fetch roots from certificate verification", e.Kind, e.Op, e.Transient(), err, tc.wantErr)
				}
			}
			if n := dc.n.Load(); n != tc.wantDials {
				t.Errorf("%d dials, want %d", n, tc.wantDials)
			}
			if n := roots.Load(); n != tc.wantRoots {
				t.Errorf("the CA answered /roots %d times, want %d", n, tc.wantRoots)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(used) != tc.wantConnsUsed {
				t.Errorf("requests came over %d connections, want %d", len(used), tc.wantConnsUsed)
			}
		})
	}
}
