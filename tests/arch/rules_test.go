package arch

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The checks, by the code map row (its first cell) and by the question.
// Each says in its comment how it reads the rule; where imports cannot say
// it, the check reads the source: a reference, a call, a literal.

func mod(p string) string { return module + "/" + p }

// pk is the package in dir, which must exist.
func pk(t *testing.T, tr tree, dir string) *pkg {
	t.Helper()
	p := tr[dir]
	if p == nil {
		t.Fatalf("no package %s", dir)
	}
	return p
}

// importsNone fails for each of paths (import paths) dir imports.
func importsNone(t *testing.T, tr tree, dir string, paths ...string) {
	t.Helper()
	got := pk(t, tr, dir).imports()
	for _, p := range paths {
		if got[p] {
			t.Errorf("%s imports %s", dir, p)
		}
	}
}

// none fails for each hit.
func none(t *testing.T, dir, rule string, hits []hit) {
	t.Helper()
	for _, h := range hits {
		t.Errorf("%s %s: %s", dir, rule, h)
	}
}

// only fails for each hit find returns in a package outside allowed
// (directories, or their prefixes ending in "/"); it returns the hits
// found in the allowed packages, so a check can also require the one place
// to exist.
func only(t *testing.T, tr tree, rule string, allowed []string, find func(*pkg) []hit) int {
	t.Helper()
	n := 0
	for _, dir := range sortedKeys(tr) {
		hits := find(tr[dir])
		ok := slices.ContainsFunc(allowed, func(a string) bool {
			return dir == a || (strings.HasSuffix(a, "/") && strings.HasPrefix(dir, a))
		})
		if ok {
			n += len(hits)
			continue
		}
		for _, h := range hits {
			t.Errorf("%s (only %s may): %s", rule, strings.Join(allowed, ", "), h)
		}
	}
	return n
}

// atLeast fails when the one place was not found: a check that finds
// nothing anywhere proves nothing.
func atLeast(t *testing.T, what string, n int) {
	t.Helper()
	if n == 0 {
		t.Errorf("the one place for %s was not found: the check reads nothing", what)
	}
}

// refsTo finds references to name in the package imported as path.
func refsTo(path, name string) func(*pkg) []hit {
	return func(p *pkg) []hit { return p.refs(path, name) }
}

// callsOf finds calls of a method or function named name, any receiver.
func callsOf(name string) func(*pkg) []hit {
	return func(p *pkg) []hit { return p.calls(name) }
}

// literal finds string literals containing s.
func literal(s string) func(*pkg) []hit {
	return func(p *pkg) []hit {
		var out []hit
		for _, h := range p.strings() {
			if strings.Contains(h.what, s) {
				out = append(out, hit{h.where, "literal " + s, h.fn})
			}
		}
		return out
	}
}

// assigns finds assignments to a field named name (x.name = ...).
func assigns(name string) func(*pkg) []hit {
	return func(p *pkg) []hit {
		return p.find(func(f *file, n ast.Node) (string, bool) {
			as, ok := n.(*ast.AssignStmt)
			if !ok {
				return "", false
			}
			i := slices.IndexFunc(as.Lhs, func(l ast.Expr) bool {
				sel, ok := l.(*ast.SelectorExpr)
				return ok && sel.Sel.Name == name
			})
			return name + " =", i >= 0
		})
	}
}

// osFiles are the os functions that read or write files.
var osFiles = []string{"Open", "OpenFile", "ReadFile", "WriteFile", "Create", "CreateTemp", "Mkdir", "MkdirAll", "MkdirTemp", "Remove", "RemoveAll", "Rename", "ReadDir", "Chmod", "Chown", "Symlink", "Link"}

// osRefs finds references to the os functions named.
func osRefs(p *pkg, names ...string) []hit {
	var out []hit
	for _, n := range names {
		out = append(out, p.refs("os", n)...)
	}
	return out
}

// printing finds what writes to a terminal or a log: fmt.Print*, the
// standard streams, the log package.
func printing(p *pkg) []hit {
	var out []hit
	for _, n := range []string{"Print", "Printf", "Println"} {
		out = append(out, p.refs("fmt", n)...)
	}
	out = append(out, p.refs("os", "Stdout")...)
	out = append(out, p.refs("os", "Stderr")...)
	for _, n := range []string{"Print", "Printf", "Println", "Fatal", "Fatalf"} {
		out = append(out, p.refs("log", n)...)
	}
	return out
}

var mustNot = map[string]func(*testing.T, tree){
	// hold logic: main imports only cli (and system for the crash tests'
	// hook type), and no function of the package is longer than main's
	// wiring.
	"`cmd/provision`": func(t *testing.T, tr tree) {
		p := pk(t, tr, "cmd/provision")
		for path := range p.imports() {
			if l := local(path); l != "" && l != "internal/cli" && l != "internal/system" {
				t.Errorf("cmd/provision imports %s: main only wires the process to cli", l)
			}
		}
		for _, f := range p.files {
			for _, d := range f.ast.Decls {
				if fd, ok := d.(*ast.FuncDecl); ok {
					if n := f.fset.Position(fd.End()).Line - f.fset.Position(fd.Pos()).Line; n > 30 {
						t.Errorf("%s: %s is %d lines: main holds no logic", f.at(fd), fd.Name.Name, n)
					}
				}
			}
		}
	},
	// decide anything a library decides: cli takes no verdict, classifies
	// nothing and compares no proofs; it imports neither lifecycle nor
	// probe, and calls no classifier.
	"`internal/cli`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/cli", mod("internal/lifecycle"), mod("internal/probe"))
		p := pk(t, tr, "internal/cli")
		for _, n := range []string{"Classify", "FromProbe", "FromEnroll", "NoEvidence", "FromKeyStore"} {
			none(t, "internal/cli", "classifies", p.refs(mod("internal/diag"), n))
		}
	},
	// read any other file: the only file read is the config's, in Load.
	"`internal/config`": func(t *testing.T, tr tree) {
		for _, h := range osRefs(pk(t, tr, "internal/config"), osFiles...) {
			if h.fn != "Load" {
				t.Errorf("internal/config reads or writes a file outside Load: %s", h)
			}
		}
	},
	// know the control plane: system imports nothing of the module.
	"`internal/system`": func(t *testing.T, tr tree) {
		for path := range pk(t, tr, "internal/system").imports() {
			if local(path) != "" {
				t.Errorf("internal/system imports %s", path)
			}
		}
	},
	// touch certificates.
	"`internal/hosts`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/hosts", "crypto/x509", "crypto/tls", mod("internal/credstore"), mod("internal/enroll"), mod("nodekey"))
	},
	// touch files: no file system, and no package that has one.
	"`internal/enroll`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/enroll", mod("internal/system"), mod("internal/credstore"), mod("internal/state"))
		none(t, "internal/enroll", "touches a file", osRefs(pk(t, tr, "internal/enroll"), osFiles...))
	},
	// know how a certificate was obtained.
	"`internal/credstore`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/credstore", mod("internal/enroll"), mod("internal/probe"), mod("internal/diag"), mod("internal/lifecycle"))
	},
	// touch the disk or the network.
	"`internal/lifecycle`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/lifecycle", "os", "net", "net/http", "io/fs", mod("internal/system"), mod("internal/probe"), mod("internal/enroll"), mod("internal/state"))
	},
	// print, or decide what to do: nothing printed, and no action of the
	// verdict (keep, tighten, renew, re-enroll) acted on.
	"`internal/observe`": func(t *testing.T, tr tree) {
		p := pk(t, tr, "internal/observe")
		none(t, "internal/observe", "prints", printing(p))
		for _, a := range []string{"Keep", "Tighten", "Renew", "Reenroll"} {
			none(t, "internal/observe", "decides on an action", p.refs(mod("internal/lifecycle"), a))
		}
	},
	// classify: the probe records stages and knows no layer.
	"`internal/probe`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/probe", mod("internal/diag"))
		none(t, "internal/probe", "names a layer", pk(t, tr, "internal/probe").fields("Layer"))
	},
	// know the CLI: no exit code, no wording of the command line.
	"`internal/diag`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/diag", mod("internal/cli"))
		p := pk(t, tr, "internal/diag")
		none(t, "internal/diag", "knows an exit code", p.fields("ExitCode"))
		none(t, "internal/diag", "prints", printing(p))
	},
	// know checks.
	"`internal/report`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/report", mod("internal/verify"))
	},
	// be imported by anything but cli (and tests): the floors keep every
	// other package below it; cli is the one that imports it.
	"`internal/verify`": func(t *testing.T, tr tree) {
		n := 0
		for _, dir := range sortedKeys(tr) {
			if tr[dir].imports()[mod("internal/verify")] {
				n++
				if dir != "internal/cli" {
					t.Errorf("%s imports internal/verify: only cli may (and tests)", dir)
				}
			}
		}
		atLeast(t, "the ladder's wiring in cli", n)
	},
	// print; import verify (the ladder is passed in).
	"`internal/pipeline`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/pipeline", mod("internal/verify"))
		none(t, "internal/pipeline", "prints", printing(pk(t, tr, "internal/pipeline")))
	},
	"`internal/bootstrap`": func(t *testing.T, tr tree) { noSharedStep(t, tr, "internal/bootstrap") },
	"`internal/renew`":     func(t *testing.T, tr tree) { noSharedStep(t, tr, "internal/renew") },
	// remove anything before the CA revoked it: the credentials and the
	// records are removed by the remove step alone, which the list runs
	// after the revoke step (a failure there ends the run); tests/e2e
	// TestRevokeFailsClosed shows nothing removed when the CA refuses.
	"`internal/revoke`": func(t *testing.T, tr tree) {
		p := pk(t, tr, "internal/revoke")
		for _, ref := range [][2]string{{"internal/credstore", "Remove"}, {"internal/state", "Forget"}, {"internal/metrics", "Remove"}} {
			hits := p.refs(mod(ref[0]), ref[1])
			atLeast(t, ref[0]+"."+ref[1], len(hits))
			for _, h := range hits {
				if h.fn != "remove" {
					t.Errorf("internal/revoke removes outside its remove step: %s", h)
				}
			}
		}
		line := map[string]int{}
		for _, h := range p.strings() {
			if h.fn == "Run" && (h.what == "revoke" || h.what == "remove") {
				n, _ := strconv.Atoi(h.where[strings.LastIndex(h.where, ":")+1:])
				line[h.what] = n
			}
		}
		if line["revoke"] == 0 || line["remove"] == 0 || line["revoke"] > line["remove"] {
			t.Errorf("internal/revoke's list (Run) must name the revoke step before the remove step: %v", line)
		}
	},
	// use the network or the lock: no network package, no probe, no CA
	// client, and every observation it makes is offline.
	"`internal/status`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/status", "net", "net/http", "syscall", mod("internal/probe"), mod("internal/tasks"))
		p := pk(t, tr, "internal/status")
		for _, m := range []string{"CAClient", "FetchRoots", "Probe", "Proof", "Flock"} {
			none(t, "internal/status", "uses the network or the lock", p.calls(m))
		}
		envs, offline := len(p.refs(mod("internal/observe"), "NewEnv")), len(assigns("Offline")(p))
		if envs == 0 || offline < envs {
			t.Errorf("internal/status makes %d observations, %d of them offline: all must be", envs, offline)
		}
	},
	// know credentials.
	"`internal/state`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/state", "crypto/x509", mod("internal/credstore"), mod("internal/enroll"), mod("internal/lifecycle"), mod("nodekey"))
	},
	// lose a task: every package that runs the proof (the ladder's
	// tasks/wait dequeues a task) hands off what it received.
	"`internal/tasks`": func(t *testing.T, tr tree) {
		runs := 0
		for _, dir := range sortedKeys(tr) {
			p := tr[dir]
			if len(p.calls("Ladder")) == 0 || dir == "internal/verify" {
				continue
			}
			runs++
			if len(p.refs(mod("internal/tasks"), "HandOff")) == 0 {
				t.Errorf("%s runs the proof but never hands off the task it may receive (tasks.HandOff)", dir)
			}
		}
		atLeast(t, "the proof's runners", runs)
	},
	// decide what a failure means: the hook returns an error, and knows no
	// layer, record or report.
	"`internal/hook`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/hook", mod("internal/diag"), mod("internal/state"), mod("internal/report"), mod("internal/lifecycle"))
	},
	// decide what is transient: no network error is inspected, and no
	// check or classifier is defined here (the CA client's are enroll's).
	"`internal/retry`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/retry", "net", "crypto/tls", "crypto/x509", "syscall")
		p := pk(t, tr, "internal/retry")
		for _, f := range p.files {
			for _, d := range f.ast.Decls {
				if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil && (strings.HasPrefix(fd.Name.Name, "Check") || strings.HasPrefix(fd.Name.Name, "Is")) {
					t.Errorf("%s: retry defines %s: what is worth retrying is the caller's to decide", f.at(fd), fd.Name.Name)
				}
			}
		}
		none(t, "internal/retry", "names what is transient", p.fields("Transient"))
	},
	// decide exit codes.
	"`internal/metrics`": func(t *testing.T, tr tree) {
		importsNone(t, tr, "internal/metrics", mod("internal/cli"))
		none(t, "internal/metrics", "decides an exit code", pk(t, tr, "internal/metrics").fields("ExitCode"))
	},
	// import anything of the node side (TestFloors reads its imports).
	"`clientcert/`": func(t *testing.T, tr tree) { ownModule(t, tr, "clientcert") },
	// import anything of provision; know the config.
	"`nodekey/`": func(t *testing.T, tr tree) {
		ownModule(t, tr, "nodekey")
		for dir, p := range tr {
			if strings.HasPrefix(dir, "nodekey") {
				none(t, dir, "knows the config", literal("key.store")(p))
			}
		}
	},
	// run a command but through the CLI.
	"`tests/...`": func(t *testing.T, tr tree) {
		forbidden := []string{"internal/pipeline", "internal/bootstrap", "internal/renew", "internal/revoke", "internal/verify", "internal/observe", "internal/status"}
		files := testImports(t)
		for _, f := range sortedKeys(files) {
			if strings.HasPrefix(f, "tests/arch/") {
				continue
			}
			for _, l := range files[f] {
				if slices.Contains(forbidden, l) && !(l == "internal/renew" && onlyCrashPoints(t, f)) {
					t.Errorf("%s imports %s: tests run a command only through the CLI", f, l)
				}
			}
		}
	},
}

// noSharedStep: a command's package takes the shared steps from pipeline
// and never does their work itself: it fetches no roots, publishes,
// proves, runs the hook, revokes, hands off a task or writes the renew
// record or the receipt.
func noSharedStep(t *testing.T, tr tree, dir string) {
	p := pk(t, tr, dir)
	for _, m := range []string{"FetchRoots", "Renew", "RenewExpired", "Revoke", "CheckRevocation", "Ladder"} {
		none(t, dir, "does a shared step's work", p.calls(m))
	}
	for _, r := range []struct{ pkg, name string }{
		{"internal/credstore", "Publish"}, {"internal/credstore", "SaveAsideFor"}, {"internal/hook", "Run"},
		{"internal/tasks", "HandOff"}, {"internal/state", "WriteRenewal"}, {"internal/state", "WriteReceipt"},
	} {
		none(t, dir, "does a shared step's work", p.refs(mod(r.pkg), r.name))
	}
}

// ownModule: the nested module imports nothing of the main module.
func ownModule(t *testing.T, tr tree, name string) {
	n := 0
	for dir, p := range tr {
		if dir != name && !strings.HasPrefix(dir, name+"/") {
			continue
		}
		n++
		for path := range p.imports() {
			if l := local(path); l != "" && !strings.HasPrefix(l, name) {
				t.Errorf("%s imports %s", dir, path)
			}
		}
	}
	atLeast(t, "the module "+name, n)
}

// onlyCrashPoints reports whether the test file uses nothing of renew but
// its CrashPoints, the names the crash tests kill at.
func onlyCrashPoints(t *testing.T, rel string) bool {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, filepath.Join(repoRoot, rel), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	alias := ""
	for _, im := range f.Imports {
		if path, _ := strconv.Unquote(im.Path.Value); path == mod("internal/renew") {
			alias = "renew"
			if im.Name != nil {
				alias = im.Name.Name
			}
		}
	}
	ok := true
	ast.Inspect(f, func(n ast.Node) bool {
		if sel, is := n.(*ast.SelectorExpr); is {
			if id, is := sel.X.(*ast.Ident); is && id.Name == alias && sel.Sel.Name != "CrashPoints" {
				ok = false
			}
		}
		return true
	})
	return ok
}
