package clientcert

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const proxyAddr = "10.40.0.2:51234" // the ingress, inside the trusted prefix

func newTestVerifier(t *testing.T, p *testPKI, mod func(*Config)) *Verifier {
	t.Helper()
	cfg := Config{
		Roots:          p.pool,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.40.0.0/24"), netip.MustParsePrefix("::1/128")},
		Now:            func() time.Time { return testNow },
	}
	if mod != nil {
		mod(&cfg)
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func req(remote string, h http.Header) *http.Request {
	r := httptest.NewRequest("GET", "/v1/nodes/gpu-0042/tasks/wait", nil)
	r.RemoteAddr = remote
	for k, vs := range h {
		r.Header[k] = vs
	}
	return r
}

func TestVerifyReasons(t *testing.T) {
	p := newPKI(t, "Acme")
	rogue := newPKI(t, "Rogue")
	good := p.node(t, "gpu-0042")
	tr := func(c []*x509.Certificate) http.Header { return hdr("X-Forwarded-Tls-Client-Cert", encTraefik(c...)) }

	// An intermediate whose name constraints exclude the node's name: the
	// chain is found but refused for a reason other than authority or time.
	constrainedKey := newKey(t)
	constrained := sign(t, &x509.Certificate{
		SerialNumber: big.NewInt(9001), Subject: pkix.Name{CommonName: "constrained CA"},
		NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(time.Hour),
		BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign,
		PermittedDNSDomainsCritical: true, PermittedDNSDomains: []string{"other.example"},
	}, p.root, constrainedKey.Public(), p.rootKey)
	underConstrained := sign(t, &x509.Certificate{
		SerialNumber: big.NewInt(9002), Subject: pkix.Name{CommonName: "gpu-0042"}, DNSNames: []string{"gpu-0042"},
		NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, constrained, newKey(t).Public(), constrainedKey)

	tests := []struct {
		name         string
		r            *http.Request
		mod          func(*Config)
		expected     string
		want         Reason
		wantPresent  bool
		wantVerified bool
		wantIdentity string
		wantFormat   Format
	}{
		{"traefik chain ok", req(proxyAddr, tr(good)), nil, "gpu-0042", ReasonOK, true, true, "gpu-0042", FormatTraefik},
		{"ok from IPv6 loopback proxy", req("[::1]:4000", tr(good)), nil, "", ReasonOK, true, true, "gpu-0042", FormatTraefik},
		{"ok from IPv4-mapped IPv6 proxy", req("[::ffff:10.40.0.2]:4000", tr(good)), nil, "", ReasonOK, true, true, "gpu-0042", FormatTraefik},
		{"identity from DNS SAN matches expected", req(proxyAddr, tr(p.leaf(t, leafOpts{cn: "node", dns: []string{"gpu-0042.nodes"}}))), nil, "gpu-0042.nodes", ReasonOK, true, true, "gpu-0042.nodes", FormatTraefik},
		{"identity from URI SAN", req(proxyAddr, tr(p.leaf(t, leafOpts{uris: []string{"spiffe://cp/node/gpu-0042"}}))), func(c *Config) { c.Identity = []IdentitySource{IdentityURISAN} }, "spiffe://cp/node/gpu-0042", ReasonOK, true, true, "spiffe://cp/node/gpu-0042", FormatTraefik},
		{"missing from trusted proxy", req(proxyAddr, hdr()), nil, "gpu-0042", ReasonMissing, false, false, "", ""},
		{"proxy's own TLS client cert is not the node", func() *http.Request {
			r := req(proxyAddr, hdr())
			r.TLS = &tls.ConnectionState{PeerCertificates: good}
			return r
		}(), nil, "", ReasonMissing, false, false, "", ""},
		{"untrusted proxy", req("192.0.2.7:999", tr(good)), nil, "gpu-0042", ReasonUntrustedProxy, true, false, "", FormatTraefik},
		{"no trusted proxies configured", req(proxyAddr, tr(good)), func(c *Config) { c.TrustedProxies = nil }, "", ReasonUntrustedProxy, true, false, "", FormatTraefik},
		{"missing from untrusted peer", req("192.0.2.7:999", hdr()), nil, "", ReasonMissing, false, false, "", ""},
		{"direct TLS client cert", func() *http.Request {
			r := req("192.0.2.7:999", hdr())
			r.TLS = &tls.ConnectionState{PeerCertificates: good}
			return r
		}(), nil, "gpu-0042", ReasonOK, true, true, "gpu-0042", FormatTLS},
		{"direct TLS ignored when configured", func() *http.Request {
			r := req("192.0.2.7:999", hdr())
			r.TLS = &tls.ConnectionState{PeerCertificates: good}
			return r
		}(), func(c *Config) { c.IgnoreDirectTLS = true }, "", ReasonMissing, false, false, "", ""},
		{"ambiguous", req(proxyAddr, hdr("X-Forwarded-Tls-Client-Cert", encTraefik(good...), "X-Client-Cert", b64(good[0]))), nil, "", ReasonAmbiguous, true, false, "", ""},
		{"malformed", req(proxyAddr, hdr("X-Forwarded-Tls-Client-Cert", "AAAA")), nil, "", ReasonMalformed, true, false, "", FormatTraefik},
		{"too large", req(proxyAddr, tr(good)), func(c *Config) { c.MaxHeaderBytes = 64 }, "", ReasonTooLarge, true, false, "", FormatTraefik},
		{"unknown authority: other CA", req(proxyAddr, tr(rogue.node(t, "gpu-0042"))), nil, "gpu-0042", ReasonUnknownAuthority, true, false, "", FormatTraefik},
		{"unknown authority: intermediate not forwarded", req(proxyAddr, tr(good[:1])), nil, "", ReasonUnknownAuthority, true, false, "", FormatTraefik},
		{"expired", req(proxyAddr, tr(good)), func(c *Config) { c.Now = func() time.Time { return testNow.Add(48 * time.Hour) } }, "", ReasonExpired, true, false, "", FormatTraefik},
		{"not yet valid", req(proxyAddr, tr(good)), func(c *Config) { c.Now = func() time.Time { return testNow.Add(-2 * time.Hour) } }, "", ReasonNotYetValid, true, false, "", FormatTraefik},
		{"wrong usage: serverAuth only", req(proxyAddr, tr(p.leaf(t, leafOpts{cn: "gpu-0042", eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}))), nil, "", ReasonWrongUsage, true, false, "", FormatTraefik},
		{"wrong usage: no EKU at all", req(proxyAddr, tr(p.leaf(t, leafOpts{cn: "gpu-0042", noEKU: true}))), nil, "", ReasonWrongUsage, true, false, "", FormatTraefik},
		{"invalid chain: name constraints", req(proxyAddr, tr([]*x509.Certificate{underConstrained, constrained})), nil, "", ReasonInvalidChain, true, false, "", FormatTraefik},
		{"no identity", req(proxyAddr, tr(p.leaf(t, leafOpts{uris: []string{"spiffe://cp/x"}}))), nil, "", ReasonNoIdentity, true, true, "", FormatTraefik},
		{"identity mismatch", req(proxyAddr, tr(p.node(t, "gpu-0041"))), nil, "gpu-0042", ReasonIdentityMismatch, true, true, "gpu-0041", FormatTraefik},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newTestVerifier(t, p, tt.mod)
			res := v.VerifyExpected(tt.r, tt.expected)
			if res.Reason != tt.want {
				t.Fatalf("reason = %q, want %q (detail: %s)", res.Reason, tt.want, res.Detail)
			}
			if res.MTLSPresent != tt.wantPresent || res.Verified != tt.wantVerified || res.Identity != tt.wantIdentity || res.Format != tt.wantFormat {
				t.Errorf("got present=%v verified=%v identity=%q format=%q, want %v %v %q %q (detail: %s)",
					res.MTLSPresent, res.Verified, res.Identity, res.Format, tt.wantPresent, tt.wantVerified, tt.wantIdentity, tt.wantFormat, res.Detail)
			}
			if res.OK() != (tt.want == ReasonOK) {
				t.Errorf("OK() = %v", res.OK())
			}
			if tt.want != ReasonMissing && tt.want != ReasonOK && res.Detail == "" {
				t.Errorf("rejection without detail")
			}
		})
	}
}

// TestVerifyEveryFormat: each format, as its ingress emits it, yields the
// same verified identity and the same certificate fields.
func TestVerifyEveryFormat(t *testing.T) {
	p := newPKI(t, "Acme")
	chain := p.node(t, "gpu-0042")
	leaf, inter := chain[0], chain[1]
	tests := []struct {
		name string
		h    http.Header
		want Format
	}{
		{"traefik", hdr("X-Forwarded-Tls-Client-Cert", encTraefik(chain...)), FormatTraefik},
		{"traefik escaped", hdr("X-Forwarded-Tls-Client-Cert", encTraefikEscaped(chain...)), FormatTraefikEscaped},
		{"nginx with intermediate in the verifier's pool only", hdr("X-SSL-Client-Cert", encNginx(leaf)), FormatNginx},
		{"envoy", hdr("X-Forwarded-Client-Cert", xfccElem("spiffe://gw", chain, true, true)), FormatEnvoy},
		{"haproxy", hdr("X-SSL-Client-Cert-DER", b64(leaf), "X-SSL-Client-Chain-DER", encHAProxyChain(inter)), FormatHAProxy},
		{"caddy", hdr("X-Client-Cert", b64(leaf)), FormatCaddy},
		{"aws alb", hdr("X-Amzn-Mtls-Clientcert", encALB(chain...)), FormatALB},
		{"rfc9440", hdr("Client-Cert", sfBinary(leaf), "Client-Cert-Chain", sfBinary(inter)), FormatRFC9440},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// nginx and Caddy forward the leaf only: the API then needs the
			// intermediate in its pool, as it would in production.
			pool := x509.NewCertPool()
			pool.AddCert(p.root)
			pool.AddCert(p.inter)
			v := newTestVerifier(t, p, func(c *Config) { c.Roots = pool })
			res := v.VerifyExpected(req(proxyAddr, tt.h), "gpu-0042")
			if !res.OK() {
				t.Fatalf("reason %q: %s", res.Reason, res.Detail)
			}
			if res.Format != tt.want || res.Identity != "gpu-0042" || !res.Verified || !res.MTLSPresent {
				t.Errorf("result %+v", res)
			}
			if res.Serial != leaf.SerialNumber.String() || res.Subject != "CN=gpu-0042" ||
				res.Issuer != "CN=Acme Intermediate CA,O=Acme" || res.NotAfter != leaf.NotAfter.UTC().Format(time.RFC3339) {
				t.Errorf("fields: serial %s subject %q issuer %q not_after %s", res.Serial, res.Subject, res.Issuer, res.NotAfter)
			}
		})
	}
}

func TestResultJSONKeys(t *testing.T) {
	b, err := json.Marshal(Result{Reason: ReasonMissing})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"mtls_present", "format", "subject", "issuer", "serial", "not_after", "verified", "reason", "identity"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks key %q: %s", k, b)
		}
	}
	if m["reason"] != "missing" || m["mtls_present"] != false {
		t.Errorf("JSON %s", b)
	}
}

func TestReasonsStable(t *testing.T) {
	want := "ok missing untrusted-proxy ambiguous malformed too-large unknown-authority expired not-yet-valid wrong-usage invalid-chain no-identity identity-mismatch"
	var got []string
	for _, r := range Reasons() {
		got = append(got, string(r))
	}
	if strings.Join(got, " ") != want {
		t.Errorf("Reasons() = %v; these values are a published interface", got)
	}
}

func TestNewVerifierRejectsBadConfig(t *testing.T) {
	pool := x509.NewCertPool()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no roots", Config{}, "Roots"},
		{"header shared by two formats", Config{Roots: pool, ParseOptions: ParseOptions{Headers: HeaderNames{Nginx: "X-Client-Cert"}}}, "both"},
		{"unknown format", Config{Roots: pool, ParseOptions: ParseOptions{Formats: []Format{"apache"}}}, "unknown format"},
		{"unknown identity source", Config{Roots: pool, Identity: []IdentitySource{"ip"}}, "identity source"},
		{"invalid prefix", Config{Roots: pool, TrustedProxies: []netip.Prefix{{}}}, "prefix"},
		{"negative limit", Config{Roots: pool, ParseOptions: ParseOptions{MaxChain: -1}}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewVerifier(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want mention of %q", err, tt.want)
			}
		})
	}
	// A shared header is fine once the formats are restricted to one of them.
	if _, err := NewVerifier(Config{Roots: pool, ParseOptions: ParseOptions{Formats: []Format{FormatNginx}, Headers: HeaderNames{Nginx: "X-Client-Cert"}}}); err != nil {
		t.Errorf("restricted formats: %v", err)
	}
}
