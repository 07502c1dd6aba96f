package pipeline

import (
	"fmt"
	"slices"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/report"
)

// What a run knows, by stage.
//
// A run's state is grouped by the stage that produces it, as Ignition's
// stages hand theirs on: each stage is written once, by the one step that
// produces it, whether that step succeeds or fails, and read by the steps
// after it. A Step declares the stages it reads and the one it writes;
// CheckOrder refuses a list in which a step reads a stage no earlier step
// writes (each command's tests run it over its lists), and a step that
// reads a stage it did not declare, or one not written yet, or does not
// write the stage it declares, ends the run as a bug (layer internal)
// instead of acting on a zero value. So moving a step cannot silently
// break another.
//
// The observation is not a stage: New makes it (observe.Env, one a run),
// and it only grows: each question is answered once (the roots step hands
// it the CA's roots), and a set aside or a proof attempt is an observation
// of its own, derived from it (Env.ForSet), that shares its answers.

// Stage names a part of a run's state.
type Stage int

// The stages, in the order a run produces them.
const (
	StageObserved  Stage = iota + 1 // the CA's roots and client: the roots step
	StageJudged                     // the one verdict and the plan: assess
	StageObtained                   // the candidate set, or none: credentials
	StageProven                     // the proof's report and observation: proof
	StagePublished                  // what publish did: publish
	StageRevoked                    // the replaced certificate's revocation: revoke
	StageHooked                     // renew.post_hook: post-hook
)

var stageNames = [...]string{"", "observed", "judged", "obtained", "proven", "published", "revoked", "hooked"}

func (s Stage) String() string {
	if s > 0 && int(s) < len(stageNames) {
		return stageNames[s]
	}
	return fmt.Sprintf("stage(%d)", int(s))
}

// Observed is what the roots step learned from the CA, joined to the run's
// observation (Run.Env).
type Observed struct {
	Roots  *enroll.Roots  // the CA's current and federated roots, fetched through the pinned root
	Client *enroll.Client // the step-ca client every later request of the run uses
}

// Judged is what assess decided from the one verdict.
type Judged struct {
	Verdict lifecycle.Verdict // the installed set's
	Current *credstore.Set    // the installed set; nil when it did not load
	Plan    Plan
	Why     string // for Enroll: the reason a token is needed
	// Result is the renew record's result when assess decided the run's
	// (renew: not due, cannot renew, a renewal aside to adopt).
	Result   string
	Warnings []string
	// Usable are the sets earlier runs left aside that are good to prove
	// and publish instead of the installed one (usable), in order: judged
	// when assess writes the stage, so the credentials step only takes one.
	Usable []Aside
}

// KeyExposed reports whether the installed key was found readable by
// others, now or before (the exposure record): a renewal must replace it.
func (j *Judged) KeyExposed() bool {
	return j.Verdict.Has(lifecycle.KeyExposed) || j.Verdict.Has(lifecycle.KeyWasExposed)
}

// Obtained is the candidate the credentials step produced (or none: the
// installed set is proven as it is), and what the CA said on the way.
type Obtained struct {
	// Plan is the plan carried out: assess's, or bootstrap's fallback when
	// a renewal failed (enroll with the token, or keep the installed set).
	Plan Plan
	Why  string         // for Enroll: the reason a token is needed
	Set  *credstore.Set // the candidate; nil: prove the installed set
	Gen  string         // its generation directory (host path), aside until published
	// Reused: the candidate is a set an earlier run obtained and left aside.
	Reused   bool
	Enrolled bool // a one-time token bought it
	Renewed  bool // the CA renewed the installed certificate this run
	Rekeyed  bool // with a new key
	// RevocationCleared: the CA renewed the certificate a revocation was
	// recorded for (step-ca refuses a revoked one).
	RevocationCleared bool
	// Revocation is the CA's signed evidence that the installed
	// certificate is revoked, found when a renewal was refused.
	Revocation *RevocationEvidence
	Refused    bool   // a renewal was refused without evidence of revocation
	Result     string // the renew record's result
	Warnings   []string
}

// RevocationEvidence is a revocation the CA's signed list shows.
type RevocationEvidence struct {
	Serial   string
	Evidence string
}

// Proven is the proof: the report of the last attempt and what it judged.
type Proven struct {
	Report   *report.Report
	Env      *observe.Env // the observation the report judged
	Attempts int
	Task     *probe.Task // a task the proof received, handed off
}

// Published is what the publish step did with the candidate.
type Published struct {
	Swapped  bool   // current names the candidate now
	Unproven string // why it was published without a passing proof
	Aside    string // the generation kept aside for the next run (its name)
	HookDue  bool   // this publish made the post hook pending
	Result   string // the renew record's result
	Task     *probe.Task
	Warnings []string
}

// Revocation is the revoke step's outcome: the replaced certificate's
// report line, and a warning when it could not be revoked.
type Revocation struct {
	Check   *report.Result
	Warning string
}

// Hooked is the post hook's outcome.
type Hooked struct {
	Configured bool  // renew.post_hook is set
	Ran        bool  // it ran this run (it was pending)
	Err        error // why it failed
	Result     string
}

// stages holds a run's stages; nil: not written yet.
type stages struct {
	observed  *Observed
	judged    *Judged
	obtained  *Obtained
	proven    *Proven
	published *Published
	revoked   *Revocation
	hooked    *Hooked
	done      [len(stageNames)]bool // by Stage: written
}

func (s *stages) written(st Stage) bool { return st > 0 && int(st) < len(s.done) && s.done[st] }

// CheckOrder reports a list of steps in which a step reads a stage no
// earlier step writes, or two steps write the same stage.
func CheckOrder(steps []Step) error {
	written := map[Stage]string{}
	for _, s := range steps {
		for _, st := range s.Reads {
			if _, ok := written[st]; !ok {
				return fmt.Errorf("step %s reads stage %s, which no earlier step writes", s.Name, st)
			}
		}
		if s.Writes == 0 {
			continue
		}
		if by, ok := written[s.Writes]; ok {
			return fmt.Errorf("step %s writes stage %s, which step %s wrote", s.Name, s.Writes, by)
		}
		written[s.Writes] = s.Name
	}
	return nil
}

// bug records a step's misuse of the run's state; Execute ends the run
// with it after the step.
func (r *Run) bug(format string, a ...any) {
	if r.violation == "" {
		r.violation = fmt.Sprintf(format, a...)
	}
}

// read checks that the running step may read st: declared, and written by
// an earlier step (or by itself). Outside a step (finish, the record)
// every stage may be read.
func (r *Run) read(st Stage) {
	s := r.step
	if s == nil {
		return
	}
	switch {
	case slices.Contains(s.MayRead, st):
	case !slices.Contains(s.Reads, st) && s.Writes != st:
		r.bug("step %s reads stage %s without declaring it", s.Name, st)
	case !r.st.written(st):
		r.bug("step %s reads stage %s before any step wrote it", s.Name, st)
	}
}

// write checks that the running step may write st: it declares it, and no
// step wrote it before.
func (r *Run) write(st Stage) bool {
	switch {
	case r.st.written(st):
		r.bug("stage %s written twice", st)
		return false
	case r.step == nil || r.step.Writes != st:
		name := "(none)"
		if r.step != nil {
			name = r.step.Name
		}
		r.bug("step %s writes stage %s without declaring it", name, st)
		return false
	}
	return true
}

// stageBug is the finding of a step that misused the run's state.
func stageBug(msg string) *diag.Finding {
	return &diag.Finding{Layer: diag.Internal, Owner: diag.Provision, Check: "stages",
		Summary: "internal error: " + msg, Remedy: "this is a bug: report it with the log of this run"}
}

// Has reports whether stage st was written.
func (r *Run) Has(st Stage) bool { return r.st.written(st) }

// get is a stage for the running step to read (see read): the stage, or
// its zero value when no step wrote it.
func get[T any](r *Run, st Stage, v *T) *T {
	r.read(st)
	if v == nil {
		return new(T)
	}
	return v
}

// put writes a stage for the running step (see write).
func put[T any](r *Run, st Stage, field **T, v *T) {
	if r.write(st) {
		*field, r.st.done[st] = v, true
	}
}

// The stages, each zero before the step that writes it.
func (r *Run) Observed() *Observed     { return get(r, StageObserved, r.st.observed) }
func (r *Run) Judged() *Judged         { return get(r, StageJudged, r.st.judged) }
func (r *Run) Obtained() *Obtained     { return get(r, StageObtained, r.st.obtained) }
func (r *Run) Proven() *Proven         { return get(r, StageProven, r.st.proven) }
func (r *Run) Published() *Published   { return get(r, StagePublished, r.st.published) }
func (r *Run) Revocation() *Revocation { return get(r, StageRevoked, r.st.revoked) }
func (r *Run) Hooked() *Hooked         { return get(r, StageHooked, r.st.hooked) }

// SetJudged writes assess's stage, once its Verdict and Current are set;
// it judges the sets aside against them (Usable). The step that does must
// declare Writes: StageJudged.
func (r *Run) SetJudged(j *Judged) {
	put(r, StageJudged, &r.st.judged, j)
	if r.st.judged == j {
		for _, a := range r.asides() {
			if usable(j, a) {
				j.Usable = append(j.Usable, a)
			}
		}
	}
}

// SetObtained writes the credentials step's stage; the step that does
// must declare Writes: StageObtained.
func (r *Run) SetObtained(g *Obtained) { put(r, StageObtained, &r.st.obtained, g) }

// NoRoots writes the observed stage empty: the step that declares it
// found nothing the CA's roots are needed for (revoke, with no certificate
// this CA could revoke), so the CA is not asked; later steps read nil
// Roots and Client.
func (r *Run) NoRoots() { r.setObserved(&Observed{}) }

func (r *Run) setObserved(o *Observed)   { put(r, StageObserved, &r.st.observed, o) }
func (r *Run) setProven(p *Proven)       { put(r, StageProven, &r.st.proven, p) }
func (r *Run) setPublished(p *Published) { put(r, StagePublished, &r.st.published, p) }
func (r *Run) setRevoked(v *Revocation)  { put(r, StageRevoked, &r.st.revoked, v) }
func (r *Run) setHooked(h *Hooked)       { put(r, StageHooked, &r.st.hooked, h) }

// PlanNow is the plan the run is carrying out: the credentials step's
// when it ran, else assess's (Keep before assess).
func (r *Run) PlanNow() Plan {
	if r.st.obtained != nil {
		return r.st.obtained.Plan
	}
	if r.st.judged != nil {
		return r.st.judged.Plan
	}
	return Keep
}

// Result is the renew record's result this run reached: the last stage's
// that set one, "" if none.
func (r *Run) Result() string {
	var res []string
	if j := r.st.judged; j != nil {
		res = append(res, j.Result)
	}
	if g := r.st.obtained; g != nil {
		res = append(res, g.Result)
	}
	if p := r.st.published; p != nil {
		res = append(res, p.Result)
	}
	if h := r.st.hooked; h != nil {
		res = append(res, h.Result)
	}
	last := ""
	for _, x := range res {
		if x != "" {
			last = x
		}
	}
	return last
}

// warnings are the run's warnings, stage by stage (the receipt's).
func (r *Run) warnings() []string {
	var w []string
	if j := r.st.judged; j != nil {
		w = append(w, j.Warnings...)
	}
	if g := r.st.obtained; g != nil {
		w = append(w, g.Warnings...)
	}
	if p := r.st.published; p != nil {
		w = append(w, p.Warnings...)
	}
	if v := r.st.revoked; v != nil && v.Warning != "" {
		w = append(w, v.Warning)
	}
	return w
}

// Replaced is the still-valid installed set a new key replaces for good
// (an enrollment, or a renewal of an exposed key), revoked once the new
// set is proven and published; nil when there is none.
func (r *Run) Replaced() *credstore.Set {
	j := r.st.judged
	if j == nil || j.Current == nil || !j.Current.KeyMatches() {
		return nil
	}
	if r.PlanNow() == Enroll || j.KeyExposed() {
		return j.Current
	}
	return nil
}
