package ingress

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/configs/*.golden from the current generators")

// renderCases are the Options the configuration generators are pinned on:
// every knob alone, the combinations where one knob changes another's
// output, and the invalid values (whose error, and what was written before
// it, are pinned too).
var renderCases = []struct {
	name string
	set  func(*Options)
}{
	{"healthy", func(*Options) {}},
	{"no-forward-cert", func(o *Options) { o.NoForwardCert = true }},
	{"upstream-timeout", func(o *Options) { o.UpstreamTimeout = 1500 * time.Millisecond }},
	{"default-404", func(o *Options) { o.Default404 = true }},
	{"traefik-info", func(o *Options) { o.TraefikInfo = true }},
	{"reject-handshake", func(o *Options) { o.RejectHandshake = true }},
	{"min-tls-1.2", func(o *Options) { o.MinTLS = "1.2" }},
	{"max-tls-1.2", func(o *Options) { o.MaxTLS = "1.2" }},
	{"tls-1.0-to-1.1", func(o *Options) { o.MinTLS, o.MaxTLS = "1.0", "1.1" }},
	{"tls-1.3-only", func(o *Options) { o.MinTLS, o.MaxTLS = "1.3", "1.3" }},
	{"tls-unknown", func(o *Options) { o.MinTLS = "1.4" }},
	{"tls-min-above-max", func(o *Options) { o.MinTLS, o.MaxTLS = "1.3", "1.1" }},
	{"client-auth-optional", func(o *Options) { o.ClientAuth = ClientAuthOptional }},
	{"client-auth-request", func(o *Options) { o.ClientAuth = ClientAuthRequest }},
	{"client-auth-off", func(o *Options) { o.ClientAuth = ClientAuthOff }},
	{"client-auth-unknown", func(o *Options) { o.ClientAuth = "sometimes" }},
	{"client-auth-unknown-and-tls-unknown", func(o *Options) { o.ClientAuth, o.MaxTLS = "sometimes", "2.0" }},
	{"verify-depth-0", func(o *Options) { d := 0; o.VerifyDepth = &d }},
	{"verify-depth-5", func(o *Options) { d := 5; o.VerifyDepth = &d }},
	{"verify-depth-and-client-auth-unknown", func(o *Options) { d := 1; o.VerifyDepth, o.ClientAuth = &d, "sometimes" }},
	{"plain-http", func(o *Options) { o.PlainHTTP = true }},
	{"plain-http-default-404", func(o *Options) { o.PlainHTTP, o.Default404 = true, true }},
	{"strip-prefix", func(o *Options) { o.StripPrefix = "/api" }},
	{"strip-prefix-slash", func(o *Options) { o.StripPrefix = "/api/" }},
	{"redirect", func(o *Options) { o.RedirectTo = "/moved" }},
	{"redirect-and-strip-prefix", func(o *Options) { o.RedirectTo, o.StripPrefix = "/moved", "/api" }},
	{"worker-connections", func(o *Options) { o.WorkerConnections = 4096 }},
	{"everything", func(o *Options) {
		o.NoForwardCert, o.UpstreamTimeout, o.Default404, o.RejectHandshake = true, 2*time.Second, true, true
		o.MinTLS, o.MaxTLS, o.ClientAuth, o.PlainHTTP = "1.1", "1.2", ClientAuthRequest, true
		o.StripPrefix, o.RedirectTo, o.WorkerConnections = "/v1/", "/elsewhere", 512
	}},
	{"everything-but-plain-http", func(o *Options) {
		o.UpstreamTimeout, o.Default404, o.RejectHandshake = time.Minute, true, true
		o.MinTLS, o.MaxTLS, o.ClientAuth = "1.2", "1.3", ClientAuthOptional
		o.StripPrefix, o.RedirectTo, o.WorkerConnections = "/v1", "/elsewhere", 128
	}},
}

// TestConfigsGolden renders each real program's configuration for every
// renderCases entry and compares it, byte for byte, with
// testdata/configs/<kind>.golden: the arguments, the Forwarding, every file
// and directory the generator leaves in Dir, or its error. Refactoring a
// generator must not change a byte; a deliberate change reruns the test
// with -update and shows the diff in review. The temporary directory is
// spelled $T; "user root root;" (written only when running as root) is
// checked against the effective user and then left out, so the files are
// the same for root and for anyone else.
func TestConfigsGolden(t *testing.T) {
	writers := []struct {
		kind  Kind
		write func(*Ingress, Options) ([]string, error)
	}{{Nginx, writeNginx}, {HAProxy, writeHAProxy}, {Caddy, writeCaddy}}
	for _, w := range writers {
		t.Run(string(w.kind), func(t *testing.T) {
			var got strings.Builder
			for _, c := range renderCases {
				fmt.Fprintf(&got, "=== %s\n%s", c.name, renderOne(t, w.kind, w.write, c.set))
			}
			golden := filepath.Join("testdata", "configs", string(w.kind)+".golden")
			if *updateGolden {
				if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got.String() != string(want) {
				t.Errorf("%s configuration changed; first difference:\n%s", w.kind, firstDiff(string(want), got.String()))
			}
		})
	}
}

// renderOne runs one generator on the base Options changed by set, in a
// fresh directory, and returns what it produced with that directory as $T.
func renderOne(t *testing.T, kind Kind, write func(*Ingress, Options) ([]string, error), set func(*Options)) string {
	t.Helper()
	base := t.TempDir()
	for name, text := range map[string]string{"server.crt": "CERT\n", "server.key": "KEY\n", "client-ca.pem": "CA\n"} {
		if err := os.WriteFile(filepath.Join(base, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	o := Options{
		Hostname:       "node-api.cp.internal",
		ServerCertFile: filepath.Join(base, "server.crt"),
		ServerKeyFile:  filepath.Join(base, "server.key"),
		ClientCAFile:   filepath.Join(base, "client-ca.pem"),
		Upstream:       "http://127.0.0.1:9000",
		Dir:            filepath.Join(base, "run"),
	}
	set(&o)
	if err := os.Mkdir(o.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	in := &Ingress{Kind: kind, Addr: "127.0.0.1:8443", Port: 8443, Dir: o.Dir}
	var b strings.Builder
	args, err := write(in, o)
	if err != nil {
		fmt.Fprintf(&b, "error: %v\n", err)
	} else {
		fmt.Fprintf(&b, "args: %q\nforwarding: %+v\n", args, in.Forwarding)
	}
	filepath.WalkDir(o.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(o.Dir, p)
		switch {
		case rel == ".":
		case d.IsDir():
			fmt.Fprintf(&b, "--- dir %s\n", rel)
		default:
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "--- file %s\n%s\n", rel, stripRootUser(t, rel, string(data)))
		}
		return nil
	})
	return strings.ReplaceAll(b.String(), base, "$T")
}

// stripRootUser checks that nginx.conf starts with "user root root;"
// exactly when running as root, and removes that line.
func stripRootUser(t *testing.T, name, conf string) string {
	t.Helper()
	if name != "nginx.conf" {
		return conf
	}
	const line = "user root root;\n"
	if has, root := strings.HasPrefix(conf, line), os.Geteuid() == 0; has != root {
		t.Errorf("nginx.conf: starts with %q: %v, running as root: %v", line, has, root)
	}
	return strings.TrimPrefix(conf, line)
}

// firstDiff shows the first line where got departs from want, with the
// line before it.
func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl || i >= len(w) || i >= len(g) {
			prev := ""
			if i > 0 && i-1 < len(w) {
				prev = w[i-1]
			}
			return fmt.Sprintf("line %d (after %q):\n  want %q\n  got  %q", i+1, prev, wl, gl)
		}
	}
	return "(no line differs: trailing bytes)"
}
