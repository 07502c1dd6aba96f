package clientcertmod

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/testenv"
)

const modPath = "github.com/gpuaas/provision/clientcert"

// clientcertDir is the absolute path of the clientcert module in this checkout.
func clientcertDir(t *testing.T) string {
	t.Helper()
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "clientcert")
}

// readmeProgram returns the Go program in clientcert/README.md: the first
// ```go block. Building it is what keeps the README's lines true.
func readmeProgram(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```go\n(.*?)```").FindSubmatch(b)
	if m == nil {
		t.Fatal("clientcert/README.md has no ```go block")
	}
	return string(m[1])
}

// goCmd runs the go command in dir with no network, no workspace and no
// flags inherited from the caller, so that the only modules it can see are
// the ones the throwaway module names.
func goCmd(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testenv.GoTool(), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// TestClientcertModuleGraph builds the README's API server in a fresh module
// that requires clientcert (replaced by this checkout's copy, as an API team
// would use a tagged version) and checks that its module graph is that
// module plus clientcert, and that every package it links is clientcert or
// the standard library.
func TestClientcertModuleGraph(t *testing.T) {
	cc := clientcertDir(t)
	gomod, err := os.ReadFile(filepath.Join(cc, "go.mod"))
	if err != nil {
		t.Fatalf("clientcert must be its own module: %v", err)
	}
	if !bytes.HasPrefix(gomod, []byte("module "+modPath+"\n")) {
		t.Fatalf("clientcert/go.mod does not declare module %s:\n%s", modPath, gomod)
	}
	if bytes.Contains(gomod, []byte("require")) {
		t.Errorf("clientcert/go.mod requires other modules; it must need only the standard library:\n%s", gomod)
	}

	dir := t.TempDir()
	files := map[string]string{
		"go.mod":  "module example.com/nodeapi\n\ngo 1.22\n\nrequire " + modPath + " v0.0.0\n\nreplace " + modPath + " => " + cc + "\n",
		"main.go": readmeProgram(t, cc),
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := goCmd(t, dir, "build", "-o", filepath.Join(dir, "nodeapi"), "."); err != nil {
		t.Fatalf("the README program does not build against clientcert alone: %v\n%s", err, out)
	}

	out, err := goCmd(t, dir, "list", "-m", "all")
	if err != nil {
		t.Fatalf("go list -m all: %v\n%s", err, out)
	}
	var mods []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		mods = append(mods, strings.Fields(l)[0])
	}
	if len(mods) != 2 || mods[0] != "example.com/nodeapi" || mods[1] != modPath {
		t.Errorf("module graph of a program importing only clientcert:\n%s\nwant exactly example.com/nodeapi and %s", out, modPath)
	}
	t.Logf("clientcert-only program: %d modules in its graph", len(mods))

	out, err = goCmd(t, dir, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".")
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(out) {
		if p != "example.com/nodeapi" && p != modPath {
			t.Errorf("the program links the non-standard package %s", p)
		}
	}
}
