package fleet

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/gpuaas/provision/tests/controlplane"
)

// CAProxy is a TLS-terminating reverse proxy in front of step-ca, the load
// balancer a real CA sits behind. It serves a certificate for the CA's
// hostname from the step intermediate, so nodes verify it exactly as they
// verify step-ca. It counts every request at the front door and every one
// it forwards, reads the one-time token of each POST /1.0/sign (subject and
// jti only, never logged) so a second sign for a node or a token presented
// twice is seen, and can answer a share of the requests with a fault.
//
// Its certificate also covers *.<CA hostname>: a storm node reaches it as
// <node>.<CA hostname> (NodeHostname), so the SNI of each TLS connection
// names the node that opened it, and the proxy records when it accepted
// that connection (Conns). That is how the storm sees when a restarted run
// starts its network work without asking the run.
type CAProxy struct {
	ln     net.Listener
	srv    *http.Server
	rp     *httputil.ReverseProxy
	start  time.Time
	suffix string // "." + the CA's hostname

	mu      sync.Mutex
	fault   *Fault
	signs   int
	stalls  int           // handshakes held for Fault.StallHandshakes
	held    int           // faulted requests held now (Fault.HoldUntil)
	release chan struct{} // closed when they are let go
	first   chan struct{} // closed at the first request after Mark
	events  []Event
	conns   []Conn
}

// Conn is one TLS connection at the proxy that named a node.
type Conn struct {
	// At is when the connection reached the proxy's host, since the proxy
	// started: the kernel's own record of the last segment it received
	// (TCP_INFO's last_data_recv: the ClientHello, or the handshake's last
	// ACK when no data came yet), so that a proxy process waiting for a
	// CPU does not bunch connections that came apart. Accepted is when
	// the proxy accepted it.
	At, Accepted time.Duration
	Node         string // from the SNI <node>.<CA hostname>
}

// NodeHostname is the name node reaches the proxy by: a subdomain of the
// CA's hostname, covered by the proxy's certificate.
func (p *CAProxy) NodeHostname(node string) string { return node + p.suffix }

// Fault makes the proxy answer Status instead of forwarding to a random
// Share of the requests (0.5: half of them) until Until, or, when Until is
// zero, for For from the first request it sees. Random, not every other
// one: a node's roots fetch is two requests in a row, and strict
// alternation would answer the second of every pair.
type Fault struct {
	Status     int
	RetryAfter int // seconds; 0 sends no Retry-After
	Share      float64
	Until      time.Time
	For        time.Duration
	// FirstSigns, when > 0, answers exactly the first FirstSigns sign
	// requests with the fault, and no other sign: a deterministic number
	// of signs for the nodes to recover from (other requests: Share).
	FirstSigns int
	// HTML, when set, is the body of a faulted answer instead of
	// step-ca's JSON error: what a balancer in front of the CA answers
	// itself (an error page), which provision cannot take for step-ca.
	HTML string
	// HoldUntil, when > 0, holds each faulted request until HoldUntil of
	// them are held at once, answers them all in the same instant, and
	// every later faulted request at once: a CA that hangs, then fails
	// every waiting client together.
	HoldUntil int
	// LoseAnswer forwards a faulted sign to step-ca and answers the fault
	// instead of step-ca's answer: an answer lost after step-ca saw (and
	// burnt) the token. The event is Forwarded with step-ca's status and
	// Lost.
	LoseAnswer bool
	// AfterLost, with LoseAnswer, runs after step-ca answered the sign and
	// before the client gets the fault: step-ca restarted, say, between a
	// lost answer and the node's retry.
	AfterLost func()
	// StallHandshakes, when > 0, holds the next StallHandshakes TLS
	// handshakes for StallFor after the ClientHello, then fails them: a
	// balancer that accepts connections but does not get to them, which
	// a client sees as a TLS handshake timeout. No request is read.
	StallHandshakes int
	StallFor        time.Duration
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
	Lost      bool // step-ca answered Status, the client got the fault (Fault.LoseAnswer)
}

// StartCAProxy listens on a free loopback port in front of ca.
func StartCAProxy(ca *controlplane.StepCA) (*CAProxy, error) {
	leaf, err := ca.PKI().IssueLeaf(controlplane.LeafRequest{
		CommonName: ca.Hostname(), DNSNames: []string{ca.Hostname(), "*." + ca.Hostname()},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, err
	}
	cert := leaf.TLSCertificate()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	target, _ := url.Parse("https://" + net.JoinHostPort(ca.Hostname(), strconv.Itoa(ca.Port())))
	p := &CAProxy{start: time.Now(), suffix: "." + ca.Hostname()}
	p.ln = &stampListener{Listener: ln, p: p}
	p.rp = httputil.NewSingleHostReverseProxy(target)
	p.rp.Transport = &http.Transport{
		Proxy:               nil,
		DialContext:         ca.DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: ca.PKI().RootPool(), ServerName: ca.Hostname(), MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 64,
	}
	p.rp.ErrorLog = nil
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, GetConfigForClient: p.hello}}
	go p.srv.ServeTLS(p.ln, "", "")
	return p, nil
}

// stampListener notes when each connection was accepted.
type stampListener struct {
	net.Listener
	p *CAProxy
}

type stampConn struct {
	net.Conn
	at, accepted time.Duration
}

func (l *stampListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	now := time.Since(l.p.start)
	return &stampConn{Conn: c, at: now - sinceLastReceived(c), accepted: now}, nil
}

// sinceLastReceived is how long ago the kernel received the connection's
// last segment (struct tcp_info's tcpi_last_data_recv, in milliseconds at
// offset 52 since Linux 2.6), or 0 when it cannot tell.
func sinceLastReceived(c net.Conn) time.Duration {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return 0
	}
	var info [104]byte
	var ms uint32
	raw.Control(func(fd uintptr) {
		n := uint32(len(info))
		_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&n)), 0)
		if errno == 0 && n >= 56 {
			ms = binary.NativeEndian.Uint32(info[52:56])
		}
	})
	return time.Duration(ms) * time.Millisecond
}

// hello records which node opened the connection (the ClientHello's SNI)
// and when it was accepted; it changes nothing in the handshake.
func (p *CAProxy) hello(h *tls.ClientHelloInfo) (*tls.Config, error) {
	c, ok := h.Conn.(*stampConn)
	node, sub := strings.CutSuffix(strings.ToLower(h.ServerName), p.suffix)
	p.mu.Lock()
	if ok && sub && node != "" {
		p.conns = append(p.conns, Conn{At: c.at, Accepted: c.accepted, Node: node})
	}
	var stall time.Duration
	if f := p.fault; f != nil && p.stalls < f.StallHandshakes {
		p.stalls++
		stall = f.StallFor
	}
	p.mu.Unlock()
	if stall > 0 {
		time.Sleep(stall)
		return nil, errors.New("handshake stalled by the storm's fault proxy")
	}
	return nil, nil
}

// Conns returns every connection so far that named a node.
func (p *CAProxy) Conns() []Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Conn(nil), p.conns...)
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
// Requests the old fault holds are answered at once.
func (p *CAProxy) SetFault(f *Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault, p.signs, p.stalls = f, 0, 0
	p.letGo()
	p.release = make(chan struct{})
}

// letGo answers every held request; p.mu is held.
func (p *CAProxy) letGo() {
	if p.release != nil {
		select {
		case <-p.release:
		default:
			close(p.release)
		}
	}
}

// hold waits, for Fault.HoldUntil, until enough requests are held at once
// (or the client gives up, false).
func (p *CAProxy) hold(r *http.Request, f *Fault) bool {
	p.mu.Lock()
	rel := p.release
	p.held++
	if p.held >= f.HoldUntil {
		p.letGo()
	}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.held--
		p.mu.Unlock()
	}()
	select {
	case <-rel:
		return true
	case <-r.Context().Done():
		return false
	}
}

// Mark returns a channel closed when the next request arrives: the moment
// a fleet's traffic begins.
func (p *CAProxy) Mark() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.first = make(chan struct{})
	return p.first
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
	if p.first != nil {
		close(p.first)
		p.first = nil
	}
	f := p.fault
	if f != nil && f.Until.IsZero() {
		f.Until = time.Now().Add(f.For) // the fault's clock starts with the traffic
	}
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
	switch {
	case ev.Faulted && f.HoldUntil > 0 && !p.hold(r, f):
		// The client gave up while held: nothing was answered (Status 0).
	case ev.Faulted && f.LoseAnswer && ev.Sign:
		rec := httptest.NewRecorder()
		p.rp.ServeHTTP(rec, r)
		if f.AfterLost != nil {
			f.AfterLost()
			if tr, ok := p.rp.Transport.(*http.Transport); ok {
				tr.CloseIdleConnections() // to the step-ca that is gone
			}
		}
		writeFault(w, f)
		ev.Status, ev.Forwarded, ev.Faulted, ev.Lost = rec.Code, true, false, true
	case ev.Faulted:
		writeFault(w, f)
		ev.Status = f.Status
	default:
		sw := &statusWriter{ResponseWriter: w}
		p.rp.ServeHTTP(sw, r)
		ev.Status, ev.Forwarded = sw.status, true
	}
	p.mu.Lock()
	p.events = append(p.events, ev)
	p.mu.Unlock()
}

// writeFault answers f: step-ca's JSON error, or the balancer's page.
func writeFault(w http.ResponseWriter, f *Fault) {
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
	}
	if f.HTML != "" {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(f.Status)
		io.WriteString(w, f.HTML)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(f.Status)
	io.WriteString(w, `{"status":`+strconv.Itoa(f.Status)+`,"message":"injected by the storm's fault proxy"}`)
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
