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
	"time"

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
	{Name: "assess", Do: assess},
	pipeline.ClockStep,
	pipeline.KeyStoreStep,
	{Name: "credentials", Do: pipeline.Obtain},
	pipeline.ProveStep,
	pipeline.PublishStep,
	pipeline.RevokeStep,
	pipeline.HookStep,
}

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
	if r.Current == nil && r.Cand == nil && rep.FailedCheck == "ca-roots" && r.Rec.Serial == "" {
		return // nothing judged yet and nothing recorded before: no record to write
	}
	r.RecordRenewal(rep)
	if r.Published {
		r.UpdateReceipt()
	}
	if rep.OK && r.Published {
		rep.Summary = published(r) + "; proven by tasks/wait through " + r.Cfg.NodeAPI.URL + " before it was published"
	}
}

// published says what the run published.
func published(r *pipeline.Run) string {
	rec := r.Rec
	if r.Result() == state.Refreshed {
		return fmt.Sprintf("ca.pem refreshed from the CA's %d current and %d federated root(s); the certificate (serial %s) is not due until %s", len(r.Roots.Current), len(r.Roots.Federated), rec.Serial, stamp(rec.DueAt))
	}
	return fmt.Sprintf("renewed: serial %s replaced %s, valid until %s, next renewal from %s", rec.Serial, rec.PreviousSerial, stamp(rec.NotAfter), stamp(rec.DueAt))
}

// assess takes the one verdict and plans: renew when due (or forced),
// renew after expiry when expiry is all that is wrong, refresh ca.pem when
// only the CA's roots moved, prove again a renewed set an earlier run left
// aside, run a pending hook, or stop: not due (exit 0, quickly, nothing
// changed), or cannot renew (a fresh token is needed).
func assess(r *pipeline.Run) *diag.Finding {
	r.Verdict = r.Env.Verdict(r.Ctx)
	r.Current, _ = r.Env.Creds()
	v := r.Verdict
	if v.Action == lifecycle.Reenroll && !v.RenewableAfterExpiry() && !forcedPastRevocation(r, v) {
		if r.HasRenewalAside() {
			// The installed set cannot stand for the node any more, and a
			// set the CA issued earlier is still good: proven and
			// published (it is no worse), not thrown away.
			r.Plan = pipeline.Adopt
			r.SetResult(state.Renewed)
			r.Log.Info("step", "step", "assess", "layer", "credentials", "status", v.Action.String(), "plan", r.Plan.String(), "reasons", fmt.Sprint(v.Reasons))
			return nil
		}
		return cannotRenew(r, v)
	}
	dueAt := v.DueAt(r.Cfg.Renew.Splay.Duration)
	switch {
	case v.Has(lifecycle.Expired):
		r.Plan = pipeline.RenewExpired
	case r.Opts.Force || !r.Host.Time().Before(dueAt):
		r.Plan = pipeline.Renew
	case v.Has(lifecycle.BundleStale):
		r.Plan = pipeline.Refresh
	case r.HasRenewalAside():
		// A renewed set an earlier run could not prove (or was killed
		// before it published): proven again now, not thrown away.
		r.Plan = pipeline.Adopt
		r.SetResult(state.Renewed)
	case r.Rec.HookPending && len(r.Cfg.Renew.PostHook) > 0, r.Rec.Unproven != "":
		// A hook still to run, or a set published without a passing proof
		// (the liveness rule): prove the installed set, then run the hook.
		r.Plan = pipeline.Keep
	default:
		r.SetResult(state.NotDue)
		r.Halt(&report.Report{OK: true, Command: "renew", NodeID: r.Cfg.NodeID, Summary: notDue(v, dueAt)})
	}
	if (v.Has(lifecycle.KeyExposed) || v.Has(lifecycle.KeyWasExposed)) && r.Current != nil && r.Current.KeyMatches() {
		r.Replaced = r.Current // a rekeyed renewal retires the exposed key: revoke its certificate
	}
	r.Log.Info("step", "step", "assess", "layer", "credentials", "status", v.Action.String(), "plan", r.Plan.String(), "reasons", fmt.Sprint(v.Reasons), "due_at", dueAt.UTC())
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

func notDue(v lifecycle.Verdict, dueAt time.Time) string {
	return fmt.Sprintf("not due: the certificate (serial %s) is renewed from %s (renewal point %s plus this node's splay); it expires at %s", v.Leaf.SerialNumber, stamp(dueAt), stamp(v.RenewAfter), stamp(v.Leaf.NotAfter))
}

// cannotRenew stops a run whose certificate cannot be renewed: its own
// layer (and so exit code) for expired or unusable (credentials), stale
// (ca) and revoked (enroll), each saying plainly that a fresh token is
// needed.
func cannotRenew(r *pipeline.Run, v lifecycle.Verdict) *diag.Finding {
	f := cannotRenewFinding(v, r.Cfg)
	f.Check = "assess"
	r.SetResult(state.Reenroll)
	if v.First() == lifecycle.Revoked {
		r.SetResult(state.RevokedRes)
	}
	return f
}

func cannotRenewFinding(v lifecycle.Verdict, cfg *config.Config) *diag.Finding {
	r := v.First()
	f := &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Remedy: lifecycle.Remedy(r, cfg)}
	const next = "re-enrollment with a fresh one-time token is needed (provision bootstrap)"
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
		return Due, &diag.Finding{Summary: fmt.Sprintf("renewal due: the certificate expired at %s; renew renews it after expiry where the CA allows it (else a fresh token is needed)", stamp(v.Leaf.NotAfter))}
	}
	due := v.DueAt(cfg.Renew.Splay.Duration)
	if force || !host.Time().Before(due) {
		return Due, &diag.Finding{Summary: fmt.Sprintf("renewal due since %s (renewal point %s plus this node's splay); the certificate expires at %s", stamp(due), stamp(v.RenewAfter), stamp(v.Leaf.NotAfter))}
	}
	return NotDue, &diag.Finding{Summary: notDue(v, due)}
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
