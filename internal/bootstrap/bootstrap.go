// Package bootstrap runs provision's whole line on a node: the hosts
// override, the CA's current roots, the one credential verdict, and then
// whatever the credentials need (keep them, refresh ca.pem, renew over mTLS,
// renew after expiry, or enroll with the one-time token), the new set
// written aside, proven by a real mTLS tasks/wait and only then published,
// the replaced certificate revoked, the receipt written last, and the post
// hook. It is one list of named steps over the shared pipeline; renew is
// the other.
//
// The incident's worst failure was a bootstrap that reported success while
// the node could not poll. Here "done" is not a step that can be reached any
// other way than through the proof: the receipt is written only after
// verify's ladder, ending with the real tasks/wait, passes. Transient
// failures are retried with jittered backoff inside the deadline; anything
// retrying cannot fix stops at once with the same report verify would print.
package bootstrap

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/hosts"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// Steps is bootstrap's list, by the names its report's steps[] carries.
var Steps = []pipeline.Step{
	pipeline.SweepStep,    // temp files a killed run left
	pipeline.RestrictStep, // an exposed key is restricted first
	{Name: "hosts", Do: applyHosts},
	pipeline.RestartSplayStep, // a restart waits a random delay of its own first
	pipeline.RootsStep,        // the CA's current roots, pinned, with Retry-After
	AssessStep,
	pipeline.ClockStep,    // before a token is spent or a renewal requested
	pipeline.KeyStoreStep, // the TPM that makes or holds the key, likewise
	{Name: "credentials", Do: credentials, Reads: []pipeline.Stage{pipeline.StageObserved, pipeline.StageJudged}, Writes: pipeline.StageObtained},
	pipeline.ProveStep,   // verify's ladder ending in a real tasks/wait; a task it got, kept
	pipeline.PublishStep, // only a proven set (or the liveness rule)
	pipeline.RevokeStep,
	pipeline.ReceiptStep, // only after the proof
	pipeline.HookStep,    // the node-agent told; a failure stays pending
}

// AssessStep is bootstrap's plan from the one verdict.
var AssessStep = pipeline.Step{Name: "assess", Do: assess, Reads: []pipeline.Stage{pipeline.StageObserved}, Writes: pipeline.StageJudged}

// Run bootstraps the node described by cfg on host.
func Run(ctx context.Context, cfg *config.Config, host *system.Host, o pipeline.Options) *pipeline.Outcome {
	r, cancel := pipeline.New(ctx, "bootstrap", cfg, host, o)
	defer cancel()
	return r.Execute(Steps, finish)
}

// finish writes the receipt the run made, and records the credentials in
// renew.json when this run changed them or ran the post hook, so renew,
// status and the metrics agree with it (both at once: WriteRecords), then
// records a failed run for the next run's restart decision (or forgets
// the last one when this run succeeded).
func finish(r *pipeline.Run, rep *report.Report) {
	var rec *state.Renewal
	if plan := r.PlanNow(); r.Published().Swapped || r.Hooked().Ran || plan == pipeline.Renew || plan == pipeline.RenewExpired {
		rec = r.Renewal(rep)
	}
	r.WriteRecords(rep, rec) // with the receipt, if the run made one
	r.NoteOutcome(rep)
	if rep.OK && rep.Summary != "" && r.Out.Receipt != nil {
		rep.Summary = report.Done(r.Cfg.NodeID, r.Cfg.NodeAPI.URL, r.Out.Receipt.Serial)
	}
}

// applyHosts writes the managed block. The wait for its directory's fsync
// (the rename made durable) overlaps the CA's roots and the enrollment, and
// ends before anything is published (pipeline.Run.Meanwhile): a power cut
// before then may bring back the previous hosts file, whole, on a node with
// nothing new published, and the next run writes the block again first.
func applyHosts(r *pipeline.Run) *diag.Finding {
	strategy, sync, err := hosts.ApplyToLater(r.Host, r.Cfg.Paths.HostsFile, HostEntries(r.Cfg))
	if err != nil {
		return hostsFinding(r.Cfg, err)
	}
	if sync != nil {
		cfg := r.Cfg
		r.Meanwhile(func() *diag.Finding {
			if err := sync(); err != nil {
				return &diag.Finding{Layer: diag.Hosts, Owner: diag.Node, Check: "hosts-apply",
					Summary: "the managed block was written to " + cfg.Paths.HostsFile + " but could not be made durable: " + err.Error(),
					Remedy:  diag.NotDurable(filepath.Dir(cfg.Paths.HostsFile))}
			}
			return nil
		})
	}
	r.Out.Hosts = strategy
	r.Log.Info("step", "step", "hosts-apply", "layer", "hosts", "status", "ok", "strategy", string(strategy), "path", r.Cfg.Paths.HostsFile)
	r.Host.Hook.At("hosts written")
	return nil
}

// hostsFinding is a failure to write the managed block.
func hostsFinding(cfg *config.Config, err error) *diag.Finding {
	msg, remedy := hosts.Describe(cfg.Paths.HostsFile, err)
	return &diag.Finding{Layer: diag.Hosts, Owner: diag.Node, Check: "hosts-apply", Summary: msg, Remedy: remedy + "; nothing was changed"}
}

// HostEntries is the config's [[hosts]] as managed-block entries.
func HostEntries(cfg *config.Config) []hosts.Entry { return hosts.EntriesOf(cfg.HostMap()) }

// assess takes the one credential verdict (verify renders the same one, so
// its remedy is what this run does) and plans:
//
//	re-enroll, expiry the only fault   renew after expiry (a token, if there is one, is the fallback;
//	                                   an exposed key with a token enrolls instead, one without
//	                                   is rekeyed right after: it is never carried forward)
//	re-enroll (or exposed + token),    adopt it: a certificate the CA issued (an enrollment a
//	  a set left aside, no fresh token killed run did not publish) is not thrown away; a fresh
//	                                   token (not the one that bought it) is the operator's ask
//	                                   for a new identity, and is used
//	re-enroll                          enroll with the one-time token
//	key exposed, a fresh token there   enroll: a new key, the old certificate revoked
//	past renewal                       renew over mTLS (the token, if any, is the fallback)
//	ca.pem not the CA's roots          refresh it
//	otherwise                          keep
func assess(r *pipeline.Run) *diag.Finding {
	j := &pipeline.Judged{Verdict: r.Env.Verdict(r.Ctx)}
	j.Current, _ = r.Env.Creds()
	r.SetJudged(j)
	v := j.Verdict
	tok := tokenPresent(r.Cfg, r.Host)
	exposed := j.KeyExposed()
	switch {
	case v.RenewableAfterExpiry() && !(exposed && freshToken(r)):
		j.Plan = pipeline.RenewExpired
	case (v.Action == lifecycle.Reenroll || (exposed && tok)) && !freshToken(r) && r.HasAside(j.Current):
		j.Plan = pipeline.Adopt
	case v.Action == lifecycle.Reenroll && exposed && tok:
		j.Plan, j.Why = pipeline.Enroll, string(v.First())+": "+v.Detail[v.First()]+"; "+exposureWhy(v)
	case v.Action == lifecycle.Reenroll:
		j.Plan, j.Why = pipeline.Enroll, string(v.First())+": "+v.Detail[v.First()]
	case exposed && tok:
		j.Plan, j.Why = pipeline.Enroll, exposureWhy(v)
	case v.Has(lifecycle.PastRenewal):
		j.Plan = pipeline.Renew
	case v.Has(lifecycle.BundleStale):
		j.Plan = pipeline.Refresh
	default:
		j.Plan = pipeline.Keep
	}
	if exposed && j.Plan == pipeline.Keep {
		for _, x := range []lifecycle.Reason{lifecycle.KeyExposed, lifecycle.KeyWasExposed} {
			if v.Has(x) {
				j.Warnings = append(j.Warnings, v.Detail[x]+"; kept, since "+r.Cfg.CA.TokenFile+" holds no fresh token; "+lifecycle.Remedy(x, r.Cfg))
			}
		}
	}
	r.Log.Info("step", "step", "assess", "layer", "credentials", "status", j.Plan.String(), "verdict", v.Action.String(), "reasons", fmt.Sprint(v.Reasons))
	return nil
}

func exposureWhy(v lifecycle.Verdict) string {
	var why []string
	for _, x := range []lifecycle.Reason{lifecycle.KeyExposed, lifecycle.KeyWasExposed, lifecycle.PastRenewal} {
		if v.Has(x) {
			why = append(why, string(x)+": "+v.Detail[x])
		}
	}
	return strings.Join(why, "; ")
}

// credentials carries out the plan. A renewal that fails falls back to the
// one-time token when there is one (the operator asked for a new identity);
// without one, a still-valid certificate is kept and proven, with a warning
// (renew tries again), unless the CA's revocation list names it. The plan
// carried out is the stage's (Obtained.Plan); assess's stays as judged.
func credentials(r *pipeline.Run) *diag.Finding {
	j := r.Judged()
	if j.Plan == pipeline.Enroll {
		g := &pipeline.Obtained{Plan: pipeline.Enroll, Why: j.Why}
		r.SetObtained(g)
		return enrollNode(r, g)
	}
	forgetBurntToken(r)
	g, f := r.ObtainFor(j)
	r.SetObtained(g)
	renewal := j.Plan == pipeline.Renew || j.Plan == pipeline.RenewExpired
	switch {
	case f == nil:
		return nil
	case renewal && tokenPresent(r.Cfg, r.Host):
		r.Log.Warn("step", "step", "credentials", "layer", string(f.Layer), "status", "enroll", "message", "renewal failed, enrolling with the one-time token instead: "+f.Summary)
		g.Plan, g.Why, g.Set, g.Gen = pipeline.Enroll, "the renewal failed: "+f.Summary, nil, ""
		return enrollNode(r, g)
	case j.Plan == pipeline.Renew && g.Result != state.RevokedRes && j.Current != nil:
		g.Warnings = append(g.Warnings, "the certificate is past its renewal point but could not be renewed now ("+f.Summary+"); kept: provision renew tries again")
		r.Log.Warn("step", "step", "credentials", "layer", string(f.Layer), "status", "keep", "message", f.Summary)
		g.Plan, g.Set, g.Gen = pipeline.Keep, nil, ""
		return nil
	}
	return f
}

// freshToken reports whether the token file holds a token no run has
// presented yet (not the one the enrollment marker names).
func freshToken(r *pipeline.Run) bool {
	raw, err := readToken(r.Ctx, r.Host, r.Cfg.CA.TokenFile)
	if err != nil || len(raw) == 0 {
		return false
	}
	prev, ok := state.ReadPending(r.Ctx, r.StateDir)
	return !ok || prev.TokenSHA256 != tokenHash(string(raw))
}

// tokenPresent reports whether a non-empty token file is there to enroll
// or rotate an exposed key with.
func tokenPresent(cfg *config.Config, host *system.Host) bool {
	d, name, err := host.Chase(cfg.CA.TokenFile, system.ChaseOptions{})
	if err != nil {
		return false
	}
	defer d.Close()
	st, err := d.Lstat(name)
	return err == nil && st.Mode().IsRegular() && st.Size() > 0
}
