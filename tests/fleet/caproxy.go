package fleet

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
)

// CAProxy is a TLS-terminating reverse proxy in front of step-ca, the load
// balancer a real CA sits behind. It serves a certificate for the CA's
// hostname from the step intermediate, so nodes verify it exactly as they
// verify step-ca. It counts every request at the front door and every one
// it forwards, reads the one-time token of each POST /1.0/sign (subject and
// jti only, never logged) so a second sign for a node or a token presented
// twice is seen, and can answer a share of the requests with a fault.
type CAProxy struct {
	ln    net.Listener
	srv   *http.Server
	rp    *httputil.ReverseProxy
	start time.Time

	mu     sync.Mutex
	fault  *Fault
	signs  int
	events []Event
}

// Fault makes the proxy answer Status instead of forwarding to a random
// Share of the requests (0.5: half of them) until Until. Random, not every
// other one: a node's roots fetch is two requests in a row, and strict
// alternation would answer the second of every pair.
type Fault struct {
	Status     int
	RetryAfter int // seconds; 0 sends no Retry-After
	Share      float64
	Until      time.Time
	// FirstSigns, when > 0, answers exactly the first FirstSigns sign
	// requests with the fault, and no other sign: a deterministic number
	// of signs for the nodes to recover from (other requests: Share).
	FirstSigns int
}

// Event is one request at the proxy.
type Event struct {
	At        time.Duration // since the proxy started
	Method    string
	Path      string
	Faulted   bool // answered by the proxy, never reached step-ca
	Status    int
	Sign      bool
	Subject   string // the token's sub, for a sign
	TokenID   string // the token's jti, for a sign
	Forwarded bool
}

// StartCAProxy listens on a free loopback port in front of ca.
func StartCAProxy(ca *controlplane.StepCA) (*CAProxy, error) {
	leaf, err := ca.PKI().IssueServerCert(ca.Hostname())
	if err != nil {
		return nil, err
	}
	cert := leaf.TLSCertificate()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	target, _ := url.Parse("https://" + net.JoinHostPort(ca.Hostname(), strconv.Itoa(ca.Port())))
	p := &CAProxy{ln: ln, start: time.Now()}
	p.rp = httputil.NewSingleHostReverseProxy(target)
	p.rp.Transport = &http.Transport{
		Proxy:               nil,
		DialContext:         ca.DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: ca.PKI().RootPool(), ServerName: ca.Hostname(), MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 64,
	}
	p.rp.ErrorLog = nil
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	go p.srv.ServeTLS(ln, "", "")
	return p, nil
}

// Port is the proxy's port on 127.0.0.1.
func (p *CAProxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Close stops the proxy.
func (p *CAProxy) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return p.srv.Shutdown(ctx)
}

// SetFault installs f (nil removes it).
func (p *CAProxy) SetFault(f *Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault, p.signs = f, 0
}

// Events returns every request so far.
func (p *CAProxy) Events() []Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Event(nil), p.events...)
}

// Since is how long the proxy has been running.
func (p *CAProxy) Since() time.Duration { return time.Since(p.start) }

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(s int) {
	if w.status == 0 {
		w.status = s
	}
	w.ResponseWriter.WriteHeader(s)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (p *CAProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ev := Event{At: time.Since(p.start), Method: r.Method, Path: r.URL.Path}
	if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/sign") {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		r.Body = io.NopCloser(bytes.NewReader(body))
		ev.Sign = true
		ev.Subject, ev.TokenID = tokenClaims(body)
	}
	p.mu.Lock()
	f := p.fault
	if f != nil && time.Now().After(f.Until) {
		f, p.fault = nil, nil
	}
	switch {
	case f != nil && ev.Sign && f.FirstSigns > 0:
		p.signs++
		ev.Faulted = p.signs <= f.FirstSigns
	case f != nil:
		ev.Faulted = rand.Float64() < f.Share
	}
	p.mu.Unlock()
	if ev.Faulted {
		if f.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.Status)
		io.WriteString(w, `{"status":`+strconv.Itoa(f.Status)+`,"message":"injected by the storm's fault proxy"}`)
		ev.Status = f.Status
	} else {
		sw := &statusWriter{ResponseWriter: w}
		p.rp.ServeHTTP(sw, r)
		ev.Status, ev.Forwarded = sw.status, true
	}
	p.mu.Lock()
	p.events = append(p.events, ev)
	p.mu.Unlock()
}

// tokenClaims reads sub and jti from the ott of a sign request, unverified
// (step-ca verifies it); the token itself is not kept.
func tokenClaims(body []byte) (sub, jti string) {
	var req struct {
		OTT string `json:"ott"`
	}
	if json.Unmarshal(body, &req) != nil {
		return "", ""
	}
	parts := strings.Split(req.OTT, ".")
	if len(parts) != 3 {
		return "", ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", ""
	}
	var c struct {
		Sub string `json:"sub"`
		JTI string `json:"jti"`
	}
	json.Unmarshal(payload, &c)
	return c.Sub, c.JTI
}
