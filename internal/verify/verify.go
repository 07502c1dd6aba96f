// Package verify is provision's layered diagnosis: checks as values, each
// with a name, a layer, an owner and the checks it depends on, a runner that
// reports a check whose dependency failed as skipped (so the operator sees
// one root cause, not a cascade), and one report rendered as text or JSON.
// The probe's one exchange (Check.Observe) starts as soon as the hostname
// resolves as the override says, the moment tcp, its first check, could
// run: its round trips overlap the local checks listed before it (about a
// millisecond of a cold bootstrap) and, in verify, the CA's roots fetch.
// Nothing is judged out of order, and nothing is sent that the ladder would
// not have sent.
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
	// Observe, when set, makes the observation Run judges (the probe's
	// exchange), without judging it. Run starts it in the background as
	// soon as the check's dependencies have passed, so a network round
	// trip overlaps the local checks listed ahead of it; the check is still
	// judged in ladder order, and never before its dependencies. It makes
	// nothing the check would not make: it runs exactly when the check
	// itself would have run.
	Observe func(ctx context.Context, e *observe.Env)
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
	bg := &early{started: map[string]chan *recovered{}}
	var out []report.Result
	for i, c := range checks {
		res := report.Result{Name: c.Name, Layer: c.Layer, Owner: c.Owner}
		blocked := blockedBy(c, status)
		start := time.Now()
		var own *time.Duration // the check's own stage time, when it has one
		if blocked != "" {
			res.Status = report.Skip
			res.Message = fmt.Sprintf("skipped: depends on %s, which did not pass", blocked)
		} else {
			o := bg.wait(c)
			if o == nil {
				a := runContained(ctx, c, e)
				o = &a
			}
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
		bg.start(ctx, e, checks[i+1:], status)
		logResult(ctx, log, res)
	}
	return out
}

// blockedBy is the first of c's dependencies that did not pass or warn,
// or "".
func blockedBy(c Check, status map[string]report.Status) string {
	for _, d := range c.DependsOn {
		if s, ok := status[d]; !ok || (s != report.Pass && s != report.Warn) {
			return d
		}
	}
	return ""
}

// early is a ladder run's observations started ahead of their checks
// (Check.Observe): each check's channel gets what a panic inside its
// observation recovered (with its stack), or nil, when it ends.
type early struct{ started map[string]chan *recovered }

type recovered struct {
	value any
	stack []byte
}

// start begins the observation of each of later whose dependencies have
// all answered and passed, once.
func (b *early) start(ctx context.Context, e *observe.Env, later []Check, status map[string]report.Status) {
	for _, c := range later {
		if c.Observe == nil || b.started[c.Name] != nil || blockedBy(c, status) != "" {
			continue
		}
		done := make(chan *recovered, 1)
		b.started[c.Name] = done
		go func(observe func(context.Context, *observe.Env)) {
			defer func() {
				if r := recover(); r != nil {
					done <- &recovered{r, debug.Stack()}
					return
				}
				done <- nil
			}()
			observe(ctx, e)
		}(c.Observe)
	}
}

// wait waits for c's early observation, if one was started; a panic inside
// it is c's internal failure, as runContained words one, and nil means
// the check is to be run.
func (b *early) wait(c Check) *Answer {
	done := b.started[c.Name]
	if done == nil {
		return nil
	}
	if r := <-done; r != nil {
		a := panicked(c, r.value, r.stack)
		return &a
	}
	return nil
}

// logResult logs one check's line.
func logResult(ctx context.Context, log *slog.Logger, res report.Result) {
	if log == nil {
		return
	}
	lvl := slog.LevelInfo
	if res.Status == report.Fail {
		lvl = slog.LevelError
	} else if res.Status == report.Warn {
		lvl = slog.LevelWarn
	}
	log.Log(ctx, lvl, "check", "check", res.Name, "layer", string(res.Layer), "owner", string(res.Owner),
		"status", string(res.Status), "message", res.Message, "duration_ms", res.DurationMS)
}

// runContained runs one check. A panic inside it becomes that check's
// failure, in layer internal (exit 1), so the other checks keep their
// results and the report stays whole: a bug in one check must never cost
// the operator the rest of the diagnosis. A failure under a context that
// has ended is no evidence (cut).
func runContained(ctx context.Context, c Check, e *observe.Env) (o Answer) {
	defer func() {
		if r := recover(); r != nil {
			o = panicked(c, r, debug.Stack())
		}
	}()
	o = c.Run(ctx, e)
	if o.Status == report.Fail && !o.Timed && ctx.Err() != nil {
		o = cut(ctx, o)
	}
	return o
}

// panicked is check c's failure after a panic (r) in it, in layer internal.
func panicked(c Check, r any, stack []byte) Answer {
	return Answer{Status: report.Fail, Layer: diag.Internal, Owner: diag.Provision,
		Message:  fmt.Sprintf("internal error in check %s; this is a bug: %v", c.Name, r),
		Remedy:   "report this bug with the output of this command (--format json) and PROVISION version; the other checks' results above still stand",
		Evidence: map[string]string{"panic": fmt.Sprint(r), "stack": string(stack)}}
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
