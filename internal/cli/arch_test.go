package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestImportRules: the rooms of ARCHITECTURE.md keep their doors. renew
// does not import bootstrap (they are two lists over the pipeline), metrics
// does not import verify (it renders a report.Report), and verify, the
// ladder, is imported by no production package but cli (bootstrap and
// renew get it passed in as pipeline.Ladder).
func TestImportRules(t *testing.T) {
	const mod = "github.com/gpuaas/provision/"
	deps := func(pkg string) string {
		out, err := exec.Command("go", "list", "-deps", mod+pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		return string(out)
	}
	for _, rule := range []struct{ pkg, forbidden string }{
		{"internal/renew", "internal/bootstrap"},
		{"internal/metrics", "internal/verify"},
		{"internal/pipeline", "internal/verify"},
		{"internal/bootstrap", "internal/verify"},
		{"internal/renew", "internal/verify"},
		{"internal/status", "internal/verify"},
		{"internal/observe", "internal/verify"},
	} {
		if strings.Contains(deps(rule.pkg), mod+rule.forbidden+"\n") {
			t.Errorf("%s depends on %s", rule.pkg, rule.forbidden)
		}
	}
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, mod+"...").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || strings.Contains(f[0], "/tests/") || f[0] == mod+"internal/cli" || f[0] == mod+"internal/verify" {
			continue
		}
		for _, imp := range f[1:] {
			if imp == mod+"internal/verify" {
				t.Errorf("%s imports internal/verify: only cli may (and tests)", f[0])
			}
		}
	}
}

// TestArchitectureNamesExist: every package path ARCHITECTURE.md names
// exists, so the map cannot point at a room that moved.
func TestArchitectureNamesExist(t *testing.T) {
	root := filepath.Join("..", "..")
	b, err := os.ReadFile(filepath.Join(root, "ARCHITECTURE.md"))
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile("`((?:internal|cmd|tests|deploy|packaging|cloud-init|clientcert|nodekey)(?:/[a-z0-9-]+)*)/?`").FindAllStringSubmatch(string(b), -1)
	if len(names) < 20 {
		t.Fatalf("found only %d package names in ARCHITECTURE.md", len(names))
	}
	for _, m := range names {
		if st, err := os.Stat(filepath.Join(root, m[1])); err != nil || !st.IsDir() {
			t.Errorf("ARCHITECTURE.md names %s, which is not a directory of the repository", m[1])
		}
	}
}
