package nodekey

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"sync"

	keyfile "github.com/foxboron/go-tpm-keyfiles"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// PEMType is the PEM block type of a TPM key file (the TSS2 key file
// format, as the OpenSSL tpm2 provider and tpm2-tss-engine write it).
const PEMType = "TSS2 PRIVATE KEY"

// TPMKey is a key that lives in a TPM: its public half and the TPM's
// wrapped private half, which only the TPM that made it can load. It
// implements crypto.Signer; every Sign is done by the TPM.
type TPMKey struct {
	file *keyfile.TPMKey
	pub  *ecdsa.PublicKey
	tpub tpm2.TPMTPublic
	o    options
}

var _ crypto.Signer = (*TPMKey)(nil)

// Public returns the key's public half, read from the key file.
func (k *TPMKey) Public() crypto.PublicKey { return k.pub }

// TPM names the TPM the key signs in.
func (k *TPMKey) TPM() string { return k.o.spec.String() }

// MarshalPEM returns the key file: "-----BEGIN TSS2 PRIVATE KEY-----". It
// holds the TPM's wrapped key, not a private key.
func (k *TPMKey) MarshalPEM() ([]byte, error) {
	var b bytes.Buffer
	if err := keyfile.Encode(&b, k.file); err != nil {
		return nil, fmt.Errorf("encoding the TPM key file: %w", err)
	}
	return b.Bytes(), nil
}

// Attributes are the TPM object attributes that make the key what
// CreateTPMKey promises, read from its public area.
type Attributes struct {
	FixedTPM, FixedParent, SensitiveDataOrigin, NoDA, SignOnly bool
}

// Attributes reports the key's object attributes.
func (k *TPMKey) Attributes() Attributes {
	a := k.tpub.ObjectAttributes
	return Attributes{FixedTPM: a.FixedTPM, FixedParent: a.FixedParent, SensitiveDataOrigin: a.SensitiveDataOrigin,
		NoDA: a.NoDA, SignOnly: a.SignEncrypt && !a.Decrypt && !a.Restricted}
}

// signMu serialises this process's TPM work: a software TPM without a
// resource manager holds only a few objects at once.
var signMu sync.Mutex

// Sign signs digest (a SHA-256, SHA-384 or SHA-512 hash, as opts says) in
// the TPM and returns an ASN.1 ECDSA signature. It derives the storage key,
// loads the wrapped key, signs and flushes both.
func (k *TPMKey) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	alg, err := hashAlg(opts.HashFunc(), len(digest))
	if err != nil {
		return nil, &Error{Kind: Failed, Op: opSign, TPM: k.TPM(), Err: err}
	}
	signMu.Lock()
	defer signMu.Unlock()
	var sig []byte
	err = k.withLoaded(func(t transport.TPM, h tpm2.AuthHandle, sess tpm2.Session) error {
		rsp, err := tpm2.Sign{
			KeyHandle:  h,
			Digest:     tpm2.TPM2BDigest{Buffer: digest},
			InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: alg})},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck},
		}.Execute(t, sess)
		if err != nil {
			return classify(opSign, k.o.spec, err)
		}
		es, err := rsp.Signature.Signature.ECDSA()
		if err != nil {
			return &Error{Kind: Failed, Op: opSign, TPM: k.TPM(), Err: err}
		}
		sig, err = asn1Signature(es.SignatureR.Buffer, es.SignatureS.Buffer)
		return err
	})
	return sig, err
}

// withLoaded opens the TPM, derives the storage key, loads the key under
// it and calls f with the loaded key and a session salted to the storage
// key; everything is flushed (and the TPM closed) on the way out.
func (k *TPMKey) withLoaded(f func(transport.TPM, tpm2.AuthHandle, tpm2.Session) error) error {
	t, err := open(k.o.spec)
	if err != nil {
		return err
	}
	defer t.Close()
	srk, srkPub, err := k.o.storageKey(t)
	if err != nil {
		return err
	}
	defer flush(t, srk.Handle)
	k.o.step("tpm storage key")
	sess := tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.AESEncryption(128, tpm2.EncryptIn), tpm2.Salted(srk.Handle, *srkPub))
	rsp, err := tpm2.Load{ParentHandle: *srk, InPrivate: k.file.Privkey, InPublic: k.file.Pubkey}.Execute(t, sess)
	if err != nil {
		return classify(opLoad, k.o.spec, err)
	}
	defer flush(t, rsp.ObjectHandle)
	k.o.step("tpm key loaded")
	h := tpm2.AuthHandle{Handle: rsp.ObjectHandle, Name: rsp.Name, Auth: tpm2.PasswordAuth(nil)}
	return f(t, h, tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.AESEncryption(128, tpm2.EncryptIn), tpm2.Salted(srk.Handle, *srkPub)))
}

// storageKey derives the TCG ECC storage root key (template H-2) under the
// owner hierarchy: the same key every time for the same owner seed, so it
// need not be kept in the TPM.
func (o options) storageKey(t transport.TPM) (*tpm2.AuthHandle, *tpm2.TPMTPublic, error) {
	auth, err := o.ownerAuth()
	if err != nil {
		return nil, nil, &Error{Kind: OwnerAuth, Op: opSRK, TPM: o.spec.String(), Err: err}
	}
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(auth)},
		InPublic:      tpm2.New2B(keyfile.ECCSRK_H2_Template),
	}.Execute(t)
	if err != nil {
		return nil, nil, classify(opSRK, o.spec, err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		flush(t, rsp.ObjectHandle)
		return nil, nil, &Error{Kind: Failed, Op: opSRK, TPM: o.spec.String(), Err: err}
	}
	return &tpm2.AuthHandle{Handle: rsp.ObjectHandle, Name: rsp.Name, Auth: tpm2.PasswordAuth(nil)}, pub, nil
}

func flush(t transport.TPM, h tpm2.TPMHandle) {
	tpm2.FlushContext{FlushHandle: h}.Execute(t)
}

// keyTemplate is the node key: NIST P-256, made in the TPM
// (sensitiveDataOrigin), never to leave it (fixedTPM, fixedParent), for
// signing only, with an empty authorization value that no dictionary-attack
// lockout applies to (noDA). The scheme is left to each signature (Null),
// so SHA-384 and SHA-512 digests sign too.
var keyTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
		UserWithAuth: true, SignEncrypt: true, NoDA: true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		CurveID: tpm2.TPMECCNistP256,
		Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
	}),
}

// CreateTPMKey makes a new node key inside the TPM (see the package
// documentation for what kind of key) and returns it; MarshalPEM gives
// its key file. Nothing is left loaded or stored in the TPM.
func CreateTPMKey(opts ...Option) (*TPMKey, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	signMu.Lock()
	defer signMu.Unlock()
	t, err := open(o.spec)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	srk, srkPub, err := o.storageKey(t)
	if err != nil {
		return nil, err
	}
	defer flush(t, srk.Handle)
	o.step("tpm storage key")
	sess := tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.AESEncryption(128, tpm2.EncryptOut), tpm2.Salted(srk.Handle, *srkPub))
	rsp, err := tpm2.Create{ParentHandle: *srk, InPublic: tpm2.New2B(keyTemplate)}.Execute(t, sess)
	if err != nil {
		return nil, classify(opCreate, o.spec, err)
	}
	o.step("tpm key created")
	kf := keyfile.NewTPMKey(keyfile.OIDLoadableKey, rsp.OutPublic, rsp.OutPrivate)
	return fromKeyFile(kf, o)
}

// fromKeyFile checks a decoded key file and makes the key of it: a
// loadable P-256 signing key with an empty authorization value.
func fromKeyFile(kf *keyfile.TPMKey, o options) (*TPMKey, error) {
	bad := func(format string, a ...any) error {
		return &Error{Kind: BadKeyFile, Op: "parse", TPM: o.spec.String(), Err: fmt.Errorf(format, a...)}
	}
	if !kf.Keytype.Equal(keyfile.OIDLoadableKey) {
		return nil, bad("a TSS2 key of type %v, not a loadable key (%v)", kf.Keytype, keyfile.OIDLoadableKey)
	}
	if !kf.EmptyAuth {
		return nil, bad("the key has an authorization value (a PIN); the node key has none")
	}
	if len(kf.Policy) > 0 || len(kf.AuthPolicy) > 0 {
		return nil, bad("the key carries a policy; the node key has none")
	}
	if kf.Parent != tpm2.TPMRHOwner {
		return nil, bad("the key's parent is 0x%08x, not the owner hierarchy's storage key (0x%08x)", uint32(kf.Parent), uint32(tpm2.TPMRHOwner))
	}
	tpub, err := kf.Pubkey.Contents()
	if err != nil {
		return nil, bad("its public area does not parse: %v", err)
	}
	if tpub.Type != tpm2.TPMAlgECC || !tpub.ObjectAttributes.SignEncrypt {
		return nil, bad("not an ECC signing key")
	}
	pk, err := tpm2.Pub(*tpub)
	if err != nil {
		return nil, bad("its public key does not parse: %v", err)
	}
	pub, ok := pk.(*ecdsa.PublicKey)
	if !ok {
		return nil, bad("its public key is a %T, not ECDSA", pk)
	}
	return &TPMKey{file: kf, pub: pub, tpub: *tpub, o: o}, nil
}

// parseTPMKey reads a TSS2 key file's PEM block. A malformed file is an
// error, never a panic: the key file parser is given bytes from disk.
func parseTPMKey(der []byte, o options) (k *TPMKey, err error) {
	defer func() {
		if r := recover(); r != nil {
			k, err = nil, &Error{Kind: BadKeyFile, Op: "parse", TPM: o.spec.String(), Err: fmt.Errorf("malformed TSS2 key file: %v", r)}
		}
	}()
	kf, err := keyfile.Parse(der)
	if err != nil {
		return nil, &Error{Kind: BadKeyFile, Op: "parse", TPM: o.spec.String(), Err: err}
	}
	return fromKeyFile(kf, o)
}

// IsTPMPEM reports whether b is a TPM key file (its first PEM block is a
// TSS2 PRIVATE KEY).
func IsTPMPEM(b []byte) bool {
	blk, _ := pem.Decode(b)
	return blk != nil && blk.Type == PEMType
}

func hashAlg(h crypto.Hash, n int) (tpm2.TPMAlgID, error) {
	if h == 0 { // a caller that hashes itself: infer from the length
		switch n {
		case 32:
			h = crypto.SHA256
		case 48:
			h = crypto.SHA384
		case 64:
			h = crypto.SHA512
		}
	}
	switch {
	case h == crypto.SHA256 && n == 32:
		return tpm2.TPMAlgSHA256, nil
	case h == crypto.SHA384 && n == 48:
		return tpm2.TPMAlgSHA384, nil
	case h == crypto.SHA512 && n == 64:
		return tpm2.TPMAlgSHA512, nil
	}
	return 0, fmt.Errorf("cannot sign a %d-byte digest of %v: SHA-256, SHA-384 or SHA-512 only", n, h)
}

// asn1Signature encodes r and s as an ASN.1 ECDSA-Sig-Value.
func asn1Signature(r, s []byte) ([]byte, error) {
	var b cryptobyte.Builder
	b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(new(big.Int).SetBytes(r))
		b.AddASN1BigInt(new(big.Int).SetBytes(s))
	})
	out, err := b.Bytes()
	if err != nil {
		return nil, errors.New("encoding the signature: " + err.Error())
	}
	return out, nil
}
