package clientcert

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) lastJSON(t *testing.T) map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var last map[string]any
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
	for sc.Scan() {
		last = nil
		if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
	}
	return last
}

// TestMiddlewareOverLoopback runs the middleware in a real HTTP server on
// loopback, behind a ServeMux pattern with {node_id}, as a node API would.
func TestMiddlewareOverLoopback(t *testing.T) {
	p := newPKI(t, "Acme")
	good := p.node(t, "gpu-0042")
	other := p.node(t, "gpu-0041")

	var logs syncBuf
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	newServer := func(trusted string) *httptest.Server {
		v, err := NewVerifier(Config{
			Roots:          p.pool,
			TrustedProxies: []netip.Prefix{netip.MustParsePrefix(trusted)},
			Now:            func() time.Time { return testNow },
		})
		if err != nil {
			t.Fatal(err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /v1/nodes/{node_id}/tasks/wait", v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, ok := IdentityFromContext(r.Context())
			res, _ := ResultFromContext(r.Context())
			if !ok || res.Format != FormatTraefik {
				http.Error(w, "no identity in context", 500)
				return
			}
			io.WriteString(w, id)
		}), MiddlewareOptions{Expected: func(r *http.Request) string { return r.PathValue("node_id") }, Logger: logger}))
		srv := httptest.NewServer(mux)
		t.Cleanup(srv.Close)
		return srv
	}
	trustedSrv := newServer("127.0.0.0/8")
	untrustedSrv := newServer("10.99.0.0/16")

	tests := []struct {
		name        string
		srv         *httptest.Server
		header      string
		wantStatus  int
		wantBody    string
		wantReason  string
		wantPresent bool
	}{
		{"verified node", trustedSrv, encTraefik(good...), 200, "gpu-0042", "", true},
		{"no forwarded certificate", trustedSrv, "", 401, `{"error":"invalid node identity","mtls_present":false,"reason":"missing"}` + "\n", "missing", false},
		{"certificate of another node", trustedSrv, encTraefik(other...), 401, `{"error":"invalid node identity","mtls_present":true,"reason":"identity-mismatch"}` + "\n", "identity-mismatch", true},
		{"header forged by a direct caller", untrustedSrv, encTraefik(good...), 401, `{"error":"invalid node identity","mtls_present":true,"reason":"untrusted-proxy"}` + "\n", "untrusted-proxy", true},
		{"broken header", trustedSrv, "MIIB", 401, `{"error":"invalid node identity","mtls_present":true,"reason":"malformed"}` + "\n", "malformed", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rq, _ := http.NewRequest("GET", tt.srv.URL+"/v1/nodes/gpu-0042/tasks/wait", nil)
			if tt.header != "" {
				rq.Header.Set("X-Forwarded-Tls-Client-Cert", tt.header)
			}
			resp, err := tt.srv.Client().Do(rq)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus || string(body) != tt.wantBody {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, body, tt.wantStatus, tt.wantBody)
			}
			if tt.wantStatus == 401 && resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("Content-Type %q", resp.Header.Get("Content-Type"))
			}
			line := logs.lastJSON(t)
			wantMsg, wantLevel := "invalid node identity", "WARN"
			if tt.wantStatus == 200 {
				wantMsg, wantLevel = "node identity verified", "DEBUG"
			}
			if line["msg"] != wantMsg || line["level"] != wantLevel {
				t.Errorf("log line %v", line)
			}
			for _, k := range []string{"mtls_present", "format", "subject", "issuer", "serial", "not_after", "verified", "reason", "identity", "method", "path", "remote_addr"} {
				if _, ok := line[k]; !ok {
					t.Errorf("log line lacks %q: %v", k, line)
				}
			}
			if line["mtls_present"] != tt.wantPresent || (tt.wantReason != "" && line["reason"] != tt.wantReason) {
				t.Errorf("log line %v", line)
			}
			if tt.wantReason == "identity-mismatch" && (line["identity"] != "gpu-0041" || line["expected_identity"] != "gpu-0042" || line["subject"] != "CN=gpu-0041") {
				t.Errorf("mismatch log line does not name both identities: %v", line)
			}
		})
	}
}

func TestContextAccessorsWithoutMiddleware(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	if _, ok := ResultFromContext(r.Context()); ok {
		t.Error("ResultFromContext found a result in a bare context")
	}
	ctx := NewContext(r.Context(), Result{Reason: ReasonIdentityMismatch, Identity: "x"})
	if id, ok := IdentityFromContext(ctx); ok || id != "" {
		t.Errorf("IdentityFromContext returned %q for a rejected result", id)
	}
}

// TestMiddlewareOnReject: every rejected request reaches OnReject once with
// its reason, mtls_present, whether the peer is the ingress, and the peer
// address and User-Agent, including the incident's anonymous caller that
// sends no certificate from outside the trusted proxies; an accepted
// request does not. The rejection log line carries user_agent too.
func TestMiddlewareOnReject(t *testing.T) {
	p := newPKI(t, "Acme")
	good := p.node(t, "gpu-0042")
	var mu sync.Mutex
	var got []Rejection
	var logs syncBuf
	newServer := func(trusted string) *httptest.Server {
		v, err := NewVerifier(Config{Roots: p.pool, TrustedProxies: []netip.Prefix{netip.MustParsePrefix(trusted)}, Now: func() time.Time { return testNow }})
		if err != nil {
			t.Fatal(err)
		}
		h := v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), MiddlewareOptions{
			Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
			OnReject: func(r Rejection) {
				mu.Lock()
				defer mu.Unlock()
				got = append(got, r)
			},
		})
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		return srv
	}
	viaIngress, direct := newServer("127.0.0.0/8"), newServer("10.99.0.0/16")
	for _, tc := range []struct {
		name      string
		srv       *httptest.Server
		header    string
		ua        string
		want      bool // a rejection is recorded
		reason    Reason
		present   bool
		fromProxy bool
	}{
		{"accepted", viaIngress, encTraefik(good...), "node-agent/1.4", false, "", false, false},
		{"ingress forwarded nothing", viaIngress, "", "node-agent/1.4", true, ReasonMissing, false, true},
		{"anonymous caller around the ingress", direct, "", "python-requests/2.31", true, ReasonMissing, false, false},
		{"forged header around the ingress", direct, encTraefik(good...), "curl/8.5", true, ReasonUntrustedProxy, true, false},
		{"broken header via the ingress", viaIngress, "MIIB", "node-agent/1.4", true, ReasonMalformed, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			got = nil
			mu.Unlock()
			rq, _ := http.NewRequest("GET", tc.srv.URL+"/v1/nodes/gpu-0042/tasks/wait", nil)
			rq.Header.Set("User-Agent", tc.ua)
			if tc.header != "" {
				rq.Header.Set("X-Forwarded-Tls-Client-Cert", tc.header)
			}
			resp, err := tc.srv.Client().Do(rq)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			if !tc.want {
				if len(got) != 0 || resp.StatusCode != 200 {
					t.Fatalf("status %d, rejections %+v", resp.StatusCode, got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("%d rejections recorded, want 1", len(got))
			}
			r := got[0]
			host, _, _ := strings.Cut(r.PeerAddr, ":")
			if r.Reason != tc.reason || r.MTLSPresent != tc.present || r.FromTrustedProxy != tc.fromProxy ||
				host != "127.0.0.1" || r.UserAgent != tc.ua || r.Method != "GET" || r.Path != "/v1/nodes/gpu-0042/tasks/wait" || r.Result.Reason != tc.reason {
				t.Fatalf("rejection %+v", r)
			}
			line := logs.lastJSON(t)
			if line["user_agent"] != tc.ua || line["remote_addr"] != r.PeerAddr || line["from_trusted_proxy"] != tc.fromProxy {
				t.Errorf("log line lacks the caller: %v", line)
			}
		})
	}
}

func TestClipUA(t *testing.T) {
	long := strings.Repeat("a", 300)
	for _, tc := range []struct{ in, want string }{{"", ""}, {"curl/8", "curl/8"}, {long, long[:256] + "..."}} {
		if got := clipUA(tc.in); got != tc.want {
			t.Errorf("clipUA(%d bytes) = %d bytes", len(tc.in), len(got))
		}
	}
}
