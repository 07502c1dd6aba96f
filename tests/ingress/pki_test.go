package ingress

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/gpuaas/provision/tests/controlplane"
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
	dir := t.TempDir()
	cp, err := controlplane.NewPKI(filepath.Join(dir, "cp"), "Test Control Plane")
	if err != nil {
		t.Fatal(err)
	}
	unrelated, err := controlplane.NewPKI(filepath.Join(dir, "other"), "Transient Unrelated")
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(from *controlplane.PKI, req controlplane.LeafRequest) issued {
		l, err := from.IssueLeaf(req)
		if err != nil {
			t.Fatal(err)
		}
		return issued{cert: l.Cert, key: l.Key}
	}
	p := &testPKI{
		root:  issued{cert: cp.Root, key: cp.RootKey},
		inter: issued{cert: cp.Intermediate, key: cp.IntermediateKey},
		other: issued{cert: unrelated.Root, key: unrelated.RootKey},
	}
	// An organization with a comma: the forwarded -Info headers must cope.
	p.client = leaf(cp, controlplane.LeafRequest{CommonName: testNodeCN, DNSNames: []string{testNodeCN}, Organization: []string{"Acme, Inc."},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}})
	p.server = leaf(cp, controlplane.LeafRequest{CommonName: testHostname, DNSNames: []string{testHostname}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	// The unrelated CA's node leaf, presented alone: nothing the ingress
	// trusts chains it.
	p.otherClient = leaf(unrelated, controlplane.LeafRequest{CommonName: testNodeCN, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	write := func(name string, data []byte) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	p.rootFile = cp.RootPath
	p.otherRootFile = unrelated.RootPath
	p.serverCertFile = write("server.crt", append(certPEM(p.server.cert), certPEM(p.inter.cert)...))
	der, err := x509.MarshalECPrivateKey(p.server.key)
	if err != nil {
		t.Fatal(err)
	}
	p.serverKeyFile = write("server.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	p.garbageFile = write("broken-ca.pem", []byte("this is not PEM: a secret key was mounted here\n"))
	p.pool = cp.RootPool()
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

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
