package pipeline

import (
	"crypto"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/state"
)

// Publish makes the proven candidate current by one symlink swap. A
// candidate whose proof failed is published only under the liveness rule
// (decide); otherwise it stays aside, the installed set stays current, and
// the proof's failure is the run's answer.
func Publish(r *Run) *diag.Finding {
	p := &Published{}
	r.setPublished(p)
	// What the run left to finish meanwhile (the hosts block made durable,
	// the burnt token removed) is done before anything is published.
	if f := r.Settle(); f != nil {
		return f
	}
	g, proof := r.Obtained(), r.Proven().Report
	if g.Set == nil || g.Gen == "" {
		return nil
	}
	why, ok := "", proof.OK
	if !ok {
		var f *diag.Finding
		if ok, why, f = r.decide(p); f != nil {
			// A task the installed set's comparison poll received could not
			// be handed off: it is the run's answer, the task in its
			// evidence, and the new set stays aside.
			p.Aside, p.Result = filepath.Base(g.Gen), state.Failed
			return f
		}
	}
	if !ok {
		r.keptAside(p, why)
		return nil
	}
	r.hookDue(p)
	if err := credstore.Publish(r.PKI, g.Gen, r.Host.Hook); err != nil {
		if p.HookDue {
			p.HookDue = false // nothing changed after all
			r.writeRecord()
		}
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Check: "publish",
			Summary: "the new set was proven but could not be published: " + err.Error() + "; the installed set stays current",
			Remedy:  diag.Writable(r.Cfg.Paths.PKIDir) + ", then run again"}
	}
	r.Host.Hook.At("published")
	p.Swapped, p.Unproven = true, why
	if cur := r.Judged().Current; cur == nil || !sameKey(cur.Key, g.Set.Key) {
		// A new key replaced whatever key may have been exposed.
		os.Remove(filepath.Join(r.StateDir, state.ExposedFile))
	}
	if why == "" {
		r.Log.Info("step", "step", "publish", "layer", "credentials", "status", "ok", "serial", g.Set.Leaf().SerialNumber.String())
		return nil
	}
	p.Result = state.Unproven
	p.Warnings = append(p.Warnings, "published without a passing proof: "+why)
	r.Log.Warn("step", "step", "publish", "layer", "credentials", "status", "unproven", "serial", g.Set.Leaf().SerialNumber.String(), "reason", why)
	rep := *proof
	rep.Summary = report.PublishedUnproven(g.Set.Leaf().SerialNumber.String(), g.Set.Leaf().NotAfter, why, proof.Summary)
	r.Halt(&rep)
	return nil
}

// decide is the liveness rule, for a candidate whose proof failed. It is
// published at once when the installed set cannot authenticate at all
// (missing, unreadable, another key's or another node's, its TPM key lost
// to a cleared or another TPM, expired, not yet valid, revoked): the
// candidate is no worse. Otherwise the installed set
// is proven now, in the same run (a stale one too: an ingress may still
// accept it), its key and certificate with the CA's current roots (a
// ca.pem gone stale is what a refresh fixes, not evidence against them),
// and the two proofs compared on evidence (compare): which
// layer each failed at, and whether that failure is a statement against
// the set or one that says nothing (a cut exchange, a passing fault). A
// set the rule keeps waiting for the last quarter of the installed
// certificate's life is published then, whatever time this run had left.
func (r *Run) decide(p *Published) (bool, string, *diag.Finding) {
	j, proof := r.Judged(), r.Proven()
	if j.Current == nil || r.cannotAuthenticate(j) {
		return true, fmt.Sprintf("the installed set cannot authenticate (%s), so the new set is no worse", j.Verdict.First()), nil
	}
	inst, f := r.proveInstalled(p)
	if f != nil {
		return false, "", f
	}
	cand := candidateOutcome(r.Ctx, proof.Report, proof.Env)
	rule, why := compare(cand, inst)
	r.Log.Info("step", "step", "publish", "layer", "credentials", "status", "compare", "new", cand.String(), "installed", inst.String(), "ruling", rule.String())
	r.Host.Hook.At("compared")
	if rule != lastQuarter {
		return rule == publishNow, why, nil
	}
	sch := j.Verdict.Schedule
	if sch.InLastQuarter(r.Host.Time()) {
		return true, fmt.Sprintf("%s, and the installed certificate is in the last quarter of its life (expires %s)", why, stamp(j.Current.Leaf().NotAfter)), nil
	}
	return false, fmt.Sprintf("%s; the new set is published from %s, when the installed certificate enters the last quarter of its life, if this lasts", why, stamp(sch.LastQuarter)), nil
}

// cannotAuthenticate reports whether the installed set cannot stand for
// the node at all, so that comparing it with the new set is pointless. A
// stale chain (other-ca) is not among these: the ingress may still accept
// it, and then it is the set that works. A revocation counts while the
// record holds it (a CA that renewed the certificate this run cleared it).
func (r *Run) cannotAuthenticate(j *Judged) bool {
	v := j.Verdict
	if v.Has(lifecycle.Revoked) && r.Found.RevokedSerial != "" && !r.Obtained().RevocationCleared {
		return true
	}
	for _, x := range []lifecycle.Reason{lifecycle.Missing, lifecycle.Unreadable, lifecycle.KeyMismatch, lifecycle.KeyLost, lifecycle.WrongNode,
		lifecycle.NotYetValid, lifecycle.Expired} {
		if v.Has(x) {
			return true
		}
	}
	return false
}

// proveInstalled proves the installed set for the comparison, with the
// time the run has left, one pass of the ladder an attempt: an attempt
// that gives no evidence (an exchange cut, a passing fault) is tried
// again, and a rejection counts only once a second attempt confirms it at
// the same layer (outcome.confirmed), so that a reload or a flap never
// makes the installed set look worse than it is: when the deadline ends
// before that second attempt (during the backoff, or cutting it), the one
// rejection is returned unconfirmed, no evidence. The installed key and
// certificate are proven with the CA's roots, as a refresh would publish
// them: a stale ca.pem is not the question here. A task a proof receives
// is handed off; one that cannot be is returned as the finding (the task
// in its evidence), and the comparison stops.
func (r *Run) proveInstalled(p *Published) (outcome, *diag.Finding) {
	var last outcome
	var lost *diag.Finding
	retry.Until(r.Ctx, r.Opts.Policy, r.Opts.Sleep, func(int) (bool, time.Duration) {
		if r.Ctx.Err() != nil {
			return true, 0
		}
		// One pass of the ladder (this loop decides about retries) on the
		// installed key and certificate with the CA's roots, as a refresh
		// would publish them.
		env := r.Env.ForSet("")
		if roots := r.Observed().Roots; roots != nil {
			env.Bundle = roots.Bundle()
		}
		rep := r.proveOnce(env)
		var t *probe.Task
		if t, lost = r.handOff(env, rep, false); t != nil {
			p.Task = t
		}
		if lost != nil {
			return true, 0
		}
		o := installedOutcome(r.Ctx, rep, env)
		o.confirmed = o.rejected && last.rejected && last.layer == o.layer
		confirmed := o.polled || o.confirmed
		if r.Ctx.Err() != nil && last.tried && !o.polled {
			// The deadline cut this attempt short: the earlier one speaks.
			return true, 0
		}
		last = o
		if !confirmed {
			r.Log.Info("step", "step", "publish", "layer", string(o.layer), "status", "compare-retry", "installed", o.String())
		}
		return confirmed, 0
	})
	return last, lost
}

// hookDue makes renew.post_hook pending, in the renew record, before the
// new set is published: every publish (proven, unproven under the liveness
// rule, bootstrap's) changes what the node-agent must load, and it is told
// by the hook, however many runs that takes. Recorded before the swap, so
// no kill can publish a set without the hook due; a kill in between only
// runs the hook once more. A first enrollment, onto an empty pki_dir,
// replaces nothing a node-agent could hold.
func (r *Run) hookDue(p *Published) {
	if len(r.Cfg.Renew.PostHook) == 0 || r.Found.HookPending || r.Judged().Verdict.Has(lifecycle.Missing) {
		return
	}
	p.HookDue = true
	r.writeRecord()
	r.Host.Hook.At("hook pending")
}

// writeRecord writes the renew record as the run's stages stand, mid-run;
// a failure is logged (the run's own record, written last, tries again).
func (r *Run) writeRecord() {
	if err := state.WriteRenewal(r.StateDir, r.composeRecord()); err != nil {
		r.Log.Error("step", "step", "record", "layer", "state", "status", "fail", "message", err.Error())
	}
}

// keptAside ends the run with the candidate's failed proof, the installed
// set still current and the candidate kept for the next run.
func (r *Run) keptAside(p *Published, why string) {
	proof, gen := r.Proven().Report, filepath.Base(r.Obtained().Gen)
	p.Aside, p.Result = gen, state.Failed
	var serial string
	var notAfter time.Time
	if cur := r.Judged().Current; cur != nil {
		serial, notAfter = cur.Leaf().SerialNumber.String(), cur.Leaf().NotAfter
	}
	rep := *proof
	rep.Summary = report.KeptAside(why, proof.Summary, serial, notAfter, filepath.Join(r.Cfg.Paths.PKIDir, gen))
	r.Log.Warn("step", "step", "publish", "layer", "credentials", "status", "aside", "reason", why, "generation", gen)
	r.Halt(&rep)
}

// sameKey reports whether two private keys have the same public key.
func sameKey(a, b crypto.Signer) bool {
	pa, ok := a.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pa.Equal(b.Public())
}
