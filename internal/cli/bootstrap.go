package cli

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/gpuaas/provision/internal/bootstrap"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/tasks"
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

func init() { bootstrapCmd.run = runBootstrap }

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
			rep := report.Failed("bootstrap", cfg.NodeID, "lock", &diag.Finding{Layer: LayerLock, Owner: diag.Node,
				Summary: err.Error(), Remedy: "another provision run on this node has not finished (see its logs); try again later", Transient: true})
			if f.format == "json" || interruptedBy(ctx) != nil {
				return printReport(env, f, rep)
			}
			fmt.Fprintf(env.stderr, "provision: error: %v; another provision run on this node has not finished (see its logs), try again later\n", err)
			return ExitLocked
		}
		return finish(env, f, cfg, host, log, report.Failed("bootstrap", cfg.NodeID, "lock", &diag.Finding{Layer: diag.State, Owner: diag.Node,
			Summary: err.Error(), Remedy: "make " + cfg.Paths.StateDir + " writable by provision"}))
	}
	defer unlock()
	// pki_dir and state_dir were claimed as provision's own by load
	// (claimDirs): created 0700, refused when they hold other files.
	out := bootstrap.Run(ctx, cfg, host, bootstrap.Options{Log: log, Version: Version(), Policy: retry.Default})
	if out.Report.OK && out.Task != nil {
		log.Info("task received during the proof and saved", "task_id", out.Task.ID, "dir", filepath.Join(cfg.Paths.StateDir, tasks.Dir))
	}
	return finish(env, f, cfg, host, log, out.Report)
}
