package ingress

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// upstream is the plain-HTTP backend behind the ingress. It records the
// headers of every request it receives. /wait is a long poll that only ends
// when the ingress gives up on it (or after a minute).
type upstream struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []http.Header
	done chan struct{}
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{done: make(chan struct{})}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.reqs = append(u.reqs, r.Header.Clone())
		u.mu.Unlock()
		if r.URL.Path == "/wait" {
			select {
			case <-r.Context().Done():
			case <-u.done:
			case <-time.After(time.Minute):
			}
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("X-Upstream", "yes")
		io.WriteString(w, "upstream ok")
	}))
	t.Cleanup(func() {
		close(u.done)
		u.srv.Close()
	})
	return u
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.reqs)
}

func (u *upstream) last() http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		return nil
	}
	return u.reqs[len(u.reqs)-1]
}

// client describes how the test client connects.
type client struct {
	cert *tls.Certificate
	// viaCallback presents cert through GetClientCertificate, bypassing Go's
	// acceptable-CA filter, so the server's real verdict is seen.
	viaCallback bool
	maxVersion  uint16
	// rawIP dials https://127.0.0.1:port (no SNI, Host = the IP) and does
	// not verify the server certificate, recording it instead.
	rawIP bool
	// host overrides the Host header (SNI stays the hostname).
	host string
}

// observation is what the client saw.
type observation struct {
	status   int
	body     string
	err      error
	serverCN string
}

func (o observation) String() string {
	if o.err != nil {
		return fmt.Sprintf("error %q (server cert %q)", o.err.Error(), o.serverCN)
	}
	return fmt.Sprintf("HTTP %d body %q (server cert %q)", o.status, strings.TrimSpace(o.body), o.serverCN)
}

func tlsName(v uint16) string {
	if v == tls.VersionTLS12 {
		return "TLS1.2"
	}
	return "TLS1.3"
}

func (p *testPKI) do(t *testing.T, in *Ingress, c client, path string, extra http.Header) observation {
	t.Helper()
	var obs observation
	var mu sync.Mutex
	cfg := &tls.Config{
		RootCAs:    p.pool,
		ServerName: testHostname,
		MaxVersion: c.maxVersion,
		VerifyConnection: func(cs tls.ConnectionState) error {
			mu.Lock()
			defer mu.Unlock()
			if len(cs.PeerCertificates) > 0 {
				obs.serverCN = cs.PeerCertificates[0].Subject.CommonName
			}
			return nil
		},
	}
	if c.cert != nil {
		if c.viaCallback {
			cert := c.cert
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
		} else {
			cfg.Certificates = []tls.Certificate{*c.cert}
		}
	}
	url := in.URL + path
	if c.rawIP {
		cfg.ServerName = ""
		cfg.InsecureSkipVerify = true
		url = "https://" + in.Addr + path
	}
	tr := &http.Transport{DialContext: in.DialContext, TLSClientConfig: cfg, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range extra {
		req.Header[k] = v
	}
	if c.host != "" {
		req.Host = c.host
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		obs.err = err
		return obs
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	obs.status, obs.body = resp.StatusCode, string(b)
	return obs
}

// startIngress starts kind with opts and stops it at cleanup, dumping its
// log when the test failed.
func startIngress(t *testing.T, kind Kind, opts Options) *Ingress {
	t.Helper()
	in, err := Start(context.Background(), kind, opts)
	if err != nil {
		t.Fatalf("starting %s: %v", kind, err)
	}
	t.Cleanup(func() {
		if err := in.Stop(); err != nil {
			t.Errorf("stopping %s: %v", kind, err)
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", kind, in.Log())
		}
	})
	return in
}

func (p *testPKI) options(u *upstream) Options {
	return Options{
		Hostname:       testHostname,
		ServerCertFile: p.serverCertFile,
		ServerKeyFile:  p.serverKeyFile,
		ClientCAFile:   p.rootFile,
		Upstream:       u.srv.URL,
		Default404:     true,
	}
}
