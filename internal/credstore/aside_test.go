package credstore_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
)

// TestSaveAsideDoesNotPublish: a set written aside changes nothing the
// node-agent reads until Publish; Publish then switches all three files at
// once and records the replaced generation as "previous".
func TestSaveAsideDoesNotPublish(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "pki")
	old := f.set()
	oldGen, err := credstore.Save(dir, old, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	next := f.set()
	gen, err := credstore.SaveAside(dir, next, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := credstore.Load(dir)
	if err != nil || serial(cur) != serial(old) {
		t.Fatalf("after SaveAside, current = %v (%v), want the old set", cur, err)
	}
	aside, err := credstore.LoadGeneration(gen)
	if err != nil || serial(aside) != serial(next) || !aside.KeyMatches() {
		t.Fatalf("LoadGeneration(%s) = %v, %v", gen, aside, err)
	}
	if st, err := os.Stat(filepath.Join(gen, credstore.KeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("aside key mode: %v %v", st, err)
	}
	if err := credstore.Publish(dir, gen, nil); err != nil {
		t.Fatal(err)
	}
	cur, err = credstore.Load(dir)
	if err != nil || serial(cur) != serial(next) || !cur.KeyMatches() {
		t.Fatalf("after Publish, current = %v (%v), want the new set", cur, err)
	}
	if p, _ := os.Readlink(filepath.Join(dir, credstore.PreviousLink)); p != filepath.Base(oldGen) {
		t.Fatalf("previous -> %q, want %q", p, filepath.Base(oldGen))
	}
}

// TestAsideKeptForDiagnosisThenPruned: a failed renewal's unpublished
// generation survives a Sweep (for diagnosis) and is removed by the next
// successful publish, which keeps current and previous.
func TestAsideKeptForDiagnosisThenPruned(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "pki")
	g1, err := credstore.Save(dir, f.set(), time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	failed, err := credstore.SaveAside(dir, f.set(), time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	credstore.Sweep(dir)
	if got := credstore.Generations(dir); !slices.Contains(got, filepath.Base(failed)) || !slices.Contains(got, filepath.Base(g1)) {
		t.Fatalf("after Sweep: %v, want current %s and the aside %s", got, g1, failed)
	}
	time.Sleep(10 * time.Millisecond)
	g3, err := credstore.SaveAside(dir, f.set(), time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := credstore.Publish(dir, g3, nil); err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Base(g1), filepath.Base(g3)}
	if got := credstore.Generations(dir); !slices.Equal(got, want) {
		t.Fatalf("after publish: %v, want %v (current and previous; the failed aside swept)", got, want)
	}
}

// TestPublishRefuses: only a generation of dir that loads as a pair.
func TestPublishRefuses(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := credstore.Save(dir, f.set(), time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	for name, gen := range map[string]string{
		"outside dir":   filepath.Join(t.TempDir(), "gen-x"),
		"not a gen":     filepath.Join(dir, "current"),
		"missing files": filepath.Join(dir, "gen-empty"),
	} {
		os.Mkdir(filepath.Join(dir, "gen-empty"), 0o700)
		if err := credstore.Publish(dir, gen, nil); err == nil {
			t.Errorf("%s: Publish(%s) succeeded", name, gen)
		}
	}
}

// TestLinkAhead: a first install's stable links made ahead of publish lead
// nowhere until "current" exists (Load: no credentials, as before any
// set); publish then switches all three at once. A pki_dir holding any
// stable name is left as it is.
func TestLinkAhead(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "pki")
	next := f.set()
	gen, err := credstore.SaveAside(dir, next, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := credstore.LinkAhead(dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{credstore.KeyFile, credstore.CertFile, credstore.CAFile} {
		if got, err := os.Readlink(filepath.Join(dir, name)); err != nil || got != filepath.Join(credstore.CurrentLink, name) {
			t.Fatalf("%s -> %q (%v), want it through current", name, got, err)
		}
	}
	if _, err := credstore.Load(dir); !errors.Is(err, credstore.ErrNotFound) {
		t.Fatalf("before publish, Load = %v, want no credentials", err)
	}
	if err := credstore.Publish(dir, gen, nil); err != nil {
		t.Fatal(err)
	}
	cur, err := credstore.Load(dir)
	if err != nil || serial(cur) != serial(next) || !cur.KeyMatches() {
		t.Fatalf("after publish, Load = %v (%v), want the new set", cur, err)
	}
	// An older layout's plain file stays for publish to replace, in order.
	other := filepath.Join(t.TempDir(), "pki")
	os.MkdirAll(other, 0o700)
	os.WriteFile(filepath.Join(other, credstore.CAFile), []byte("x"), 0o644)
	if err := credstore.LinkAhead(other); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(other, credstore.KeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LinkAhead linked key.pem in a pki_dir holding ca.pem: %v", err)
	}
}
