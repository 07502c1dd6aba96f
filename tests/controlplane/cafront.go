package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
)

// CAFront stands in front of a StepCA as a load balancer, WAF or proxy
// does in front of a real CA, and can answer the CA's renewals itself: the
// issue-21 fault where one stray 401 to /renew or /rekey, from anything
// but step-ca, looked like a revoked certificate.
//
// Renewals authenticate by the node's client certificate (mTLS to the CA),
// which a TLS-terminating proxy cannot pass on. So the front is a plain
// TCP relay (the node's TLS, client certificate included, reaches step-ca
// untouched) except while it is armed by Refuse or ServeCRL (which answers
// GET /crl with a list the test built): then it terminates TLS
// itself, with a certificate for the CA's hostname from the CA's own
// intermediate (nodes verify it exactly as they verify step-ca), asks for
// a client certificate without verifying it, and answers the next POSTs to
// /renew or /rekey (either under /1.0) with the armed answer. Other
// requests arriving while armed are relayed to step-ca over a new TLS
// connection when they carry no client certificate (roots, federation,
// sign, renewal by token) and answered 503 when they do, which the front
// cannot relay. Keep-alives are off on terminated connections, so each
// carries one request. It is meant for one node at a time: with several,
// which renewal meets the armed answer is a matter of timing.
type CAFront struct {
	ca    *StepCA
	ln    net.Listener
	tls   *testenv.ChanListener
	srv   *http.Server
	proxy *httputil.ReverseProxy

	mu      sync.Mutex
	pending int
	answer  FrontAnswer
	crl     []byte // ServeCRL's
	events  []FrontEvent
	relayed int
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

// FrontAnswer is what the armed front answers a renewal.
type FrontAnswer struct {
	Status      int
	ContentType string
	Body        string
}

// StepCA401 is the answer step-ca itself gives a revoked certificate (and
// a removed provisioner, and a provisioner barred from renewing): 401
// with its default message, which names none of them. The zero
// FrontAnswer means this one.
var StepCA401 = FrontAnswer{
	Status: http.StatusUnauthorized, ContentType: "application/json",
	Body: `{"status":401,"message":"The request lacked necessary authorization to be completed. Please see the certificate authority logs for more info."}`,
}

// FrontEvent is one request the front terminated (relayed TCP connections
// are only counted: their content is the node's TLS).
type FrontEvent struct {
	Method, Path string
	ClientCert   bool // the caller presented a certificate
	Answered     bool // the front answered (Status); step-ca never saw it
	Status       int
}

// StartCAFront listens on a free loopback port in front of ca. It relays
// to ca's address at each connection, so it follows a CA restarted on the
// same address; its own certificate is from the intermediate current at
// start (after Rotate, start a new front).
func StartCAFront(ca *StepCA) (*CAFront, error) {
	leaf, err := ca.PKI().IssueServerCert(ca.Hostname())
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &CAFront{ca: ca, ln: ln, conns: map[net.Conn]struct{}{},
		tls: testenv.NewChanListener(ln.Addr())}
	roots := x509.NewCertPool()
	for _, p := range ca.CurrentRoots() {
		roots.AddCert(p.Root)
	}
	target := &url.URL{Scheme: "https", Host: net.JoinHostPort(ca.Hostname(), strconv.Itoa(ca.Port()))}
	f.proxy = httputil.NewSingleHostReverseProxy(target)
	f.proxy.Transport = &http.Transport{Proxy: nil, DialContext: ca.DialContext, DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: ca.Hostname(), MinVersion: tls.VersionTLS12}}
	quiet := log.New(io.Discard, "", 0) // a client hanging up mid-handshake is not news
	f.proxy.ErrorLog = quiet
	f.srv = &http.Server{Handler: f, ReadHeaderTimeout: 10 * time.Second, ErrorLog: quiet,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}}
	f.srv.SetKeepAlivesEnabled(false)
	f.wg.Add(2)
	go func() { defer f.wg.Done(); _ = f.srv.ServeTLS(f.tls, "", "") }()
	go func() { defer f.wg.Done(); f.accept() }()
	return f, nil
}

// Refuse arms the front: the next n renewals (POST /renew or /rekey) get
// a instead of reaching step-ca (the zero FrontAnswer is StepCA401). n = 0
// disarms it.
func (f *CAFront) Refuse(n int, a FrontAnswer) {
	if a.Status == 0 {
		a = StepCA401
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending, f.answer = n, a
}

// ServeCRL makes the front answer GET /crl itself with der, a revocation
// list the test built (signed with the CA's own intermediate key, it is as
// genuine as step-ca's: stale, or listing a serial on hold), terminating
// TLS for every connection while it is set; nil stops it. Renewals that
// are not refused meanwhile get the front's 503 (see Refuse).
func (f *CAFront) ServeCRL(der []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crl = der
}

// Pending is how many renewals the front will still answer itself.
func (f *CAFront) Pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pending
}

// Events are the requests the front terminated, in order.
func (f *CAFront) Events() []FrontEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]FrontEvent(nil), f.events...)
}

// Relayed is how many connections went to step-ca as they were (TCP).
func (f *CAFront) Relayed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.relayed
}

// Port is the front's port on 127.0.0.1.
func (f *CAFront) Port() int { return f.ln.Addr().(*net.TCPAddr).Port }

// URL is the CA's URL through the front, by the CA's hostname (a node maps
// it to 127.0.0.1): ca.url for a node that should reach the CA through it.
func (f *CAFront) URL() string {
	return "https://" + net.JoinHostPort(f.ca.Hostname(), strconv.Itoa(f.Port()))
}

// Close stops the front and every connection through it.
func (f *CAFront) Close() error {
	err := f.ln.Close()
	f.tls.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = f.srv.Shutdown(ctx)
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	return err
}

func (f *CAFront) accept() {
	for {
		conn, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		armed := f.pending > 0 || f.crl != nil
		if !armed {
			f.relayed++
		}
		f.mu.Unlock()
		if armed {
			f.tls.Push(conn)
			continue
		}
		f.wg.Add(1)
		go func() { defer f.wg.Done(); f.relay(conn) }()
	}
}

// relay copies conn to and from step-ca until either side closes.
func (f *CAFront) relay(conn net.Conn) {
	defer conn.Close()
	var d net.Dialer
	up, err := d.Dial("tcp", f.ca.Addr())
	if err != nil {
		return
	}
	defer up.Close()
	f.track(conn, up)
	defer f.untrack(conn, up)
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, conn); done <- struct{}{} }()
	go func() { io.Copy(conn, up); done <- struct{}{} }()
	<-done
}

func (f *CAFront) track(cs ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
}

func (f *CAFront) untrack(cs ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cs {
		delete(f.conns, c)
	}
}

func (f *CAFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ev := FrontEvent{Method: r.Method, Path: r.URL.Path, ClientCert: r.TLS != nil && len(r.TLS.PeerCertificates) > 0}
	renewal := r.Method == http.MethodPost && isRenewalPath(r.URL.Path)
	f.mu.Lock()
	answer, crl := f.answer, f.crl
	refuse := renewal && f.pending > 0
	if refuse {
		f.pending--
	}
	f.mu.Unlock()
	switch {
	case crl != nil && r.Method == http.MethodGet && (r.URL.Path == "/crl" || r.URL.Path == "/1.0/crl"):
		ev.Answered, ev.Status = true, http.StatusOK
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(crl)
	case refuse:
		ev.Answered, ev.Status = true, answer.Status
		if answer.ContentType != "" {
			w.Header().Set("Content-Type", answer.ContentType)
		}
		w.WriteHeader(answer.Status)
		io.WriteString(w, answer.Body)
	case ev.ClientCert:
		ev.Answered, ev.Status = true, http.StatusServiceUnavailable
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `{"status":503,"message":"the test front cannot relay a client certificate while it is armed"}`)
	default:
		sw := &statusRecorder{ResponseWriter: w} // nodeapi.go's: the proxy always writes a header
		f.proxy.ServeHTTP(sw, r)
		ev.Status = sw.status
	}
	f.mu.Lock()
	f.events = append(f.events, ev)
	f.mu.Unlock()
}

func isRenewalPath(p string) bool {
	switch p {
	case "/renew", "/rekey", "/1.0/renew", "/1.0/rekey":
		return true
	}
	return false
}
