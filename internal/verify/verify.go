// Package verify is provision's layered diagnosis: checks as values, each
// with a name, a layer, an owner and the checks it depends on, a runner that
// reports a check whose dependency failed as skipped (so the operator sees
// one root cause, not a cascade), and one report rendered as text or JSON.
//
// The same checks end every bootstrap, so bootstrap's last line and verify's
// answer always agree. The checks never write anything; a task the proof
// received is handed off by the caller (it is dequeued at the API).
package verify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/report"
)

// Answer is what a check's Run returns; the runner turns it into the
// check's line in the report.
type Answer struct {
	Status    report.Status
	Message   string
	Remedy    string
	Evidence  map[string]string
	Owner     diag.Owner // overrides the check's default owner
	Layer     diag.Layer // overrides the check's layer (a probe may fail lower)
	Transient bool
	// Timed: Duration is the time of this check's own stage, measured by
	// the observation it judges, and the report shows it instead of the
	// time Run took: the probe checks share one exchange, made by the
	// first of them, and each is given its own stage's part of it.
	Timed    bool
	Duration time.Duration
}

// Check is one diagnosis step.
type Check struct {
	Name      string
	Layer     diag.Layer
	Owner     diag.Owner
	DependsOn []string
	Run       func(ctx context.Context, e *observe.Env) Answer
}

// Ladder runs the whole ladder on e: what verify prints, and the proof that
// ends bootstrap and renew (cli hands it to them), so that their last line
// and verify's answer agree.
func Ladder(ctx context.Context, e *observe.Env, log *slog.Logger) []report.Result {
	return Run(ctx, e, Checks(), log)
}

// Run runs checks in order. A check whose dependency did not pass (or warn)
// is skipped and says which dependency failed.
func Run(ctx context.Context, e *observe.Env, checks []Check, log *slog.Logger) []report.Result {
	status := map[string]report.Status{}
	var out []report.Result
	for _, c := range checks {
		res := report.Result{Name: c.Name, Layer: c.Layer, Owner: c.Owner}
		blocked := ""
		for _, d := range c.DependsOn {
			if s, ok := status[d]; !ok || (s != report.Pass && s != report.Warn) {
				blocked = d
				break
			}
		}
		start := time.Now()
		var own *time.Duration // the check's own stage time, when it has one
		if blocked != "" {
			res.Status = report.Skip
			res.Message = fmt.Sprintf("skipped: depends on %s, which did not pass", blocked)
		} else {
			o := runContained(ctx, c, e)
			res.Status, res.Message, res.Remedy, res.Evidence, res.Transient = o.Status, o.Message, o.Remedy, o.Evidence, o.Transient
			if o.Owner != "" {
				res.Owner = o.Owner
			}
			if o.Layer != "" {
				res.Layer = o.Layer
			}
			if o.Timed {
				own = &o.Duration
			}
		}
		res.DurationMS = time.Since(start).Milliseconds()
		if own != nil {
			res.DurationMS = own.Milliseconds()
		}
		status[c.Name] = res.Status
		out = append(out, res)
		if log != nil {
			lvl := slog.LevelInfo
			if res.Status == report.Fail {
				lvl = slog.LevelError
			} else if res.Status == report.Warn {
				lvl = slog.LevelWarn
			}
			log.Log(ctx, lvl, "check", "check", res.Name, "layer", string(res.Layer), "owner", string(res.Owner),
				"status", string(res.Status), "message", res.Message, "duration_ms", res.DurationMS)
		}
	}
	return out
}

// runContained runs one check. A panic inside it becomes that check's
// failure, in layer internal (exit 1), so the other checks keep their
// results and the report stays whole: a bug in one check must never cost
// the operator the rest of the diagnosis. A failure under a context that
// has ended is no evidence (cut).
func runContained(ctx context.Context, c Check, e *observe.Env) (o Answer) {
	defer func() {
		if r := recover(); r != nil {
			o = Answer{Status: report.Fail, Layer: diag.Internal, Owner: diag.Provision,
				Message:  fmt.Sprintf("internal error in check %s; this is a bug: %v", c.Name, r),
				Remedy:   "report this bug with the output of this command (--format json) and PROVISION version; the other checks' results above still stand",
				Evidence: map[string]string{"panic": fmt.Sprint(r), "stack": string(debug.Stack())}}
		}
	}()
	o = c.Run(ctx, e)
	if o.Status == report.Fail && !o.Timed && ctx.Err() != nil {
		o = cut(ctx, o)
	}
	return o
}

// cut is a check's failure when the run's context had ended by the time
// it answered (its deadline, or a stop): whatever it looks like
// (getent killed reads as "glibc resolves it differently", a fetch not
// made as the CA's failure), it says nothing about the check's layer, so
// it is transient, never evidence for the liveness comparison, and worded
// as what it is. A judgement of an observation recorded in time (Timed:
// the probe's stages, classified when the exchange ended) keeps its own.
func cut(ctx context.Context, o Answer) Answer {
	what := "the run's deadline ended"
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		what = "the run was stopped"
	}
	o.Transient = true
	o.Message = fmt.Sprintf("not judged: %s before this check could answer (it saw: %s)", what, o.Message)
	o.Remedy = "nothing was found against this layer: run again; if runs keep ending here, find what made the run slow (the log's retries), or lengthen bootstrap.deadline (bootstrap, renew) or bootstrap.request_timeout (verify's budget)"
	return o
}
