package clientcert

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// IdentitySource names where the node identity is read from the verified
// leaf.
type IdentitySource string

// Identity sources, tried in the order given in Config.Identity.
const (
	IdentityCommonName IdentitySource = "cn"    // subject CommonName
	IdentityDNSSAN     IdentitySource = "dns"   // each DNS SAN
	IdentityURISAN     IdentitySource = "uri"   // each URI SAN, e.g. spiffe://...
	IdentityEmailSAN   IdentitySource = "email" // each e-mail SAN
)

// Config configures a [Verifier].
type Config struct {
	ParseOptions

	// Roots are the CAs node certificates must chain to. Required.
	Roots *x509.CertPool
	// TrustedProxies are the peer address prefixes (the ingress) whose
	// forwarded headers are honoured. From any other address the headers are
	// ignored and reported as ReasonUntrustedProxy. Empty: no proxy trusted.
	TrustedProxies []netip.Prefix
	// Identity lists where the identity comes from, in order; the first
	// value found is Result.Identity, and an expected identity matches any
	// of them. Default: CommonName, then DNS SANs.
	Identity []IdentitySource
	// Now is the clock used for validity checks (default time.Now).
	Now func() time.Time
	// IgnoreDirectTLS: do not accept a client certificate presented to this
	// server directly (r.TLS) by a peer that is not a trusted proxy. By
	// default such a certificate is verified like a forwarded one (format
	// "tls"). A trusted proxy's own TLS client certificate is never used.
	IgnoreDirectTLS bool
}

// Verifier turns requests into [Result]s. It is safe for concurrent use.
type Verifier struct {
	cfg  Config
	opts ParseOptions
}

// NewVerifier checks cfg and returns a Verifier.
func NewVerifier(cfg Config) (*Verifier, error) {
	if cfg.Roots == nil {
		return nil, errors.New("clientcert: Config.Roots is required")
	}
	for _, p := range cfg.TrustedProxies {
		if !p.IsValid() {
			return nil, fmt.Errorf("clientcert: invalid trusted proxy prefix %v", p)
		}
	}
	if len(cfg.Identity) == 0 {
		cfg.Identity = []IdentitySource{IdentityCommonName, IdentityDNSSAN}
	}
	for _, s := range cfg.Identity {
		switch s {
		case IdentityCommonName, IdentityDNSSAN, IdentityURISAN, IdentityEmailSAN:
		default:
			return nil, fmt.Errorf("clientcert: unknown identity source %q", s)
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxHeaderBytes < 0 || cfg.MaxChain < 0 || cfg.EnvoyElement < 0 {
		return nil, errors.New("clientcert: negative limit")
	}
	known := []Format{FormatTraefik, FormatTraefikEscaped, FormatNginx, FormatEnvoy, FormatHAProxy, FormatCaddy, FormatALB, FormatRFC9440}
	for _, f := range cfg.Formats {
		if !slices.Contains(known, f) {
			return nil, fmt.Errorf("clientcert: unknown format %q", f)
		}
	}
	opts := cfg.ParseOptions.normalized()
	seen := map[string]Format{}
	for _, f := range opts.families() {
		for _, h := range f.headers {
			if other, ok := seen[h]; ok && other != f.format {
				return nil, fmt.Errorf("clientcert: header %s configured for both %s and %s; restrict Config.Formats or rename one", h, other, f.format)
			}
			seen[h] = f.format
		}
	}
	return &Verifier{cfg: cfg, opts: opts}, nil
}

// Result is the outcome for one request. The JSON and log keys are stable.
type Result struct {
	// MTLSPresent: a client certificate reached this server, as a forwarded
	// header of a known format (even if it was then refused as untrusted,
	// ambiguous, malformed or too large) or directly over TLS.
	MTLSPresent bool   `json:"mtls_present"`
	Format      Format `json:"format"`    // format read, "" if none
	Subject     string `json:"subject"`   // leaf subject (RFC 2253 style), even if unverified
	Issuer      string `json:"issuer"`    // leaf issuer
	Serial      string `json:"serial"`    // leaf serial number, decimal
	NotAfter    string `json:"not_after"` // leaf NotAfter, RFC 3339 UTC
	Verified    bool   `json:"verified"`  // chain, validity and usage all verified
	Reason      Reason `json:"reason"`    // one of the Reason constants
	Identity    string `json:"identity"`  // identity from the verified leaf ("" unless verified)
	Expected    string `json:"expected_identity,omitempty"`
	Detail      string `json:"detail,omitempty"` // human explanation; not stable
	RemoteAddr  string `json:"remote_addr,omitempty"`

	// Chain is the certificate chain as received, leaf first.
	Chain []*x509.Certificate `json:"-"`
}

// OK reports whether the request carried a verified, expected identity.
func (r Result) OK() bool { return r.Reason == ReasonOK }

// LogAttrs returns the result as slog attributes with the stable keys.
func (r Result) LogAttrs() []slog.Attr {
	a := []slog.Attr{
		slog.Bool("mtls_present", r.MTLSPresent),
		slog.String("format", string(r.Format)),
		slog.String("subject", r.Subject),
		slog.String("issuer", r.Issuer),
		slog.String("serial", r.Serial),
		slog.String("not_after", r.NotAfter),
		slog.Bool("verified", r.Verified),
		slog.String("reason", string(r.Reason)),
		slog.String("identity", r.Identity),
	}
	if r.Expected != "" {
		a = append(a, slog.String("expected_identity", r.Expected))
	}
	if r.Detail != "" {
		a = append(a, slog.String("detail", r.Detail))
	}
	if r.RemoteAddr != "" {
		a = append(a, slog.String("remote_addr", r.RemoteAddr))
	}
	return a
}

// LogValue implements slog.LogValuer, so slog.Any("mtls", res) logs a group
// with the stable keys.
func (r Result) LogValue() slog.Value { return slog.GroupValue(r.LogAttrs()...) }

// Verify is VerifyExpected with no expected identity.
func (v *Verifier) Verify(r *http.Request) Result { return v.VerifyExpected(r, "") }

// VerifyExpected reads the client certificate of r (forwarded headers from a
// trusted proxy, else a direct TLS client certificate), verifies it and, if
// expected is not empty, requires the identity to be expected.
func (v *Verifier) VerifyExpected(r *http.Request, expected string) Result {
	base := Result{RemoteAddr: r.RemoteAddr, Expected: expected}
	if v.trusted(r.RemoteAddr) {
		chain, format, err := Parse(r.Header, v.opts)
		if err != nil {
			res := base
			res.Format = format
			res.Reason = ReasonOf(err)
			res.MTLSPresent = res.Reason != ReasonMissing
			res.Detail = detailOf(err)
			return res
		}
		return v.verifyChain(base, chain, format, expected)
	}
	if !v.cfg.IgnoreDirectTLS && r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		res := v.verifyChain(base, r.TLS.PeerCertificates, FormatTLS, expected)
		if f, err := detect(r.Header, &v.opts); err == nil || ReasonOf(err) == ReasonAmbiguous {
			note := "forwarded-certificate headers from an untrusted peer were ignored"
			if err == nil {
				note = string(f.format) + " " + note
			}
			res.Detail = strings.TrimPrefix(res.Detail+"; "+note, "; ")
		}
		return res
	}
	res := base
	f, err := detect(r.Header, &v.opts)
	if err != nil && ReasonOf(err) == ReasonMissing {
		res.Reason = ReasonMissing
		res.Detail = detailOf(err)
		if !v.cfg.IgnoreDirectTLS {
			res.Detail += "; no TLS client certificate presented directly"
		}
		return res
	}
	res.MTLSPresent = true
	res.Format = f.format
	res.Reason = ReasonUntrustedProxy
	res.Detail = fmt.Sprintf("forwarded-certificate headers from %s ignored: peer is not in the trusted proxies", r.RemoteAddr)
	return res
}

func detailOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Detail
	}
	return err.Error()
}

func (v *Verifier) trusted(remote string) bool {
	if len(v.cfg.TrustedProxies) == 0 {
		return false
	}
	var a netip.Addr
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		a = ap.Addr()
	} else if a, err = netip.ParseAddr(remote); err != nil {
		return false
	}
	a = a.Unmap().WithZone("")
	for _, p := range v.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// VerifyChain verifies a chain (leaf first) that was obtained some other way,
// for example from [Parse], and derives the identity. format is copied to
// the Result.
func (v *Verifier) VerifyChain(chain []*x509.Certificate, format Format, expected string) Result {
	return v.verifyChain(Result{Expected: expected}, chain, format, expected)
}

func (v *Verifier) verifyChain(res Result, chain []*x509.Certificate, format Format, expected string) Result {
	res.Format = format
	res.Chain = chain
	if len(chain) == 0 || chain[0] == nil {
		res.Reason = ReasonMissing
		res.Detail = "empty chain"
		return res
	}
	res.MTLSPresent = true
	if len(chain) > v.opts.MaxChain {
		res.Reason = ReasonTooLarge
		res.Detail = fmt.Sprintf("%d certificates, limit %d", len(chain), v.opts.MaxChain)
		return res
	}
	leaf := chain[0]
	res.Subject = leaf.Subject.String()
	res.Issuer = leaf.Issuer.String()
	if leaf.SerialNumber != nil {
		res.Serial = leaf.SerialNumber.String()
	}
	res.NotAfter = leaf.NotAfter.UTC().Format(time.RFC3339)

	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		if c != nil {
			inter.AddCert(c)
		}
	}
	now := v.cfg.Now()
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         v.cfg.Roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		res.Reason, res.Detail = classify(err, now)
		return res
	}
	// Go accepts a leaf without any EKU for every usage; a node identity
	// must say clientAuth explicitly.
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
		res.Reason = ReasonWrongUsage
		res.Detail = "leaf has no clientAuth extended key usage"
		return res
	}
	res.Verified = true
	ids := identities(leaf, v.cfg.Identity)
	if len(ids) == 0 {
		res.Reason = ReasonNoIdentity
		res.Detail = fmt.Sprintf("verified leaf has no identity of kinds %v", v.cfg.Identity)
		return res
	}
	res.Identity = ids[0]
	if expected != "" {
		if !slices.Contains(ids, clip(expected)) {
			res.Reason = ReasonIdentityMismatch
			res.Detail = fmt.Sprintf("certificate identities %q do not include %q", ids, clip(expected))
			return res
		}
		res.Identity = expected
	}
	res.Reason = ReasonOK
	return res
}

func identities(c *x509.Certificate, srcs []IdentitySource) []string {
	var out []string
	add := func(s string) {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, s := range srcs {
		switch s {
		case IdentityCommonName:
			add(c.Subject.CommonName)
		case IdentityDNSSAN:
			for _, d := range c.DNSNames {
				add(d)
			}
		case IdentityURISAN:
			for _, u := range c.URIs {
				add(u.String())
			}
		case IdentityEmailSAN:
			for _, e := range c.EmailAddresses {
				add(e)
			}
		}
	}
	return out
}

func classify(err error, now time.Time) (Reason, string) {
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		return ReasonUnknownAuthority, err.Error()
	}
	var ci x509.CertificateInvalidError
	if errors.As(err, &ci) {
		switch ci.Reason {
		case x509.Expired:
			if ci.Cert != nil && now.Before(ci.Cert.NotBefore) {
				return ReasonNotYetValid, err.Error()
			}
			return ReasonExpired, err.Error()
		case x509.IncompatibleUsage, x509.CANotAuthorizedForExtKeyUsage:
			return ReasonWrongUsage, err.Error()
		}
	}
	return ReasonInvalidChain, err.Error()
}
