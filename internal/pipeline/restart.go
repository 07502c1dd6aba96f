package pipeline

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// Restarts are spread.
//
// provision.service restarts a failed bootstrap after RestartSec=30s, and
// systemd 252 has neither jitter nor RestartSteps=: a fleet that failed in
// the same second (a CA outage, a lost route) would come back in the same
// second, 30 s later, and fail or overload the CA again. So a run that is a
// restart waits a random delay of its own (full jitter over
// bootstrap.restart_splay) before its network work; a first start, and a
// run by hand, never waits.
//
// How a run knows it is a restart: bootstrap records each failed run in
// state_dir/last-failure.json (when it ended, in which boot, where it
// failed) and removes the record when a run succeeds. A run is a restart
// when it is the unit's own process (Options.Invocation: systemd's
// INVOCATION_ID, set by cli) and the record says a run failed in this boot
// less than RestartWindow ago. "This boot" is the kernel's boot ID when both
// runs could read it, otherwise the boot's start by the wall clock
// (system.Boot), within bootTolerance; "ago" is measured on CLOCK_BOOTTIME,
// which no time sync steps.

// RestartWindow is how recent a failure must be for a run to be its
// restart: ten times the unit's RestartSec=30s, room for a drop-in that
// lengthens it and for a restart a busy machine starts late.
const RestartWindow = 5 * time.Minute

// bootTolerance is how far two readings of a boot's start may differ and
// still be the same boot: the wall clock slews under time sync, but a
// reboot moves the start by at least the earlier boot's uptime.
const bootTolerance = 2 * time.Second

// RestartSplayStep is bootstrap's wait before its network work when it is
// a restart.
var RestartSplayStep = Step{Name: "restart-splay", Do: RestartSplay}

// IsRestart decides whether a run is a restart of the failed run rec
// describes: under systemd (invocation, INVOCATION_ID, set), with a failure
// recorded in the boot now is in, less than RestartWindow before it. why
// says what decided, for the log.
func IsRestart(invocation string, rec *state.Failure, now system.Boot) (restart bool, why string) {
	if invocation == "" {
		return false, "not started by systemd (no INVOCATION_ID): a run by hand never waits"
	}
	if rec == nil {
		return false, "no failed run recorded"
	}
	then := rec.Boot()
	switch {
	case then.ID != "" && now.ID != "":
		if then.ID != now.ID {
			return false, "the failed run was in another boot (boot ID)"
		}
	case then.Since <= 0 || now.Since <= 0:
		return false, "the boot of the failed run cannot be told (no boot ID, no boot clock)"
	default:
		if d := now.Start().Sub(then.Start()); d > bootTolerance || d < -bootTolerance {
			return false, fmt.Sprintf("the failed run was in another boot (this boot started %s after it)", d.Round(time.Second))
		}
	}
	ago := now.Since - then.Since
	if then.Since <= 0 || now.Since <= 0 {
		ago = now.Wall.Sub(then.Wall)
	}
	if ago < 0 || ago > RestartWindow {
		return false, fmt.Sprintf("the failed run ended %s ago, outside the %s a restart comes within", ago.Round(time.Second), RestartWindow)
	}
	return true, fmt.Sprintf("a restart: the run that failed at layer %s ended %s ago in this boot", rec.Layer, ago.Round(time.Millisecond))
}

// RestartSplay waits, when this run is a restart, a uniformly random time
// in [0, bootstrap.restart_splay) (at most half the deadline, so the run
// keeps time for its work), before anything reaches the network. The run's
// context cuts the wait: SIGTERM ends it at once.
func RestartSplay(r *Run) *diag.Finding {
	splay := min(r.Cfg.Bootstrap.RestartSplay.Duration, r.Cfg.Bootstrap.Deadline.Duration/2)
	if splay <= 0 {
		return nil
	}
	rec := state.ReadFailure(r.StateDir)
	restart, why := IsRestart(r.Opts.Invocation, rec, r.Host.Boot())
	if !restart {
		r.Log.Debug("step", "step", "restart-splay", "layer", "state", "status", "none", "message", why)
		return nil
	}
	rnd := r.Opts.Policy.Rand
	if rnd == nil {
		rnd = rand.Int64N
	}
	wait := time.Duration(rnd(int64(splay)))
	r.Log.Info("step", "step", "restart-splay", "layer", "state", "status", "wait", "wait", wait.Round(time.Millisecond).String(), "message", why)
	sleep := r.Opts.Sleep
	if sleep == nil {
		sleep = retry.Sleep
	}
	if err := sleep(r.Ctx, wait); err != nil {
		layer, owner := diag.Layer(rec.Layer), diag.Owner(rec.Owner)
		if layer == "" || owner == "" {
			layer, owner = diag.State, diag.Node
		}
		return &diag.Finding{Layer: layer, Owner: owner, Check: "restart-splay",
			Summary: fmt.Sprintf("stopped while waiting %s (bootstrap.restart_splay) before its network work: %s (%v)", wait.Round(time.Millisecond), why, err),
			Remedy:  "fix what failed at layer " + rec.Layer + " (the previous run's report says what), then run provision bootstrap again; run by hand it does not wait"}
	}
	return nil
}

// NoteOutcome records a failed run in state_dir for the next run's restart
// decision, or forgets the last failure when this run succeeded. A record
// that cannot be written only costs a restart its spread: the run's own
// result stands.
func (r *Run) NoteOutcome(rep *report.Report) {
	if rep.OK {
		state.RemoveFailure(r.StateDir)
		return
	}
	b := r.Host.Boot()
	f := &state.Failure{EndedAt: b.Wall.UTC(), BootID: b.ID, SinceBootNS: int64(b.Since),
		Layer: string(rep.FailedLayer), Owner: string(rep.Owner), Check: rep.FailedCheck}
	if err := state.WriteFailure(r.StateDir, f, r.Host.Hook); err != nil {
		r.Log.Warn("step", "step", "restart-splay", "layer", "state", "status", "not-recorded", "message", "the failure could not be recorded for the next run's restart spread: "+err.Error())
	}
}
