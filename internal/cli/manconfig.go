package cli

import (
	"fmt"
	"path"
	"regexp"
	"strings"
	"sync"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/state"

	"github.com/gpuaas/provision/internal/tasks"
)

// provision.toml(5) and the FILES section of provision(8).
//
// The config page is generated from internal/config's key table, the table
// that also drives validation and docs/configuration.md, so the page cannot
// describe a key, default or range the code does not have. The paths in
// FILES are built from the same defaults and file names the code uses.

// markup is the inline markup of the key table's Doc: `code`, **strong**,
// [text](link).
var markup = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile("`[^`]*`|\\*\\*[^*]+\\*\\*|\\[[^\\]]+\\]\\([^)]+\\)")
})

// roffInline renders Doc markup as roff: code and strong in bold, a link as
// its text.
func roffInline(s string) string {
	var b strings.Builder
	last := 0
	for _, m := range markup().FindAllStringIndex(s, -1) {
		b.WriteString(roffEscape(s[last:m[0]]))
		tok := s[m[0]:m[1]]
		switch {
		case strings.HasPrefix(tok, "`"):
			fmt.Fprintf(&b, `\fB%s\fR`, roffEscape(strings.Trim(tok, "`")))
		case strings.HasPrefix(tok, "**"):
			fmt.Fprintf(&b, `\fB%s\fR`, roffEscape(strings.Trim(tok, "*")))
		default:
			text, _, _ := strings.Cut(strings.TrimPrefix(tok, "["), "]")
			b.WriteString(roffEscape(text))
		}
		last = m[1]
	}
	b.WriteString(roffEscape(s[last:]))
	return b.String()
}

// PlainInline is Doc markup as a reader of the rendered page sees it.
func PlainInline(s string) string {
	return markup().ReplaceAllStringFunc(s, func(tok string) string {
		switch {
		case strings.HasPrefix(tok, "`"):
			return strings.Trim(tok, "`")
		case strings.HasPrefix(tok, "**"):
			return strings.Trim(tok, "*")
		}
		text, _, _ := strings.Cut(strings.TrimPrefix(tok, "["), "]")
		return text
	})
}

// KeyFacts is the line a key's entry starts with: its kind, and whether it
// is required or what it defaults to, and its range.
func KeyFacts(k config.Key) string {
	facts := []string{string(k.Kind)}
	if k.Required {
		facts = append(facts, "required")
	} else if k.Default != "" {
		facts = append(facts, "default "+k.Default)
	} else {
		facts = append(facts, "optional, no default")
	}
	if r := k.Range(); r != "" {
		facts = append(facts, r)
	}
	return strings.Join(facts, "; ")
}

// configIntro is the DESCRIPTION of provision.toml(5): the rules every key
// follows, as docs/configuration.md states them.
var configIntro = []string{
	"provision reads its configuration from `" + config.DefaultPath + "` (`--config` names another; with `--root DIR` it is read under `DIR`, like every path below). The cloud-init user-data that `provision userdata` renders writes it; it holds no secret.",
	"Decoding is strict: an unknown or misspelled key is a config error (exit 3) naming the key, its line and the nearest known key. Every problem is found at once, each naming its key and line.",
	"Left out means default; written means validated: a default applies only to a key the file does not contain, and a key that is written is checked as written (`\"0s\"` or `\"\"` never silently mean the default).",
	"Durations use Go syntax (`500ms`, `5s`, `10m`, `1h30m`); ranges are inclusive. Paths must be absolute and clean (no `..`, `.`, `//` or trailing `/`), and the directories provision owns (`paths.pki_dir`, `paths.state_dir`) and `metrics.textfile_dir` must not be a shared system directory such as `/etc` or `/var/lib` itself.",
}

// ConfigManPage generates provision.toml(5) from the key table.
func ConfigManPage(version, date string) ManPage {
	desc := &manSection{title: "DESCRIPTION"}
	for _, p := range configIntro {
		fmt.Fprintf(&desc.body, ".PP\n%s\n", roffInline(p))
	}
	keys := &manSection{title: "KEYS"}
	table := "-"
	for _, k := range config.Keys {
		if t := k.Table(); t != table {
			table = t
			switch {
			case t == "":
				keys.body.WriteString(".SS Top level\n")
			case t == "hosts":
				keys.body.WriteString(".SS [[hosts]]\n")
			default:
				fmt.Fprintf(&keys.body, ".SS [%s]\n", roffEscape(t))
			}
		}
		fmt.Fprintf(&keys.body, ".TP\n\\fB%s\\fR\n%s\n.br\n%s", roffEscape(k.DocName()), roffEscape("("+KeyFacts(k)+")"), roffInline(k.Doc))
		if k.Example != "" {
			fmt.Fprintf(&keys.body, ". Example: %s", roffInline("`"+k.Example+"`"))
		}
		keys.body.WriteString(".\n")
	}
	example := &manSection{title: "EXAMPLE"}
	fmt.Fprintf(&example.body, ".PP\nThe smallest valid configuration: every required key, every other left to its default.\n.PP\n.EX\n")
	for _, l := range strings.Split(strings.TrimRight(MinimalConfig(), "\n"), "\n") {
		fmt.Fprintf(&example.body, "%s\n", roffEscape(l))
	}
	example.body.WriteString(".EE\n")
	files := &manSection{title: "FILES"}
	fileEntry(files, config.DefaultPath, "the configuration")
	fileEntry(files, "/usr/share/doc/provision/provision.toml.example", "an annotated example")
	fileEntry(files, "/usr/share/doc/provision/configuration.md", "the configuration reference, with the same key table")
	synopsis := &manSection{title: "SYNOPSIS"}
	fmt.Fprintf(&synopsis.body, ".B %s\n", roffEscape(config.DefaultPath))
	roff := renderPage(manMeta{name: "provision.toml", section: 5, summary: "configuration of provision(8)", version: version, date: date,
		seeAlso: []string{"provision(8)"}, generatedFrom: "internal/config's key table"}, []*manSection{synopsis, desc, keys, example, files})
	return ManPage{Name: "provision.toml", Section: 5, File: "provision.toml.5", Roff: roff}
}

// MinimalConfig is the smallest valid configuration: each required key
// with its example, in the table's order and tables.
func MinimalConfig() string {
	var b strings.Builder
	table := ""
	for _, k := range config.Keys {
		if !k.Required || k.Example == "" {
			continue
		}
		if t := k.Table(); t != table {
			table = t
			if t == "hosts" {
				b.WriteString("\n[[hosts]]\n")
			} else {
				fmt.Fprintf(&b, "\n[%s]\n", t)
			}
		}
		fmt.Fprintf(&b, "%s = %s\n", k.Name[strings.LastIndex(k.Name, ".")+1:], k.Example)
	}
	return b.String()
}

func fileEntry(s *manSection, file, what string) {
	fmt.Fprintf(&s.body, ".TP\n.I %s\n%s\n", roffEscape(file), roffInline(what))
}

// filesSection is provision(8)'s FILES: what provision reads and writes at
// the default paths (the [paths] keys of provision.toml(5) move them).
func filesSection() *manSection {
	s := &manSection{title: "FILES"}
	pki, stateDir := config.DefaultPKIDir, config.DefaultStateDir
	fileEntry(s, config.DefaultPath, "the configuration: provision.toml(5)")
	fileEntry(s, config.DefaultTokenFile, "the one-time enrollment token (`ca.token_file`); never logged or printed, deleted after use")
	fileEntry(s, config.DefaultHostsFile, "gets the managed block that maps the control-plane hostnames (`paths.hosts_file`); every other line is kept")
	fileEntry(s, path.Join(pki, credstore.KeyFile)+", "+credstore.CertFile+", "+credstore.CAFile,
		"the node's key (0600), certificate chain and CA bundle (`paths.pki_dir`, 0700): links through `"+credstore.CurrentLink+"` into a generation directory, replaced as one unit; what the node-agent reads")
	fileEntry(s, path.Join(stateDir, state.ReceiptFile), "written last by bootstrap, only after the mTLS tasks/wait proof succeeded")
	fileEntry(s, path.Join(stateDir, state.RenewalFile), "what the last renew attempt found and did")
	fileEntry(s, path.Join(stateDir, state.DoneDir, "<machine-id>"), "the per-install marker provision.service checks")
	fileEntry(s, path.Join(stateDir, tasks.Dir, "<id>.json"), "a task the proof received, handed off to the node-agent")
	fileEntry(s, path.Join(stateDir, state.PendingFile), "exists while an enrollment token is at the CA")
	fileEntry(s, path.Join(stateDir, LockFile), "held by the run in progress")
	fileEntry(s, path.Join(stateDir, state.RevokeFile), "what provision revoke did: each certificate and the CA's answer, every path removed")
	fileEntry(s, path.Join(config.DefaultTextfileDir, "provision_<command>.prom"), "node_exporter textfile metrics of bootstrap, verify and renew, when that directory exists (`metrics.textfile_dir`)")
	fileEntry(s, "/usr/share/doc/provision/", "the runbook, the configuration reference, the first-boot guide, and the licences of the modules linked into the binary")
	fileEntry(s, "/usr/share/provision/schemas/", "the JSON Schemas of every JSON document provision prints or writes (schema_version 1)")
	return s
}
