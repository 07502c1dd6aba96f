package controlplane

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"time"

	"go.step.sm/crypto/jose"
)

// ottClaims is the payload of a JWK-provisioner one-time token.
type ottClaims struct {
	jose.Claims
	SHA  string   `json:"sha"`
	SANs []string `json:"sans"`
}

type tokenSpec struct {
	subject   string
	sans      []string
	notBefore time.Time
	issuedAt  *time.Time
	expiry    time.Time
	sha       string
	foreign   bool
	audience  string
}

// TokenOption changes one aspect of a minted token, mostly to make it bad in
// one precise way.
type TokenOption func(*tokenSpec)

// TokenExpired gives a token that expired 5 minutes ago (beyond the CA's
// 1-minute leeway). It carries no iat, so the CA rejects it for its expiry
// and not for its issued-at time.
func TokenExpired() TokenOption {
	return func(s *tokenSpec) {
		now := time.Now()
		s.notBefore, s.expiry, s.issuedAt = now.Add(-10*time.Minute), now.Add(-5*time.Minute), nil
	}
}

// TokenNotYetValid gives a token whose nbf is 10 minutes ahead, what a node
// with a clock far behind would hold.
func TokenNotYetValid() TokenOption {
	return func(s *tokenSpec) {
		s.notBefore = time.Now().Add(10 * time.Minute)
		s.expiry = s.notBefore.Add(5 * time.Minute)
	}
}

// TokenForNode gives a token minted for another node (sub and sans are
// other), so the CSR a node builds from its own node_id does not match: 403.
func TokenForNode(other string) TokenOption {
	return func(s *tokenSpec) { s.subject, s.sans = other, []string{other} }
}

// TokenUnknownKey signs the token with a fresh key that carries the
// provisioner's kid, so the CA finds the provisioner and then fails the
// signature: 401.
func TokenUnknownKey() TokenOption { return func(s *tokenSpec) { s.foreign = true } }

// TokenWrongSHA puts a random fingerprint in the sha claim (the CA does not
// check it; a client comparing it with its pinned fingerprint must refuse).
func TokenWrongSHA() TokenOption {
	return func(s *tokenSpec) { s.sha = randomHex(32) }
}

// TokenSHA sets the sha claim.
func TokenSHA(sha string) TokenOption { return func(s *tokenSpec) { s.sha = sha } }

// TokenLifetime sets the expiry to now + d (default 5 minutes).
func TokenLifetime(d time.Duration) TokenOption {
	return func(s *tokenSpec) { s.expiry = time.Now().Add(d) }
}

// TokenSANs replaces the sans claim (sub stays the node id).
func TokenSANs(sans ...string) TokenOption { return func(s *tokenSpec) { s.sans = sans } }

// Token mints a one-time token for nodeID: iss = the provisioner, sub = nodeID,
// sans = [nodeID], aud = https://<ca-host>:<port>/1.0/sign (the CA ignores the
// port; with it, ca.Bootstrap(token) finds the CA), sha = the current root
// fingerprint, valid from now for 5 minutes, a random jti. Mint after the CA
// (re)started: step-ca refuses tokens issued before its start.
func (s *StepCA) Token(nodeID string, opts ...TokenOption) (string, error) {
	now := time.Now()
	spec := tokenSpec{
		subject:   nodeID,
		sans:      []string{nodeID},
		notBefore: now,
		issuedAt:  &now,
		expiry:    now.Add(5 * time.Minute),
		sha:       s.Fingerprint(),
		audience:  "https://" + net.JoinHostPort(s.hostname, strconv.Itoa(s.Port())) + "/1.0/sign",
	}
	for _, o := range opts {
		o(&spec)
	}
	key := s.jwk
	if spec.foreign {
		k, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
		if err != nil {
			return "", err
		}
		key = k
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key.Key},
		new(jose.SignerOptions).WithType("JWT").WithHeader("kid", s.jwk.KeyID))
	if err != nil {
		return "", fmt.Errorf("token signer: %w", err)
	}
	claims := ottClaims{
		Claims: jose.Claims{
			ID:        randomHex(16),
			Issuer:    s.provName,
			Subject:   spec.subject,
			Audience:  jose.Audience{spec.audience},
			NotBefore: jose.NewNumericDate(spec.notBefore),
			Expiry:    jose.NewNumericDate(spec.expiry),
		},
		SHA:  spec.sha,
		SANs: spec.sans,
	}
	if spec.issuedAt != nil {
		claims.IssuedAt = jose.NewNumericDate(*spec.issuedAt)
	}
	tok, err := jose.Signed(signer).Claims(claims).CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	return tok, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
