package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/report"
)

func render(t *testing.T, format string, r *report.Report) (string, int) {
	t.Helper()
	var out bytes.Buffer
	env := &runEnv{stdout: &out, stderr: io.Discard}
	f := newFlags(verifyCmd, env)
	f.format = format
	code := printReport(env, f, r)
	return out.String(), code
}

func passingReport() *report.Report {
	return report.New("verify", "gpu-0042", []report.Result{
		{Name: "config", Layer: diag.Config, Owner: diag.Node, Status: report.Pass, Message: "config is valid", DurationMS: 0},
		{Name: "hosts-persist", Layer: diag.Hosts, Owner: diag.Node, Status: report.Warn, Message: "cloud-init's manage_etc_hosts is on",
			Remedy: "set manage_etc_hosts: false", DurationMS: 1},
		{Name: "tasks-wait", Layer: diag.TasksWait, Owner: diag.API, Status: report.Pass, Message: "tasks/wait answered 204 in 3ms", DurationMS: 3},
	}, 12*time.Millisecond)
}

func failingReport() *report.Report {
	return report.New("verify", "gpu-0042", []report.Result{
		{Name: "config", Layer: diag.Config, Owner: diag.Node, Status: report.Pass, Message: "config is valid"},
		{Name: "tcp", Layer: diag.TCP, Owner: diag.Network, Status: report.Pass, Message: "connected to node-api.cp.internal (127.0.0.1:8443)", DurationMS: 2},
		{Name: "tls-client-auth", Layer: diag.TLSClientAuth, Owner: diag.Node, Status: report.Fail,
			Message: "the ingress rejected the node's client certificate on the first read after the handshake (TLS 1.3): remote error: tls: unknown certificate authority.",
			Remedy:  "re-enroll the node: its certificate was issued by a CA the control plane no longer uses (provision bootstrap with a fresh token)",
			Evidence: map[string]string{"tls_version": "TLS 1.3", "error": "remote error: tls: unknown certificate authority",
				"body": "line one\nline two", "server_subject": "CN=node-api.cp.internal"},
			DurationMS: 4},
		{Name: "route", Layer: diag.Route, Owner: diag.Ingress, Status: report.Skip, Message: "skipped: depends on tls-client-auth, which did not pass"},
	}, 20*time.Millisecond)
}

func TestRenderTextPassing(t *testing.T) {
	got, code := render(t, "text", passingReport())
	want := `[PASS] config         config is valid
[WARN] hosts-persist  cloud-init's manage_etc_hosts is on
[PASS] tasks-wait     tasks/wait answered 204 in 3ms
  warning (hosts-persist): set manage_etc_hosts: false

provision verify: healthy: the node polls tasks/wait through the ingress with its own certificate
`
	if got != want {
		t.Errorf("text report\n--- got\n%s--- want\n%s", got, want)
	}
	if code != 0 {
		t.Errorf("exit %d, want 0", code)
	}
}

func TestRenderTextFailing(t *testing.T) {
	got, code := render(t, "text", failingReport())
	want := `[PASS] config           config is valid
[PASS] tcp              connected to node-api.cp.internal (127.0.0.1:8443)
[FAIL] tls-client-auth  the ingress rejected the node's client certificate on the first read after the handshake (TLS 1.3): remote error: tls: unknown certificate authority.
[SKIP] route            skipped: depends on tls-client-auth, which did not pass

Root cause: layer tls-client-auth, owner node (check tls-client-auth)
  what:   the ingress rejected the node's client certificate on the first read after the handshake (TLS 1.3): remote error: tls: unknown certificate authority.
  fix:    re-enroll the node: its certificate was issued by a CA the control plane no longer uses (provision bootstrap with a fresh token)
  evidence:
    body: line one line two
    error: remote error: tls: unknown certificate authority
    server_subject: CN=node-api.cp.internal
    tls_version: TLS 1.3

provision verify: FAILED at layer tls-client-auth (owner: node): the ingress rejected the node's client certificate on the first read after the handshake (TLS 1.3): remote error: tls: unknown certificate authority. Next: re-enroll the node: its certificate was issued by a CA the control plane no longer uses (provision bootstrap with a fresh token) (exit 16)
`
	if got != want {
		t.Errorf("text report\n--- got\n%s--- want\n%s", got, want)
	}
	if code != 16 {
		t.Errorf("exit %d, want 16", code)
	}
}

func TestRenderTextFailingWithoutRemedy(t *testing.T) {
	r := report.Failed("bootstrap", "gpu-1", "lock", &diag.Finding{Layer: diag.State, Owner: diag.Node, Summary: "cannot lock"})
	got, code := render(t, "text", r)
	want := `[FAIL] lock  cannot lock

Root cause: layer state, owner node (check lock)
  what:   cannot lock

provision bootstrap: FAILED at layer state (owner: node): cannot lock. Next: see the checks above (exit 21)
`
	if got != want || code != 21 {
		t.Errorf("exit %d, text\n--- got\n%s--- want\n%s", code, got, want)
	}
}

func TestRenderJSONFailing(t *testing.T) {
	got, code := render(t, "json", failingReport())
	want := `{
  "schema_version": 1,
  "ok": false,
  "command": "verify",
  "node_id": "gpu-0042",
  "failed_layer": "tls-client-auth",
  "owner": "node",
  "failed_check": "tls-client-auth",
  "summary": "the ingress rejected the node's client certificate on the first read after the handshake (TLS 1.3): remote error: tls: unknown certificate authority.",
  "remedy": "re-enroll the node: its certificate was issued by a CA the control plane no longer uses (provision bootstrap with a fresh token)",
  "transient": false,
  "checks": [
    {
      "name": "config",
      "layer": "config",
      "owner": "node",
      "status": "pass",
      "message": "config is valid",
      "duration_ms": 0
    },
    {
      "name": "tcp",
      "layer": "tcp",
      "owner": "network",
      "status": "pass",
      "message": "connected to node-api.cp.internal (127.0.0.1:8443)",
      "duration_ms": 2
    },
    {
      "name": "tls-client-auth",
      "layer": "tls-client-auth",
      "owner": "node",
      "status": "fail",
      "message": "the ingress rejected the node's client certificate on the first read after the handshake (TLS 1.3): remote error: tls: unknown certificate authority.",
      "remedy": "re-enroll the node: its certificate was issued by a CA the control plane no longer uses (provision bootstrap with a fresh token)",
      "evidence": {
        "body": "line one\nline two",
        "error": "remote error: tls: unknown certificate authority",
        "server_subject": "CN=node-api.cp.internal",
        "tls_version": "TLS 1.3"
      },
      "duration_ms": 4
    },
    {
      "name": "route",
      "layer": "route",
      "owner": "ingress",
      "status": "skip",
      "message": "skipped: depends on tls-client-auth, which did not pass",
      "duration_ms": 0
    }
  ],
  "duration_ms": 20,
  "exit_code": 16
}
`
	// The golden is indented to be read; the report is the same document
	// on one line (one journal entry under systemd).
	var compact bytes.Buffer
	if err := json.Compact(&compact, []byte(want)); err != nil {
		t.Fatal(err)
	}
	want = compact.String() + "\n"
	if strings.Count(got, "\n") != 1 {
		t.Errorf("the JSON report spans %d lines, want one", strings.Count(got, "\n"))
	}
	if got != want {
		t.Errorf("JSON report\n--- got\n%s--- want\n%s", got, want)
	}
	if code != 16 {
		t.Errorf("exit %d, want 16", code)
	}
}

func TestRenderJSONPassingAndTransient(t *testing.T) {
	got, code := render(t, "json", passingReport())
	var m map[string]any
	if err := json.Unmarshal([]byte(got), &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, got)
	}
	// A passing report carries every documented field too, the failure
	// fields empty: a script reads .transient without guessing.
	wantAllFields(t, m, got)
	for _, k := range []string{"failed_layer", "owner", "failed_check", "remedy"} {
		if m[k] != "" {
			t.Errorf("passing JSON has %s %v", k, m[k])
		}
	}
	if m["transient"] != false {
		t.Errorf("passing JSON has transient %v", m["transient"])
	}
	if m["ok"] != true || m["exit_code"] != float64(0) || code != 0 {
		t.Errorf("ok %v exit_code %v code %d", m["ok"], m["exit_code"], code)
	}

	r := report.Failed("verify", "gpu-1", "tasks-wait", &diag.Finding{Layer: diag.TasksWait, Owner: diag.Ingress, Transient: true, Summary: "502"})
	got, code = render(t, "json", r)
	m = nil
	if err := json.Unmarshal([]byte(got), &m); err != nil {
		t.Fatal(err)
	}
	if m["transient"] != true || m["exit_code"] != float64(19) || code != 19 || m["owner"] != "ingress" {
		t.Errorf("transient report: %s", got)
	}
	r = report.Failed("verify", "gpu-1", "tasks-wait", &diag.Finding{Layer: diag.TasksWait, Owner: diag.API, Summary: "500"})
	got, _ = render(t, "json", r)
	m = nil
	if err := json.Unmarshal([]byte(got), &m); err != nil {
		t.Fatal(err)
	}
	wantAllFields(t, m, got)
	if m["transient"] != false {
		t.Errorf("a permanent failure must say transient false: %s", got)
	}
}

// documentedFields are the README's --format json fields.
var documentedFields = []string{"schema_version", "ok", "command", "node_id", "failed_layer", "owner", "failed_check", "summary", "remedy", "transient", "exit_code", "checks"}

func wantAllFields(t *testing.T, m map[string]any, doc string) {
	t.Helper()
	for _, k := range documentedFields {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON report lacks %q:\n%s", k, doc)
		}
	}
	if _, ok := m["checks"].([]any); !ok {
		t.Errorf("checks is not an array: %v", m["checks"])
	}
}

// contractExit is the exit-code table of the product contract, written out
// independently of the code under test.
var contractExit = map[diag.Layer]int{
	diag.Config: 3, diag.Hosts: 10, diag.Clock: 11, diag.Credentials: 12, diag.CA: 13, diag.TCP: 14,
	diag.TLSServer: 15, diag.TLSClientAuth: 16, diag.Route: 17, diag.Identity: 18, diag.TasksWait: 19,
	diag.Enroll: 20, diag.State: 21, diag.Hook: 22, diag.Internal: 1,
}

func TestExitCodePerLayer(t *testing.T) {
	if len(contractExit) != len(diag.Layers) {
		t.Fatalf("diag.Layers has %d layers, the contract %d: a layer was added without an exit code", len(diag.Layers), len(contractExit))
	}
	for _, l := range diag.Layers {
		t.Run(string(l), func(t *testing.T) {
			want, ok := contractExit[l]
			if !ok {
				t.Fatalf("layer %s has no exit code in the contract", l)
			}
			if got := ExitCode(l); got != want {
				t.Errorf("ExitCode(%s) = %d, want %d", l, got, want)
			}
			r := report.Failed("verify", "n", "x", &diag.Finding{Layer: l, Owner: diag.Node, Summary: "s"})
			for _, format := range []string{"text", "json"} {
				out, code := render(t, format, r)
				if code != want {
					t.Errorf("%s: printReport exit %d, want %d", format, code, want)
				}
				if format == "text" && !strings.HasSuffix(out, fmt.Sprintf("(exit %d)\n", want)) {
					t.Errorf("text's last line does not name exit %d:\n%s", want, out)
				}
				if format == "json" && !strings.Contains(out, fmt.Sprintf("\"exit_code\":%d}\n", want)) {
					t.Errorf("JSON lacks exit_code %d:\n%s", want, out)
				}
			}
			// The help's table documents the same number for the layer.
			re := regexp.MustCompile(fmt.Sprintf(`(?m)^  %d +%s\b`, want, regexp.QuoteMeta(string(l))))
			if !re.MatchString(rootExitHelp()) {
				t.Errorf("exit-code help has no line for %d %s:\n%s", want, l, rootExitHelp())
			}
		})
	}
	if got := ExitCode("no-such-layer"); got != ExitInternal {
		t.Errorf("unknown layer exit %d, want %d", got, ExitInternal)
	}
}

func run(args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = Run(context.Background(), args, &o, &e)
	return o.String(), e.String(), code
}

func TestUsageErrorsExit2(t *testing.T) {
	root := t.TempDir()
	tests := []struct {
		args       []string
		wantStderr string
	}{
		{nil, "missing command"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"verify", "--bogus"}, "flag provided but not defined: --bogus"},
		{[]string{"verify", "-z"}, "flag provided but not defined: -z\n"},
		{[]string{"renew", "--check=maybe"}, `invalid boolean value "maybe" for --check`},
		{[]string{"verify", "--config"}, "flag needs an argument: --config"},
		{[]string{"verify", "--format", "yaml"}, `--format must be text or json, got "yaml"`},
		{[]string{"bootstrap", "--log-format", "xml"}, `--log-format must be text or json`},
		{[]string{"verify", "--root", root, "extra"}, `unexpected argument "extra"`},
		{[]string{"verify", "--root", root + "/does-not-exist"}, "--root"},
		{[]string{"hosts"}, "hosts needs a subcommand"},
		{[]string{"hosts", "frob"}, `unknown hosts subcommand "frob"`},
		{[]string{"hosts", "apply", "--format", "json"}, "flag provided but not defined: --format"},
		{[]string{"version", "now"}, `unexpected argument "now"`},
		{[]string{"userdata"}, "userdata needs --token-file"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, errs, code := run(tt.args...)
			if code != ExitUsage {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, ExitUsage, out, errs)
			}
			if !strings.Contains(errs, tt.wantStderr) {
				t.Errorf("stderr lacks %q:\n%s", tt.wantStderr, errs)
			}
		})
	}
}

// TestNoFormatNoReport: a command without --format (hosts, userdata) asked
// for JSON refuses with a usage error on stderr and prints nothing on
// stdout: no JSON report from a command that has no JSON (issue 25). A
// command with --format gives its usage errors as a JSON report.
func TestNoFormatNoReport(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		report bool
		hint   string
	}{
		{[]string{"hosts", "show", "--format", "json"}, false, "provision hosts check: 0 only when the override is right"},
		{[]string{"hosts", "check", "--format=json"}, false, "prints text only and has no --format"},
		{[]string{"userdata", "--format", "json"}, false, "provision userdata prints text only"},
		{[]string{"verify", "--format", "json", "--bogus"}, true, ""},
	} {
		out, errs, code := run(tc.args...)
		if code != ExitUsage || !strings.Contains(errs, tc.hint) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errs, tc.hint)
		}
		if got := out != ""; got != tc.report {
			t.Errorf("%v: stdout %q; want a report: %v", tc.args, out, tc.report)
		}
	}
}

func TestHelpEveryCommand(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"help"}, {"-h"},
		{"bootstrap", "--help"}, {"verify", "--help"}, {"verify", "-h"}, {"hosts", "--help"}, {"hosts", "apply", "--help"},
		{"hosts", "show", "-h"}, {"hosts", "remove", "--help"}, {"version", "--help"}, {"userdata", "--help"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			out, errs, code := run(args...)
			if code != ExitOK {
				t.Errorf("exit %d, want 0; stderr %s", code, errs)
			}
			if !strings.Contains(out, "Examples:\n  provision ") {
				t.Errorf("help has no examples:\n%s", out)
			}
			want := rootExitHelp()
			if c := lookup(args[0]); c != nil {
				want = exitHelp(c)
			}
			if !strings.Contains(out, want) {
				t.Errorf("help lacks its exit-code table:\n%s", out)
			}
			if errs != "" {
				t.Errorf("help wrote to stderr: %s", errs)
			}
		})
	}
	// The root help lists every command.
	out, _, _ := run("--help")
	for _, c := range commands() {
		if !strings.Contains(out, "  "+c.name+" ") {
			t.Errorf("root help does not list %s", c.name)
		}
	}
}

func TestUnknownCommandSuggests(t *testing.T) {
	tests := []struct{ typed, want string }{
		{"verfy", "verify"}, {"veriy", "verify"}, {"bootsrap", "bootstrap"}, {"boot", "bootstrap"},
		{"host", "hosts"}, {"versoin", "version"}, {"userdat", "userdata"},
	}
	for _, tt := range tests {
		_, errs, code := run(tt.typed)
		if code != ExitUsage {
			t.Errorf("%s: exit %d, want 2", tt.typed, code)
		}
		if !strings.Contains(errs, fmt.Sprintf("(did you mean %q?)", tt.want)) {
			t.Errorf("%s: no suggestion of %s:\n%s", tt.typed, tt.want, errs)
		}
	}
	if _, errs, _ := run("kubectl"); strings.Contains(errs, "did you mean") {
		t.Errorf("a far-off command must not get a suggestion: %s", errs)
	}
}

// TestVerifyMissingConfig goes through Run: a missing config is the config
// layer (exit 3), reported in both formats.
func TestVerifyMissingConfig(t *testing.T) {
	root := t.TempDir()
	out, _, code := run("verify", "--root", root)
	if code != ExitConfig {
		t.Errorf("exit %d, want 3\n%s", code, out)
	}
	if !strings.HasPrefix(out, "[FAIL] config  ") || !strings.Contains(out, "Root cause: layer config, owner node (check config)") {
		t.Errorf("text:\n%s", out)
	}
	out, _, code = run("verify", "--root", root, "--format", "json")
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if code != 3 || m["exit_code"] != float64(3) || m["failed_layer"] != "config" || m["owner"] != "node" || m["ok"] != false {
		t.Errorf("code %d JSON %s", code, out)
	}
}

// TestRenderTextNeutralisesControlCharacters is issue 24 item 5: a CA error
// body on the (unverified) pinned fetch holding "\n[PASS] ca-root ...
// (forged)" and ANSI cursor escapes, and hook output with CR, ESC and
// invalid UTF-8, were printed raw by the text report, so a peer could forge
// lines or rewrite the terminal. Every string a peer or a hook can reach
// (message, summary, remedy, evidence, names) is rendered on its own line,
// as valid UTF-8 with no control character; the JSON report already
// escapes them.
func TestRenderTextNeutralisesControlCharacters(t *testing.T) {
	hostile := []struct {
		name, s string
	}{
		{"forged check line", "CA answered 500: \n[PASS] ca-root  the pinned root is served (forged)\n"},
		{"ANSI cursor escapes", "\x1b[2K\x1b[1A\x1b[32m[PASS]\x1b[0m everything is fine"},
		{"carriage return", "hook failed\r[PASS] hook ok"},
		{"invalid UTF-8", "output \xff\xfe\xc3( end"},
		{"C1 control and DEL", "csi \u009b2J del \x7f nul \x00 bell \a"},
		{"bidi override", "file \u202etxt.exe\u202c name"},
		{"OSC hyperlink", "\x1b]8;;https://evil.example\x07click\x1b]8;;\x07"},
	}
	for _, h := range hostile {
		t.Run(h.name, func(t *testing.T) {
			r := report.New("verify", "gpu-0042", []report.Result{
				{Name: "config", Layer: diag.Config, Owner: diag.Node, Status: report.Pass, Message: "config is valid"},
				{Name: "ca-root", Layer: diag.CA, Owner: diag.CAOwner, Status: report.Fail, Message: h.s, Remedy: "fix: " + h.s,
					Evidence: map[string]string{"body": h.s, "key\n[PASS] x": "v"}},
				{Name: "hosts-persist", Layer: diag.Hosts, Owner: diag.Node, Status: report.Warn, Message: h.s, Remedy: h.s},
			}, time.Millisecond)
			for _, format := range []string{"text"} {
				got, code := render(t, format, r)
				if code != 13 {
					t.Errorf("exit %d, want 13", code)
				}
				checkNeutral(t, got, "[PASS] config ", "[FAIL] ca-root ", "[WARN] hosts-persist ")
			}
			// A passing report prints the warnings' remedies too.
			ok := report.New("verify", "gpu-0042", []report.Result{
				{Name: "hosts-persist", Layer: diag.Hosts, Owner: diag.Node, Status: report.Warn, Message: h.s, Remedy: h.s},
			}, time.Millisecond)
			got, _ := render(t, "text", ok)
			checkNeutral(t, got, "[WARN] hosts-persist ")
		})
	}
}

// checkNeutral fails unless out is valid UTF-8 without control or bidi
// characters, its check lines are exactly tags (in order), and every other
// line is one the text report itself starts.
func checkNeutral(t *testing.T, out string, tags ...string) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Errorf("output is not valid UTF-8: %q", out)
	}
	for _, r := range out {
		if r != '\n' && (unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)) {
			t.Errorf("output carries the control character %U: %q", r, out)
			break
		}
	}
	starts := regexp.MustCompile(`^(  warning \(hosts-persist\): |Root cause: layer ca, |  what:   |  fix:    |  evidence:$|    (body|key.*): |provision verify: |$)`)
	var got []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "[") {
			got = append(got, l)
			continue
		}
		if !starts.MatchString(l) {
			t.Errorf("a line the report did not start: %q\nin:\n%s", l, out)
		}
	}
	if len(got) != len(tags) {
		t.Fatalf("check lines %q, want %d starting %q", got, len(tags), tags)
	}
	for i, l := range got {
		if !strings.HasPrefix(l, tags[i]) {
			t.Errorf("check line %q, want it to start %q", l, tags[i])
		}
	}
}

// FuzzClean: whatever a peer or a hook sends, clean's result is valid UTF-8
// without a control or bidi character, and cleaning it again changes
// nothing.
func FuzzClean(f *testing.F) {
	for _, s := range []string{"plain", "\n[PASS] ca-root (forged)", "\x1b[2J", "\r", "\xff\xfe", "\u202e", "\u009b", "a\tb", "\u00e9\u200b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := clean(s)
		if !utf8.ValidString(c) {
			t.Fatalf("clean(%q) = %q is not UTF-8", s, c)
		}
		for _, r := range c {
			if unsafeRune(r) {
				t.Fatalf("clean(%q) = %q keeps %U", s, c, r)
			}
		}
		if clean(c) != c {
			t.Fatalf("clean is not idempotent on %q: %q then %q", s, c, clean(c))
		}
	})
}

// TestExitTables: one table. Every command's help lists exactly the codes
// it declares, each once, in order, with the shared meaning or its own;
// every code a command declares is a row (or its own meaning); the
// top-level help lists every row and each command's own codes with the
// command named; version exits 0, 1 or 2 only; the runbook's table is the
// generated one (issue 33: 30/31 were "renew --check only" while status
// used them, every help printed every code, the runbook lacked 22, 30, 31).
func TestExitTables(t *testing.T) {
	root := rootExitHelp()
	for _, c := range commands() {
		help := exitHelp(c)
		if !strings.Contains(helpText(c), help) {
			t.Errorf("%s: the help does not end with its exit codes", c.name)
		}
		lines := regexp.MustCompile(`(?m)^  (\d+(?:/\d+)?) `).FindAllStringSubmatch(help, -1)
		var got []string
		for _, l := range lines {
			got = append(got, l[1])
		}
		var want []string
		for _, code := range c.exits {
			want = append(want, exitLabel(code))
			if _, ok := rowOf(code); !ok {
				if _, own := c.exitNotes[code]; !own {
					t.Errorf("%s declares exit %d, which has no row and no meaning of its own", c.name, code)
				}
				if !strings.Contains(root, c.name+" "+c.exitNotes[code].name) {
					t.Errorf("the top-level help does not say what %d means for %s", code, c.name)
				}
			}
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s's help lists exits %v, want %v", c.name, got, want)
		}
	}
	for _, r := range exitRows {
		if !strings.Contains(root, "  "+exitLabel(r.code)+" ") {
			t.Errorf("the top-level help lacks exit %s", exitLabel(r.code))
		}
	}
	if v := lookup("version"); strings.Join(strings.Fields(fmt.Sprint(v.exits)), " ") != "[0 1 2]" {
		t.Errorf("version exits %v, want 0, 1, 2 only", v.exits)
	}
	for file, runbook := range map[string]string{"docs/runbook.md": "", "README.md": "docs/runbook.md"} {
		b, err := os.ReadFile(filepath.Join("..", "..", file))
		if err != nil {
			t.Fatal(err)
		}
		if want, err := WithExitTable(string(b), runbook); err != nil || want != string(b) {
			t.Errorf("%s's exit-code table is not the generated one (%v): run go run ./internal/cli/gendocs -exit-table %s", file, err, file)
		}
	}
	if tbl := RunbookExitTable(""); !strings.Contains(tbl, "| 22 |") || !strings.Contains(tbl, "| 30 |") {
		t.Error("the runbook's table lacks 22 or 30")
	}
}
