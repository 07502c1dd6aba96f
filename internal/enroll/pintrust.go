package enroll

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync"
	"time"
)

// pinTrust verifies the connections of FetchRoots' one transport. Until the
// pinned root is known (pin), a handshake is accepted unverified: that
// connection carries only the pinned-root fetch, whose answer is checked by
// its fingerprint. pin then verifies the connection that answered, and from
// then on every handshake is verified against the same roots, so /roots and
// /federation never travel over an unverified connection.
type pinTrust struct {
	host string
	now  func() time.Time

	mu   sync.Mutex
	pool *x509.CertPool // nil until pin
}

// verify is the transport's tls.Config.VerifyConnection.
func (p *pinTrust) verify(cs tls.ConnectionState) error {
	p.mu.Lock()
	pool := p.pool
	p.mu.Unlock()
	if pool == nil {
		return nil // the pinned-root fetch: checked by fingerprint
	}
	return p.check(pool, cs.PeerCertificates)
}

// pin trusts pool from now on and verifies the connection that served the
// pinned root (cs, the response's TLS state) against it, with the CA's
// hostname and the node's clock, as a verifying handshake would have.
func (p *pinTrust) pin(pool *x509.CertPool, cs *tls.ConnectionState) error {
	p.mu.Lock()
	p.pool = pool
	p.mu.Unlock()
	if cs == nil {
		return errors.New("the pinned root did not come over TLS")
	}
	return p.check(pool, cs.PeerCertificates)
}

// check verifies a server's chain (leaf first) against pool; a failure is a
// *tls.CertificateVerificationError, as the handshake's own would be.
func (p *pinTrust) check(pool *x509.CertPool, chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return &tls.CertificateVerificationError{Err: errors.New("the CA presented no certificate")}
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: p.host, CurrentTime: p.now()}
	if _, err := chain[0].Verify(opts); err != nil {
		return &tls.CertificateVerificationError{UnverifiedCertificates: chain, Err: err}
	}
	return nil
}
