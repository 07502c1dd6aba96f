package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/system"
)

var configCmd = &command{
	name:     "config",
	synopsis: "config check [flags]",
	format:   true,
	exits:    codes(ExitConfig),
	summary:  "check a config file alone: every problem with its key and line, no network, no state",
	usage: `Subcommands:
  check    read the config as every command reads it (strict TOML, every key,
           default and rule of provision.toml(5)) and list every problem with
           its key and line (exit codes below: 3 when it is not valid)

Nothing but the config file is read: no network, no credentials, no state,
no lock, nothing written, so it runs in an image build or in CI before the
config ships (kubeadm config validate is the same question). What only the
node can answer is left to the commands that run there: whether the group
paths.key_group names exists, and whether state_dir and pki_dir are
provision's own directories. --format json prints one JSON object: ok,
config, node_id, problems[] (key, line, message; line 0 when the problem is
not on one line), summary, remedy and exit_code.

Examples:
  provision config check
  provision config check --config node-0042.toml --root /
  provision config check --config build/provision.toml --format json | jq '.problems[]'
`,
}

func init() { configCmd.run = runConfig }

// configProblem is one problem in config check's JSON.
type configProblem struct {
	Key     string `json:"key"`
	Line    int    `json:"line"`
	Message string `json:"message"`
}

// configCheckDoc is config check's JSON document. Field names are a
// contract (packaging/schemas/config-check.schema.json).
type configCheckDoc struct {
	SchemaVersion int             `json:"schema_version"`
	OK            bool            `json:"ok"`
	Command       string          `json:"command"`
	Config        string          `json:"config"`
	NodeID        string          `json:"node_id"`
	Problems      []configProblem `json:"problems"`
	FailedLayer   diag.Layer      `json:"failed_layer"`
	Owner         diag.Owner      `json:"owner"`
	Summary       string          `json:"summary"`
	Remedy        string          `json:"remedy"`
	ExitCode      int             `json:"exit_code"`
}

// maxTextProblems caps the problems the text lists (JSON lists all): a
// file that is not a provision config at all can have thousands.
const maxTextProblems = 100

func runConfig(_ context.Context, env *runEnv, args []string) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			f := newFlags(configCmd, env)
			f.parse(env, args)
			return ExitOK
		}
		return env.usage("config", "config needs a subcommand: check (provision config --help)", "")
	}
	if args[0] != "check" {
		return env.usage("config", fmt.Sprintf("unknown config subcommand %q: want check", args[0]), "")
	}
	f := newFlags(configCmd, env)
	if code, ok := f.parse(env, args[1:]); !ok {
		return code
	}
	host, err := system.New(f.root)
	if err != nil {
		return env.usage("config", err.Error(), "--root must name an existing directory")
	}
	doc := checkConfig(host.Path(f.config), f.config)
	if f.format == "json" {
		b, _ := json.Marshal(doc)
		fmt.Fprintln(env.stdout, string(b))
		return doc.ExitCode
	}
	printConfigCheck(env.stdout, doc, f.quiet)
	return doc.ExitCode
}

// checkConfig reads the config at path (named as the operator named it)
// exactly as every command loads it, and nothing else.
func checkConfig(path, name string) *configCheckDoc {
	doc := &configCheckDoc{SchemaVersion: SchemaVersion, Command: "config check", Config: name, Problems: []configProblem{}}
	cfg, err := config.Load(path)
	if err == nil {
		doc.OK, doc.NodeID = true, cfg.NodeID
		doc.Summary = fmt.Sprintf("%s is valid: node_id %s, CA %s, node API %s, %d [[hosts]] entr%s", name, cfg.NodeID, cfg.CA.URL, cfg.NodeAPI.URL, len(cfg.Hosts), map[bool]string{true: "y", false: "ies"}[len(cfg.Hosts) == 1])
		return doc
	}
	doc.FailedLayer, doc.Owner, doc.ExitCode = diag.Config, diag.Node, ExitConfig
	var ce *config.Error
	if !errors.As(err, &ce) {
		doc.Problems = append(doc.Problems, configProblem{Key: "--config", Message: err.Error()})
	} else {
		for _, p := range ce.Problems {
			doc.Problems = append(doc.Problems, configProblem{Key: p.Key, Line: p.Line, Message: p.Msg})
		}
	}
	doc.Summary = fmt.Sprintf("%s: %d problem%s", name, len(doc.Problems), map[bool]string{true: "", false: "s"}[len(doc.Problems) == 1])
	doc.Remedy = "fix the named keys in " + name + " (provision.toml(5), docs/configuration.md) and check again"
	if len(doc.Problems) == 1 && doc.Problems[0].Key == "--config" {
		doc.Remedy = "point --config at the config file (read under --root)"
	}
	return doc
}

// printConfigCheck is config check for a person: a line per problem, then
// the final line; quiet, the final line only.
func printConfigCheck(w io.Writer, doc *configCheckDoc, quiet bool) {
	if !quiet {
		for i, p := range doc.Problems {
			if i == maxTextProblems {
				fmt.Fprintf(w, "  and %d more problems (--format json lists them all)\n", len(doc.Problems)-i)
				break
			}
			where := ""
			if p.Line > 0 {
				where = fmt.Sprintf(" (line %d)", p.Line)
			}
			fmt.Fprintf(w, "  %s%s: %s\n", clean(p.Key), where, clean(p.Message))
		}
	}
	if doc.OK {
		fmt.Fprintf(w, "provision config check: %s\n", clean(doc.Summary))
		return
	}
	fmt.Fprintf(w, "provision config check: FAILED at layer %s (owner: %s): %s. Next: %s (exit %d)\n", doc.FailedLayer, doc.Owner, clean(doc.Summary), clean(doc.Remedy), doc.ExitCode)
}
