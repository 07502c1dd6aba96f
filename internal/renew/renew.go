// Package renew keeps a bootstrapped node's identity alive: it acts on the
// one credential verdict (lifecycle.Judge) and, when the certificate is due,
// renews it over mTLS with the node's current certificate (no token),
// writes the renewed key, chain and CA bundle into a new generation
// directory without publishing it, proves that set with the real mTLS
// tasks/wait through the ingress, and only then swaps "current".
//
// The rule is bootstrap's: nothing is published until it has polled. A
// renewal that fails its proof leaves the old set current (it is still
// valid) and names the layer; the unproven generation is kept aside for
// diagnosis. A certificate that cannot be renewed (expired, revoked, stale,
// unusable) stops at once: it needs a fresh one-time token.
package renew

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/hook"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/renewrec"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/internal/tasks"
	"github.com/gpuaas/provision/internal/verify"
)

// Options tune a run.
type Options struct {
	Log     *slog.Logger
	Version string
	Policy  retry.Policy
	// Force renews now, whatever the renewal point.
	Force bool
	// Sleep waits between attempts; tests may shorten it.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Outcome is what a run did.
type Outcome struct {
	Report  *report.Report
	Record  *renewrec.Record
	Renewed bool // a new certificate (or bundle) was proven and published
	Task    *probe.Task
}

// Steps are the named points of a renewal, in order: host.Hook is called
// with each (the crash tests kill the binary there).
var Steps = []string{"roots fetched", "renewed", "aside written", "proven", "published", "recorded"}

// Decision is what renew --check answers without the network.
type Decision int

// The decisions.
const (
	Due         Decision = iota // the renewal point (plus splay) has passed
	NotDue                      // nothing to do yet
	CannotRenew                 // re-enrollment with a fresh token is needed
)

// Check judges the installed credentials offline and says whether a
// renewal is due, with a one-line reason. Without the network, the chain is
// judged against the installed ca.pem: the CA's current and federated roots
// as the last bootstrap or renew fetched them, and a bundle that run proved
// with this very certificate. A certificate none of them issued is stale.
// A certificate the last renew run found it cannot renew (stale against the
// CA's roots of now, refused by the CA) stays so in renew.json until a
// bootstrap replaces it.
func Check(cfg *config.Config, host *system.Host, force bool) (Decision, string) {
	d, f := CheckFinding(cfg, host, force)
	return d, f.Summary
}

// CheckFinding is Check with the answer as a finding: for CannotRenew, the
// layer, owner and remedy of the reason (expired: credentials, stale: ca,
// revoked: enroll), so the JSON report of renew --check names them as a
// renewal run would; otherwise only the summary is set.
func CheckFinding(cfg *config.Config, host *system.Host, force bool) (Decision, *diag.Finding) {
	env := observe.NewEnv(cfg, host)
	set, err := env.Creds()
	in := lifecycle.Input{Set: set, LoadErr: err, NodeID: cfg.NodeID, Now: host.Time(), RenewFraction: cfg.Renew.Fraction}
	if err == nil && set != nil && len(set.Roots) > 0 {
		in.Roots = set.Roots
	}
	rec := env.RenewRecord()
	if rec != nil {
		in.RevokedSerial = rec.RevokedSerial
	}
	v := lifecycle.Judge(in)
	// What the last run found with the CA's roots (a certificate stale
	// because the CA moved on, one the CA refused) holds for the same
	// certificate until a bootstrap replaces it.
	if v.Action < lifecycle.Reenroll && rec != nil && rec.LastResult == renewrec.Reenroll && v.Leaf != nil && rec.Serial == v.Leaf.SerialNumber.String() {
		return CannotRenew, &diag.Finding{Layer: diag.Layer(rec.FailedLayer), Owner: diag.Node, Remedy: verify.CredentialRemedy(lifecycle.OtherCA, cfg),
			Summary: rec.LastError + " (found by the renew run at " + stamp(rec.LastAttempt) + ")"}
	}
	if v.Action == lifecycle.Reenroll {
		f := cannotRenew(v, cfg)
		if v.First() == lifecycle.OtherCA {
			f.Summary += " (judged offline against " + filepath.Join(cfg.Paths.PKIDir, credstore.CAFile) + ", the CA's roots when last fetched)"
		}
		return CannotRenew, f
	}
	due := v.DueAt(cfg.Renew.Splay.Duration)
	if force || !host.Time().Before(due) {
		return Due, &diag.Finding{Summary: fmt.Sprintf("renewal due since %s (renewal point %s plus this node's splay); the certificate expires at %s", stamp(due), stamp(v.RenewAfter), stamp(v.Leaf.NotAfter))}
	}
	return NotDue, &diag.Finding{Summary: fmt.Sprintf("not due: the certificate (serial %s) is renewed from %s (renewal point %s plus this node's splay); it expires at %s", v.Leaf.SerialNumber, stamp(due), stamp(v.RenewAfter), stamp(v.Leaf.NotAfter))}
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// cannotRenew is the finding for a verdict that needs re-enrollment: its
// own layer (and so exit code) for expired (credentials), stale (ca) and
// revoked (enroll), each saying plainly that a fresh token is needed.
func cannotRenew(v lifecycle.Verdict, cfg *config.Config) *diag.Finding {
	r := v.First()
	f := &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Remedy: verify.CredentialRemedy(r, cfg)}
	const next = "re-enrollment with a fresh one-time token is needed (provision bootstrap)"
	switch r {
	case lifecycle.Expired:
		f.Summary = "certificate expired: " + v.Detail[r] + "; the CA does not renew an expired certificate, so " + next
	case lifecycle.Revoked:
		f.Layer = diag.Enroll
		f.Summary = "certificate revoked: " + v.Detail[r] + "; " + next
	case lifecycle.OtherCA:
		f.Layer = diag.CA
		f.Summary = "certificate stale: " + v.Detail[r] + "; renew does not renew a stale identity, so " + next
	default:
		f.Summary = "certificate cannot be renewed: " + string(r) + ": " + v.Detail[r] + "; " + next
	}
	return f
}

// run is one renewal: its inputs and what the steps observed so far.
type run struct {
	ctx      context.Context
	cfg      *config.Config
	host     *system.Host
	o        Options
	log      *slog.Logger
	start    time.Time
	stateDir string
	pki      string
	out      *Outcome
	rec      *renewrec.Record

	env    *observe.Env
	client *enroll.Client
	roots  *enroll.Roots
	v      lifecycle.Verdict
	cur    *credstore.Set
	due    bool
	result string         // the record's result if the run publishes
	cand   *credstore.Set // the set to prove and publish
	gen    string         // its generation directory, aside until published
	rep    *report.Report // the proof's report
}

// Run renews the node's certificate when the verdict says so: the steps
// below, in order; the first that returns an outcome ends the run.
func Run(ctx context.Context, cfg *config.Config, host *system.Host, o Options) *Outcome {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Bootstrap.Deadline.Duration)
	defer cancel()
	r := &run{ctx: ctx, cfg: cfg, host: host, o: o, log: o.Log, start: time.Now(), out: &Outcome{},
		stateDir: host.Path(cfg.Paths.StateDir), pki: host.Path(cfg.Paths.PKIDir),
		rec: &renewrec.Record{NodeID: cfg.NodeID, Version: o.Version}}
	if prev := renewrec.Read(r.stateDir); prev != nil {
		r.rec.LastRenewed, r.rec.PreviousSerial, r.rec.RevokedSerial = prev.LastRenewed, prev.PreviousSerial, prev.RevokedSerial
	}
	credstore.Sweep(r.pki)
	for _, step := range []func() *Outcome{r.fetchRoots, r.assess, r.renew, r.aside, r.prove, r.publish, r.postHook} {
		if out := step(); out != nil {
			return out
		}
	}
	r.out.Record = r.rec
	r.rep.DurationMS = time.Since(r.start).Milliseconds()
	return r.out
}

func (r *run) record(result string) {
	r.rec.LastAttempt, r.rec.LastResult = r.host.Time().UTC(), result
	if err := renewrec.Write(r.stateDir, r.rec); err != nil {
		r.log.Error("step", "step", "record", "layer", "state", "status", "fail", "message", err.Error())
	}
}

// stop ends the run at step with finding f, recorded as result.
func (r *run) stop(step, result string, f *diag.Finding) *Outcome {
	r.log.Error("step", "step", step, "layer", string(f.Layer), "owner", string(f.Owner), "status", "fail", "message", f.Summary)
	r.rec.LastError, r.rec.FailedLayer = f.Summary, string(f.Layer)
	r.record(result)
	r.out.Record = r.rec
	r.out.Report = report.Failed("renew", r.cfg.NodeID, step, f)
	r.out.Report.DurationMS = time.Since(r.start).Milliseconds()
	return r.out
}

// fetchRoots gets the CA's current and federated roots, pinned (ca.pem's
// roots carry trust across a rotation that retired the pinned root). The
// client makes one request per attempt: this loop is the only retry.
func (r *run) fetchRoots() *Outcome {
	r.env = observe.NewEnv(r.cfg, r.host)
	r.client = r.env.CAClient(0)
	_, err := retry.Do(r.ctx, r.o.Policy, r.o.Sleep, func(int) (bool, error) {
		var err error
		r.roots, err = r.client.FetchRoots(r.ctx)
		if err != nil {
			f := diag.FromEnroll(err, diag.CA, r.cfg.CA.TokenFile)
			r.log.Warn("step", "step", "ca-roots", "layer", "ca", "status", "retry", "message", f.Summary)
			return f.Transient, err
		}
		return false, nil
	})
	if err != nil {
		return r.stop("ca-roots", renewrec.Failed, diag.FromEnroll(err, diag.CA, r.cfg.CA.TokenFile))
	}
	r.env.SetRoots(r.roots)
	r.host.Hook.At("roots fetched")
	return nil
}

// assess takes the one verdict: re-enroll stops here; not due (and ca.pem
// current) ends the run, quickly, with nothing changed.
func (r *run) assess() *Outcome {
	r.v = r.env.Verdict(r.ctx)
	if r.v.Leaf != nil {
		r.rec.Serial, r.rec.NotAfter, r.rec.RenewAfter = r.v.Leaf.SerialNumber.String(), r.v.Leaf.NotAfter.UTC(), r.v.RenewAfter.UTC()
		r.rec.DueAt = r.v.DueAt(r.cfg.Renew.Splay.Duration).UTC()
	}
	if r.v.Action == lifecycle.Reenroll {
		return r.stop("assess", renewrec.Reenroll, cannotRenew(r.v, r.cfg))
	}
	r.cur, _ = r.env.Creds()
	bundleStale := string(credstore.EncodeCerts(r.cur.Roots)) != string(r.roots.PEM())
	r.due = r.o.Force || !r.host.Time().Before(r.rec.DueAt)
	r.log.Info("step", "step", "assess", "layer", "credentials", "status", r.v.Action.String(), "reasons", fmt.Sprint(r.v.Reasons), "due_at", r.rec.DueAt, "due", r.due, "bundle_stale", bundleStale)
	if !r.due && !bundleStale {
		r.rec.LastError, r.rec.FailedLayer = "", ""
		r.record(renewrec.NotDue)
		_, msg := Check(r.cfg, r.host, false)
		r.out.Record = r.rec
		r.out.Report = &report.Report{OK: true, Command: "renew", NodeID: r.cfg.NodeID, Summary: msg, DurationMS: time.Since(r.start).Milliseconds()}
		return r.out
	}
	// The candidate: a renewed certificate (renew fills it in), or, not due
	// but the CA's roots moved, the same one with the new bundle.
	r.cand = &credstore.Set{Key: r.cur.Key, Chain: r.cur.Chain, Roots: r.roots.Bundle()}
	r.result = renewrec.Refreshed
	return nil
}

// renew asks the CA for a new certificate over mTLS with the current one.
func (r *run) renew() *Outcome {
	if !r.due {
		r.host.Hook.At("renewed") // the step's point, reached with nothing to renew
		return nil
	}
	r.result = renewrec.Renewed
	var issued *enroll.Issued
	_, err := retry.Do(r.ctx, r.o.Policy, r.o.Sleep, func(int) (bool, error) {
		var err error
		issued, err = r.client.Renew(r.ctx, r.cur.TLSCertificate(), r.roots, r.cfg.Renew.Rekey)
		var ee *enroll.Error
		if err != nil && errors.As(err, &ee) && ee.Transient() {
			r.log.Warn("step", "step", "renew", "layer", "ca", "status", "retry", "message", err.Error())
			return true, err
		}
		return false, err
	})
	if err != nil {
		res, f := renewError(err, r.v, r.cfg)
		if res == renewrec.RevokedRes {
			r.rec.RevokedSerial = r.rec.Serial
		}
		return r.stop("renew", res, f)
	}
	r.cand.Key, r.cand.Chain = issued.Key, issued.Chain
	r.rec.Rekeyed = r.cfg.Renew.Rekey
	r.log.Info("step", "step", "renew", "layer", "ca", "status", "ok", "serial", issued.Chain[0].SerialNumber.String(), "not_after", issued.Chain[0].NotAfter.UTC(), "rekey", r.cfg.Renew.Rekey)
	r.host.Hook.At("renewed")
	return nil
}

// aside writes the candidate complete and validated, not published.
func (r *run) aside() *Outcome {
	gen, err := credstore.SaveAside(r.pki, r.cand, r.host.Time(), r.host.Hook)
	if err != nil {
		return r.stop("credentials-write", renewrec.Failed, &diag.Finding{Layer: diag.Credentials, Owner: diag.Node,
			Summary: "the renewed certificate could not be written: " + err.Error() + "; the old set stays current",
			Remedy:  "make " + r.cfg.Paths.PKIDir + " writable, then run provision renew again"})
	}
	r.gen = gen
	r.rec.Generation = filepath.Base(gen)
	r.host.Hook.At("aside written")
	return nil
}

// prove runs verify's ladder with the new files read back from disk; a
// task the proof received is handed off. A failed proof publishes nothing.
func (r *run) prove() *Outcome {
	var penv *observe.Env
	attempts, _ := retry.Do(r.ctx, r.o.Policy, r.o.Sleep, func(int) (bool, error) {
		penv = observe.NewEnv(r.cfg, r.host)
		penv.CredsDir = r.gen
		penv.SetRoots(r.roots)
		t0 := time.Now()
		last := report.New("renew", r.cfg.NodeID, verify.Run(r.ctx, penv, verify.Checks(), r.log), time.Since(t0))
		if r.ctx.Err() != nil && r.rep != nil && !last.OK {
			return false, errors.New(r.rep.Summary)
		}
		r.rep = last
		if r.rep.OK {
			return false, nil
		}
		return r.rep.Transient, errors.New(r.rep.Summary)
	})
	r.out.Report = r.rep
	if t, ok := penv.Probed().HandedTask(); ok {
		r.out.Task = &t
		r.rep.Task = json.RawMessage(t.Raw)
		if _, err := tasks.Save(r.stateDir, t, r.host.Time(), r.host.Hook); err != nil {
			return r.stop("task-save", renewrec.Failed, &diag.Finding{Layer: diag.State, Owner: diag.Node,
				Summary:  "the proof received a task but it could not be handed off: " + err.Error() + "; the renewal was not published",
				Remedy:   "make " + r.cfg.Paths.StateDir + " writable, give this task (in the evidence) to the node-agent by hand, and run provision renew again",
				Evidence: map[string]string{"task": string(t.Raw)}})
		}
	}
	if !r.rep.OK {
		r.rep.Summary = fmt.Sprintf("renewed certificate not published: its proof failed after %d attempt(s): %s; the old certificate (serial %s, valid until %s) stays current, and the unproven set is kept aside in %s for diagnosis",
			attempts, strings.TrimSuffix(r.rep.Summary, "."), r.rec.Serial, stamp(r.rec.NotAfter), filepath.Join(r.cfg.Paths.PKIDir, r.rec.Generation))
		r.rec.LastError, r.rec.FailedLayer = r.rep.Summary, string(r.rep.FailedLayer)
		r.record(renewrec.Failed)
		r.out.Record = r.rec
		r.rep.DurationMS = time.Since(r.start).Milliseconds()
		return r.out
	}
	r.host.Hook.At("proven")
	return nil
}

// publish swaps current to the proven set and records it.
func (r *run) publish() *Outcome {
	if err := credstore.Publish(r.pki, r.gen, r.host.Hook); err != nil {
		return r.stop("publish", renewrec.Failed, &diag.Finding{Layer: diag.Credentials, Owner: diag.Node,
			Summary: "the renewed set was proven but could not be published: " + err.Error() + "; the old set stays current",
			Remedy:  "make " + r.cfg.Paths.PKIDir + " writable, then run provision renew again"})
	}
	r.host.Hook.At("published")
	r.out.Renewed = true
	rec := r.rec
	newLeaf := r.cand.Leaf()
	if newLeaf.SerialNumber.String() != rec.Serial {
		rec.PreviousSerial = rec.Serial
	}
	nv := lifecycle.Judge(lifecycle.Input{Set: r.cand, NodeID: r.cfg.NodeID, Roots: r.roots.Current, Now: r.host.Time(), RenewFraction: r.cfg.Renew.Fraction})
	rec.Serial, rec.NotAfter, rec.RenewAfter = newLeaf.SerialNumber.String(), newLeaf.NotAfter.UTC(), nv.RenewAfter.UTC()
	rec.DueAt = nv.DueAt(r.cfg.Renew.Splay.Duration).UTC()
	rec.LastRenewed = r.host.Time().UTC()
	rec.LastError, rec.FailedLayer = "", ""
	r.record(r.result)
	r.host.Hook.At("recorded")
	what := fmt.Sprintf("renewed: serial %s replaced %s, valid until %s, next renewal from %s", rec.Serial, rec.PreviousSerial, stamp(rec.NotAfter), stamp(rec.DueAt))
	if r.result == renewrec.Refreshed {
		what = fmt.Sprintf("ca.pem refreshed from the CA's %d current and %d federated root(s); the certificate (serial %s) is not due until %s", len(r.roots.Current), len(r.roots.Federated), rec.Serial, stamp(rec.DueAt))
	}
	r.rep.Summary = what + "; proven by tasks/wait through " + r.cfg.NodeAPI.URL + " before it was published"
	return nil
}

// postHook runs renew.post_hook: its failure is reported (layer hook), the
// renewal stands.
func (r *run) postHook() *Outcome {
	if len(r.cfg.Renew.PostHook) == 0 {
		return nil
	}
	if _, err := hook.Run(r.ctx, hook.FromConfig(r.cfg, r.host.Root, r.rec.Serial, r.rec.NotAfter)); err != nil {
		r.rec.Hook = "failed: " + err.Error()
		r.record(renewrec.HookFailed)
		f := &diag.Finding{Layer: diag.Hook, Owner: diag.Node,
			Summary: "renewal published (serial " + r.rec.Serial + "), but renew.post_hook failed: " + err.Error(),
			Remedy:  "fix the command in renew.post_hook (or what it reloads) and run it by hand: the new certificate is already in place and stays"}
		r.log.Error("step", "step", "post-hook", "layer", string(f.Layer), "owner", string(f.Owner), "status", "fail", "message", f.Summary)
		hrep := report.Failed("renew", r.cfg.NodeID, "post-hook", f)
		hrep.Checks = append(r.rep.Checks, hrep.Checks...)
		hrep.Task = r.rep.Task
		hrep.DurationMS = time.Since(r.start).Milliseconds()
		r.out.Report, r.out.Record = hrep, r.rec
		return r.out
	}
	r.rec.Hook = "ok"
	r.record(r.result)
	r.log.Info("step", "step", "post-hook", "layer", "hook", "status", "ok", "command", r.cfg.Renew.PostHook[0])
	return nil
}

// renewError turns a failed /renew or /rekey into the record's result and
// a finding.
func renewError(err error, v lifecycle.Verdict, cfg *config.Config) (string, *diag.Finding) {
	var ee *enroll.Error
	if !errors.As(err, &ee) {
		return renewrec.Failed, &diag.Finding{Layer: diag.CA, Owner: diag.CAOwner, Summary: "renewal failed: " + err.Error(), Remedy: "run provision renew again; the old certificate stays current"}
	}
	switch ee.Kind {
	case enroll.CertExpired:
		v.Reasons, v.Detail = []lifecycle.Reason{lifecycle.Expired}, map[lifecycle.Reason]string{lifecycle.Expired: fmt.Sprintf("the CA refused it as expired (%v)", ee.Err)}
		return renewrec.Reenroll, cannotRenew(v, cfg)
	case enroll.CertUnknownCA:
		v.Reasons, v.Detail = []lifecycle.Reason{lifecycle.OtherCA}, map[lifecycle.Reason]string{lifecycle.OtherCA: fmt.Sprintf("the CA does not trust its issuer (%v)", ee.Err)}
		return renewrec.Reenroll, cannotRenew(v, cfg)
	case enroll.CertRefused:
		serial := ""
		if v.Leaf != nil {
			serial = v.Leaf.SerialNumber.String()
		}
		v.Reasons, v.Detail = []lifecycle.Reason{lifecycle.Revoked}, map[lifecycle.Reason]string{lifecycle.Revoked: fmt.Sprintf("the CA refused to renew certificate serial %s (answered %d: %v): it was revoked, or its provisioner removed or barred from renewing", serial, ee.Status, ee.Err)}
		return renewrec.RevokedRes, cannotRenew(v, cfg)
	}
	f := diag.FromEnroll(err, diag.CA, cfg.CA.TokenFile)
	f.Summary = "renewal failed: " + f.Summary + "; the old certificate stays current"
	if f.Remedy == "" || strings.Contains(f.Remedy, "token") {
		f.Remedy = "check the CA (provision verify's ca-root), then run provision renew again; the old certificate stays current until it expires"
	}
	return renewrec.Failed, f
}
