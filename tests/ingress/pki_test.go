package ingress

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const (
	testHostname = "node-api.cp.internal"
	testNodeCN   = "gpu-0042"
)

type issued struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// testPKI is the certificate world of one test: the control plane's CA
// (root -> intermediate) issuing a node client leaf and the ingress's server
// leaf, plus an unrelated CA issuing a node leaf with the same CN.
type testPKI struct {
	root, inter, client, server issued
	other, otherClient          issued

	rootFile, otherRootFile, serverCertFile, serverKeyFile string
	garbageFile                                            string
	pool                                                   *x509.CertPool
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{}
	p.root = issue(t, nil, &x509.Certificate{Subject: pkix.Name{CommonName: "Test Control Plane Root CA"}, IsCA: true})
	p.inter = issue(t, &p.root, &x509.Certificate{Subject: pkix.Name{CommonName: "Test Control Plane Intermediate CA"}, IsCA: true})
	p.client = issue(t, &p.inter, &x509.Certificate{
		Subject:     pkix.Name{CommonName: testNodeCN, Organization: []string{"Acme, Inc."}},
		DNSNames:    []string{testNodeCN},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	})
	p.server = issue(t, &p.inter, &x509.Certificate{
		Subject:     pkix.Name{CommonName: testHostname},
		DNSNames:    []string{testHostname},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	p.other = issue(t, nil, &x509.Certificate{Subject: pkix.Name{CommonName: "Transient Unrelated Root CA"}, IsCA: true})
	p.otherClient = issue(t, &p.other, &x509.Certificate{
		Subject:     pkix.Name{CommonName: testNodeCN},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	p.rootFile = write("root.pem", certPEM(p.root.cert))
	p.otherRootFile = write("other-root.pem", certPEM(p.other.cert))
	p.serverCertFile = write("server.crt", append(certPEM(p.server.cert), certPEM(p.inter.cert)...))
	der, err := x509.MarshalECPrivateKey(p.server.key)
	if err != nil {
		t.Fatal(err)
	}
	p.serverKeyFile = write("server.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	p.garbageFile = write("broken-ca.pem", []byte("this is not PEM: a secret key was mounted here\n"))
	p.pool = x509.NewCertPool()
	p.pool.AddCert(p.root.cert)
	return p
}

// clientCert is the node's credential as a smallstep client presents it:
// leaf then intermediate.
func (p *testPKI) clientCert() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{p.client.cert.Raw, p.inter.cert.Raw}, PrivateKey: p.client.key, Leaf: p.client.cert}
}

func (p *testPKI) otherClientCert() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{p.otherClient.cert.Raw}, PrivateKey: p.otherClient.key, Leaf: p.otherClient.cert}
}

var serial int64 = 1000

func issue(t testing.TB, parent *issued, tmpl *x509.Certificate) issued {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl.SerialNumber = big.NewInt(serial)
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	if tmpl.IsCA {
		tmpl.BasicConstraintsValid = true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	signer, signKey := tmpl, key
	if parent != nil {
		signer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return issued{cert: c, key: key}
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
