// Package report is what every command returns: the report of a run, its
// check lines and its named steps. bootstrap, renew and verify build one;
// cli prints it (text or JSON) and picks the exit code from it; metrics
// renders it for node_exporter.
//
// Why a package of its own: the report used to live in verify, so every
// command, and metrics, imported the diagnosis ladder only to name the type
// it returns. The field names here are a contract (the JSON report of
// README.md), extended, never renamed.
package report

import (
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
	// Transient says retrying may help; the report's transient comes from
	// its root cause's.
	Transient bool `json:"-"`
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
	// Steps are the command's named steps with their durations (empty for
	// verify): where the time of a run went.
	Steps []Step `json:"steps,omitempty"`
	// DryRun is what a dry run (bootstrap or renew --dry-run) found the
	// run would do (a pipeline.Preview); absent from every other report.
	DryRun any `json:"dry_run,omitempty"`
}

// Step is one of a command's named steps in the report. Field names are an
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

// New builds the report for results: failed at the first failed check, or
// healthy.
func New(command, nodeID string, results []Result, took time.Duration) *Report {
	r := &Report{Command: command, NodeID: nodeID, Checks: results, DurationMS: took.Milliseconds()}
	if rc := r.RootCause(); rc != nil {
		r.FailedLayer, r.Owner, r.FailedCheck = rc.Layer, rc.Owner, rc.Name
		r.Summary, r.Remedy, r.Transient = rc.Message, rc.Remedy, rc.Transient
		return r
	}
	r.OK = true
	r.Summary = "healthy: the node polls tasks/wait through the ingress with its own certificate"
	return r
}

// Failed builds a report for a single failure outside the check ladder (a
// step of bootstrap or renew, or the config itself).
func Failed(command, nodeID, name string, f *diag.Finding) *Report {
	res := Result{Name: name, Layer: f.Layer, Owner: f.Owner, Status: Fail, Message: f.Summary, Remedy: f.Remedy, Evidence: f.Evidence, Transient: f.Transient}
	return New(command, nodeID, []Result{res}, 0)
}
