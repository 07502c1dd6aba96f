package clientcert

import "net/http"

// Format names a forwarded-certificate wire format. The values are stable and
// appear as the `format` log/JSON key.
type Format string

// Formats understood by [Parse] and [Verifier].
const (
	// FormatTraefik: Traefik v2.9.2+ and v3 passTLSClientCert with pem: true.
	// X-Forwarded-Tls-Client-Cert = base64 DER of every certificate the
	// client sent, leaf first, joined by ",".
	FormatTraefik Format = "traefik"
	// FormatTraefikEscaped: Traefik v2.0.0 to v2.9.1, the same value passed
	// through url.QueryEscape. Naming either Traefik format accepts both; the
	// Result reports which one arrived.
	FormatTraefikEscaped Format = "traefik-escaped"
	// FormatNginx: nginx $ssl_client_escaped_cert, the URL-escaped PEM leaf.
	FormatNginx Format = "nginx"
	// FormatEnvoy: Envoy/Istio x-forwarded-client-cert (XFCC). The
	// certificate is taken from the Cert/Chain keys of one element, by
	// default the last (see ParseOptions.EnvoyElement).
	FormatEnvoy Format = "envoy-xfcc"
	// FormatHAProxy: HAProxy %[ssl_c_der,base64], optionally with
	// %[ssl_c_chain_der,base64] (intermediates, concatenated DER) in a
	// second header. Surrounding double quotes (from %{+Q}) are accepted.
	FormatHAProxy Format = "haproxy"
	// FormatCaddy: Caddy {http.request.tls.client.certificate_der_base64}.
	FormatCaddy Format = "caddy"
	// FormatALB: AWS Application Load Balancer mTLS, X-Amzn-Mtls-Clientcert
	// (passthrough mode: URL-encoded PEM chain with "+", "=", "/" left
	// unescaped) or X-Amzn-Mtls-Clientcert-Leaf (verify mode).
	FormatALB Format = "aws-alb"
	// FormatRFC9440: RFC 9440 Client-Cert (":base64(DER):") and optional
	// Client-Cert-Chain (list of byte sequences, leaf excluded), as sent by
	// Cloudflare and Google Cloud load balancers.
	FormatRFC9440 Format = "rfc9440"
	// FormatTLS is not a header: the client presented its certificate to
	// this server directly (r.TLS.PeerCertificates), with no ingress between.
	FormatTLS Format = "tls"
)

// HeaderNames are the header names read for each format. A zero field means
// the default from [DefaultHeaderNames]. Names are case-insensitive.
type HeaderNames struct {
	Traefik      string // X-Forwarded-Tls-Client-Cert
	TraefikInfo  string // X-Forwarded-Tls-Client-Cert-Info (supplementary only)
	Nginx        string // X-SSL-Client-Cert
	Envoy        string // X-Forwarded-Client-Cert
	HAProxy      string // X-SSL-Client-Cert-DER
	HAProxyChain string // X-SSL-Client-Chain-DER
	Caddy        string // X-Client-Cert
	ALB          string // X-Amzn-Mtls-Clientcert
	ALBLeaf      string // X-Amzn-Mtls-Clientcert-Leaf
	RFC9440      string // Client-Cert
	RFC9440Chain string // Client-Cert-Chain
}

// DefaultHeaderNames returns the default header name of every format. The
// names that are fixed by the ingress (Traefik, Envoy, AWS ALB, RFC 9440)
// are the ones it sends; the others (nginx, HAProxy, Caddy), which the
// operator chooses in the ingress configuration, are this package's
// conventions, listed with their ingress configuration in [KnownFormats].
func DefaultHeaderNames() HeaderNames {
	return HeaderNames{
		Traefik:      "X-Forwarded-Tls-Client-Cert",
		TraefikInfo:  "X-Forwarded-Tls-Client-Cert-Info",
		Nginx:        "X-SSL-Client-Cert",
		Envoy:        "X-Forwarded-Client-Cert",
		HAProxy:      "X-SSL-Client-Cert-DER",
		HAProxyChain: "X-SSL-Client-Chain-DER",
		Caddy:        "X-Client-Cert",
		ALB:          "X-Amzn-Mtls-Clientcert",
		ALBLeaf:      "X-Amzn-Mtls-Clientcert-Leaf",
		RFC9440:      "Client-Cert",
		RFC9440Chain: "Client-Cert-Chain",
	}
}

func (h HeaderNames) withDefaults() HeaderNames {
	d := DefaultHeaderNames()
	set := func(dst *string, def string) {
		if *dst == "" {
			*dst = def
		} else {
			*dst = http.CanonicalHeaderKey(*dst)
		}
	}
	set(&h.Traefik, d.Traefik)
	set(&h.TraefikInfo, d.TraefikInfo)
	set(&h.Nginx, d.Nginx)
	set(&h.Envoy, d.Envoy)
	set(&h.HAProxy, d.HAProxy)
	set(&h.HAProxyChain, d.HAProxyChain)
	set(&h.Caddy, d.Caddy)
	set(&h.ALB, d.ALB)
	set(&h.ALBLeaf, d.ALBLeaf)
	set(&h.RFC9440, d.RFC9440)
	set(&h.RFC9440Chain, d.RFC9440Chain)
	return h
}

// FormatInfo describes one format: where it comes from, its default header
// names, its encoding and how to make the ingress send it.
type FormatInfo struct {
	Format      Format
	Ingress     string
	Header      string // default header carrying the leaf (or chain)
	ChainHeader string // default header carrying intermediates, if any
	Encoding    string
	Setup       string // ingress configuration that emits exactly this
}

// KnownFormats lists every supported format with its default header names and
// the ingress configuration that produces it, so the ingress and the API can
// be configured to match.
func KnownFormats() []FormatInfo {
	d := DefaultHeaderNames()
	return []FormatInfo{
		{FormatTraefik, "Traefik v2.9.2+ and v3", d.Traefik, "",
			"base64 DER per certificate (no PEM armour, not escaped), leaf first, joined by \",\"",
			"middleware passTLSClientCert with pem: true on the router that has the mTLS TLS option; optional info block sends " + d.TraefikInfo + " (logged, never used as identity)"},
		{FormatTraefikEscaped, "Traefik v2.0.0 to v2.9.1", d.Traefik, "",
			"as traefik, then url.QueryEscape'd (+ / = as %2B %2F %3D)",
			"passTLSClientCert with pem: true"},
		{FormatNginx, "nginx 1.13.5+", d.Nginx, "",
			"URL-escaped PEM of the leaf ($ssl_client_escaped_cert)",
			"proxy_set_header " + d.Nginx + " $ssl_client_escaped_cert;"},
		{FormatEnvoy, "Envoy, Istio", d.Envoy, "",
			"XFCC: \",\"-separated elements of \";\"-separated Key=Value pairs; Cert/Chain are URL-encoded PEM",
			"forward_client_cert_details: SANITIZE_SET (edge) with set_current_client_cert_details {cert: true, chain: true}"},
		{FormatHAProxy, "HAProxy", d.HAProxy, d.HAProxyChain,
			"base64 DER of the leaf; chain header: base64 of the concatenated DER intermediates",
			"http-request set-header " + d.HAProxy + " %[ssl_c_der,base64] and http-request set-header " + d.HAProxyChain + " %[ssl_c_chain_der,base64] (HAProxy 2.8+; optional)"},
		{FormatCaddy, "Caddy v2", d.Caddy, "",
			"base64 DER of the leaf",
			"reverse_proxy { header_up " + d.Caddy + " {http.request.tls.client.certificate_der_base64} }"},
		{FormatALB, "AWS Application Load Balancer (mTLS)", d.ALB, "",
			"URL-encoded PEM chain with + = / unescaped (passthrough); " + d.ALBLeaf + " carries the leaf in verify mode",
			"listener mutual authentication mode passthrough or verify (header names fixed by AWS)"},
		{FormatRFC9440, "RFC 9440 (Cloudflare, Google Cloud)", d.RFC9440, d.RFC9440Chain,
			"structured-field byte sequence :base64(DER):; chain is a list of them, leaf excluded",
			"Cloudflare transform rule from cf.tls_client_auth.cert_rfc9440 / cert_chain_rfc9440; GCP custom headers {client_cert_leaf} / {client_cert_chain}"},
	}
}
