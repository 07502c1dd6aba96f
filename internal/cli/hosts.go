package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/gpuaas/provision/internal/bootstrap"
	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/hosts"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/system"
)

var hostsCmd = &command{
	name:     "hosts",
	synopsis: "hosts apply|show|check|remove [flags]",
	summary:  "manage only the /etc/hosts override block: apply, show, check, remove",
	exits:    codes(ExitConfig, 10),
	exitNotes: map[int]exitNote{
		ExitOK: {"ok", "done; check and show: the override is right"},
		10:     {"hosts", "check and show: the override is missing or wrong; apply and remove: the block could not be written"},
	},
	usage: `Subcommands:
  apply    write the managed block from the config's [[hosts]] (nothing else changes)
  show     print the managed block and whether it matches the config
  check    the same judgement for scripts: exit 0 only when the override is right
  remove   delete the managed block (every other line is kept)

apply, show and check judge the file exactly as verify's hosts-block check
does; a failure is reported like any other (layer hosts, owner node).

Examples:
  provision hosts apply
  provision hosts show --config /etc/provision/provision.toml
  provision hosts check || provision hosts apply
  provision hosts remove --root /mnt/target
`,
}

func init() { hostsCmd.run = runHosts }

func runHosts(_ context.Context, env *runEnv, args []string) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			f := newFlags(hostsCmd, env)
			f.parse(env, args)
			return ExitOK
		}
		return env.usage("hosts", "hosts needs a subcommand: apply, show, check or remove (provision hosts --help)", "")
	}
	sub := args[0]
	do, ok := map[string]func(*hostsRun) int{"apply": hostsApply, "show": hostsShow, "check": hostsShow, "remove": hostsRemove}[sub]
	if !ok {
		return env.usage("hosts", fmt.Sprintf("unknown hosts subcommand %q: want apply, show, check or remove", sub), "")
	}
	f := newFlags(hostsCmd, env)
	if code, ok := f.parse(env, args[1:]); !ok {
		return code
	}
	cfg, host, code, ok := load(env, f, "hosts "+sub)
	if !ok {
		return code
	}
	h := &hostsRun{env: env, f: f, cfg: cfg, host: host, sub: sub}
	// The file is reached under the path rule (hosts.Open): a symlinked
	// hosts file is edited at its target, which stays the file the link
	// names, when root owns the link in a directory only root can write.
	file, err := hosts.Open(host, cfg.Paths.HostsFile, false)
	switch {
	case err == nil:
		defer file.Close()
		h.file = file
		if file.Node != filepath.Clean(cfg.Paths.HostsFile) {
			h.via = " (a symbolic link: edited its target " + file.Node + ")"
		}
	case !errors.Is(err, fs.ErrNotExist):
		return h.failErr(err)
	}
	return do(h)
}

// hostsRun is one 'provision hosts' subcommand: apply, show (or check) and
// remove all judge the file with hosts.Check, the judgement verify's
// hosts-block check and bootstrap use, and report failures as they do.
type hostsRun struct {
	env  *runEnv
	f    *flags
	cfg  *config.Config
	host *system.Host
	sub  string
	file *hosts.File // nil when its directory does not exist
	via  string
}

// read reads the hosts file; a missing directory is a missing file.
func (h *hostsRun) read() ([]byte, error) {
	if h.file == nil {
		return nil, os.ErrNotExist
	}
	return h.file.Read()
}

// fail reports a hosts failure the way every command reports one: the
// report, its last line naming layer, owner and the next step, exit 10.
func (h *hostsRun) fail(msg, remedy string) int {
	return printReport(h.env, h.f, report.Failed("hosts "+h.sub, h.cfg.NodeID, "hosts-"+h.sub,
		&diag.Finding{Layer: diag.Hosts, Owner: diag.Node, Summary: msg, Remedy: remedy}))
}

func (h *hostsRun) failErr(err error) int {
	msg, remedy := hosts.Describe(h.cfg.Paths.HostsFile, err)
	return h.fail(msg, remedy+"; nothing was changed")
}

func hostsApply(h *hostsRun) int {
	s, err := hosts.ApplyTo(h.host, h.cfg.Paths.HostsFile, bootstrap.HostEntries(h.cfg))
	if err != nil {
		return h.failErr(err)
	}
	switch s {
	case hosts.Unchanged:
		fmt.Fprintf(h.env.stdout, "%s: managed block already up to date%s\n", h.cfg.Paths.HostsFile, h.via)
	case hosts.InPlace:
		fmt.Fprintf(h.env.stdout, "%s: managed block written in place%s (the file is a bind mount and cannot be renamed over; the write is not crash-atomic)\n", h.cfg.Paths.HostsFile, h.via)
	default:
		fmt.Fprintf(h.env.stdout, "%s: managed block written%s\n", h.cfg.Paths.HostsFile, h.via)
	}
	return ExitOK
}

func hostsRemove(h *hostsRun) int {
	old, err := h.read()
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(h.env.stdout, "%s: does not exist; nothing to remove\n", h.cfg.Paths.HostsFile)
		return ExitOK
	}
	if err != nil {
		return h.failErr(err)
	}
	nb, changed, err := hosts.Remove(old)
	if err != nil {
		return h.failErr(err)
	}
	if !changed {
		fmt.Fprintf(h.env.stdout, "%s: no managed block; nothing to remove\n", h.cfg.Paths.HostsFile)
		return ExitOK
	}
	if _, err := h.file.Write(old, nb, h.host.Hook); err != nil {
		return h.fail(fmt.Sprintf("writing %s: %v", h.cfg.Paths.HostsFile, err), diag.Writable(h.cfg.Paths.HostsFile)+", then run again; nothing was changed")
	}
	fmt.Fprintf(h.env.stdout, "%s: managed block removed%s\n", h.cfg.Paths.HostsFile, h.via)
	return ExitOK
}

// hostsShow prints the managed block, then judges the file; 'check' is the
// same for scripts: exit 0 only when the file carries the override.
func hostsShow(h *hostsRun) int {
	old, err := h.read()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return h.failErr(err)
	}
	if blk, ferr := hosts.Find(old); ferr == nil && blk.Present && !h.f.quiet {
		lines := strings.Split(string(old), "\n")
		for i := blk.Begin; i <= blk.End && i < len(lines); i++ {
			fmt.Fprintln(h.env.stdout, strings.TrimRight(lines[i], "\r"))
		}
	}
	if err := hosts.Check(old, bootstrap.HostEntries(h.cfg)); err != nil {
		msg, remedy := hosts.Describe(h.cfg.Paths.HostsFile, err)
		return h.fail(msg, remedy)
	}
	fmt.Fprintf(h.env.stdout, "%s: the managed block matches the config\n", h.cfg.Paths.HostsFile)
	return ExitOK
}
