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
// way: the run's state is declared by stage (stages.go), each written once
// by its step and read by later ones, so a step reads only what an earlier
// step produced and never reaches back; the run observes the node once
// (Run.Env) and every later observation (a set aside, a proof attempt) is
// derived from it, so the record and the metrics read what the run saw.
// Nothing is published before it has polled, with one exception, the
// liveness rule of Publish (decided on evidence: compare.go), which the
// README and docs/configuration.md state.
package pipeline

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
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
	// Until, when set, ends the run by then at the latest, if that is
	// earlier than bootstrap.deadline from New: cli sets the command's
	// start plus bootstrap.deadline, so the lock's wait counts. The context
	// given to New carries cancellation only (a signal): the post hook,
	// bounded by its own timeout, outlives the run's deadline, never a
	// signal.
	Until time.Time
	// Invocation is systemd's INVOCATION_ID when this process is the
	// unit's own (cli decides); "" for a run by hand. Only such a run can
	// be a restart (RestartSplay).
	Invocation string
	// Durable, when set, makes what the command wrote before the run
	// durable (cli's new directory marks, system.Host.ClaimDirs). The run
	// does it meanwhile, while it reaches the CA, and publishes nothing
	// before it returned (Settle); its failure is the run's answer then.
	Durable func() error
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
	// Installed is the set installed when the run ended, with the verdict
	// the renew record was written from: the metrics read it rather than
	// look again.
	Installed *Installed
}

// Installed is a set and its one verdict.
type Installed struct {
	Set     *credstore.Set
	Verdict lifecycle.Verdict
}

// Step is one named step. Do returns a finding when the step fails; the
// run ends there. A step may also end the run with a report of its own
// (Halt). Reads are the stages it reads, Writes the one it writes (0:
// none), whether it succeeds or fails (see stages.go); MayRead the stages
// it reads when an earlier step wrote them, and reads as zero otherwise
// (the post hook, which also runs after a failure ended the run early).
type Step struct {
	Name    string
	Do      func(*Run) *diag.Finding
	Reads   []Stage
	MayRead []Stage
	Writes  Stage
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

// Run is one run of a command: its inputs, the one observation, and what
// the steps produced so far, by stage (stages.go).
type Run struct {
	Command  string
	Ctx      context.Context
	Cfg      *config.Config
	Host     *system.Host
	Opts     Options
	Log      *slog.Logger
	StateDir string // host paths
	PKI      string
	Start    time.Time

	// Env is the run's observation of the node: the installed set, the
	// records, and the CA's roots once the roots step hands them in. Made
	// once, by New; every later observation (a set aside, a proof
	// attempt) derives from it.
	Env *observe.Env
	// Found is the renew record as the run found it (nil: none), read
	// once; the record the run writes is composed from it and the stages.
	Found *state.Renewal

	Out *Outcome // what the run did, filled when it ends

	st        stages
	step      *Step          // the step running now
	violation string         // a step's misuse of the stages: a bug
	halted    *report.Report // the report a step ended the run with
	asideSeen []Aside        // the sets aside, observed once (asides)
	asideOnce bool
	parent    context.Context // the caller's context, without the run's deadline (the hook's after it)
	meanwhile sync.WaitGroup  // work started by Meanwhile, settled before publish
	mu        sync.Mutex
	settled   *diag.Finding  // the first failure of the work started by Meanwhile
	receipt   *state.Receipt // made by the receipt step, written as the run ends (WriteRecords)
}

// New starts a run of command on host, bounded by bootstrap.deadline (or
// by Options.Until, or ctx's own deadline, when earlier). It
// reads the renew record once and makes the run's observation. The caller
// must call the returned cancel.
func New(ctx context.Context, command string, cfg *config.Config, host *system.Host, o Options) (*Run, context.CancelFunc) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	parent := ctx
	until := time.Now().Add(cfg.Bootstrap.Deadline.Duration)
	if !o.Until.IsZero() && o.Until.Before(until) {
		until = o.Until
	}
	ctx, cancel := context.WithDeadline(ctx, until)
	r := &Run{Command: command, Ctx: ctx, Cfg: cfg, Host: host, Opts: o, Log: o.Log, Out: &Outcome{}, Start: time.Now(),
		StateDir: host.Path(cfg.Paths.StateDir), PKI: host.Path(cfg.Paths.PKIDir), parent: parent}
	r.Found = state.ReadRenewal(r.StateDir)
	r.Env = observe.NewEnv(cfg, host)
	r.Env.RootsGiven = true
	r.Env.UseRecord(r.Found)
	r.Out.Record = r.Found
	if r.Found == nil {
		r.Found = &state.Renewal{}
	}
	r.keepDamaged()
	if o.Durable != nil {
		r.Meanwhile(func() *diag.Finding {
			if err := o.Durable(); err != nil {
				return &diag.Finding{Layer: diag.State, Owner: diag.Node, Check: "state-dir", Summary: err.Error(),
					Remedy: diag.NotDurable(cfg.Paths.StateDir + " and " + cfg.Paths.PKIDir)}
			}
			return nil
		})
	}
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
			r.Found.HookPending = true
		}
	}
}

// Meanwhile runs fn while the run goes on: work that must be done before
// the run publishes a set but that nothing before that waits for, so its
// waits for the disk overlap the proof's for the network. Publish settles
// it first (Settle), and so does the end of every run, so a crash leaves
// only states the same work done in line could leave: it is done or not,
// and nothing published depends on it yet. fn must not touch the run's
// stages or observation; a finding it returns fails the run at publish.
func (r *Run) Meanwhile(fn func() *diag.Finding) {
	r.meanwhile.Add(1)
	go func() {
		defer r.meanwhile.Done()
		if f := fn(); f != nil {
			r.mu.Lock()
			if r.settled == nil {
				r.settled = f
			}
			r.mu.Unlock()
		}
	}()
}

// Settle waits for what Meanwhile started and returns its first failure,
// once.
func (r *Run) Settle() *diag.Finding {
	r.meanwhile.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.settled
	r.settled = nil
	return f
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
	for i := range steps {
		s := &steps[i]
		rest = steps[i+1:]
		t0 := time.Now()
		f := r.do(s)
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
	if f := r.Settle(); f != nil && rep == nil { // a list without publish
		rep = r.failed("settle", f)
	}
	if rep != nil {
		timings = r.hookAnyway(rest, timings)
	}
	if rep == nil {
		rep = r.provenReport()
	}
	if rep == nil { // a list without a proof that did not halt: nothing to say but done
		rep = &report.Report{OK: true, Command: r.Command, NodeID: r.Cfg.NodeID, Summary: "done"}
	}
	rep.Command, rep.Steps = r.Command, timings
	if finish != nil {
		finish(r, rep)
	}
	if r.receipt != nil { // no finish wrote it
		r.WriteRecords(rep, nil)
	}
	rep.DurationMS = time.Since(r.Start).Milliseconds()
	r.Out.Report = rep
	r.outcome()
	return r.Out
}

// do runs one step, holding it to what it declared: a step that misuses
// the stages fails as a bug.
func (r *Run) do(s *Step) *diag.Finding {
	r.step = s
	defer func() { r.step = nil }()
	f := s.Do(r)
	if r.violation == "" && s.Writes != 0 && !r.st.written(s.Writes) {
		r.bug("step %s did not write stage %s", s.Name, s.Writes)
	}
	if r.violation != "" {
		r.halted = nil
		return stageBug(r.violation)
	}
	return f
}

// outcome fills what the run did from its stages.
func (r *Run) outcome() {
	o := r.Out
	if g := r.st.obtained; g != nil {
		o.Enrolled = g.Enrolled
	}
	if p := r.st.proven; p != nil {
		o.Attempts, o.Task = p.Attempts, p.Task
	}
	if p := r.st.published; p != nil {
		o.Renewed = p.Swapped
		if p.Task != nil {
			o.Task = p.Task
		}
	}
	set, v := r.installed()
	o.Installed = &Installed{Set: set, Verdict: v}
}

// provenReport is the run's report when every step passed: the proof's,
// with the replaced certificate's revocation line; nil without a proof.
func (r *Run) provenReport() *report.Report {
	p := r.st.proven
	if p == nil {
		return nil
	}
	rep := *p.Report
	rep.Checks = r.provenChecks()
	return &rep
}

// provenChecks are the checks a passing proof showed, and the revocation
// of the set it replaced.
func (r *Run) provenChecks() []report.Result {
	checks := append([]report.Result(nil), r.st.proven.Report.Checks...)
	if v := r.st.revoked; v != nil && v.Check != nil {
		checks = append(checks, *v.Check)
	}
	return checks
}

// hookAnyway runs the post hook, when the list has it among the steps a
// failure or a halt left unrun and it is pending: a published set the
// node-agent has not been told about (this run's publish without a
// passing proof, or an earlier run's) is announced whatever this run's
// proof or renewal says, and stays pending until the hook succeeds. The
// run's answer, and its result, stay the failure that ended it; the hook's
// outcome is in the renew record (hook, hook_pending) and its log line.
func (r *Run) hookAnyway(rest []Step, timings []report.Step) []report.Step {
	if !r.hookPending() {
		return timings
	}
	for i := range rest {
		s := &rest[i]
		if s.Name != HookStep.Name {
			continue
		}
		t0 := time.Now()
		f := r.do(s)
		if h := r.st.hooked; h != nil {
			h.Result = "" // the run's result is what ended it
		}
		st := report.Step{Name: s.Name, Status: "ok", DurationMS: time.Since(t0).Milliseconds()}
		if f != nil {
			st.Status = "fail"
			r.Log.Error("step", "step", s.Name, "layer", string(f.Layer), "owner", string(f.Owner), "status", "fail", "message", f.Summary)
		}
		return append(timings, st)
	}
	return timings
}

// hookPending reports whether renew.post_hook is pending: an earlier run
// left it so, or this run's publish made it.
func (r *Run) hookPending() bool {
	return r.Found.HookPending || (r.st.published != nil && r.st.published.HookDue)
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
	if p := r.st.proven; p != nil && p.Report.OK {
		res := append(r.provenChecks(), rep.Checks...)
		rep = report.New(r.Command, r.Cfg.NodeID, res, 0)
		rep.Task = p.Report.Task
	}
	return rep
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
