package enroll

// Renewal after expiry.
//
// An expired certificate cannot authenticate a TLS handshake: step-ca's TLS
// layer refuses it ("tls: expired certificate", Kind CertExpired from
// Renew). step-ca still renews it when the provisioner that issued it has
// the claim allowRenewalAfterExpiry, through the same POST /renew with no
// client certificate and an Authorization: Bearer token instead: a JWT
// whose header "x5cInsecure" carries the certificate chain and which is
// signed by the certificate's own key (step-ca's Authority.
// AuthorizeRenewToken verifies the chain against its roots ignoring the
// validity period, the signature with the leaf's key, sub = the leaf's
// CN, aud = one of its renew audiences, iss = "step-ca-client/1.0", the
// time claims with a minute of leeway, and marks the jti used). The step
// CLI's `step ca renew` builds the same token for an expired certificate.
//
// The key is kept: step-ca's /rekey authenticates only by mTLS, so after
// expiry there is no way to send a new key. The next due renewal (over
// mTLS, with the renewed certificate) rekeys as usual.
//
// Short certificates: step-ca (v0.30.2) verifies the token's chain at one
// minute before the certificate's end, so a certificate whose whole life
// is shorter than about a minute cannot be renewed after expiry (the CA
// answers 401 "error validating renew token"). A one-minute certificate
// works.
//
// What the CA's answer says: a 401 whose message says the certificate
// expired is the provisioner refusing renewal after expiry
// (AfterExpiryRefused: a fresh token, or the claim, is needed); any other
// 401/403 is the CA refusing this certificate (CertRefused: revoked, its
// provisioner removed or barred from renewing, or something in front of
// the CA answering 401; see CheckRevocation for evidence), except a 401
// about the token's time claims (RenewClock: the node's clock); 429/5xx,
// from step-ca or from a proxy in front of it, and connection failures are
// transient.
//
// The node's clock matters: the token's window is taken from it (see
// renewTokenBackdate). A node back from days powered off should renew
// after its clock has synced (systemd's time-sync.target).

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/smallstep/certificates/ca"
	"github.com/smallstep/certificates/errs"
	"go.step.sm/crypto/jose"
)

// AfterExpiryRefused: the CA refused to renew an expired certificate
// because the provisioner that issued it does not allow renewal after
// expiry (its claim allowRenewalAfterExpiry is false, step-ca's default).
// Retrying cannot help: a fresh one-time token, or the claim set on the
// provisioner by the CA's operators, is needed.
const AfterExpiryRefused Kind = "after-expiry-refused"

// RenewClock: the CA refused the renew token's time claims (not yet
// valid, expired): the node's clock is off by more than the CA's minute of
// leeway beyond the token's own window. A node back from days powered off
// may run on a wrong clock until it syncs; fix the clock, then retry.
const RenewClock Kind = "renew-clock"

// RenewTokenIssuer is the iss of a renew token: the step client's own.
const RenewTokenIssuer = "step-ca-client/1.0"

// The renew token's window, by the node's clock: valid from a minute
// before now (and without iat, which step-ca checks only when present) to
// five minutes after, so a node clock up to two minutes ahead of the CA's,
// or six behind, still renews; the CA adds a minute of leeway either way.
// The token is used at once and only once (its jti), so the window costs
// nothing.
const (
	renewTokenBackdate = time.Minute
	renewTokenLifetime = 5 * time.Minute
)

// RenewExpired renews cert, expired or not, without mTLS: POST /renew
// authenticated by a renew token signed with cert's own key, which step-ca
// accepts for an expired certificate when its provisioner allows renewal
// after expiry. The key is kept (no rekey: step-ca's /rekey needs mTLS).
// It returns what Renew returns. Each call signs a fresh token (a new jti),
// so the caller may retry Transient errors; like Renew it is not retried
// here. A certificate that does not chain to the CA's current roots is
// refused before anything is sent (CertUnknownCA): the CA would refuse it.
func (c *Client) RenewExpired(ctx context.Context, cert tls.Certificate, roots *Roots) (*Issued, error) {
	const op = "renew-expired"
	if cert.Leaf == nil || len(cert.Certificate) == 0 {
		return nil, errors.New("renew after expiry: the certificate is not parsed")
	}
	key, ok := cert.PrivateKey.(crypto.Signer)
	if !ok || !publicKeyEqual(cert.Leaf.PublicKey, key.Public()) {
		return nil, errors.New("renew after expiry: the node's key does not match its certificate")
	}
	if err := chainsToCurrent(cert, roots); err != nil {
		return nil, &Error{Kind: CertUnknownCA, Op: op, Err: fmt.Errorf("the certificate does not chain to the CA's current roots, so the CA would refuse it (a stale certificate): %w", err)}
	}
	tok, err := c.renewToken(cert, key)
	if err != nil {
		return nil, &Error{Kind: KeyFailed, Op: op, Err: fmt.Errorf("signing the renew token with the node's key: %w", err), NotSent: true}
	}
	client, tr, err := c.bearerClient(roots)
	if err != nil {
		return nil, &Error{Kind: Unreachable, Op: op, Err: err}
	}
	rctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	resp, err := client.RenewWithTokenAndContext(rctx, tok)
	if err != nil {
		return nil, expiredError(op, err, tr.Status())
	}
	return renewed(op, key, chainOf(resp), cert.Leaf.Subject.CommonName)
}

// bearerClient is a step-ca client that presents no client certificate
// (an expired one would fail the handshake) and trusts the CA's TLS
// certificate through roots.
func (c *Client) bearerClient(roots *Roots) (*ca.Client, *answered, error) {
	pool := x509.NewCertPool()
	for _, r := range roots.Bundle() {
		pool.AddCert(r)
	}
	tr := &answered{rt: c.transport(&tls.Config{RootCAs: pool, ServerName: c.URL.Hostname(), MinVersion: tls.VersionTLS12, Time: c.now})}
	client, err := newCAClient(c.URL.String(), ca.WithTransport(tr), ca.WithTimeout(c.Timeout))
	return client, tr, err
}

// chainsToCurrent verifies cert's chain against the CA's current roots the
// way step-ca verifies a renew token's chain: for client auth, at a minute
// before the leaf's end (expiry is what is being forgiven), or at its
// start for a certificate shorter than that (which step-ca then refuses:
// see the note on short certificates above).
func chainsToCurrent(cert tls.Certificate, roots *Roots) error {
	if roots == nil || len(roots.Current) == 0 {
		return errors.New("no current roots of the CA to judge it against")
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(ic)
		}
	}
	at := cert.Leaf.NotAfter.Add(-time.Minute)
	if at.Before(cert.Leaf.NotBefore) {
		at = cert.Leaf.NotBefore
	}
	_, err := cert.Leaf.Verify(x509.VerifyOptions{
		Roots: roots.Pool(), Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return err
}

// renewToken signs the x5c-insecure renew token with key: the chain in
// the header, sub the leaf's CN, aud the CA's renew endpoint by the name
// in ca.url (step-ca compares audiences without the port), a random jti.
func (c *Client) renewToken(cert tls.Certificate, key crypto.Signer) (string, error) {
	alg, err := signingAlgorithm(key)
	if err != nil {
		return "", err
	}
	x5c := make([]string, len(cert.Certificate))
	for i, der := range cert.Certificate {
		x5c[i] = base64.StdEncoding.EncodeToString(der)
	}
	so := new(jose.SignerOptions).WithType("JWT").WithHeader(jose.HeaderKey(jose.X5cInsecureKey), x5c)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, so)
	if err != nil {
		return "", err
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", err
	}
	now := c.now()
	aud := c.URL.ResolveReference(&url.URL{Path: "/1.0/renew"}).String()
	claims := jose.Claims{
		ID: hex.EncodeToString(jti), Issuer: RenewTokenIssuer, Subject: cert.Leaf.Subject.CommonName,
		Audience: jose.Audience{aud}, NotBefore: jose.NewNumericDate(now.Add(-renewTokenBackdate)),
		Expiry: jose.NewNumericDate(now.Add(renewTokenLifetime)),
	}
	return jose.Signed(signer).Claims(claims).CompactSerialize()
}

// signingAlgorithm is the JWS algorithm for the node's key, judged by its
// public half: go.step.sm/crypto/jose signs with any crypto.Signer (a key
// in a TPM among them), wrapping it as an opaque signer.
func signingAlgorithm(key crypto.Signer) (jose.SignatureAlgorithm, error) {
	switch k := key.Public().(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		case elliptic.P521():
			return jose.ES512, nil
		}
		return "", fmt.Errorf("unsupported ECDSA curve %s", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return jose.EdDSA, nil
	case *rsa.PublicKey:
		return jose.RS256, nil
	}
	return "", fmt.Errorf("unsupported key type %T", key)
}

// expiredError classifies a failed token renewal: the provisioner's own
// refusal of an expired certificate is told apart from every other
// refusal; the rest is classified as for an mTLS renewal.
func expiredError(op string, err error, status int) error {
	var se *errs.Error
	if !errors.As(err, &se) || se.StatusCode() != 401 {
		return mtlsError(op, err, status)
	}
	msg := strings.ToLower(se.Message())
	switch {
	case strings.Contains(msg, "certificate expired"):
		return &Error{Kind: AfterExpiryRefused, Op: op, Status: 401,
			Err: fmt.Errorf("the CA does not allow renewal after expiry for this certificate's provisioner (its claim allowRenewalAfterExpiry is off): %s", se.Message())}
	case strings.Contains(msg, "renew token") && (strings.Contains(msg, "(nbf)") || strings.Contains(msg, "(exp)") || strings.Contains(msg, "(iat)")):
		return &Error{Kind: RenewClock, Op: op, Status: 401,
			Err: fmt.Errorf("the CA refused the renew token's validity window, so the node's clock is far from the CA's: %s", se.Message())}
	}
	return mtlsError(op, err, status)
}
