package credstore_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/system"
)

// TestRemove: after three publishes and a set left aside, Remove deletes
// the stable names, current, previous and every generation, and leaves
// pki_dir itself and anything that is not provision's; the credentials no
// longer load.
func TestRemove(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "pki")
	for range 3 {
		if _, err := credstore.Save(dir, f.set(), time.Now(), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := credstore.SaveAside(dir, f.set(), time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	gens := credstore.Generations(dir)
	if len(gens) < 3 {
		t.Fatalf("generations %v", gens)
	}
	removed, err := credstore.Remove(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range append([]string{credstore.KeyFile, credstore.CertFile, credstore.CAFile, credstore.CurrentLink, credstore.PreviousLink}, gens...) {
		if !slices.Contains(removed, want) && !slices.Contains(removed, want+"/") {
			t.Errorf("%s not in removed %v", want, removed)
		}
	}
	// Only the mark that makes pki_dir provision's own is left (the next
	// bootstrap enrolls into it).
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != system.OwnMark {
		t.Errorf("left in pki_dir: %v, want only %s", ents, system.OwnMark)
	}
	if _, err := credstore.Load(dir); !errors.Is(err, credstore.ErrNotFound) {
		t.Errorf("Load after Remove: %v", err)
	}
	// A second Remove removes nothing and does not fail.
	if again, err := credstore.Remove(dir); err != nil || len(again) != 0 {
		t.Errorf("again: %v %v", again, err)
	}
	// A missing directory is nothing to remove.
	if again, err := credstore.Remove(filepath.Join(dir, "nope")); err != nil || len(again) != 0 {
		t.Errorf("missing dir: %v %v", again, err)
	}
}
