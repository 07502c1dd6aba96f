package cli

import (
	"fmt"
	"slices"
	"strings"

	"github.com/gpuaas/provision/internal/diag"
)

// Exit codes: one table. Every code provision exits with is a row here,
// with what it means; each command lists the codes it may exit with, and
// says what a code means for it where that differs (renew --check's and
// status's 30 and 31). A command's help (and so its man page) prints its
// own codes, the top-level help every code with the commands that use it,
// and docs/runbook.md's table is generated from the same rows
// (RunbookExitTable, checked by TestRunbookExitTable): the three cannot
// disagree. The numbers are a contract that units, cloud-init templates
// and runbooks key on: extended, never renumbered.

// Exit codes that are no layer's.
const (
	ExitOK       = 0
	ExitInternal = 1
	ExitUsage    = 2
	ExitConfig   = 3
	ExitLocked   = 4
	// renew --check (usable as systemd's ExecCondition=, where 0 runs the
	// service and 1-254 skip it without failing the unit) and status.
	ExitCheckDue         = 0
	ExitCheckNotDue      = 30
	ExitCheckCannotRenew = 31
	ExitStatusAttention  = 30
	ExitStatusUnusable   = 31
	// exitSignals stands for 130 and 143, 128+SIGINT and 128+SIGTERM.
	exitSignals = 130
)

var layerExit = map[diag.Layer]int{
	diag.Config: ExitConfig, diag.Hosts: 10, diag.Clock: 11, diag.Credentials: 12, diag.CA: 13,
	diag.TCP: 14, diag.TLSServer: 15, diag.TLSClientAuth: 16, diag.Route: 17, diag.Identity: 18,
	diag.TasksWait: 19, diag.Enroll: 20, diag.State: 21, diag.Hook: 22, diag.Internal: ExitInternal,
	LayerUsage: ExitUsage, LayerLock: ExitLocked,
}

// ExitCode returns the exit code for a failing layer, the pseudo-layers of
// a usage error and a held lock included: the one map from a layer to a
// code. An interrupted run exits 128+signal (SignalExit).
func ExitCode(l diag.Layer) int {
	if c, ok := layerExit[l]; ok {
		return c
	}
	return ExitInternal
}

// exitRow is one exit code: what it means whoever exits with it.
type exitRow struct {
	code    int
	name    string // the layer, or what the code stands for
	meaning string
	section string // the runbook section that handles it ("" none)
}

// layerMeaning is what each layer's code (layerExit) means; its runbook
// section is the layer's name.
var layerMeaning = map[diag.Layer]string{
	diag.Hosts:         "/etc/hosts override missing, wrong or not resolving",
	diag.Clock:         "node clock too far off the CA's",
	diag.Credentials:   "key/cert missing, unreadable, mismatched, expired, wrong mode",
	diag.CA:            "CA unreachable, wrong fingerprint, or node cert stale",
	diag.TCP:           "node API host:port not reachable",
	diag.TLSServer:     "ingress TLS: no/wrong/untrusted server certificate, EOF before it",
	diag.TLSClientAuth: "ingress refused the node's client certificate",
	diag.Route:         "ingress has no route for the Host (404) or SNI/Host mismatch (421)",
	diag.Identity:      "API refused the node identity (401/403)",
	diag.TasksWait:     "tasks/wait failed (5xx, 502/504 from the ingress, timeout)",
	diag.Enroll:        "one-time token missing, invalid, used or expired; the certificate revoked",
	diag.State:         "receipt, records or a task hand-off could not be written",
	diag.Hook:          "the credentials changed, renew.post_hook failed (it stays pending)",
}

// exitRows are the codes every command shares the meaning of, in order:
// the plain ones, then each layer's, then the signals'. 30 and 31 are not
// here: they mean one thing for renew --check, another for status
// (command.exitNotes).
var exitRows = func() []exitRow {
	rows := []exitRow{
		{ExitOK, "ok", "done / healthy (never when not done)", ""},
		{ExitInternal, "internal", "internal error (a bug: please report it)", "internal"},
		{ExitUsage, "usage", "usage: unknown command or flag, a bad flag value, a --root that is not a directory, or revoke on a node with a usable identity without --yes (nothing changed)", ""},
		{ExitConfig, "config", "the config file is missing or invalid, or state_dir/pki_dir is a directory holding files provision did not write", "config"},
		{ExitLocked, "lock", "another provision run holds state_dir/.lock and did not finish within bootstrap.deadline", ""},
	}
	for _, l := range diag.Layers {
		if m, ok := layerMeaning[l]; ok {
			rows = append(rows, exitRow{ExitCode(l), string(l), m, string(l)})
		}
	}
	return append(rows, exitRow{exitSignals, "interrupted", "interrupted by SIGINT / SIGTERM (130 / 143): every write is crash-safe, run it again", "interrupted"})
}()

// layerCodes are the codes of layers, in order.
func layerCodes(ls ...diag.Layer) []int {
	out := make([]int, len(ls))
	for i, l := range ls {
		out[i] = ExitCode(l)
	}
	return out
}

// The codes a command may exit with, beyond the ones every command may
// (0, 1, 2).
var (
	layersProof = layerCodes(diag.Hosts, diag.Clock, diag.Credentials, diag.CA, diag.TCP, diag.TLSServer, diag.TLSClientAuth, diag.Route, diag.Identity, diag.TasksWait)
	layersAll   = append(append([]int(nil), layersProof...), layerCodes(diag.Enroll, diag.State, diag.Hook)...)
)

func codes(cs ...any) []int {
	out := []int{ExitOK, ExitInternal, ExitUsage}
	for _, c := range cs {
		switch v := c.(type) {
		case int:
			out = append(out, v)
		case []int:
			out = append(out, v...)
		}
	}
	return out
}

// exitLabel is the code as the tables print it.
func exitLabel(code int) string {
	if code == exitSignals {
		return "130/143"
	}
	return fmt.Sprint(code)
}

func rowOf(code int) (exitRow, bool) {
	i := slices.IndexFunc(exitRows, func(r exitRow) bool { return r.code == code })
	if i < 0 {
		return exitRow{}, false
	}
	return exitRows[i], true
}

// exitNote is what a code means for one command, where that is its own.
type exitNote struct{ name, meaning string }

// exitHelp is the "Exit codes:" section of c's help: its own codes, with
// what each means for it.
func exitHelp(c *command) string {
	var b strings.Builder
	b.WriteString("Exit codes:\n")
	for _, code := range c.exits {
		var n exitNote
		if r, ok := rowOf(code); ok {
			n = exitNote{r.name, r.meaning}
		}
		if own, ok := c.exitNotes[code]; ok {
			n = own
		}
		writeExitLine(&b, exitLabel(code), n.name, n.meaning)
	}
	return b.String()
}

// ownCodes are the codes whose meaning is each command's own.
var ownCodes = []int{ExitCheckNotDue, ExitCheckCannotRenew}

// exitTable is every code with its meaning for the top-level help and the
// runbook: the shared rows, with the commands that exit so when not all
// do, and the codes each command gives its own meaning, before the
// signals'.
func exitTable(cmdName func(string) string) []exitRow {
	var out []exitRow
	for _, r := range exitRows {
		if r.code == exitSignals {
			for _, code := range ownCodes {
				var parts []string
				for _, c := range commands() {
					if n, ok := c.exitNotes[code]; ok {
						parts = append(parts, cmdName(c.name)+" "+n.name+": "+n.meaning)
					}
				}
				out = append(out, exitRow{code: code, meaning: strings.Join(parts, "; ")})
			}
		}
		r.meaning += exitedBy(r.code)
		out = append(out, r)
	}
	return out
}

// rootExitHelp is the top-level help's table.
func rootExitHelp() string {
	var b strings.Builder
	b.WriteString("Exit codes (each command's help lists its own):\n")
	for _, r := range exitTable(func(n string) string { return n }) {
		writeExitLine(&b, exitLabel(r.code), r.name, r.meaning)
	}
	return b.String()
}

// exitedBy names the commands that may exit with code, when not all do.
func exitedBy(code int) string {
	var by []string
	for _, c := range commands() {
		if slices.Contains(c.exits, code) {
			by = append(by, c.name)
		}
	}
	if len(by) == len(commands()) {
		return ""
	}
	return " (" + strings.Join(by, ", ") + ")"
}

// writeExitLine writes one code's line, its meaning wrapped under itself.
func writeExitLine(b *strings.Builder, code, name, meaning string) {
	const width = 62
	first := fmt.Sprintf("  %-8s %-16s ", code, name)
	var lines []string
	line := ""
	for _, w := range strings.Fields(meaning) {
		if line != "" && len(line)+1+len(w) > width {
			lines, line = append(lines, line), ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	lines = append(lines, line)
	for i, l := range lines {
		indent := first
		if i > 0 {
			indent = strings.Repeat(" ", len(first))
		}
		fmt.Fprintf(b, "%s\n", strings.TrimRight(indent+l, " "))
	}
}

// RunbookExitTable is the exit-code table of docs/runbook.md (and of the
// README, whose links lead into the runbook: runbook is the runbook's path
// from the document, "" in the runbook itself), generated from the same
// rows as the help: code, meaning (with the commands that exit so, when
// not all do), and the runbook section for it.
func RunbookExitTable(runbook string) string {
	var b strings.Builder
	b.WriteString("| exit | meaning | section |\n|---|---|---|\n")
	for _, r := range exitTable(func(n string) string { return "`" + n + "`" }) {
		meaning, sec := r.meaning, " "
		if r.section != "" {
			meaning, sec = r.name+": "+meaning, " ["+r.section+"]("+runbook+"#"+r.section+") "
		}
		fmt.Fprintf(&b, "| %s | %s |%s|\n", strings.ReplaceAll(exitLabel(r.code), "/", ", "), meaning, sec)
	}
	return b.String()
}

// The generated table stands between these lines of docs/runbook.md and
// README.md.
const (
	ExitTableStart = "<!-- exit codes: generated from internal/cli (go run ./internal/cli/gendocs -exit-table FILE) -->"
	ExitTableEnd   = "<!-- end of exit codes -->"
)

// WithExitTable returns doc with its exit-code table (between
// ExitTableStart and ExitTableEnd) generated anew; runbook is the
// runbook's path from doc ("" for the runbook itself).
func WithExitTable(doc, runbook string) (string, error) {
	i := strings.Index(doc, ExitTableStart)
	j := strings.Index(doc, ExitTableEnd)
	if i < 0 || j < i {
		return "", fmt.Errorf("no exit-code table between %q and %q", ExitTableStart, ExitTableEnd)
	}
	return doc[:i+len(ExitTableStart)] + "\n" + RunbookExitTable(runbook) + doc[j:], nil
}
