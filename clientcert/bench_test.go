package clientcert

import (
	"net/netip"
	"testing"
	"time"
)

func BenchmarkParse(b *testing.B) {
	p := newPKI(b, "Acme")
	chain := p.node(b, "gpu-0042")
	for _, bc := range []struct {
		name, header, value string
	}{
		{"traefik", "X-Forwarded-Tls-Client-Cert", encTraefik(chain...)},
		{"envoy", "X-Forwarded-Client-Cert", xfccElem("spiffe://gw", chain, true, true)},
		{"nginx", "X-SSL-Client-Cert", encNginx(chain[0])},
	} {
		h := hdr(bc.header, bc.value)
		b.Run(bc.name, func(b *testing.B) {
			for range b.N {
				if _, _, err := Parse(h, ParseOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkVerifyTraefikChain(b *testing.B) {
	p := newPKI(b, "Acme")
	chain := p.node(b, "gpu-0042")
	v, err := NewVerifier(Config{Roots: p.pool, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.40.0.0/24")}, Now: func() time.Time { return testNow }})
	if err != nil {
		b.Fatal(err)
	}
	r := req(proxyAddr, hdr("X-Forwarded-Tls-Client-Cert", encTraefik(chain...)))
	b.ResetTimer()
	for range b.N {
		if res := v.VerifyExpected(r, "gpu-0042"); !res.OK() {
			b.Fatal(res.Reason, res.Detail)
		}
	}
}
