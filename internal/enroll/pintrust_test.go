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

// TestFetchRootsConnections: FetchRoots asks /roots over a connection it
// verifies only afterwards, against the pinned root among the roots it
// listed, and uses nothing of that answer before; /federation is asked
// only over a verified connection: the same one when it stays open, a new
// one verified in its handshake when the CA closed it. A CA whose
// certificate does not chain to the pinned root, on the first connection
// or only on a later one, is refused and never asked for /federation.
func TestFetchRootsConnections(t *testing.T) {
	for _, tc := range []struct {
		name string
		// closeAfterFirst: the CA closes the connection after its first answer.
		closeAfterFirst bool
		// untrustedFrom is the connection (1-based) from which the CA
		// presents a certificate of another CA; 0: never.
		untrustedFrom  int
		wantDials      int32
		wantErr        enroll.Kind // "" = the roots are fetched
		wantOp         string
		wantFederation int32 // /federation requests the CA saw
		wantConnsUsed  int   // distinct connections that carried a request
	}{
		{"kept open: one connection", false, 0, 1, "", "", 1, 1},
		{"closed by the CA: a second, verified connection", true, 0, 2, "", "", 1, 2},
		{"untrusted from the start: refused before /federation", false, 1, 1, enroll.TrustMismatch, "fetch roots", 0, 1},
		{"untrusted on the second connection: its handshake fails", true, 2, 2, enroll.TrustMismatch, "fetch federation", 0, 1},
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
			var federation, answered, pinnedAsked atomic.Int32
			var mu sync.Mutex
			used := map[string]bool{}
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				used[r.RemoteAddr] = true
				mu.Unlock()
				if answered.Add(1) == 1 && tc.closeAfterFirst {
					w.Header().Set("Connection", "close")
				}
				switch r.URL.Path {
				case "/root/" + p.Fingerprint():
					pinnedAsked.Add(1)
					json.NewEncoder(w).Encode(api.RootResponse{RootPEM: api.NewCertificate(p.Root)})
				case "/roots":
					json.NewEncoder(w).Encode(api.RootsResponse{Certificates: []api.Certificate{api.NewCertificate(p.Root)}})
				case "/federation":
					federation.Add(1)
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
				if e.Kind != tc.wantErr || e.Op != tc.wantOp || e.Transient() || !errors.As(err, &cve) {
					t.Fatalf("got %s in %q (transient %v): %v; want a permanent %s in %s from certificate verification", e.Kind, e.Op, e.Transient(), err, tc.wantErr, tc.wantOp)
				}
				if tc.untrustedFrom == 1 && (len(got.Current) != 0 || len(got.Federated) != 0 || !got.ServerDate.IsZero()) {
					t.Fatalf("a refused CA's answer was used: %d current, %d federated, Date %v", len(got.Current), len(got.Federated), got.ServerDate)
				}
			}
			if n := dc.n.Load(); n != tc.wantDials {
				t.Errorf("%d dials, want %d", n, tc.wantDials)
			}
			if n := pinnedAsked.Load(); n != 0 {
				t.Errorf("the pinned root was asked for by itself %d times, though /roots lists it", n)
			}
			if n := federation.Load(); n != tc.wantFederation {
				t.Errorf("the CA answered /federation %d times, want %d", n, tc.wantFederation)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(used) != tc.wantConnsUsed {
				t.Errorf("requests came over %d connections, want %d", len(used), tc.wantConnsUsed)
			}
		})
	}
}
