package clientcert

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// testNow is the fixed clock of the tests.
var testNow = time.Date(2026, 3, 15, 12, 0, 0, 0, time.UTC)

var serialCounter atomic.Int64

// testPKI is a real root -> intermediate CA, like step-ca's default layout.
type testPKI struct {
	root, inter       *x509.Certificate
	rootKey, interKey crypto.Signer
	pool              *x509.CertPool
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newPKI(t testing.TB, name string) *testPKI {
	t.Helper()
	p := &testPKI{rootKey: newKey(t), interKey: newKey(t)}
	rt := &x509.Certificate{
		SerialNumber:          big.NewInt(serialCounter.Add(1)),
		Subject:               pkix.Name{CommonName: name + " Root CA", Organization: []string{name}},
		NotBefore:             testNow.Add(-24 * time.Hour),
		NotAfter:              testNow.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true, IsCA: true,
	}
	p.root = sign(t, rt, rt, p.rootKey.Public(), p.rootKey)
	it := &x509.Certificate{
		SerialNumber:          big.NewInt(serialCounter.Add(1)),
		Subject:               pkix.Name{CommonName: name + " Intermediate CA", Organization: []string{name}},
		NotBefore:             testNow.Add(-24 * time.Hour),
		NotAfter:              testNow.Add(5 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
	}
	p.inter = sign(t, it, p.root, p.interKey.Public(), p.rootKey)
	p.pool = x509.NewCertPool()
	p.pool.AddCert(p.root)
	return p
}

type leafOpts struct {
	cn        string
	org       []string
	dns       []string
	uris      []string
	eku       []x509.ExtKeyUsage // nil: clientAuth+serverAuth like step-ca; use noEKU for none
	noEKU     bool
	notBefore time.Time
	notAfter  time.Time
}

// leaf issues a leaf from the intermediate and returns [leaf, intermediate],
// the chain a step client presents.
func (p *testPKI) leaf(t testing.TB, o leafOpts) []*x509.Certificate {
	t.Helper()
	if o.notBefore.IsZero() {
		o.notBefore = testNow.Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = testNow.Add(24 * time.Hour)
	}
	eku := o.eku
	if eku == nil && !o.noEKU {
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	var uris []*url.URL
	for _, u := range o.uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		uris = append(uris, pu)
	}
	k := newKey(t)
	lt := &x509.Certificate{
		SerialNumber: new(big.Int).Lsh(big.NewInt(serialCounter.Add(1)), 100), // big, like step-ca serials
		Subject:      pkix.Name{CommonName: o.cn, Organization: o.org},
		DNSNames:     o.dns,
		URIs:         uris,
		NotBefore:    o.notBefore,
		NotAfter:     o.notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  eku,
	}
	return []*x509.Certificate{sign(t, lt, p.inter, k.Public(), p.interKey), p.inter}
}

// node issues the standard node certificate: CN and DNS SAN = id.
func (p *testPKI) node(t testing.TB, id string) []*x509.Certificate {
	return p.leaf(t, leafOpts{cn: id, dns: []string{id}})
}

// ---- encoders: each emulates exactly what the ingress emits ----

func b64(c *x509.Certificate) string { return base64.StdEncoding.EncodeToString(c.Raw) }

func pemOf(chain ...*x509.Certificate) string {
	var b strings.Builder
	for _, c := range chain {
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return b.String()
}

// encTraefik: v2.9.2+/v3 sanitize(): PEM without armour and newlines, "," joined.
func encTraefik(chain ...*x509.Certificate) string {
	var parts []string
	for _, c := range chain {
		s := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
		s = strings.ReplaceAll(s, "-----BEGIN CERTIFICATE-----", "")
		s = strings.ReplaceAll(s, "-----END CERTIFICATE-----", "")
		s = strings.ReplaceAll(s, "\n", "")
		parts = append(parts, s)
	}
	return strings.Join(parts, ",")
}

// encTraefikEscaped: v2.0.0-v2.9.1 sanitize() ended in url.QueryEscape per certificate.
func encTraefikEscaped(chain ...*x509.Certificate) string {
	var parts []string
	for _, p := range strings.Split(encTraefik(chain...), ",") {
		parts = append(parts, url.QueryEscape(p))
	}
	return strings.Join(parts, ",")
}

// escapeExcept percent-encodes every byte except unreserved ones and keep.
func escapeExcept(s, keep string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("-._~"+keep, c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// encNginx: ngx_escape_uri(NGX_ESCAPE_URI_COMPONENT) of the PEM leaf.
func encNginx(leaf *x509.Certificate) string { return escapeExcept(pemOf(leaf), "") }

// encALB: URL-encoded PEM chain with "+", "=" and "/" left unescaped.
func encALB(chain ...*x509.Certificate) string { return escapeExcept(pemOf(chain...), "+=/") }

// xfccElem renders one Envoy XFCC element with By, Hash, Cert, Chain, Subject, URI, DNS.
func xfccElem(by string, chain []*x509.Certificate, withCert, withChain bool) string {
	leaf := chain[0]
	sum := sha256.Sum256(leaf.Raw)
	parts := []string{"By=" + by, "Hash=" + hex.EncodeToString(sum[:])}
	if withCert {
		parts = append(parts, `Cert="`+escapeExcept(pemOf(leaf), "")+`"`)
	}
	if withChain {
		parts = append(parts, `Chain="`+escapeExcept(pemOf(chain...), "")+`"`)
	}
	parts = append(parts, `Subject="`+strings.ReplaceAll(leaf.Subject.String(), `"`, `\"`)+`"`)
	for _, u := range leaf.URIs {
		parts = append(parts, "URI="+u.String())
	}
	for _, d := range leaf.DNSNames {
		parts = append(parts, "DNS="+d)
	}
	return strings.Join(parts, ";")
}

func encHAProxyChain(inters ...*x509.Certificate) string {
	var der []byte
	for _, c := range inters {
		der = append(der, c.Raw...)
	}
	return base64.StdEncoding.EncodeToString(der)
}

func sfBinary(c *x509.Certificate) string { return ":" + b64(c) + ":" }
