package diag_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
)

// testCA is a real certificate authority (root and intermediate, from
// tests/controlplane's PKI builder, the one the suites use): the tests
// exercise Go's real TLS stack, so the certificates must be real.
type testCA struct{ p *controlplane.PKI }

// newCA makes a CA whose root is "<name> Root CA" and intermediate
// "<name> Intermediate CA".
func newCA(t testing.TB, name string) *testCA {
	t.Helper()
	p, err := controlplane.NewPKI(t.TempDir(), name)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{p: p}
}

func (ca *testCA) pool() *x509.CertPool { return ca.p.RootPool() }

type leafOpts struct {
	cn        string
	dns       []string
	ips       []net.IP
	eku       x509.ExtKeyUsage
	notBefore time.Time
	selfSign  bool
}

// issue returns the leaf and the intermediate, as a server or a node
// presents them.
func (ca *testCA) issue(t testing.TB, o leafOpts) tls.Certificate {
	t.Helper()
	l, err := ca.p.IssueLeaf(controlplane.LeafRequest{CommonName: o.cn, DNSNames: o.dns, IPs: o.ips,
		ExtKeyUsage: []x509.ExtKeyUsage{o.eku}, NotBefore: o.notBefore, SelfSigned: o.selfSign})
	if err != nil {
		t.Fatal(err)
	}
	if o.selfSign {
		return tls.Certificate{Certificate: [][]byte{l.Cert.Raw}, PrivateKey: l.Key, Leaf: l.Cert}
	}
	return l.TLSCertificate()
}

func (ca *testCA) server(t testing.TB, host string) tls.Certificate {
	return ca.issue(t, leafOpts{cn: host, dns: []string{host}, eku: x509.ExtKeyUsageServerAuth})
}

func (ca *testCA) client(t testing.TB, nodeID string) tls.Certificate {
	return ca.issue(t, leafOpts{cn: nodeID, eku: x509.ExtKeyUsageClientAuth})
}
