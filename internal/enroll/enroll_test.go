package enroll_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smallstep/certificates/api"

	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/tests/controlplane"
)

const nodeID = "gpu-0042"

// fastPolicy keeps retries quick; the schedule itself is tested in retry.
var fastPolicy = retry.Policy{Base: time.Millisecond, Cap: 5 * time.Millisecond}

// dialCounter wraps a DialContext and counts the connections it opens. The
// client disables keep-alives except within FetchRoots (one connection for
// the pinned root, /roots and /federation) and dials anew for every retry,
// so apart from those three requests every attempt is exactly one dial.
type dialCounter struct {
	n    atomic.Int32
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func (d *dialCounter) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.n.Add(1)
	return d.dial(ctx, network, addr)
}

// startCA starts a real step-ca on loopback for this test.
func startCA(t *testing.T) *controlplane.StepCA {
	t.Helper()
	// A step identity in the developer's $STEPPATH must not be picked up.
	t.Setenv("STEPPATH", t.TempDir())
	s, err := controlplane.StartStepCA(controlplane.StepCAOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("starting step-ca: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// caClient returns a client for s by hostname (resolved to loopback by the
// CA's dialer), counting dials.
func caClient(t testing.TB, s *controlplane.StepCA, fingerprint string) (*enroll.Client, *dialCounter) {
	t.Helper()
	u, err := url.Parse(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	dc := &dialCounter{dial: s.DialContext}
	return &enroll.Client{
		URL: u, Fingerprint: fingerprint, Dial: dc.DialContext,
		Timeout: 5 * time.Second, Retries: 2, Policy: fastPolicy,
	}, dc
}

// fakeClient returns a client for an httptest server (a fault shape that a
// real step-ca cannot be made to produce).
func fakeClient(t *testing.T, srvURL, fingerprint string) (*enroll.Client, *dialCounter) {
	t.Helper()
	u, err := url.Parse(srvURL)
	if err != nil {
		t.Fatal(err)
	}
	var d net.Dialer
	dc := &dialCounter{dial: d.DialContext}
	return &enroll.Client{
		URL: u, Fingerprint: fingerprint, Dial: dc.DialContext,
		Timeout: 5 * time.Second, Retries: 2, Policy: fastPolicy,
	}, dc
}

func asError(t *testing.T, err error) *enroll.Error {
	t.Helper()
	var e *enroll.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *enroll.Error", err, err)
	}
	return e
}

func TestFetchRootsRealCA(t *testing.T) {
	s := startCA(t)
	c, dc := caClient(t, s, s.Fingerprint())
	before := time.Now()
	roots, err := c.FetchRoots(context.Background())
	if err != nil {
		t.Fatalf("FetchRoots: %v", err)
	}
	root := s.PKI().Root
	if roots.Pinned == nil || !roots.Pinned.Equal(root) {
		t.Fatalf("Pinned = %v, want the CA root %s", roots.Pinned, root.Subject)
	}
	if !slices.ContainsFunc(roots.Current, root.Equal) {
		t.Fatalf("Current (%d certs) does not contain the CA root", len(roots.Current))
	}
	if roots.ServerDate.IsZero() {
		t.Fatal("ServerDate not set from the CA's Date header")
	}
	// Date has second resolution; allow for it, not for timing.
	if roots.ServerDate.Before(before.Add(-2*time.Second)) || roots.ServerDate.After(time.Now().Add(2*time.Second)) {
		t.Fatalf("ServerDate %s is not the CA's current time (test ran from %s)", roots.ServerDate, before)
	}
	if got := enroll.Fingerprint(roots.Pinned); got != s.Fingerprint() {
		t.Fatalf("Fingerprint(Pinned) = %s, want %s", got, s.Fingerprint())
	}
	if !strings.Contains(string(roots.PEM()), "BEGIN CERTIFICATE") {
		t.Fatal("PEM() holds no certificate")
	}
	if _, err := root.Verify(x509.VerifyOptions{Roots: roots.Pool()}); err != nil {
		t.Fatalf("the root does not verify against Pool(): %v", err)
	}
	if n := dc.n.Load(); n != 1 {
		t.Fatalf("FetchRoots opened %d connections, want 1 (pinned root, then /roots and /federation over it once it verified)", n)
	}
}

func TestFetchRootsWrongFingerprintRealCA(t *testing.T) {
	s := startCA(t)
	other, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		fp   string
	}{
		{"another CA's root", other.Fingerprint()},
		{"all zeros", strings.Repeat("0", 64)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, dc := caClient(t, s, tt.fp)
			roots, err := c.FetchRoots(context.Background())
			e := asError(t, err)
			if e.Kind != enroll.PinMismatch {
				t.Fatalf("Kind = %s, want %s (err %v)", e.Kind, enroll.PinMismatch, err)
			}
			if e.Status != 404 {
				t.Fatalf("Status = %d, want step-ca's 404 for an unknown fingerprint", e.Status)
			}
			if e.Transient() {
				t.Fatal("a pin mismatch must not be transient")
			}
			if roots == nil || roots.Pinned != nil {
				t.Fatalf("roots after a pin mismatch = %+v, want no pinned root", roots)
			}
			if !strings.Contains(err.Error(), tt.fp) {
				t.Fatalf("error does not name the fingerprint: %v", err)
			}
			if n := dc.n.Load(); n != 1 {
				t.Fatalf("a 404 was retried: %d requests", n)
			}
		})
	}
}

// rootServer is a fake CA answering /root/* with cert and /roots with
// current, to produce shapes a real step-ca will not (a lying server).
func rootServer(t *testing.T, cert *x509.Certificate, current ...*x509.Certificate) *httptest.Server {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/root/"):
			json.NewEncoder(w).Encode(api.RootResponse{RootPEM: api.NewCertificate(cert)})
		case r.URL.Path == "/roots":
			var rs api.RootsResponse
			for _, c := range current {
				rs.Certificates = append(rs.Certificates, api.NewCertificate(c))
			}
			w.WriteHeader(http.StatusCreated)
			json.NewEncoder(w).Encode(rs)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestFetchRootsHashDiffers(t *testing.T) {
	served, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	pinned, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	srv := rootServer(t, served.Root, served.Root)
	c, _ := fakeClient(t, srv.URL, pinned.Fingerprint())
	_, err = c.FetchRoots(context.Background())
	e := asError(t, err)
	if e.Kind != enroll.PinMismatch || e.Transient() {
		t.Fatalf("Kind = %s transient=%v, want %s, not transient (err %v)", e.Kind, e.Transient(), enroll.PinMismatch, err)
	}
	if !strings.Contains(err.Error(), served.Fingerprint()) || !strings.Contains(err.Error(), pinned.Fingerprint()) {
		t.Fatalf("error should name both fingerprints: %v", err)
	}
}

func TestFetchRootsPinnedRootNoLongerCurrent(t *testing.T) {
	old, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	// The server's TLS certificate must chain to the pinned root for the
	// second request to get through: issue one from it.
	leaf, err := old.IssueServerCert("localhost", net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/root/"):
			json.NewEncoder(w).Encode(api.RootResponse{RootPEM: api.NewCertificate(old.Root)})
		case r.URL.Path == "/roots", r.URL.Path == "/federation":
			w.WriteHeader(http.StatusCreated)
			json.NewEncoder(w).Encode(api.RootsResponse{Certificates: []api.Certificate{api.NewCertificate(rotated.Root)}})
		}
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c, _ := fakeClient(t, srv.URL, old.Fingerprint())
	roots, err := c.FetchRoots(context.Background())
	e := asError(t, err)
	if e.Kind != enroll.PinMismatch || e.Op != "fetch roots" {
		t.Fatalf("got %s in %q, want %s in fetch roots (err %v)", e.Kind, e.Op, enroll.PinMismatch, err)
	}
	if len(roots.Current) != 1 || !roots.Current[0].Equal(rotated.Root) {
		t.Fatal("the CA's current roots should still be reported as evidence")
	}
}

func TestFetchRootsBadRoot(t *testing.T) {
	p, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	// A leaf served under its own fingerprint: the hash matches, but it is
	// not a self-signed CA.
	leaf, err := p.IssueClientCert(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	srv := rootServer(t, leaf.Cert, leaf.Cert)
	c, _ := fakeClient(t, srv.URL, controlplane.Fingerprint(leaf.Cert))
	_, err = c.FetchRoots(context.Background())
	if e := asError(t, err); e.Kind != enroll.BadRoot {
		t.Fatalf("Kind = %s, want %s (err %v)", e.Kind, enroll.BadRoot, err)
	}
}

func TestFetchRootsNotStepCA(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		ctype   string
		body    string
		wantSts int
	}{
		{"html 404 from an ingress", 404, "text/html", "<html><body><h1>404 Not Found</h1></body></html>", 404},
		{"go plain 404", 404, "text/plain", "404 page not found\n", 404},
		{"200 with non-JSON", 200, "text/html", "<html>welcome to nginx</html>", 0},
		{"200 with unrelated JSON", 200, "application/json", `{"hello":"world"}`, 0},
		{"403 with HTML", 403, "text/html", "<h1>Forbidden</h1>", 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.ctype)
				w.WriteHeader(tt.status)
				fmt.Fprint(w, tt.body)
			}))
			defer srv.Close()
			c, dc := fakeClient(t, srv.URL, strings.Repeat("ab", 32))
			_, err := c.FetchRoots(context.Background())
			e := asError(t, err)
			if e.Kind != enroll.NotStepCA {
				t.Fatalf("Kind = %s, want %s (err %v)", e.Kind, enroll.NotStepCA, err)
			}
			if e.Status != tt.wantSts {
				t.Fatalf("Status = %d, want %d", e.Status, tt.wantSts)
			}
			if e.Transient() {
				t.Fatal("NotStepCA must not be transient")
			}
			if n := dc.n.Load(); n != 1 {
				t.Fatalf("%d requests, want 1 (no retry)", n)
			}
		})
	}
}

func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestFetchRootsCADown(t *testing.T) {
	c, dc := fakeClient(t, "https://"+closedPort(t), strings.Repeat("ab", 32))
	_, err := c.FetchRoots(context.Background())
	e := asError(t, err)
	if e.Kind != enroll.Unreachable || !e.Transient() {
		t.Fatalf("Kind = %s transient=%v, want %s and transient (err %v)", e.Kind, e.Transient(), enroll.Unreachable, err)
	}
	if n, want := dc.n.Load(), int32(c.Retries+1); n != want {
		t.Fatalf("%d dials, want %d (1 + %d retries)", n, want, c.Retries)
	}
}

func TestFetchRootsUnavailable(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
	}{
		{"503 JSON", 503, `{"status":503,"message":"Service Unavailable"}`},
		{"503 HTML from a proxy", 503, "<html>503 Service Temporarily Unavailable</html>"},
		{"429", 429, `{"status":429,"message":"Too Many Requests"}`},
		{"502 from a proxy", 502, "Bad Gateway"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hits atomic.Int32
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				w.WriteHeader(tt.status)
				fmt.Fprint(w, tt.body)
			}))
			defer srv.Close()
			c, _ := fakeClient(t, srv.URL, strings.Repeat("ab", 32))
			_, err := c.FetchRoots(context.Background())
			e := asError(t, err)
			if e.Kind != enroll.Unavailable || !e.Transient() || e.Status != tt.status {
				t.Fatalf("got kind %s status %d transient=%v, want %s %d transient (err %v)", e.Kind, e.Status, e.Transient(), enroll.Unavailable, tt.status, err)
			}
			if n, want := hits.Load(), int32(c.Retries+1); n != want {
				t.Fatalf("server saw %d requests, want %d", n, want)
			}
		})
	}
}

// TestFetchRootsSlowBodyIsTransient: a 200 whose body stalls past the
// request timeout (found by the boot storm: a loaded CA) is a network
// failure worth retrying, not the CA rejecting the request.
func TestFetchRootsSlowBodyIsTransient(t *testing.T) {
	// The handler holds the body until the test ends, whatever the client
	// does: returning when the client gives up would end the body cleanly,
	// and the client could read a complete empty answer instead of timing
	// out.
	release := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-release
	}))
	defer srv.Close()
	defer close(release)
	c, _ := fakeClient(t, srv.URL, strings.Repeat("ab", 32))
	c.Timeout, c.Retries = 200*time.Millisecond, 0
	_, err := c.FetchRoots(context.Background())
	e := asError(t, err)
	if e.Kind != enroll.Unreachable || !e.Transient() {
		t.Fatalf("got kind %s transient=%v (%v), want %s, transient", e.Kind, e.Transient(), err, enroll.Unreachable)
	}
	if !strings.Contains(err.Error(), "answered 200 but its body did not arrive") {
		t.Fatalf("error %q does not say what happened", err)
	}
}

// TestFetchRootsDeadlineKeepsCAAnswer: when the caller's deadline cuts a
// Retry-After wait short, the error still says the CA answered 503 (owner
// ca), not that the CA could not be reached (owner network).
func TestFetchRootsDeadlineKeepsCAAnswer(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"status":503,"message":"Service Unavailable"}`)
	}))
	defer srv.Close()
	c, _ := fakeClient(t, srv.URL, strings.Repeat("ab", 32))
	c.Policy.Cap = time.Minute // honour the 30 s Retry-After: the deadline comes first
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := c.FetchRoots(ctx)
	e := asError(t, err)
	if e.Kind != enroll.Unavailable || e.Status != http.StatusServiceUnavailable {
		t.Fatalf("got kind %s status %d (%v), want %s 503", e.Kind, e.Status, err, enroll.Unavailable)
	}
	if !strings.Contains(err.Error(), "last answer was 503") {
		t.Fatalf("error %q does not say what the CA last answered", err)
	}
}

func TestFetchRootsUntrustedCATLS(t *testing.T) {
	// The pinned root is genuine, but the server's TLS certificate is from
	// another CA (httptest's own): the connection that served the pinned
	// root must fail verification against it before /roots is asked over
	// it, never fall back to trusting it.
	p, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	srv := rootServer(t, p.Root, p.Root)
	c, dc := fakeClient(t, srv.URL, p.Fingerprint())
	_, err = c.FetchRoots(context.Background())
	e := asError(t, err)
	if e.Kind != enroll.TrustMismatch || e.Op != "fetch roots" || e.Transient() {
		t.Fatalf("got %s (transient %v) in %q, want permanent %s in fetch roots (err %v)", e.Kind, e.Transient(), e.Op, enroll.TrustMismatch, err)
	}
	var cve *tls.CertificateVerificationError
	if !errors.As(err, &cve) {
		t.Fatalf("want a certificate verification error, got %v", err)
	}
	if n := dc.n.Load(); n != 1 {
		t.Fatalf("%d dials, want 1: a verification failure must not be retried", n)
	}
}

func TestParseToken(t *testing.T) {
	s := startCA(t)
	valid, err := s.Token(nodeID, controlplane.TokenSANs(nodeID, "10.0.0.5"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		raw  string
		want enroll.Kind // "" = parses
	}{
		{"empty", "", enroll.TokenMissing},
		{"whitespace", " \n\t\n", enroll.TokenMissing},
		{"garbage", "not a token at all", enroll.TokenInvalid},
		{"two dots garbage", "a.b.c", enroll.TokenInvalid},
		{"one part", "eyJhbGciOiJFUzI1NiJ9", enroll.TokenInvalid},
		{"JWE-like five parts", "a.b.c.d.e", enroll.TokenInvalid},
		{"valid with space inside", valid[:10] + " " + valid[10:], enroll.TokenInvalid},
		{"payload not JSON", "eyJhbGciOiJFUzI1NiIsImtpZCI6IngiLCJ0eXAiOiJKV1QifQ." + "bm90IGpzb24" + ".c2ln", enroll.TokenInvalid},
		{"valid", valid, ""},
		{"valid with trailing newline", valid + "\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := enroll.ParseToken(tt.raw)
			if tt.want != "" {
				if e := asError(t, err); e.Kind != tt.want {
					t.Fatalf("Kind = %s, want %s (err %v)", e.Kind, tt.want, err)
				}
				if tok != nil {
					t.Fatal("a token returned with an error")
				}
				if len(tt.raw) > 20 && strings.Contains(err.Error(), strings.TrimSpace(tt.raw)) {
					t.Fatal("the error repeats the token text")
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseToken: %v", err)
			}
			if tok.Subject != nodeID {
				t.Errorf("Subject = %q", tok.Subject)
			}
			if !slices.Equal(tok.SANs, []string{nodeID, "10.0.0.5"}) {
				t.Errorf("SANs = %v", tok.SANs)
			}
			if tok.SHA != s.Fingerprint() {
				t.Errorf("SHA = %q, want %q", tok.SHA, s.Fingerprint())
			}
			if len(tok.Audience) != 1 || !strings.HasSuffix(tok.Audience[0], "/1.0/sign") {
				t.Errorf("Audience = %v", tok.Audience)
			}
			if tok.NotBefore.IsZero() || !tok.Expiry.After(tok.NotBefore) {
				t.Errorf("NotBefore %s Expiry %s", tok.NotBefore, tok.Expiry)
			}
		})
	}
}

func TestTokenNeverPrinted(t *testing.T) {
	s := startCA(t)
	raw, err := s.Token(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := enroll.ParseToken(raw)
	if err != nil {
		t.Fatal(err)
	}
	// The signature part alone is enough to be a leak.
	sig := raw[strings.LastIndex(raw, ".")+1:]
	payload := strings.Split(raw, ".")[1]
	js, _ := json.Marshal(tok)
	for _, out := range []string{
		tok.String(),
		fmt.Sprint(tok),
		fmt.Sprintf("%v", tok),
		fmt.Sprintf("%+v", tok),
		fmt.Sprintf("%#v", tok),
		fmt.Sprintf("%s", tok),
		fmt.Sprintf("%v", *tok),
		fmt.Sprintf("%+v", *tok),
		fmt.Sprintf("%#v", *tok),
		fmt.Sprintf("%v", []*enroll.Token{tok}),
		fmt.Sprintf("%d", tok),
		fmt.Sprintf("%x", *tok),
		fmt.Sprintf("%q", tok),
		fmt.Sprintf("%#v", map[string]any{"t": tok}),
		fmt.Sprintf("%+v", struct{ T enroll.Token }{*tok}),
		string(js),
	} {
		if strings.Contains(out, sig) || strings.Contains(out, payload) || strings.Contains(out, raw) {
			t.Fatalf("the token leaks through formatting: %q", out)
		}
	}
	if tok.String() != "[token redacted]" {
		t.Fatalf("String() = %q", tok.String())
	}
}

func TestTokenCheck(t *testing.T) {
	const fp = "1111111111111111111111111111111111111111111111111111111111111111"
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	base := enroll.Token{Subject: nodeID, SANs: []string{nodeID}, SHA: fp, NotBefore: now.Add(-time.Minute), Expiry: now.Add(5 * time.Minute)}
	with := func(f func(*enroll.Token)) *enroll.Token {
		t := base
		f(&t)
		return &t
	}
	tests := []struct {
		name string
		tok  *enroll.Token
		want enroll.Kind
	}{
		{"valid", &base, ""},
		{"other node", with(func(t *enroll.Token) { t.Subject = "gpu-0043" }), enroll.TokenMismatch},
		{"node id case differs", with(func(t *enroll.Token) { t.Subject = "GPU-0042" }), enroll.TokenMismatch},
		{"wrong sha claim", with(func(t *enroll.Token) { t.SHA = strings.Repeat("2", 64) }), enroll.TokenMismatch},
		{"no sha claim", with(func(t *enroll.Token) { t.SHA = "" }), ""},
		{"expired beyond leeway", with(func(t *enroll.Token) { t.Expiry = now.Add(-61 * time.Second) }), enroll.TokenExpired},
		{"expired long ago", with(func(t *enroll.Token) { t.NotBefore, t.Expiry = now.Add(-2*time.Hour), now.Add(-time.Hour) }), enroll.TokenExpired},
		{"expired within leeway", with(func(t *enroll.Token) { t.Expiry = now.Add(-59 * time.Second) }), ""},
		{"expired exactly at leeway", with(func(t *enroll.Token) { t.Expiry = now.Add(-time.Minute) }), ""},
		{"not yet valid beyond leeway", with(func(t *enroll.Token) { t.NotBefore = now.Add(61 * time.Second) }), enroll.TokenExpired},
		{"node clock far behind", with(func(t *enroll.Token) { t.NotBefore, t.Expiry = now.Add(time.Hour), now.Add(2*time.Hour) }), enroll.TokenExpired},
		{"not yet valid within leeway", with(func(t *enroll.Token) { t.NotBefore = now.Add(59 * time.Second) }), ""},
		{"no exp or nbf", with(func(t *enroll.Token) { t.NotBefore, t.Expiry = time.Time{}, time.Time{} }), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.tok.Check(nodeID, fp, now)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			e := asError(t, err)
			if e.Kind != tt.want {
				t.Fatalf("Kind = %s, want %s (err %v)", e.Kind, tt.want, err)
			}
			if e.Transient() {
				t.Fatal("a token problem must not be transient")
			}
		})
	}
}

// TestTokenCheckAudience: a token is this CA's when its audience is the
// sign endpoint of ca.url's host, the port not compared (as step-ca does
// not); anything else is a mismatch.
func TestTokenCheckAudience(t *testing.T) {
	const caURL = "https://ca.cp.internal:9000"
	for _, tt := range []struct {
		name string
		aud  []string
		ca   string
		ok   bool
	}{
		{"sign endpoint", []string{"https://ca.cp.internal:9000/1.0/sign"}, caURL, true},
		{"legacy /sign", []string{"https://ca.cp.internal:9000/sign"}, caURL, true},
		{"another port", []string{"https://ca.cp.internal/1.0/sign"}, caURL, true},
		{"host case differs", []string{"https://CA.CP.internal:9000/1.0/sign"}, caURL, true},
		{"one of several", []string{"https://other/1.0/sign", "https://ca.cp.internal:9000/1.0/sign"}, caURL, true},
		{"ca.url with a trailing slash", []string{"https://ca.cp.internal:9000/1.0/sign"}, caURL + "/", true},
		{"ca.url with a path", []string{"https://ca.cp.internal/step/1.0/sign"}, "https://ca.cp.internal/step", true},
		{"another host", []string{"https://ca.other.internal:9000/1.0/sign"}, caURL, false},
		{"another endpoint", []string{"https://ca.cp.internal:9000/1.0/revoke"}, caURL, false},
		{"plain http", []string{"http://ca.cp.internal:9000/1.0/sign"}, caURL, false},
		{"no audience", nil, caURL, false},
		{"not a URL", []string{"::"}, caURL, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tok := enroll.Token{Subject: nodeID, Audience: tt.aud}
			err := tok.CheckAudience(tt.ca)
			if tt.ok {
				if err != nil {
					t.Fatalf("CheckAudience: %v", err)
				}
				return
			}
			if e := asError(t, err); e.Kind != enroll.TokenMismatch {
				t.Fatalf("Kind = %s, want %s (err %v)", e.Kind, enroll.TokenMismatch, err)
			}
		})
	}
}

func TestTokenCheckRealTokens(t *testing.T) {
	s := startCA(t)
	tests := []struct {
		name string
		opts []controlplane.TokenOption
		want enroll.Kind
	}{
		{"fresh", nil, ""},
		{"for another node", []controlplane.TokenOption{controlplane.TokenForNode("gpu-0099")}, enroll.TokenMismatch},
		{"wrong sha", []controlplane.TokenOption{controlplane.TokenWrongSHA()}, enroll.TokenMismatch},
		{"expired", []controlplane.TokenOption{controlplane.TokenExpired()}, enroll.TokenExpired},
		{"not yet valid", []controlplane.TokenOption{controlplane.TokenNotYetValid()}, enroll.TokenExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := s.Token(nodeID, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := enroll.ParseToken(raw)
			if err != nil {
				t.Fatal(err)
			}
			err = tok.Check(nodeID, s.Fingerprint(), time.Now())
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				// step-ca's own token names its sign endpoint.
				if err := tok.CheckAudience(s.URL()); err != nil {
					t.Fatalf("CheckAudience(%s): %v", s.URL(), err)
				}
				return
			}
			if e := asError(t, err); e.Kind != tt.want {
				t.Fatalf("Kind = %s, want %s (err %v)", e.Kind, tt.want, err)
			}
			if strings.Contains(err.Error(), raw) {
				t.Fatal("the error contains the token")
			}
		})
	}
}

// enrolled fetches roots from s and parses a fresh token with opts.
func setupSign(t *testing.T, s *controlplane.StepCA, opts ...controlplane.TokenOption) (*enroll.Client, *dialCounter, *enroll.Roots, *enroll.Token, string) {
	t.Helper()
	c, dc := caClient(t, s, s.Fingerprint())
	roots, err := c.FetchRoots(context.Background())
	if err != nil {
		t.Fatalf("FetchRoots: %v", err)
	}
	raw, err := s.Token(nodeID, opts...)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := enroll.ParseToken(raw)
	if err != nil {
		t.Fatal(err)
	}
	dc.n.Store(0)
	return c, dc, roots, tok, raw
}

func TestSignRealCA(t *testing.T) {
	s := startCA(t)
	tests := []struct {
		name    string
		sans    []string
		wantDNS []string
		wantIPs []string
	}{
		{"default sans", nil, []string{nodeID}, nil},
		{"dns and ip sans", []string{nodeID, "gpu-0042.nodes.internal", "10.0.0.5"}, []string{nodeID, "gpu-0042.nodes.internal"}, []string{"10.0.0.5"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opts []controlplane.TokenOption
			if tt.sans != nil {
				opts = append(opts, controlplane.TokenSANs(tt.sans...))
			}
			c, dc, roots, tok, raw := setupSign(t, s, opts...)
			issued, err := c.Sign(context.Background(), tok, roots)
			if err != nil {
				if strings.Contains(err.Error(), raw) {
					t.Fatal("the error contains the token")
				}
				t.Fatalf("Sign: %v", err)
			}
			if n := dc.n.Load(); n != 1 {
				t.Fatalf("Sign opened %d connections, want 1", n)
			}
			leaf := issued.Chain[0]
			if leaf.Subject.CommonName != nodeID {
				t.Errorf("CN = %q, want %q", leaf.Subject.CommonName, nodeID)
			}
			dns := slices.Clone(leaf.DNSNames)
			sort.Strings(dns)
			want := slices.Clone(tt.wantDNS)
			sort.Strings(want)
			if !slices.Equal(dns, want) {
				t.Errorf("DNS SANs = %v, want exactly %v", leaf.DNSNames, tt.wantDNS)
			}
			var ips []string
			for _, ip := range leaf.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, tt.wantIPs) {
				t.Errorf("IP SANs = %v, want exactly %v", ips, tt.wantIPs)
			}
			if len(leaf.EmailAddresses)+len(leaf.URIs) != 0 {
				t.Errorf("unexpected email/URI SANs %v %v", leaf.EmailAddresses, leaf.URIs)
			}
			if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
				t.Errorf("ExtKeyUsage = %v, want clientAuth", leaf.ExtKeyUsage)
			}
			pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
			if !ok || !pub.Equal(issued.Key.Public()) {
				t.Error("the certificate's public key is not the generated key's")
			}
			if _, ok := issued.Key.(*ecdsa.PrivateKey); !ok {
				t.Errorf("key type %T, want ECDSA", issued.Key)
			}
			if len(issued.Chain) < 2 {
				t.Fatalf("chain has %d certs, want leaf + intermediate", len(issued.Chain))
			}
			inter := x509.NewCertPool()
			for _, c := range issued.Chain[1:] {
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots.Pool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("the leaf does not chain to the pinned root for clientAuth: %v", err)
			}
		})
	}
}

func TestSignSameTokenTwice(t *testing.T) {
	s := startCA(t)
	c, dc, roots, tok, raw := setupSign(t, s)
	if _, err := c.Sign(context.Background(), tok, roots); err != nil {
		t.Fatalf("first Sign: %v", err)
	}
	dc.n.Store(0)
	_, err := c.Sign(context.Background(), tok, roots)
	e := asError(t, err)
	if e.Kind != enroll.TokenRejected || e.Status != 401 {
		t.Fatalf("second Sign: kind %s status %d, want %s 401 (err %v)", e.Kind, e.Status, enroll.TokenRejected, err)
	}
	if e.Transient() {
		t.Fatal("a rejected token must not be transient")
	}
	if n := dc.n.Load(); n != 1 {
		t.Fatalf("the rejected sign was attempted %d times, want exactly 1", n)
	}
	if strings.Contains(err.Error(), raw) {
		t.Fatal("the error contains the token")
	}
}

func TestSignRejectedTokens(t *testing.T) {
	s := startCA(t)
	tests := []struct {
		name   string
		opts   []controlplane.TokenOption
		kind   enroll.Kind
		status int
	}{
		// Signed with a key that is not the provisioner's: the CA finds the
		// provisioner by kid and fails the signature.
		{"another provisioner key", []controlplane.TokenOption{controlplane.TokenUnknownKey()}, enroll.TokenRejected, 401},
		// Sent without Check (the CA is the authority on expiry).
		{"expired", []controlplane.TokenOption{controlplane.TokenExpired()}, enroll.TokenRejected, 401},
		{"not yet valid", []controlplane.TokenOption{controlplane.TokenNotYetValid()}, enroll.TokenRejected, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, dc, roots, tok, raw := setupSign(t, s, tt.opts...)
			_, err := c.Sign(context.Background(), tok, roots)
			e := asError(t, err)
			if e.Kind != tt.kind || e.Status != tt.status {
				t.Fatalf("kind %s status %d, want %s %d (err %v)", e.Kind, e.Status, tt.kind, tt.status, err)
			}
			if n := dc.n.Load(); n != 1 {
				t.Fatalf("attempted %d times, want 1", n)
			}
			if strings.Contains(err.Error(), raw) {
				t.Fatal("the error contains the token")
			}
		})
	}
}

func TestSignCAUnreachable(t *testing.T) {
	s := startCA(t)
	c, dc, roots, tok, _ := setupSign(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := c.Sign(context.Background(), tok, roots)
	e := asError(t, err)
	if e.Kind != enroll.Unreachable || !e.Transient() {
		t.Fatalf("kind %s transient=%v, want %s transient (err %v)", e.Kind, e.Transient(), enroll.Unreachable, err)
	}
	if n, want := dc.n.Load(), int32(c.Retries+1); n != want {
		t.Fatalf("%d dials, want %d: a refused dial never reached the CA and may be retried", n, want)
	}
}

// TestSignNotRetriedAfterConnect: once a connection is open the request may
// have reached the CA (which burns the token on sight), so a failure after
// the dial is never retried.
func TestSignNotRetriedAfterConnect(t *testing.T) {
	s := startCA(t)
	c, _, roots, tok, _ := setupSign(t, s)

	tests := []struct {
		name    string
		handler func(net.Conn)
	}{
		{"closed at once", func(conn net.Conn) { conn.Close() }},
		{"garbage instead of TLS", func(conn net.Conn) { conn.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n")); conn.Close() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			var accepted atomic.Int32
			go func() {
				for {
					conn, err := l.Accept()
					if err != nil {
						return
					}
					accepted.Add(1)
					tt.handler(conn)
				}
			}()
			var d net.Dialer
			dc := &dialCounter{dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, l.Addr().String())
			}}
			cc := *c
			cc.Dial = dc.DialContext
			_, err = cc.Sign(context.Background(), tok, roots)
			e := asError(t, err)
			if e.Kind != enroll.Unreachable {
				t.Fatalf("kind %s, want %s (err %v)", e.Kind, enroll.Unreachable, err)
			}
			if n := dc.n.Load(); n != 1 {
				t.Fatalf("%d dials, want 1: a failure after connecting must not be retried", n)
			}
		})
	}
}

func TestSignFaultShapes(t *testing.T) {
	// A fake "CA" whose TLS certificate chains to the roots we pass, so the
	// request reaches it; it answers /sign with each shape.
	p, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := p.IssueServerCert("localhost", net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	roots := &enroll.Roots{Pinned: p.Root, Current: []*x509.Certificate{p.Root}}
	s := startCA(t)
	raw, err := s.Token(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := enroll.ParseToken(raw)
	if err != nil {
		t.Fatal(err)
	}
	// Sign sends the request once whatever the answer; a 429 or 5xx is
	// transient (the caller may present the same token again: step-ca
	// burns it on sight, so that either is the first to reach step-ca or
	// gets 401) and carries the CA's Retry-After.
	tests := []struct {
		name       string
		status     int
		retryAfter string
		body       string
		kind       enroll.Kind
		transient  bool
		wantAfter  time.Duration
	}{
		{"403 SAN mismatch", 403, "", `{"status":403,"message":"certificate request does not contain the valid DNS names"}`, enroll.Forbidden, false, 0},
		{"500 from step-ca", 500, "", `{"status":500,"message":"internal"}`, enroll.Unavailable, true, 0},
		{"503 with Retry-After", 503, "7", `{"status":503,"message":"unavailable"}`, enroll.Unavailable, true, 7 * time.Second},
		{"429 with Retry-After", 429, "3", `{"status":429,"message":"slow down"}`, enroll.Unavailable, true, 3 * time.Second},
		{"html 502 from a balancer", 502, "", "<html>502 Bad Gateway</html>", enroll.Unavailable, true, 0},
		{"html 503 from a balancer, Retry-After", 503, "2", "<html>503 Service Temporarily Unavailable</html>", enroll.Unavailable, true, 2 * time.Second},
		{"501", 501, "", `{"status":501,"message":"not implemented"}`, enroll.CARejected, false, 0},
		{"400", 400, "", `{"status":400,"message":"bad"}`, enroll.CARejected, false, 0},
		{"html 404 from an ingress", 404, "", "<html>404 Not Found</html>", enroll.NotStepCA, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hits atomic.Int32
			var sawToken atomic.Bool
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				var req api.SignRequest
				if json.NewDecoder(r.Body).Decode(&req) == nil && req.OTT == raw {
					sawToken.Store(true)
				}
				if tt.retryAfter != "" {
					w.Header().Set("Retry-After", tt.retryAfter)
				}
				w.WriteHeader(tt.status)
				fmt.Fprint(w, tt.body)
			}))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}}
			srv.StartTLS()
			defer srv.Close()
			c, _ := fakeClient(t, strings.Replace(srv.URL, "127.0.0.1", "localhost", 1), p.Fingerprint())
			_, err := c.Sign(context.Background(), tok, roots)
			e := asError(t, err)
			if e.Kind != tt.kind || e.Status != tt.status {
				t.Fatalf("kind %s status %d, want %s %d (err %v)", e.Kind, e.Status, tt.kind, tt.status, err)
			}
			if e.Transient() != tt.transient || e.RetryAfter != tt.wantAfter {
				t.Fatalf("transient=%v Retry-After %s, want %v %s", e.Transient(), e.RetryAfter, tt.transient, tt.wantAfter)
			}
			if enroll.NotSent(err) {
				t.Fatal("NotSent for a sign the server answered: the token was sent")
			}
			if n := hits.Load(); n != 1 {
				t.Fatalf("server saw %d sign requests, want 1", n)
			}
			if !sawToken.Load() {
				t.Fatal("the sign request did not carry the token")
			}
			if strings.Contains(err.Error(), raw) {
				t.Fatal("the error contains the token")
			}
		})
	}
}

// TestSignNotSentBeforeTheRequest: a sign whose TLS handshake never
// finishes (a balancer that accepts and stalls) times out as Unreachable,
// transient, and NotSent: no request was written, so the token is unspent
// and the caller may present it again without a marker claiming it. A
// refused connection is NotSent too.
func TestSignNotSentBeforeTheRequest(t *testing.T) {
	s := startCA(t)
	raw, err := s.Token(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := enroll.ParseToken(raw)
	if err != nil {
		t.Fatal(err)
	}
	roots := &enroll.Roots{Pinned: s.PKI().Root, Current: []*x509.Certificate{s.PKI().Root}}
	stall, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stall.Close()
	var mu sync.Mutex
	var held []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := stall.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // accepted, never answered
			mu.Unlock()
		}
	}()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	for _, tt := range []struct{ name, addr string }{
		{"handshake stalls", stall.Addr().String()},
		{"connection refused", closed.Addr().String()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := fakeClient(t, "https://"+tt.addr, s.Fingerprint())
			c.Timeout, c.Retries = 300*time.Millisecond, 0
			_, err := c.Sign(context.Background(), tok, roots)
			e := asError(t, err)
			if e.Kind != enroll.Unreachable || !e.Transient() || !enroll.NotSent(err) {
				t.Fatalf("kind %s transient=%v NotSent=%v (%v): want unreachable, transient, not sent", e.Kind, e.Transient(), enroll.NotSent(err), err)
			}
		})
	}
}

func TestSignBadResponse(t *testing.T) {
	// A "CA" that answers with a valid certificate for another key.
	p, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := p.IssueServerCert("localhost", net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	other, err := p.IssueClientCert(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	wrongCN := mustLeafForKey(t, p, "gpu-9999")
	tests := []struct {
		name string
		cert func(csrKey any) *x509.Certificate
	}{
		{"certificate for another key", func(any) *x509.Certificate { return other.Cert }},
		{"certificate for another subject", func(k any) *x509.Certificate { return wrongCN(k) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var req api.SignRequest
				if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
					w.WriteHeader(400)
					return
				}
				crt := tt.cert(req.CsrPEM.CertificateRequest.PublicKey)
				w.WriteHeader(http.StatusCreated)
				json.NewEncoder(w).Encode(api.SignResponse{ServerPEM: api.NewCertificate(crt), CaPEM: api.NewCertificate(p.Intermediate)})
			}))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}}
			srv.StartTLS()
			defer srv.Close()
			c, _ := fakeClient(t, srv.URL, p.Fingerprint())
			tok := &enroll.Token{Subject: nodeID, SANs: []string{nodeID}}
			_, err := c.Sign(context.Background(), tok, &enroll.Roots{Current: []*x509.Certificate{p.Root}})
			if e := asError(t, err); e.Kind != enroll.BadResponse {
				t.Fatalf("kind %s, want %s (err %v)", e.Kind, enroll.BadResponse, err)
			}
		})
	}
}

// mustLeafForKey returns a function issuing a certificate with CN cn for
// the given public key from p's intermediate.
func mustLeafForKey(t *testing.T, p *controlplane.PKI, cn string) func(pub any) *x509.Certificate {
	return func(pub any) *x509.Certificate {
		l, err := p.IssueLeaf(controlplane.LeafRequest{CommonName: cn, DNSNames: []string{cn}, PublicKey: pub,
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			t.Error(err)
			return nil
		}
		return l.Cert
	}
}
