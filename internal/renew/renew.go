// Package renew keeps a bootstrapped node's identity alive for as long as
// the node lives. It is one list of named steps over the shared pipeline
// (bootstrap is the other): fetch the CA's roots, take the one credential
// verdict, and when the certificate is due renew it over mTLS with the
// current one (no token; after expiry through step-ca's own flow where the
// CA allows it), write the new set aside, prove it with the real mTLS
// tasks/wait through the ingress, publish it, run the post hook, record.
//
// Two promises hold together. Publish-safety: a renewed set is never
// published when the ingress or the API rejects it where the installed one
// is accepted. Liveness: a valid identity never lapses on a fault that says
// nothing against its renewal (API or ingress down, 5xx, timeouts, a stray
// 401 from a proxy); pipeline.Publish states the rule.
package renew

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// Steps is renew's list, by the names its report's steps[] carries.
var Steps = []pipeline.Step{
	pipeline.SweepStep,
	pipeline.RestrictStep,
	pipeline.RootsStep,
	AssessStep,
	pipeline.ClockStep,
	pipeline.KeyStoreStep,
	pipeline.ObtainStep,
	pipeline.ProveStep,
	pipeline.PublishStep,
	pipeline.RevokeStep,
	pipeline.HookStep,
}

// AssessStep is renew's plan from the one verdict.
var AssessStep = pipeline.Step{Name: "assess", Do: assess, Reads: []pipeline.Stage{pipeline.StageObserved}, Writes: pipeline.StageJudged}

// CrashPoints are the named points of a renewal, in order: host.Hook is
// called with each (the crash tests kill the binary there).
var CrashPoints = []string{"roots fetched", "renewed", "aside written", "proven", "hook pending", "published", "recorded"}

// Run renews the node's certificate when the verdict says so.
func Run(ctx context.Context, cfg *config.Config, host *system.Host, o pipeline.Options) *pipeline.Outcome {
	r, cancel := pipeline.New(ctx, "renew", cfg, host, o)
	defer cancel()
	return r.Execute(Steps, finish)
}

// finish records every attempt, and keeps the receipt naming the
// certificate in use.
func finish(r *pipeline.Run, rep *report.Report) {
	if r.Judged().Current == nil && r.Obtained().Set == nil && rep.FailedCheck == "ca-roots" && r.Found.Serial == "" {
		return // nothing judged yet and nothing recorded before: no record to write
	}
	r.RecordRenewal(rep)
	swapped := r.Published().Swapped
	if swapped {
		r.UpdateReceipt()
	}
	if rep.OK && swapped {
		rep.Summary = published(r)
	}
}

// published says what the run published.
func published(r *pipeline.Run) string {
	rec, url := r.Out.Record, r.Cfg.NodeAPI.URL
	if r.Result() == state.Refreshed {
		roots := r.Observed().Roots
		return report.Refreshed(len(roots.Current), len(roots.Federated), rec.Serial, rec.DueAt, url)
	}
	return report.Renewed(rec.Serial, rec.PreviousSerial, rec.NotAfter, rec.DueAt, url)
}

// assess takes the one verdict and plans: renew when due (or forced),
// renew after expiry when expiry is all that is wrong, refresh ca.pem when
// only the CA's roots moved, prove again a renewed set an earlier run left
// aside, run a pending hook, or stop: not due (exit 0, quickly, nothing
// changed), or cannot renew (a fresh token is needed).
func assess(r *pipeline.Run) *diag.Finding {
	j := &pipeline.Judged{Verdict: r.Env.Verdict(r.Ctx)}
	j.Current, _ = r.Env.Creds()
	r.SetJudged(j)
	v := j.Verdict
	if v.Action == lifecycle.Reenroll && !v.RenewableAfterExpiry() && !forcedPastRevocation(r, v) {
		if r.HasRenewalAside(j) {
			// The installed set cannot stand for the node any more, and a
			// set the CA issued earlier is still good: proven and
			// published (it is no worse), not thrown away.
			j.Plan, j.Result = pipeline.Adopt, state.Renewed
			r.Log.Info("step", "step", "assess", "layer", "credentials", "status", v.Action.String(), "plan", j.Plan.String(), "reasons", fmt.Sprint(v.Reasons))
			return nil
		}
		return cannotRenew(j, r.Cfg)
	}
	sch := v.Schedule
	switch {
	case v.Has(lifecycle.Expired):
		j.Plan = pipeline.RenewExpired
	case r.Opts.Force || sch.Due(r.Host.Time()):
		j.Plan = pipeline.Renew
	case v.Has(lifecycle.BundleStale):
		j.Plan = pipeline.Refresh
	case r.HasRenewalAside(j):
		// A renewed set an earlier run could not prove (or was killed
		// before it published): proven again now, not thrown away.
		j.Plan, j.Result = pipeline.Adopt, state.Renewed
	case r.Found.HookPending && len(r.Cfg.Renew.PostHook) > 0, r.Found.Unproven != "":
		// A hook still to run, or a set published without a passing proof
		// (the liveness rule): prove the installed set, then run the hook.
		j.Plan = pipeline.Keep
	default:
		j.Result = state.NotDue
		r.Halt(&report.Report{OK: true, Command: "renew", NodeID: r.Cfg.NodeID, Summary: notDue(v)})
	}
	r.Log.Info("step", "step", "assess", "layer", "credentials", "status", v.Action.String(), "plan", j.Plan.String(), "reasons", fmt.Sprint(v.Reasons), "due_at", sch.DueAt.UTC())
	return nil
}

// forcedPastRevocation: renew --force asks the CA for a new certificate
// even when a revocation is recorded, revocation being all that stops the
// renewal. The record rests on a CRL read earlier; the CA, asked again,
// decides: it signs (and the record is cleared), or it refuses and its CRL
// is read again.
func forcedPastRevocation(r *pipeline.Run, v lifecycle.Verdict) bool {
	if !r.Opts.Force || !v.Has(lifecycle.Revoked) || v.Has(lifecycle.RootsUnknown) {
		return false
	}
	for _, x := range v.Reasons {
		if x != lifecycle.Revoked && x != lifecycle.Expired && x.Action() == lifecycle.Reenroll {
			return false
		}
	}
	return true
}

func notDue(v lifecycle.Verdict) string {
	sch := v.Schedule
	return report.NotDue(v.Leaf.SerialNumber.String(), sch.DueAt, sch.RenewAfter, sch.NotAfter)
}

// cannotRenew stops a run whose certificate cannot be renewed: its own
// layer (and so exit code) for expired or unusable (credentials), stale
// (ca) and revoked (enroll), each saying plainly that a fresh token is
// needed.
func cannotRenew(j *pipeline.Judged, cfg *config.Config) *diag.Finding {
	f := cannotRenewFinding(j.Verdict, cfg)
	f.Check = "assess"
	j.Result = state.Reenroll
	if j.Verdict.First() == lifecycle.Revoked {
		j.Result = state.RevokedRes
	}
	return f
}

func cannotRenewFinding(v lifecycle.Verdict, cfg *config.Config) *diag.Finding {
	r := v.First()
	f := &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Remedy: lifecycle.Remedy(r, cfg)}
	const next = lifecycle.NeedsToken
	switch r {
	case lifecycle.Revoked:
		f.Layer = diag.Enroll
		f.Summary = "certificate revoked: " + v.Detail[r] + "; " + next
	case lifecycle.OtherCA:
		f.Layer = diag.CA
		f.Summary = "certificate stale: " + v.Detail[r] + "; renew does not renew a stale identity, so " + next
	case lifecycle.Expired:
		f.Summary = "certificate expired: " + v.Detail[r] + ", and it cannot be renewed after expiry (" + reasonsBut(v, lifecycle.Expired) + "), so " + next
	default:
		f.Summary = "certificate cannot be renewed: " + string(r) + ": " + v.Detail[r] + "; " + next
	}
	return f
}

func reasonsBut(v lifecycle.Verdict, skip lifecycle.Reason) string {
	s := ""
	for _, r := range v.Reasons {
		if r != skip && r.Action() == lifecycle.Reenroll {
			if s != "" {
				s += "; "
			}
			s += v.Detail[r]
		}
	}
	return s
}

// Decision is what renew --check answers without the network.
type Decision int

// The decisions.
const (
	Due         Decision = iota // the renewal point (plus splay) has passed, or expiry: renew after expiry
	NotDue                      // nothing to do yet
	CannotRenew                 // re-enrollment with a fresh token is needed
)

// Check judges the installed credentials offline and says whether a
// renewal is due, as a finding: for CannotRenew, the layer, owner and
// remedy of the reason (expired: credentials, stale: ca, revoked: enroll),
// as a renewal run would name them; otherwise only the summary is set.
// Without the network the chain is judged against the installed ca.pem:
// the CA's roots as the last run fetched them, authenticated, and proved
// with this very certificate. Only evidence carries over from earlier runs
// (a revocation the CA's signed list showed); a refusal does not.
func Check(cfg *config.Config, host *system.Host, force bool) (Decision, *diag.Finding) {
	e := observe.NewEnv(cfg, host)
	e.Offline = true
	v := e.Verdict(context.Background())
	if v.Action == lifecycle.Reenroll && !v.RenewableAfterExpiry() {
		f := cannotRenewFinding(v, cfg)
		if v.First() == lifecycle.OtherCA {
			f.Summary += " (judged offline against " + filepath.Join(cfg.Paths.PKIDir, credstore.CAFile) + ", the CA's roots when last fetched)"
		}
		return CannotRenew, f
	}
	if v.Action == lifecycle.Reenroll {
		return Due, &diag.Finding{Summary: report.DueExpired(v.Leaf.NotAfter)}
	}
	sch := v.Schedule
	if force || sch.Due(host.Time()) {
		return Due, &diag.Finding{Summary: report.DueSince(sch.DueAt, sch.RenewAfter, sch.NotAfter)}
	}
	return NotDue, &diag.Finding{Summary: notDue(v)}
}
