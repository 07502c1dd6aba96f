package clientcert

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"
)

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestParseFormats(t *testing.T) {
	p := newPKI(t, "Acme")
	chain := p.node(t, "gpu-0042")
	leaf, inter := chain[0], chain[1]
	other := p.node(t, "gpu-0007")
	spoofed := xfccElem("spiffe://attacker", other, true, false)

	tests := []struct {
		name       string
		h          http.Header
		opts       ParseOptions
		wantFormat Format
		wantChain  int
		wantLeaf   string
	}{
		{"traefik v3 leaf only", hdr("X-Forwarded-Tls-Client-Cert", encTraefik(leaf)), ParseOptions{}, FormatTraefik, 1, "gpu-0042"},
		{"traefik v3 leaf and intermediate", hdr("X-Forwarded-Tls-Client-Cert", encTraefik(chain...)), ParseOptions{}, FormatTraefik, 2, "gpu-0042"},
		{"traefik v2.9.1 escaped chain", hdr("X-Forwarded-Tls-Client-Cert", encTraefikEscaped(chain...)), ParseOptions{}, FormatTraefikEscaped, 2, "gpu-0042"},
		{"traefik named escaped accepts plain", hdr("X-Forwarded-Tls-Client-Cert", encTraefik(chain...)), ParseOptions{Formats: []Format{FormatTraefikEscaped}}, FormatTraefik, 2, "gpu-0042"},
		{"traefik lower-case header name on the wire", hdr("x-forwarded-tls-client-cert", encTraefik(chain...)), ParseOptions{}, FormatTraefik, 2, "gpu-0042"},
		{"traefik with info header", hdr("X-Forwarded-Tls-Client-Cert", encTraefik(chain...), "X-Forwarded-Tls-Client-Cert-Info", `Subject%3D%22CN%3Dgpu-0042%22`), ParseOptions{}, FormatTraefik, 2, "gpu-0042"},
		{"nginx escaped PEM", hdr("X-SSL-Client-Cert", encNginx(leaf)), ParseOptions{}, FormatNginx, 1, "gpu-0042"},
		{"nginx under ingress-nginx header name", hdr("ssl-client-cert", encNginx(leaf)), ParseOptions{Headers: HeaderNames{Nginx: "ssl-client-cert"}}, FormatNginx, 1, "gpu-0042"},
		{"envoy cert only", hdr("X-Forwarded-Client-Cert", xfccElem("spiffe://cluster.local/ns/cp/sa/api", chain, true, false)), ParseOptions{}, FormatEnvoy, 1, "gpu-0042"},
		{"envoy cert and chain", hdr("X-Forwarded-Client-Cert", xfccElem("spiffe://cluster.local/ns/cp/sa/api", chain, true, true)), ParseOptions{}, FormatEnvoy, 2, "gpu-0042"},
		{"envoy chain only", hdr("X-Forwarded-Client-Cert", xfccElem("spiffe://x", chain, false, true)), ParseOptions{}, FormatEnvoy, 2, "gpu-0042"},
		{"envoy APPEND_FORWARD: client element first, proxy's last", hdr("X-Forwarded-Client-Cert", spoofed+","+xfccElem("spiffe://edge", chain, true, true)), ParseOptions{}, FormatEnvoy, 2, "gpu-0042"},
		{"envoy elements on two header lines", hdr("X-Forwarded-Client-Cert", spoofed, "X-Forwarded-Client-Cert", xfccElem("spiffe://edge", chain, true, false)), ParseOptions{}, FormatEnvoy, 1, "gpu-0042"},
		{"envoy gateway then sidecar, EnvoyElement 1", hdr("X-Forwarded-Client-Cert", xfccElem("spiffe://gw", chain, true, true)+`,By=spiffe://api;Hash=00;Subject="";URI=spiffe://cluster.local/ns/istio-system/sa/gw`), ParseOptions{EnvoyElement: 1}, FormatEnvoy, 2, "gpu-0042"},
		{"haproxy leaf", hdr("X-SSL-Client-Cert-DER", b64(leaf)), ParseOptions{}, FormatHAProxy, 1, "gpu-0042"},
		{"haproxy %{+Q} quoted leaf and chain", hdr("X-SSL-Client-Cert-DER", `"`+b64(leaf)+`"`, "X-SSL-Client-Chain-DER", encHAProxyChain(inter)), ParseOptions{}, FormatHAProxy, 2, "gpu-0042"},
		{"haproxy chain repeating the leaf", hdr("X-SSL-Client-Cert-DER", b64(leaf), "X-SSL-Client-Chain-DER", encHAProxyChain(leaf, inter)), ParseOptions{}, FormatHAProxy, 2, "gpu-0042"},
		{"caddy", hdr("X-Client-Cert", b64(leaf)), ParseOptions{}, FormatCaddy, 1, "gpu-0042"},
		{"aws alb passthrough chain", hdr("X-Amzn-Mtls-Clientcert", encALB(chain...)), ParseOptions{}, FormatALB, 2, "gpu-0042"},
		{"aws alb verify-mode leaf", hdr("X-Amzn-Mtls-Clientcert-Leaf", encALB(leaf)), ParseOptions{}, FormatALB, 1, "gpu-0042"},
		{"rfc9440 leaf", hdr("Client-Cert", sfBinary(leaf)), ParseOptions{}, FormatRFC9440, 1, "gpu-0042"},
		{"rfc9440 leaf and chain", hdr("Client-Cert", sfBinary(leaf), "Client-Cert-Chain", sfBinary(inter)), ParseOptions{}, FormatRFC9440, 2, "gpu-0042"},
		{"rfc9440 chain list with OWS and params", hdr("Client-Cert", sfBinary(leaf)+";a=1", "Client-Cert-Chain", " "+sfBinary(inter)+" , "+sfBinary(p.root)), ParseOptions{}, FormatRFC9440, 3, "gpu-0042"},
		{"named format ignores other formats' headers", hdr("X-Forwarded-Tls-Client-Cert", encTraefik(chain...), "X-Client-Cert", "garbage"), ParseOptions{Formats: []Format{FormatTraefik}}, FormatTraefik, 2, "gpu-0042"},
		{"blank header of another format is absent", hdr("X-Forwarded-Tls-Client-Cert", encTraefik(chain...), "X-SSL-Client-Cert", ""), ParseOptions{}, FormatTraefik, 2, "gpu-0042"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, f, err := Parse(tt.h, tt.opts)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if f != tt.wantFormat {
				t.Errorf("format = %q, want %q", f, tt.wantFormat)
			}
			if len(got) != tt.wantChain {
				t.Fatalf("chain length = %d, want %d", len(got), tt.wantChain)
			}
			if got[0].Subject.CommonName != tt.wantLeaf {
				t.Errorf("leaf CN = %q, want %q", got[0].Subject.CommonName, tt.wantLeaf)
			}
			if !bytes.Equal(got[0].Raw, leaf.Raw) {
				t.Errorf("leaf is not the node's certificate")
			}
			if tt.wantChain > 1 && !bytes.Equal(got[1].Raw, inter.Raw) {
				t.Errorf("chain[1] is not the intermediate")
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	p := newPKI(t, "Acme")
	chain := p.node(t, "gpu-0042")
	leaf, inter := chain[0], chain[1]
	tr := encTraefik(chain...)
	long := strings.Repeat(tr+",", 20)
	// A leaf whose base64 contains "+", so that query-unescaping damages it.
	plusLeaf := leaf
	for i := 0; !strings.Contains(b64(plusLeaf), "+"); i++ {
		if i == 100 {
			t.Fatal("no leaf with + in its base64 after 100 tries")
		}
		plusLeaf = p.node(t, "gpu-0042")[0]
	}

	tests := []struct {
		name   string
		h      http.Header
		opts   ParseOptions
		want   Reason
		detail string // substring of the error
	}{
		{"nothing", hdr(), ParseOptions{}, ReasonMissing, "looked for X-Forwarded-Tls-Client-Cert"},
		{"only the traefik info header", hdr("X-Forwarded-Tls-Client-Cert-Info", "Subject%3D%22CN%3Dx%22"), ParseOptions{}, ReasonMissing, "pem: true"},
		{"blank traefik header", hdr("X-Forwarded-Tls-Client-Cert", "  "), ParseOptions{}, ReasonMissing, ""},
		{"haproxy %{+Q} without a client certificate", hdr("X-SSL-Client-Cert-DER", `""`), ParseOptions{}, ReasonMissing, ""},
		{"named format absent though another present", hdr("X-SSL-Client-Cert", encNginx(leaf)), ParseOptions{Formats: []Format{FormatTraefik}}, ReasonMissing, ""},
		{"traefik and nginx", hdr("X-Forwarded-Tls-Client-Cert", tr, "X-SSL-Client-Cert", encNginx(leaf)), ParseOptions{}, ReasonAmbiguous, "refusing to guess"},
		{"xfcc and rfc9440", hdr("X-Forwarded-Client-Cert", xfccElem("x", chain, true, false), "Client-Cert", sfBinary(leaf)), ParseOptions{}, ReasonAmbiguous, ""},
		{"traefik header twice", hdr("X-Forwarded-Tls-Client-Cert", tr, "X-Forwarded-Tls-Client-Cert", encTraefik(leaf)), ParseOptions{}, ReasonAmbiguous, "appears 2 times"},
		{"alb both headers", hdr("X-Amzn-Mtls-Clientcert", encALB(leaf), "X-Amzn-Mtls-Clientcert-Leaf", encALB(leaf)), ParseOptions{}, ReasonAmbiguous, ""},
		{"traefik bad base64", hdr("X-Forwarded-Tls-Client-Cert", "MII$$$"), ParseOptions{}, ReasonMalformed, "base64"},
		{"traefik bad DER", hdr("X-Forwarded-Tls-Client-Cert", "AAAA"), ParseOptions{}, ReasonMalformed, "DER"},
		{"traefik empty element", hdr("X-Forwarded-Tls-Client-Cert", tr+","), ParseOptions{}, ReasonMalformed, "empty"},
		{"traefik bad escape", hdr("X-Forwarded-Tls-Client-Cert", "MII%zz"), ParseOptions{}, ReasonMalformed, "unescape"},
		{"traefik PEM with armour (not what traefik sends)", hdr("X-Forwarded-Tls-Client-Cert", pemOf(leaf)), ParseOptions{}, ReasonMalformed, ""},
		{"nginx raw base64 instead of PEM", hdr("X-SSL-Client-Cert", b64(leaf)), ParseOptions{}, ReasonMalformed, "outside PEM"},
		{"nginx private key block", hdr("X-SSL-Client-Cert", escapeExcept("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "")), ParseOptions{}, ReasonMalformed, "PRIVATE KEY"},
		{"nginx truncated PEM", hdr("X-SSL-Client-Cert", encNginx(leaf)[:200]), ParseOptions{}, ReasonMalformed, ""},
		{"nginx trailing garbage", hdr("X-SSL-Client-Cert", encNginx(leaf)+"junk"), ParseOptions{}, ReasonMalformed, "outside PEM"},
		{"xfcc element without Cert", hdr("X-Forwarded-Client-Cert", "By=spiffe://a;Hash=abcd;Subject=\"CN=x\""), ParseOptions{}, ReasonMalformed, "set_current_client_cert_details"},
		{"xfcc hash mismatch", hdr("X-Forwarded-Client-Cert", strings.Replace(xfccElem("x", chain, true, false), "Hash=", "Hash=00", 1)), ParseOptions{}, ReasonMalformed, "Hash"},
		{"xfcc chain not starting with cert", hdr("X-Forwarded-Client-Cert", `Cert="`+encNginx(leaf)+`";Chain="`+escapeExcept(pemOf(inter, leaf), "")+`"`), ParseOptions{}, ReasonMalformed, "Chain does not start"},
		{"xfcc unterminated quote", hdr("X-Forwarded-Client-Cert", `By=a;Subject="CN=x`), ParseOptions{}, ReasonMalformed, "unterminated"},
		{"xfcc element index out of range", hdr("X-Forwarded-Client-Cert", xfccElem("x", chain, true, false)), ParseOptions{EnvoyElement: 1}, ReasonMalformed, "does not exist"},
		{"xfcc repeated Cert key", hdr("X-Forwarded-Client-Cert", `Cert="a";cert="b"`), ParseOptions{}, ReasonMalformed, "repeated"},
		{"haproxy chain without leaf", hdr("X-SSL-Client-Chain-DER", encHAProxyChain(inter)), ParseOptions{}, ReasonMalformed, "without leaf"},
		{"haproxy bad chain DER", hdr("X-SSL-Client-Cert-DER", b64(leaf), "X-SSL-Client-Chain-DER", "AAAA"), ParseOptions{}, ReasonMalformed, "chain DER"},
		{"caddy PEM instead of DER", hdr("X-Client-Cert", pemOf(leaf)), ParseOptions{}, ReasonMalformed, "base64"},
		{"alb query-unescaped (+ became space)", hdr("X-Amzn-Mtls-Clientcert", strings.ReplaceAll(encALB(plusLeaf), "+", " ")), ParseOptions{}, ReasonMalformed, ""},
		{"rfc9440 without colons", hdr("Client-Cert", b64(leaf)), ParseOptions{}, ReasonMalformed, "byte sequence"},
		{"rfc9440 chain without leaf", hdr("Client-Cert-Chain", sfBinary(inter)), ParseOptions{}, ReasonMalformed, "without Client-Cert"},
		{"rfc9440 bad chain item", hdr("Client-Cert", sfBinary(leaf), "Client-Cert-Chain", sfBinary(inter)+", nope"), ParseOptions{}, ReasonMalformed, "item 1"},
		{"header over the byte limit", hdr("X-Forwarded-Tls-Client-Cert", tr), ParseOptions{MaxHeaderBytes: 100}, ReasonTooLarge, "limit 100"},
		{"default byte limit", hdr("X-Forwarded-Client-Cert", strings.Repeat("a", DefaultMaxHeaderBytes+1)), ParseOptions{}, ReasonTooLarge, ""},
		{"traefik chain over the count limit", hdr("X-Forwarded-Tls-Client-Cert", long[:len(long)-1]), ParseOptions{}, ReasonTooLarge, "certificates"},
		{"rfc9440 chain over the count limit", hdr("Client-Cert", sfBinary(leaf), "Client-Cert-Chain", sfBinary(inter)+","+sfBinary(inter)), ParseOptions{MaxChain: 2}, ReasonTooLarge, ""},
		{"pem chain over the count limit", hdr("X-Amzn-Mtls-Clientcert", encALB(leaf, inter, inter)), ParseOptions{MaxChain: 2}, ReasonTooLarge, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, _, err := Parse(tt.h, tt.opts)
			if err == nil {
				t.Fatalf("Parse succeeded with %d certificates, want %s", len(chain), tt.want)
			}
			if got := ReasonOf(err); got != tt.want {
				t.Fatalf("reason = %q, want %q (err: %v)", got, tt.want, err)
			}
			if !strings.Contains(err.Error(), tt.detail) {
				t.Errorf("error %q does not mention %q", err, tt.detail)
			}
		})
	}
}

func TestParseXFCCQuoting(t *testing.T) {
	// Shape of the example in Envoy's header documentation, plus an escaped quote.
	v := `By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;` +
		`Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com;DNS=lyft.com;DNS=www.lyft.com,` +
		`by=spiffe://b; SUBJECT="CN=a \"quoted\", O=x;y=z"; uri=spiffe://c`
	els, err := ParseXFCC(v)
	if err != nil {
		t.Fatal(err)
	}
	if len(els) != 2 {
		t.Fatalf("got %d elements, want 2", len(els))
	}
	e0, e1 := els[0], els[1]
	if e0.Subject != "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client" || len(e0.DNS) != 2 || e0.DNS[1] != "www.lyft.com" ||
		e0.URI[0] != "http://testclient.lyft.com" || e0.Hash[:4] != "468e" || e0.By[0] != "http://frontend.lyft.com" {
		t.Errorf("element 0 = %+v", e0)
	}
	if e1.Subject != `CN=a "quoted", O=x;y=z` || e1.By[0] != "spiffe://b" || e1.URI[0] != "spiffe://c" {
		t.Errorf("element 1 = %+v", e1)
	}
	for _, bad := range []string{`a=b,,c=d`, `Subject="x"y"`, `Subject=x"y`, `novalue`, `Hash=a;Hash=b`, `Subject="\`} {
		if _, err := ParseXFCC(bad); ReasonOf(err) != ReasonMalformed {
			t.Errorf("ParseXFCC(%q) err = %v, want malformed", bad, err)
		}
	}
}

func TestParseTraefikInfo(t *testing.T) {
	tests := []struct {
		name string
		wire string
		want []TraefikCertInfo
	}{
		{
			// The step-style leaf from the reference, exactly as sent on the wire.
			name: "step-style leaf with comma inside quoted DN",
			wire: "Subject%3D%22O%3DAcme%2C+Inc.%2CCN%3Dnode-01%22%3BIssuer%3D%22CN%3Dnode-01%22%3BSerialNumber%3D%22123456789%22%3BNB%3D%221700000000%22%3BNA%3D%221700086400%22%3BSAN%3D%22node-01%2Cnode-01.example.org%2C10.0.0.5%2Cspiffe%3A%2F%2Fexample.org%2Fnode%2Fnode-01%22",
			want: []TraefikCertInfo{{
				Subject: "O=Acme, Inc.,CN=node-01", Issuer: "CN=node-01", SerialNumber: "123456789",
				NotBefore: time.Unix(1700000000, 0).UTC(), NotAfter: time.Unix(1700086400, 0).UTC(),
				SANs: []string{"node-01", "node-01.example.org", "10.0.0.5", "spiffe://example.org/node/node-01"},
			}},
		},
		{
			// Traefik's own TestPassTLSClientCert_certInfo vector, escaped, two certificates.
			name: "traefik test vector, chain of two",
			wire: "Subject%3D%22C%3DFR%2CST%3DSome-State%2CO%3DCheese%22%3BIssuer%3D%22DC%3Dorg%2CDC%3Dcheese%2CC%3DFR%2CC%3DUS%2CST%3DSigning+State%2CST%3DSigning+State+2%2CL%3DTOULOUSE%2CL%3DLYON%2CO%3DCheese%2CO%3DCheese+2%2CCN%3DSimple+Signing+CA+2%22%3BSerialNumber%3D%22481535886039632329873080491016862977516759989652%22%3BNB%3D%221544094636%22%3BNA%3D%221632568236%22%2CSubject%3D%22CN%3Dca%22",
			want: []TraefikCertInfo{
				{
					Subject:      "C=FR,ST=Some-State,O=Cheese",
					Issuer:       "DC=org,DC=cheese,C=FR,C=US,ST=Signing State,ST=Signing State 2,L=TOULOUSE,L=LYON,O=Cheese,O=Cheese 2,CN=Simple Signing CA 2",
					SerialNumber: "481535886039632329873080491016862977516759989652",
					NotBefore:    time.Unix(1544094636, 0).UTC(), NotAfter: time.Unix(1632568236, 0).UTC(),
				},
				{Subject: "CN=ca"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTraefikInfo(tt.wire)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d entries, want %d: %+v", len(got), len(tt.want), got)
			}
			for i := range got {
				g, w := got[i], tt.want[i]
				if g.Subject != w.Subject || g.Issuer != w.Issuer || g.SerialNumber != w.SerialNumber ||
					!g.NotBefore.Equal(w.NotBefore) || !g.NotAfter.Equal(w.NotAfter) || strings.Join(g.SANs, "|") != strings.Join(w.SANs, "|") {
					t.Errorf("entry %d:\n got %+v\nwant %+v", i, g, w)
				}
			}
		})
	}
	for _, bad := range []string{"Subject%3D%22unterminated", "NB%3D%22notanumber%22", "Subject%3Dnoquotes", "%zz"} {
		if _, err := ParseTraefikInfo(bad); ReasonOf(err) != ReasonMalformed {
			t.Errorf("ParseTraefikInfo(%q) err = %v, want malformed", bad, err)
		}
	}
}

// TestKnownFormats ties the published list to the parser: a value in each
// listed format under its listed default header parses as that format.
func TestKnownFormats(t *testing.T) {
	p := newPKI(t, "Acme")
	chain := p.node(t, "gpu-0042")
	values := map[Format]string{
		FormatTraefik:        encTraefik(chain...),
		FormatTraefikEscaped: encTraefikEscaped(chain...),
		FormatNginx:          encNginx(chain[0]),
		FormatEnvoy:          xfccElem("spiffe://x", chain, true, true),
		FormatHAProxy:        b64(chain[0]),
		FormatCaddy:          b64(chain[0]),
		FormatALB:            encALB(chain...),
		FormatRFC9440:        sfBinary(chain[0]),
	}
	seen := map[string]bool{}
	for _, fi := range KnownFormats() {
		v, ok := values[fi.Format]
		if !ok {
			t.Errorf("KnownFormats lists %q, which this test does not cover", fi.Format)
			continue
		}
		delete(values, fi.Format)
		if fi.Header == "" || fi.Setup == "" || fi.Encoding == "" || fi.Ingress == "" {
			t.Errorf("%s: incomplete entry %+v", fi.Format, fi)
		}
		if fi.Format != FormatTraefikEscaped && seen[fi.Header] {
			t.Errorf("%s: default header %s shared with another format", fi.Format, fi.Header)
		}
		seen[fi.Header] = true
		_, f, err := Parse(hdr(fi.Header, v), ParseOptions{})
		if err != nil || f != fi.Format {
			t.Errorf("%s under %s: format %q, err %v", fi.Format, fi.Header, f, err)
		}
	}
	for f := range values {
		t.Errorf("format %q missing from KnownFormats", f)
	}
}
