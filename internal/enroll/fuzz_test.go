package enroll_test

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/tests/controlplane"
)

// FuzzJudgeCRL: whatever answers GET /crl, JudgeCRL never panics, and it
// says Revoked or NotRevoked only for a CRL that parses and is signed by
// the key that issued the node's certificate: bytes the CA did not sign
// are never evidence. The seeds are CRLs signed by that key (listing the
// node or not, with an issuing distribution point), one signed by another
// CA of the same name, PEM, and garbage.
func FuzzJudgeCRL(f *testing.F) {
	at := time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)
	p, err := controlplane.NewPKIAt(f.TempDir(), controlplane.CAName, at)
	if err != nil {
		f.Fatal(err)
	}
	forger, err := controlplane.NewPKIAt(f.TempDir(), controlplane.CAName, at)
	if err != nil {
		f.Fatal(err)
	}
	leaf, err := p.IssueClientCert(nodeID)
	if err != nil {
		f.Fatal(err)
	}
	idp, _ := asn1.Marshal(struct {
		DP asn1.RawValue `asn1:"optional,tag:0"`
	}{asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: []byte{0x86, 0x01, 'x'}}})
	crl := func(signer *controlplane.PKI, list bool, ext []pkix.Extension) []byte {
		rl := &x509.RevocationList{Number: big.NewInt(3), ThisUpdate: at.Add(-time.Minute), NextUpdate: at.Add(time.Hour), ExtraExtensions: ext}
		if list {
			rl.RevokedCertificateEntries = []x509.RevocationListEntry{{SerialNumber: leaf.Cert.SerialNumber, RevocationTime: at, ReasonCode: 4}}
		}
		der, err := x509.CreateRevocationList(rand.Reader, rl, signer.Intermediate, signer.IntermediateKey)
		if err != nil {
			f.Fatal(err)
		}
		return der
	}
	listed := crl(p, true, nil)
	f.Add(listed)
	f.Add(crl(p, false, nil))
	f.Add(crl(p, true, []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 28}, Critical: true, Value: idp}}))
	f.Add(crl(forger, true, nil))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: listed}))
	f.Add([]byte("<html>404</html>"))
	f.Add([]byte{})
	chain := []*x509.Certificate{leaf.Cert, p.Intermediate}
	roots := []*x509.Certificate{p.Root}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := enroll.JudgeCRL(data, chain, roots, at)
		if r.Status == enroll.RevocationUnknown {
			return
		}
		der := data
		if b, _ := pem.Decode(data); b != nil && b.Type == "X509 CRL" {
			der = b.Bytes
		}
		rl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatalf("%s from bytes that are not a CRL: %v", r.Status, err)
		}
		if err := rl.CheckSignatureFrom(p.Intermediate); err != nil {
			t.Fatalf("%s from a CRL the issuer did not sign: %v", r.Status, err)
		}
	})
}
