package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
)

// AfterExpiryRefused: the CA does not renew an expired certificate.
const AfterExpiryRefused Kind = "after-expiry-refused"

// Revocation is what the CA's revocation list says about a certificate.
type Revocation struct {
	Revoked  bool
	Evidence string
}

// RenewExpired is wired in by the enroll branch.
func (c *Client) RenewExpired(ctx context.Context, cert tls.Certificate, roots *Roots) (*Issued, error) {
	return nil, &Error{Kind: AfterExpiryRefused, Op: "renew after expiry", Err: errors.New("not implemented yet")}
}

// RevocationStatus is wired in by the enroll branch.
func (c *Client) RevocationStatus(ctx context.Context, leaf *x509.Certificate, roots *Roots) (Revocation, error) {
	return Revocation{}, errors.New("no revocation list")
}
