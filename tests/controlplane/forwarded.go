package controlplane

import (
	"crypto/x509"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"

	"github.com/gpuaas/provision/clientcert"
)

// LoopbackProxies is the trusted-proxy list of a node API behind an ingress
// on this machine: 127.0.0.0/8 and ::1.
var LoopbackProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// ForwardedRoots is the pool a node API behind an ingress verifies forwarded
// client certificates against: the PKI's root AND its intermediate. nginx
// ($ssl_client_escaped_cert) and Caddy (certificate_der_base64) forward only
// the leaf, so the intermediate the node sent during the handshake never
// reaches the API; without it in the pool every node would be refused as
// unknown-authority. (Traefik and HAProxy forward the intermediates too.)
func ForwardedRoots(p *PKI) *x509.CertPool {
	pool := p.RootPool()
	pool.AddCert(p.Intermediate)
	return pool
}

// ForwardedIdentitySource is the identity of a node API that sits behind an
// ingress as plain HTTP and learns who the caller is ONLY from the client
// certificate the ingress forwarded, through the public clientcert package,
// as a real control-plane API adopting it would. The expected identity is
// the {node_id} of the route. On rejection the error text is the clientcert
// Reason (missing, malformed, unknown-authority, ...), so the 401 body's
// reason and the API's log line carry a value from that fixed set, and
// MTLSPresent says whether any certificate arrived; when log is non-nil the
// full clientcert result (format, subject, issuer, detail) is logged too.
//
// The Verifier is swappable (see Set), so a test can
// reconfigure the API, for example to read the wrong forwarded format and
// then the right one, without restarting it.
type ForwardedIdentitySource struct {
	mu  sync.Mutex
	v   *clientcert.Verifier
	log *slog.Logger
}

// NewForwardedIdentity builds the source from a clientcert configuration.
// A zero TrustedProxies means LoopbackProxies.
func NewForwardedIdentity(cfg clientcert.Config, log *slog.Logger) (*ForwardedIdentitySource, error) {
	s := &ForwardedIdentitySource{log: log}
	if err := s.Set(cfg); err != nil {
		return nil, err
	}
	return s, nil
}

// Set replaces the verifier configuration for the following requests.
func (s *ForwardedIdentitySource) Set(cfg clientcert.Config) error {
	if len(cfg.TrustedProxies) == 0 {
		cfg.TrustedProxies = LoopbackProxies
	}
	v, err := clientcert.NewVerifier(cfg)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.v = v
	s.mu.Unlock()
	return nil
}

// Identity is the IdentitySource to plug into NodeAPIOptions.Identity.
func (s *ForwardedIdentitySource) Identity(r *http.Request) (Caller, error) {
	s.mu.Lock()
	v := s.v
	s.mu.Unlock()
	res := v.VerifyExpected(r, r.PathValue("node_id"))
	if !res.OK() {
		if s.log != nil {
			s.log.LogAttrs(r.Context(), slog.LevelWarn, "clientcert rejected the forwarded certificate", res.LogAttrs()...)
		}
		return Caller{MTLSPresent: res.MTLSPresent}, errors.New(string(res.Reason))
	}
	// VerifyExpected matched the route's node_id against the verified leaf's
	// CN or DNS SANs; hand the node API exactly that identity.
	return Caller{MTLSPresent: true, CommonName: r.PathValue("node_id")}, nil
}
