package enroll

// Evidence of revocation.
//
// A 401 on /renew or /rekey says nothing by itself: step-ca answers a
// revoked certificate with its default 401 message ("The request lacked
// necessary authorization..."), exactly as it answers a removed
// provisioner or a provisioner barred from renewing, and as any proxy or
// WAF in front of it can answer. Recording "revoked" from that answer
// would turn one stray 401 into a node that never renews again. The
// evidence a node can read is the CA's certificate revocation list: GET
// /crl (DER), served when the CA's config has "crl": {"enabled": true},
// signed by the intermediate that issues the node certificates.
//
// A CRL is evidence only when it verifies: signed by the very certificate
// that issued the node's (the issuer's key, not just its name: test CAs
// and re-initialised CAs share names), that issuer chaining to one of the
// CA's current roots, and complete (not a delta CRL, not scoped to some
// reasons or to CA certificates, no critical extension it cannot
// interpret; RFC 5280 §5.2, §6.3.3), and current: within its validity
// (issued, and its nextUpdate not passed) by the node clock. Then a serial
// it lists with a final reason is Revoked, and a serial absent from it is
// NotRevoked. A serial listed on hold (certificateHold) is not revoked: a
// hold is a suspension the CA may release, so the CA's refusal meanwhile
// is a refusal, asked about again by the next run; removeFromCRL (a
// released hold) is not a revocation either. Everything else, a CA
// without a CRL, one that cannot be reached, a body that is not a CRL, a
// CRL that does not verify or is stale, is Unknown: no evidence either
// way, never Revoked. Revoked is recorded by the node for good (until a
// new certificate), so only fresh and final evidence makes it.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"time"
)

// RevocationStatus is what the CA's CRL says about a certificate.
type RevocationStatus string

// The statuses.
const (
	// Revoked: a CRL signed by the certificate's issuer lists its serial.
	Revoked RevocationStatus = "revoked"
	// NotRevoked: a current, complete CRL signed by the certificate's
	// issuer does not list it.
	NotRevoked RevocationStatus = "not-revoked"
	// RevocationUnknown: no evidence either way (see Revocation.Reason).
	RevocationUnknown RevocationStatus = "unknown"
)

// MaxCRLSize bounds the CRL read from the CA. step-ca lists every revoked
// certificate that has not long expired, about 50 bytes each: 32 MiB is
// some 650,000 entries (BenchmarkJudgeCRL: 100,000 are 4.9 MB, judged in
// about half a second).
const MaxCRLSize = 32 << 20

// Revocation is the answer of CheckRevocation: the status, and for every status
// what it rests on.
type Revocation struct {
	Status RevocationStatus
	// Reason says in one line what the status rests on (for Unknown, why
	// there is no evidence).
	Reason string
	// Transient is set for Unknown when asking again later may give an
	// answer (the CA unreachable, 429/5xx).
	Transient bool
	// Err is the failure behind an Unknown, when there was one.
	Err error
	// RevokedAt and ReasonCode (RFC 5280 CRLReason: 0 unspecified, 1 key
	// compromise, 4 superseded, 6 certificate hold, ...) are the CRL
	// entry's, for Revoked.
	RevokedAt  time.Time
	ReasonCode int
	// The CRL's own fields, when one was verified.
	CRLNumber              *big.Int
	ThisUpdate, NextUpdate time.Time
}

// CheckRevocation fetches the CA's CRL and judges chain[0] (chain is the node's
// certificate, then the intermediate that issued it) against it. It never
// fails: a CRL that cannot be had or trusted is RevocationUnknown with the
// reason. The GET is retried like the roots fetch (Client.Retries).
func (c *Client) CheckRevocation(ctx context.Context, chain []*x509.Certificate, roots *Roots) *Revocation {
	if len(chain) == 0 || chain[0] == nil {
		return &Revocation{Status: RevocationUnknown, Reason: "no certificate to look up"}
	}
	if roots == nil || len(roots.Current) == 0 {
		return &Revocation{Status: RevocationUnknown, Reason: "no current roots of the CA to verify a CRL against"}
	}
	pool := x509.NewCertPool()
	for _, r := range roots.Bundle() {
		pool.AddCert(r)
	}
	tr := c.transport(&tls.Config{RootCAs: pool, ServerName: c.URL.Hostname(), MinVersion: tls.VersionTLS12, Time: c.now})
	resp, body, err := c.getLimit(ctx, tr, "/crl", MaxCRLSize)
	if e := classifyHTTP("fetch CRL", resp, body, err); e != nil {
		r := &Revocation{Status: RevocationUnknown, Err: e, Transient: e.Transient()}
		switch {
		case e.Kind == CARejected && e.Status == http.StatusNotFound:
			r.Reason = "the CA serves no CRL (GET /crl answered 404: the CA's config does not enable crl)"
		case e.Kind == CARejected && e.Status == http.StatusNotImplemented:
			r.Reason = "the CA serves no CRL (GET /crl answered 501: its database does not keep one)"
		default:
			r.Reason = "the CA's CRL could not be fetched: " + e.Error()
		}
		return r
	}
	if len(body) > MaxCRLSize {
		return &Revocation{Status: RevocationUnknown, Reason: fmt.Sprintf("the CA's CRL is larger than %d bytes", MaxCRLSize)}
	}
	return JudgeCRL(body, chain, roots.Current, c.now())
}

// JudgeCRL judges chain[0] against crl (DER, or PEM "X509 CRL") at now,
// with the rules of the package comment: the CRL must be signed by the
// certificate in chain[1:] that issued chain[0], which must chain to one
// of roots.
func JudgeCRL(crl []byte, chain []*x509.Certificate, roots []*x509.Certificate, now time.Time) *Revocation {
	unknown := func(format string, a ...any) *Revocation {
		return &Revocation{Status: RevocationUnknown, Reason: fmt.Sprintf(format, a...)}
	}
	if len(chain) == 0 || chain[0] == nil {
		return unknown("no certificate to look up")
	}
	leaf := chain[0]
	issuer, err := issuerOf(leaf, chain[1:], roots, now)
	if err != nil {
		return unknown("the certificate's issuer cannot vouch for a CRL: %v", err)
	}
	if b, _ := pem.Decode(crl); b != nil && b.Type == "X509 CRL" {
		crl = b.Bytes
	}
	rl, err := x509.ParseRevocationList(crl)
	if err != nil {
		return unknown("the CA's answer to GET /crl is not a CRL: %v", err)
	}
	if !bytes.Equal(rl.RawIssuer, issuer.RawSubject) {
		return unknown("the CRL was issued by %q, not by the certificate's issuer %q", rl.Issuer, issuer.Subject)
	}
	if err := rl.CheckSignatureFrom(issuer); err != nil {
		return unknown("the CRL is not signed by the certificate's issuer (%s): %v", issuer.Subject, err)
	}
	if why := incomplete(rl); why != "" {
		return unknown("the CRL cannot be relied on: %s", why)
	}
	out := &Revocation{Status: RevocationUnknown, CRLNumber: rl.Number, ThisUpdate: rl.ThisUpdate, NextUpdate: rl.NextUpdate}
	switch {
	case !rl.NextUpdate.IsZero() && now.After(rl.NextUpdate):
		out.Reason = fmt.Sprintf("the CA's CRL is stale (next update was due %s): what it says about serial %s is no evidence now", stamp(rl.NextUpdate), leaf.SerialNumber)
		return out
	case now.Add(crlLeeway).Before(rl.ThisUpdate):
		out.Reason = fmt.Sprintf("the CA's CRL is not valid yet by the node clock (issued %s): it is no evidence", stamp(rl.ThisUpdate))
		return out
	}
	for _, e := range rl.RevokedCertificateEntries {
		if e.SerialNumber == nil || e.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
			continue
		}
		out.RevokedAt, out.ReasonCode = e.RevocationTime, e.ReasonCode
		if e.ReasonCode == reasonCertificateHold || e.ReasonCode == reasonRemoveFromCRL {
			out.Reason = fmt.Sprintf("the CA's CRL (number %v) lists serial %s with reason %s, not a revocation: a hold is a suspension the CA may release",
				rl.Number, leaf.SerialNumber, reasonName(e.ReasonCode))
			return out
		}
		out.Status = Revoked
		out.Reason = fmt.Sprintf("the CA's CRL (number %v, signed by %s, issued %s, next update %s) lists serial %s as revoked at %s (reason %s)",
			rl.Number, issuer.Subject.CommonName, stamp(rl.ThisUpdate), stamp(rl.NextUpdate), leaf.SerialNumber, stamp(e.RevocationTime), reasonName(e.ReasonCode))
		return out
	}
	out.Status = NotRevoked
	out.Reason = fmt.Sprintf("the CA's CRL (number %v, signed by %s, issued %s, next update %s) does not list serial %s",
		rl.Number, issuer.Subject.CommonName, stamp(rl.ThisUpdate), stamp(rl.NextUpdate), leaf.SerialNumber)
	return out
}

// issuerOf finds, among candidates, the certificate whose key signed leaf,
// and checks that it chains to one of roots at now (a root may issue
// directly, so roots are candidates too).
func issuerOf(leaf *x509.Certificate, candidates, roots []*x509.Certificate, now time.Time) (*x509.Certificate, error) {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, ic := range candidates {
		if ic != nil {
			inter.AddCert(ic)
		}
	}
	for _, cand := range append(append([]*x509.Certificate(nil), candidates...), roots...) {
		if cand == nil || leaf.CheckSignatureFrom(cand) != nil {
			continue
		}
		if _, err := cand.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return nil, fmt.Errorf("%s does not chain to one of the CA's current roots: %w", cand.Subject, err)
		}
		return cand, nil
	}
	return nil, errors.New("the certificate's chain does not hold the certificate that signed it")
}

// RFC 5280 CRLReason codes that are not a revocation.
const (
	reasonCertificateHold = 6
	reasonRemoveFromCRL   = 8
)

// crlLeeway is how far ahead of the node clock a CRL's thisUpdate may be
// (clocks a little apart) and still count.
const crlLeeway = time.Minute

// reasonName is an RFC 5280 CRLReason by name.
func reasonName(code int) string {
	names := map[int]string{0: "unspecified", 1: "keyCompromise", 2: "cACompromise", 3: "affiliationChanged", 4: "superseded",
		5: "cessationOfOperation", 6: "certificateHold", 8: "removeFromCRL", 9: "privilegeWithdrawn", 10: "aACompromise"}
	if n, ok := names[code]; ok {
		return fmt.Sprintf("%s (%d)", n, code)
	}
	return fmt.Sprintf("code %d", code)
}

var (
	oidDeltaCRLIndicator        = asn1.ObjectIdentifier{2, 5, 29, 27}
	oidIssuingDistributionPoint = asn1.ObjectIdentifier{2, 5, 29, 28}
	oidCRLNumber                = asn1.ObjectIdentifier{2, 5, 29, 20}
	oidAuthorityKeyID           = asn1.ObjectIdentifier{2, 5, 29, 35}
)

// issuingDistributionPoint is RFC 5280's IssuingDistributionPoint.
type issuingDistributionPoint struct {
	DistributionPoint          asn1.RawValue  `asn1:"optional,tag:0"`
	OnlyContainsUserCerts      bool           `asn1:"optional,tag:1"`
	OnlyContainsCACerts        bool           `asn1:"optional,tag:2"`
	OnlySomeReasons            asn1.BitString `asn1:"optional,tag:3"`
	IndirectCRL                bool           `asn1:"optional,tag:4"`
	OnlyContainsAttributeCerts bool           `asn1:"optional,tag:5"`
}

// incomplete says why rl is not a complete CRL for end-entity
// certificates of its issuer, or "" when it is one.
func incomplete(rl *x509.RevocationList) string {
	for _, ext := range rl.Extensions {
		switch {
		case ext.Id.Equal(oidDeltaCRLIndicator):
			return "it is a delta CRL, not the complete list"
		case ext.Id.Equal(oidIssuingDistributionPoint):
			var idp issuingDistributionPoint
			if rest, err := asn1.Unmarshal(ext.Value, &idp); err != nil || len(rest) > 0 {
				return "its issuing distribution point extension does not parse"
			}
			if idp.OnlyContainsCACerts || idp.OnlyContainsAttributeCerts || idp.IndirectCRL || idp.OnlySomeReasons.BitLength > 0 {
				return "its issuing distribution point scopes it to part of the revocations"
			}
		case ext.Critical && !ext.Id.Equal(oidCRLNumber) && !ext.Id.Equal(oidAuthorityKeyID):
			return fmt.Sprintf("it has a critical extension %v that provision does not interpret", ext.Id)
		}
	}
	for _, e := range rl.RevokedCertificateEntries {
		for _, ext := range e.Extensions {
			if ext.Critical {
				return fmt.Sprintf("an entry has a critical extension %v (an indirect CRL's)", ext.Id)
			}
		}
	}
	return ""
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
