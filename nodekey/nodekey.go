package nodekey

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
)

// Option configures how a TPM key is made or used.
type Option func(*options) error

type options struct {
	spec      Spec
	ownerAuth func() ([]byte, error)
	step      func(string)
}

func newOptions(opts []Option) (options, error) {
	o := options{spec: Spec{Device: DefaultTPM}, ownerAuth: func() ([]byte, error) { return nil, nil }, step: func(string) {}}
	for _, f := range opts {
		if err := f(&o); err != nil {
			return o, err
		}
	}
	return o, nil
}

// WithTPM names the TPM: a device path (default DefaultTPM) or a software
// TPM's socket ("swtpm:path=<socket>", "swtpm:host=<host>,port=<port>").
func WithTPM(name string) Option {
	return func(o *options) error {
		s, err := ParseSpec(name)
		if err != nil {
			return &Error{Kind: NoDevice, Op: opOpen, TPM: name, Err: err}
		}
		o.spec = s
		return nil
	}
}

// WithOwnerAuth gives the owner hierarchy's password, asked for each time
// the storage key is derived (every signature). Without it the password is
// taken to be empty, as it is on most machines.
func WithOwnerAuth(f func() ([]byte, error)) Option {
	return func(o *options) error { o.ownerAuth = f; return nil }
}

// MaxOwnerAuthFile bounds the owner password file: a TPM password is at
// most 64 bytes (the digest size of SHA-512), and one trailing newline.
const MaxOwnerAuthFile = 65

// WithOwnerAuthFile reads the owner hierarchy's password from path each
// time it is needed (one trailing newline is not part of it). The file is
// never copied, logged or printed.
func WithOwnerAuthFile(path string) Option {
	return WithOwnerAuth(func() ([]byte, error) { return ReadOwnerAuth(path) })
}

// ReadOwnerAuth reads an owner password file (see WithOwnerAuthFile).
func ReadOwnerAuth(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("the owner password file: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("the owner password file %s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxOwnerAuthFile+1))
	if err != nil {
		return nil, fmt.Errorf("the owner password file: %w", err)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	if len(b) > MaxOwnerAuthFile-1 {
		return nil, fmt.Errorf("the owner password file %s holds more than %d bytes: not a TPM password", path, MaxOwnerAuthFile-1)
	}
	return b, nil
}

// WithStep calls f with the name of each step of making or loading a TPM
// key as it completes ("tpm storage key", "tpm key created", "tpm key
// loaded"): provision's crash tests stop the process there.
func WithStep(f func(string)) Option {
	return func(o *options) error { o.step = f; return nil }
}

// ParseKey returns the signer for key.pem's contents: a software key (PEM
// "EC PRIVATE KEY", "PRIVATE KEY" or "RSA PRIVATE KEY") or a TPM key
// ("TSS2 PRIVATE KEY"), which signs in the TPM the options name. Parsing a
// TPM key does not touch the TPM.
func ParseKey(keyPEM []byte, opts ...Option) (crypto.Signer, error) {
	blk, _ := pem.Decode(keyPEM)
	if blk == nil {
		return nil, errors.New("no PEM key in it")
	}
	var k any
	var err error
	switch blk.Type {
	case PEMType: // the options matter only to a key in a TPM
		o, err := newOptions(opts)
		if err != nil {
			return nil, err
		}
		return parseTPMKey(blk.Bytes, o)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot parse the key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("unsupported key type")
	}
	return s, nil
}

// MarshalKey is key.pem for a key: a TPM key's key file, or a software
// key as "EC PRIVATE KEY" (ECDSA) or "PRIVATE KEY" (PKCS #8).
func MarshalKey(k crypto.Signer) ([]byte, error) {
	switch k := k.(type) {
	case *TPMKey:
		return k.MarshalPEM()
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// X509KeyPair is tls.X509KeyPair for a key of either kind: the chain from
// certPEM, the key from keyPEM, which must be the leaf's. It checks the
// pair without signing; a TPM key signs when the handshake asks it to.
func X509KeyPair(certPEM, keyPEM []byte, opts ...Option) (tls.Certificate, error) {
	if !IsTPMPEM(keyPEM) {
		return tls.X509KeyPair(certPEM, keyPEM)
	}
	var c tls.Certificate
	for rest := certPEM; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			c.Certificate = append(c.Certificate, blk.Bytes)
		}
	}
	if len(c.Certificate) == 0 {
		return tls.Certificate{}, errors.New("tls: failed to find any PEM data in certificate input")
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return tls.Certificate{}, err
	}
	k, err := ParseKey(keyPEM, opts...)
	if err != nil {
		return tls.Certificate{}, err
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(k.Public()) {
		return tls.Certificate{}, errors.New("tls: private key does not match public key")
	}
	c.PrivateKey, c.Leaf = k, leaf
	return c, nil
}

// LoadX509KeyPair is tls.LoadX509KeyPair for a key of either kind: what a
// node-agent calls with pki_dir's cert.pem and key.pem (re-read it after
// provision's post hook says a renewal was published).
func LoadX509KeyPair(certFile, keyFile string, opts ...Option) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	return X509KeyPair(certPEM, keyPEM, opts...)
}

// CheckSigns signs a random digest with k and verifies the signature with
// its public key: proof that the key is usable now (for a TPM key: the TPM
// is reachable, accepts the key and signs with it).
func CheckSigns(k crypto.Signer) error {
	pub, ok := k.Public().(*ecdsa.PublicKey)
	if !ok {
		return nil // RSA or Ed25519: software keys, checked by the pair's match
	}
	var msg [32]byte
	if _, err := rand.Read(msg[:]); err != nil {
		return err
	}
	d := sha256.Sum256(msg[:])
	sig, err := k.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		return err
	}
	if !ecdsa.VerifyASN1(pub, d[:], sig) {
		return &Error{Kind: Failed, Op: opSign, Err: errors.New("the signature does not verify with the key's public half")}
	}
	return nil
}
