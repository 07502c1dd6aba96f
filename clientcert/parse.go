package clientcert

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Default limits. A Traefik header with a leaf and one intermediate is about
// 2-3 KB; the defaults leave ample room while refusing absurd input before any
// decoding.
const (
	DefaultMaxHeaderBytes = 32 << 10 // per format: sum of all its header values
	DefaultMaxChain       = 8        // certificates, leaf included
)

// ParseOptions select and bound the forwarded-header parsing. The zero value
// detects among all formats with default header names and limits.
type ParseOptions struct {
	// Formats restricts which formats are read. Empty: all, detected from
	// the headers present. One: only that format's headers are read (others
	// are ignored). Several: detected among those.
	Formats []Format
	// Headers overrides header names; zero fields keep the defaults.
	Headers HeaderNames
	// EnvoyElement selects the XFCC element, counted from the end: 0 (the
	// default) is the last element, the one appended by the proxy nearest to
	// the API. Behind an Istio gateway in SANITIZE_SET mode followed by the
	// API's own sidecar in APPEND_FORWARD mode, the node's element is 1.
	EnvoyElement int
	// MaxHeaderBytes caps the total size of one format's header values
	// (default DefaultMaxHeaderBytes).
	MaxHeaderBytes int
	// MaxChain caps the number of certificates, leaf included
	// (default DefaultMaxChain).
	MaxChain int
}

type family struct {
	format  Format
	headers []string // headers whose presence selects this family
	parse   func(h http.Header, o *ParseOptions) ([]*x509.Certificate, Format, error)
}

func (o ParseOptions) normalized() ParseOptions {
	o.Headers = o.Headers.withDefaults()
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if o.MaxChain <= 0 {
		o.MaxChain = DefaultMaxChain
	}
	if o.EnvoyElement < 0 {
		o.EnvoyElement = 0
	}
	return o
}

func (o *ParseOptions) families() []family {
	hn := o.Headers
	all := []family{
		{FormatTraefik, []string{hn.Traefik}, parseTraefikHeader},
		{FormatNginx, []string{hn.Nginx}, parseNginxHeader},
		{FormatEnvoy, []string{hn.Envoy}, parseEnvoyHeader},
		{FormatHAProxy, []string{hn.HAProxy, hn.HAProxyChain}, parseHAProxyHeader},
		{FormatCaddy, []string{hn.Caddy}, parseCaddyHeader},
		{FormatALB, []string{hn.ALB, hn.ALBLeaf}, parseALBHeader},
		{FormatRFC9440, []string{hn.RFC9440, hn.RFC9440Chain}, parseRFC9440Header},
	}
	if len(o.Formats) == 0 {
		return all
	}
	var out []family
	for _, f := range all {
		want := slices.Contains(o.Formats, f.format) ||
			(f.format == FormatTraefik && slices.Contains(o.Formats, FormatTraefikEscaped))
		if want {
			out = append(out, f)
		}
	}
	return out
}

// nonEmpty returns the values of header name that are not blank. A value of
// just "" counts as blank: HAProxy's %{+Q} quoting of an empty sample (no
// client certificate) sends exactly that.
func nonEmpty(h http.Header, name string) []string {
	var out []string
	for _, v := range h.Values(name) {
		if t := strings.TrimSpace(v); t != "" && t != `""` {
			out = append(out, v)
		}
	}
	return out
}

func (f family) present(h http.Header) []string {
	var names []string
	for _, n := range f.headers {
		if len(nonEmpty(h, n)) > 0 {
			names = append(names, n)
		}
	}
	return names
}

func (f family) size(h http.Header) int {
	n := 0
	for _, name := range f.headers {
		for _, v := range h.Values(name) {
			n += len(v)
		}
	}
	return n
}

// detect returns the one family whose headers are present, or an error with
// ReasonMissing or ReasonAmbiguous.
func detect(h http.Header, o *ParseOptions) (family, error) {
	var found []family
	var names []string
	for _, f := range o.families() {
		if p := f.present(h); len(p) > 0 {
			found = append(found, f)
			names = append(names, p...)
		}
	}
	switch len(found) {
	case 0:
		var looked []string
		for _, f := range o.families() {
			looked = append(looked, f.headers...)
		}
		detail := "no forwarded client-certificate header; looked for " + strings.Join(looked, ", ")
		if len(o.families()) == 0 {
			detail = "no formats enabled"
		}
		if info := nonEmpty(h, o.Headers.TraefikInfo); len(info) > 0 && slices.ContainsFunc(o.families(), func(f family) bool { return f.format == FormatTraefik }) {
			detail += "; only " + o.Headers.TraefikInfo + " is present: Traefik saw a client certificate but passTLSClientCert lacks pem: true"
		}
		return family{}, errorf(ReasonMissing, "", "%s", detail)
	case 1:
		return found[0], nil
	default:
		var fs []string
		for _, f := range found {
			fs = append(fs, string(f.format))
		}
		return family{}, errorf(ReasonAmbiguous, "", "headers of several formats present (%s: %s); refusing to guess",
			strings.Join(fs, ", "), strings.Join(names, ", "))
	}
}

// Parse reads the forwarded client certificate from h: it finds the format
// (named in opts.Formats or detected from the headers present), enforces the
// size limits and decodes the chain, leaf first. It makes no trust decision:
// it neither checks where the headers came from nor verifies the chain (see
// [Verifier] for that). The error is an [*Error]; use [ReasonOf] for its
// Reason (missing, ambiguous, malformed or too-large).
func Parse(h http.Header, opts ParseOptions) (chain []*x509.Certificate, format Format, err error) {
	o := opts.normalized()
	f, err := detect(h, &o)
	if err != nil {
		return nil, "", err
	}
	if n := f.size(h); n > o.MaxHeaderBytes {
		return nil, f.format, errorf(ReasonTooLarge, f.format, "%s headers are %d bytes, limit %d", f.format, n, o.MaxHeaderBytes)
	}
	chain, format, err = f.parse(h, &o)
	if err != nil {
		return nil, format, err
	}
	if len(chain) == 0 {
		return nil, format, errorf(ReasonMalformed, format, "no certificate decoded")
	}
	if len(chain) > o.MaxChain {
		return nil, format, errorf(ReasonTooLarge, format, "%d certificates, limit %d", len(chain), o.MaxChain)
	}
	return chain, format, nil
}

// single returns the only non-blank value of a header; a repeated header is
// ambiguous (two identities), a blank one yields "".
func single(h http.Header, name string, f Format) (string, error) {
	vs := nonEmpty(h, name)
	switch len(vs) {
	case 0:
		return "", nil
	case 1:
		return strings.TrimSpace(vs[0]), nil
	default:
		return "", errorf(ReasonAmbiguous, f, "header %s appears %d times", name, len(vs))
	}
}

func parseTraefikHeader(h http.Header, o *ParseOptions) ([]*x509.Certificate, Format, error) {
	v, err := single(h, o.Headers.Traefik, FormatTraefik)
	if err != nil {
		return nil, FormatTraefik, err
	}
	return parseTraefik(v, o.MaxChain)
}

// parseTraefik decodes a Traefik X-Forwarded-Tls-Client-Cert value, either
// plain (v2.9.2+, v3) or URL-escaped (v2.0.0-v2.9.1).
func parseTraefik(v string, maxChain int) ([]*x509.Certificate, Format, error) {
	f := FormatTraefik
	if strings.Contains(v, "%") {
		f = FormatTraefikEscaped
		u, err := url.QueryUnescape(v)
		if err != nil {
			return nil, f, errorf(ReasonMalformed, f, "URL unescape: %v", err)
		}
		v = u
	}
	parts := strings.Split(v, ",")
	if len(parts) > maxChain {
		return nil, f, errorf(ReasonTooLarge, f, "%d certificates, limit %d", len(parts), maxChain)
	}
	chain := make([]*x509.Certificate, 0, len(parts))
	for i, p := range parts {
		c, err := parseB64DER(strings.TrimSpace(p), f)
		if err != nil {
			err.Detail = "certificate " + strconv.Itoa(i) + ": " + err.Detail
			return nil, f, err
		}
		chain = append(chain, c)
	}
	return chain, f, nil
}

func parseB64DER(s string, f Format) (*x509.Certificate, *Error) {
	if s == "" {
		return nil, errorf(ReasonMalformed, f, "empty certificate")
	}
	der, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, errorf(ReasonMalformed, f, "base64: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, errorf(ReasonMalformed, f, "DER: %v", err)
	}
	return c, nil
}

func parseNginxHeader(h http.Header, o *ParseOptions) ([]*x509.Certificate, Format, error) {
	v, err := single(h, o.Headers.Nginx, FormatNginx)
	if err != nil {
		return nil, FormatNginx, err
	}
	c, err := parseEscapedPEM(v, FormatNginx, o.MaxChain)
	return c, FormatNginx, err
}

// parseEscapedPEM decodes URL-escaped PEM (nginx $ssl_client_escaped_cert,
// Envoy Cert/Chain, AWS ALB). It path-unescapes, so a literal "+" stays "+"
// (AWS leaves "+" unescaped); a space written as "+" in the armour lines is
// tolerated. Anything but CERTIFICATE blocks and whitespace is malformed.
func parseEscapedPEM(v string, f Format, maxChain int) ([]*x509.Certificate, error) {
	u, err := url.PathUnescape(v)
	if err != nil {
		return nil, errorf(ReasonMalformed, f, "URL unescape: %v", err)
	}
	u = strings.ReplaceAll(u, "BEGIN+CERTIFICATE", "BEGIN CERTIFICATE")
	u = strings.ReplaceAll(u, "END+CERTIFICATE", "END CERTIFICATE")
	rest := []byte(u)
	var chain []*x509.Certificate
	for {
		rest = bytes.TrimLeft(rest, " \t\r\n")
		if len(rest) == 0 {
			break
		}
		if !bytes.HasPrefix(rest, []byte("-----BEGIN ")) {
			return nil, errorf(ReasonMalformed, f, "unexpected data outside PEM blocks")
		}
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errorf(ReasonMalformed, f, "invalid PEM block")
		}
		if b.Type != "CERTIFICATE" {
			return nil, errorf(ReasonMalformed, f, "PEM block of type %q, want CERTIFICATE", clip(b.Type))
		}
		if len(chain) >= maxChain {
			return nil, errorf(ReasonTooLarge, f, "more than %d certificates", maxChain)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, errorf(ReasonMalformed, f, "certificate %d: DER: %v", len(chain), err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, errorf(ReasonMalformed, f, "no PEM CERTIFICATE block")
	}
	return chain, nil
}

func parseEnvoyHeader(h http.Header, o *ParseOptions) ([]*x509.Certificate, Format, error) {
	// XFCC is a list: repeated header lines concatenate, per RFC 9110.
	v := strings.Join(nonEmpty(h, o.Headers.Envoy), ",")
	c, err := parseXFCCCert(v, o.EnvoyElement, o.MaxChain)
	return c, FormatEnvoy, err
}

func parseXFCCCert(v string, element, maxChain int) ([]*x509.Certificate, error) {
	f := FormatEnvoy
	els, err := ParseXFCC(v)
	if err != nil {
		return nil, err
	}
	i := len(els) - 1 - element
	if i < 0 {
		return nil, errorf(ReasonMalformed, f, "XFCC has %d element(s); element %d from the end does not exist", len(els), element)
	}
	el := els[i]
	if el.Cert == "" && el.Chain == "" {
		return nil, errorf(ReasonMalformed, f, "XFCC element has no Cert or Chain (hash %q): configure Envoy set_current_client_cert_details cert: true", clip(el.Hash))
	}
	var leaf *x509.Certificate
	var chain []*x509.Certificate
	if el.Cert != "" {
		cs, err := parseEscapedPEM(el.Cert, f, 1)
		if err != nil {
			return nil, err
		}
		leaf = cs[0]
		chain = cs
	}
	if el.Chain != "" {
		cs, err := parseEscapedPEM(el.Chain, f, maxChain)
		if err != nil {
			return nil, err
		}
		if leaf != nil && !bytes.Equal(cs[0].Raw, leaf.Raw) {
			return nil, errorf(ReasonMalformed, f, "XFCC Chain does not start with Cert")
		}
		chain = cs
		leaf = cs[0]
	}
	if el.Hash != "" {
		want, err := hex.DecodeString(el.Hash)
		sum := sha256.Sum256(leaf.Raw)
		if err != nil || !bytes.Equal(want, sum[:]) {
			return nil, errorf(ReasonMalformed, f, "XFCC Hash does not match the SHA-256 of Cert")
		}
	}
	return chain, nil
}

func parseHAProxyHeader(h http.Header, o *ParseOptions) ([]*x509.Certificate, Format, error) {
	f := FormatHAProxy
	leafV, err := single(h, o.Headers.HAProxy, f)
	if err != nil {
		return nil, f, err
	}
	chainV, err := single(h, o.Headers.HAProxyChain, f)
	if err != nil {
		return nil, f, err
	}
	c, err := parseHAProxy(leafV, chainV, o.MaxChain)
	return c, f, err
}

func unquote(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}

// parseHAProxy decodes HAProxy's base64 DER leaf and optional base64 of
// concatenated DER intermediates (ssl_c_chain_der).
func parseHAProxy(leafV, chainV string, maxChain int) ([]*x509.Certificate, error) {
	f := FormatHAProxy
	leafV = unquote(leafV)
	if leafV == "" {
		return nil, errorf(ReasonMalformed, f, "chain header without leaf header")
	}
	leaf, e := parseB64DER(leafV, f)
	if e != nil {
		return nil, e
	}
	chain := []*x509.Certificate{leaf}
	if chainV = unquote(chainV); chainV != "" {
		der, err := base64.StdEncoding.DecodeString(chainV)
		if err != nil {
			return nil, errorf(ReasonMalformed, f, "chain base64: %v", err)
		}
		cs, err := x509.ParseCertificates(der)
		if err != nil {
			return nil, errorf(ReasonMalformed, f, "chain DER: %v", err)
		}
		if len(cs)+1 > maxChain {
			return nil, errorf(ReasonTooLarge, f, "%d certificates, limit %d", len(cs)+1, maxChain)
		}
		// Tolerate a chain that repeats the leaf (client side of ssl_c_chain_der).
		if len(cs) > 0 && bytes.Equal(cs[0].Raw, leaf.Raw) {
			cs = cs[1:]
		}
		chain = append(chain, cs...)
	}
	return chain, nil
}

func parseCaddyHeader(h http.Header, o *ParseOptions) ([]*x509.Certificate, Format, error) {
	v, err := single(h, o.Headers.Caddy, FormatCaddy)
	if err != nil {
		return nil, FormatCaddy, err
	}
	c, e := parseB64DER(v, FormatCaddy)
	if e != nil {
		return nil, FormatCaddy, e
	}
	return []*x509.Certificate{c}, FormatCaddy, nil
}

func parseALBHeader(h http.Header, o *ParseOptions) ([]*x509.Certificate, Format, error) {
	f := FormatALB
	full, err := single(h, o.Headers.ALB, f)
	if err != nil {
		return nil, f, err
	}
	leaf, err := single(h, o.Headers.ALBLeaf, f)
	if err != nil {
		return nil, f, err
	}
	v := full
	if v == "" {
		v = leaf
	} else if leaf != "" {
		return nil, f, errorf(ReasonAmbiguous, f, "both %s and %s present", o.Headers.ALB, o.Headers.ALBLeaf)
	}
	c, err := parseEscapedPEM(v, f, o.MaxChain)
	return c, f, err
}

func parseRFC9440Header(h http.Header, o *ParseOptions) ([]*x509.Certificate, Format, error) {
	f := FormatRFC9440
	leafV, err := single(h, o.Headers.RFC9440, f)
	if err != nil {
		return nil, f, err
	}
	// Client-Cert-Chain is a list: repeated lines concatenate.
	chainV := strings.Join(nonEmpty(h, o.Headers.RFC9440Chain), ",")
	c, err := parseRFC9440(leafV, chainV, o.MaxChain)
	return c, f, err
}

// parseRFC9440 decodes Client-Cert (an sf-binary item) and Client-Cert-Chain
// (an sf-list of sf-binary items, leaf excluded).
func parseRFC9440(leafV, chainV string, maxChain int) ([]*x509.Certificate, error) {
	f := FormatRFC9440
	if strings.TrimSpace(leafV) == "" {
		return nil, errorf(ReasonMalformed, f, "Client-Cert-Chain without Client-Cert")
	}
	der, err := parseSFBinary(leafV)
	if err != nil {
		return nil, errorf(ReasonMalformed, f, "Client-Cert: %v", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, errorf(ReasonMalformed, f, "Client-Cert: DER: %v", err)
	}
	chain := []*x509.Certificate{leaf}
	if strings.TrimSpace(chainV) == "" {
		return chain, nil
	}
	items, err := splitQuoted(chainV, ',', true)
	if err != nil {
		return nil, errorf(ReasonMalformed, f, "Client-Cert-Chain: %v", err)
	}
	if len(items)+1 > maxChain {
		return nil, errorf(ReasonTooLarge, f, "%d certificates, limit %d", len(items)+1, maxChain)
	}
	for i, it := range items {
		der, err := parseSFBinary(it)
		if err != nil {
			return nil, errorf(ReasonMalformed, f, "Client-Cert-Chain item %d: %v", i, err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, errorf(ReasonMalformed, f, "Client-Cert-Chain item %d: DER: %v", i, err)
		}
		chain = append(chain, c)
	}
	return chain, nil
}

type simpleErr string

func (e simpleErr) Error() string { return string(e) }

// parseSFBinary parses an RFC 8941 byte sequence item (":base64:"),
// ignoring parameters.
func parseSFBinary(s string) ([]byte, error) {
	s = strings.Trim(s, " \t")
	if len(s) < 2 || s[0] != ':' {
		return nil, simpleErr("not a byte sequence (want :base64:)")
	}
	end := strings.IndexByte(s[1:], ':')
	if end < 0 {
		return nil, simpleErr("unterminated byte sequence")
	}
	b64 := s[1 : 1+end]
	if rest := s[2+end:]; rest != "" && rest[0] != ';' {
		return nil, simpleErr("unexpected data after byte sequence")
	}
	for i := 0; i < len(b64); i++ {
		c := b64[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=') {
			return nil, simpleErr("invalid base64 character in byte sequence")
		}
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(b64, "="))
		if err != nil {
			return nil, simpleErr("base64: " + err.Error())
		}
	}
	return b, nil
}

// splitQuoted splits s at sep outside double quotes. With escapes, a
// backslash inside quotes escapes the next byte. An unterminated quote is an
// error.
func splitQuoted(s string, sep byte, escapes bool) ([]string, error) {
	var out []string
	start, inQ := 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQ && escapes && c == '\\':
			i++
		case c == '"':
			inQ = !inQ
		case !inQ && c == sep:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	if inQ {
		return nil, simpleErr("unterminated quoted string")
	}
	return append(out, s[start:]), nil
}
