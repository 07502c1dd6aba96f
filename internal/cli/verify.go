package cli

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/tasks"
	"github.com/gpuaas/provision/internal/verify"
)

var verifyCmd = &command{
	name:    "verify",
	format:  true,
	exits:   codes(ExitConfig, layersProof, 21, exitSignals),
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

func init() { verifyCmd.run = runVerify }

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
	e := observe.NewEnv(cfg, host)
	results := verify.Ladder(ctx, e, log)
	rep := report.New("verify", cfg.NodeID, results, time.Since(start))
	// The proof's tasks/wait is the node-agent's: a task the API handed out
	// is dequeued there, so verify hands it off exactly as bootstrap does.
	t, path, err := tasks.HandOff(host.Path(cfg.Paths.StateDir), e.Probed(), host.Time(), host.Hook, observe.Access(cfg, host))
	if t != nil {
		rep.Task = json.RawMessage(t.Raw)
		if err != nil {
			return finish(env, f, cfg, host, log, report.Failed("verify", cfg.NodeID, "task-save", diag.TaskNotKept(cfg.Paths.StateDir, t.Raw, err, "", "")), verifySeen(e))
		}
		logTask(log, t.ID, strings.TrimPrefix(path, strings.TrimSuffix(host.Path("/"), "/")))
	}
	return finish(env, f, cfg, host, log, rep, verifySeen(e))
}

// verifySeen is what verify's ladder saw, for the metrics: the installed
// set and the verdict its credentials check judged; nil when the ladder
// judged none (the metrics then look offline).
func verifySeen(e *observe.Env) *seen {
	v, ok := e.Judged()
	if !ok {
		return nil
	}
	set, _ := e.Creds()
	return &seen{installed: &pipeline.Installed{Set: set, Verdict: v}}
}
