package ingress

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// Header names each ingress is configured to send to the upstream. They are
// the default names of the clientcert package (clientcert.DefaultHeaderNames;
// TestHeaderNamesMatchClientcert keeps them in step), so an API built on it
// detects every ingress's format without configuration. To reproduce the
// incident's "API understood one format, the ingress emitted another",
// restrict the API's clientcert.ParseOptions.Formats instead.
const (
	// NginxCertHeader carries $ssl_client_escaped_cert: the leaf only, full
	// PEM (BEGIN/END lines and newlines) escaped like a URI component.
	NginxCertHeader = "X-SSL-Client-Cert"
	// NginxVerifyHeader carries $ssl_client_verify ("SUCCESS" when the
	// request got through verification).
	NginxVerifyHeader = "X-SSL-Client-Verify"

	// HAProxyCertHeader carries %[ssl_c_der,base64]: the leaf's DER,
	// standard base64 on one line.
	HAProxyCertHeader = "X-SSL-Client-Cert-DER"
	// HAProxyChainHeader carries %[ssl_c_chain_der,base64]: the
	// certificates the client sent after its leaf, DER concatenated without
	// separators, then base64.
	HAProxyChainHeader = "X-SSL-Client-Chain-DER"
	// HAProxyUsedHeader carries %[ssl_c_used]: "1" when the connection
	// carried a client certificate.
	HAProxyUsedHeader = "X-SSL-Client-Used"
	// HAProxyVerifyHeader carries %[ssl_c_verify]: "0" when verification
	// succeeded (an OpenSSL X509_V_ERR code otherwise).
	HAProxyVerifyHeader = "X-SSL-Client-Verify"

	// CaddyCertHeader carries {http.request.tls.client.certificate_der_base64}:
	// the leaf's DER, standard base64.
	CaddyCertHeader = "X-Client-Cert"

	// TraefikCertHeader is passTLSClientCert's pem header: every certificate
	// the client sent, leaf first, each as standard base64 DER, joined by ","
	// (Traefik v2.9.2+ and v3; not URL-escaped).
	TraefikCertHeader = "X-Forwarded-Tls-Client-Cert"
	// TraefikInfoHeader is passTLSClientCert's info header:
	// url.QueryEscape of the quote-aware field string.
	TraefikInfoHeader = "X-Forwarded-Tls-Client-Cert-Info"
)

// Encoding names how a forwarded certificate header value is encoded.
type Encoding string

// The encodings the ingresses here emit.
const (
	// EscapedPEM is nginx's $ssl_client_escaped_cert: URL-escaped PEM of the
	// leaf. Decode with url.PathUnescape (nginx escapes "+" as %2B, so
	// QueryUnescape also works).
	EscapedPEM Encoding = "url-escaped-pem"
	// Base64DER is the leaf's DER in standard base64 (HAProxy, Caddy).
	Base64DER Encoding = "base64-der"
	// Base64DERChain is Traefik's pem value: standard base64 DER per
	// certificate, leaf first, comma-separated.
	Base64DERChain Encoding = "base64-der-comma-chain"
)

// Forwarding records how an ingress forwards the client certificate.
type Forwarding struct {
	// Header carries the certificate; "" when nothing is forwarded.
	Header string
	// Format is the clientcert.Format name of this wire format ("nginx",
	// "haproxy", "caddy", "traefik").
	Format string
	// Encoding of Header's value.
	Encoding Encoding
	// Chain reports whether Header carries the intermediates the client sent
	// (only Traefik's); HAProxy sends them in ChainHeader instead.
	Chain bool
	// ChainHeader, InfoHeader, VerifyHeader and UsedHeader are the extra
	// headers, when the ingress sends them.
	ChainHeader, InfoHeader, VerifyHeader, UsedHeader string
}

// ForwardingFor returns how kind forwards the client certificate with the
// given options.
func ForwardingFor(kind Kind, opts Options) Forwarding {
	if opts.NoForwardCert {
		return Forwarding{}
	}
	switch kind {
	case Nginx:
		return Forwarding{Header: NginxCertHeader, Format: "nginx", Encoding: EscapedPEM, VerifyHeader: NginxVerifyHeader}
	case HAProxy:
		return Forwarding{Header: HAProxyCertHeader, Format: "haproxy", Encoding: Base64DER, ChainHeader: HAProxyChainHeader,
			VerifyHeader: HAProxyVerifyHeader, UsedHeader: HAProxyUsedHeader}
	case Caddy:
		return Forwarding{Header: CaddyCertHeader, Format: "caddy", Encoding: Base64DER}
	case Traefik:
		f := Forwarding{Header: TraefikCertHeader, Format: "traefik", Encoding: Base64DERChain, Chain: true}
		if opts.TraefikInfo {
			f.InfoHeader = TraefikInfoHeader
		}
		return f
	}
	return Forwarding{}
}

// ErrNotForwarded means the request carried no certificate header.
var ErrNotForwarded = errors.New("no forwarded client certificate header")

// Decode parses the forwarded certificate(s) out of h with this package's
// own reading of the format: a reference decoder for tests, independent of
// the clientcert package. It returns the leaf first, then any intermediates
// the header carried. It does not verify anything.
func (f Forwarding) Decode(h http.Header) ([]*x509.Certificate, error) {
	if f.Header == "" {
		return nil, ErrNotForwarded
	}
	v := h.Get(f.Header)
	if v == "" {
		return nil, ErrNotForwarded
	}
	var ders [][]byte
	switch f.Encoding {
	case EscapedPEM:
		p, err := url.PathUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("unescaping %s: %w", f.Header, err)
		}
		rest := []byte(p)
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			ders = append(ders, b.Bytes)
		}
		if len(ders) == 0 {
			return nil, fmt.Errorf("%s: no PEM block", f.Header)
		}
	case Base64DER, Base64DERChain:
		parts := []string{v}
		if f.Encoding == Base64DERChain {
			parts = strings.Split(v, ",")
		}
		for _, p := range parts {
			der, err := base64.StdEncoding.DecodeString(p)
			if err != nil {
				return nil, fmt.Errorf("decoding %s: %w", f.Header, err)
			}
			ders = append(ders, der)
		}
	default:
		return nil, fmt.Errorf("unknown encoding %q", f.Encoding)
	}
	if f.ChainHeader != "" {
		if c := h.Get(f.ChainHeader); c != "" {
			der, err := base64.StdEncoding.DecodeString(c)
			if err != nil {
				return nil, fmt.Errorf("decoding %s: %w", f.ChainHeader, err)
			}
			ders = append(ders, der) // concatenated DER: ParseCertificates splits it
		}
	}
	var certs []*x509.Certificate
	for _, der := range ders {
		cs, err := x509.ParseCertificates(der)
		if err != nil {
			return nil, fmt.Errorf("parsing forwarded certificate: %w", err)
		}
		certs = append(certs, cs...)
	}
	return certs, nil
}
