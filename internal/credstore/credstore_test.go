package credstore_test

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/nodekey"
	"github.com/gpuaas/provision/nodekey/swtpm"
	"github.com/gpuaas/provision/tests/controlplane"
)

const nodeID = "gpu-0042"

// fixture is a test PKI and a helper to issue complete sets from it.
type fixture struct {
	t   *testing.T
	pki *controlplane.PKI
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	p, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, pki: p}
}

// set issues a fresh node certificate and returns it as a Set.
func (f *fixture) set() *credstore.Set {
	f.t.Helper()
	l, err := f.pki.IssueClientCert(nodeID)
	if err != nil {
		f.t.Fatal(err)
	}
	return &credstore.Set{Key: l.Key, Chain: []*x509.Certificate{l.Cert, l.Intermediate}, Roots: []*x509.Certificate{f.pki.Root}}
}

// serial identifies a set by its leaf.
func serial(s *credstore.Set) string { return s.Leaf().SerialNumber.String() }

func x509VerifyOptions(s *credstore.Set) x509.VerifyOptions {
	inter := x509.NewCertPool()
	for _, c := range s.Chain[1:] {
		inter.AddCert(c)
	}
	return x509.VerifyOptions{Roots: s.RootPool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func isSymlink(t *testing.T, path string) bool {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode()&os.ModeSymlink != 0
}

func TestSaveLoadRoundTrip(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "pki")
	want := f.set()
	gen, err := credstore.Save(dir, want, time.Now(), nil)
	if err != nil {
		t.Fatalf("Save: %v", err)
	}
	if filepath.Dir(gen) != dir || !strings.HasPrefix(filepath.Base(gen), "gen-") {
		t.Fatalf("generation %s is not a gen- directory in %s", gen, dir)
	}
	got, err := credstore.Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !got.KeyMatches() {
		t.Fatal("loaded key does not match the loaded certificate")
	}
	if !got.Key.Public().(*ecdsa.PublicKey).Equal(want.Key.Public()) {
		t.Fatal("loaded key differs from the saved one")
	}
	if len(got.Chain) != 2 || !got.Chain[0].Equal(want.Chain[0]) || !got.Chain[1].Equal(want.Chain[1]) {
		t.Fatal("chain differs (order must be leaf, intermediate)")
	}
	if len(got.Roots) != 1 || !got.Roots[0].Equal(f.pki.Root) {
		t.Fatal("roots differ")
	}
	if got.Dir != gen {
		t.Fatalf("Dir = %s, want %s", got.Dir, gen)
	}
	if got.KeyMode != 0o600 || got.DirMode != 0o700 {
		t.Fatalf("KeyMode %04o DirMode %04o, want 0600 0700", got.KeyMode, got.DirMode)
	}
	tc := got.TLSCertificate()
	if len(tc.Certificate) != 2 || tc.Leaf != got.Leaf() {
		t.Fatal("TLSCertificate must carry leaf + intermediate")
	}
	if _, err := got.Leaf().Verify(x509VerifyOptions(got)); err != nil {
		t.Fatalf("loaded leaf does not verify with RootPool: %v", err)
	}
	// The stable names are links through current.
	for _, n := range []string{credstore.KeyFile, credstore.CertFile, credstore.CAFile} {
		p := filepath.Join(dir, n)
		if !isSymlink(t, p) {
			t.Errorf("%s is not a symlink", n)
		}
		if l, _ := os.Readlink(p); l != filepath.Join(credstore.CurrentLink, n) {
			t.Errorf("%s -> %s, want current/%s", n, l, n)
		}
	}
	if l, _ := os.Readlink(filepath.Join(dir, credstore.CurrentLink)); l != filepath.Base(gen) {
		t.Errorf("current -> %s, want %s (relative)", l, filepath.Base(gen))
	}
	if g := credstore.Generations(dir); !slices.Equal(g, []string{filepath.Base(gen)}) {
		t.Errorf("Generations = %v", g)
	}
}

func TestModes(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name    string
		umask   int
		prepare func(t *testing.T, dir string)
	}{
		{"fresh, umask 022", 0o022, nil},
		{"fresh, umask 000", 0o000, nil},
		{"fresh, umask 077", 0o077, nil},
		{"dir existed 0755", 0o022, func(t *testing.T, dir string) {
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			os.Chmod(dir, 0o755)
		}},
		{"old plain key.pem 0644 in a 0755 dir", 0o022, func(t *testing.T, dir string) {
			old := f.set()
			l, err := f.pki.IssueClientCert(nodeID)
			if err != nil {
				t.Fatal(err)
			}
			_ = old
			if err := controlplane.WriteNodeCredentials("/", dir, l, f.pki.RootPEM()); err != nil {
				t.Fatal(err)
			}
			os.Chmod(dir, 0o755)
			os.Chmod(filepath.Join(dir, credstore.KeyFile), 0o644)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			if tt.prepare != nil {
				tt.prepare(t, dir)
			}
			old := syscall.Umask(tt.umask)
			_, err := credstore.Save(dir, f.set(), time.Now(), nil)
			syscall.Umask(old)
			if err != nil {
				t.Fatalf("Save: %v", err)
			}
			if m := mode(t, dir); m != 0o700 {
				t.Errorf("pki dir mode %04o, want 0700", m)
			}
			gen := filepath.Join(dir, credstore.CurrentLink)
			if m := mode(t, gen); m != 0o700 {
				t.Errorf("generation dir mode %04o, want 0700", m)
			}
			want := map[string]os.FileMode{credstore.KeyFile: 0o600, credstore.CertFile: 0o644, credstore.CAFile: 0o644}
			for n, w := range want {
				if m := mode(t, filepath.Join(gen, n)); m != w {
					t.Errorf("%s mode %04o, want %04o", n, m, w)
				}
				// Through the stable name: symlink, and the file it reaches
				// has the same mode.
				p := filepath.Join(dir, n)
				if !isSymlink(t, p) {
					t.Errorf("%s is not a symlink into the generation", n)
				}
				if m := mode(t, p); m != w {
					t.Errorf("%s read through the link has mode %04o, want %04o", n, m, w)
				}
			}
			s, err := credstore.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if s.KeyMode != 0o600 {
				t.Errorf("Load KeyMode %04o", s.KeyMode)
			}
		})
	}
}

func TestSaveRefusesMismatchedKey(t *testing.T) {
	f := newFixture(t)
	a, b := f.set(), f.set()
	bad := &credstore.Set{Key: a.Key, Chain: b.Chain, Roots: b.Roots}
	tests := []struct {
		name string
		set  *credstore.Set
	}{
		{"key of another certificate", bad},
		{"no chain", &credstore.Set{Key: a.Key, Roots: a.Roots}},
		{"no key", &credstore.Set{Chain: a.Chain, Roots: a.Roots}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			if _, err := credstore.Save(dir, a, time.Now(), nil); err != nil {
				t.Fatal(err)
			}
			if _, err := credstore.Save(dir, tt.set, time.Now().Add(time.Second), nil); err == nil {
				t.Fatal("Save accepted a set whose key does not match its certificate")
			}
			got, err := credstore.Load(dir)
			if err != nil || serial(got) != serial(a) || !got.KeyMatches() {
				t.Fatalf("after a refused Save the old set must stay: %v", err)
			}
			if g := credstore.Generations(dir); len(g) != 1 {
				t.Fatalf("a refused Save left generations %v", g)
			}
		})
	}
}

func TestPruneKeepsOnePrevious(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "pki")
	t0 := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	var gens []string
	for i := 0; i < 4; i++ {
		gen, err := credstore.Save(dir, f.set(), t0.Add(time.Duration(i)*time.Hour), nil)
		if err != nil {
			t.Fatal(err)
		}
		gens = append(gens, filepath.Base(gen))
		got := credstore.Generations(dir)
		want := gens[max(0, len(gens)-2):]
		if !slices.Equal(got, want) {
			t.Fatalf("after save %d: Generations = %v, want %v (current + one previous)", i+1, got, want)
		}
	}
	if l, _ := os.Readlink(filepath.Join(dir, credstore.CurrentLink)); l != gens[3] {
		t.Fatalf("current -> %s, want %s", l, gens[3])
	}
}

// TestPruneKeepsCurrentWhenClockGoesBack: a generation named by a clock that
// was later corrected backwards must not make prune delete the current one.
func TestPruneKeepsCurrentWhenClockGoesBack(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "pki")
	t0 := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	for _, at := range []time.Time{t0.Add(48 * time.Hour), t0.Add(24 * time.Hour), t0} {
		want := f.set()
		if _, err := credstore.Save(dir, want, at, nil); err != nil {
			t.Fatal(err)
		}
		got, err := credstore.Load(dir)
		if err != nil || serial(got) != serial(want) {
			t.Fatalf("Load after Save at %s: %v", at, err)
		}
		if n := len(credstore.Generations(dir)); n > 2 {
			t.Fatalf("%d generations kept", n)
		}
	}
}

func TestSweep(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "pki")
	gen, err := credstore.Save(dir, f.set(), time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Leftovers of killed Saves.
	unpublished := filepath.Join(dir, system.TempPrefix+"gen-20260310T120000.000000000Z-deadbeef")
	if err := os.Mkdir(unpublished, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(unpublished, credstore.KeyFile), []byte("half"), 0o600)
	// renameio.Symlink's temp directory, killed before its rename: it still
	// holds tmp.symlink.
	full := filepath.Join(dir, ".current123456789")
	os.Mkdir(full, 0o700)
	os.Symlink("gen-x", filepath.Join(full, "tmp.symlink"))
	// ... and killed after the rename: empty.
	empty := filepath.Join(dir, ".key.pem987654321")
	os.Mkdir(empty, 0o700)
	leftovers := []string{unpublished, full, empty}

	credstore.Sweep(dir)
	for _, p := range leftovers {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Sweep left %s", filepath.Base(p))
		}
	}
	got, err := credstore.Load(dir)
	if err != nil || got.Dir != gen || !got.KeyMatches() {
		t.Fatalf("Sweep damaged the published set: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	want := []string{system.OwnMark, credstore.CAFile, credstore.CertFile, filepath.Base(gen), credstore.KeyFile, credstore.CurrentLink}
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("entries after Sweep = %v, want %v", names, want)
	}
}

func TestLoadNotFound(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(dir string)
	}{
		{"missing dir", func(string) {}},
		{"empty dir", func(dir string) { os.Mkdir(dir, 0o700) }},
		{"only leftovers", func(dir string) {
			os.Mkdir(dir, 0o700)
			os.Mkdir(filepath.Join(dir, system.TempPrefix+"gen-x"), 0o700)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			tt.prepare(dir)
			s, err := credstore.Load(dir)
			if !errors.Is(err, credstore.ErrNotFound) {
				t.Fatalf("Load = %v, %v; want ErrNotFound", s, err)
			}
		})
	}
}

func TestLoadBroken(t *testing.T) {
	f := newFixture(t)
	l, err := f.pki.IssueClientCert(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		key    []byte
		cert   []byte
		ca     []byte
		errHas string
	}{
		{"cert without key", nil, l.ChainPEM(), f.pki.RootPEM(), "missing"},
		{"empty key", []byte{}, l.ChainPEM(), f.pki.RootPEM(), "key"},
		{"garbage key", []byte("not pem"), l.ChainPEM(), f.pki.RootPEM(), "key"},
		{"empty cert", l.KeyPEM(), []byte{}, f.pki.RootPEM(), "cert.pem"},
		{"truncated cert", l.KeyPEM(), l.ChainPEM()[:100], f.pki.RootPEM(), "cert.pem"},
		{"no ca", l.KeyPEM(), l.ChainPEM(), nil, "ca.pem"},
		{"empty ca", l.KeyPEM(), l.ChainPEM(), []byte{}, "ca.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			os.Mkdir(dir, 0o700)
			for n, b := range map[string][]byte{credstore.KeyFile: tt.key, credstore.CertFile: tt.cert, credstore.CAFile: tt.ca} {
				if b != nil {
					os.WriteFile(filepath.Join(dir, n), b, 0o600)
				}
			}
			_, err := credstore.Load(dir)
			if err == nil || errors.Is(err, credstore.ErrNotFound) {
				t.Fatalf("Load = %v, want a real error (not ErrNotFound)", err)
			}
			if !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("error %q does not mention %q", err, tt.errHas)
			}
		})
	}
}

func TestLoadLegacyLayout(t *testing.T) {
	f := newFixture(t)
	root := t.TempDir()
	l, err := f.pki.IssueClientCert(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	if err := controlplane.WriteNodeCredentials(root, "/pki", l, f.pki.RootPEM()); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "pki")
	os.Chmod(filepath.Join(dir, credstore.KeyFile), 0o644)
	s, err := credstore.Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !s.KeyMatches() || !s.Leaf().Equal(l.Cert) || len(s.Chain) != 2 || len(s.Roots) != 1 {
		t.Fatal("legacy set not read completely")
	}
	if s.Dir != dir {
		t.Fatalf("Dir = %s, want the pki dir itself", s.Dir)
	}
	if s.KeyMode != 0o644 {
		t.Fatalf("KeyMode = %04o, want the on-disk 0644 (so the caller can see it is too open)", s.KeyMode)
	}
	// Saving over the legacy layout converts it; the old plain files are gone.
	next := f.set()
	if _, err := credstore.Save(dir, next, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	got, err := credstore.Load(dir)
	if err != nil || serial(got) != serial(next) || got.KeyMode != 0o600 {
		t.Fatalf("after Save over legacy: %v", err)
	}
}

// steps records Save's hook points in order.
func steps(t *testing.T) []string {
	t.Helper()
	f := newFixture(t)
	var got []string
	record := func(s string) { got = append(got, s) }
	if _, err := credstore.Save(filepath.Join(t.TempDir(), "pki"), f.set(), time.Now(), record); err != nil {
		t.Fatal(err)
	}
	return got
}

type crash struct{ step string }

// saveCrashingAt runs Save and "kills" it at step by panicking from the hook.
// It reports whether the crash happened.
func saveCrashingAt(dir string, s *credstore.Set, now time.Time, step string) (crashed bool, err error) {
	hook := func(at string) {
		if at == step {
			panic(crash{at})
		}
	}
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(crash); !ok {
				panic(r)
			}
			crashed = true
		}
	}()
	_, err = credstore.Save(dir, s, now, hook)
	return false, err
}

func TestCrashAtEveryStep(t *testing.T) {
	all := steps(t)
	for _, w := range []string{"wrote key.pem", "wrote cert.pem", "wrote ca.pem", "generation ready", "current switched"} {
		if !slices.Contains(all, w) {
			t.Fatalf("Save no longer has hook step %q (has %v): update this test", w, all)
		}
	}
	f := newFixture(t)
	type start struct {
		name    string
		prepare func(t *testing.T, dir string) *credstore.Set // the old set, or nil
	}
	starts := []start{
		{"fresh node", func(t *testing.T, dir string) *credstore.Set { return nil }},
		{"previous generation", func(t *testing.T, dir string) *credstore.Set {
			s := f.set()
			if _, err := credstore.Save(dir, s, time.Now().Add(-time.Hour), nil); err != nil {
				t.Fatal(err)
			}
			return s
		}},
		{"legacy plain files with 0644 key", func(t *testing.T, dir string) *credstore.Set {
			l, err := f.pki.IssueClientCert(nodeID)
			if err != nil {
				t.Fatal(err)
			}
			if err := controlplane.WriteNodeCredentials("/", dir, l, f.pki.RootPEM()); err != nil {
				t.Fatal(err)
			}
			os.Chmod(filepath.Join(dir, credstore.KeyFile), 0o644)
			return &credstore.Set{Key: l.Key, Chain: []*x509.Certificate{l.Cert, l.Intermediate}}
		}},
	}
	for _, st := range starts {
		for _, step := range all {
			t.Run(fmt.Sprintf("%s/crash at %s", st.name, step), func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "pki")
				old := st.prepare(t, dir)
				next := f.set()
				crashed, err := saveCrashingAt(dir, next, time.Now(), step)
				if !crashed {
					t.Fatalf("Save did not reach step %q (err %v)", step, err)
				}
				got, err := credstore.Load(dir)
				switch {
				case err != nil && old == nil && errors.Is(err, credstore.ErrNotFound):
					// a fresh node that crashed before publishing: still fresh
				case err != nil:
					t.Fatalf("Load after a crash at %q: %v", step, err)
				case !got.KeyMatches():
					t.Fatalf("after a crash at %q the key does not match the certificate", step)
				case serial(got) == serial(next):
				case old != nil && serial(got) == serial(old):
				default:
					t.Fatalf("after a crash at %q Load returned a set that is neither old nor new", step)
				}
				// What the node-agent reads: the stable names, after the
				// start-up Sweep every run does first, must be a matching
				// pair and the same set provision sees through current.
				credstore.Sweep(dir)
				if got != nil {
					agentView(t, dir, serial(got))
				}
				// Whatever was read, the next Save recovers and cleans up.
				again := f.set()
				if _, err := credstore.Save(dir, again, time.Now().Add(time.Minute), nil); err != nil {
					t.Fatalf("Save after the crash: %v", err)
				}
				got, err = credstore.Load(dir)
				if err != nil || serial(got) != serial(again) || !got.KeyMatches() || got.KeyMode != 0o600 {
					t.Fatalf("after recovery: %v", err)
				}
				ents, _ := os.ReadDir(dir)
				for _, e := range ents {
					if strings.HasPrefix(e.Name(), ".") && e.Name() != system.OwnMark {
						t.Errorf("leftover %s after the next Save", e.Name())
					}
				}
				if n := len(credstore.Generations(dir)); n > 2 {
					t.Errorf("%d generations after recovery, want at most 2", n)
				}
				agentView(t, dir, serial(again))
			})
		}
	}
}

// agentView checks what a consumer opening pki_dir/cert.pem and key.pem
// separately (the node-agent) gets: a pair that loads, whose leaf has serial.
func agentView(t *testing.T, dir, serial string) {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, credstore.CertFile), filepath.Join(dir, credstore.KeyFile))
	if err != nil {
		t.Fatalf("the stable key.pem/cert.pem do not load as a pair: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.SerialNumber.String() != serial {
		t.Fatalf("the stable cert.pem has serial %s, but Load read %s through current", leaf.SerialNumber, serial)
	}
	if _, err := os.ReadFile(filepath.Join(dir, credstore.CAFile)); err != nil {
		t.Fatalf("ca.pem: %v", err)
	}
}

// TestSweepFinishesHalfLinkedLegacy: a Save over a legacy layout killed
// between replacing key.pem and cert.pem with links leaves the stable names
// pointing at two different sets. Sweep (run first by every bootstrap) must
// finish the links.
func TestSweepFinishesHalfLinkedLegacy(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "pki")
	l, err := f.pki.IssueClientCert(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	if err := controlplane.WriteNodeCredentials("/", dir, l, f.pki.RootPEM()); err != nil {
		t.Fatal(err)
	}
	// Publish a new generation the way Save does, then undo the cert.pem and
	// ca.pem links to reproduce the half-done state.
	next := f.set()
	if _, err := credstore.Save(dir, next, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	for n, b := range map[string][]byte{credstore.CertFile: l.ChainPEM(), credstore.CAFile: f.pki.RootPEM()} {
		os.Remove(filepath.Join(dir, n))
		os.WriteFile(filepath.Join(dir, n), b, 0o644)
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, credstore.CertFile), filepath.Join(dir, credstore.KeyFile)); err == nil {
		t.Fatal("setup: the half-linked state should be a mismatched pair")
	}
	credstore.Sweep(dir)
	agentView(t, dir, serial(next))
}

// TestSaveLoadTPMKey: a set whose key lives in a TPM is written, validated
// and published like any other: key.pem holds the TSS2 key file (0600),
// Load reads it back as a TPM key that signs in that TPM, and the set's
// KeyStore says so.
func TestSaveLoadTPMKey(t *testing.T) {
	f := newFixture(t)
	tp := swtpm.New(t)
	k, err := nodekey.CreateTPMKey(nodekey.WithTPM(tp.Spec()))
	if err != nil {
		t.Fatal(err)
	}
	l, err := f.pki.IssueLeaf(controlplane.LeafRequest{CommonName: nodeID, DNSNames: []string{nodeID},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, PublicKey: k.Public().(*ecdsa.PublicKey)})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "pki")
	set := &credstore.Set{Key: k, Chain: []*x509.Certificate{l.Cert, l.Intermediate}, Roots: []*x509.Certificate{f.pki.Root}}
	if _, err := credstore.Save(dir, set, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, credstore.KeyFile))
	if err != nil || !strings.HasPrefix(string(b), "-----BEGIN TSS2 PRIVATE KEY-----") || strings.Contains(string(b), "BEGIN EC PRIVATE KEY") {
		t.Fatalf("key.pem: %q, %v", b, err)
	}
	if m := mode(t, filepath.Join(dir, credstore.KeyFile)); m != 0o600 {
		t.Errorf("key.pem mode %04o", m)
	}
	got, err := credstore.Load(dir, nodekey.WithTPM(tp.Spec()))
	if err != nil {
		t.Fatal(err)
	}
	if got.KeyStore() != credstore.StoreTPM || !got.KeyMatches() {
		t.Fatalf("loaded: store %s, matches %v", got.KeyStore(), got.KeyMatches())
	}
	if err := nodekey.CheckSigns(got.Key); err != nil {
		t.Errorf("the loaded key does not sign: %v", err)
	}
	if sw := f.set(); sw.KeyStore() != credstore.StoreFile {
		t.Errorf("a software key's store is %s", sw.KeyStore())
	}
}
