package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestLicenceNames(t *testing.T) {
	for _, tc := range []struct {
		name          string
		collected, ok bool // collected: copied; ok: counts as a licence
	}{
		{"LICENSE", true, true}, {"LICENSE.md", true, true}, {"LICENSE.txt", true, true}, {"LICENCE", true, true},
		{"COPYING", true, true}, {"license-apache", true, true}, {"LICENSE.libyaml", true, true}, {"UNLICENSE", true, true},
		{"NOTICE", true, false}, {"NOTICE.txt", true, false}, {"PATENTS", true, false},
		{"README.md", false, false}, {"LICENSES", false, false}, {"copyright.go", false, false},
	} {
		if got := licenceName.MatchString(tc.name); got != tc.collected {
			t.Errorf("%s: collected %v, want %v", tc.name, got, tc.collected)
		}
		if got := isLicence(tc.name); got != tc.ok {
			t.Errorf("%s: a licence %v, want %v", tc.name, got, tc.ok)
		}
	}
}

// module writes a module directory with the given files.
func module(t *testing.T, files ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("text of "+f+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestCollect: every licence, notice and patents file of every module (and
// of the Go distribution) lands under out/<module path>/, world-readable;
// a module without a licence text fails the collection, named, while the
// others are still written.
func TestCollect(t *testing.T) {
	goroot := module(t, "LICENSE", "PATENTS", "README.md", "license.go")
	mods := []Module{
		{Path: "example.com/apache", Version: "v1.0.0", Dir: module(t, "LICENSE", "NOTICE", "go.mod")},
		{Path: "example.com/mit/v2", Version: "v2.1.0", Dir: module(t, "LICENSE.md")},
	}
	out := filepath.Join(t.TempDir(), "licenses")
	n, err := Collect(mods, goroot, out)
	if err != nil || n != 5 {
		t.Fatalf("Collect: %d files, %v", n, err)
	}
	var got []string
	filepath.WalkDir(out, func(p string, d os.DirEntry, err error) error {
		st, _ := os.Stat(p)
		rel, _ := filepath.Rel(out, p)
		if d.IsDir() && st.Mode().Perm() != 0o755 || !d.IsDir() && st.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v", rel, st.Mode().Perm())
		}
		if !d.IsDir() {
			got = append(got, rel)
		}
		return nil
	})
	want := []string{"example.com/apache/LICENSE", "example.com/apache/NOTICE", "example.com/mit/v2/LICENSE.md", "go/LICENSE", "go/PATENTS"}
	if !slices.Equal(got, want) {
		t.Errorf("files %v, want %v", got, want)
	}

	mods = append(mods, Module{Path: "example.com/unlicensed", Version: "v0.1.0", Dir: module(t, "NOTICE", "README")},
		Module{Path: "example.com/bare", Version: "v0.0.1", Dir: module(t)})
	out = filepath.Join(t.TempDir(), "licenses")
	_, err = Collect(mods, goroot, out)
	if err == nil || !strings.Contains(err.Error(), "2 linked module(s): example.com/unlicensed@v0.1.0, example.com/bare@v0.0.1") {
		t.Fatalf("modules without a licence: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "example.com/mit/v2/LICENSE.md")); err != nil {
		t.Errorf("the licensed modules were not written beside the failure: %v", err)
	}
}

// TestLinked reads this test binary's own build info: the modules it links
// are listed, the main module's own are not.
func TestLinked(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	mods, err := Linked(exe)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		if strings.HasPrefix(m.Path, "github.com/gpuaas/provision") {
			t.Errorf("the main module's own %s is listed", m.Path)
		}
	}
	if _, err := Linked(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Error("a missing binary gave no error")
	}
	if !own("github.com/gpuaas/provision/clientcert", "github.com/gpuaas/provision") || own("github.com/gpuaas/provisioner", "github.com/gpuaas/provision") {
		t.Error("own() is wrong about the path boundary")
	}
}
