package main

import (
	"debug/buildinfo"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/testenv"
)

// TestLeanBuild builds provision as shipped and reads what the binary
// records (what `go version -m` prints): it must carry every tag of
// cmd/provision/build-tags and link none of the modules those tags drop
// (step-ca's databases above all). It also checks the plain module graph
// still holds each dropped module and package, so the list is not stale and
// the check can fail: were a dropped module linked again, or a tag lost, the
// build info would say so.
func TestLeanBuild(t *testing.T) {
	tags, err := testenv.NodeTags()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"nobadger", "nobbolt", "nomysql", "nopgx"} {
		if !slices.Contains(tags, want) {
			t.Errorf("%s lacks %s: the node binary would link step-ca's storage driver", testenv.TagsFile, want)
		}
	}
	bin := filepath.Join(t.TempDir(), "provision")
	if err := testenv.BuildShipped(bin); err != nil {
		t.Fatal(err)
	}
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range testenv.LeanProblems(bi, tags) {
		t.Error("the shipped build " + p)
	}
	if len(bi.Deps) < 10 {
		t.Fatalf("the binary records %d modules: its build info is not what it should be", len(bi.Deps))
	}
	t.Logf("the shipped binary links %d modules, built with -tags %s", len(bi.Deps), strings.Join(tags, ","))

	lean := deps(t, "-tags", strings.Join(tags, ","))
	plain := deps(t)
	for pkg, tag := range testenv.DroppedPackages {
		if lean[pkg] {
			t.Errorf("the shipped build imports %s, which the tag %s drops", pkg, tag)
		}
		if !plain[pkg] {
			t.Errorf("%s is not imported even without the tags: drop it from testenv.DroppedPackages (and %s from %s if nothing needs it)", pkg, tag, testenv.TagsFile)
		}
	}
	for mod := range testenv.DroppedModules {
		if !plain["module "+mod] {
			t.Errorf("%s is not linked even without the tags: the list in testenv.DroppedModules is stale", mod)
		}
	}
}

// deps is go list -deps of ./cmd/provision with args, as a set: each
// import path, and "module " + the path of each module they come from.
func deps(t *testing.T, args ...string) map[string]bool {
	t.Helper()
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	args = append(append([]string{"list", "-deps", "-f", "{{.ImportPath}}{{with .Module}} {{.Path}}{{end}}"}, args...), "./cmd/provision")
	cmd := exec.Command(testenv.GoTool(), args...)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %v: %v", args, err)
	}
	set := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, mod, _ := strings.Cut(line, " ")
		set[pkg] = true
		if mod != "" {
			set["module "+mod] = true
		}
	}
	return set
}
