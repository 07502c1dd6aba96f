package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/bootstrap"
	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/hosts"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/internal/verify"
)

var bootstrapCmd = &command{
	name:    "bootstrap",
	format:  true,
	summary: "write the hosts override, enroll, install credentials, prove tasks/wait, write the receipt",
	usage: `Runs the whole sequence: (1) the /etc/hosts managed block, (2) the CA's current
roots, pinned by ca.fingerprint, (3) keep the installed certificate only if it
is valid, not near expiry, for node_id and chains to a current root, otherwise
(4) enroll with the one-time token in ca.token_file, (5) write key, chain and
CA bundle as one unit, (6) prove with a real mTLS GET of tasks/wait through the
ingress, then (7) write state_dir/receipt.json. Transient failures are retried
with jittered backoff until bootstrap.deadline; others stop at once. The
outcome is left as node_exporter metrics in metrics.textfile_dir
(provision_bootstrap.prom) when that directory exists.

Idempotent: on a bootstrapped node it re-proves and exits 0 without enrolling.

Examples:
  provision bootstrap
  provision bootstrap --config /etc/provision/provision.toml --format json
  provision bootstrap --root /mnt/target        # an installer's chroot
`,
}

var verifyCmd = &command{
	name:    "verify",
	format:  true,
	summary: "read-only layered diagnosis ending with a real mTLS tasks/wait",
	usage: `Checks every layer between the node and the node API, in order, and names the
first one that fails, its owner and the fix. A check whose dependency failed
is reported as skipped, so one root cause shows instead of a cascade. Writes
nothing but a task the API hands to the proof's tasks/wait (that task is
dequeued, so it is handed off to state_dir/tasks/<id>.json as bootstrap does)
and its node_exporter metrics, metrics.textfile_dir/provision_verify.prom.
Network checks use bootstrap.request_timeout each, without retries.

Layers: config hosts clock credentials ca tcp tls-server tls-client-auth route
identity tasks-wait. Owners: node ca network ingress api.

Examples:
  provision verify
  provision verify --format json | jq '{ok, failed_layer, owner}'
  provision verify --format json | jq '.checks[] | select(.status=="fail")'
`,
}

var hostsCmd = &command{
	name:     "hosts",
	synopsis: "hosts apply|show|check|remove [flags]",
	summary:  "manage only the /etc/hosts override block: apply, show, remove",
	usage: `Subcommands:
  apply    write the managed block from the config's [[hosts]] (nothing else changes)
  show     print the managed block and whether it matches the config
  check    the same judgement for scripts: exit 0 only when the override is right
  remove   delete the managed block (every other line is kept)

apply, show and check judge the file exactly as verify's hosts-block check
does; a failure is reported like any other (layer hosts, owner node, exit 10).

Examples:
  provision hosts apply
  provision hosts show --config /etc/provision/provision.toml
  provision hosts check || provision hosts apply
  provision hosts remove --root /mnt/target
`,
}

var versionCmd = &command{
	name:    "version",
	format:  true,
	summary: "print the version, the commit and what it was built with",
	usage: `Prints the version, the commit it was built from, the Go version and the
version of the step-ca client module (github.com/smallstep/certificates) linked
into the binary. --format json prints them as one JSON object with the keys
version, commit, go_version, step_ca_client_module and step_ca_client_version.

Examples:
  provision version
  provision version --format json | jq -r .commit
`,
}

func init() {
	bootstrapCmd.run = runBootstrap
	verifyCmd.run = runVerify
	hostsCmd.run = runHosts
	versionCmd.run = runVersion
}

// caClientModule is the module provision enrolls with (its ca package is the
// step-ca client).
const caClientModule = "github.com/smallstep/certificates"

// BuildInfo is what 'provision version' reports.
type BuildInfo struct {
	Version         string `json:"version"`
	Commit          string `json:"commit"`
	GoVersion       string `json:"go_version"`
	CAClientModule  string `json:"step_ca_client_module"`
	CAClientVersion string `json:"step_ca_client_version"`
}

// commit may be set at build time with -ldflags "-X
// github.com/gpuaas/provision/internal/cli.commit=..."; otherwise it is read
// from the Go toolchain's VCS stamp.
var commit = ""

// ReadBuildInfo returns the build's version, commit, Go version and step-ca
// client version; "unknown" for what the binary does not record (a test
// binary has no VCS stamp).
func ReadBuildInfo() BuildInfo {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return buildInfoFrom(bi, Version(), commit)
}

func buildInfoFrom(bi *debug.BuildInfo, version, commit string) BuildInfo {
	info := BuildInfo{Version: version, Commit: commit, GoVersion: runtime.Version(), CAClientModule: caClientModule, CAClientVersion: "unknown"}
	if bi != nil {
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		rev, dirty := "", false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if info.Commit == "" && rev != "" {
			info.Commit = rev
			if dirty {
				info.Commit += "-dirty"
			}
		}
		for _, d := range bi.Deps {
			if d.Path == caClientModule {
				info.CAClientVersion = d.Version
				if d.Replace != nil && d.Replace.Version != "" {
					info.CAClientVersion = d.Replace.Version
				}
			}
		}
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	return info
}

func runVersion(_ context.Context, env *runEnv, args []string) int {
	f := newFlags(versionCmd, env)
	if code, ok := f.parse(env, args); !ok {
		return code
	}
	info := ReadBuildInfo()
	if f.format == "json" {
		b, _ := json.MarshalIndent(info, "", "  ")
		fmt.Fprintln(env.stdout, string(b))
		return ExitOK
	}
	fmt.Fprintf(env.stdout, "provision %s\ncommit: %s\ngo: %s\nstep-ca client: %s %s\n", info.Version, info.Commit, info.GoVersion, info.CAClientModule, info.CAClientVersion)
	return ExitOK
}

// load resolves --root and reads the config. On failure it prints the
// report and returns the exit code.
func load(env *runEnv, f *flags, cmd string) (*config.Config, *system.Host, int, bool) {
	host, err := system.New(f.root)
	if err != nil {
		return nil, nil, env.usage(cmd, err.Error(), "--root must name an existing directory"), false
	}
	if env.ctx != nil {
		host.Hook = system.HookFrom(env.ctx) // crash points: set only by the tests' build of main
	}
	cfg, err := config.Load(host.Path(f.config))
	if err != nil {
		var ce *config.Error
		msg := err.Error()
		remedy := "fix the named keys in " + f.config + " (see docs/configuration.md); nothing was changed"
		if errors.As(err, &ce) {
			ce.Path = f.config
			msg = ce.Error()
			if len(ce.Problems) == 1 && ce.Problems[0].Key == "--config" {
				remedy = "write the config to " + f.config + " (under --root) or point --config at it; see docs/configuration.md"
			}
		}
		rep := verify.Failed(cmd, "", "config", &diag.Finding{Layer: diag.Config, Owner: diag.Node, Summary: msg, Remedy: remedy})
		metricsForConfigFailure(env, f, host, rep)
		return nil, nil, printReport(env, f, rep), false
	}
	host.HostsFile = cfg.Paths.HostsFile
	return cfg, host, 0, true
}

func runBootstrap(ctx context.Context, env *runEnv, args []string) int {
	f := newFlags(bootstrapCmd, env)
	if code, ok := f.parse(env, args); !ok {
		return code
	}
	cfg, host, code, ok := load(env, f, "bootstrap")
	if !ok {
		return code
	}
	log := f.logger(env.stderr, cfg.NodeID)
	unlock, err := lock(ctx, host.Path(cfg.Paths.StateDir), cfg.Bootstrap.Deadline.Duration, log)
	if err != nil {
		var le *lockError
		if errors.As(err, &le) && le.busy {
			rep := verify.Failed("bootstrap", cfg.NodeID, "lock", &diag.Finding{Layer: LayerLock, Owner: diag.Node,
				Summary: err.Error(), Remedy: "another provision run on this node has not finished (see its logs); try again later", Transient: true})
			if f.format == "json" || interruptedBy(ctx) != nil {
				return printReport(env, f, rep)
			}
			fmt.Fprintf(env.stderr, "provision: error: %v; another provision run on this node has not finished (see its logs), try again later\n", err)
			return ExitLocked
		}
		return finish(env, f, cfg, host, log, verify.Failed("bootstrap", cfg.NodeID, "lock", &diag.Finding{Layer: diag.State, Owner: diag.Node,
			Summary: err.Error(), Remedy: "make " + cfg.Paths.StateDir + " writable by provision"}))
	}
	defer unlock()
	// pki_dir is provision's own, like state_dir: created 0700, tightened
	// (and said so) when others could write into it.
	pki := host.Path(cfg.Paths.PKIDir)
	if ds, err := system.EnsurePrivateDir(pki, true); err != nil {
		return finish(env, f, cfg, host, log, verify.Failed("bootstrap", cfg.NodeID, "pki-dir", &diag.Finding{Layer: diag.Credentials, Owner: diag.Node,
			Summary: err.Error(), Remedy: "make " + cfg.Paths.PKIDir + " a directory owned by root (or remove it), then run again"}))
	} else if ds.Tightened {
		log.Warn("pki directory was writable by other users; restricted it to 0700", "dir", cfg.Paths.PKIDir, "was", fmt.Sprintf("%04o", ds.WasMode))
	}
	out := bootstrap.Run(ctx, cfg, host, bootstrap.Options{Log: log, Version: Version(), Policy: retry.Default})
	if out.Report.OK && out.Task != nil {
		log.Info("task received during the proof and saved", "task_id", out.Task.ID, "dir", filepath.Join(cfg.Paths.StateDir, bootstrap.TasksDir))
	}
	return finish(env, f, cfg, host, log, out.Report)
}

func runVerify(ctx context.Context, env *runEnv, args []string) int {
	f := newFlags(verifyCmd, env)
	if code, ok := f.parse(env, args); !ok {
		return code
	}
	cfg, host, code, ok := load(env, f, "verify")
	if !ok {
		return code
	}
	log := f.logger(env.stderr, cfg.NodeID)
	budget := 4*cfg.Bootstrap.RequestTimeout.Duration + cfg.NodeAPI.WaitTimeout.Duration
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	start := time.Now()
	e := verify.NewEnv(cfg, host)
	results := verify.Run(ctx, e, verify.Checks(), log)
	rep := verify.NewReport("verify", cfg.NodeID, results, time.Since(start))
	// The proof's tasks/wait is the node-agent's: a task the API handed out
	// is dequeued there, so verify hands it off exactly as bootstrap does.
	if t, ok := e.Probed().HandedTask(); ok {
		rep.Task = json.RawMessage(t.Raw)
		path, err := bootstrap.SaveTask(host.Path(cfg.Paths.StateDir), t, host.Time(), host.Hook)
		if err != nil {
			return finish(env, f, cfg, host, log, verify.Failed("verify", cfg.NodeID, "task-save", &diag.Finding{Layer: diag.State, Owner: diag.Node,
				Summary:  "the proof received a task but it could not be handed off: " + err.Error(),
				Remedy:   "make " + cfg.Paths.StateDir + " writable, and give this task (in the evidence) to the node-agent by hand",
				Evidence: map[string]string{"task": string(t.Raw)}}))
		}
		log.Info("task received during the proof and handed off", "task_id", t.ID, "path", strings.TrimPrefix(path, strings.TrimSuffix(host.Path("/"), "/")))
	}
	return finish(env, f, cfg, host, log, rep)
}

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
	target, err := host.Resolve(cfg.Paths.HostsFile)
	if err != nil {
		target = cfg.Paths.HostsFile
	}
	h.path = host.Path(target)
	if target != filepath.Clean(cfg.Paths.HostsFile) {
		// A symlinked hosts file is edited at its target, which stays the
		// file the link names.
		h.via = " (a symbolic link: edited its target " + target + ")"
	}
	return do(h)
}

// hostsRun is one 'provision hosts' subcommand: apply, show (or check) and
// remove all judge the file with hosts.Check, the judgement verify's
// hosts-block check and bootstrap use, and report failures as they do.
type hostsRun struct {
	env       *runEnv
	f         *flags
	cfg       *config.Config
	host      *system.Host
	sub       string
	path, via string
}

// fail reports a hosts failure the way every command reports one: the
// report, its last line naming layer, owner and the next step, exit 10.
func (h *hostsRun) fail(msg, remedy string) int {
	return printReport(h.env, h.f, verify.Failed("hosts "+h.sub, h.cfg.NodeID, "hosts-"+h.sub,
		&diag.Finding{Layer: diag.Hosts, Owner: diag.Node, Summary: msg, Remedy: remedy}))
}

func (h *hostsRun) failErr(err error) int {
	msg, remedy := verify.HostsProblem(h.cfg.Paths.HostsFile, err)
	return h.fail(msg, remedy+"; nothing was changed")
}

func hostsApply(h *hostsRun) int {
	s, err := bootstrap.ApplyHosts(h.cfg, h.host)
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
	old, err := hosts.ReadFile(h.path)
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
	if _, err := hosts.Write(h.path, old, nb, h.host.Hook); err != nil {
		return h.fail(fmt.Sprintf("writing %s: %v", h.cfg.Paths.HostsFile, err), "make "+h.cfg.Paths.HostsFile+" writable, then run again; nothing was changed")
	}
	fmt.Fprintf(h.env.stdout, "%s: managed block removed%s\n", h.cfg.Paths.HostsFile, h.via)
	return ExitOK
}

// hostsShow prints the managed block, then judges the file; 'check' is the
// same for scripts: exit 0 only when the file carries the override.
func hostsShow(h *hostsRun) int {
	old, err := hosts.ReadFile(h.path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return h.failErr(err)
	}
	if blk, ferr := hosts.Find(old); ferr == nil && blk.Present {
		lines := strings.Split(string(old), "\n")
		for i := blk.Begin; i <= blk.End && i < len(lines); i++ {
			fmt.Fprintln(h.env.stdout, strings.TrimRight(lines[i], "\r"))
		}
	}
	if err := hosts.Check(old, bootstrap.HostEntries(h.cfg)); err != nil {
		msg, remedy := verify.HostsProblem(h.cfg.Paths.HostsFile, err)
		return h.fail(msg, remedy)
	}
	fmt.Fprintf(h.env.stdout, "%s: the managed block matches the config\n", h.cfg.Paths.HostsFile)
	return ExitOK
}
