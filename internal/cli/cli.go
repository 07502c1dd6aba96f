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
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"
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

// command is one entry of the command table. The help text, the man pages
// and the shell completions are all generated from it (see docs.go), so they
// cannot disagree.
type command struct {
	name     string
	synopsis string // after "provision " in the Usage line; default: name + " [flags]"
	summary  string
	usage    string // the help text: prose, then sections ("Examples:", ...)
	format   bool   // takes --format text|json
	// noRoot: the command reads nothing of the node (userdata renders for
	// another machine, version reads the binary), so it takes no --root;
	// noConfig: it reads no config either (version).
	noRoot, noConfig bool
	// exits are the codes the command may exit with (exitcodes.go), in
	// order; exitNotes what a code means for it where that is its own.
	exits     []int
	exitNotes map[int]exitNote
	flags     func(f *flags)
	run       func(ctx context.Context, env *runEnv, args []string) int
}

// Flag value sets. A value outside its set is a usage error (exit 2) that
// names the accepted values; the help, the man pages and the completions list
// the same values.
var flagValues = map[string][]string{
	"format":     {"text", "json"},
	"log-format": {"text", "json"},
	"log-level":  {"debug", "info", "warn", "error"},
}

// flagPaths says which flags name a file or a directory, for completion.
// Every flag is in flagValues or flagPaths (TestEveryFlagCompletes).
var flagPaths = map[string]string{"config": "file", "root": "dir", "token-file": "file", "out": "file"}

// alternatives renders a value set as prose: "text or json", "debug, info,
// warn or error".
func alternatives(vs []string) string {
	if len(vs) < 2 {
		return strings.Join(vs, "")
	}
	return strings.Join(vs[:len(vs)-1], ", ") + " or " + vs[len(vs)-1]
}

type runEnv struct {
	stdout, stderr io.Writer
	ctx            context.Context // the run's; its cause says whether a signal ended it
	json           bool            // --format json was asked for, or stdout is the journal: every exit prints one JSON report
	journal        bool            // stdout is the journal (systemd's JOURNAL_STREAM): the report defaults to JSON
	start          time.Time       // when the run began, for its duration
	runID          string          // ties the run's log lines together
	// durable makes the directory marks claimDirs wrote durable; nil when
	// it wrote none. A run hands it to the pipeline (Options.Durable).
	durable func() error
}

func commands() []*command {
	return []*command{bootstrapCmd, verifyCmd, renewCmd, statusCmd, revokeCmd, hostsCmd, configCmd, userdataCmd, versionCmd}
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
Run 'provision help <command>' (or 'provision <command> --help') for a command's
flags and examples.

Examples:
  provision bootstrap                          # first boot: enroll and prove
  provision verify --format json | jq '{ok, failed_layer, owner}'
  provision renew                              # provision-renew.timer: renew when due
  provision hosts show

`

// Run executes the provision command line and returns the process exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) (code int) {
	env := &runEnv{stdout: stdout, stderr: stderr, ctx: ctx, start: time.Now(), runID: newRunID(), journal: underJournal(stdout)}
	env.json = wantsJSON(args) || (env.journal && !formatGiven(args))
	defer func() {
		if r := recover(); r != nil {
			cmd := ""
			if len(args) > 0 {
				cmd = args[0]
			}
			code = env.fail(cmd, LayerInternal, fmt.Sprintf("internal error: %v", r), "this is a bug: report it with the stderr of this run (the stack follows)")
			fmt.Fprintf(stderr, "%s\n", debug.Stack())
		}
	}()
	if len(args) == 0 {
		printRootHelp(stderr)
		return env.usage("", "missing command", "")
	}
	switch args[0] {
	case "-h", "--help", "-help":
		printRootHelp(stdout)
		return ExitOK
	case "help":
		return runHelp(env, args[1:])
	case "--version", "-version":
		args = []string{"version"}
	}
	if c := lookup(args[0]); c != nil {
		if !c.format {
			// A command without --format (hosts, userdata) prints text
			// only: asking it for JSON is a usage error with no report on
			// stdout, not a JSON document from a command that has none.
			env.json = false
		}
		return c.run(ctx, env, args[1:])
	}
	return env.usage("", fmt.Sprintf("unknown command %q%s", args[0], didYouMean(args[0])), hintCommands)
}

// hintCommands is the hint of a command line that names no command.
const hintCommands = "Run 'provision --help' for the list of commands."

func lookup(name string) *command {
	for _, c := range commands() {
		if c.name == name {
			return c
		}
	}
	return nil
}

// runHelp is 'provision help [command]': the command's help, exactly as
// 'provision <command> --help' prints it, on stdout.
func runHelp(env *runEnv, args []string) int {
	switch {
	case len(args) == 0 || args[0] == "help":
		printRootHelp(env.stdout)
		return ExitOK
	case len(args) > 1 && !(len(args) == 2 && (args[0] == "hosts" || args[0] == "config")):
		return env.usage("help", fmt.Sprintf("help takes one command, got %q", strings.Join(args, " ")), "Run 'provision help <command>'.")
	}
	c := lookup(args[0])
	if c == nil {
		return env.usage("help", fmt.Sprintf("unknown command %q%s", args[0], didYouMean(args[0])), hintCommands)
	}
	io.WriteString(env.stdout, helpText(c))
	return ExitOK
}

func printRootHelp(w io.Writer) { io.WriteString(w, rootHelpText()) }

func rootHelpText() string {
	var b strings.Builder
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-10s %s\n", c.name, c.summary)
	}
	return fmt.Sprintf(rootHelp, b.String()) + rootExitHelp()
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
	runID     string
	tokenFile string // userdata
	out       string // userdata
	force     bool   // renew
	check     bool   // renew
	dryRun    bool   // bootstrap, renew
	yes       bool   // revoke
	// quiet (-q, --quiet): the text output is the final line only, and
	// the logs are errors only unless --log-level is given.
	quiet      bool
	levelGiven bool // --log-level was given
}

// shortFlags are the flags that also have a one-letter spelling; the help,
// the man pages and the completions show both ("-q, --quiet").
var shortFlags = map[string]string{"quiet": "q"}

// isShort reports whether name is the one-letter spelling of a flag.
func isShort(name string) bool {
	for _, s := range shortFlags {
		if s == name {
			return true
		}
	}
	return false
}

// newFlags builds c's flag set: the common flags, --format when c takes it,
// then c's own.
func newFlags(c *command, env *runEnv) *flags {
	f := &flags{fs: flag.NewFlagSet("provision "+c.name, flag.ContinueOnError)}
	f.fs.SetOutput(env.stderr)
	switch {
	case c.noConfig:
	case c.noRoot:
		f.fs.StringVar(&f.config, "config", "/etc/provision/provision.toml", "config file `path`")
	default:
		f.fs.StringVar(&f.config, "config", "/etc/provision/provision.toml", "config file `path` (read under --root)")
	}
	if !c.noRoot {
		f.fs.StringVar(&f.root, "root", "/", "treat `dir` as the filesystem root for every path read or written")
	}
	if c.format {
		f.fs.StringVar(&f.format, "format", "text", "report format: "+alternatives(flagValues["format"]))
	}
	f.fs.StringVar(&f.logFormat, "log-format", "text", "log format on stderr: "+alternatives(flagValues["log-format"]))
	f.fs.StringVar(&f.logLevel, "log-level", "info", "log level: "+alternatives(flagValues["log-level"]))
	const quiet = "print errors and the final line only (logs at error level unless --log-level is given)"
	f.fs.BoolVar(&f.quiet, "quiet", false, quiet)
	f.fs.BoolVar(&f.quiet, shortFlags["quiet"], false, quiet)
	if c.flags != nil {
		c.flags(f)
	}
	f.cmd = c
	f.runID = env.runID
	f.fs.Usage = func() {} // printed by parse, to stdout when asked for
	return f
}

// synopsis is the Usage line after "provision ".
func (c *command) synopsisLine() string {
	if c.synopsis != "" {
		return c.synopsis
	}
	return c.name + " [flags]"
}

// helpText is what 'provision <command> --help' and 'provision help
// <command>' print: usage line, summary, the description (the usage text
// up to its first section), flags, the remaining sections and exit codes.
func helpText(c *command) string {
	f := newFlags(c, &runEnv{stdout: io.Discard, stderr: io.Discard})
	var defaults strings.Builder
	printFlags(&defaults, f.fs)
	desc, sections := splitUsage(c.usage)
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: provision %s\n\n%s\n\n", c.synopsisLine(), c.summary)
	if desc = strings.TrimRight(desc, "\n"); desc != "" {
		fmt.Fprintf(&b, "%s\n\n", desc)
	}
	fmt.Fprintf(&b, "Flags:\n%s\n", defaults.String())
	if sections != "" {
		fmt.Fprintf(&b, "%s\n", sections)
	}
	b.WriteString(exitHelp(c))
	return b.String()
}

// printFlags is flag.PrintDefaults' layout with the two dashes provision
// is used with everywhere else (README, man pages, completions, messages):
// "  --name arg" then the usage on the next line, indented by a tab, with
// the default when it is not the zero value.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(fl *flag.Flag) {
		if isShort(fl.Name) {
			return // shown with its long spelling
		}
		arg, usage := flag.UnquoteUsage(fl)
		if short, ok := shortFlags[fl.Name]; ok {
			fmt.Fprintf(w, "  -%s, --%s", short, fl.Name)
		} else {
			fmt.Fprintf(w, "  --%s", fl.Name)
		}
		if arg != "" {
			fmt.Fprintf(w, " %s", arg)
		}
		fmt.Fprintf(w, "\n    \t%s", strings.ReplaceAll(usage, "\n", "\n    \t"))
		if b, ok := fl.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			if fl.DefValue != "false" {
				fmt.Fprintf(w, " (default %s)", fl.DefValue)
			}
		} else if fl.DefValue != "" {
			fmt.Fprintf(w, " (default %q)", fl.DefValue)
		}
		fmt.Fprintln(w)
	})
}

// flagDashes rewrites the flag package's messages ("flag provided but not
// defined: -chek") to name flags with the two dashes the help shows; a
// one-letter flag keeps the one dash the user typed ("-q", not "--q").
var flagDashes = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(^|[: ])-([A-Za-z][A-Za-z0-9-]+)`) })

// dashes rewrites a flag package message to name each flag as the help
// shows it: two dashes, one for a one-letter spelling (-q).
func dashes(msg string) string {
	return flagDashes().ReplaceAllStringFunc(msg, func(m string) string {
		sep, name := m[:len(m)-len(strings.TrimLeft(m, ": "))], strings.TrimLeft(m, ": -")
		if isShort(name) {
			return sep + "-" + name
		}
		return sep + "--" + name
	})
}

// splitUsage cuts a usage text at its first section heading (an unindented
// line ending in ':'): the description before it, the sections from it.
func splitUsage(u string) (desc, sections string) {
	lines := strings.SplitAfter(u, "\n")
	for i, l := range lines {
		if isHeading(strings.TrimRight(l, "\n")) {
			return strings.Join(lines[:i], ""), strings.Join(lines[i:], "")
		}
	}
	return u, ""
}

func isHeading(l string) bool {
	return l != "" && l[0] != ' ' && l[0] != '\t' && strings.HasSuffix(l, ":") && !strings.Contains(strings.TrimSuffix(l, ":"), ":")
}

func (f *flags) printUsage(w io.Writer) { io.WriteString(w, helpText(f.cmd)) }

// parse parses args; ok=false means return code.
func (f *flags) parse(env *runEnv, args []string) (code int, ok bool) {
	f.fs.SetOutput(io.Discard) // parse errors are worded below
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			f.printUsage(env.stdout)
			return ExitOK, false
		}
		hint := fmt.Sprintf("Run 'provision %s --help' for usage.", f.cmd.name)
		if !f.cmd.format && strings.HasSuffix(err.Error(), " -format") {
			hint = fmt.Sprintf("provision %s prints text only and has no --format; a script uses its exit code%s.", f.cmd.name, map[bool]string{true: " (provision hosts check: 0 only when the override is right)"}[f.cmd.name == "hosts"])
		}
		return env.usage(f.cmd.name, dashes(err.Error()), hint), false
	}
	explicit := false
	f.fs.Visit(func(fl *flag.Flag) {
		explicit = explicit || fl.Name == "format"
		f.levelGiven = f.levelGiven || fl.Name == "log-level"
	})
	if f.format == "text" && !explicit && env.journal {
		// Under systemd the report is one JSON line in the journal, not
		// a page of text lines torn apart by other units' messages.
		f.format = "json"
	}
	for _, name := range []string{"format", "log-format", "log-level"} {
		fl := f.fs.Lookup(name)
		if fl == nil {
			continue
		}
		if v := fl.Value.String(); !slices.Contains(flagValues[name], v) {
			return env.usage(f.cmd.name, fmt.Sprintf("--%s must be %s, got %q", name, alternatives(flagValues[name]), v), fmt.Sprintf("Run 'provision %s --help' for usage.", f.cmd.name)), false
		}
	}
	if f.fs.NArg() > 0 {
		return env.usage(f.cmd.name, fmt.Sprintf("unexpected argument %q", f.fs.Arg(0)), ""), false
	}
	return 0, true
}

// logger returns the run's logger: every line carries the schema version,
// the command, the node and the run id (docs/logging.md).
func (f *flags) logger(w io.Writer, nodeID string) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.logLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	if f.quiet && !f.levelGiven {
		lvl = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if f.logFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(h).With(KeyLogSchema, LogSchema, KeyCommand, f.cmd.name, KeyNodeID, nodeID, KeyRunID, f.runID)
}
