package fleet

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"
)

// proxyForFaults is a CA proxy with a stand-in for step-ca behind it that
// answers 299: the fault proxy's own answers are what is tested.
func proxyForFaults(t *testing.T, f *Fault) *CAProxy {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(299) }))
	t.Cleanup(backend.Close)
	u, _ := url.Parse(backend.URL)
	p := &CAProxy{start: time.Now(), suffix: ".ca.cp.internal", rp: httputil.NewSingleHostReverseProxy(u)}
	p.SetFault(f)
	return p
}

func (p *CAProxy) heldNow() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

// serve runs one request in the background and reports its answer when
// the proxy has given one.
func serve(ctx context.Context, p *CAProxy) <-chan *httptest.ResponseRecorder {
	out := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		w := httptest.NewRecorder()
		p.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/root/abc", nil).WithContext(ctx))
		out <- w
	}()
	return out
}

func waitHeld(t *testing.T, p *CAProxy, n int) {
	t.Helper()
	for p.heldNow() != n {
		time.Sleep(time.Millisecond)
	}
}

// HoldUntil holds every faulted request until that many are held at once,
// answers them together, then answers later ones at once; a client that
// gives up while held gets nothing and is counted out.
func TestCAProxyHoldsThenFailsTogether(t *testing.T) {
	p := proxyForFaults(t, &Fault{Status: 404, Share: 1, HTML: BalancerNotFound, HoldUntil: 3, Until: time.Now().Add(time.Hour)})
	gone, giveUp := context.WithCancel(context.Background())
	quitter := serve(gone, p)
	waitHeld(t, p, 1)
	giveUp()
	<-quitter
	waitHeld(t, p, 0)

	first, second := serve(context.Background(), p), serve(context.Background(), p)
	waitHeld(t, p, 2)
	select {
	case <-first:
		t.Fatal("a request was answered before HoldUntil requests were held")
	case <-second:
		t.Fatal("a request was answered before HoldUntil requests were held")
	default:
	}
	third := serve(context.Background(), p)
	for i, c := range []<-chan *httptest.ResponseRecorder{first, second, third, serve(context.Background(), p)} {
		w := <-c
		if w.Code != 404 || !strings.Contains(w.Body.String(), "404 Not Found") || w.Header().Get("Content-Type") != "text/html" {
			t.Errorf("request %d: %d %q %q, want the balancer's 404 page", i, w.Code, w.Header().Get("Content-Type"), w.Body.String())
		}
	}
	ev := p.Events()
	if len(ev) != 5 || ev[0].Status != 0 || !ev[0].Faulted {
		t.Errorf("events %+v: want 5, the first one faulted and unanswered (status 0)", ev)
	}
	// A new fault lets go of nothing left over and holds afresh.
	p.SetFault(&Fault{Status: 503, Share: 1, HoldUntil: 2, Until: time.Now().Add(time.Hour)})
	held := serve(context.Background(), p)
	waitHeld(t, p, 1)
	p.SetFault(nil) // removing the fault answers what it held
	if w := <-held; w.Code != 503 {
		t.Errorf("a request held by a removed fault got %d, want the fault's 503", w.Code)
	}
}

// hello records the node that opened a connection by its SNI, when the
// kernel saw it; other names are not nodes.
func TestCAProxyHello(t *testing.T) {
	p := proxyForFaults(t, nil)
	for _, tc := range []struct {
		sni  string
		conn net.Conn
		node string
	}{
		{"healthy-00042.ca.cp.internal", &stampConn{at: 5 * ms, accepted: 9 * ms}, "healthy-00042"},
		{"FAIL-Together-00001.CA.cp.internal", &stampConn{at: 7 * ms, accepted: 7 * ms}, "fail-together-00001"},
		{"ca.cp.internal", &stampConn{}, ""},
		{".ca.cp.internal", &stampConn{}, ""},
		{"node-api.cp.internal", &stampConn{}, ""},
		{"x.ca.cp.internal", nil, ""}, // not a connection the proxy accepted
	} {
		cfg, err := p.hello(&tls.ClientHelloInfo{ServerName: tc.sni, Conn: tc.conn})
		if cfg != nil || err != nil {
			t.Errorf("%s: hello changed the handshake: %v %v", tc.sni, cfg, err)
		}
	}
	got := p.Conns()
	want := []Conn{{At: 5 * ms, Accepted: 9 * ms, Node: "healthy-00042"}, {At: 7 * ms, Accepted: 7 * ms, Node: "fail-together-00001"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("Conns = %+v, want %+v", got, want)
	}
	if h := p.NodeHostname("n-1"); h != "n-1.ca.cp.internal" {
		t.Errorf("NodeHostname = %q", h)
	}
}

// sinceLastReceived reads the kernel's record of a real TCP connection and
// answers 0 for anything else.
func TestSinceLastReceived(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if d := sinceLastReceived(a); d != 0 {
		t.Errorf("a pipe: %s, want 0", d)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Read(make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	if d := sinceLastReceived(s); d < 0 || d%time.Millisecond != 0 {
		t.Errorf("a TCP connection: %s, want whole milliseconds >= 0", d)
	}
}

// A fault with For starts its clock at the first request; Mark sees that
// request come.
func TestCAProxyFaultStartsWithTheTraffic(t *testing.T) {
	p := proxyForFaults(t, &Fault{Status: 503, Share: 1, For: time.Hour})
	mark := p.Mark()
	select {
	case <-mark:
		t.Fatal("marked before any request")
	default:
	}
	before := time.Now()
	if w := <-serve(context.Background(), p); w.Code != 503 {
		t.Errorf("first request: %d, want the fault's 503", w.Code)
	}
	<-mark
	p.mu.Lock()
	until := p.fault.Until
	p.mu.Unlock()
	if until.Before(before.Add(time.Hour)) {
		t.Errorf("the fault ends at %s, want an hour after the first request (%s)", until, before)
	}
	p.SetFault(&Fault{Status: 503, Share: 1}) // no For, no Until: over at its first request
	if w := <-serve(context.Background(), p); w.Code != 299 {
		t.Errorf("a fault with neither Until nor For: %d, want the request forwarded (299)", w.Code)
	}
}
