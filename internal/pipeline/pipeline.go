// Package pipeline is the one runner of bootstrap and renew: a list of named
// steps over one shared run, and the steps both commands take (sweep, the
// key's mode, the CA's roots with Retry-After, the clock before anything
// irreversible, the credentials decision and the renewal, the proof, the
// publish rule, the post hook, the record), and bootstrap's restart spread
// (restart.go: a restarted run waits a random delay before its network
// work, so a fleet that failed together does not return together).
//
// Why one pipeline: bootstrap and renew used to be two hand-built copies of
// the same line, and what one learned the other missed (renew ignored the
// CA's Retry-After and never checked the clock before it rekeyed). Here a
// command is its list of steps (bootstrap.Steps, renew.Steps); everything
// they share is written once, so renewal liveness (a valid identity never
// lapses on a fault that says nothing against its renewal) holds for both.
//
// The flow is config -> observe -> verdict -> effects -> proof -> record, one
// way: a step reads what earlier steps left on the Run and never reaches
// back. Nothing is published before it has polled, with one exception, the
// liveness rule of Publish, which the README and docs/configuration.md state.
package pipeline

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/hosts"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// Ladder is the proof: verify's checks, in order, ending with the real
// tasks/wait, run against an observation. cli wires verify's ladder in, so
// a command's last line and verify's answer can never disagree, and this
// package need not know the checks.
type Ladder func(ctx context.Context, e *observe.Env, log *slog.Logger) []report.Result

// Options tune a run.
type Options struct {
	Log     *slog.Logger
	Version string
	Policy  retry.Policy
	// Sleep waits between attempts; tests may shorten it.
	Sleep func(ctx context.Context, d time.Duration) error
	// Ladder is the proof (required).
	Ladder Ladder
	// Force renews now, whatever the renewal point (renew --force).
	Force bool
	// Invocation is systemd's INVOCATION_ID when this process is the
	// unit's own (cli decides); "" for a run by hand. Only such a run can
	// be a restart (RestartSplay).
	Invocation string
}

// Outcome is what a run did.
type Outcome struct {
	Report   *report.Report
	Receipt  *state.Receipt // written by this run
	Record   *state.Renewal // the renew record as this run left it
	Enrolled bool           // a one-time token bought a new certificate
	Renewed  bool           // a new set (renewed, refreshed or enrolled) was published
	Hosts    hosts.Strategy
	Attempts int // proof attempts
	Task     *probe.Task
}

// Step is one named step. Do returns a finding when the step fails; the
// run ends there. A step may also end the run with a report of its own
// (Halt).
type Step struct {
	Name string
	Do   func(*Run) *diag.Finding
}

// Plan is what the run does about the credentials, decided by assess from
// the one verdict.
type Plan int

// The plans.
const (
	Keep         Plan = iota // the installed set as it is
	Refresh                  // same key and certificate, ca.pem rewritten from the CA's roots
	Renew                    // a new certificate over mTLS with the current one (no token)
	RenewExpired             // renewal after expiry, authenticated by the expired certificate's key
	Enroll                   // a fresh one-time token (bootstrap only)
	Adopt                    // prove and publish a set an earlier run obtained and left aside
)

var planNames = [...]string{"keep", "refresh", "renew", "renew-after-expiry", "enroll", "adopt"}

func (p Plan) String() string { return planNames[p] }

// Run is one run of a command: its inputs and what the steps observed and
// did so far.
type Run struct {
	Command  string
	Ctx      context.Context
	Cfg      *config.Config
	Host     *system.Host
	Opts     Options
	Log      *slog.Logger
	StateDir string // host paths
	PKI      string
	Out      *Outcome
	Start    time.Time

	Env      *observe.Env // the installed set, observed
	Client   *enroll.Client
	Roots    *enroll.Roots
	Verdict  lifecycle.Verdict
	Rec      *state.Renewal // the renew record: read at the start, written by Record
	Exposure *state.Exposure

	Plan     Plan
	Why      string         // why the plan (for enroll: the reason a token is needed)
	Current  *credstore.Set // the installed set, when it loaded
	Cand     *credstore.Set // the set to prove and publish; nil: prove the installed one
	Gen      string         // the candidate's generation directory, aside until published
	Reused   bool           // the candidate was found aside from an earlier run
	Replaced *credstore.Set // a still-valid set an enrollment replaced (revoked after the proof)

	Proof     *report.Report // the proof's report
	ProofEnv  *observe.Env   // the observation the proof judged
	Published bool           // this run switched current
	Unproven  string         // why the published set was published without a passing proof
	HookRan   bool
	Warnings  []string

	result string          // the renew record's result, when a step set one
	halted *report.Report  // the report a step ended the run with
	parent context.Context // the caller's context, without the run's deadline (the hook's after it)
}

// New starts a run of command on host, bounded by bootstrap.deadline. The
// caller must call the returned cancel.
func New(ctx context.Context, command string, cfg *config.Config, host *system.Host, o Options) (*Run, context.CancelFunc) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, cfg.Bootstrap.Deadline.Duration)
	r := &Run{Command: command, Ctx: ctx, Cfg: cfg, Host: host, Opts: o, Log: o.Log, Out: &Outcome{}, Start: time.Now(),
		StateDir: host.Path(cfg.Paths.StateDir), PKI: host.Path(cfg.Paths.PKIDir), parent: parent}
	r.Rec = state.ReadRenewal(r.StateDir)
	if r.Rec == nil {
		r.Rec = &state.Renewal{}
	}
	r.keepDamaged()
	r.Rec.NodeID, r.Rec.Version = cfg.NodeID, o.Version
	return r, cancel
}

// keepDamaged moves a record that does not parse aside before this run
// writes a new one over it (the run holds the lock), so it is kept and
// named (status, verify and the metrics warn of it). A damaged renew
// record may have held a pending post hook: the hook is treated as
// pending, so the node-agent is told once more rather than never.
func (r *Run) keepDamaged() {
	moved, err := state.KeepDamaged(r.StateDir, r.Host.Time())
	if err != nil {
		r.Log.Error("step", "step", "records", "layer", "state", "status", "fail", "message", err.Error())
	}
	for _, d := range moved {
		r.Log.Warn("step", "step", "records", "layer", "state", "status", "kept-aside", "path", filepath.Join(r.Cfg.Paths.StateDir, d.Aside), "message", d.String())
		if d.File == state.RenewalFile {
			r.Rec.HookPending = true
		}
	}
}

// Halt ends the run after the current step with rep as its report.
func (r *Run) Halt(rep *report.Report) { r.halted = rep }

// Execute runs steps in order, each timed in the report; the first that
// fails (or halts) ends the run. finish, when not nil, runs last whatever
// happened (renew records every attempt).
func (r *Run) Execute(steps []Step, finish func(*Run, *report.Report)) *Outcome {
	var timings []report.Step
	var rep *report.Report
	rest := []Step(nil) // the steps a failure or a halt left unrun
	for i, s := range steps {
		rest = steps[i+1:]
		t0 := time.Now()
		f := s.Do(r)
		st := report.Step{Name: s.Name, Status: "ok", DurationMS: time.Since(t0).Milliseconds()}
		if f != nil || (r.halted != nil && !r.halted.OK) {
			st.Status = "fail"
		}
		timings = append(timings, st)
		if f != nil {
			rep = r.failed(s.Name, f)
			break
		}
		if r.halted != nil {
			rep = r.halted
			break
		}
	}
	if rep != nil {
		timings = r.hookAnyway(rest, timings)
	}
	if rep == nil {
		rep = r.Proof
	}
	if rep == nil { // a list without a proof that did not halt: nothing to say but done
		rep = &report.Report{OK: true, Command: r.Command, NodeID: r.Cfg.NodeID, Summary: "done"}
	}
	rep.Command, rep.Steps = r.Command, timings
	if finish != nil {
		finish(r, rep)
	}
	rep.DurationMS = time.Since(r.Start).Milliseconds()
	r.Out.Report = rep
	return r.Out
}

// hookAnyway runs the post hook, when the list has it among the steps a
// failure or a halt left unrun and it is pending: a published set the
// node-agent has not been told about (this run's publish without a
// passing proof, or an earlier run's) is announced whatever this run's
// proof or renewal says, and stays pending until the hook succeeds. The
// run's answer stays the failure that ended it; the hook's outcome is in
// the renew record (hook, hook_pending) and its log line.
func (r *Run) hookAnyway(rest []Step, timings []report.Step) []report.Step {
	for _, s := range rest {
		if s.Name != HookStep.Name || !r.Rec.HookPending {
			continue
		}
		result, t0 := r.result, time.Now()
		f := s.Do(r)
		r.result = result // the run's result is what ended it
		st := report.Step{Name: s.Name, Status: "ok", DurationMS: time.Since(t0).Milliseconds()}
		if f != nil {
			st.Status = "fail"
			r.Log.Error("step", "step", s.Name, "layer", string(f.Layer), "owner", string(f.Owner), "status", "fail", "message", f.Summary)
		}
		return append(timings, st)
	}
	return timings
}

// failed is the report of a step's finding. Checks an earlier proof passed
// stay in it (a post hook failing after a proven renewal).
func (r *Run) failed(step string, f *diag.Finding) *report.Report {
	check := step
	if f.Check != "" {
		check = f.Check
	}
	r.Log.Error("step", "step", check, "layer", string(f.Layer), "owner", string(f.Owner), "status", "fail", "message", f.Summary)
	rep := report.Failed(r.Command, r.Cfg.NodeID, check, f)
	if r.Proof != nil && r.Proof.OK {
		res := append(append([]report.Result(nil), r.Proof.Checks...), rep.Checks...)
		rep = report.New(r.Command, r.Cfg.NodeID, res, 0)
		rep.Task = r.Proof.Task
	}
	return rep
}

// SetResult sets the renew record's result for this run.
func (r *Run) SetResult(result string) { r.result = result }

// Result is the renew record's result this run set, "" if none.
func (r *Run) Result() string { return r.result }

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
