package enroll

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/ca"
	"github.com/smallstep/certificates/errs"
)

// The kinds of a renewal or revocation failure (beside Unreachable,
// Unavailable, TrustMismatch and NotStepCA, which mean what they mean for
// enrollment).
const (
	// CertExpired: the CA's TLS layer refused the node certificate as
	// expired. step-ca renews an expired certificate only without mTLS,
	// through RenewExpired, and only when the provisioner allows it.
	CertExpired Kind = "cert-expired"
	// CertUnknownCA: the CA does not know the node certificate's issuer
	// (a stale certificate from a re-initialised CA).
	CertUnknownCA Kind = "cert-unknown-ca"
	// CertRefused: the CA answered 401/403 to the node's own certificate:
	// it was revoked, or its provisioner no longer exists or may not renew.
	CertRefused Kind = "cert-refused"
)

// mtls returns a step-ca client that presents cert to the CA, trusting
// the CA's TLS certificate through roots (current and federated).
func (c *Client) mtls(cert tls.Certificate, roots *Roots) (*ca.Client, *answered, error) {
	pool := x509.NewCertPool()
	for _, r := range roots.Bundle() {
		pool.AddCert(r)
	}
	tr := &answered{rt: c.transport(&tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool,
		ServerName: c.URL.Hostname(), MinVersion: tls.VersionTLS12, Time: c.now,
	})}
	client, err := newCAClient(c.URL.String(), ca.WithTransport(tr), ca.WithTimeout(c.Timeout))
	return client, tr, err
}

// answered remembers the HTTP status of the last response through it. The
// smallstep client drops the status when an error body is not step-ca's
// JSON, and a proxy's 502 or 503 page in front of the CA must still read
// as the transient failure it is, not as "not step-ca".
type answered struct {
	rt     http.RoundTripper
	status atomic.Int32
}

func (a *answered) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := a.rt.RoundTrip(r)
	if resp != nil {
		a.status.Store(int32(resp.StatusCode))
	}
	return resp, err
}

// Status is the last response's HTTP status, 0 before any.
func (a *answered) Status() int { return int(a.status.Load()) }

// Renew asks the CA for a new certificate over mTLS with the node's
// current one (cert: key and chain). With rekey, a new key is made
// (NewKey: in the TPM when the node's key lives there) and sent as a CSR
// (step-ca's /rekey); otherwise
// the key is kept (/renew). No token is involved. It is not retried here:
// the caller retries Transient errors within its deadline (renewing twice
// only costs the CA a second certificate).
func (c *Client) Renew(ctx context.Context, cert tls.Certificate, roots *Roots, rekey bool) (*Issued, error) {
	if cert.Leaf == nil {
		return nil, errors.New("renew: the certificate is not parsed")
	}
	op := "renew"
	client, tr, err := c.mtls(cert, roots)
	if err != nil {
		return nil, &Error{Kind: Unreachable, Op: op, Err: err}
	}
	rctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	var resp *api.SignResponse
	key, _ := cert.PrivateKey.(crypto.Signer)
	if rekey {
		op = "rekey"
		nk, err := c.newKey(op)
		if err != nil {
			return nil, err
		}
		old := cert.Leaf
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
			Subject: old.Subject, DNSNames: old.DNSNames, IPAddresses: old.IPAddresses,
			EmailAddresses: old.EmailAddresses, URIs: old.URIs,
		}, nk)
		if err != nil {
			return nil, &Error{Kind: KeyFailed, Op: op, Err: fmt.Errorf("signing the CSR with the new key: %w", err), NotSent: true}
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return nil, fmt.Errorf("parsing CSR: %w", err)
		}
		key = nk
		resp, err = client.RekeyWithContext(rctx, &api.RekeyRequest{CsrPEM: api.NewCertificateRequest(csr)}, tr)
		if err != nil {
			return nil, mtlsError(op, err, tr.Status())
		}
	} else {
		resp, err = client.RenewWithContext(rctx, tr)
		if err != nil {
			return nil, mtlsError(op, err, tr.Status())
		}
	}
	if key == nil {
		return nil, &Error{Kind: BadResponse, Op: op, Err: errNotNodeKey}
	}
	return renewed(op, key, chainOf(resp), cert.Leaf.Subject.CommonName)
}

// RFC 5280 revocation reason codes provision sends.
const (
	// ReasonSuperseded: a newer certificate replaced it (a rotated key).
	ReasonSuperseded = 4
	// ReasonCessationOfOperation: the node is decommissioned or
	// re-imaged (provision revoke).
	ReasonCessationOfOperation = 5
)

// Revoke revokes cert's own serial at the CA, authenticated by cert itself
// over mTLS (step-ca's passive revocation: a certificate may revoke itself
// without a token), as superseded. reason is recorded by the CA.
func (c *Client) Revoke(ctx context.Context, cert tls.Certificate, roots *Roots, reason string) error {
	return c.RevokeFor(ctx, cert, roots, ReasonSuperseded, reason)
}

// RevokeFor is Revoke with the RFC 5280 reason code given. The request is
// signed by cert's own key, whatever holds it (cert.PrivateKey is the
// crypto.Signer the renewal presents too).
func (c *Client) RevokeFor(ctx context.Context, cert tls.Certificate, roots *Roots, code int, reason string) error {
	if cert.Leaf == nil {
		return errors.New("revoke: the certificate is not parsed")
	}
	client, tr, err := c.mtls(cert, roots)
	if err != nil {
		return &Error{Kind: Unreachable, Op: "revoke", Err: err}
	}
	rctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	_, err = client.RevokeWithContext(rctx, &api.RevokeRequest{
		Serial: cert.Leaf.SerialNumber.String(), ReasonCode: code, Reason: reason, Passive: true,
	}, tr)
	if err != nil {
		return mtlsError("revoke", err, tr.Status())
	}
	return nil
}

// chainOf is the leaf (chain[0], nil when the CA sent none) and the
// intermediates of a sign, renew or rekey answer. An empty entry in the
// CA's certChain ("" or null decode to no certificate) is dropped, so no
// caller meets a nil intermediate.
func chainOf(resp *api.SignResponse) []*x509.Certificate {
	chain := []*x509.Certificate{resp.ServerPEM.Certificate}
	rest := []*x509.Certificate{resp.CaPEM.Certificate}
	if len(resp.CertChainPEM) > 0 {
		chain[0], rest = resp.CertChainPEM[0].Certificate, nil
		for _, crt := range resp.CertChainPEM[1:] {
			rest = append(rest, crt.Certificate)
		}
	}
	for _, c := range rest {
		if c != nil {
			chain = append(chain, c)
		}
	}
	return chain
}

// mtlsError classifies a failure of a request authenticated by the node's
// certificate. A TLS alert names the node certificate's problem (the CA
// verifies it in the handshake); 401/403 is the CA refusing it. status is
// the HTTP status of the answer, when one came (0 otherwise).
func mtlsError(op string, err error, status int) error {
	var se *errs.Error
	if errors.As(err, &se) {
		e := &Error{Op: op, Status: se.StatusCode(), Err: errors.New(se.Message())}
		switch s := se.StatusCode(); {
		case s == 401 || s == 403:
			e.Kind = CertRefused
		case s == 429 || s >= 500 && s != 501:
			e.Kind = Unavailable
		default:
			e.Kind = CARejected
		}
		return e
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "tls: failed to sign handshake"):
		// crypto/tls keeps only the text of the key's error: the node's
		// key (its TPM) could not sign, and the CA saw no certificate.
		return &Error{Kind: KeyFailed, Op: op, Err: fmt.Errorf("the node's key could not sign the TLS handshake: %w", err), NotSent: true}
	case strings.Contains(msg, "tls: expired certificate"):
		return &Error{Kind: CertExpired, Op: op, Err: fmt.Errorf("the CA refused the node certificate as expired: %w", err)}
	case strings.Contains(msg, "tls: unknown certificate authority"), strings.Contains(msg, "tls: bad certificate"):
		return &Error{Kind: CertUnknownCA, Op: op, Err: fmt.Errorf("the CA does not trust the node certificate's issuer (a stale certificate): %w", err)}
	case strings.Contains(msg, "tls: revoked certificate"):
		return &Error{Kind: CertRefused, Op: op, Err: fmt.Errorf("the CA refused the node certificate as revoked: %w", err)}
	}
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) || strings.Contains(msg, "tls: failed to verify certificate") {
		return &Error{Kind: TrustMismatch, Op: op, Err: notCurrentRoots(err)}
	}
	if strings.Contains(msg, "failed decoding CA error response") {
		if status == http.StatusTooManyRequests || status >= 500 && status != http.StatusNotImplemented {
			return &Error{Kind: Unavailable, Op: op, Status: status, Err: fmt.Errorf("something in front of the CA answered %d without step-ca's JSON (a proxy or load balancer failing): %v", status, err)}
		}
		return &Error{Kind: NotStepCA, Op: op, Status: status, Err: notStepCA(err)}
	}
	return &Error{Kind: Unreachable, Op: op, Err: err}
}
