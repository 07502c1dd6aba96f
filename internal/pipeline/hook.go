package pipeline

import (
	"time"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/hook"
	"github.com/gpuaas/provision/internal/state"
)

// PostHook runs renew.post_hook while it is pending (the record's
// hook_pending): every publish that replaced credentials made it so before
// the swap (hookDue), this run's or an earlier one's, a publish without a
// passing proof among them. The node-agent must be told about credentials
// that changed, however long that takes: a pending hook runs in every run,
// also one a failure ended (Run.hookAnyway), bounded by its own timeout
// rather than by what the run's deadline left. A failure keeps it pending (exit 22 when nothing
// else failed); the new set stands.
func PostHook(r *Run) *diag.Finding {
	h := &Hooked{Configured: len(r.Cfg.Renew.PostHook) > 0}
	r.setHooked(h)
	if !h.Configured || !r.hookPending() {
		return nil
	}
	h.Ran = true
	leaf := r.installedLeafFacts()
	ctx := r.Ctx
	if r.parent != nil {
		// Whatever the run's deadline left (a proof or a renewal retried
		// through an outage may have used it to the last millisecond), the
		// node-agent is told: the hook is bounded by its own
		// renew.post_hook_timeout, and a signal still stops it.
		ctx = r.parent
	}
	if _, err := hook.Run(ctx, hook.FromConfig(r.Cfg, r.Host.Root, leaf.serial, leaf.notAfter)); err != nil {
		h.Err, h.Result = err, state.HookFailed
		what := "renew.post_hook (pending since an earlier run changed the credentials) failed again: "
		if r.Published().Swapped {
			what = "renewal published (serial " + leaf.serial + "), but renew.post_hook failed: "
		}
		return &diag.Finding{Layer: diag.Hook, Owner: diag.Node, Check: "post-hook",
			Summary: what + err.Error() + "; it stays pending, and every later run (renew, bootstrap) runs it again until it succeeds",
			Remedy:  "fix the command in renew.post_hook (or what it reloads) and run provision renew: the credentials in place stay, and the node-agent has not been told about them yet"}
	}
	r.Log.Info("step", "step", "post-hook", "layer", "hook", "status", "ok", "command", r.Cfg.Renew.PostHook[0])
	return nil
}

type leafFacts struct {
	serial   string
	notAfter time.Time
}

// installedLeafFacts are the serial and expiry of the set now current, as
// the run knows it: the published candidate, or the installed set.
func (r *Run) installedLeafFacts() leafFacts {
	set := r.Judged().Current
	if r.Published().Swapped {
		set = r.Obtained().Set
	}
	if set == nil {
		return leafFacts{}
	}
	return leafFacts{serial: set.Leaf().SerialNumber.String(), notAfter: set.Leaf().NotAfter}
}
