package cli

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/report"
)

var statusTag = map[report.Status]string{report.Pass: "[PASS]", report.Fail: "[FAIL]", report.Warn: "[WARN]", report.Skip: "[SKIP]"}

// Pseudo-layers: failed_layer values for exits that are not a layer of the
// ladder, so that a JSON report exists for every exit path.
const (
	LayerUsage       diag.Layer = "usage"       // exit 2: command line or --root
	LayerLock        diag.Layer = "lock"        // exit 4: another run holds the lock
	LayerInterrupted diag.Layer = "interrupted" // 128+signal: SIGTERM or SIGINT
	LayerInternal               = diag.Internal // exit 1: a bug
)

// jsonReport is the JSON report. Every documented field is present in
// every report, failures and successes alike ("" or false when it does not
// apply): a script reading .transient or .failed_layer must not have to
// guess whether a missing key means false. It lists report.Report's fields
// explicitly, in the documented order, without its omitempty;
// TestJSONReportCarriesEveryReportField catches a field added there and
// not here.
type jsonReport struct {
	SchemaVersion int `json:"schema_version"`

	OK          bool            `json:"ok"`
	Command     string          `json:"command"`
	NodeID      string          `json:"node_id"`
	FailedLayer diag.Layer      `json:"failed_layer"`
	Owner       diag.Owner      `json:"owner"`
	FailedCheck string          `json:"failed_check"`
	Summary     string          `json:"summary"`
	Remedy      string          `json:"remedy"`
	Transient   bool            `json:"transient"`
	Checks      []report.Result `json:"checks"`
	DurationMS  int64           `json:"duration_ms"`
	Task        any             `json:"task,omitempty"`
	Steps       []report.Step   `json:"steps,omitempty"`
	DryRun      any             `json:"dry_run,omitempty"`
	ExitCode    int             `json:"exit_code"`
}

func toJSONReport(r *report.Report, code int) jsonReport {
	checks := r.Checks
	if checks == nil {
		checks = []report.Result{}
	}
	return jsonReport{SchemaVersion: SchemaVersion, OK: r.OK, Command: r.Command, NodeID: r.NodeID, FailedLayer: r.FailedLayer, Owner: r.Owner,
		FailedCheck: r.FailedCheck, Summary: r.Summary, Remedy: r.Remedy, Transient: r.Transient, Checks: checks,
		DurationMS: r.DurationMS, Task: r.Task, Steps: r.Steps, DryRun: r.DryRun, ExitCode: code}
}

// printJSON prints r as the one JSON document on stdout, with code, on one
// line: under systemd each line is a journal entry, and an indented report
// became about 140 of them; jq indents it for a person.
func printJSON(env *runEnv, r *report.Report, code int) {
	b, err := json.Marshal(toJSONReport(r, code))
	if err != nil { // a task that cannot be re-encoded; still one document
		jr := toJSONReport(r, code)
		jr.Task = nil
		b, _ = json.Marshal(jr)
	}
	fmt.Fprintln(env.stdout, string(b))
}

// formatGiven reports whether args set --format at all (before "--").
func formatGiven(args []string) bool {
	for _, a := range args {
		switch {
		case a == "--":
			return false
		case a == "--format" || a == "-format" || strings.HasPrefix(a, "--format=") || strings.HasPrefix(a, "-format="):
			return true
		}
	}
	return false
}

// wantsJSON reports whether args ask for --format json, looked for before
// flag parsing so that a usage error is a JSON report too.
func wantsJSON(args []string) bool {
	for i, a := range args {
		switch a {
		case "--":
			return false
		case "--format=json", "-format=json":
			return true
		case "--format", "-format":
			if i+1 < len(args) && args[i+1] == "json" {
				return true
			}
		}
	}
	return false
}

// Errors without a report of their own (a usage error, a held lock, a
// config userdata cannot read, a bug) have one shape on stderr, as age's
// have: a line "provision: error: <what failed>", then a line
// "provision: hint: <what to do>" when there is something to do. fail is
// the one place that writes them.

// fail ends a command that has no report of its own: the error's lines on
// stderr, and with --format json also the one JSON report on stdout. It
// returns the layer's exit code.
func (env *runEnv) fail(cmd string, layer diag.Layer, summary, remedy string) int {
	fmt.Fprintf(env.stderr, "provision: error: %s\n", clean(summary))
	if remedy != "" {
		fmt.Fprintf(env.stderr, "provision: hint: %s\n", clean(remedy))
	}
	code := ExitCode(layer)
	if env.json {
		printJSON(env, report.Failed(cmd, "", string(layer), &diag.Finding{Layer: layer, Owner: diag.Node, Summary: summary, Remedy: remedy}), code)
	}
	return code
}

// usage fails with a usage error (exit 2): msg, and hint or the command's
// help.
func (env *runEnv) usage(cmd, msg, hint string) int {
	if hint == "" {
		hint = "see 'provision " + strings.TrimSpace(cmd+" --help") + "'"
	}
	return env.fail(cmd, LayerUsage, msg, hint)
}

// printReport renders the report and returns its exit code. The text form
// ends with one line a person can act on. A failure after SIGTERM or SIGINT
// is reported as interrupted, with the signal's exit code.
func printReport(env *runEnv, f *flags, r *report.Report) int {
	r, code := outcome(env, r)
	renderReport(env, f, r, code)
	return code
}

// outcome is the report as it will be printed and its exit code.
func outcome(env *runEnv, r *report.Report) (*report.Report, int) {
	code := ExitOK
	if !r.OK {
		code = ExitCode(r.FailedLayer)
	}
	if i := interruptedBy(env.ctx); i != nil && !r.OK {
		r = interruptedReport(r.Command, i.Signal, r)
		code = SignalExit(i.Signal)
	}
	return r, code
}

// renderReport prints r, whose exit code is code. In text, every string
// goes through clean first: messages, summaries, remedies and evidence
// carry what peers and hooks said.
func renderReport(env *runEnv, f *flags, r *report.Report, code int) {
	if f.format == "json" {
		printJSON(env, r, code)
		return
	}
	if f.quiet {
		// Errors and the final line only: the line a script or a person
		// acts on, with the layer, owner, next step and exit code.
		fmt.Fprintln(env.stdout, finalLine(r, code))
		return
	}
	w := env.stdout
	width := 0
	for _, c := range r.Checks {
		width = max(width, len(clean(c.Name)))
	}
	for _, c := range r.Checks {
		fmt.Fprintf(w, "%s %-*s  %s\n", statusTag[c.Status], width, clean(c.Name), clean(c.Message))
	}
	if r.OK {
		for _, c := range r.Checks {
			if c.Status == report.Warn && c.Remedy != "" {
				fmt.Fprintf(w, "  warning (%s): %s\n", clean(c.Name), clean(c.Remedy))
			}
		}
		fmt.Fprintf(w, "\n%s\n", finalLine(r, code))
		return
	}
	layer, owner, summary := clean(string(r.FailedLayer)), clean(string(r.Owner)), clean(r.Summary)
	fmt.Fprintf(w, "\nRoot cause: layer %s, owner %s (check %s)\n", layer, owner, clean(r.FailedCheck))
	fmt.Fprintf(w, "  what:   %s\n", summary)
	if r.Remedy != "" {
		fmt.Fprintf(w, "  fix:    %s\n", clean(r.Remedy))
	}
	if rc := r.RootCause(); rc != nil && len(rc.Evidence) > 0 {
		fmt.Fprintln(w, "  evidence:")
		keys := make([]string, 0, len(rc.Evidence))
		for k := range rc.Evidence {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "    %s: %s\n", clean(k), clip(clean(rc.Evidence[k]), maxEvidence))
		}
	}
	fmt.Fprintf(w, "\n%s\n", finalLine(r, code))
}

// finalLine is the last line of a text report: what happened, and for a
// failure the layer, its owner, what to do next and the exit code.
func finalLine(r *report.Report, code int) string {
	if r.OK {
		return fmt.Sprintf("provision %s: %s", r.Command, clean(r.Summary))
	}
	fix := clean(r.Remedy)
	if fix == "" {
		fix = "see the checks above"
	}
	return fmt.Sprintf("provision %s: FAILED at layer %s (owner: %s): %s. Next: %s (exit %d)", r.Command, clean(string(r.FailedLayer)), clean(string(r.Owner)), strings.TrimSuffix(clean(r.Summary), "."), fix, code)
}

// maxEvidence caps one evidence value in the text report (the JSON report
// has it whole).
const maxEvidence = 400

// clip shortens s to at most n bytes, on a rune boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// clean makes s safe to print on one line of a terminal or a log: a CA
// error body, an API answer or a hook's output must not be able to forge a
// report line ("\n[PASS] ca-root ..."), move the cursor, recolour or
// clear the screen (ANSI and OSC escapes), hide text behind a carriage
// return, or reorder it (bidirectional overrides). Line breaks and tabs
// become spaces; every other control character (C0, DEL, C1), every
// Unicode format character (bidi controls, zero-width characters) and
// every byte that is not UTF-8 is shown as a Go escape (\x1b, \u202e,
// \xff), so what the peer sent stays visible and inert. The JSON report
// needs none of this: encoding/json escapes them.
func clean(s string) string {
	ok := true
	for _, r := range s {
		if r == utf8.RuneError || unsafeRune(r) {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n' || r == '\r' || r == '\t' || r == '\v' || r == '\f':
			b.WriteByte(' ')
		case unsafeRune(r) && r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafeRune(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// unsafeRune reports whether r must not reach a terminal as is: a control
// character or a format character (Cf: bidi controls, zero-width joiners).
func unsafeRune(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Cf, r)
}
