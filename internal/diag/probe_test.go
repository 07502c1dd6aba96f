package diag_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/system"
)

// These tests put a real server on loopback for every failure a node can
// meet on its way to tasks/wait, make the one real probe through the host
// seam (name resolution through a hosts file under a temporary root), and
// check that the classifier names the layer and owner the incident's root
// cause section would. Nothing here is faked but the servers' behaviour.

const apiHost = "node-api.test.internal"

type world struct {
	ca     *testCA // the control plane's CA: issues the API cert and the node cert
	other  *testCA // an unrelated CA
	node   tls.Certificate
	host   *system.Host
	server tls.Certificate
}

func newWorld(t *testing.T) *world {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	hosts := "127.0.0.1 localhost\n127.0.0.1 " + apiHost + "\n"
	if err := os.WriteFile(filepath.Join(root, "etc", "hosts"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := system.New(root)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{ca: newCA(t, "Test"), other: newCA(t, "Other"), host: h}
	w.node = w.ca.client(t, "gpu-1")
	w.server = w.ca.server(t, apiHost)
	return w
}

// tlsConfig is the healthy ingress: the API certificate, client certificates
// required and verified against the control plane's CA.
func (w *world) tlsConfig() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{w.server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    w.ca.pool(),
		MinVersion:   tls.VersionTLS12,
	}
}

func (w *world) probe(t *testing.T, port string, mod ...func(*probe.Request)) *probe.Result {
	t.Helper()
	req := probe.Request{
		URL:     fmt.Sprintf("https://%s:%s/v1/nodes/gpu-1/tasks/wait?timeout=1", apiHost, port),
		Cert:    &w.node,
		Roots:   w.ca.pool(),
		Dial:    w.host.DialContext,
		Timeout: 3 * time.Second,
		Wait:    time.Second,
		Now:     w.host.Time,
	}
	for _, m := range mod {
		m(&req)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return probe.Do(ctx, req)
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func portOf(ln net.Listener) string {
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	return p
}

// serveHTTPS serves h over TLS with cfg on a fresh loopback port.
func serveHTTPS(t *testing.T, cfg *tls.Config, h http.HandlerFunc) string {
	t.Helper()
	ln := listen(t)
	srv := &http.Server{Handler: h, TLSConfig: cfg, ErrorLog: log.New(io.Discard, "", 0), ReadHeaderTimeout: 5 * time.Second}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return portOf(ln)
}

// serveRaw hands every accepted connection to fn.
func serveRaw(t *testing.T, fn func(net.Conn)) string {
	t.Helper()
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); fn(c) }()
		}
	}()
	return portOf(ln)
}

// readClientHello reads exactly one TLS record: the ClientHello.
func readClientHello(c net.Conn) {
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return
	}
	n := int(hdr[3])<<8 | int(hdr[4])
	io.CopyN(io.Discard, c, int64(n))
}

func status(code int, body string, hdr ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Set(hdr[i], hdr[i+1])
		}
		w.WriteHeader(code)
		io.WriteString(w, body)
	}
}

func jsonBody(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

type want struct {
	layer     diag.Layer
	owner     diag.Owner
	transient bool
	summary   []string          // substrings of Summary
	remedy    string            // substring of Remedy
	evidence  map[string]string // key -> substring of value
	// noEvidence: the exchange was cut without a word from the peer
	// (diag.NoEvidence), whatever layer it stopped at.
	noEvidence bool
}

func check(t *testing.T, r *probe.Result, f *diag.Finding, w want) {
	t.Helper()
	if f == nil {
		t.Fatalf("FromProbe = nil (healthy); want layer %s. probe: stage %d status %d err %v", w.layer, r.Stage, r.Status, r.Err)
	}
	if f.Layer != w.layer || f.Owner != w.owner || f.Transient != w.transient {
		t.Errorf("got layer %s owner %s transient %v, want %s %s %v\nsummary: %s\nprobe: stage %d status %d err %v",
			f.Layer, f.Owner, f.Transient, w.layer, w.owner, w.transient, f.Summary, r.Stage, r.Status, r.Err)
	}
	if got := diag.NoEvidence(r); got != w.noEvidence {
		t.Errorf("NoEvidence = %v, want %v (stage %d status %d err %v)", got, w.noEvidence, r.Stage, r.Status, r.Err)
	}
	for _, s := range w.summary {
		if !strings.Contains(f.Summary, s) {
			t.Errorf("summary %q lacks %q", f.Summary, s)
		}
	}
	if f.Remedy == "" || !strings.Contains(f.Remedy, w.remedy) {
		t.Errorf("remedy %q lacks %q", f.Remedy, w.remedy)
	}
	for k, v := range w.evidence {
		if !strings.Contains(f.Evidence[k], v) {
			t.Errorf("evidence[%s] = %q, want it to contain %q (evidence %v)", k, f.Evidence[k], v, f.Evidence)
		}
	}
}

func TestFromProbeTransportFailures(t *testing.T) {
	w := newWorld(t)
	tests := []struct {
		name  string
		port  func(t *testing.T) string
		mod   func(*probe.Request)
		chain diag.ChainState
		want  want
	}{
		{
			name: "hostname does not resolve",
			port: func(t *testing.T) string { return "443" },
			mod:  func(r *probe.Request) { r.URL = strings.Replace(r.URL, apiHost, "not-mapped.test.internal", 1) },
			want: want{layer: diag.Hosts, owner: diag.Node, summary: []string{"not-mapped.test.internal does not resolve"}, remedy: "provision hosts apply"},
		},
		{
			name: "nothing listening",
			port: func(t *testing.T) string {
				ln := listen(t)
				p := portOf(ln)
				ln.Close()
				return p
			},
			want: want{layer: diag.TCP, owner: diag.Network, transient: true, summary: []string{"refused", apiHost}, remedy: "listens on the node API port", noEvidence: true},
		},
		{
			name: "closes right after reading the ClientHello (broken TLS option)",
			port: func(t *testing.T) string { return serveRaw(t, readClientHello) },
			want: want{layer: diag.TLSServer, owner: diag.Ingress, summary: []string{"closed the connection before presenting a server certificate"}, remedy: "TLS option", noEvidence: true},
		},
		{
			name: "resets right after reading the ClientHello",
			port: func(t *testing.T) string {
				return serveRaw(t, func(c net.Conn) {
					readClientHello(c)
					c.(*net.TCPConn).SetLinger(0)
				})
			},
			want: want{layer: diag.TLSServer, owner: diag.Ingress, summary: []string{"closed the connection before presenting a server certificate"}, remedy: "TLS option", noEvidence: true},
		},
		{
			name: "accepts but never answers the handshake",
			port: func(t *testing.T) string {
				return serveRaw(t, func(c net.Conn) { readClientHello(c); io.Copy(io.Discard, c) })
			},
			mod:  func(r *probe.Request) { r.Timeout = 300 * time.Millisecond },
			want: want{layer: diag.TLSServer, owner: diag.Ingress, transient: true, summary: []string{"handshake"}, remedy: "not complete the TLS handshake", noEvidence: true},
		},
		{
			name: "default certificate for another host, from the trusted CA",
			port: func(t *testing.T) string {
				cfg := w.tlsConfig()
				cfg.Certificates = []tls.Certificate{w.ca.server(t, "default.ingress.invalid")}
				return serveHTTPS(t, cfg, status(204, ""))
			},
			want: want{layer: diag.TLSServer, owner: diag.Ingress, summary: []string{"not valid for " + apiHost, "default.ingress.invalid"},
				remedy: "server certificate for the node API hostname", evidence: map[string]string{"server_dns_names": "default.ingress.invalid"}},
		},
		{
			name: "Traefik's self-signed default certificate",
			port: func(t *testing.T) string {
				cfg := w.tlsConfig()
				cfg.Certificates = []tls.Certificate{w.ca.issue(t, leafOpts{cn: "TRAEFIK DEFAULT CERT",
					dns: []string{"0123456789abcdef0123456789abcdef.0123456789abcdef0123456789abcdef.traefik.default"},
					eku: x509.ExtKeyUsageServerAuth, selfSign: true})}
				return serveHTTPS(t, cfg, status(204, ""))
			},
			want: want{layer: diag.TLSServer, owner: diag.Ingress, summary: []string{apiHost, "TRAEFIK DEFAULT CERT"},
				remedy: "server certificate", evidence: map[string]string{"server_subject": "CN=TRAEFIK DEFAULT CERT"}},
		},
		{
			name: "server certificate for the right host from an unknown CA",
			port: func(t *testing.T) string {
				cfg := w.tlsConfig()
				cfg.Certificates = []tls.Certificate{w.other.server(t, apiHost)}
				return serveHTTPS(t, cfg, status(204, ""))
			},
			want: want{layer: diag.TLSServer, owner: diag.Ingress, summary: []string{"not signed by the CA bundle"},
				remedy: "control-plane CA", evidence: map[string]string{"server_issuer": "CN=Other Intermediate CA"}},
		},
		{
			// A node whose certificate is stale also holds the stale CA's
			// bundle: the ingress's certificate is fine, the node is not.
			name: "server certificate from a CA the node's stale bundle does not hold",
			port: func(t *testing.T) string {
				cfg := w.tlsConfig()
				cfg.Certificates = []tls.Certificate{w.other.server(t, apiHost)}
				return serveHTTPS(t, cfg, status(204, ""))
			},
			chain: diag.ChainStale,
			want: want{layer: diag.TLSServer, owner: diag.Node, summary: []string{"not signed by the CA bundle", "stale"},
				remedy: "re-enroll the node"},
		},
		{
			name: "server certificate looks not yet valid by a node clock two hours behind",
			port: func(t *testing.T) string { return serveHTTPS(t, w.tlsConfig(), status(204, "")) },
			mod:  func(r *probe.Request) { r.Now = func() time.Time { return time.Now().Add(-2 * time.Hour) } },
			want: want{layer: diag.TLSServer, owner: diag.Ingress, summary: []string{"not yet valid by the node's clock"}, remedy: "check the node clock"},
		},
		{
			name: "connection reset after the request",
			port: func(t *testing.T) string {
				cfg := w.tlsConfig()
				return serveRaw(t, func(c net.Conn) {
					tc := tls.Server(c, cfg)
					if tc.Handshake() != nil {
						return
					}
					http.ReadRequest(bufio.NewReader(tc))
					c.(*net.TCPConn).SetLinger(0)
				})
			},
			// The session ticket proved the client certificate; no HTTP byte
			// proves the route.
			want: want{layer: diag.Route, owner: diag.Ingress, transient: true, summary: []string{"dropped the connection"}, remedy: "ingress logs", noEvidence: true},
		},
		{
			name: "connection reset after the request, no client auth on the route",
			port: func(t *testing.T) string {
				cfg := w.tlsConfig()
				cfg.ClientAuth = tls.NoClientCert
				return serveRaw(t, func(c net.Conn) {
					tc := tls.Server(c, cfg)
					if tc.Handshake() != nil {
						return
					}
					http.ReadRequest(bufio.NewReader(tc))
					c.(*net.TCPConn).SetLinger(0)
				})
			},
			want: want{layer: diag.Route, owner: diag.Ingress, transient: true, summary: []string{"dropped the connection"}, remedy: "upstream", noEvidence: true},
		},
		{
			name: "no answer before the response timeout",
			port: func(t *testing.T) string {
				return serveHTTPS(t, w.tlsConfig(), func(w http.ResponseWriter, r *http.Request) {
					select {
					case <-r.Context().Done():
					case <-time.After(10 * time.Second):
					}
				})
			},
			mod:  func(r *probe.Request) { r.Timeout, r.Wait = 200*time.Millisecond, 0 },
			want: want{layer: diag.Route, owner: diag.Ingress, transient: true, summary: []string{"no answer to tasks/wait"}, remedy: "wait_timeout", noEvidence: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := tt.port(t)
			var mods []func(*probe.Request)
			if tt.mod != nil {
				mods = append(mods, tt.mod)
			}
			r := w.probe(t, port, mods...)
			check(t, r, diag.FromProbe(r, tt.chain), tt.want)
		})
	}
}

// TestFromProbeClientAuthRejected: the ingress trusts another CA for client
// certificates. Under TLS 1.3 the handshake succeeds on the client and the
// alert arrives on the first read; under TLS 1.2 the handshake fails. Either
// way it is tls-client-auth, and the owner follows the chain state: the
// ingress when the node cert chains to the current root, the node when it is
// stale.
func TestFromProbeClientAuthRejected(t *testing.T) {
	w := newWorld(t)
	for _, ver := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cfg := w.tlsConfig()
		cfg.ClientCAs = w.other.pool()
		cfg.MinVersion, cfg.MaxVersion = ver, ver
		port := serveHTTPS(t, cfg, status(204, ""))
		for _, tc := range []struct {
			chain  diag.ChainState
			owner  diag.Owner
			remedy string
		}{
			{diag.ChainCurrent, diag.Ingress, "client-auth CA secret"},
			{diag.ChainStale, diag.Node, "re-enroll the node"},
			{diag.ChainUnknown, diag.Ingress, "could not confirm"},
		} {
			t.Run(fmt.Sprintf("%s/chain=%d", tls.VersionName(ver), tc.chain), func(t *testing.T) {
				r := w.probe(t, port)
				when := "during the handshake"
				if ver == tls.VersionTLS13 {
					when = "on the first read after the handshake (TLS 1.3)"
					if r.Stage != probe.StageHandshake {
						t.Errorf("TLS 1.3: want the handshake to complete on the client (stage %d), err %v", r.Stage, r.Err)
					}
				}
				check(t, r, diag.FromProbe(r, tc.chain), want{layer: diag.TLSClientAuth, owner: tc.owner, remedy: tc.remedy,
					summary:  []string{when, "remote error: tls: unknown certificate authority"},
					evidence: map[string]string{"client_cert_requested": "true", "server_accepts_client_certs_from": "CN=Other Root CA"}})
			})
		}
	}
}

// TestFromProbeNoClientCert: a node without credentials probing an ingress
// that requires one gets "certificate required" (1.3) or "handshake failure"
// (1.2): still tls-client-auth, and the node's to fix.
func TestFromProbeNoClientCert(t *testing.T) {
	w := newWorld(t)
	for _, ver := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(tls.VersionName(ver), func(t *testing.T) {
			cfg := w.tlsConfig()
			cfg.MinVersion, cfg.MaxVersion = ver, ver
			port := serveHTTPS(t, cfg, status(204, ""))
			r := w.probe(t, port, func(r *probe.Request) { r.Cert = nil })
			check(t, r, diag.FromProbe(r, diag.ChainUnknown), want{layer: diag.TLSClientAuth, owner: diag.Node,
				summary: []string{"has none to send", "remote error: tls:"}, remedy: "enroll the node"})
		})
	}
}

func TestFromProbeHTTPAnswers(t *testing.T) {
	w := newWorld(t)
	api401 := func(v map[string]any) string { return jsonBody(v) }
	tests := []struct {
		name    string
		handler http.HandlerFunc
		noMTLS  bool // the route does not ask for a client certificate
		want    want
	}{
		{"404 from the router", status(404, "404 page not found\n", "Content-Type", "text/plain; charset=utf-8"), false,
			want{layer: diag.Route, owner: diag.Ingress, summary: []string{"no route for Host " + apiHost, "came from the router"}, remedy: "explicit router",
				evidence: map[string]string{"http_status": "404", "body": "404 page not found"}}},
		{"404 with another body", status(404, `{"error":"no such node"}`), false,
			want{layer: diag.Route, owner: diag.Ingress, summary: []string{"404 for https://" + apiHost}, remedy: "wait_path",
				evidence: map[string]string{"body": "no such node"}}},
		{"421 misdirected", status(421, "Misdirected Request\n"), false,
			want{layer: diag.Route, owner: diag.Ingress, summary: []string{"421"}, remedy: "same host name"}},
		{"401 mtls_present=false", status(401, api401(map[string]any{"error": "invalid node identity", "mtls_present": false, "reason": "no client certificate"})), false,
			want{layer: diag.Identity, owner: diag.Ingress, summary: []string{"invalid node identity", "mtls_present=false"}, remedy: "forwarding middleware",
				evidence: map[string]string{"mtls_present": "false", "api_reason": "no client certificate"}}},
		{"401 mtls_present=true with a reason", status(401, api401(map[string]any{"error": "invalid node identity", "mtls_present": true, "reason": "cannot parse X-Forwarded-Tls-Client-Cert"})), false,
			want{layer: diag.Identity, owner: diag.API, summary: []string{"mtls_present=true", "cannot parse X-Forwarded-Tls-Client-Cert"}, remedy: "forwarded-certificate format",
				evidence: map[string]string{"mtls_present": "true", "api_reason": "cannot parse"}}},
		{"401 without the field", status(401, api401(map[string]any{"error": "invalid node identity"})), false,
			want{layer: diag.Identity, owner: diag.API, summary: []string{"does not say whether"}, remedy: "rejection log"}},
		{"401 without the field on a route without mTLS", status(401, api401(map[string]any{"error": "invalid node identity"})), true,
			want{layer: diag.TLSClientAuth, owner: diag.Ingress, summary: []string{"answered 401 without asking for a client certificate"}, remedy: "enable client-certificate authentication"}},
		{"404 from a default server without mTLS (raw-IP routing)", status(404, "404 page not found\n"), true,
			want{layer: diag.Route, owner: diag.Ingress, summary: []string{"no route for Host"}, remedy: "explicit router"}},
		{"401 with X-Mtls-Present: false", status(401, "unauthorized", "X-Mtls-Present", "false"), false,
			want{layer: diag.Identity, owner: diag.Ingress, summary: []string{"mtls_present=false"}, remedy: "forwarding middleware"}},
		{"401 with X-Mtls-Present: true", status(401, "unauthorized", "X-Mtls-Present", "true"), false,
			want{layer: diag.Identity, owner: diag.API, summary: []string{"mtls_present=true"}, remedy: "forwarded-certificate format"}},
		{"403 mtls_present=false", status(403, api401(map[string]any{"error": "forbidden", "mtls_present": false})), false,
			want{layer: diag.Identity, owner: diag.Ingress, summary: []string{"403"}, remedy: "forwarding middleware"}},
		{"nginx 400 No required SSL certificate was sent", status(400, "<html>\r\n<head><title>400 No required SSL certificate was sent</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>No required SSL certificate was sent</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n", "Server", "nginx"), false,
			want{layer: diag.TLSClientAuth, owner: diag.Ingress, summary: []string{"400", "No required SSL certificate was sent"}, remedy: "client-auth",
				evidence: map[string]string{"server_header": "nginx"}}},
		{"429", status(429, "slow down", "Retry-After", "1"), false,
			want{layer: diag.TasksWait, owner: diag.API, transient: true, summary: []string{"429"}, remedy: "rate limits"}},
		{"503", status(503, "Service Unavailable"), false,
			want{layer: diag.TasksWait, owner: diag.API, transient: true, summary: []string{"503"}, remedy: "node API's logs"}},
		{"500", status(500, "boom"), false,
			want{layer: diag.TasksWait, owner: diag.API, transient: true, summary: []string{"500"}, remedy: "node API's logs"}},
		{"503 HTML page from HAProxy", status(503, "<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>\n", "Content-Type", "text/html"), false,
			want{layer: diag.TasksWait, owner: diag.Ingress, transient: true, summary: []string{"503 itself", "No server is available"}, remedy: "upstream"}},
		{"502 with a long text body", status(502, strings.Repeat("upstream connect error or disconnect/reset before headers. ", 40)), false,
			want{layer: diag.TasksWait, owner: diag.Ingress, transient: true, summary: []string{"502"}, remedy: "upstream"}},
		{"502 from the ingress", status(502, "Bad Gateway"), false,
			want{layer: diag.TasksWait, owner: diag.Ingress, transient: true, summary: []string{"502 from the ingress"}, remedy: "upstream"}},
		{"504 from the ingress", status(504, "Gateway Timeout"), false,
			want{layer: diag.TasksWait, owner: diag.Ingress, transient: true, summary: []string{"504 from the ingress"}, remedy: "timeouts"}},
		{"302 redirect", status(302, "", "Location", "/login"), false,
			want{layer: diag.Route, owner: diag.Ingress, summary: []string{"redirected", "/login"}, remedy: "wait_path"}},
		{"418: an answer nobody documents", status(418, "teapot"), false,
			want{layer: diag.Route, owner: diag.Ingress, summary: []string{"unrecognised", "HTTP 418"}, remedy: "collect this report",
				evidence: map[string]string{"http_status": "418", "body": "teapot", "stage": "body"}}},
		{"200 HTML default page", status(200, "<html>Welcome to nginx!</html>"), false,
			want{layer: diag.Route, owner: diag.Ingress, summary: []string{"not a JSON task", "Welcome to nginx"}, remedy: "default backend"}},
		// Issue 24 item 3: a 200 whose body is JSON but not an object is
		// not a task, and not a pass; the node API said it, not the route.
		{"200 JSON null", status(200, "null", "Content-Type", "application/json"), false,
			want{layer: diag.TasksWait, owner: diag.API, summary: []string{"not a task", "null"}, remedy: "204 when no task is queued"}},
		{"200 JSON array", status(200, `[{"id":"t-1"}]`, "Content-Type", "application/json"), false,
			want{layer: diag.TasksWait, owner: diag.API, summary: []string{"not a task"}, remedy: "one task as a JSON object"}},
		{"200 JSON string", status(200, `"reboot"`, "Content-Type", "application/json"), false,
			want{layer: diag.TasksWait, owner: diag.API, summary: []string{"not a task"}, remedy: "JSON object"}},
		{"200 JSON number", status(200, `12345678901234567891`, "Content-Type", "application/json"), false,
			want{layer: diag.TasksWait, owner: diag.API, summary: []string{"not a task"}, remedy: "JSON object"}},
		// A task over the bound is the API's, never the route's: it was
		// dequeued and could not be handed off whole.
		{"200 a task larger than probe.MaxTask", status(200, `{"id":"huge","pad":"`+strings.Repeat("x", probe.MaxTask)+`"}`, "Content-Type", "application/json"), false,
			want{layer: diag.TasksWait, owner: diag.API, summary: []string{"larger than", "not handed off"}, remedy: "smaller",
				evidence: map[string]string{"body_truncated": "longer than"}}},
		{"200 without a client certificate request", status(200, `{"id":"t"}`), true,
			want{layer: diag.TLSClientAuth, owner: diag.Ingress, summary: []string{"without asking for a client certificate"}, remedy: "enable client-certificate authentication"}},
		{"204 without a client certificate request", status(204, ""), true,
			want{layer: diag.TLSClientAuth, owner: diag.Ingress, summary: []string{"mTLS is not enforced"}, remedy: "enable client-certificate authentication"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := w.tlsConfig()
			if tt.noMTLS {
				cfg.ClientAuth = tls.NoClientCert
			}
			port := serveHTTPS(t, cfg, tt.handler)
			r := w.probe(t, port)
			f := diag.FromProbe(r, diag.ChainCurrent)
			check(t, r, f, tt.want)
			// A peer's body is quoted in a summary as one short line: an
			// HTML page by its title or text, never its markup (issue 33:
			// a summary carried nginx's whole error page).
			if f != nil && (strings.Contains(f.Summary, "<") || strings.ContainsAny(f.Summary, "\r\n") || len(f.Summary) > 400) {
				t.Errorf("summary quotes the body as more than one short line: %q", f.Summary)
			}
		})
	}
}

func TestFromProbeHealthy(t *testing.T) {
	w := newWorld(t)
	var gotCN, gotPath, gotQuery string
	port := serveHTTPS(t, w.tlsConfig(), func(rw http.ResponseWriter, r *http.Request) {
		gotCN, gotPath, gotQuery = r.TLS.PeerCertificates[0].Subject.CommonName, r.URL.Path, r.URL.RawQuery
		rw.Header().Set("Content-Type", "application/json")
		io.WriteString(rw, `{"id":"task-17","kind":"reboot"}`)
	})
	r := w.probe(t, port)
	if f := diag.FromProbe(r, diag.ChainCurrent); f != nil {
		t.Fatalf("healthy 200 classified as %s/%s: %s", f.Layer, f.Owner, f.Summary)
	}
	if gotCN != "gpu-1" || gotPath != "/v1/nodes/gpu-1/tasks/wait" || gotQuery != "timeout=1" {
		t.Errorf("server saw CN %q path %q query %q", gotCN, gotPath, gotQuery)
	}
	if task := probe.TaskFrom(r.Body); task.ID != "task-17" || !strings.Contains(string(task.Raw), `"kind":"reboot"`) {
		t.Errorf("task %+v", task)
	}
	if !r.ClientCertAsked || !r.ClientCertSent || r.Stage != probe.StageBody || r.TLSVersion != tls.VersionTLS13 || !r.ServerVerified {
		t.Errorf("probe record: asked %v sent %v stage %d version %x", r.ClientCertAsked, r.ClientCertSent, r.Stage, r.TLSVersion)
	}
	// The Date header is the server's real time, whatever the node's clock says.
	if d := time.Since(r.Date); d < -time.Minute || d > time.Minute {
		t.Errorf("Date header %v is not the server's real time", r.Date)
	}

	// A task of several MiB is read whole and is a task (issue 24 item 3:
	// a task over 1 MiB was dequeued, dropped and blamed on the route).
	bigTask := `{"id":"task-big","pad":"` + strings.Repeat("x", 3<<20) + `"}`
	portBig := serveHTTPS(t, w.tlsConfig(), status(200, bigTask, "Content-Type", "application/json"))
	rb := w.probe(t, portBig)
	if f := diag.FromProbe(rb, diag.ChainCurrent); f != nil {
		t.Fatalf("a 3 MiB task classified as %s/%s: %s", f.Layer, f.Owner, f.Summary)
	}
	if task, ok := rb.HandedTask(); !ok || task.ID != "task-big" || len(task.Raw) != len(bigTask) {
		t.Errorf("a 3 MiB task not handed over whole: %v id %q %d bytes", ok, task.ID, len(task.Raw))
	}

	port204 := serveHTTPS(t, w.tlsConfig(), status(204, ""))
	if f := diag.FromProbe(w.probe(t, port204), diag.ChainCurrent); f != nil {
		t.Fatalf("204 classified as %s: %s", f.Layer, f.Summary)
	}
}

// TestFromProbeTaskCutShort: a 200 whose body did not arrive whole is not
// a task and is never the route's (issue 24 item 3: a large task that was
// still arriving when the request timed out was blamed on route/ingress).
// Cut by the peer (EOF), it is the ingress's or API's answer cut short;
// still arriving at the request timeout, it is the API's (it handed out
// more than arrives in the budget).
func TestFromProbeTaskCutShort(t *testing.T) {
	w := newWorld(t)
	cut := func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "application/json")
		rw.Header().Set("Content-Length", "100000")
		io.WriteString(rw, `{"id":"t-1","pad":"xxxx`)
	}
	stall := func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "application/json")
		rw.Header().Set("Content-Length", "100000")
		rw.WriteHeader(200)
		io.WriteString(rw, `{"id":"t-1","pad":"xxxx`)
		rw.(http.Flusher).Flush()
		<-r.Context().Done()
	}
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		owner   diag.Owner
		summary string
	}{
		{"cut by the peer", cut, diag.Ingress, "cut mid-body"},
		{"still arriving at the timeout", stall, diag.API, "did not arrive whole"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := serveHTTPS(t, w.tlsConfig(), tc.handler)
			r := w.probe(t, port, func(r *probe.Request) { r.Timeout, r.Wait = 500*time.Millisecond, 0 })
			p := diag.Classify(r, diag.ChainCurrent)
			f := p.Finding
			if f == nil || f.Layer != diag.TasksWait || f.Owner != tc.owner || !f.Transient || !strings.Contains(f.Summary, tc.summary) {
				t.Fatalf("finding %+v, want tasks-wait, owner %s, transient, saying %q", f, tc.owner, tc.summary)
			}
			if _, ok := p.Unproven[diag.Route]; !ok {
				t.Errorf("route neither proven nor explained: %+v", p)
			}
			if _, ok := r.HandedTask(); ok {
				t.Error("a task cut short was handed off")
			}
		})
	}
}
