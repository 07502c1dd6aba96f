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
