package cli

import (
	"context"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/revoke"
	"github.com/gpuaas/provision/internal/status"
)

var revokeCmd = &command{
	name:   "revoke",
	format: true,
	exits:  codes(ExitConfig, ExitLocked, layerCodes(diag.Clock, diag.Credentials, diag.CA, diag.State), exitSignals),
	exitNotes: map[int]exitNote{
		ExitUsage: {"usage", "unknown flag, or the node holds a usable identity and --yes was not given (nothing changed)"},
		13:        {"ca", "the CA unreachable or refusing a revocation (nothing removed)"},
		12:        {"credentials", "the credentials could not all be removed (every certificate revoked)"},
	},
	summary: "take the node out of service: revoke its certificates at the CA, then remove them and its records",
	usage: `For decommissioning and re-imaging. Every certificate in pki_dir that is still
an identity of the CA (the current one, the rollback target, sets left aside)
is revoked at the CA, each authenticated by itself over mTLS with its own key
(step-ca's passive revocation, reason cessationOfOperation; no token), and
only then are the credentials (pki_dir's links and generations), the receipt,
the done marker, renew.json and the other records of the node removed, with
provision's textfile metrics. state_dir/revoke.json records every certificate,
what the CA answered and every path removed; status shows it. Tasks handed
off to the node-agent (state_dir/tasks/) stay.

A certificate that expired, is not valid yet, or was issued by another CA is no
identity this CA could revoke, and is only removed. One the CA's signed CRL
already lists counts as revoked. When the CA does not revoke a certificate
(unreachable, refusing), nothing is removed: fix what the report names and run
it again, which finds the ones already revoked in revoke.json.

A node whose identity is usable (judged offline, as status judges it) is only
revoked with --yes: without it, revoke says what it would end and changes
nothing (exit 2). To bring the node back: a fresh one-time token and
provision bootstrap. Disable the units (provision-renew.timer,
provision-verify.timer) or remove the package on a decommissioned node.

Examples:
  provision revoke --yes
  provision revoke --yes --format json | jq '.checks[] | .message'
`,
}

func init() {
	revokeCmd.run = runRevoke
	revokeCmd.flags = func(f *flags) {
		f.fs.BoolVar(&f.yes, "yes", false, "revoke even though the node holds a usable identity (it ends it)")
	}
}

func runRevoke(ctx context.Context, env *runEnv, args []string) int {
	f := newFlags(revokeCmd, env)
	if code, ok := f.parse(env, args); !ok {
		return code
	}
	cfg, host, code, ok := load(env, f, "revoke")
	if !ok {
		return code
	}
	log := f.logger(env.stderr, cfg.NodeID)
	if healthy, what := status.Usable(cfg, host); healthy && !f.yes {
		return printReport(env, f, report.Failed("revoke", cfg.NodeID, "confirm", &diag.Finding{Layer: LayerUsage, Owner: diag.Node,
			Summary: what + "; provision revoke would revoke it at the CA and remove it",
			Remedy:  "run provision revoke --yes to take this node out of service (decommission, re-image); nothing was changed"}))
	}
	return locked(ctx, env, f, cfg, host, log, func(ctx context.Context, o pipeline.Options) *pipeline.Outcome {
		return revoke.Run(ctx, cfg, host, o)
	})
}
