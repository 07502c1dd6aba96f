package nodekey_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"testing"

	"github.com/gpuaas/provision/nodekey"
)

// FuzzParseKey: key.pem is read from disk, whatever is there; no input
// reaches a panic, and parsing never touches a TPM (none is named here
// that exists).
func FuzzParseKey(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sw, _ := nodekey.MarshalKey(k)
	f.Add(sw)
	// A TSS2 key file's shape: the loadable-key OID, emptyAuth, parent,
	// then two octet strings (public and private areas).
	f.Add(pem.EncodeToMemory(&pem.Block{Type: nodekey.PEMType, Bytes: []byte{
		0x30, 0x1a, 0x06, 0x06, 0x67, 0x81, 0x05, 0x0a, 0x01, 0x03, 0xa0, 0x03, 0x01, 0x01, 0xff,
		0x02, 0x05, 0x00, 0x40, 0x00, 0x00, 0x01, 0x04, 0x02, 0x00, 0x00, 0x04, 0x02, 0x00, 0x00}}))
	f.Add([]byte("-----BEGIN TSS2 PRIVATE KEY-----\nMAA=\n-----END TSS2 PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := nodekey.ParseKey(b, nodekey.WithTPM("/nonexistent/tpmrm0"))
		if err == nil && s.Public() == nil {
			t.Fatal("a key without a public half")
		}
		if tk, ok := s.(*nodekey.TPMKey); ok && err == nil {
			if _, err := tk.MarshalPEM(); err != nil {
				t.Fatalf("a parsed TPM key does not marshal: %v", err)
			}
		}
	})
}
