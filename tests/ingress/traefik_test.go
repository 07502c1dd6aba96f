package ingress

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
)

// TestTraefikEncodings pins the emulation's passTLSClientCert encodings to
// the worked example of the reference (§1.4, a step-style leaf whose
// organisation contains a comma), raw and on the wire.
func TestTraefikEncodings(t *testing.T) {
	spiffe, _ := url.Parse("spiffe://example.org/node/node-01")
	// Self-signed with an issuer of CN=node-01 only.
	leaf, err := controlplane.SelfSigned(controlplane.LeafRequest{
		CommonName: "node-01", Organization: []string{"Acme, Inc."}, IssuerName: &pkix.Name{CommonName: "node-01"},
		Serial: big.NewInt(123456789), NotBefore: time.Unix(1700000000, 0), NotAfter: time.Unix(1700086400, 0),
		DNSNames: []string{"node-01", "node-01.example.org"}, IPs: []net.IP{net.ParseIP("10.0.0.5")}, URIs: []*url.URL{spiffe},
	})
	if err != nil {
		t.Fatal(err)
	}
	c, der := leaf.Cert, leaf.Cert.Raw
	const raw = `Subject="O=Acme, Inc.,CN=node-01";Issuer="CN=node-01";SerialNumber="123456789";NB="1700000000";NA="1700086400";SAN="node-01,node-01.example.org,10.0.0.5,spiffe://example.org/node/node-01"`
	const wire = `Subject%3D%22O%3DAcme%2C+Inc.%2CCN%3Dnode-01%22%3BIssuer%3D%22CN%3Dnode-01%22%3BSerialNumber%3D%22123456789%22%3BNB%3D%221700000000%22%3BNA%3D%221700086400%22%3BSAN%3D%22node-01%2Cnode-01.example.org%2C10.0.0.5%2Cspiffe%3A%2F%2Fexample.org%2Fnode%2Fnode-01%22`
	tests := []struct{ name, got, want string }{
		{"info raw", TraefikInfoValue([]*x509.Certificate{c}), raw},
		{"info wire", url.QueryEscape(TraefikInfoValue([]*x509.Certificate{c})), wire},
		{"pem one", TraefikPEMValue([]*x509.Certificate{c}), base64.StdEncoding.EncodeToString(der)},
		{"pem chain", TraefikPEMValue([]*x509.Certificate{c, c}), base64.StdEncoding.EncodeToString(der) + "," + base64.StdEncoding.EncodeToString(der)},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, tc.got, tc.want)
		}
	}
}
