package ingress

// This file is an EMULATION of Traefik, not Traefik. Traefik's binary cannot
// be built in this project's build environment (parts of its module graph
// are unavailable), so Kind Traefik reproduces, in-process, the behaviour of
// Traefik v3.x (checked against v3.0.0–v3.7.9 as documented in
// ../shared/reference/ingress-and-forwarded-certs.md §1–§4) that matters to
// the node API, configured like the reference's §2.2 example:
//
//   - an entry point without forwardedHeaders.trustedIPs: client-supplied
//     X-Forwarded-Tls-Client-Cert(-Info) and the other X-Forwarded-* headers
//     are deleted from every request (underscore variants are NOT stripped:
//     only newest master does that);
//   - one router, rule Host(`<Hostname>`), TLS option "mtls" (clientAuth
//     RequireAndVerifyClientCert, caFiles = [ClientCAFile]), middleware
//     passTLSClientCert{pem: true} (plus every info field with TraefikInfo)
//     unless NoForwardCert, service = Upstream via httputil.ReverseProxy;
//   - TLS options chosen by SNI alone: SNI equal to Hostname gets "mtls",
//     anything else (including no SNI) gets "default" (no client auth,
//     minVersion TLS 1.2);
//   - caFiles read as FileOrContent (a path that does not exist is taken as
//     inline PEM); if it does not parse, the option is broken and a
//     connection whose SNI selects it is closed right after its ClientHello
//     is read: no alert, no server certificate, the client sees EOF
//     (v2.9.6+ brokenTLSRouter);
//   - certificate choice: the configured certificate when the SNI matches it,
//     or when there is no SNI and the certificate has an IP SAN equal to the
//     accepted connection's local address; otherwise the generated
//     self-signed "TRAEFIK DEFAULT CERT" (RSA-2048, one
//     <32hex>.<32hex>.traefik.default DNS SAN, serverAuth, one year);
//   - snicheck: when Host and SNI differ and resolve to different TLS
//     options, 421 with the text/plain body "Misdirected Request";
//   - no router for the Host: Go's http.NotFound, 404 "404 page not found";
//   - upstream errors mapped like Traefik's ErrorHandler: timeouts 504
//     "Gateway Timeout", EOF and other network errors 502 "Bad Gateway";
//     UpstreamTimeout is serversTransport forwardingTimeouts.responseHeaderTimeout.
//
// Not emulated: HTTP/3, ACME, the dashboard/API, sniStrict, access logs, and
// the exact text of Traefik's own log lines.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
)

// Traefik's TLS option names in the emulated configuration.
const (
	traefikDefaultOption = "default"
	traefikMTLSOption    = "mtls"
)

// traefikManagedHeaders are the headers the entry point deletes from requests
// of untrusted clients (forwardedheaders.XHeadersSet).
var traefikManagedHeaders = []string{
	"X-Forwarded-Proto", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Port",
	"X-Forwarded-Server", "X-Forwarded-Uri", "X-Forwarded-Method",
	TraefikCertHeader, TraefikInfoHeader, "X-Real-Ip",
}

type traefikEmu struct {
	opts        Options
	log         *log.Logger
	serverCert  *tls.Certificate
	defaultCert *tls.Certificate
	options     map[string]*tls.Config // nil value: broken option
	upstream    *url.URL
	proxy       *httputil.ReverseProxy
	transport   *http.Transport
	ln          net.Listener
	conns       *testenv.ChanListener
	srv         *http.Server
	wg          sync.WaitGroup
}

func startTraefik(in *Ingress, o Options) error {
	t := &traefikEmu{opts: o, log: log.New(in.log, "traefik-emulation ", log.LstdFlags|log.Lmicroseconds)}
	cert, err := tls.LoadX509KeyPair(o.ServerCertFile, o.ServerKeyFile)
	if err != nil {
		return fmt.Errorf("loading server certificate: %w", err)
	}
	t.serverCert = &cert
	if t.defaultCert, err = traefikDefaultCertificate(); err != nil {
		return err
	}
	base := func() *tls.Config {
		return &tls.Config{
			MinVersion:     tls.VersionTLS12,
			NextProtos:     []string{"http/1.1"},
			GetCertificate: t.getCertificate,
		}
	}
	mtls := base()
	pool, err := traefikCAPool([]string{o.ClientCAFile})
	if err != nil {
		// What Traefik logs at ERROR when building the router; the router's
		// SNI then gets the special closing route.
		t.log.Printf("ERR building router handler: building TLS config: %v (router node-api@file)", err)
		t.log.Printf("DBG Adding special closing route for %s because of a broken TLS options", o.Hostname)
		mtls = nil
	} else {
		mtls.ClientAuth = tls.RequireAndVerifyClientCert
		mtls.ClientCAs = pool
	}
	t.options = map[string]*tls.Config{traefikDefaultOption: base(), traefikMTLSOption: mtls}

	t.upstream, _ = url.Parse(o.Upstream)
	t.transport = &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
		ResponseHeaderTimeout: o.UpstreamTimeout,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   200,
	}
	t.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(t.upstream)
			pr.Out.Host = pr.In.Host // passHostHeader: true
			pr.SetXForwarded()
			for _, h := range []string{"X-Forwarded-Port", "X-Forwarded-Server", "X-Real-Ip"} {
				if v := pr.In.Header.Get(h); v != "" {
					pr.Out.Header.Set(h, v)
				}
			}
		},
		Transport:    t.transport,
		ErrorHandler: t.proxyError,
		ErrorLog:     t.log,
	}

	t.ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("traefik emulation listening: %w", err)
	}
	in.Port = t.ln.Addr().(*net.TCPAddr).Port
	in.Addr = t.ln.Addr().String()
	in.URL = "https://" + net.JoinHostPort(o.Hostname, strconv.Itoa(in.Port))
	in.Forwarding = ForwardingFor(Traefik, o)

	t.conns = testenv.NewChanListener(t.ln.Addr())
	t.srv = &http.Server{
		Handler:     t,
		ReadTimeout: 60 * time.Second, // v3 entryPoints respondingTimeouts defaults
		IdleTimeout: 180 * time.Second,
		ErrorLog:    t.log,
	}
	t.wg.Add(2)
	go func() { defer t.wg.Done(); t.acceptLoop() }()
	go func() { defer t.wg.Done(); t.srv.Serve(t.conns) }()
	in.stop = t.close
	return nil
}

func (t *traefikEmu) close() error {
	err := t.ln.Close()
	t.conns.Close()
	t.srv.Close()
	t.transport.CloseIdleConnections()
	t.wg.Wait()
	return err
}

func (t *traefikEmu) acceptLoop() {
	for {
		c, err := t.ln.Accept()
		if err != nil {
			return
		}
		go t.route(c)
	}
}

// route is the TCP router: it reads the ClientHello, picks the TLS option
// from the SNI, and closes the connection when that option is broken.
func (t *traefikEmu) route(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	sni, peeked, err := peekServerName(c)
	if err != nil {
		t.log.Printf("DBG error while peeking client hello from %s: %v", c.RemoteAddr(), err)
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	name := t.optionForName(sni)
	cfg := t.options[name]
	if cfg == nil {
		t.log.Printf("DBG closing connection from %s: TLS option %s@file is broken (SNI %q)", c.RemoteAddr(), name, sni)
		c.Close()
		return
	}
	tc := tls.Server(&prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(peeked), c)}, cfg)
	t.conns.Push(tc)
}

// optionForName is findTLSOptionName: the router's option for its Host
// domain, "default" for anything else.
func (t *traefikEmu) optionForName(name string) string {
	name = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(name)), ".")
	if name != "" && name == strings.ToLower(t.opts.Hostname) {
		return traefikMTLSOption
	}
	return traefikDefaultOption
}

func (t *traefikEmu) getCertificate(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
	leaf := t.serverCert.Leaf
	if h.ServerName != "" {
		if leaf.VerifyHostname(strings.TrimSuffix(h.ServerName, ".")) == nil {
			return t.serverCert, nil
		}
		return t.defaultCert, nil
	}
	if a, ok := h.Conn.LocalAddr().(*net.TCPAddr); ok {
		for _, ip := range leaf.IPAddresses {
			if ip.Equal(a.IP) {
				return t.serverCert, nil
			}
		}
	}
	return t.defaultCert, nil
}

// ServeHTTP is the entry point's handler chain: forwarded-headers
// sanitising, snicheck, then the Host muxer and the router's chain.
func (t *traefikEmu) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	for _, h := range traefikManagedHeaders {
		r.Header.Del(h)
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	r.Header.Set("X-Forwarded-Proto", "https")
	r.Header.Set("X-Forwarded-Host", r.Host)
	if _, port, err := net.SplitHostPort(r.Context().Value(http.LocalAddrContextKey).(net.Addr).String()); err == nil {
		r.Header.Set("X-Forwarded-Port", port)
	}
	if hn, err := os.Hostname(); err == nil {
		r.Header.Set("X-Forwarded-Server", hn)
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		r.Header.Set("X-Real-Ip", ip)
	}

	if r.TLS != nil {
		sni := strings.TrimSpace(r.TLS.ServerName)
		if !strings.EqualFold(host, sni) && t.optionForName(host) != t.optionForName(sni) {
			t.log.Printf("DBG TLS options difference: SNI:%s, Header:%s", t.optionForName(sni), t.optionForName(host))
			http.Error(w, http.StatusText(http.StatusMisdirectedRequest), http.StatusMisdirectedRequest)
			return
		}
	}
	if !strings.EqualFold(strings.TrimSuffix(host, "."), t.opts.Hostname) {
		http.NotFound(w, r)
		return
	}
	if !t.opts.NoForwardCert {
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			r.Header.Set(TraefikCertHeader, TraefikPEMValue(r.TLS.PeerCertificates))
			if t.opts.TraefikInfo {
				r.Header.Set(TraefikInfoHeader, url.QueryEscape(TraefikInfoValue(r.TLS.PeerCertificates)))
			}
		} else {
			t.log.Printf("DBG Tried to extract a certificate on a request without mutual TLS")
		}
	}
	t.proxy.ServeHTTP(w, r)
}

// proxyError is Traefik's ErrorHandler / ComputeStatusCode.
func (t *traefikEmu) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	var netErr net.Error
	switch {
	case errors.Is(err, io.EOF):
		status = http.StatusBadGateway
	case errors.Is(err, context.Canceled):
		status = 499 // Traefik's StatusClientClosedRequest
	case errors.As(err, &netErr):
		status = http.StatusBadGateway
		if netErr.Timeout() {
			status = http.StatusGatewayTimeout
		}
	}
	t.log.Printf("DBG %d '%s' caused by: %v", status, http.StatusText(status), err)
	w.WriteHeader(status)
	text := http.StatusText(status)
	if status == 499 {
		text = "Client Closed Request"
	}
	io.WriteString(w, text)
}

// TraefikPEMValue is passTLSClientCert's pem value for the certificates as
// the client sent them (v2.9.2+ and v3): each certificate PEM-encoded, its
// BEGIN/END lines and newlines removed, joined with ",".
func TraefikPEMValue(certs []*x509.Certificate) string {
	strip := strings.NewReplacer("-----BEGIN CERTIFICATE-----", "", "-----END CERTIFICATE-----", "", "\n", "")
	parts := make([]string, 0, len(certs))
	for _, c := range certs {
		parts = append(parts, strip.Replace(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))))
	}
	return strings.Join(parts, ",")
}

// TraefikInfoValue is passTLSClientCert's info string (getCertInfo) with
// every option enabled, before the url.QueryEscape that Traefik applies to
// the header value. Values are quoted but never escaped, exactly as Traefik
// does, so it is not reliably splittable.
func TraefikInfoValue(certs []*x509.Certificate) string {
	var perCert []string
	for _, c := range certs {
		var values []string
		if s := traefikDN(&c.Subject, true); s != "" {
			values = append(values, `Subject="`+s+`"`)
		}
		if s := traefikDN(&c.Issuer, false); s != "" {
			values = append(values, `Issuer="`+s+`"`)
		}
		if c.SerialNumber != nil {
			if sn := c.SerialNumber.String(); sn != "" {
				values = append(values, `SerialNumber="`+sn+`"`)
			}
		}
		values = append(values, fmt.Sprintf(`NB="%d"`, uint64(c.NotBefore.Unix())))
		values = append(values, fmt.Sprintf(`NA="%d"`, uint64(c.NotAfter.Unix())))
		var sans []string
		sans = append(sans, c.DNSNames...)
		sans = append(sans, c.EmailAddresses...)
		for _, ip := range c.IPAddresses {
			sans = append(sans, ip.String())
		}
		for _, u := range c.URIs {
			sans = append(sans, u.String())
		}
		if len(sans) > 0 {
			values = append(values, `SAN="`+strings.Join(sans, ",")+`"`)
		}
		perCert = append(perCert, strings.Join(values, ";"))
	}
	return strings.Join(perCert, ",")
}

// traefikDN is getSubjectDNInfo / getIssuerDNInfo with every part enabled:
// DC, C, ST, L, O, OU (subject only), SN, CN, each "K=v,", trailing comma
// trimmed, no escaping.
func traefikDN(n *pkix.Name, subject bool) string {
	var b strings.Builder
	for _, atv := range n.Names {
		if atv.Type.String() == "0.9.2342.19200300.100.1.25" {
			fmt.Fprintf(&b, "DC=%v,", atv.Value)
		}
	}
	parts := func(key string, vals []string) {
		for _, v := range vals {
			if v != "" {
				b.WriteString(key + "=" + v + ",")
			}
		}
	}
	parts("C", n.Country)
	parts("ST", n.Province)
	parts("L", n.Locality)
	parts("O", n.Organization)
	if subject {
		parts("OU", n.OrganizationalUnit)
	}
	parts("SN", []string{n.SerialNumber})
	parts("CN", []string{n.CommonName})
	return strings.TrimSuffix(b.String(), ",")
}

// traefikCAPool reads caFiles as Traefik's FileOrContent does: an entry that
// os.Stat finds is a file, anything else is inline PEM content.
func traefikCAPool(caFiles []string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	for _, f := range caFiles {
		data := []byte(f)
		isPath := false
		if _, err := os.Stat(f); err == nil {
			isPath = true
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("failed to read CA %s: %w", f, err)
			}
			data = b
		}
		if !pool.AppendCertsFromPEM(data) {
			if isPath {
				return nil, fmt.Errorf("invalid certificate(s) in %s", f)
			}
			return nil, errors.New("invalid certificate(s) content")
		}
	}
	return pool, nil
}

// traefikDefaultCertificate is pkg/tls/generate DefaultCertificate.
func traefikDefaultCertificate() (*tls.Certificate, error) {
	rnd := make([]byte, 32)
	rand.Read(rnd)
	z := sha256.Sum256(rnd)
	domain := fmt.Sprintf("%x.%x.traefik.default", z[:16], z[16:])
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("generating default certificate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	leaf, err := controlplane.SelfSigned(controlplane.LeafRequest{
		CommonName: "TRAEFIK DEFAULT CERT", DNSNames: []string{domain}, Key: key, Serial: serial,
		NotBefore: now, NotAfter: now.Add(365 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("generating default certificate: %w", err)
	}
	c := leaf.TLSCertificate()
	return &c, nil
}

var errHelloPeeked = errors.New("client hello peeked")

// peekServerName reads the ClientHello through a throw-away TLS server that
// stops at GetConfigForClient, and returns its SNI and every byte read, to
// be replayed to the real TLS server.
func peekServerName(c net.Conn) (string, []byte, error) {
	var buf bytes.Buffer
	var sni string
	seen := false
	err := tls.Server(readOnlyConn{Conn: c, r: io.TeeReader(c, &buf)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			sni, seen = h.ServerName, true
			return nil, errHelloPeeked
		},
	}).Handshake()
	if !seen {
		return "", nil, err
	}
	return sni, buf.Bytes(), nil
}

// readOnlyConn reads from r and swallows writes (the alert the throw-away
// TLS server sends).
type readOnlyConn struct {
	net.Conn
	r io.Reader
}

func (c readOnlyConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c readOnlyConn) Write(p []byte) (int, error) { return len(p), nil }

// prefixConn replays the peeked bytes before the rest of the connection.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }
