package pipeline

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/internal/tasks"
)

// The shared steps, by the names the report's steps[] documents.
var (
	SweepStep    = Step{"sweep", Sweep}
	RestrictStep = Step{"credentials-mode", Restrict}
	RootsStep    = Step{"ca-roots", Roots}
	ClockStep    = Step{"clock", Clock}
	ProveStep    = Step{"proof", Prove}
	PublishStep  = Step{"publish", Publish}
	HookStep     = Step{"post-hook", PostHook}
	RevokeStep   = Step{"revoke", Revoke}
)

// Sweep removes what a killed run left: temp files in state_dir, its done
// and tasks directories, and unpublished temp generations under pki_dir.
func Sweep(r *Run) *diag.Finding {
	system.SweepTemp(r.StateDir, state.ReceiptFile, state.PendingFile, state.ExposedFile, state.RenewalFile, state.FailureFile, system.OwnMark)
	system.SweepTemp(filepath.Join(r.StateDir, state.DoneDir), r.Host.MachineID())
	tasks.Sweep(r.StateDir)
	credstore.Sweep(r.PKI)
	return nil
}

// Restrict records an exposed key and restricts it, before anything else,
// in the same run that finds it, whichever command runs. The record stays
// until the key is rotated: a crash, or a run without a token, must not
// forget that this key may have been read.
func Restrict(r *Run) *diag.Finding {
	x, err := restrictKeys(r.StateDir, r.PKI, r.Host, observe.Access(r.Cfg, r.Host))
	if err != nil {
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Summary: "a private key under " + r.Cfg.Paths.PKIDir + " is readable by others and cannot be restricted: " + err.Error(),
			Remedy: "restrict it by hand (chmod 0600 the key, 0700 the directory; 0640 and 0750 for paths.key_group) and treat the key as exposed: issue a fresh one-time token and run provision bootstrap to rotate it"}
	}
	if x != nil && len(x.Changes) > 0 {
		r.Log.Warn("step", "step", "credentials-mode", "layer", "credentials", "status", "exposed", "found", x.Found, "changes", strings.Join(x.Changes, "; "))
	}
	r.Exposure = x
	return nil
}

// restrictKeys records an exposed key in state_dir (before changing
// anything, so a crash cannot lose it), then restricts every loose path
// under pki. It returns the recorded exposure, old or new, if any.
func restrictKeys(stateDir, pki string, host *system.Host, a credstore.Access) (*state.Exposure, error) {
	x := state.ReadExposure(stateDir)
	loose, err := credstore.FindLooseFor(pki, a)
	if err != nil {
		return x, err
	}
	var keys []string
	for _, l := range loose {
		if l.Key {
			keys = append(keys, l.String())
		}
	}
	if len(keys) > 0 {
		if x == nil {
			x = &state.Exposure{Found: host.Time().UTC()}
		}
		x.Changes = append(x.Changes, keys...)
		if err := state.WriteExposure(stateDir, x, host.Hook); err != nil {
			return x, fmt.Errorf("recording the exposure: %w", err)
		}
	}
	return x, credstore.Tighten(loose)
}

// Roots gets the CA's current and federated roots through the pinned root
// (ca.pem's roots carry trust across a rotation that retired it). The
// client makes one request per attempt; this loop is the only retry, with
// the CA's Retry-After honoured, bounded by the run's deadline. A fetch that
// fails while the CA's Date shows the node clock off is the clock's
// failure: the CA's certificate cannot be judged.
func Roots(r *Run) *diag.Finding {
	r.Env = observe.NewEnv(r.Cfg, r.Host)
	r.Client = r.Env.CAClient(0)
	var f *diag.Finding
	retry.Until(r.Ctx, r.Opts.Policy, r.Opts.Sleep, func(int) (bool, time.Duration) {
		roots, err := r.Client.FetchRoots(r.Ctx)
		r.Roots, f = roots, nil
		if err == nil {
			return true, 0
		}
		notDone := "the CA's certificate cannot be judged and nothing was sent to it"
		if r.Command == "bootstrap" {
			notDone = "the CA's certificate cannot be judged and the one-time token was not sent"
		}
		if f = skewFinding(roots, notDone); f != nil {
			f.Evidence["ca_error"] = err.Error()
			return true, 0
		}
		f = diag.FromEnroll(err, diag.CA, r.Cfg.CA.TokenFile)
		if !f.Transient {
			return true, 0
		}
		r.Log.Warn("step", "step", "ca-roots", "layer", "ca", "status", "retry", "message", f.Summary)
		var ee *enroll.Error
		if errors.As(err, &ee) {
			return false, ee.RetryAfter
		}
		return false, 0
	})
	if f != nil {
		return f
	}
	r.Env.SetRoots(r.Roots)
	r.Log.Info("step", "step", "ca-roots", "layer", "ca", "status", "ok", "roots", len(r.Roots.Current), "federated", len(r.Roots.Federated))
	r.Host.Hook.At("roots fetched")
	return nil
}

// Clock compares the node clock with the CA's Date header before anything
// irreversible: a one-time token is spent by the sign, and a renewal's
// certificate would look expired or not yet valid by a skewed clock.
func Clock(r *Run) *diag.Finding {
	if r.Plan != Enroll && r.Plan != Renew && r.Plan != RenewExpired {
		return nil
	}
	what := "the renewal was not requested"
	if r.Plan == Enroll {
		what = "the one-time token was not sent"
	}
	return skewFinding(r.Roots, what)
}

// skewFinding is the clock finding when the CA's Date (from the roots
// fetch, authenticated) showed the node clock beyond lifecycle.MaxSkew at
// the instant it arrived, else nil: however long ago that was, the age of
// the observation is not skew.
func skewFinding(roots *enroll.Roots, notDone string) *diag.Finding {
	if roots == nil {
		return nil
	}
	now := roots.DateAt
	skew, bad := lifecycle.Skew(now, roots.ServerDate)
	if !bad {
		return nil
	}
	remedy := "synchronise the node clock (chrony or systemd-timesyncd, and order provision after time-sync.target), then run again: nothing irreversible was done"
	if strings.Contains(notDone, "token") {
		remedy = "synchronise the node clock (chrony or systemd-timesyncd, and order provision after time-sync.target), then run bootstrap again: the token is unspent"
	}
	return &diag.Finding{Layer: diag.Clock, Owner: diag.Node, Check: "clock",
		Summary: fmt.Sprintf("the node clock is %s off the CA's (its Date header): %s, since a certificate would look expired or not yet valid", skew.Round(time.Second), notDone),
		Remedy:  remedy,
		Evidence: map[string]string{"node_time": now.UTC().Format(time.RFC3339), "ca_time": roots.ServerDate.UTC().Format(time.RFC3339),
			"skew": skew.Round(time.Second).String(), "max_skew": lifecycle.MaxSkew.String()}}
}
