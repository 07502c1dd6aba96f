package cli

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// The man pages and the shell completions shipped in the package are
// generated from the command table at build time (internal/cli/gendocs, run
// by packaging/build-deb.sh), never written by hand: the man page of a
// command is its help text, the exact string 'provision <command> --help'
// prints, turned into roff section by section. TestManPagesMatchHelp and the
// packaging test render the pages with groff and check that every line of
// the help is in them.

// ManPage is one generated manual page.
type ManPage struct {
	Name    string // "provision", "provision-<command>" or "provision.toml"
	Section int    // 8 for the commands (system administration, run as root), 5 for the config file
	File    string // "provision-verify.8"
	Roff    []byte
}

// HelpText returns the help 'provision <command> --help' prints, or the
// top-level help for "" (what 'provision --help' prints).
func HelpText(command string) (string, error) {
	if command == "" {
		return rootHelpText(), nil
	}
	c := lookup(command)
	if c == nil {
		return "", fmt.Errorf("no command %q", command)
	}
	return helpText(c), nil
}

// CommandNames lists the commands, in the order of the help.
func CommandNames() []string {
	var n []string
	for _, c := range commands() {
		n = append(n, c.name)
	}
	return n
}

const rootSummary = "bootstrap a bare-metal GPU node into the control plane"

// ManPages generates provision(8) and provision-<command>(8) for every
// command: provision is a system administration command, run as root, so
// its pages are in section 8 (Debian policy 12.1). version and date
// (YYYY-MM-DD) go into the page footer. provision(8) adds a FILES section.
func ManPages(version, date string) []ManPage {
	var sub []string
	for _, c := range commands() {
		sub = append(sub, "provision-"+c.name+"(8)")
	}
	root := manPage(manMeta{name: "provision", section: 8, summary: rootSummary, version: version, date: date,
		seeAlso: append(sub, "provision.toml(5)"), extra: []*manSection{filesSection()}}, rootHelpText())
	pages := []ManPage{{Name: "provision", Section: 8, File: "provision.8", Roff: root}}
	for _, c := range commands() {
		name := "provision-" + c.name
		roff := manPage(manMeta{name: name, section: 8, summary: c.summary, version: version, date: date,
			seeAlso: []string{"provision(8)", "provision.toml(5)"}}, helpText(c))
		pages = append(pages, ManPage{Name: name, Section: 8, File: name + ".8", Roff: roff})
	}
	return pages
}

// WriteDocs writes the man pages to dir/man8/ and dir/man5/ and the
// completions to dir/completion/provision.bash and dir/completion/_provision.
func WriteDocs(dir, version, date string) error {
	files := map[string][]byte{
		filepath.Join("completion", "provision.bash"): BashCompletion(),
		filepath.Join("completion", "_provision"):     ZshCompletion(),
	}
	for _, p := range append(ManPages(version, date), ConfigManPage(version, date)) {
		files[filepath.Join(fmt.Sprintf("man%d", p.Section), p.File)] = p.Roff
	}
	for name, b := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// roffEscape makes s literal text in roff: backslashes, hyphens (\- is the
// ASCII hyphen-minus a reader copies into a shell), and a leading . or ' that
// would make the line a request.
func roffEscape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

var (
	columnsRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`\s{2,}`) })
	spacesRe  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`\s+`) })
)

// manSection is a section of a page being built.
type manSection struct {
	title string
	body  strings.Builder
}

// manPage turns a help text into a man page. The help's structure is
// small and fixed: a "Usage: ..." line or "Usage:" section (SYNOPSIS), prose
// paragraphs (DESCRIPTION), sections headed by an unindented line ending in
// ':' whose indented lines are a flag list ("Flags:", PrintDefaults' layout),
// verbatim commands ("Usage:", "Examples:") or two-column entries (every
// other section), and prose paragraphs inside a section.
// manWriter turns help text into man page sections, line by line.
type manWriter struct {
	order      []*manSection
	byTitle    map[string]*manSection
	cur        *manSection
	kind       string // prose, flags, verbatim, columns
	para       []string
	inVerbatim bool
	bodyIndent int  // the column where the current entry's text starts
	nested     bool // inside a list nested in an entry (.RS)
}

func (m *manWriter) section(title string) *manSection {
	if s, ok := m.byTitle[title]; ok {
		return s
	}
	s := &manSection{title: title}
	m.byTitle[title] = s
	m.order = append(m.order, s)
	return s
}

func (m *manWriter) flush() {
	if len(m.para) > 0 {
		if m.cur == nil {
			m.cur = m.section("DESCRIPTION")
		}
		fmt.Fprintf(&m.cur.body, ".PP\n%s\n", roffEscape(strings.Join(m.para, " ")))
		m.para = nil
	}
}

func (m *manWriter) closeVerbatim() {
	if m.inVerbatim {
		m.cur.body.WriteString(".EE\n")
		m.inVerbatim = false
	}
	m.closeNested()
}

// closeNested ends a list nested in an entry.
func (m *manWriter) closeNested() {
	if m.nested {
		m.cur.body.WriteString(".PD\n.RE\n")
		m.nested = false
	}
}

// heading starts the section a help heading ("Flags:", "Examples:") maps to.
func (m *manWriter) heading(line string) {
	m.flush()
	m.closeVerbatim()
	title := strings.ToUpper(strings.TrimSuffix(line, ":"))
	switch title {
	case "USAGE":
		title, m.kind = "SYNOPSIS", "verbatim"
	case "FLAGS":
		title, m.kind = "OPTIONS", "flags"
	case "EXAMPLES":
		m.kind = "verbatim"
	case "EXIT CODES":
		title, m.kind = "EXIT STATUS", "columns"
	default:
		m.kind = "columns"
	}
	m.cur = m.section(title)
}

// flag renders "--name arg" (printFlags); the usage follows on lines
// indented with a tab.
func (m *manWriter) flag(trimmed string) {
	tag, usage, _ := strings.Cut(trimmed, "\t")
	short := ""
	if s, long, ok := strings.Cut(tag, ", "); ok && !strings.HasPrefix(s, "--") {
		short, tag = s, long // "-q, --quiet": both spellings
	}
	fname, arg, _ := strings.Cut(tag, " ")
	m.cur.body.WriteString(".TP\n")
	if short != "" {
		fmt.Fprintf(&m.cur.body, "\\fB%s\\fR, ", roffEscape(short))
	}
	fmt.Fprintf(&m.cur.body, "\\fB%s\\fR", roffEscape(fname))
	if arg != "" {
		fmt.Fprintf(&m.cur.body, " \\fI%s\\fR", roffEscape(arg))
	}
	m.cur.body.WriteString("\n")
	if usage = strings.TrimSpace(usage); usage != "" {
		fmt.Fprintf(&m.cur.body, "%s\n", roffEscape(usage))
	}
}

// column renders "  tag  [name  ]text" as a tagged paragraph. Deeper
// lines continue the text, except a deeper line in columns past where the
// text starts: that is an item of a list inside the entry ("exit:" then
// "0  due", "30  not due"), rendered as a nested list, not run together.
func (m *manWriter) column(line, trimmed string) {
	indent := len(line) - len(strings.TrimLeft(line, " "))
	cols := columnsRe().Split(trimmed, -1)
	switch {
	case indent > 4 && indent > m.bodyIndent && len(cols) > 1 && m.bodyIndent > 0:
		if !m.nested {
			m.cur.body.WriteString(".RS\n.PD 0\n") // one item a line, as the help has them
			m.nested = true
		}
		fmt.Fprintf(&m.cur.body, ".TP\n\\fB%s\\fR\n%s\n", roffEscape(cols[0]), roffEscape(strings.Join(cols[1:], " ")))
		return
	case indent > 4 && m.nested:
		m.closeNested()
		m.cur.body.WriteString(".IP\n")
		fallthrough
	case indent > 4:
		fmt.Fprintf(&m.cur.body, "%s\n", roffEscape(spacesRe().ReplaceAllString(trimmed, " ")))
		return
	}
	m.closeNested()
	m.bodyIndent = 0
	if len(cols) > 1 {
		m.bodyIndent = strings.Index(line, cols[len(cols)-1])
	}
	fmt.Fprintf(&m.cur.body, ".TP\n\\fB%s\\fR\n", roffEscape(cols[0]))
	if len(cols) == 3 {
		fmt.Fprintf(&m.cur.body, "\\fB%s\\fR %s\n", roffEscape(cols[1]), roffEscape(cols[2]))
	} else if len(cols) > 1 {
		fmt.Fprintf(&m.cur.body, "%s\n", roffEscape(strings.Join(cols[1:], " ")))
	}
}

func (m *manWriter) line(line string) {
	trimmed := strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(line, "Usage: "):
		m.flush()
		m.closeVerbatim()
		m.cur = m.section("SYNOPSIS")
		fmt.Fprintf(&m.cur.body, ".B provision\n%s\n", roffEscape(strings.TrimPrefix(strings.TrimPrefix(line, "Usage: "), "provision ")))
		m.cur, m.kind = m.section("DESCRIPTION"), "prose"
	case trimmed == "":
		m.flush()
		m.closeNested()
	case isHeading(line):
		m.heading(line)
	case line[0] != ' ' && line[0] != '\t':
		m.closeVerbatim()
		m.para = append(m.para, trimmed)
	case m.kind == "verbatim":
		if !m.inVerbatim {
			m.cur.body.WriteString(".PP\n.EX\n")
			m.inVerbatim = true
		}
		fmt.Fprintf(&m.cur.body, "%s\n", roffEscape(trimmed))
	case m.kind == "flags" && strings.HasPrefix(trimmed, "-"):
		m.flag(trimmed)
	case m.kind == "flags":
		fmt.Fprintf(&m.cur.body, "%s\n", roffEscape(trimmed))
	default:
		m.column(line, trimmed)
	}
}

// manMeta is what a page has besides the text it is generated from.
type manMeta struct {
	name, summary string
	section       int
	version, date string
	seeAlso       []string      // "provision(8)"
	extra         []*manSection // sections after the help's, such as FILES
	generatedFrom string        // for the header comment; default: the help text
}

func manPage(meta manMeta, help string) []byte {
	m := &manWriter{byTitle: map[string]*manSection{}, kind: "prose"}
	for _, line := range strings.Split(strings.TrimRight(help, "\n"), "\n") {
		m.line(line)
	}
	m.flush()
	m.closeVerbatim()
	return renderPage(meta, append(m.order, meta.extra...))
}

// renderPage writes the page: header, NAME, the sections (SYNOPSIS and
// DESCRIPTION first, as man pages have them, the rest in their order), SEE
// ALSO.
func renderPage(meta manMeta, sections []*manSection) []byte {
	from := meta.generatedFrom
	if from == "" {
		from = "provision's help text"
	}
	var b strings.Builder
	fmt.Fprintf(&b, ".\\\" Generated from %s by internal/cli (gendocs); do not edit.\n", from)
	fmt.Fprintf(&b, ".TH %s %d %q %q \"provision manual\"\n.nh\n.ad l\n", strings.ToUpper(roffEscape(meta.name)), meta.section, meta.date, "provision "+meta.version)
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n", roffEscape(meta.name), roffEscape(meta.summary))
	sort.SliceStable(sections, func(i, j int) bool { return rank(sections[i].title) < rank(sections[j].title) })
	for _, s := range sections {
		if s.body.Len() == 0 {
			continue
		}
		fmt.Fprintf(&b, ".SH %s\n%s", s.title, s.body.String())
	}
	b.WriteString(".SH SEE ALSO\n")
	for i, s := range meta.seeAlso {
		sep := ",\n"
		if i == len(meta.seeAlso)-1 {
			sep = "\n"
		}
		page, sec, _ := strings.Cut(strings.TrimSuffix(s, ")"), "(")
		fmt.Fprintf(&b, ".BR %s (%s)%s", roffEscape(page), sec, sep)
	}
	b.WriteString(".PP\nThe runbook, the configuration reference and the first\\-boot guide in\n.IR /usr/share/doc/provision/ .\n")
	return []byte(b.String())
}

func rank(title string) int {
	switch title {
	case "SYNOPSIS":
		return 0
	case "DESCRIPTION":
		return 1
	}
	return 2
}

// completionFlag is one flag of one command, for the completions.
type completionFlag struct {
	name, usage string
	values      []string // fixed set
	path        string   // "file" or "dir"
	boolean     bool     // a switch: takes no value
}

func completionFlags(c *command) []completionFlag {
	f := newFlags(c, &runEnv{stdout: io.Discard, stderr: io.Discard})
	var out []completionFlag
	for _, name := range flagNames(f) {
		if isShort(name) {
			continue // completed with its long spelling
		}
		fl := f.fs.Lookup(name)
		_, usage := flag.UnquoteUsage(fl)
		b, _ := fl.Value.(interface{ IsBoolFlag() bool })
		out = append(out, completionFlag{name: name, usage: usage, values: flagValues[name], path: flagPaths[name], boolean: b != nil && b.IsBoolFlag()})
	}
	return out
}

func flagNames(f *flags) []string {
	var n []string
	f.fs.VisitAll(func(fl *flag.Flag) { n = append(n, fl.Name) })
	return n
}

// subcommands are the words a command takes before its flags.
var subcommands = map[string][]string{"hosts": {"apply", "show", "check", "remove"}, "config": {"check"}}

// BashCompletion is the bash completion script for provision, generated
// from the command table: commands, hosts' subcommands, each command's
// flags, the fixed values of --format, --log-format and --log-level, files
// and directories for the path flags.
func BashCompletion() []byte {
	var b strings.Builder
	b.WriteString(`# bash completion for provision(8). Generated from provision's command table
# by internal/cli (gendocs); do not edit.
_provision() {
	local cur prev cword
	local -a words
	cur=${COMP_WORDS[COMP_CWORD]}
	prev=${COMP_WORDS[COMP_CWORD-1]}
	words=("${COMP_WORDS[@]}")
	cword=$COMP_CWORD
	if [[ $cur == -*=* ]]; then
		prev=${cur%%=*}
		cur=${cur#*=}
	fi
	if ((cword == 1)); then
		COMPREPLY=($(compgen -W "` + strings.Join(CommandNames(), " ") + ` help --help --version" -- "$cur"))
		return
	fi
	case $prev in
`)
	seen := map[string]bool{}
	var valueCases, pathCases []string
	for _, c := range commands() {
		for _, fl := range completionFlags(c) {
			if seen[fl.name] {
				continue
			}
			seen[fl.name] = true
			switch {
			case fl.boolean: // a switch: the next word is not its value
			case fl.values != nil:
				valueCases = append(valueCases, fmt.Sprintf("\t--%s | -%s)\n\t\tCOMPREPLY=($(compgen -W %q -- \"$cur\"))\n\t\treturn\n\t\t;;\n", fl.name, fl.name, strings.Join(fl.values, " ")))
			case fl.path == "dir":
				pathCases = append(pathCases, fmt.Sprintf("\t--%s | -%s)\n\t\tcompopt -o filenames 2>/dev/null\n\t\tCOMPREPLY=($(compgen -d -- \"$cur\"))\n\t\treturn\n\t\t;;\n", fl.name, fl.name))
			default:
				pathCases = append(pathCases, fmt.Sprintf("\t--%s | -%s)\n\t\tcompopt -o filenames 2>/dev/null\n\t\tCOMPREPLY=($(compgen -f -- \"$cur\"))\n\t\treturn\n\t\t;;\n", fl.name, fl.name))
			}
		}
	}
	for _, s := range append(valueCases, pathCases...) {
		b.WriteString(s)
	}
	b.WriteString("\tesac\n\tlocal flags=\"\"\n\tcase ${words[1]} in\n")
	b.WriteString("\thelp)\n\t\t((cword == 2)) && COMPREPLY=($(compgen -W \"" + strings.Join(CommandNames(), " ") + "\" -- \"$cur\"))\n\t\treturn\n\t\t;;\n")
	for _, c := range commands() {
		var fl []string
		for _, f := range completionFlags(c) {
			fl = append(fl, "--"+f.name)
			if short, ok := shortFlags[f.name]; ok {
				fl = append(fl, "-"+short)
			}
		}
		fl = append(fl, "--help")
		fmt.Fprintf(&b, "\t%s)\n", c.name)
		if subs := subcommands[c.name]; subs != nil {
			fmt.Fprintf(&b, "\t\tif ((cword == 2)); then\n\t\t\tCOMPREPLY=($(compgen -W %q -- \"$cur\"))\n\t\t\treturn\n\t\tfi\n", strings.Join(append(subs, "--help"), " "))
		}
		fmt.Fprintf(&b, "\t\tflags=%q\n\t\t;;\n", strings.Join(fl, " "))
	}
	b.WriteString("\t*)\n\t\treturn\n\t\t;;\n\tesac\n\tCOMPREPLY=($(compgen -W \"$flags\" -- \"$cur\"))\n}\ncomplete -F _provision provision\n")
	return []byte(b.String())
}

// zshQuote escapes s for a single-quoted _arguments spec description.
func zshQuote(s string) string {
	s = strings.NewReplacer(`'`, `'\''`, `[`, `\[`, `]`, `\]`, `:`, `\:`).Replace(s)
	return s
}

// ZshCompletion is the zsh completion function (_provision), generated from
// the same table as BashCompletion.
func ZshCompletion() []byte {
	var b strings.Builder
	b.WriteString("#compdef provision\n# zsh completion for provision(8). Generated from provision's command table\n# by internal/cli (gendocs); do not edit.\n\n_provision() {\n\tlocal curcontext=\"$curcontext\" state line\n\ttypeset -A opt_args\n\tlocal -a commands\n\tcommands=(\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "\t\t'%s:%s'\n", c.name, zshQuote(c.summary))
	}
	b.WriteString("\t\t'help:print the help of a command'\n\t)\n")
	b.WriteString("\t_arguments -C '(- *)--help[print the help]' '(- *)--version[print the version]' '1: :->command' '*:: :->args' && return\n")
	b.WriteString("\tcase $state in\n\tcommand)\n\t\t_describe -t commands 'provision command' commands\n\t\t;;\n\targs)\n\t\tcase $words[1] in\n")
	b.WriteString("\t\thelp)\n\t\t\t_arguments '1:command:(" + strings.Join(CommandNames(), " ") + ")'\n\t\t\t;;\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "\t\t%s)\n\t\t\t_arguments \\\n", c.name)
		if subs := subcommands[c.name]; subs != nil {
			fmt.Fprintf(&b, "\t\t\t\t'1:subcommand:(%s)' \\\n", strings.Join(subs, " "))
		}
		for _, f := range completionFlags(c) {
			if f.boolean {
				spec := "'--" + f.name + "[" + zshQuote(f.usage) + "]'"
				if short, ok := shortFlags[f.name]; ok {
					// Either spelling, and not both: zsh's exclusion list.
					spec = "'(-" + short + " --" + f.name + ")'{-" + short + ",--" + f.name + "}'[" + zshQuote(f.usage) + "]'"
				}
				fmt.Fprintf(&b, "\t\t\t\t%s \\\n", spec)
				continue
			}
			action := "_files"
			switch {
			case f.values != nil:
				action = "(" + strings.Join(f.values, " ") + ")"
			case f.path == "dir":
				action = "_files -/"
			}
			fmt.Fprintf(&b, "\t\t\t\t'--%s=[%s]:%s:%s' \\\n", f.name, zshQuote(f.usage), f.name, action)
		}
		b.WriteString("\t\t\t\t'--help[print the help]'\n\t\t\t;;\n")
	}
	b.WriteString("\t\tesac\n\t\t;;\n\tesac\n}\n\n_provision \"$@\"\n")
	return []byte(b.String())
}
