package arch

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// doc is ARCHITECTURE.md.
func doc(t *testing.T) string { return readFile(t, "ARCHITECTURE.md") }

// section is the text of the "## name" section of the document.
func section(t *testing.T, name string) string {
	t.Helper()
	d := doc(t)
	i := strings.Index(d, "\n## "+name+"\n")
	if i < 0 {
		t.Fatalf("ARCHITECTURE.md has no section %q", name)
	}
	rest := d[i+len(name)+5:]
	if j := strings.Index(rest, "\n## "); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

// tableRows are the rows of the markdown tables in text, as cells.
func tableRows(text string) [][]string {
	var rows [][]string
	for _, l := range strings.Split(text, "\n") {
		if !strings.HasPrefix(l, "| ") || strings.HasPrefix(l, "|---") {
			continue
		}
		cells := strings.Split(strings.Trim(l, "|"), " | ")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows = append(rows, cells)
	}
	return rows[1:] // the header
}

// floors are the floors the document assigns, by package.
func floors(t *testing.T) map[string]int {
	t.Helper()
	m := map[string]int{}
	re := regexp.MustCompile(`(?m)^floor (\d+)\s+(.+)$`)
	for _, f := range re.FindAllStringSubmatch(doc(t), -1) {
		n, _ := strconv.Atoi(f[1])
		for _, p := range strings.Fields(f[2]) {
			if _, dup := m[p]; dup {
				t.Errorf("ARCHITECTURE.md puts %s on two floors", p)
			}
			m[p] = n
		}
	}
	if len(m) < 20 {
		t.Fatalf("found only %d packages on the floors of ARCHITECTURE.md", len(m))
	}
	return m
}

// TestFloors: every package of the module stands on one floor of
// ARCHITECTURE.md and imports only packages on lower floors; the nested
// modules import nothing of the node side, and no production package
// imports the tests' helpers.
func TestFloors(t *testing.T) {
	tr := source(t)
	fl := floors(t)
	pkgs := tr.modulePackages()
	for name := range fl {
		if !slices.Contains(pkgs, name) {
			t.Errorf("ARCHITECTURE.md puts %s on a floor, but the module has no such package", name)
		}
	}
	edges := 0
	for _, name := range pkgs {
		f, ok := fl[name]
		if !ok {
			t.Errorf("package %s stands on no floor of ARCHITECTURE.md: place it", name)
			continue
		}
		for path := range tr[name].imports() {
			dep := local(path)
			if dep == "" || strings.HasPrefix(dep, "nodekey") || strings.HasPrefix(dep, "clientcert") {
				continue
			}
			edges++
			switch g, ok := fl[dep]; {
			case !ok:
				t.Errorf("%s imports %s, which stands on no floor", name, dep)
			case g >= f:
				t.Errorf("%s (floor %d) imports %s (floor %d): imports point down only", name, f, dep, g)
			case dep == "internal/testenv":
				t.Errorf("%s imports internal/testenv, the tests' helper", name)
			}
		}
	}
	for _, mod := range []string{"clientcert", "nodekey"} {
		for dir, p := range tr {
			if dir != mod && !strings.HasPrefix(dir, mod+"/") {
				continue
			}
			for path := range p.imports() {
				if l := local(path); l != "" && !strings.HasPrefix(l, mod) {
					t.Errorf("%s (a module of its own) imports %s", dir, path)
				}
			}
		}
	}
	t.Logf("floors: %d packages, %d imports within the module, all pointing down", len(pkgs), edges)
}

// TestMustNot: every row of the code map that says what its package must
// not do has a check here, every check has its row, and every check holds.
func TestMustNot(t *testing.T) {
	var rows [][2]string
	for _, row := range tableRows(section(t, "Code map")) {
		if len(row) >= 3 && row[2] != "" {
			rows = append(rows, [2]string{row[0], row[2]})
		}
	}
	checkRows(t, "code map row", rows, mustNot)
}

// TestOnePlace: every question of "Where each question is answered" has a
// check that no other package answers it; every check has its row.
func TestOnePlace(t *testing.T) {
	var rows [][2]string
	for _, row := range tableRows(section(t, "Where each question is answered")) {
		rows = append(rows, [2]string{row[0], row[1]})
	}
	checkRows(t, "question", rows, onePlace)
}

// checkRows runs the check of each row (its key, and what the row says),
// and fails for a row without a check or a check without a row.
func checkRows(t *testing.T, what string, rows [][2]string, checks map[string]func(*testing.T, tree)) {
	tr := source(t)
	seen := map[string]bool{}
	for _, row := range rows {
		key := row[0]
		seen[key] = true
		check, ok := checks[key]
		if !ok {
			t.Errorf("%s %s (%s) has no check in tests/arch: add one", what, key, row[1])
			continue
		}
		t.Run(strings.Trim(key, "`/."), func(t *testing.T) { check(t, tr) })
	}
	for key := range checks {
		if !seen[key] {
			t.Errorf("tests/arch checks %s %s, which ARCHITECTURE.md no longer has", what, key)
		}
	}
}

// TestInvariantsSayWhy: each invariant gives its reason, as the rules a
// reader is asked to keep must say what they protect.
func TestInvariantsSayWhy(t *testing.T) {
	n := 0
	for _, b := range strings.Split(section(t, "Invariants"), "\n- ")[1:] {
		n++
		name := b
		if i := strings.Index(b, ".**"); i > 0 {
			name = strings.TrimPrefix(b[:i], "**")
		}
		if !strings.Contains(b, "*Why:*") {
			t.Errorf("invariant %q gives no reason (*Why:*)", name)
		}
	}
	if n < 8 {
		t.Fatalf("found only %d invariants", n)
	}
}

// TestArchitectureNamesExist: every path ARCHITECTURE.md names exists, and
// every Go file of "Start here" is one a reader can open, so the map cannot
// point at a room that moved.
func TestArchitectureNamesExist(t *testing.T) {
	names := regexp.MustCompile("`((?:internal|cmd|tests|deploy|packaging|cloud-init|clientcert|nodekey)(?:/[a-z0-9_.-]+)*)/?`").FindAllStringSubmatch(doc(t), -1)
	if len(names) < 20 {
		t.Fatalf("found only %d paths in ARCHITECTURE.md", len(names))
	}
	for _, m := range names {
		if strings.HasSuffix(m[1], ".") {
			continue // "tests/...": the suites, not a path
		}
		if _, err := os.Stat(filepath.Join(repoRoot, m[1])); err != nil {
			t.Errorf("ARCHITECTURE.md names %s, which the repository does not have", m[1])
		}
	}
	files := 0
	for _, m := range regexp.MustCompile("`([a-z0-9/_-]+\\.go)`").FindAllStringSubmatch(section(t, "Start here"), -1) {
		files++
		if _, err := os.Stat(filepath.Join(repoRoot, m[1])); err != nil {
			t.Errorf("Start here names %s, which the repository does not have", m[1])
		}
	}
	if files < 5 {
		t.Errorf("Start here names only %d files", files)
	}
}

// testImports are the module's packages the files under tests/ import,
// by file.
func testImports(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	root := filepath.Join(repoRoot, "tests")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, p)
		for _, im := range f.Imports {
			path, _ := strconv.Unquote(im.Path.Value)
			if l := local(path); l != "" {
				out[filepath.ToSlash(rel)] = append(out[filepath.ToSlash(rel)], l)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sortedKeys lists a map's keys in order, for stable messages.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
