package arch

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The module's production source, parsed once: what the rules below read.
// Tests (_test.go), testdata and tests/ are not production code; the
// nested modules (clientcert, nodekey) are read as modules of their own.

const module = "github.com/gpuaas/provision"

// repoRoot is the repository, two levels up from tests/arch.
var repoRoot = filepath.Join("..", "..")

// pkg is one package of production code.
type pkg struct {
	dir   string // relative to the repository, slash-separated: "internal/cli"
	files []*file
}

type file struct {
	name    string // relative path
	ast     *ast.File
	fset    *token.FileSet
	imports map[string]string // local name -> import path
}

// tree is every production package by directory.
type tree map[string]*pkg

var parsed tree

// source parses the production source once.
func source(t *testing.T) tree {
	t.Helper()
	if parsed != nil {
		return parsed
	}
	tr := tree{}
	err := filepath.WalkDir(repoRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			switch {
			case rel == ".":
				return nil
			case strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || rel == "tests":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, p, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		dir := filepath.ToSlash(filepath.Dir(rel))
		pk := tr[dir]
		if pk == nil {
			pk = &pkg{dir: dir}
			tr[dir] = pk
		}
		fi := &file{name: rel, ast: f, fset: fset, imports: map[string]string{}}
		for _, im := range f.Imports {
			path, _ := strconv.Unquote(im.Path.Value)
			name := filepath.Base(path)
			if im.Name != nil {
				name = im.Name.Name
			} else if name == "cloud-init" {
				name = "cloudinit"
			} else if strings.HasPrefix(name, "v") && strings.Count(path, "/") > 1 {
				name = filepath.Base(filepath.Dir(path)) // a major-version suffix: yaml/v3
			}
			fi.imports[name] = path
		}
		pk.files = append(pk.files, fi)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	parsed = tr
	return tr
}

// module packages, under the module: "internal/cli"; nested modules keep
// their own paths: "nodekey".
func (tr tree) modulePackages() []string {
	var out []string
	for dir := range tr {
		if !strings.HasPrefix(dir, "clientcert") && !strings.HasPrefix(dir, "nodekey") {
			out = append(out, dir)
		}
	}
	sort.Strings(out)
	return out
}

// local is the module-relative path of an import path of this module, or
// "" for another module's (the standard library, a dependency).
func local(path string) string {
	if path == module {
		return "."
	}
	if rest, ok := strings.CutPrefix(path, module+"/"); ok {
		return rest
	}
	return ""
}

// imports are the import paths of the package's files.
func (p *pkg) imports() map[string]bool {
	m := map[string]bool{}
	for _, f := range p.files {
		for _, path := range f.imports {
			m[path] = true
		}
	}
	return m
}

// hit is a place in the source.
type hit struct {
	where string // file:line
	what  string
	fn    string // the enclosing function ("" at package level)
}

func (h hit) String() string { return h.where + " " + h.what }

// walk visits every node of the package with its enclosing function.
func (p *pkg) walk(visit func(f *file, fn string, n ast.Node)) {
	for _, f := range p.files {
		for _, d := range f.ast.Decls {
			fn := ""
			if fd, ok := d.(*ast.FuncDecl); ok {
				fn = fd.Name.Name
			}
			ast.Inspect(d, func(n ast.Node) bool {
				if n != nil {
					visit(f, fn, n)
				}
				return true
			})
		}
	}
}

// find is every node of the package match names (what, true), as hits.
func (p *pkg) find(match func(f *file, n ast.Node) (string, bool)) []hit {
	var out []hit
	p.walk(func(f *file, fn string, n ast.Node) {
		if what, ok := match(f, n); ok {
			out = append(out, hit{f.at(n), what, fn})
		}
	})
	return out
}

func (f *file) at(n ast.Node) string {
	pos := f.fset.Position(n.Pos())
	return f.name + ":" + strconv.Itoa(pos.Line)
}

// refs are the package's references to name in the package imported as
// path ("os" and "ReadFile": os.ReadFile).
func (p *pkg) refs(path, name string) []hit {
	return p.find(func(f *file, n ast.Node) (string, bool) {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok || sel.Sel.Name != name {
			return "", false
		}
		id, ok := sel.X.(*ast.Ident)
		return filepath.Base(path) + "." + name, ok && f.imports[id.Name] == path
	})
}

// calls are the package's calls of a method or function named name on
// any receiver (".Publish(").
func (p *pkg) calls(name string) []hit {
	return p.find(func(f *file, n ast.Node) (string, bool) {
		c, ok := n.(*ast.CallExpr)
		if !ok {
			return "", false
		}
		sel, ok := c.Fun.(*ast.SelectorExpr)
		return render(f, c.Fun), ok && sel.Sel.Name == name
	})
}

// funcCalls are the package's calls of its own function named name.
func (p *pkg) funcCalls(name string) []hit {
	return p.find(func(f *file, n ast.Node) (string, bool) {
		c, ok := n.(*ast.CallExpr)
		if !ok {
			return "", false
		}
		id, ok := c.Fun.(*ast.Ident)
		return name + "(...)", ok && id.Name == name
	})
}

// fields are the package's selectors of a field or method named name
// (x.Splay), calls or not.
func (p *pkg) fields(name string) []hit {
	return p.find(func(f *file, n ast.Node) (string, bool) {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok || sel.Sel.Name != name {
			return "", false
		}
		if id, ok := sel.X.(*ast.Ident); ok && f.imports[id.Name] != "" {
			return "", false // a package's name, not a field
		}
		return render(f, sel), true
	})
}

// composites are the package's composite literals of type name in the
// package imported as path ("" for the package's own type).
func (p *pkg) composites(path, name string) []hit {
	return p.find(func(f *file, n ast.Node) (string, bool) {
		cl, ok := n.(*ast.CompositeLit)
		if !ok || cl.Type == nil {
			return "", false
		}
		switch ty := cl.Type.(type) {
		case *ast.Ident:
			return name + "{}", path == "" && ty.Name == name
		case *ast.SelectorExpr:
			id, ok := ty.X.(*ast.Ident)
			return name + "{}", ok && f.imports[id.Name] == path && ty.Sel.Name == name
		}
		return "", false
	})
}

// strings are the package's string literals, unquoted.
func (p *pkg) strings() []hit {
	return p.find(func(f *file, n ast.Node) (string, bool) {
		bl, ok := n.(*ast.BasicLit)
		if !ok || bl.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(bl.Value)
		return s, err == nil
	})
}

// render is the source text of an expression, short.
func render(f *file, e ast.Expr) string {
	var b strings.Builder
	ast.Inspect(e, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.Ident:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(x.Name)
		case *ast.CallExpr:
			b.WriteString("(...)")
			return false
		}
		return true
	})
	return b.String()
}

// readFile is a repository file's text.
func readFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// readDir lists a repository directory's names.
func readDir(rel string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(repoRoot, filepath.FromSlash(rel)))
	if err != nil {
		return nil, err
	}
	out := make([]string, len(ents))
	for i, e := range ents {
		out[i] = e.Name()
	}
	return out, nil
}
