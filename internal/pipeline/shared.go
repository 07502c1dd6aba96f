package pipeline

import (
	"errors"
	"fmt"
	"os"
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
	SweepStep    = Step{Name: "sweep", Do: Sweep}
	RestrictStep = Step{Name: "credentials-mode", Do: Restrict}
	RootsStep    = Step{Name: "ca-roots", Do: Roots, Writes: StageObserved}
	ClockStep    = Step{Name: "clock", Do: Clock, Reads: []Stage{StageObserved, StageJudged}}
	ProveStep    = Step{Name: "proof", Do: Prove, Reads: []Stage{StageJudged, StageObtained}, Writes: StageProven}
	PublishStep  = Step{Name: "publish", Do: Publish, Reads: []Stage{StageObserved, StageJudged, StageObtained, StageProven}, Writes: StagePublished}
	HookStep     = Step{Name: "post-hook", Do: PostHook, MayRead: []Stage{StageJudged, StageObtained, StagePublished}, Writes: StageHooked}
	RevokeStep   = Step{Name: "revoke", Do: Revoke, Reads: []Stage{StageObserved, StageJudged, StageObtained, StageProven, StagePublished}, Writes: StageRevoked}
	// ObtainStep is the credentials step for every plan but Enroll.
	ObtainStep = Step{Name: "credentials", Do: Obtain, Reads: []Stage{StageObserved, StageJudged}, Writes: StageObtained}
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
// forget that this key may have been read. The run's observation reads the
// record after this step (the verdict's key-was-exposed).
//
// With paths.key_group it first opens provision's directories to that group
// (grantGroup): a chown the unit's sandbox refuses is found here, before
// a token is spent or a certificate asked for, not after.
func Restrict(r *Run) *diag.Finding {
	a := observe.Access(r.Cfg, r.Host)
	x, err := restrictKeys(r.StateDir, r.PKI, r.Host, a)
	if err != nil {
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Summary: "a private key under " + r.Cfg.Paths.PKIDir + " is readable by others and cannot be restricted: " + err.Error(),
			Remedy: "restrict it by hand (chmod 0600 the key, 0700 the directory; 0640 and 0750 for paths.key_group) and treat the key as exposed: issue a fresh one-time token and run provision bootstrap to rotate it"}
	}
	if x != nil && len(x.Changes) > 0 {
		r.Log.Warn("step", "step", "credentials-mode", "layer", "credentials", "status", "exposed", "found", x.Found, "changes", strings.Join(x.Changes, "; "))
	}
	return grantGroup(r, a)
}

// grantGroup gives provision's directories the modes a says. With a key
// group: state_dir 0710, pki_dir, its generations and tasks/ 0750 and the
// keys 0640, all that group's (giveToGroup); without one, state_dir and
// tasks/ 0700, so a group taken away loses them too (pki_dir and the keys
// are restrictKeys's: a group there is an exposure).
func grantGroup(r *Run, a credstore.Access) *diag.Finding {
	if a.Group {
		if err := giveToGroup(r, a); err != nil {
			return groupFinding(r, err)
		}
		return nil
	}
	for _, d := range []string{r.StateDir, filepath.Join(r.StateDir, tasks.Dir)} {
		if !fileExists(d) {
			continue
		}
		// A group's leftover holds nothing secret: a failure is a warning.
		if err := a.Give(d, a.StateDirMode(), d == r.StateDir); err != nil {
			r.Log.Warn("step", "step", "credentials-mode", "layer", "state", "status", "warn", "message", err.Error())
		}
	}
	return nil
}

// giveToGroup gives state_dir, tasks/ and pki_dir with its generations and
// keys to a's group, then proves, before anything that cannot be taken
// back, what a renewal and a task hand-off will need (giving a new file to
// the group) and that the group can get to pki_dir through every directory
// above it, as the kernel will judge the node-agent: a directory provision
// did not make that stops the group is named, never changed.
func giveToGroup(r *Run, a credstore.Access) error {
	for _, d := range []string{r.StateDir, r.PKI} { // cli claimed both; a library caller may not have
		if _, err := system.ClaimDir(d, true); err != nil {
			return err
		}
	}
	if err := a.Give(r.StateDir, a.StateDirMode(), true); err != nil { // may be a link to another volume
		return err
	}
	// tasks/ is made here (it would come with the receipt), so verify,
	// which may write nowhere else, hands a task off into the group's.
	d := filepath.Join(r.StateDir, tasks.Dir)
	if _, err := system.EnsurePrivateDir(d, false); err != nil {
		return err
	}
	if err := a.Give(d, a.DirMode(), false); err != nil {
		return err
	}
	if err := credstore.GiveTo(r.PKI, a); err != nil {
		return err
	}
	if err := a.CheckChown(r.PKI); err != nil {
		return err
	}
	return a.ReachDir(r.Host.Root, r.Cfg.Paths.PKIDir)
}

// groupFinding words a key group provision cannot serve, in the run that
// finds it, before anything that cannot be taken back.
func groupFinding(r *Run, err error) *diag.Finding {
	spent := "nothing was asked of the CA"
	if r.Command == "bootstrap" {
		spent = "nothing was sent to the CA: the one-time token, if any, is unused"
	}
	f := &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Check: "key-group",
		Summary: "paths.key_group = " + r.Cfg.Paths.KeyGroup + ": " + err.Error() + "; " + spent}
	var ce *credstore.ChownError
	var re *credstore.ReachError
	switch {
	case errors.As(err, &ce):
		f.Remedy = "provision gives files to the group as a member of it (no CAP_CHOWN under its units): install the key-group drop-in for provision.service, provision-renew.service and provision-verify.service, /etc/systemd/system/<unit>.d/provision-key-group.conf with [Service] SupplementaryGroups=" + r.Cfg.Paths.KeyGroup + " (provision userdata writes it; /usr/share/provision/systemd/key-group.conf), then systemctl daemon-reload, and check no drop-in takes fchown out of SystemCallFilter= (systemctl cat provision.service); by hand, run as root; or remove paths.key_group; then run again"
	case errors.As(err, &re):
		f.Remedy = "let group " + r.Cfg.Paths.KeyGroup + " search " + re.At + " (chmod o+x, or g+x with that group), or move pki_dir where it can reach; provision changes only the directories it made (state_dir, pki_dir, tasks/); then run again"
	default:
		f.Remedy = "make " + r.Cfg.Paths.StateDir + " and " + r.Cfg.Paths.PKIDir + " directories root can change, then run again"
	}
	return f
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
// (ca.pem's roots carry trust across a rotation that retired it) and hands
// them to the run's observation. The client makes one request per attempt;
// this loop is the only retry, with the CA's Retry-After honoured, bounded
// by the run's deadline. A fetch that fails while the CA's Date shows the
// node clock off is the clock's failure: the CA's certificate cannot be
// judged. A failed fetch is the observation too: nothing asks the CA again.
func Roots(r *Run) *diag.Finding {
	o := &Observed{Client: r.Env.CAClient(0)}
	r.setObserved(o)
	var f *diag.Finding
	var last error
	retry.Until(r.Ctx, r.Opts.Policy, r.Opts.Sleep, func(int) (bool, time.Duration) {
		roots, err := o.Client.FetchRoots(r.Ctx)
		o.Roots, f, last = roots, nil, err
		if err == nil {
			return true, 0
		}
		if f = r.skewFinding(roots, r.notDone()); f != nil {
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
		r.Env.RootsFailed(last)
		return f
	}
	r.Env.SetRoots(o.Roots)
	r.Log.Info("step", "step", "ca-roots", "layer", "ca", "status", "ok", "roots", len(o.Roots.Current), "federated", len(o.Roots.Federated))
	r.Host.Hook.At("roots fetched")
	return nil
}

// notDone says what the run has not done yet when it stops before anything
// irreversible: bootstrap's token is unspent.
func (r *Run) notDone() string {
	if r.Command == "bootstrap" {
		return "the CA's certificate cannot be judged and the one-time token was not sent"
	}
	return "the CA's certificate cannot be judged and nothing was sent to it"
}

// Clock compares the node clock with the CA's Date header before anything
// irreversible: a one-time token is spent by the sign, and a renewal's
// certificate would look expired or not yet valid by a skewed clock.
func Clock(r *Run) *diag.Finding {
	plan := r.Judged().Plan
	if plan != Enroll && plan != Renew && plan != RenewExpired {
		return nil
	}
	what := "the renewal was not requested"
	if plan == Enroll {
		what = "the one-time token was not sent"
	}
	return r.skewFinding(r.Observed().Roots, what)
}

// skewFinding is the clock finding when the CA's Date (from the roots
// fetch, authenticated) showed the node clock beyond lifecycle.MaxSkew at
// the instant it arrived, else nil: however long ago that was, the age of
// the observation is not skew. Its remedy is the clock reason's
// (lifecycle.Remedy); bootstrap adds that its token is unspent.
func (r *Run) skewFinding(roots *enroll.Roots, notDone string) *diag.Finding {
	if roots == nil {
		return nil
	}
	now := roots.DateAt
	skew, bad := lifecycle.Skew(now, roots.ServerDate)
	if !bad {
		return nil
	}
	remedy := lifecycle.Remedy(lifecycle.ClockSkewed, r.Cfg)
	if r.Command == "bootstrap" {
		remedy += "; the one-time token is unspent"
	}
	return &diag.Finding{Layer: diag.Clock, Owner: diag.Node, Check: "clock",
		Summary: fmt.Sprintf("the node clock is %s off the CA's (its Date header): %s, since a certificate would look expired or not yet valid", skew.Round(time.Second), notDone),
		Remedy:  remedy,
		Evidence: map[string]string{"node_time": now.UTC().Format(time.RFC3339), "ca_time": roots.ServerDate.UTC().Format(time.RFC3339),
			"skew": skew.Round(time.Second).String(), "max_skew": lifecycle.MaxSkew.String()}}
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
