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
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/gpuaas/provision/internal/diag"
)

// Status is a check's outcome.
type Status string

// The statuses.
const (
	Pass Status = "pass"
	Fail Status = "fail"
	Warn Status = "warn"
	Skip Status = "skip"
)

// Outcome is what a check's Run returns.
type Outcome struct {
	Status    Status
	Message   string
	Remedy    string
	Evidence  map[string]string
	Owner     diag.Owner // overrides the check's default owner
	Layer     diag.Layer // overrides the check's layer (a probe may fail lower)
	Transient bool
}

// Check is one diagnosis step.
type Check struct {
	Name      string
	Layer     diag.Layer
	Owner     diag.Owner
	DependsOn []string
	Run       func(ctx context.Context, e *Env) Outcome
}

// Result is one check's line in the report. Field names are an interface.
type Result struct {
	Name       string            `json:"name"`
	Layer      diag.Layer        `json:"layer"`
	Owner      diag.Owner        `json:"owner"`
	Status     Status            `json:"status"`
	Message    string            `json:"message"`
	Remedy     string            `json:"remedy,omitempty"`
	Evidence   map[string]string `json:"evidence,omitempty"`
	DurationMS int64             `json:"duration_ms"`
	transient  bool
}

// Report is the whole diagnosis. Field names are an interface.
type Report struct {
	OK          bool       `json:"ok"`
	Command     string     `json:"command"`
	NodeID      string     `json:"node_id,omitempty"`
	FailedLayer diag.Layer `json:"failed_layer,omitempty"`
	Owner       diag.Owner `json:"owner,omitempty"`
	FailedCheck string     `json:"failed_check,omitempty"`
	Summary     string     `json:"summary"`
	Remedy      string     `json:"remedy,omitempty"`
	Transient   bool       `json:"transient,omitempty"`
	Checks      []Result   `json:"checks"`
	DurationMS  int64      `json:"duration_ms"`
	// Task is a task the API handed out during the proof, so it is not lost.
	Task any `json:"task,omitempty"`
	// Steps are bootstrap's named steps with their durations (empty for
	// verify): where the time of a run went.
	Steps []Step `json:"steps,omitempty"`
}

// Step is one of bootstrap's named steps in the report. Field names are an
// interface.
type Step struct {
	Name       string `json:"name"`
	Status     string `json:"status"` // ok | fail
	DurationMS int64  `json:"duration_ms"`
}

// RootCause returns the first failed check, or nil.
func (r *Report) RootCause() *Result {
	for i := range r.Checks {
		if r.Checks[i].Status == Fail {
			return &r.Checks[i]
		}
	}
	return nil
}

// Run runs checks in order. A check whose dependency did not pass (or warn)
// is skipped and says which dependency failed.
func Run(ctx context.Context, e *Env, checks []Check, log *slog.Logger) []Result {
	status := map[string]Status{}
	var out []Result
	for _, c := range checks {
		res := Result{Name: c.Name, Layer: c.Layer, Owner: c.Owner}
		blocked := ""
		for _, d := range c.DependsOn {
			if s, ok := status[d]; !ok || (s != Pass && s != Warn) {
				blocked = d
				break
			}
		}
		start := time.Now()
		if blocked != "" {
			res.Status = Skip
			res.Message = fmt.Sprintf("skipped: depends on %s, which did not pass", blocked)
		} else {
			o := runContained(ctx, c, e)
			res.Status, res.Message, res.Remedy, res.Evidence, res.transient = o.Status, o.Message, o.Remedy, o.Evidence, o.Transient
			if o.Owner != "" {
				res.Owner = o.Owner
			}
			if o.Layer != "" {
				res.Layer = o.Layer
			}
		}
		res.DurationMS = time.Since(start).Milliseconds()
		status[c.Name] = res.Status
		out = append(out, res)
		if log != nil {
			lvl := slog.LevelInfo
			if res.Status == Fail {
				lvl = slog.LevelError
			} else if res.Status == Warn {
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
// the operator the rest of the diagnosis.
func runContained(ctx context.Context, c Check, e *Env) (o Outcome) {
	defer func() {
		if r := recover(); r != nil {
			o = Outcome{Status: Fail, Layer: diag.Internal, Owner: diag.Provision,
				Message:  fmt.Sprintf("internal error in check %s; this is a bug: %v", c.Name, r),
				Remedy:   "report this bug with the output of this command (--format json) and PROVISION version; the other checks' results above still stand",
				Evidence: map[string]string{"panic": fmt.Sprint(r), "stack": string(debug.Stack())}}
		}
	}()
	return c.Run(ctx, e)
}

// NewReport builds the report for results.
func NewReport(command, nodeID string, results []Result, took time.Duration) *Report {
	r := &Report{Command: command, NodeID: nodeID, Checks: results, DurationMS: took.Milliseconds()}
	if rc := r.RootCause(); rc != nil {
		r.FailedLayer, r.Owner, r.FailedCheck = rc.Layer, rc.Owner, rc.Name
		r.Summary, r.Remedy, r.Transient = rc.Message, rc.Remedy, rc.transient
		return r
	}
	r.OK = true
	r.Summary = "healthy: the node polls tasks/wait through the ingress with its own certificate"
	return r
}

// Failed builds a report for a single failure outside the check ladder (a
// bootstrap step, or the config itself).
func Failed(command, nodeID, name string, f *diag.Finding) *Report {
	res := Result{Name: name, Layer: f.Layer, Owner: f.Owner, Status: Fail, Message: f.Summary, Remedy: f.Remedy, Evidence: f.Evidence, transient: f.Transient}
	return NewReport(command, nodeID, []Result{res}, 0)
}
