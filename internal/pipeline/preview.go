package pipeline

import (
	"context"
	"crypto/x509"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// A dry run (bootstrap --dry-run, renew --dry-run) runs the read-only
// part of a command's own list, the same steps and the same assess, and
// stops where the run would first change something: before a key mode is
// tightened, a token is sent, a certificate is requested or a file is
// written. Preview is what it found the run would do. Its steps may read
// files and fetch the CA's roots (the pinned GET the real run makes first);
// nothing else leaves the node, and nothing is written, the lock included.
//
// Why the same steps and not a description of them: a dry run that
// decides by its own rules drifts from the run it describes, and says
// "would keep" on the day the run enrolls.

// Preview is what a run would do. Field names are a contract (the
// dry_run object of the JSON report, packaging/schemas).
type Preview struct {
	// Hosts is the managed block's change (bootstrap); nil for renew.
	Hosts *HostsChange `json:"hosts"`
	// CA is what the CA's roots fetch found; nil when it was not made.
	CA *CASeen `json:"ca"`
	// Credentials are the installed set as judged by the one verdict.
	Credentials CredsSeen `json:"credentials"`
	// Plan is what the run would do about the credentials (Plan's names,
	// and renew's "not-due" and "cannot-renew"); "" when the dry run
	// stopped before the plan was made.
	Plan string `json:"plan"`
	// Why says why a token is needed (enroll).
	Why string `json:"why,omitempty"`
	// Rekey: a renewal would generate a new key (renew.rekey, or an
	// exposed key).
	Rekey bool `json:"rekey"`
	// KeyModes are the paths under pki_dir whose modes the run would
	// restrict first ("path 0644 -> 0600").
	KeyModes []string `json:"key_modes"`
	// Aside are generations an earlier run left unpublished; a renewal
	// proves a good one again before it asks the CA.
	Aside []string `json:"aside"`
	// RevokeSerial is the still-valid certificate the run would revoke at
	// the CA once its new key is proven and published.
	RevokeSerial string `json:"revoke_serial,omitempty"`
	// Token is the one-time token's part (bootstrap).
	Token TokenUse `json:"token"`
	// Hook is renew.post_hook's part.
	Hook HookUse `json:"hook"`
	// ProofURL is the tasks/wait the run would prove the set with (a dry
	// run does not: it would take a task off the node's queue).
	ProofURL string `json:"proof_url"`
	// Receipt: the run would write state_dir/receipt.json after the proof.
	Receipt bool `json:"receipt"`
	// Report is the dry run's own report: ok, or the step the run would
	// stop at, with its layer, owner and remedy.
	Report *report.Report `json:"-"`
}

// HostsChange is what bootstrap would do to the hosts file.
type HostsChange struct {
	File   string   `json:"file"`
	Change string   `json:"change"` // "none", "add" (no block yet) or "update"
	Diffs  []string `json:"diffs"`  // what differs from the config, as hosts.Check says
	Block  []string `json:"block"`  // the managed block as it would be written
}

// CASeen is what the roots fetch found.
type CASeen struct {
	Current   []RootSeen `json:"current"`
	Federated []RootSeen `json:"federated"`
	// Date is the CA's clock (its Date header) when it answered.
	Date time.Time `json:"date,omitzero"`
}

// RootSeen is one of the CA's roots.
type RootSeen struct {
	Subject     string    `json:"subject"`
	Fingerprint string    `json:"fingerprint"`
	NotAfter    time.Time `json:"not_after"`
}

// CredsSeen are the installed credentials as the run would judge them.
type CredsSeen struct {
	Present  bool      `json:"present"`
	Serial   string    `json:"serial,omitempty"`
	NotAfter time.Time `json:"not_after,omitzero"`
	DueAt    time.Time `json:"due_at,omitzero"`
	Verdict  string    `json:"verdict"`
	Reasons  []string  `json:"reasons"`
}

// TokenUse is what the run would do with the one-time token.
type TokenUse struct {
	File    string `json:"file"`
	Present bool   `json:"present"`
	// Use is "enroll" (sent to the CA's sign), "fallback" (sent only if
	// the renewal fails) or "none".
	Use string `json:"use"`
	// Problem is why the token could not be used, as the run would find
	// it before sending it; "" when it passed or was not needed.
	Problem string `json:"problem,omitempty"`
	// Burnt: an earlier run presented this token and did not finish; the
	// CA may have burnt it (the run presents it once more).
	Burnt bool `json:"maybe_burnt"`
}

// HookUse is whether renew.post_hook would run.
type HookUse struct {
	Command []string `json:"command"`
	Run     bool     `json:"would_run"`
	Pending bool     `json:"pending"` // an earlier run's hook has not succeeded yet
}

// DryRun runs the steps steps(p) lists, the read-only part of command's
// list (RootsStep, ClockStep, the command's own assess, and previews that
// fill p), and returns p filled with what the run would do. The steps
// must not write.
func DryRun(ctx context.Context, command string, cfg *config.Config, host *system.Host, o Options, steps func(p *Preview) []Step) *Preview {
	r, cancel := New(ctx, command, cfg, host, o)
	defer cancel()
	p := &Preview{Token: TokenUse{File: cfg.CA.TokenFile, Use: "none"}}
	r.Execute(steps(p), nil)
	r.describe(p)
	return p
}

// describe fills p with what the run would do, from what its steps found.
func (r *Run) describe(p *Preview) {
	rep := r.Out.Report
	p.Report, p.ProofURL = rep, r.Cfg.WaitURL()
	p.KeyModes, p.Aside = []string{}, append([]string{}, credstore.Asides(r.PKI)...)
	if loose, err := credstore.FindLooseFor(r.PKI, observe.Access(r.Cfg, r.Host)); err == nil {
		for _, l := range loose {
			p.KeyModes = append(p.KeyModes, l.String())
		}
	}
	if roots := r.Observed().Roots; roots != nil {
		p.CA = &CASeen{Current: rootsSeen(roots.Current), Federated: rootsSeen(roots.Federated), Date: roots.ServerDate.UTC()}
	}
	r.describeCreds(p)
	p.Plan = r.previewPlan(rep)
	p.Rekey = (r.Cfg.Renew.Rekey || r.Judged().KeyExposed()) && p.Plan == Renew.String() // as renew asks the CA
	p.Hook = HookUse{Command: append([]string{}, r.Cfg.Renew.PostHook...), Pending: r.Found.HookPending}
	changes := p.Plan == Refresh.String() || p.Plan == Renew.String() || p.Plan == RenewExpired.String() || p.Plan == Enroll.String() || p.Plan == Adopt.String()
	// As PostHook and hookDue decide: a pending hook runs in every run,
	// whatever ends it; a publish that replaces credentials makes it due.
	p.Hook.Run = len(p.Hook.Command) > 0 && (r.Found.HookPending || (rep.OK && changes && !r.Judged().Verdict.Has(lifecycle.Missing)))
	p.Receipt = r.Command == "bootstrap" && rep.OK
	if rep.OK && r.wouldRevoke(p.Plan) {
		p.RevokeSerial = r.Replaced().Leaf().SerialNumber.String()
	}
}

// describeCreds is the installed set and the verdict assess took (or, when
// the dry run stopped before assess, the verdict judged offline).
func (r *Run) describeCreds(p *Preview) {
	v := r.Judged().Verdict
	if v.Leaf == nil && len(v.Reasons) == 0 {
		// Not judged by assess: judged offline (the CA's roots were not
		// fetched, and nothing more may be asked of the network).
		e := observe.NewEnv(r.Cfg, r.Host)
		e.Offline = true
		v = e.Verdict(r.Ctx)
	}
	p.Credentials = CredsSeen{Verdict: v.Action.String(), Reasons: []string{}}
	for _, x := range v.Reasons {
		p.Credentials.Reasons = append(p.Credentials.Reasons, string(x))
	}
	if v.Leaf != nil {
		p.Credentials.Present, p.Credentials.Serial = true, v.Leaf.SerialNumber.String()
		p.Credentials.NotAfter, p.Credentials.DueAt = v.Leaf.NotAfter.UTC(), v.Schedule.DueAt.UTC()
	}
}

// previewPlan names the plan assess made: renew's stops are plans too
// (not due, or cannot renew: a fresh token is needed).
func (r *Run) previewPlan(rep *report.Report) string {
	assessed := false
	for _, s := range rep.Steps {
		assessed = assessed || (s.Name == "assess" && s.Status == "ok")
	}
	switch {
	case r.Result() == state.NotDue:
		return "not-due"
	case !assessed && (r.Result() == state.Reenroll || r.Result() == state.RevokedRes):
		return "cannot-renew"
	case !assessed:
		return ""
	}
	return r.PlanNow().String()
}

// wouldRevoke is revokeReplaced's condition, as far as it can be known
// before the new key exists: a replaced set with a key of its own, judged
// valid and from this CA.
func (r *Run) wouldRevoke(plan string) bool {
	old := r.Replaced()
	if old == nil || !old.KeyMatches() {
		return false
	}
	newKey := plan == Enroll.String() || (plan == Renew.String() && (r.Cfg.Renew.Rekey || r.Judged().KeyExposed()))
	v := r.Judged().Verdict
	return newKey && !v.Has(lifecycle.Expired) && !v.Has(lifecycle.NotYetValid) && !v.Has(lifecycle.OtherCA) && !v.Has(lifecycle.RootsUnknown)
}

func rootsSeen(cs []*x509.Certificate) []RootSeen {
	out := []RootSeen{}
	for _, c := range cs {
		out = append(out, RootSeen{Subject: c.Subject.String(), Fingerprint: enroll.Fingerprint(c), NotAfter: c.NotAfter.UTC()})
	}
	return out
}
