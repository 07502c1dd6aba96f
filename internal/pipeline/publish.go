package pipeline

import (
	"context"
	"crypto"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/lifecycle"
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
		ok, why = r.decide()
	}
	if !ok {
		r.keptAside(why)
		return nil
	}
	if err := credstore.Publish(r.PKI, r.Gen, r.Host.Hook); err != nil {
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
	// The run ends here with the proof's failure, but the credentials the
	// node-agent reads changed: renew.post_hook runs now (a failure keeps
	// it pending for the next run), not never.
	if f := PostHook(r); f != nil {
		r.Warnings = append(r.Warnings, f.Summary)
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
// published when the installed set is no better:
//   - the installed set cannot authenticate at all (missing, expired,
//     stale, another node's...): the candidate is no worse;
//   - otherwise the installed set is proven now, in the same run, and the
//     two compared: a candidate that fails at a lower layer than the
//     installed set, or where the installed set passes, is never published
//     (the ingress or the API rejects it where the installed one is
//     accepted); one that fails at the same layer above tls-client-auth
//     (the ingress accepted it; the API or the route fails alike: 5xx,
//     timeouts, 401 for both) is published now; one that fails at the same
//     layer at or below tls-client-auth (the ingress unreachable for both:
//     no evidence either way) is kept aside until the installed
//     certificate enters the last quarter of its life, then published,
//     since the alternative is certain expiry.
func (r *Run) decide() (bool, string) {
	if r.Current == nil || r.Verdict.Action == lifecycle.Reenroll {
		return true, fmt.Sprintf("the installed set cannot authenticate (%s), so the new set is no worse", r.Verdict.First())
	}
	if r.Ctx.Err() != nil {
		return false, "no time was left to prove the installed set as well (bootstrap.deadline)"
	}
	once, cancel := context.WithCancel(r.Ctx)
	cancel() // one attempt, no retries: the fault is the candidate's to explain
	cur, env, _ := r.proveLoop(once, "")
	if f := r.handOff(env, cur); f != nil {
		r.Log.Error("step", "step", "task-save", "layer", "state", "status", "fail", "message", f.Summary)
	}
	cand := r.Proof
	r.Log.Info("step", "step", "publish", "layer", "credentials", "status", "compare", "new_failed_layer", string(cand.FailedLayer), "installed_ok", cur.OK, "installed_failed_layer", string(cur.FailedLayer))
	ci, ii := cand.FailedLayer.Index(), cur.FailedLayer.Index()
	switch {
	case cur.OK:
		return false, "the installed set polls, the new one does not"
	case ci < ii:
		return false, fmt.Sprintf("the new set fails at %s, below the installed set's failure at %s", cand.FailedLayer, cur.FailedLayer)
	case ci > ii:
		return true, fmt.Sprintf("the new set gets further (fails at %s) than the installed one (fails at %s)", cand.FailedLayer, cur.FailedLayer)
	case ci > diag.TLSClientAuth.Index():
		return true, fmt.Sprintf("a fault the installed set shares (both fail at %s, past the ingress's client authentication): it says nothing against the new certificate", cand.FailedLayer)
	}
	leaf := r.Current.Leaf()
	urgent := leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore) / 4)
	if !r.Host.Time().Before(urgent) {
		return true, fmt.Sprintf("both sets fail at %s (no evidence either way) and the installed certificate is in the last quarter of its life (expires %s)", cand.FailedLayer, stamp(leaf.NotAfter))
	}
	return false, fmt.Sprintf("both sets fail at %s (no evidence either way); the new set is published from %s, when the installed certificate enters the last quarter of its life, if this lasts", cand.FailedLayer, stamp(urgent))
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
