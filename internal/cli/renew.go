package cli

import (
	"context"
	"fmt"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/renew"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/system"
)

var renewCmd = &command{
	name:   "renew",
	format: true,
	exits:  codes(ExitConfig, ExitLocked, layersAll, ExitCheckNotDue, ExitCheckCannotRenew, exitSignals),
	exitNotes: map[int]exitNote{
		ExitOK:               {"ok", "done (renewed, refreshed, or not due); --check: due (or --force)"},
		ExitCheckNotDue:      {"--check", "not due"},
		ExitCheckCannotRenew: {"--check", "cannot renew: re-enrollment with a fresh one-time token is needed"},
	},
	summary: "renew the certificate over mTLS when due, prove it with tasks/wait, then publish it",
	usage: `Acts on the credential verdict bootstrap and verify use. When the certificate
has passed renew.fraction of its lifetime (default 2/3) plus this node's
splay (up to renew.splay, fixed per certificate), it asks step-ca for a new
certificate over mTLS with the current one (a new key with renew.rekey, the
default; no token is involved), writes key, chain and a CA bundle refreshed
from the CA's current and federated roots into a new generation directory,
proves that set with a real mTLS tasks/wait through the ingress, and only
then switches pki_dir/current. If the proof fails, the old (still valid) set
stays current and the run names the layer; the unproven set is kept aside
for diagnosis. renew.post_hook then runs (its failure is exit 22 and does
not undo the renewal). When nothing is due it exits 0 quickly, refreshing
ca.pem (proven the same way) if the CA's roots moved. Every run (not --check)
leaves its outcome as node_exporter metrics in metrics.textfile_dir
(provision_renew.prom) when that directory exists.

An expired certificate is renewed after expiry where the CA's provisioner
allows it (the claim allowRenewalAfterExpiry), authenticated by its own key.
A revoked or stale certificate, an expired one the CA does not renew, and an
unusable one cannot be renewed: renew stops at once and says that
re-enrollment with a fresh one-time token is needed (provision bootstrap),
in the layer of the reason (credentials, enroll for revoked, ca for stale:
issued by a CA the control plane no longer uses).

  --force   renew now, whatever the renewal point
  --check   only say whether a renewal is due, offline (the chain is judged
            against the installed ca.pem, and what the last renew run
            found is taken from state_dir/renew.json), by the exit code
            (below: 0 due, 30 not due, 31 cannot renew); usable as
            ExecCondition= (1-254 skip the unit without failing it)

  --dry-run show what the run would do and change nothing: the CA's roots
            are fetched (the pinned GET the run makes first), the same
            verdict and plan are taken (renew, renew-after-expiry, refresh,
            keep, not-due, cannot-renew) and the clock checked; nothing is
            renewed, proven, published, recorded or run (no hook, no lock,
            no metrics); exit 0, or the exit code the run would stop with

Run by provision-renew.timer.

Examples:
  provision renew
  provision renew --force --format json | jq '{ok, summary, failed_layer}'
  provision renew --check; echo $?
  provision renew --dry-run --force
`,
}

func init() {
	renewCmd.run = runRenew
	renewCmd.flags = func(f *flags) {
		f.fs.BoolVar(&f.force, "force", false, "renew now, whatever the renewal point")
		f.fs.BoolVar(&f.check, "check", false, "only say whether a renewal is due (exit 0 due, 30 not due, 31 cannot renew), offline")
		f.fs.BoolVar(&f.dryRun, "dry-run", false, "show what the run would do, change nothing: no certificate requested, nothing written, no hook run")
	}
}

func runRenew(ctx context.Context, env *runEnv, args []string) int {
	f := newFlags(renewCmd, env)
	if code, ok := f.parse(env, args); !ok {
		return code
	}
	if f.check && f.dryRun {
		return env.usage("renew", "--check and --dry-run are two questions: --check answers offline whether a renewal is due, --dry-run what a run would do", "Run 'provision renew --help' for usage.")
	}
	cfg, host, code, ok := load(env, f, "renew")
	if !ok {
		return code
	}
	log := f.logger(env.stderr, cfg.NodeID)
	if f.check {
		return renewCheck(env, f, cfg, host)
	}
	if f.dryRun {
		return dryRun(ctx, env, f, cfg, host, log)
	}
	return locked(ctx, env, f, cfg, host, log, func(ctx context.Context, o pipeline.Options) *pipeline.Outcome {
		out := renew.Run(ctx, cfg, host, o)
		logOutcomeTask(log, cfg, out)
		return out
	})
}

// renewCheck is renew --check: offline, no lock, exit 0 due, 30 not due,
// 31 cannot renew.
func renewCheck(env *runEnv, f *flags, cfg *config.Config, host *system.Host) int {
	d, cf := renew.Check(cfg, host, f.force)
	code := map[renew.Decision]int{renew.Due: ExitCheckDue, renew.NotDue: ExitCheckNotDue, renew.CannotRenew: ExitCheckCannotRenew}[d]
	rep := &report.Report{OK: d != renew.CannotRenew, Command: "renew", NodeID: cfg.NodeID, Summary: cf.Summary, Checks: []report.Result{}}
	if d == renew.CannotRenew {
		// The reason's own layer and owner (expired: credentials, stale: ca,
		// revoked: enroll), as a renewal run names them, and its remedy.
		rep.FailedLayer, rep.Owner, rep.FailedCheck, rep.Remedy = cf.Layer, cf.Owner, "check", cf.Remedy
	}
	if f.format == "json" {
		printJSON(env, rep, code)
	} else {
		fmt.Fprintf(env.stdout, "provision renew --check: %s (exit %d)\n", clean(cf.Summary), code) // renew.json may quote the CA
	}
	return code
}
