package controlplane

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"go.step.sm/crypto/x509util"
)

// PKI is a two-level certificate hierarchy (root -> intermediate, ECDSA
// P-256) generated with crypto/x509 and written into Dir, in the file layout
// step-ca reads: root_ca.crt, intermediate_ca.crt and an unencrypted
// intermediate_ca_key.
type PKI struct {
	Dir                 string
	Root                *x509.Certificate
	RootKey             *ecdsa.PrivateKey
	Intermediate        *x509.Certificate
	IntermediateKey     *ecdsa.PrivateKey
	RootPath            string
	IntermediatePath    string
	IntermediateKeyPath string
	// now is the clock the PKI was built from; leaves issued without explicit
	// times take theirs from it too.
	now func() time.Time
}

// NewPKI generates a fresh root and intermediate named after name and writes
// them into dir (created if missing), valid from an hour before the real
// time. A test that fixes its clock uses NewPKIAt instead.
func NewPKI(dir, name string) (*PKI, error) {
	return newPKI(dir, name, time.Now, time.Hour)
}

// NewPKIAt is NewPKI built from a fixed instant: the root and intermediate
// are valid from an hour before now, and IssueLeaf's default window is taken
// from now as well, so a test that judges at now passes on any day it runs.
func NewPKIAt(dir, name string, now time.Time) (*PKI, error) {
	return newPKI(dir, name, func() time.Time { return now }, time.Hour)
}

// newPKI builds a PKI whose root and intermediate became valid age before
// clock's now.
func newPKI(dir, name string, clock func() time.Time, age time.Duration) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki dir: %w", err)
	}
	now := clock()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	rootTmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{CommonName: name + " Root CA", Organization: []string{"provision tests"}},
		NotBefore:             now.Add(-age),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	root, err := createCert(rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	intKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	intTmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{CommonName: name + " Intermediate CA", Organization: []string{"provision tests"}},
		NotBefore:             now.Add(-age),
		NotAfter:              now.Add(5 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	inter, err := createCert(intTmpl, root, &intKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("intermediate: %w", err)
	}
	p := &PKI{
		Dir: dir, Root: root, RootKey: rootKey, Intermediate: inter, IntermediateKey: intKey,
		RootPath:            filepath.Join(dir, "root_ca.crt"),
		IntermediatePath:    filepath.Join(dir, "intermediate_ca.crt"),
		IntermediateKeyPath: filepath.Join(dir, "intermediate_ca_key"),
		now:                 clock,
	}
	keyDER, err := x509.MarshalECPrivateKey(intKey)
	if err != nil {
		return nil, err
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{p.RootPath, certPEM(root), 0o644},
		{p.IntermediatePath, certPEM(inter), 0o644},
		{p.IntermediateKeyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600},
	} {
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Fingerprint is the lowercase hex SHA-256 of the root certificate's DER,
// the value provision.toml's ca.fingerprint pins.
func (p *PKI) Fingerprint() string { return Fingerprint(p.Root) }

// RootPEM is the root certificate in PEM.
func (p *PKI) RootPEM() []byte { return certPEM(p.Root) }

// RootPool is a pool holding only the root.
func (p *PKI) RootPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.Root)
	return pool
}

// Fingerprint returns the lowercase hex SHA-256 of cert's DER.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// Leaf is an end-entity certificate with its key and the intermediate that
// issued it.
type Leaf struct {
	Cert *x509.Certificate
	// Key is the leaf's P-256 key; nil when LeafRequest gave another kind
	// (Signer holds it) or only a public key (no key here at all).
	Key          *ecdsa.PrivateKey
	Signer       crypto.Signer
	Intermediate *x509.Certificate
}

// KeyPEM is the leaf key as an "EC PRIVATE KEY" PEM block (a P-256 leaf's).
func (l *Leaf) KeyPEM() []byte {
	der, err := x509.MarshalECPrivateKey(l.Key)
	if err != nil {
		panic(err) // a P-256 key always marshals
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

// ChainPEM is leaf then intermediate, the layout of pki_dir/cert.pem.
func (l *Leaf) ChainPEM() []byte {
	return append(certPEM(l.Cert), certPEM(l.Intermediate)...)
}

// TLSCertificate is the leaf, its intermediate (none for a self-signed
// leaf) and key for a tls.Config.
func (l *Leaf) TLSCertificate() tls.Certificate {
	key := l.Signer
	if l.Key != nil {
		key = l.Key // a test may swap the P-256 key (a key of another certificate)
	}
	c := tls.Certificate{Certificate: [][]byte{l.Cert.Raw}, PrivateKey: key, Leaf: l.Cert}
	if l.Intermediate != nil {
		c.Certificate = append(c.Certificate, l.Intermediate.Raw)
	}
	return c
}

// SelfSigned issues req as a self-signed certificate outside any PKI (an
// ingress's built-in default certificate, a header-format fixture); its
// times default to the real clock's.
func SelfSigned(req LeafRequest) (*Leaf, error) {
	req.SelfSigned = true
	return (&PKI{now: time.Now}).IssueLeaf(req)
}

// LeafRequest describes a leaf certificate to issue directly from a PKI's
// intermediate, bypassing step-ca.
type LeafRequest struct {
	CommonName  string
	DNSNames    []string
	IPs         []net.IP
	ExtKeyUsage []x509.ExtKeyUsage
	NotBefore   time.Time // zero: the PKI's now - 1 minute
	NotAfter    time.Time // zero: the PKI's now + 24 hours
	// Organization goes into the subject (forwarded-header tests need a
	// value with a comma).
	Organization []string
	// SelfSigned signs the leaf with its own key instead of the
	// intermediate: an ingress's built-in default certificate.
	SelfSigned bool
	// Extensions are added as they are (step-ca's provisioner extension).
	Extensions []pkix.Extension
	// Key is the leaf's own key (the RSA key of the default certificate an
	// ingress generates, say); nil generates a P-256 key.
	Key crypto.Signer
	// PublicKey issues the leaf for a key held elsewhere (a node's key, a
	// key in a TPM); the Leaf then holds no key.
	PublicKey crypto.PublicKey
	// Serial is the serial number; nil: random.
	Serial *big.Int
	// URIs are URI SANs (a SPIFFE ID).
	URIs []*url.URL
	// KeyUsage replaces the default, digital signature.
	KeyUsage x509.KeyUsage
	// IssuerName is the issuer a SelfSigned leaf names, when not its own
	// subject (a forwarded-header test's issuer).
	IssuerName *pkix.Name
}

// IssueLeaf signs a new leaf (P-256 unless req says otherwise) with the
// intermediate, or with its own key when SelfSigned.
func (p *PKI) IssueLeaf(req LeafRequest) (*Leaf, error) {
	signer, pub, err := leafKey(req)
	if err != nil {
		return nil, err
	}
	now := p.now()
	if req.NotBefore.IsZero() {
		req.NotBefore = now.Add(-time.Minute)
	}
	if req.NotAfter.IsZero() {
		req.NotAfter = now.Add(24 * time.Hour)
	}
	if req.Serial == nil {
		req.Serial = mustSerial()
	}
	if req.KeyUsage == 0 {
		req.KeyUsage = x509.KeyUsageDigitalSignature
	}
	tmpl := &x509.Certificate{
		SerialNumber:    req.Serial,
		Subject:         pkix.Name{CommonName: req.CommonName, Organization: req.Organization},
		DNSNames:        req.DNSNames,
		IPAddresses:     req.IPs,
		URIs:            req.URIs,
		NotBefore:       req.NotBefore,
		NotAfter:        req.NotAfter,
		KeyUsage:        req.KeyUsage,
		ExtKeyUsage:     req.ExtKeyUsage,
		ExtraExtensions: req.Extensions,
	}
	parent, parentKey := p.Intermediate, crypto.Signer(p.IntermediateKey)
	if req.SelfSigned {
		parent, parentKey = tmpl, signer
		if req.IssuerName != nil {
			parent = &x509.Certificate{Subject: *req.IssuerName}
		}
	}
	cert, err := createCert(tmpl, parent, pub, parentKey)
	if err != nil {
		return nil, err
	}
	l := &Leaf{Cert: cert, Signer: signer, Intermediate: p.Intermediate}
	l.Key, _ = signer.(*ecdsa.PrivateKey)
	return l, nil
}

// leafKey is the leaf's signer (nil for PublicKey) and public key.
func leafKey(req LeafRequest) (crypto.Signer, crypto.PublicKey, error) {
	if v := reflect.ValueOf(req.PublicKey); v.Kind() == reflect.Pointer && v.IsNil() {
		req.PublicKey = nil // a typed nil (*ecdsa.PublicKey)(nil): no key given
	}
	switch {
	case req.PublicKey != nil:
		if req.SelfSigned {
			return nil, nil, errors.New("a self-signed leaf needs its own key, not only a public key")
		}
		return nil, req.PublicKey, nil
	case req.Key != nil:
		return req.Key, req.Key.Public(), nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	return key, key.Public(), nil
}

// IssueClientCert issues a node client certificate the way step-ca would for
// a token with sub=nodeID: CN and DNS SAN nodeID, clientAuth and serverAuth.
// Issued from an unrelated PKI it is the incident's stale certificate.
func (p *PKI) IssueClientCert(nodeID string) (*Leaf, error) {
	return p.IssueLeaf(LeafRequest{
		CommonName:  nodeID,
		DNSNames:    []string{nodeID},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
}

// IssueServerCert issues a serverAuth certificate for hostname and ips.
func (p *PKI) IssueServerCert(hostname string, ips ...net.IP) (*Leaf, error) {
	var dns []string
	if hostname != "" {
		dns = []string{hostname}
	}
	return p.IssueLeaf(LeafRequest{
		CommonName:  hostname,
		DNSNames:    dns,
		IPs:         ips,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// createCert signs tmpl through step's own x509util, as step-ca's
// certificates are made (a subject key ID included).
func createCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	return x509util.CreateCertificate(tmpl, parent, pub, signer)
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func mustSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return n
}

var errClosed = errors.New("controlplane: closed")
