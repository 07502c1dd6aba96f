package clientcert

import (
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var updateCorpus = flag.Bool("update-fuzz-corpus", false, "rewrite the committed seed corpora under testdata/fuzz")

// fuzzSeeds returns the seed inputs of every fuzz target, built from real
// certificates as each ingress emits them, plus known-awkward shapes.
func fuzzSeeds(tb testing.TB) map[string][][]any {
	p := newPKI(tb, "Acme")
	chain := p.node(tb, "gpu-0042")
	leaf, inter := chain[0], chain[1]
	xfcc := xfccElem("spiffe://gw", chain, true, true)
	return map[string][][]any{
		"FuzzTraefik": {{encTraefik(chain...)}, {encTraefikEscaped(chain...)}, {encTraefik(leaf)}, {""}, {","}, {"MII%zz"}, {"AAAA,BBBB"}},
		"FuzzTraefikInfo": {
			{"Subject%3D%22O%3DAcme%2C+Inc.%2CCN%3Dnode-01%22%3BIssuer%3D%22CN%3Dnode-01%22%3BSerialNumber%3D%22123456789%22%3BNB%3D%221700000000%22%3BNA%3D%221700086400%22%3BSAN%3D%22node-01%2C10.0.0.5%22"},
			{`Subject="a";Issuer="b",Subject="c"`}, {`Subject="unterminated`}, {`NB="x"`},
		},
		"FuzzNginx":   {{encNginx(leaf)}, {escapeExcept(pemOf(chain...), "")}, {pemOf(leaf)}, {"-----BEGIN+CERTIFICATE-----%0A"}, {"%"}},
		"FuzzALB":     {{encALB(chain...)}, {encALB(leaf)}, {strings.ReplaceAll(encALB(leaf), "+", " ")}},
		"FuzzXFCC":    {{xfcc, uint8(0)}, {`By=a;Hash=00;Subject="";URI=spiffe://x,` + xfcc, uint8(0)}, {xfcc + `,By=spiffe://api;Hash=ab;URI=x`, uint8(1)}, {`Subject="a \"b\", c;d=e"`, uint8(0)}, {`a=b,,c`, uint8(0)}, {`"\`, uint8(0)}},
		"FuzzHAProxy": {{b64(leaf), ""}, {`"` + b64(leaf) + `"`, encHAProxyChain(inter)}, {b64(leaf), encHAProxyChain(leaf, inter)}, {"", encHAProxyChain(inter)}, {"AAAA", "AAAA"}},
		"FuzzCaddy":   {{b64(leaf)}, {pemOf(leaf)}, {"===="}},
		"FuzzRFC9440": {{sfBinary(leaf), ""}, {sfBinary(leaf), sfBinary(inter)}, {sfBinary(leaf) + ";a=1", " " + sfBinary(inter) + " , " + sfBinary(p.root)}, {":", ""}, {"::", `:a:;x="y,z", :b:`}, {b64(leaf), ""}},
		"FuzzParse": {
			{uint8(0), encTraefik(chain...), uint8(0), ""},
			{uint8(2), xfcc, uint8(9), sfBinary(leaf)},
			{uint8(3), b64(leaf), uint8(4), encHAProxyChain(inter)},
			{uint8(9), sfBinary(leaf), uint8(10), sfBinary(inter)},
			{uint8(1), encNginx(leaf), uint8(1), encNginx(leaf)},
			{uint8(6), encALB(chain...), uint8(7), encALB(leaf)},
		},
	}
}

var fuzzHeaderNames = func() []string {
	d := DefaultHeaderNames()
	return []string{d.Traefik, d.Nginx, d.Envoy, d.HAProxy, d.HAProxyChain, d.Caddy, d.ALB, d.ALBLeaf, d.TraefikInfo, d.RFC9440, d.RFC9440Chain}
}()

func addSeeds(f *testing.F, name string) {
	for _, s := range fuzzSeeds(f)[name] {
		f.Add(s...)
	}
}

// checkChain is the property every parser must keep: an error with a
// documented reason, or a non-empty chain within the limit.
func checkChain(t *testing.T, n int, hasNil bool, err error, max int) {
	t.Helper()
	if err != nil {
		if r := ReasonOf(err); !slices.Contains([]Reason{ReasonMissing, ReasonAmbiguous, ReasonMalformed, ReasonTooLarge}, r) {
			t.Fatalf("parse error with reason %q: %v", r, err)
		}
		return
	}
	if n == 0 || n > max || hasNil {
		t.Fatalf("no error but chain of %d (nil entry: %v)", n, hasNil)
	}
}

func FuzzTraefik(f *testing.F) {
	addSeeds(f, "FuzzTraefik")
	f.Fuzz(func(t *testing.T, v string) {
		c, _, err := parseTraefik(v, DefaultMaxChain)
		checkChain(t, len(c), slices.Contains(c, nil), err, DefaultMaxChain)
	})
}

func FuzzTraefikInfo(f *testing.F) {
	addSeeds(f, "FuzzTraefikInfo")
	f.Fuzz(func(t *testing.T, v string) {
		infos, err := ParseTraefikInfo(v)
		if err != nil && ReasonOf(err) != ReasonMalformed {
			t.Fatalf("reason %q", ReasonOf(err))
		}
		if err != nil && infos != nil {
			t.Fatal("entries returned with an error")
		}
	})
}

func FuzzNginx(f *testing.F) {
	addSeeds(f, "FuzzNginx")
	f.Fuzz(func(t *testing.T, v string) {
		c, err := parseEscapedPEM(v, FormatNginx, DefaultMaxChain)
		checkChain(t, len(c), slices.Contains(c, nil), err, DefaultMaxChain)
	})
}

func FuzzALB(f *testing.F) {
	addSeeds(f, "FuzzALB")
	f.Fuzz(func(t *testing.T, v string) {
		c, format, err := Parse(hdr("X-Amzn-Mtls-Clientcert", v), ParseOptions{Formats: []Format{FormatALB}})
		checkChain(t, len(c), slices.Contains(c, nil), err, DefaultMaxChain)
		if err == nil && format != FormatALB {
			t.Fatalf("format %q", format)
		}
	})
}

func FuzzXFCC(f *testing.F) {
	addSeeds(f, "FuzzXFCC")
	f.Fuzz(func(t *testing.T, v string, element uint8) {
		els, err := ParseXFCC(v)
		if err == nil && len(els) == 0 {
			t.Fatal("no error and no elements")
		}
		c, err := parseXFCCCert(v, int(element%4), DefaultMaxChain)
		checkChain(t, len(c), slices.Contains(c, nil), err, DefaultMaxChain)
	})
}

func FuzzHAProxy(f *testing.F) {
	addSeeds(f, "FuzzHAProxy")
	f.Fuzz(func(t *testing.T, leaf, chain string) {
		c, err := parseHAProxy(leaf, chain, DefaultMaxChain)
		checkChain(t, len(c), slices.Contains(c, nil), err, DefaultMaxChain)
	})
}

func FuzzCaddy(f *testing.F) {
	addSeeds(f, "FuzzCaddy")
	f.Fuzz(func(t *testing.T, v string) {
		c, _, err := Parse(hdr("X-Client-Cert", v), ParseOptions{})
		checkChain(t, len(c), slices.Contains(c, nil), err, DefaultMaxChain)
	})
}

func FuzzRFC9440(f *testing.F) {
	addSeeds(f, "FuzzRFC9440")
	f.Fuzz(func(t *testing.T, leaf, chain string) {
		c, err := parseRFC9440(leaf, chain, DefaultMaxChain)
		checkChain(t, len(c), slices.Contains(c, nil), err, DefaultMaxChain)
	})
}

// FuzzParse drives detection and the whole Verifier with two arbitrary
// headers from the known set, from a trusted and an untrusted peer.
func FuzzParse(f *testing.F) {
	addSeeds(f, "FuzzParse")
	p := newPKI(f, "Acme")
	v, err := NewVerifier(Config{
		Roots:          p.pool,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		Now:            func() time.Time { return testNow },
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, h1 uint8, v1 string, h2 uint8, v2 string) {
		h := http.Header{}
		h.Add(fuzzHeaderNames[int(h1)%len(fuzzHeaderNames)], v1)
		h.Add(fuzzHeaderNames[int(h2)%len(fuzzHeaderNames)], v2)
		c, _, err := Parse(h, ParseOptions{})
		checkChain(t, len(c), slices.Contains(c, nil), err, DefaultMaxChain)
		for _, remote := range []string{"10.1.2.3:4", "192.0.2.1:4"} {
			r := req(remote, h)
			res := v.VerifyExpected(r, "gpu-0042")
			if !slices.Contains(Reasons(), res.Reason) {
				t.Fatalf("reason %q not in the documented set", res.Reason)
			}
			if res.OK() != (res.Verified && res.Identity == "gpu-0042") {
				t.Fatalf("inconsistent result %+v", res)
			}
		}
	})
}

// TestFuzzSeedCorpusCommitted keeps testdata/fuzz in step with the fuzz
// targets: every target has a committed seed corpus. With
// -update-fuzz-corpus it rewrites them from freshly issued certificates.
func TestFuzzSeedCorpusCommitted(t *testing.T) {
	seeds := fuzzSeeds(t)
	if *updateCorpus {
		for name, inputs := range seeds {
			dir := filepath.Join("testdata", "fuzz", name)
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for i, in := range inputs {
				var b strings.Builder
				b.WriteString("go test fuzz v1\n")
				for _, a := range in {
					switch a := a.(type) {
					case string:
						fmt.Fprintf(&b, "string(%q)\n", a)
					case uint8:
						fmt.Fprintf(&b, "byte(%q)\n", a)
					default:
						t.Fatalf("seed type %T", a)
					}
				}
				if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(b.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for name, inputs := range seeds {
		files, err := filepath.Glob(filepath.Join("testdata", "fuzz", name, "*"))
		if err != nil || len(files) < len(inputs) {
			t.Errorf("%s: %d committed seed files, want at least %d (run go test -run TestFuzzSeedCorpusCommitted -update-fuzz-corpus)", name, len(files), len(inputs))
		}
	}
}
