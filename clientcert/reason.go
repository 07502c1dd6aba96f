package clientcert

import (
	"errors"
	"fmt"
)

// Reason says why a request did or did not yield a verified identity. The
// values are stable: they appear in logs, in the 401 JSON body and in
// `provision verify` output, so dashboards and alerts may match on them.
type Reason string

// The fixed set of reasons. Every [Result] carries exactly one of them.
const (
	// ReasonOK: a certificate was forwarded (or presented directly), it
	// verified, and it carries the expected identity.
	ReasonOK Reason = "ok"
	// ReasonMissing: no forwarded certificate header (and no direct TLS
	// client certificate). The ingress did not forward one: check that mTLS
	// is enforced on the route and that forwarding is configured
	// (Traefik passTLSClientCert pem: true, nginx proxy_set_header, ...).
	ReasonMissing Reason = "missing"
	// ReasonUntrustedProxy: forwarded certificate headers arrived from a peer
	// address outside Config.TrustedProxies, so they were ignored.
	ReasonUntrustedProxy Reason = "untrusted-proxy"
	// ReasonAmbiguous: headers of two different formats were present at once,
	// or a single-valued header was repeated.
	ReasonAmbiguous Reason = "ambiguous"
	// ReasonMalformed: a header was present but could not be decoded into
	// certificates in its format (bad escaping, base64, PEM, DER, XFCC
	// syntax, XFCC Hash not matching Cert, an XFCC element without Cert, ...).
	ReasonMalformed Reason = "malformed"
	// ReasonTooLarge: a header exceeded Config.MaxHeaderBytes, or the chain
	// had more than Config.MaxChain certificates.
	ReasonTooLarge Reason = "too-large"
	// ReasonUnknownAuthority: the leaf does not chain to the configured roots
	// (wrong CA, stale certificate from a replaced CA, self-signed forgery).
	ReasonUnknownAuthority Reason = "unknown-authority"
	// ReasonExpired: the leaf (or a forwarded intermediate) is past NotAfter.
	ReasonExpired Reason = "expired"
	// ReasonNotYetValid: the leaf (or an intermediate) is before NotBefore;
	// usually a clock problem on the API host or the CA.
	ReasonNotYetValid Reason = "not-yet-valid"
	// ReasonWrongUsage: the leaf lacks the clientAuth extended key usage, or
	// the chain does not permit it.
	ReasonWrongUsage Reason = "wrong-usage"
	// ReasonInvalidChain: chain verification failed for another reason
	// (name constraints, an intermediate that is not a CA, too many
	// intermediates, ...).
	ReasonInvalidChain Reason = "invalid-chain"
	// ReasonNoIdentity: the certificate verified but carries no identity of
	// the configured kinds (Config.Identity).
	ReasonNoIdentity Reason = "no-identity"
	// ReasonIdentityMismatch: the certificate verified, but its identity is
	// not the one the caller expected (for example the {node_id} in the path).
	ReasonIdentityMismatch Reason = "identity-mismatch"
)

// Reasons lists every Reason, in the order documented above.
func Reasons() []Reason {
	return []Reason{
		ReasonOK, ReasonMissing, ReasonUntrustedProxy, ReasonAmbiguous,
		ReasonMalformed, ReasonTooLarge, ReasonUnknownAuthority, ReasonExpired,
		ReasonNotYetValid, ReasonWrongUsage, ReasonInvalidChain,
		ReasonNoIdentity, ReasonIdentityMismatch,
	}
}

// Error is the error type returned by [Parse] and the parsers: a Reason, the
// format being parsed (empty if none was detected) and a human detail.
type Error struct {
	Reason Reason
	Format Format
	Detail string
}

func (e *Error) Error() string {
	if e.Format != "" {
		return fmt.Sprintf("clientcert: %s (%s): %s", e.Reason, e.Format, e.Detail)
	}
	return fmt.Sprintf("clientcert: %s: %s", e.Reason, e.Detail)
}

// ReasonOf returns the Reason carried by err (an [*Error] anywhere in its
// chain), ReasonOK for nil, and ReasonMalformed for any other error.
func ReasonOf(err error) Reason {
	if err == nil {
		return ReasonOK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonMalformed
}

func errorf(r Reason, f Format, format string, args ...any) *Error {
	return &Error{Reason: r, Format: f, Detail: fmt.Sprintf(format, args...)}
}

// clip shortens attacker-controlled text quoted in a Detail, which ends up in
// logs.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
