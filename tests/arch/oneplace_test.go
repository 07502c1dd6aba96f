package arch

import (
	"go/ast"
	"slices"
	"strings"
	"testing"
)

// subtracts finds x.Sub(y) where x or y names one of the given fields:
// arithmetic on a reading, as opposed to passing it on.
func subtracts(names ...string) func(*pkg) []hit {
	return func(p *pkg) []hit {
		return p.find(func(f *file, n ast.Node) (string, bool) {
			c, ok := n.(*ast.CallExpr)
			if !ok {
				return "", false
			}
			sel, ok := c.Fun.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "Sub" {
				return "", false
			}
			text := render(f, sel.X)
			for _, a := range c.Args {
				text += " " + render(f, a)
			}
			i := slices.IndexFunc(names, func(name string) bool { return strings.Contains(text, name) })
			return render(f, sel) + "(...)", i >= 0
		})
	}
}

// findingsAt finds diag.Finding literals set to one of the given layers.
func findingsAt(layers ...string) func(*pkg) []hit {
	return func(p *pkg) []hit {
		return p.find(func(f *file, n ast.Node) (string, bool) {
			cl, ok := n.(*ast.CompositeLit)
			if !ok {
				return "", false
			}
			if ty, ok := cl.Type.(*ast.SelectorExpr); !ok || ty.Sel.Name != "Finding" {
				return "", false
			}
			for _, e := range cl.Elts {
				kv, ok := e.(*ast.KeyValueExpr)
				if k, isIdent := kv.Key.(*ast.Ident); ok && isIdent && k.Name == "Layer" {
					v := render(f, kv.Value)
					return "Finding{Layer: " + v + "}", slices.ContainsFunc(layers, func(l string) bool { return strings.HasSuffix(v, "."+l) })
				}
			}
			return "", false
		})
	}
}

var onePlace = map[string]func(*testing.T, tree){
	// One writer of the error lines: the prefix is written once, in cli.
	"How does an error without a report of its own reach the operator?": func(t *testing.T, tr tree) {
		if n := only(t, tr, "an error line written", []string{"internal/cli"}, literal("provision: error")); n != 1 {
			t.Errorf("\"provision: error\" is written in %d places of cli: one helper (fail) writes it", n)
		}
	},
	// Only observe reads the timer's enablement (status and verify ask it),
	// and the link's target is named nowhere else.
	"Is renewal scheduled?": func(t *testing.T, tr tree) {
		atLeast(t, "RenewTimer", only(t, tr, "a unit's enablement read", []string{"internal/observe", "internal/system"}, callsOf("UnitEnablement")))
		only(t, tr, "the timers' target named", []string{"internal/observe"}, func(p *pkg) []hit {
			var out []hit
			for _, h := range p.strings() {
				if h.what == "timers.target" {
					out = append(out, h)
				}
			}
			return out
		})
	},
	// The names live in system's table: no other package lists what
	// provision writes in its directories.
	"Which names does provision write in its directories?": func(t *testing.T, tr tree) {
		atLeast(t, "the layout", only(t, tr, "the layout built", []string{"internal/system"}, func(p *pkg) []hit { return p.composites("", "Layout") }))
		only(t, tr, "the layout's own tables read", []string{"internal/system"}, func(p *pkg) []hit {
			var out []hit
			for _, n := range []string{"ownFiles", "ownDirs", "credFiles", "genLinks"} {
				out = append(out, p.fields(n)...)
			}
			return out
		})
	},
	"Where is a sentence a person reads worded?": func(t *testing.T, tr tree) {
		dups := sentencesTwice(tr)
		for _, s := range sortedKeys(dups) {
			t.Errorf("%q is written in %d places: %s", s, len(dups[s]), strings.Join(dups[s], ", "))
		}
	},
	// The stages are written by their steps: only pipeline, bootstrap and
	// renew make a stage, and each command's tests hold its lists to
	// CheckOrder.
	"What does a run know, and which step wrote it?": func(t *testing.T, tr tree) {
		for _, st := range []string{"Judged", "Obtained"} {
			only(t, tr, "a "+st+" stage made", []string{"internal/bootstrap", "internal/renew"}, func(p *pkg) []hit { return p.composites(mod("internal/pipeline"), st) })
		}
		for _, dir := range []string{"internal/bootstrap", "internal/renew"} {
			if !strings.Contains(testSources(t, dir), "pipeline.CheckOrder(") {
				t.Errorf("%s has no test holding its list of steps to pipeline.CheckOrder", dir)
			}
		}
	},
	// One observation a run: the node is observed by pipeline.New in a
	// run, and elsewhere only by the commands that are not a run (verify's
	// ladder, status, renew --check) and the metrics when no run looked;
	// the renew record and the credentials are read by observe alone (and
	// the run's first look, and the metrics when no run looked).
	"What did a run see?": func(t *testing.T, tr tree) {
		atLeast(t, "the run's observation", only(t, tr, "an observation made", []string{"internal/pipeline", "internal/cli", "internal/status", "internal/renew"}, refsTo(mod("internal/observe"), "NewEnv")))
		for _, h := range pk(t, tr, "internal/pipeline").refs(mod("internal/observe"), "NewEnv") {
			// A dry run that stopped before assess has no verdict of the
			// run's: it judges the installed set offline, as status does.
			if h.fn != "New" && h.fn != "describeCreds" {
				t.Errorf("internal/pipeline observes the node outside New: %s", h)
			}
		}
		for _, h := range pk(t, tr, "internal/renew").refs(mod("internal/observe"), "NewEnv") {
			if h.fn != "Check" {
				t.Errorf("internal/renew observes the node outside --check: %s", h)
			}
		}
		only(t, tr, "the renew record read", []string{"internal/observe", "internal/pipeline", "internal/cli", "internal/state"}, refsTo(mod("internal/state"), "ReadRenewal"))
		only(t, tr, "the credentials loaded", []string{"internal/observe", "internal/credstore"}, refsTo(mod("internal/credstore"), "Load"))
	},
	"What should happen to the credentials?": func(t *testing.T, tr tree) {
		atLeast(t, "the verdict", only(t, tr, "a verdict taken", []string{"internal/observe"}, refsTo(mod("internal/lifecycle"), "Judge")))
		only(t, tr, "the verdict's input built", []string{"internal/observe"}, func(p *pkg) []hit { return p.composites(mod("internal/lifecycle"), "Input") })
	},
	// The schedule's inputs (renew.fraction, renew.splay) are read only to
	// hand them to the verdict, and the schedule is made only there.
	"When is the certificate due?": func(t *testing.T, tr tree) {
		for _, f := range []string{"Fraction", "Splay"} {
			atLeast(t, "renew."+strings.ToLower(f), only(t, tr, "renew."+strings.ToLower(f)+" read", []string{"internal/config", "internal/observe"}, func(p *pkg) []hit {
				var out []hit
				for _, h := range p.fields(f) {
					if strings.Contains(h.what, "Renew."+f) || strings.HasSuffix(h.what, "."+f) && strings.Contains(h.what, "Renew") {
						out = append(out, h)
					}
				}
				return out
			}))
		}
		only(t, tr, "a schedule made", []string{"internal/lifecycle"}, func(p *pkg) []hit { return p.composites(mod("internal/lifecycle"), "Schedule") })
		// (enroll reads the middle of the CA's own certificate's life to
		// verify it at a time it was valid: not a node certificate.)
		only(t, tr, "a node certificate's life measured", []string{"internal/lifecycle", "internal/enroll", "clientcert/"}, subtracts("NotBefore"))
	},
	// Found by signature in one function: no other package checks which
	// root signed a chain (enroll checks the CA's own answers).
	"Which root did the chain come from?": func(t *testing.T, tr tree) {
		only(t, tr, "a chain's root looked for", []string{"internal/lifecycle", "internal/enroll", "clientcert/", "nodekey/"}, callsOf("CheckSignatureFrom"))
		atLeast(t, "IssuingRoot", len(pk(t, tr, "internal/status").refs(mod("internal/lifecycle"), "IssuingRoot"))+len(pk(t, tr, "internal/metrics").refs(mod("internal/lifecycle"), "IssuingRoot")))
	},
	"Is the node clock off the CA's?": func(t *testing.T, tr tree) {
		only(t, tr, "a skew computed", []string{"internal/lifecycle"}, subtracts("ServerDate", "CADate", "DateAt"))
		atLeast(t, "Skew", only(t, tr, "", []string{"internal/lifecycle", "internal/pipeline", "internal/verify"}, callsOf("Skew")))
	},
	"Is `ca.pem` what the CA serves?": func(t *testing.T, tr tree) {
		for _, f := range []string{"BundleMissing", "BundleDropped", "BundleUseless"} {
			atLeast(t, f, only(t, tr, "the bundle judged", []string{"internal/lifecycle"}, assigns(f)))
		}
	},
	// The remedy of a credential reason is worded once: the re-enrollment
	// sentence exists only in lifecycle.
	"What do I tell the operator about a credential reason?": func(t *testing.T, tr tree) {
		atLeast(t, "the fresh-token remedy", only(t, tr, "a re-enrollment remedy worded", []string{"internal/lifecycle"}, literal("one-time token for this node_id to")))
	},
	// Only the classifier puts a failure on a layer of the exchange.
	"Which layer and owner does this wire event belong to?": func(t *testing.T, tr tree) {
		only(t, tr, "a wire event classified", []string{"internal/diag"}, findingsAt("TCP", "TLSServer", "TLSClientAuth", "Route", "Identity", "TasksWait"))
		atLeast(t, "the classifier", len(pk(t, tr, "internal/observe").refs(mod("internal/diag"), "Classify")))
	},
	// The backoff is computed in retry alone, and go-retryablehttp is
	// driven only through it and the CA client's checks.
	"Is this failure worth retrying?": func(t *testing.T, tr tree) {
		only(t, tr, "a backoff computed", []string{"internal/retry"}, callsOf("Delay"))
		for _, dir := range sortedKeys(tr) {
			if tr[dir].imports()["github.com/hashicorp/go-retryablehttp"] && dir != "internal/retry" && dir != "internal/enroll" {
				t.Errorf("%s drives go-retryablehttp itself: the loop is retry's", dir)
			}
		}
	},
	// Only pipeline switches current, and its comparison orders failures
	// on its own declared path, never by a list position.
	"Is a new set published without a passing proof?": func(t *testing.T, tr tree) {
		atLeast(t, "the publish", only(t, tr, "current switched", []string{"internal/pipeline", "internal/credstore"}, refsTo(mod("internal/credstore"), "Publish")))
		for _, h := range pk(t, tr, "internal/pipeline").calls("Index") {
			if !strings.HasPrefix(h.what, "slices.") {
				t.Errorf("internal/pipeline orders layers by a list position: %s", h)
			}
		}
	},
	// What an exchange cut says is read from the error in diag alone.
	"Does a failed exchange say anything against the credentials?": func(t *testing.T, tr tree) {
		for _, e := range []string{"ECONNRESET", "ECONNREFUSED", "EPIPE"} {
			only(t, tr, "an exchange's error read", []string{"internal/diag", "internal/system", "nodekey/"}, refsTo("syscall", e))
		}
		atLeast(t, "NoEvidence", len(pk(t, tr, "internal/pipeline").refs(mod("internal/diag"), "NoEvidence")))
	},
	// Only system knows the mark that makes a directory provision's.
	"Is this directory provision's own?": func(t *testing.T, tr tree) {
		atLeast(t, "the mark", only(t, tr, "the ownership mark named", []string{"internal/system"}, literal(".provision-dir")))
	},
	// Only system walks a path component by component.
	"May root follow this link, write through this path?": func(t *testing.T, tr tree) {
		for _, f := range []string{"Openat2", "Readlinkat", "Openat"} {
			only(t, tr, "a path walked", []string{"internal/system", "nodekey/"}, refsTo("golang.org/x/sys/unix", f))
		}
		only(t, tr, "a link resolved", []string{"internal/system"}, refsTo("path/filepath", "EvalSymlinks"))
	},
	// Only observe asks the key store about the TPM and a test signature.
	"Where is the node's key, and does it sign now?": func(t *testing.T, tr tree) {
		for _, f := range []string{"Probe", "CheckStorageKey", "CheckSigns", "CreateTPMKey"} {
			only(t, tr, "the key store asked", []string{"internal/observe", "nodekey/"}, refsTo(mod("nodekey"), f))
		}
	},
	"Is the installed TPM key lost (TPM cleared, another TPM)?": func(t *testing.T, tr tree) {
		atLeast(t, "KeyLost", only(t, tr, "a lost key recognised", []string{"internal/observe", "internal/diag", "nodekey/"}, refsTo(mod("nodekey"), "KeyLost")))
	},
	"Who may read the key, and is its mode right?": func(t *testing.T, tr tree) {
		for _, f := range []string{"GroupAccess", "RootOnly"} {
			only(t, tr, "the key's readers resolved", []string{"internal/observe", "internal/credstore"}, refsTo(mod("internal/credstore"), f))
		}
	},
	"Was this certificate revoked?": func(t *testing.T, tr tree) {
		atLeast(t, "CheckRevocation", only(t, tr, "a revocation asked", []string{"internal/pipeline", "internal/enroll"}, callsOf("CheckRevocation")))
	},
	"Does the hosts file carry the override?": func(t *testing.T, tr tree) {
		atLeast(t, "the managed block", only(t, tr, "the managed block parsed", []string{"internal/hosts"}, literal("provision managed block")))
	},
	// The exit codes are one table; its generated copies are tested in cli
	// (TestExitTables).
	"Which codes may a command exit with, and what do they mean?": func(t *testing.T, tr tree) {
		atLeast(t, "the table", only(t, tr, "an exit-code table", []string{"internal/cli"}, func(p *pkg) []hit { return p.composites("", "exitRow") }))
		if !strings.Contains(testSources(t, "internal/cli"), "func TestExitTables(") {
			t.Error("internal/cli has no TestExitTables holding the help, man pages and runbook to the table")
		}
	},
	// A dry run is the command's own steps: bootstrap's and renew's dry
	// runs go through pipeline.DryRun, take their command's assess step
	// (no assess of their own), and only cli starts one.
	"What would a run do?": func(t *testing.T, tr tree) {
		for _, dir := range []string{"internal/bootstrap", "internal/renew"} {
			p := pk(t, tr, dir)
			atLeast(t, dir+" DryRun through pipeline.DryRun", len(p.refs(mod("internal/pipeline"), "DryRun")))
			for _, h := range literal(`"assess"`)(p) {
				if !strings.Contains(h.where, "bootstrap.go") && !strings.Contains(h.where, "renew.go") {
					t.Errorf("%s names an assess step outside its list: a dry run takes AssessStep: %s", dir, h)
				}
			}
		}
		only(t, tr, "a dry run started", []string{"internal/cli", "internal/bootstrap", "internal/renew"}, refsTo(mod("internal/pipeline"), "DryRun"))
	},
	// config check reads the config as every command does, through
	// config.Load, and nothing but the config.
	"Is this config valid on its own?": func(t *testing.T, tr tree) {
		p := pk(t, tr, "internal/cli")
		atLeast(t, "config.Load in cli", len(p.refs(mod("internal/config"), "Load")))
		only(t, tr, "the config decoded", []string{"internal/config"}, refsTo("github.com/BurntSushi/toml", "NewDecoder"))
		seen := false
		for _, f := range p.files {
			if !strings.HasSuffix(f.name, "configcheck.go") {
				continue
			}
			seen = true
			for _, path := range f.imports {
				for _, bad := range []string{"internal/observe", "internal/credstore", "internal/state", "internal/pipeline", "internal/enroll", "net/http"} {
					if path == mod(bad) || path == bad {
						t.Errorf("%s imports %s: config check reads nothing but the config", f.name, path)
					}
				}
			}
		}
		if !seen {
			t.Error("internal/cli has no configcheck.go")
		}
	},
	// A layer's code is in cli's table alone, and only a main exits.
	"Which exit code does a layer get?": func(t *testing.T, tr tree) {
		for _, dir := range sortedKeys(tr) {
			p := tr[dir]
			if hits := p.refs("os", "Exit"); len(hits) > 0 && p.files[0].ast.Name.Name != "main" {
				for _, h := range hits {
					t.Errorf("%s exits the process: only a main does (cli.ExitCode decides the code): %s", dir, h)
				}
			}
		}
		atLeast(t, "ExitCode", len(pk(t, tr, "internal/cli").funcCalls("ExitCode")))
	},
}

// testSources is the text of the test files of a package.
func testSources(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	ents, err := readDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e, "_test.go") {
			b.WriteString(readFile(t, dir+"/"+e))
		}
	}
	return b.String()
}

// sentencesTwice finds the sentences (string literals of 40 characters or
// more with a space) that stand in more than one place of the production
// source: each wording is written once and used where it is needed.
func sentencesTwice(tr tree) map[string][]string {
	seen := map[string][]string{}
	for _, dir := range sortedKeys(tr) {
		for _, h := range tr[dir].strings() {
			if s := strings.TrimSpace(h.what); len(s) >= 40 && strings.Contains(s, " ") {
				seen[s] = append(seen[s], h.where)
			}
		}
	}
	for s, at := range seen {
		if len(at) < 2 {
			delete(seen, s)
		}
	}
	return seen
}
