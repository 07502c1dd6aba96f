package cli

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"

	"github.com/gpuaas/provision/internal/bootstrap"
	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/internal/tasks"
	"github.com/gpuaas/provision/internal/verify"
)

var bootstrapCmd = &command{
	name:    "bootstrap",
	format:  true,
	exits:   codes(ExitConfig, ExitLocked, layersAll, exitSignals),
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

--dry-run shows what the run would do and changes nothing: it reads the config,
decides the hosts block (and shows it), fetches the CA's roots (the pinned GET
the run makes first), takes the same credential verdict and plan (keep,
refresh, renew, renew-after-expiry, enroll, adopt), checks the clock, and reads
and checks the token it would send, then stops. No token is sent, no
certificate is requested, no key mode is changed, nothing is written (no lock,
no metrics, no record) and no tasks/wait is made (it would take a task).
It exits 0 when nothing it can see stands in the way, or with the exit code of
the layer the run would stop at (3, 10, 11, 13, 20, ...).

Examples:
  provision bootstrap
  provision bootstrap --dry-run
  provision bootstrap --config /etc/provision/provision.toml --format json
  provision bootstrap --root /mnt/target        # an installer's chroot
`,
}

func init() {
	bootstrapCmd.run = runBootstrap
	bootstrapCmd.flags = func(f *flags) {
		f.fs.BoolVar(&f.dryRun, "dry-run", false, "show what the run would do, change nothing: no token sent, no certificate requested, nothing written")
	}
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
	if f.dryRun {
		return dryRun(ctx, env, f, cfg, host, log)
	}
	return locked(ctx, env, f, cfg, host, log, func(ctx context.Context, o pipeline.Options) *pipeline.Outcome {
		// pki_dir and state_dir were claimed as provision's own by load
		// (claimDirs): created 0700, refused when they hold other files.
		out := bootstrap.Run(ctx, cfg, host, o)
		logOutcomeTask(log, cfg, out)
		return out
	})
}

// pipelineOptions are the options of a bootstrap or renew run: verify's
// ladder is the proof, so their last line and verify's answer agree.
func pipelineOptions(log *slog.Logger, force bool) pipeline.Options {
	return pipeline.Options{Log: log, Version: Version(), Policy: retry.Default, Ladder: verify.Ladder, Force: force,
		Invocation: unitInvocation(os.Getenv, os.Getpid())}
}

// unitInvocation is systemd's INVOCATION_ID when this process is a unit's
// own (ExecStart=), else "": only such a run can be a restart that spreads
// itself (pipeline.RestartSplay). systemd 248 and later also set
// SYSTEMD_EXEC_PID to the process it started, so a provision run from a
// shell or a test that merely inherited a service's environment (a
// terminal or a CI runner started as a service) is not taken for the unit.
func unitInvocation(getenv func(string) string, pid int) string {
	id := getenv("INVOCATION_ID")
	if execPID := getenv("SYSTEMD_EXEC_PID"); execPID != "" && execPID != strconv.Itoa(pid) {
		return ""
	}
	return id
}

// logTask logs a task the proof received, handed off to where.
func logTask(log *slog.Logger, id, where string) {
	log.Info("task received during the proof and handed off", "task_id", id, "path", where)
}

// logOutcomeTask logs the task a bootstrap or renew run handed off.
func logOutcomeTask(log *slog.Logger, cfg *config.Config, out *pipeline.Outcome) {
	if out.Task != nil {
		logTask(log, out.Task.ID, filepath.Join(cfg.Paths.StateDir, tasks.Dir))
	}
}

// locked runs a command that changes the node (bootstrap, renew) under
// state_dir's lock, then finishes it: report, metrics, the run's last log
// line. A lock another run holds past the deadline is exit 4. The wait for
// the lock and the run share one bootstrap.deadline: a run that waited has
// that much less time, so no run outlives its deadline.
func locked(ctx context.Context, env *runEnv, f *flags, cfg *config.Config, host *system.Host, log *slog.Logger, run func(ctx context.Context, o pipeline.Options) *pipeline.Outcome) int {
	cmd := f.cmd.name
	// The run's deadline counts the lock's wait (o.Until); its context
	// stays the signals' alone, so a pending post hook outlives the
	// deadline within its own timeout (pipeline.PostHook).
	lockCtx, cancel := context.WithTimeout(ctx, cfg.Bootstrap.Deadline.Duration)
	defer cancel()
	until, _ := lockCtx.Deadline()
	unlock, err := lock(lockCtx, host.Path(cfg.Paths.StateDir), cfg.Bootstrap.Deadline.Duration, log)
	durable := env.durable
	env.durable = nil
	if err != nil {
		if durable != nil {
			durable() // no run to overlap it with; the lock's failure is the answer
		}
		var le *lockError
		if errors.As(err, &le) && le.busy {
			rep := report.Failed(cmd, cfg.NodeID, "lock", &diag.Finding{Layer: LayerLock, Owner: diag.Node,
				Summary: err.Error(), Remedy: "another provision run on this node has not finished (see its logs); try again later", Transient: true})
			if cmd != "bootstrap" || f.format == "json" || interruptedBy(ctx) != nil {
				return printReport(env, f, rep)
			}
			return env.fail(cmd, LayerLock, err.Error(), rep.Remedy)
		}
		return finish(env, f, cfg, host, log, report.Failed(cmd, cfg.NodeID, "lock", &diag.Finding{Layer: diag.State, Owner: diag.Node,
			Summary: err.Error(), Remedy: diag.Writable(cfg.Paths.StateDir) + " by provision"}), nil)
	}
	defer unlock()
	o := pipelineOptions(log, f.force)
	o.Until = until
	o.Durable = durable
	out := run(ctx, o)
	return finish(env, f, cfg, host, log, out.Report, seenBy(out))
}
