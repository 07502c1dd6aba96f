package cli

import (
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/testenv"
)

// TestManPagesMatchHelp renders every generated man page with groff and
// checks that each line of the help the CLI prints for it is in the page:
// the pages are generated from the help text, and this is what says so.
func TestManPagesMatchHelp(t *testing.T) {
	pages := ManPages("1.2.3", "2026-03-01")
	if len(pages) != len(commands())+1 {
		t.Fatalf("%d man pages for %d commands + provision(8)", len(pages), len(commands()))
	}
	for _, p := range pages {
		t.Run(p.File, func(t *testing.T) {
			args := []string{"--help"}
			if p.Name != "provision" {
				args = []string{strings.TrimPrefix(p.Name, "provision-"), "--help"}
			}
			help, _, code := run(args...)
			if code != ExitOK || help == "" {
				t.Fatalf("provision %v: exit %d", args, code)
			}
			man := testenv.RenderMan(t, p.Roff)
			if missing := testenv.MissingHelpLines(man, help); len(missing) > 0 {
				t.Errorf("man page %s lacks %d lines of 'provision %s':\n%s\n--- rendered ---\n%s", p.File, len(missing), strings.Join(args, " "), strings.Join(missing, "\n"), man)
			}
			if !strings.Contains(string(p.Roff), ".SH NAME\n"+roffEscape(p.Name)+` \- `) {
				t.Errorf("%s: no NAME line for %s", p.File, p.Name)
			}
		})
	}
}

// TestManCheckCatchesDrift proves the check above can fail: a help line the
// page does not have, or a changed word, is reported.
func TestManCheckCatchesDrift(t *testing.T) {
	help, _, _ := run("verify", "--help")
	man := testenv.RenderMan(t, ManPages("1", "2026-03-01")[2].Roff)
	if m := testenv.MissingHelpLines(man, help); len(m) != 0 {
		t.Fatalf("provision-verify.1 is not the third page: %v", m)
	}
	for _, drifted := range []string{
		help + "  -new-flag string\n",
		strings.Replace(help, "in order, and names the", "in order, and reports the", 1),
		strings.Replace(help, `(default "info")`, `(default "warn")`, 1),
	} {
		if m := testenv.MissingHelpLines(man, drifted); len(m) != 1 {
			t.Errorf("a drifted help gave %d missing lines, want 1: %q", len(m), m)
		}
	}
}

func TestHelpCommand(t *testing.T) {
	for _, c := range commands() {
		want, _, _ := run(c.name, "--help")
		got, errs, code := run("help", c.name)
		if code != ExitOK || got != want || errs != "" {
			t.Errorf("provision help %s: exit %d, stderr %q, stdout differs from --help: %v", c.name, code, errs, got != want)
		}
	}
	root, _, _ := run("--help")
	for _, args := range [][]string{{"help"}, {"help", "help"}} {
		if got, _, code := run(args...); code != ExitOK || got != root {
			t.Errorf("provision %v: exit %d, want the top-level help", args, code)
		}
	}
	if got, _, code := run("help", "hosts", "apply"); code != ExitOK || !strings.HasPrefix(got, "Usage: provision hosts apply|show|check|remove") {
		t.Errorf("provision help hosts apply: exit %d\n%s", code, got)
	}
	_, errs, code := run("help", "verfy")
	if code != ExitUsage || !strings.Contains(errs, `unknown command "verfy" (did you mean "verify"?)`) {
		t.Errorf("provision help verfy: exit %d, stderr %s", code, errs)
	}
	if _, errs, code := run("help", "verify", "bootstrap"); code != ExitUsage || !strings.Contains(errs, "help takes one command") {
		t.Errorf("provision help verify bootstrap: exit %d, stderr %s", code, errs)
	}
}

// TestEnumeratedFlags: --format, --log-format and --log-level accept
// exactly their documented values; anything else is a usage error naming
// them, whatever the command.
func TestEnumeratedFlags(t *testing.T) {
	for _, c := range commands() {
		f := newFlags(c, &runEnv{})
		for name, values := range flagValues {
			if f.fs.Lookup(name) == nil {
				continue
			}
			for _, bad := range []string{"loud", "INFO", "", "json "} {
				if name != "log-level" && bad == "INFO" {
					bad = "JSON"
				}
				args := []string{c.name}
				if subs := subcommands[c.name]; subs != nil {
					args = append(args, subs[len(subs)-1]) // hosts remove, config check
				}
				_, errs, code := run(append(args, "--"+name+"="+bad)...)
				want := "--" + name + " must be " + alternatives(values) + ", got " + strconvQuote(bad)
				if code != ExitUsage || !strings.Contains(errs, want) {
					t.Errorf("provision %s --%s=%q: exit %d, stderr %q; want 2 and %q", c.name, name, bad, code, errs, want)
				}
			}
		}
	}
	if alternatives(flagValues["log-level"]) != "debug, info, warn or error" {
		t.Errorf("log levels: %s", alternatives(flagValues["log-level"]))
	}
	for _, lvl := range flagValues["log-level"] {
		if _, errs, code := run("version", "--log-level", lvl); code != ExitOK {
			t.Errorf("--log-level %s: exit %d %s", lvl, code, errs)
		}
	}
	// A usage error asked for in JSON is one JSON report.
	out, _, code := run("version", "--format", "json", "--log-level", "verbose")
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil || code != ExitUsage || m["failed_layer"] != "usage" {
		t.Errorf("exit %d, report %s (%v)", code, out, err)
	}
}

func strconvQuote(s string) string { b, _ := json.Marshal(s); return string(b) }

func TestVersionJSON(t *testing.T) {
	out, errs, code := run("version", "--format", "json")
	if code != ExitOK || errs != "" {
		t.Fatalf("exit %d, stderr %s", code, errs)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("not one JSON object: %v\n%s", err, out)
	}
	if doc["schema_version"] != float64(SchemaVersion) {
		t.Errorf("schema_version %v, want %d", doc["schema_version"], SchemaVersion)
	}
	delete(doc, "schema_version")
	m := map[string]string{}
	for k, v := range doc {
		if m[k], _ = v.(string); m[k] == "" {
			t.Errorf("%s is %v, want a non-empty string", k, v)
		}
	}
	keys := []string{"commit", "go_version", "step_ca_client_module", "step_ca_client_version", "version"}
	var got []string
	for k, v := range m {
		got = append(got, k)
		if v == "" {
			t.Errorf("%s is empty", k)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, keys) {
		t.Errorf("keys %v, want %v", got, keys)
	}
	if !strings.HasPrefix(m["go_version"], "go1.") {
		t.Errorf("go_version %q", m["go_version"])
	}
	// A test binary records no dependencies; the installed binary's answer
	// is checked against go.mod by the packaging test. Here: what a real
	// build records is what is reported.
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}},
		Deps: []*debug.Module{{Path: "go.step.sm/crypto", Version: "v0.77.1"}, {Path: caClientModule, Version: "v0.30.2"}}}
	if got, want := buildInfoFrom(bi, "1.2.3", ""), (BuildInfo{SchemaVersion, "1.2.3", "abc123-dirty", "go1.26.8", caClientModule, "v0.30.2"}); got != want {
		t.Errorf("buildInfoFrom = %+v, want %+v", got, want)
	}
	bi.Deps[1].Replace = &debug.Module{Path: "../certificates", Version: "v0.30.3-fork"}
	if got := buildInfoFrom(bi, "1.2.3", "fedcba"); got.Commit != "fedcba" || got.CAClientVersion != "v0.30.3-fork" {
		t.Errorf("ldflags commit and a replaced CA client: %+v", got)
	}
	if got := buildInfoFrom(nil, "dev", ""); got.Commit != "unknown" || got.CAClientVersion != "unknown" {
		t.Errorf("no build info: %+v", got)
	}
	text, _, _ := run("version")
	if !strings.HasPrefix(text, "provision "+Version()+"\n") || !strings.Contains(text, "step-ca client: "+caClientModule+" "+m["step_ca_client_version"]) {
		t.Errorf("text version:\n%s", text)
	}
}

// TestEveryFlagCompletes: a flag added to a command must say what it takes
// (a value set, a file or a directory, or none: a switch), or the
// completions cannot offer it.
func TestEveryFlagCompletes(t *testing.T) {
	for _, c := range commands() {
		for _, f := range completionFlags(c) {
			if f.values == nil && f.path == "" && !f.boolean {
				t.Errorf("provision %s --%s is in neither flagValues nor flagPaths", c.name, f.name)
			}
		}
	}
}

// complete runs the generated bash completion for a command line (the word
// under the cursor last) and returns the candidates.
func complete(t *testing.T, bash, script string, words ...string) []string {
	t.Helper()
	var q []string
	for _, w := range words {
		q = append(q, "'"+w+"'")
	}
	prog := `source "$1"; COMP_WORDS=(` + strings.Join(q, " ") + `); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _provision; printf '%s\n' "${COMPREPLY[@]}"`
	cmd := exec.Command(bash, "--norc", "-c", prog, "bash", script)
	cmd.Dir = t.TempDir()
	for _, f := range []string{"node.toml", "token.jwt"} {
		os.WriteFile(filepath.Join(cmd.Dir, f), nil, 0o600)
	}
	os.Mkdir(filepath.Join(cmd.Dir, "mnt"), 0o755)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash completion %v: %v\n%s", words, err, out)
	}
	return strings.Fields(string(out))
}

func TestBashCompletion(t *testing.T) {
	bash := testenv.RequireProgram(t, "bash", "bash")
	script := filepath.Join(t.TempDir(), "provision.bash")
	if err := os.WriteFile(script, BashCompletion(), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		words []string
		want  string
	}{
		{[]string{"provision", ""}, "bootstrap verify renew status revoke hosts config userdata version help --help --version"},
		{[]string{"provision", "config", ""}, "check --help"},
		{[]string{"provision", "revoke", "--y"}, "--yes"},
		{[]string{"provision", "bootstrap", "--d"}, "--dry-run"},
		{[]string{"provision", "ver"}, "verify version"},
		{[]string{"provision", "hosts", ""}, "apply show check remove --help"},
		{[]string{"provision", "renew", "--f"}, "--force --format"},
		{[]string{"provision", "verify", "--format", ""}, "text json"},
		{[]string{"provision", "verify", "--format=j"}, "json"},
		{[]string{"provision", "bootstrap", "--log-level", ""}, "debug info warn error"},
		{[]string{"provision", "hosts", "apply", "--"}, "--config --root --log-format --log-level --quiet --help"},
		{[]string{"provision", "verify", "--"}, "--config --root --format --log-format --log-level --quiet --help"},
		{[]string{"provision", "status", "-q"}, "-q"},
		{[]string{"provision", "status", "--q"}, "--quiet"},
		{[]string{"provision", "userdata", "--to"}, "--token-file"},
		{[]string{"provision", "userdata", "--token-file", "tok"}, "token.jwt"},
		{[]string{"provision", "bootstrap", "--root", ""}, "mnt"},
		{[]string{"provision", "help", "b"}, "bootstrap"},
	}
	for _, c := range cases {
		got := complete(t, bash, script, c.words...)
		want := strings.Fields(c.want)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("complete %q: got %q, want %q", c.words, got, want)
		}
	}
}

func TestZshCompletion(t *testing.T) {
	zsh := testenv.RequireProgram(t, "zsh", "zsh")
	f := filepath.Join(t.TempDir(), "_provision")
	script := ZshCompletion()
	if err := os.WriteFile(f, script, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(zsh, "-n", f).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n _provision: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(script), "#compdef provision\n") {
		t.Errorf("no #compdef line")
	}
	// Every command and each of its flags, with its values, is offered.
	for _, c := range commands() {
		if !strings.Contains(string(script), "\t\t'"+c.name+":") || !strings.Contains(string(script), "\t\t"+c.name+")\n") {
			t.Errorf("zsh completion lacks command %s", c.name)
		}
		for _, fl := range completionFlags(c) {
			spec := "'--" + fl.name + "=["
			switch short, ok := shortFlags[fl.name]; {
			case ok:
				spec = "{-" + short + ",--" + fl.name + "}'["
			case fl.boolean:
				spec = "'--" + fl.name + "["
			}
			if !strings.Contains(string(script), spec) {
				t.Errorf("zsh completion lacks %s --%s", c.name, fl.name)
			}
			if fl.values != nil && !strings.Contains(string(script), ":"+fl.name+":("+strings.Join(fl.values, " ")+")'") {
				t.Errorf("zsh completion lacks the values of --%s", fl.name)
			}
		}
	}
}

// TestHelpShowsTwoDashes: every flag in every help is shown as --name, as
// the README, the man pages and the completions write it; no line of a
// help names a flag with one dash.
func TestHelpShowsTwoDashes(t *testing.T) {
	oneDash := regexp.MustCompile(`(^|\s)-[a-z][a-z-]+`)
	for _, c := range append([]*command{nil}, commands()...) {
		args := []string{"--help"}
		if c != nil {
			args = []string{c.name, "--help"}
		}
		help, _, _ := run(args...)
		for _, l := range strings.Split(help, "\n") {
			if m := oneDash.FindString(l); m != "" {
				t.Errorf("provision %s: %q names a flag with one dash (%q)", strings.Join(args, " "), l, m)
			}
		}
		if c == nil {
			continue
		}
		for _, fl := range completionFlags(c) {
			line := "\n  --" + fl.name
			if short, ok := shortFlags[fl.name]; ok {
				line = "\n  -" + short + ", --" + fl.name
			}
			if !strings.Contains(help, line) {
				t.Errorf("provision %s --help lacks the line of --%s", c.name, fl.name)
			}
		}
	}
	var b strings.Builder
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Bool("check", false, "only check")
	fs.String("config", "/etc/x.toml", "config `file`")
	printFlags(&b, fs)
	if want := "  --check\n    \tonly check\n  --config file\n    \tconfig file (default \"/etc/x.toml\")\n"; b.String() != want {
		t.Errorf("printFlags:\n%s\nwant:\n%s", b.String(), want)
	}
}

// renderedLines renders a page and returns its lines, spaces collapsed.
func renderedLines(t *testing.T, roff []byte) []string {
	var out []string
	for _, l := range strings.Split(testenv.RenderMan(t, roff), "\n") {
		if l = strings.Join(strings.Fields(l), " "); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// TestManPageLists: a list of the help (renew's exit codes, its own
// --check ones among them) is a list in the man page, one item a line, not
// run together into the paragraph around it.
func TestManPageLists(t *testing.T) {
	var renew ManPage
	for _, p := range ManPages("1", "2026-03-01") {
		if p.Name == "provision-renew" {
			renew = p
		}
	}
	lines := renderedLines(t, renew.Roff)
	for _, item := range []string{"30 --check not due", "31 --check cannot renew: re-enrollment with a fresh one-time token is needed", "22 hook the credentials changed, renew.post_hook failed (it stays pending)"} {
		if !slices.Contains(lines, item) {
			t.Errorf("provision-renew.8 has no line that is the item %q:\n%s", item, strings.Join(lines, "\n"))
		}
	}
	// The check can fail: the same help with the list flattened into prose.
	flat := manPage(manMeta{name: "x", section: 8}, "Usage: provision x\n\n  --check   exit: 0 due (or --force) 30 not due\n")
	if slices.Contains(renderedLines(t, flat), "30 not due") {
		t.Error("a list run into its paragraph passed as a list")
	}
}

// TestConfigManPage: provision.toml(5) shows every key of the key table with
// its kind, default or requiredness, range and the whole of its text; a key
// the table gains or a changed word is caught.
func TestConfigManPage(t *testing.T) {
	page := ConfigManPage("1.2.3", "2026-03-01")
	if page.File != "provision.toml.5" || page.Section != 5 || !strings.Contains(string(page.Roff), ".TH PROVISION.TOML 5 ") {
		t.Fatalf("page %s section %d", page.File, page.Section)
	}
	text := strings.Join(renderedLines(t, page.Roff), " ")
	missing := func(text string) []string {
		var m []string
		for _, k := range config.Keys {
			for _, want := range []string{k.DocName(), "(" + KeyFacts(k) + ")", strings.Join(strings.Fields(PlainInline(k.Doc)), " ")} {
				if !strings.Contains(text, want) {
					m = append(m, k.Name+": "+want)
				}
			}
		}
		return m
	}
	if m := missing(text); len(m) > 0 {
		t.Errorf("provision.toml.5 lacks:\n%s\n--- rendered ---\n%s", strings.Join(m, "\n"), text)
	}
	for _, want := range []string{"SYNOPSIS /etc/provision/provision.toml", "FILES", "EXAMPLE", `url = "https://node-api.cp.internal:8443"`, "SEE ALSO provision(8)"} {
		if !strings.Contains(text, want) {
			t.Errorf("provision.toml.5 lacks %q", want)
		}
	}
	if m := missing(strings.Replace(text, "keep it on tmpfs", "keep it on disk", 1)); len(m) != 1 {
		t.Errorf("a changed word gave %d missing entries, want 1: %v", len(m), m)
	}
}

// TestMinimalConfigParses: the man page's EXAMPLE, built from the key
// table's required keys, is a config provision accepts.
func TestMinimalConfigParses(t *testing.T) {
	src := strings.Replace(MinimalConfig(), "<64 hex digits>", strings.Repeat("ab", 32), 1)
	if _, err := config.Parse("example", []byte(src)); err != nil {
		t.Errorf("the example config is refused: %v\n%s", err, src)
	}
}

// TestFilesSection: provision(8) has a FILES section naming what provision
// reads and writes at the default paths.
func TestFilesSection(t *testing.T) {
	text := strings.Join(renderedLines(t, ManPages("1", "2026-03-01")[0].Roff), "\n")
	i := strings.Index(text, "\nFILES\n")
	if i < 0 {
		t.Fatalf("provision.8 has no FILES section:\n%s", text)
	}
	for _, p := range []string{"/etc/provision/provision.toml", "/run/provision/token", "/etc/hosts", "/var/lib/provision/pki/key.pem, cert.pem, ca.pem",
		"/var/lib/provision/receipt.json", "/var/lib/provision/renew.json", "/var/lib/provision/done/<machine-id>", "/var/lib/provision/tasks/<id>.json",
		"/var/lib/provision/.lock", "/var/lib/provision/revoke.json", "/var/lib/prometheus/node-exporter/provision_<command>.prom", "/usr/share/doc/provision/",
		"/usr/share/provision/schemas/"} {
		if !strings.Contains(text[i:], "\n"+p+"\n") {
			t.Errorf("FILES lacks %s:\n%s", p, text[i:])
		}
	}
}
