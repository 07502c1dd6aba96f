package reliability

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
)

// tcpProxy forwards loopback TCP connections to target. The first resetFirst
// connections are reset (RST) 300ms after they were accepted, which with a
// held long poll is after the TLS handshake and the request. It counts every connection.
type tcpProxy struct {
	ln         net.Listener
	target     string
	resetFirst int64
	resetAfter time.Duration
	conns      atomic.Int64
	resets     atomic.Int64
	wg         sync.WaitGroup
}

func startTCPProxy(t testing.TB, target string, resetFirst int) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, resetFirst: int64(resetFirst), resetAfter: 300 * time.Millisecond}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := p.conns.Add(1)
			if n <= p.resetFirst {
				// Forward the handshake and the request, then reset the
				// connection while the answer is awaited: an ingress or
				// load balancer dropping in-flight requests.
				p.resets.Add(1)
				go p.forward(c)
				time.AfterFunc(p.resetAfter, func() {
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
				})
				continue
			}
			go p.forward(c)
		}
	}()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *tcpProxy) forward(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(c, up); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}

func (p *tcpProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// caProxy is a TLS reverse proxy in front of the real step-ca, serving a
// certificate for the CA's hostname from the step intermediate (so provision
// verifies it exactly as it verifies step-ca), with a fault injector that
// may answer a request itself.
type caProxy struct {
	srv      *httptest.Server
	mu       sync.Mutex
	inject   func(r *http.Request, n int) (status int, header http.Header, body string, ok bool)
	requests []string      // "METHOD path status"
	dateSkew time.Duration // added to the CA's clock in its Date header
	times    []time.Time
}

func startCAProxy(t testing.TB, cp *controlplane.ControlPlane) *caProxy {
	t.Helper()
	leaf, err := cp.CA.PKI().IssueServerCert(cp.CA.Hostname(), net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	up, _ := url.Parse(cp.CA.LoopbackURL())
	rp := httputil.NewSingleHostReverseProxy(up)
	rp.Transport = &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: cp.CA.PKI().RootPool(), ServerName: cp.CA.Hostname(), MinVersion: tls.VersionTLS12},
		Proxy:           nil,
	}
	p := &caProxy{}
	rp.ModifyResponse = func(resp *http.Response) error {
		p.mu.Lock()
		skew := p.dateSkew
		p.mu.Unlock()
		if skew != 0 {
			resp.Header.Set("Date", time.Now().Add(skew).UTC().Format(http.TimeFormat))
		}
		return nil
	}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		p.mu.Lock()
		n := len(p.requests)
		inject := p.inject
		p.mu.Unlock()
		status := 0
		if inject != nil {
			if st, h, body, ok := inject(r, n); ok {
				for k, vs := range h {
					w.Header()[k] = vs
				}
				w.WriteHeader(st)
				io.WriteString(w, body)
				status = st
			}
		}
		if status == 0 {
			rec := &statusWriter{ResponseWriter: w, status: 200}
			rp.ServeHTTP(rec, r)
			status = rec.status
		}
		p.mu.Lock()
		p.requests = append(p.requests, r.Method+" "+r.URL.Path+" "+strconv.Itoa(status))
		p.times = append(p.times, start)
		p.mu.Unlock()
	}))
	cert := leaf.TLSCertificate()
	p.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	p.srv.StartTLS()
	t.Cleanup(p.srv.Close)
	return p
}

func (p *caProxy) setInject(f func(r *http.Request, n int) (int, http.Header, string, bool)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inject = f
}

func (p *caProxy) log() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.requests...)
}

func (p *caProxy) port() int { return p.srv.Listener.Addr().(*net.TCPAddr).Port }

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(c int) { s.status = c; s.ResponseWriter.WriteHeader(c) }

// fakeServer is a TLS server on loopback with a self-signed certificate that
// answers every request with handler: a fault injector standing in for a CA
// or an API that misbehaves in a way step-ca cannot be made to. It records
// the arrival time of every request.
type fakeServer struct {
	srv   *httptest.Server
	mu    sync.Mutex
	times []time.Time
	paths []string
}

func startFake(t testing.TB, handler http.HandlerFunc) *fakeServer {
	t.Helper()
	f := &fakeServer{}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.times = append(f.times, time.Now())
		f.paths = append(f.paths, r.Method+" "+r.URL.Path)
		f.mu.Unlock()
		handler(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeServer) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.times)
}

func (f *fakeServer) port() int { return f.srv.Listener.Addr().(*net.TCPAddr).Port }

// withPort replaces the port of an https://host:port URL.
func withPort(u string, port int) string {
	pu, err := url.Parse(u)
	if err != nil {
		panic(err)
	}
	pu.Host = net.JoinHostPort(pu.Hostname(), strconv.Itoa(port))
	return pu.String()
}
