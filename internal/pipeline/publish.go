package pipeline

import (
	"crypto"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/state"
)

// Publish makes the proven candidate current by one symlink swap. A
// candidate whose proof failed is published only under the liveness rule
// (decide); otherwise it stays aside, the installed set stays current, and
// the proof's failure is the run's answer.
func Publish(r *Run) *diag.Finding {
	if r.Cand == nil || r.Gen == "" {
		return nil
	}
	why, ok := "", r.Proof.OK
	if !ok {
		var f *diag.Finding
		if ok, why, f = r.decide(); f != nil {
			// A task the installed set's comparison poll received could not
			// be handed off: it is the run's answer, the task in its
			// evidence, and the new set stays aside.
			r.Rec.Aside = filepath.Base(r.Gen)
			r.SetResult(state.Failed)
			return f
		}
	}
	if !ok {
		r.keptAside(why)
		return nil
	}
	wasPending := r.Rec.HookPending
	r.hookDue()
	if err := credstore.Publish(r.PKI, r.Gen, r.Host.Hook); err != nil {
		if !wasPending && r.Rec.HookPending {
			r.Rec.HookPending = false // nothing changed after all
			r.writeRecord()
		}
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Check: "publish",
			Summary: "the new set was proven but could not be published: " + err.Error() + "; the installed set stays current",
			Remedy:  "make " + r.Cfg.Paths.PKIDir + " writable, then run again"}
	}
	r.Host.Hook.At("published")
	r.Published, r.Out.Renewed, r.Unproven = true, true, why
	if r.Current == nil || !sameKey(r.Current.Key, r.Cand.Key) {
		// A new key replaced whatever key may have been exposed.
		os.Remove(filepath.Join(r.StateDir, state.ExposedFile))
	}
	r.Rec.Generation, r.Rec.Aside, r.Rec.Unproven = filepath.Base(r.Gen), "", why
	if why == "" {
		r.Log.Info("step", "step", "publish", "layer", "credentials", "status", "ok", "serial", r.Cand.Leaf().SerialNumber.String())
		return nil
	}
	r.SetResult(state.Unproven)
	r.Warnings = append(r.Warnings, "published without a passing proof: "+why)
	r.Log.Warn("step", "step", "publish", "layer", "credentials", "status", "unproven", "serial", r.Cand.Leaf().SerialNumber.String(), "reason", why)
	rep := r.Proof
	rep.Summary = fmt.Sprintf("new certificate (serial %s, valid until %s) published without a passing proof: %s; its proof failed: %s",
		r.Cand.Leaf().SerialNumber, stamp(r.Cand.Leaf().NotAfter), why, strings.TrimSuffix(rep.Summary, "."))
	r.Halt(rep)
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
func (r *Run) decide() (bool, string, *diag.Finding) {
	if r.Current == nil || r.cannotAuthenticate() {
		return true, fmt.Sprintf("the installed set cannot authenticate (%s), so the new set is no worse", r.Verdict.First()), nil
	}
	inst, f := r.proveInstalled()
	if f != nil {
		return false, "", f
	}
	cand := candidateOutcome(r.Ctx, r.Proof, r.ProofEnv)
	rule, why := compare(cand, inst)
	r.Log.Info("step", "step", "publish", "layer", "credentials", "status", "compare", "new", cand.String(), "installed", inst.String(), "ruling", rule.String())
	r.Host.Hook.At("compared")
	if rule != lastQuarter {
		return rule == publishNow, why, nil
	}
	leaf := r.Current.Leaf()
	urgent := leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore) / 4)
	if !r.Host.Time().Before(urgent) {
		return true, fmt.Sprintf("%s, and the installed certificate is in the last quarter of its life (expires %s)", why, stamp(leaf.NotAfter)), nil
	}
	return false, fmt.Sprintf("%s; the new set is published from %s, when the installed certificate enters the last quarter of its life, if this lasts", why, stamp(urgent)), nil
}

// cannotAuthenticate reports whether the installed set cannot stand for
// the node at all, so that comparing it with the new set is pointless. A
// stale chain (other-ca) is not among these: the ingress may still accept
// it, and then it is the set that works. A revocation counts while the
// record holds it (a CA that renewed the certificate this run cleared it).
func (r *Run) cannotAuthenticate() bool {
	v := r.Verdict
	if v.Has(lifecycle.Revoked) && r.Rec.RevokedSerial != "" {
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
// time the run has left: an attempt that gives no evidence (an exchange
// cut, a passing fault) is tried again, and a rejection counts only once a
// second attempt confirms it at the same layer (outcome.confirmed), so that
// a reload or a flap never makes the installed set look worse than it is:
// when the deadline ends before that second attempt (during the backoff,
// or cutting it), the one rejection is returned unconfirmed, no evidence.
// A task a proof receives is handed off; one that cannot be is returned
// as the finding (the task in its evidence), and the comparison stops.
func (r *Run) proveInstalled() (outcome, *diag.Finding) {
	var last outcome
	var lost *diag.Finding
	retry.Until(r.Ctx, r.Opts.Policy, r.Opts.Sleep, func(int) (bool, time.Duration) {
		if r.Ctx.Err() != nil {
			return true, 0
		}
		// One pass of the ladder (this loop decides about retries) on the
		// installed key and certificate with the CA's roots, as a refresh
		// would publish them: a stale ca.pem is not the question here.
		env := r.observeSet("")
		if r.Roots != nil {
			env.Bundle = r.Roots.Bundle()
		}
		t0 := time.Now()
		rep := report.New(r.Command, r.Cfg.NodeID, r.Opts.Ladder(r.Ctx, env, r.Log), time.Since(t0))
		if lost = r.handOff(env, rep); lost != nil {
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
func (r *Run) hookDue() {
	if len(r.Cfg.Renew.PostHook) == 0 || r.Rec.HookPending || r.Verdict.Has(lifecycle.Missing) {
		return
	}
	r.Rec.HookPending = true
	r.writeRecord()
	r.Host.Hook.At("hook pending")
}

// writeRecord writes the renew record as it stands, mid-run; a failure is
// logged (the run's own record, written last, tries again).
func (r *Run) writeRecord() {
	if err := state.WriteRenewal(r.StateDir, r.Rec); err != nil {
		r.Log.Error("step", "step", "record", "layer", "state", "status", "fail", "message", err.Error())
	}
}

// keptAside ends the run with the candidate's failed proof, the installed
// set still current and the candidate kept for the next run.
func (r *Run) keptAside(why string) {
	rep := r.Proof
	r.Rec.Aside = filepath.Base(r.Gen)
	r.SetResult(state.Failed)
	what := "the installed set stays current"
	if r.Current != nil {
		l := r.Current.Leaf()
		what = fmt.Sprintf("the installed certificate (serial %s, valid until %s) stays current", l.SerialNumber, stamp(l.NotAfter))
	}
	rep.Summary = fmt.Sprintf("new certificate not published (%s): %s; %s, and the new set is kept aside in %s and proven again by the next run",
		why, strings.TrimSuffix(rep.Summary, "."), what, filepath.Join(r.Cfg.Paths.PKIDir, filepath.Base(r.Gen)))
	r.Log.Warn("step", "step", "publish", "layer", "credentials", "status", "aside", "reason", why, "generation", filepath.Base(r.Gen))
	r.Halt(rep)
}

// sameKey reports whether two private keys have the same public key.
func sameKey(a, b crypto.Signer) bool {
	pa, ok := a.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pa.Equal(b.Public())
}
