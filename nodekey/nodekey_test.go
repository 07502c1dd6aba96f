package nodekey_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/nodekey"
	"github.com/gpuaas/provision/nodekey/swtpm"
)

// newKey makes a key in tp and returns it with its key file.
func newKey(t *testing.T, tp *swtpm.TPM, opts ...nodekey.Option) (*nodekey.TPMKey, []byte) {
	t.Helper()
	k, err := nodekey.CreateTPMKey(append([]nodekey.Option{nodekey.WithTPM(tp.Spec())}, opts...)...)
	if err != nil {
		t.Fatalf("CreateTPMKey: %v", err)
	}
	pemBytes, err := k.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	return k, pemBytes
}

// TestTPMKeyCreateParseSign: a key made in the TPM is the key the package
// promises (its public area says fixedTPM, fixedParent, made in the TPM,
// noDA, sign only), its file is a TSS2 key file, and parsed back it signs
// SHA-256, SHA-384 and SHA-512 digests that verify with its public key.
func TestTPMKeyCreateParseSign(t *testing.T) {
	tp := swtpm.New(t)
	k, pemBytes := newKey(t, tp)
	if !strings.HasPrefix(string(pemBytes), "-----BEGIN TSS2 PRIVATE KEY-----\n") {
		t.Fatalf("key file starts %q", pemBytes[:40])
	}
	if a := k.Attributes(); !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.NoDA || !a.SignOnly {
		t.Errorf("attributes %+v, want every one", a)
	}
	s, err := nodekey.ParseKey(pemBytes, nodekey.WithTPM(tp.Spec()))
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() || !pub.Equal(k.Public()) {
		t.Fatalf("parsed public key %T differs from the created one", s.Public())
	}
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		d := h.New()
		d.Write([]byte("node key"))
		sum := d.Sum(nil)
		sig, err := s.Sign(rand.Reader, sum, h)
		if err != nil {
			t.Fatalf("sign %v: %v", h, err)
		}
		if !ecdsa.VerifyASN1(pub, sum, sig) {
			t.Errorf("%v signature does not verify", h)
		}
	}
	if _, err := s.Sign(rand.Reader, make([]byte, 20), crypto.SHA1); err == nil {
		t.Error("a SHA-1 digest was signed")
	}
	if err := nodekey.CheckSigns(s); err != nil {
		t.Errorf("CheckSigns: %v", err)
	}
	// Nothing stays loaded: a TPM without a resource manager would run out
	// of object slots after a few signatures otherwise.
	for i := 0; i < 20; i++ {
		if err := nodekey.CheckSigns(s); err != nil {
			t.Fatalf("signature %d: %v", i, err)
		}
	}
	if out := tp.Tool("tpm2_getcap", "handles-transient"); strings.TrimSpace(out) != "" {
		t.Errorf("transient handles left in the TPM: %s", out)
	}
	if out := tp.Tool("tpm2_getcap", "handles-persistent"); strings.Contains(out, "0x81000") {
		t.Errorf("a persistent storage key was left in the TPM: %s", out)
	}
}

// TestTPMKeyTLS: a tls.Certificate from X509KeyPair with a TPM key
// completes TLS 1.3 and TLS 1.2 client authentication, the signatures made
// in the TPM.
func TestTPMKeyTLS(t *testing.T) {
	tp := swtpm.New(t)
	k, keyPEM := newKey(t, tp)
	ca, caKey := selfSigned(t)
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "gpu-0001"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}, ca, k.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER})
	cert, err := nodekey.X509KeyPair(certPEM, keyPEM, nodekey.WithTPM(tp.Spec()))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		if cn := handshake(t, cert, ca, caKey, v); cn != "gpu-0001" {
			t.Errorf("TLS %x: server saw client %q", v, cn)
		}
	}
	// A key file with another key's certificate is refused, as
	// tls.X509KeyPair refuses it.
	_, other := newKey(t, tp)
	if _, err := nodekey.X509KeyPair(certPEM, other, nodekey.WithTPM(tp.Spec())); err == nil {
		t.Error("a certificate with another TPM key was accepted")
	}
}

// TestTPMKeyLost: a TPM cleared after the key was made, and a TPM that
// did not make it, both refuse it: KeyLost, named before any signature.
func TestTPMKeyLost(t *testing.T) {
	tp := swtpm.New(t)
	_, pemBytes := newKey(t, tp)

	other := swtpm.New(t, swtpm.Fresh())
	s, err := nodekey.ParseKey(pemBytes, nodekey.WithTPM(other.Spec()))
	if err != nil {
		t.Fatal(err)
	}
	if err := nodekey.CheckSigns(s); nodekey.KindOf(err) != nodekey.KeyLost {
		t.Errorf("another TPM: %v (kind %q), want %s", err, nodekey.KindOf(err), nodekey.KeyLost)
	}

	tp.Clear()
	s, _ = nodekey.ParseKey(pemBytes, nodekey.WithTPM(tp.Spec()))
	err = nodekey.CheckSigns(s)
	if nodekey.KindOf(err) != nodekey.KeyLost {
		t.Fatalf("cleared TPM: %v (kind %q), want %s", err, nodekey.KindOf(err), nodekey.KeyLost)
	}
	t.Logf("cleared: %v", err)
}

// TestTPMLockout: in dictionary-attack lockout the node key (noDA) still
// signs and a new one can be made; Probe reports the lockout.
func TestTPMLockout(t *testing.T) {
	tp := swtpm.New(t)
	_, pemBytes := newKey(t, tp)
	tp.Lockout()
	st, err := nodekey.Probe(nodekey.WithTPM(tp.Spec()))
	if err != nil || !st.InLockout {
		t.Fatalf("Probe in lockout: %+v, %v", st, err)
	}
	s, _ := nodekey.ParseKey(pemBytes, nodekey.WithTPM(tp.Spec()))
	if err := nodekey.CheckSigns(s); err != nil {
		t.Errorf("the noDA key did not sign in lockout: %v", err)
	}
	newKey(t, tp)
	t.Logf("status: %s", st)
}

// TestTPMOwnerPassword: with an owner password set, keys are made and sign
// only with it (read from a file), and without it the failure says so.
func TestTPMOwnerPassword(t *testing.T) {
	tp := swtpm.New(t)
	tp.SetOwnerPassword("ownerpw")
	if st, err := nodekey.Probe(nodekey.WithTPM(tp.Spec())); err != nil || !st.OwnerAuthSet {
		t.Fatalf("Probe: %+v, %v", st, err)
	}
	_, err := nodekey.CreateTPMKey(nodekey.WithTPM(tp.Spec()))
	if nodekey.KindOf(err) != nodekey.OwnerAuth {
		t.Fatalf("without the owner password: %v, want %s", err, nodekey.OwnerAuth)
	}
	pw := filepath.Join(t.TempDir(), "owner")
	os.WriteFile(pw, []byte("ownerpw\n"), 0o600)
	_, pemBytes := newKey(t, tp, nodekey.WithOwnerAuthFile(pw))
	s, _ := nodekey.ParseKey(pemBytes, nodekey.WithTPM(tp.Spec()), nodekey.WithOwnerAuthFile(pw))
	if err := nodekey.CheckSigns(s); err != nil {
		t.Errorf("sign with the owner password: %v", err)
	}
	if err := nodekey.CheckStorageKey(nodekey.WithTPM(tp.Spec())); nodekey.KindOf(err) != nodekey.OwnerAuth {
		t.Errorf("CheckStorageKey without the password: %v", err)
	}
	if st, _ := nodekey.Probe(nodekey.WithTPM(tp.Spec())); st.LockoutCounter != 0 {
		t.Errorf("a missing owner password counted toward lockout: %+v", st)
	}
}

// TestNoTPM: a TPM that is not there is NoDevice, named at once.
func TestNoTPM(t *testing.T) {
	for _, spec := range []string{"/nonexistent/tpmrm0", "swtpm:path=/nonexistent/tpm.sock", "/tmp"} {
		_, err := nodekey.CreateTPMKey(nodekey.WithTPM(spec))
		if nodekey.KindOf(err) != nodekey.NoDevice {
			t.Errorf("%s: %v (kind %q), want %s", spec, err, nodekey.KindOf(err), nodekey.NoDevice)
		}
	}
	if _, err := nodekey.Probe(nodekey.WithTPM("tpmrm0")); nodekey.KindOf(err) != nodekey.NoDevice {
		t.Errorf("relative spec: %v", err)
	}
	// A character device that is not a TPM answers nothing a TPM would.
	if _, err := nodekey.Probe(nodekey.WithTPM("/dev/null")); err == nil {
		t.Error("/dev/null was taken for a TPM")
	}
}

func TestParseSpec(t *testing.T) {
	for in, want := range map[string]string{
		"/dev/tpmrm0":                     "/dev/tpmrm0",
		"swtpm:path=/run/swtpm/sock":      "swtpm:path=/run/swtpm/sock",
		"swtpm:host=127.0.0.1,port=23210": "swtpm:host=127.0.0.1,port=23210",
		"swtpm:port=23210":                "swtpm:host=localhost,port=23210",
		"swtpm:":                          "",
		"dev/tpmrm0":                      "",
		"/dev/../dev/tpmrm0":              "",
		"swtpm:path=rel/sock":             "",
		"swtpm:path=/a,port=1":            "",
		"swtpm:port=70000":                "",
		"swtpm:bogus=1":                   "",
		"/":                               "",
	} {
		s, err := nodekey.ParseSpec(in)
		if want == "" {
			if err == nil && in != "swtpm:" {
				t.Errorf("ParseSpec(%q) = %v, want an error", in, s)
			}
			continue
		}
		if err != nil || s.String() != want {
			t.Errorf("ParseSpec(%q) = %q, %v; want %q", in, s, err, want)
		}
	}
}

// TestParseKeySoftware: key.pem of a software key parses as before, and
// MarshalKey writes it back the same.
func TestParseKeySoftware(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b, err := nodekey.MarshalKey(k)
	if err != nil {
		t.Fatal(err)
	}
	s, err := nodekey.ParseKey(b)
	if err != nil || !s.(*ecdsa.PrivateKey).Equal(k) {
		t.Fatalf("ParseKey: %v", err)
	}
	if nodekey.IsTPMPEM(b) {
		t.Error("a software key taken for a TPM key")
	}
	if err := nodekey.CheckSigns(s); err != nil {
		t.Error(err)
	}
	if _, err := nodekey.ParseKey([]byte("-----BEGIN TSS2 PRIVATE KEY-----\nMAA=\n-----END TSS2 PRIVATE KEY-----\n")); nodekey.KindOf(err) != nodekey.BadKeyFile {
		t.Errorf("an empty TSS2 key: %v", err)
	}
}

func selfSigned(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		DNSNames: []string{"localhost"},
	}, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}}, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

// handshake runs one TLS handshake of version v over a pipe, the client
// presenting cert to a server that requires and verifies it; it returns
// the client CN the server verified.
func handshake(t *testing.T, cert tls.Certificate, ca *x509.Certificate, caKey *ecdsa.PrivateKey, v uint16) string {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv := tls.Certificate{Certificate: [][]byte{ca.Raw}, PrivateKey: caKey}
	c1, c2 := pipe(t)
	errc := make(chan error, 1)
	var cn string
	go func() {
		s := tls.Server(c2, &tls.Config{Certificates: []tls.Certificate{srv}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, MinVersion: v, MaxVersion: v})
		err := s.Handshake()
		if err == nil {
			cn = s.ConnectionState().PeerCertificates[0].Subject.CommonName
		}
		s.Close()
		errc <- err
	}()
	c := tls.Client(c1, &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: "localhost", MinVersion: v, MaxVersion: v})
	cerr := c.Handshake()
	c.Close()
	if err := <-errc; err != nil || cerr != nil {
		t.Fatalf("TLS %x handshake: server %v, client %v", v, err, cerr)
	}
	return cn
}

// pipe is a connected pair of loopback TCP connections (a net.Pipe has no
// buffer, and TLS 1.3's session tickets would block on it).
func pipe(t *testing.T) (net.Conn, net.Conn) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c1, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c1, c2
}
