// Package cli is the only place that prints, chooses wording and hints, and
// decides exit codes. Every other package returns values and errors.
//
// Output rules: the report (text or JSON) goes to stdout; structured logs, one
// line per step, go to stderr. The last line of every failure names the
// layer, the owner and what to do next. Exit codes are a contract that
// cloud-init templates and runbooks rely on; see exitCodes.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strings"

	"github.com/gpuaas/provision/internal/diag"
)

// version is set at build time with -ldflags "-X github.com/gpuaas/provision/internal/cli.version=...".
var version = "dev"

// Version returns the build's version.
func Version() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

// Exit codes. They are stable: scripts and units key on them.
const (
	ExitOK       = 0
	ExitInternal = 1
	ExitUsage    = 2
	ExitConfig   = 3
	ExitLocked   = 4
)

var layerExit = map[diag.Layer]int{
	diag.Config: ExitConfig, diag.Hosts: 10, diag.Clock: 11, diag.Credentials: 12, diag.CA: 13,
	diag.TCP: 14, diag.TLSServer: 15, diag.TLSClientAuth: 16, diag.Route: 17, diag.Identity: 18,
	diag.TasksWait: 19, diag.Enroll: 20, diag.State: 21, diag.Hook: 22, diag.Internal: ExitInternal,
}

// ExitCode returns the exit code for a failing layer.
func ExitCode(l diag.Layer) int {
	if c, ok := layerExit[l]; ok {
		return c
	}
	return ExitInternal
}

const exitCodesHelp = `Exit codes:
  0   done / healthy (never when not done)
  1   internal error (a bug: please report it)
  2   usage: unknown command or flag
  3   config: the config file is missing or invalid (layer config)
  4   another provision run holds the lock and did not finish in time
  10  hosts            /etc/hosts override missing, wrong or not resolving
  11  clock            node clock too far off the CA's
  12  credentials      key/cert missing, unreadable, mismatched, expired, wrong mode
  13  ca               CA unreachable, wrong fingerprint, or node cert stale
  14  tcp              node API host:port not reachable
  15  tls-server       ingress TLS: no/wrong/untrusted server certificate, EOF before it
  16  tls-client-auth  ingress refused the node's client certificate
  17  route            ingress has no route for the Host (404) or SNI/Host mismatch (421)
  18  identity         API refused the node identity (401/403)
  19  tasks-wait       tasks/wait failed (5xx, 502/504 from the ingress, timeout)
  20  enroll           one-time token missing, invalid, used or expired; renew: certificate revoked
  21  state            receipt or state could not be written
  22  hook             renew: the renewal was published, renew.post_hook failed
  30 / 31          renew --check only: not due / cannot renew (0: due)
  130 / 143        interrupted by SIGINT / SIGTERM (run it again: every write is crash-safe)
`

type command struct {
	name    string
	summary string
	usage   string // the full help text after the flag list
	run     func(ctx context.Context, env *runEnv, args []string) int
}

type runEnv struct {
	stdout, stderr io.Writer
	ctx            context.Context // the run's; its cause says whether a signal ended it
	json           bool            // --format json was asked for: every exit prints one JSON report
}

func commands() []*command {
	return []*command{bootstrapCmd, verifyCmd, renewCmd, hostsCmd, userdataCmd, versionCmd}
}

const rootHelp = `provision bootstraps a bare-metal GPU node into the control plane.

It writes the /etc/hosts override for the node API hostname, enrolls against
the current step-ca (pinned root, key generated on the node, one-time token),
installs key, certificate and CA bundle as one unit, and declares the node
done only after a real mTLS tasks/wait through the ingress succeeds.

Usage:
  provision <command> [flags]

Commands:
%s
Run 'provision <command> --help' for a command's flags and examples.

Examples:
  provision bootstrap                          # first boot: enroll and prove
  provision verify --format json | jq '{ok, failed_layer, owner}'
  provision renew                              # provision-renew.timer: renew when due
  provision hosts show

` + exitCodesHelp

// Run executes the provision command line and returns the process exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) (code int) {
	env := &runEnv{stdout: stdout, stderr: stderr, ctx: ctx, json: wantsJSON(args)}
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(stderr, "provision: internal error: %v\n%s\nprovision: this is a bug; please report it with the lines above\n", r, debug.Stack())
			cmd := ""
			if len(args) > 0 {
				cmd = args[0]
			}
			code = env.failure(cmd, LayerInternal, fmt.Sprintf("internal error: %v", r), "this is a bug: report it with the stderr of this run", ExitInternal)
		}
	}()
	if len(args) == 0 {
		printRootHelp(stderr)
		return env.usage("", "missing command", "")
	}
	switch args[0] {
	case "-h", "--help", "-help", "help":
		printRootHelp(stdout)
		return ExitOK
	case "--version", "-version":
		args = []string{"version"}
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, env, args[1:])
		}
	}
	return env.usage("", fmt.Sprintf("unknown command %q%s", args[0], didYouMean(args[0])), "Run 'provision --help' for the list of commands.")
}

func printRootHelp(w io.Writer) {
	var b strings.Builder
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, rootHelp, b.String())
}

// didYouMean suggests the command the user most likely meant: one that the
// typed word is a prefix of (or extends), else the nearest by edit distance
// when at most two edits away (typos such as "verfy" or "bootsrap").
func didYouMean(s string) string {
	for _, c := range commands() {
		if strings.HasPrefix(c.name, s) || strings.HasPrefix(s, c.name) {
			return fmt.Sprintf(" (did you mean %q?)", c.name)
		}
	}
	best, bestD := "", 3
	for _, c := range commands() {
		if d := editDistance(s, c.name); d < bestD {
			best, bestD = c.name, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return ""
}

// editDistance is the Damerau-Levenshtein distance (optimal string
// alignment): a transposition of two adjacent letters counts as one edit.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// flags is the common flag set of a command.
type flags struct {
	cmd       *command
	fs        *flag.FlagSet
	config    string
	root      string
	format    string
	logFormat string
	logLevel  string
}

func newFlags(c *command, env *runEnv, withFormat bool) *flags {
	f := &flags{fs: flag.NewFlagSet("provision "+c.name, flag.ContinueOnError)}
	f.fs.SetOutput(env.stderr)
	f.fs.StringVar(&f.config, "config", "/etc/provision/provision.toml", "config file `path` (read under --root)")
	f.fs.StringVar(&f.root, "root", "/", "treat `dir` as the filesystem root for every path read or written")
	if withFormat {
		f.fs.StringVar(&f.format, "format", "text", "report format: text or json")
	}
	f.fs.StringVar(&f.logFormat, "log-format", "text", "log format on stderr: text or json")
	f.fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.cmd = c
	f.fs.Usage = func() {} // printed by parse, to stdout when asked for
	return f
}

func (f *flags) printUsage(w io.Writer) {
	c := f.cmd
	name := c.name
	if c == hostsCmd {
		name = "hosts apply|show|remove"
	}
	fmt.Fprintf(w, "Usage: provision %s [flags]\n\n%s\n\nFlags:\n", name, c.summary)
	f.fs.SetOutput(w)
	f.fs.PrintDefaults()
	fmt.Fprintf(w, "\n%s\n%s", c.usage, exitCodesHelp)
}

// parse parses args; ok=false means return code.
func (f *flags) parse(env *runEnv, args []string) (code int, ok bool) {
	f.fs.SetOutput(io.Discard) // parse errors are worded below
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			f.printUsage(env.stdout)
			return ExitOK, false
		}
		return env.usage(f.cmd.name, err.Error(), fmt.Sprintf("Run 'provision %s --help' for usage.", f.cmd.name)), false
	}
	if f.format != "" && f.format != "text" && f.format != "json" {
		return env.usage(f.cmd.name, fmt.Sprintf("--format must be text or json, got %q", f.format), ""), false
	}
	if f.logFormat != "text" && f.logFormat != "json" {
		return env.usage(f.cmd.name, fmt.Sprintf("--log-format must be text or json, got %q", f.logFormat), ""), false
	}
	if f.fs.NArg() > 0 {
		return env.usage(f.cmd.name, fmt.Sprintf("unexpected argument %q", f.fs.Arg(0)), ""), false
	}
	return 0, true
}

func (f *flags) logger(w io.Writer) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.logLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if f.logFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(h).With("cmd", "provision")
}
