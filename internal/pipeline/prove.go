package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/tasks"
)

// Prove runs the proof (the ladder, ending in the real mTLS tasks/wait
// through the ingress) on the candidate read back from its generation
// directory, or on the installed set when there is no candidate, retried
// with the one retry loop while the failure is transient. A task the proof
// received is handed off. Without a candidate, a failed proof is the run's
// answer; with one, Publish decides.
func Prove(r *Run) *diag.Finding {
	j, g := r.Judged(), r.Obtained()
	retryCtx := r.Ctx
	if g.Set != nil && j.Current != nil {
		// Keep time to prove the installed set too, if the candidate fails:
		// the liveness rule compares the two. Only retries stop early; an
		// attempt may use the whole deadline.
		if dl, ok := r.Ctx.Deadline(); ok {
			var cancel context.CancelFunc
			retryCtx, cancel = context.WithDeadline(r.Ctx, dl.Add(-r.oneProofBudget()))
			defer cancel()
		}
	}
	p := &Proven{}
	r.setProven(p)
	p.Report, p.Env, p.Attempts = r.proveLoop(retryCtx, g.Gen)
	t, f := r.handOff(p.Env, p.Report, g.Set == nil)
	p.Task = t
	if f != nil {
		return f
	}
	switch {
	case g.Set == nil && !p.Report.OK:
		r.Halt(p.Report)
	case g.Set != nil && p.Report.OK:
		r.Host.Hook.At("proven")
	}
	return nil
}

// oneProofBudget is what one pass of the ladder may take: a few requests
// of bootstrap.request_timeout and the long poll.
func (r *Run) oneProofBudget() time.Duration {
	return 3*r.Cfg.Bootstrap.RequestTimeout.Duration + r.Cfg.NodeAPI.WaitTimeout.Duration
}

// proveOnce is one pass of the ladder over e, a new observation.
func (r *Run) proveOnce(e *observe.Env) *report.Report {
	t0 := time.Now()
	return report.New(r.Command, r.Cfg.NodeID, r.Opts.Ladder(r.Ctx, e, r.Log), time.Since(t0))
}

// proveLoop runs the ladder on the set in dir ("" for the installed one)
// until it passes, fails for good, or the run's deadline ends; retries stop
// when retryCtx ends.
func (r *Run) proveLoop(retryCtx context.Context, dir string) (*report.Report, *observe.Env, int) {
	var rep *report.Report
	var env *observe.Env
	attempts := retry.Until(retryCtx, r.Opts.Policy, r.Opts.Sleep, func(n int) (bool, time.Duration) {
		e := r.Env.ForSet(dir)
		last := r.proveOnce(e)
		if r.Ctx.Err() != nil && rep != nil && !last.OK {
			// The deadline cut this attempt short; the previous attempt's
			// report shows the real failure, not "context deadline exceeded".
			return true, 0
		}
		rep, env = last, e
		if last.OK || !last.Transient || retryCtx.Err() != nil {
			return true, 0
		}
		var ra time.Duration
		if res := e.Probed(); res != nil {
			ra = retry.RetryAfterHeader(res.Status, res.Header, r.Host.Time())
		}
		r.Log.Warn("step", "step", "proof", "layer", string(last.FailedLayer), "owner", string(last.Owner), "status", "retry", "attempt", n+1, "message", last.Summary)
		return false, ra
	})
	if !rep.OK && retryCtx.Err() != nil && rep.Transient {
		rep.Summary = r.GaveUp(attempts, rep.Summary)
	}
	return rep, env, attempts
}

// handOff keeps a task the proof received in state_dir/tasks/ and returns
// it, once handed off. One that cannot be kept is reported with its bytes,
// never said to be handed off: it fails the step, but for a failed proof
// of the installed set (answer: the proof's failure; the task is logged).
func (r *Run) handOff(env *observe.Env, rep *report.Report, installed bool) (*probe.Task, *diag.Finding) {
	t, _, err := tasks.HandOff(r.StateDir, env.Probed(), r.Host.Time(), r.Host.Hook, observe.Access(r.Cfg, r.Host))
	if t == nil {
		return nil, nil
	}
	rep.Task = json.RawMessage(t.Raw)
	if err == nil {
		return t, nil
	}
	if !rep.OK && installed {
		r.Log.Error("step", "step", "task-save", "layer", "state", "status", "fail", "message", err.Error(), "task_id", t.ID)
		return nil, nil
	}
	return nil, diag.TaskNotKept(r.Cfg.Paths.StateDir, t.Raw, err, "; nothing was published", ", and run again")
}

// GaveUp is the summary of a failure retried until the run's deadline.
func (r *Run) GaveUp(attempts int, summary string) string {
	return fmt.Sprintf("gave up after %d attempts in %s (bootstrap.deadline): %s", attempts, r.Cfg.Bootstrap.Deadline.Duration, summary)
}
