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
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/bootstrap"
	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/renewrec"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/system"
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
	Report  *verify.Report
	Record  *renewrec.Record
	Renewed bool // a new certificate (or bundle) was proven and published
	Task    *probe.Task
}

// Hook, when set, is called at named points; the crash tests use it.
var Hook func(step string)

func hook(s string) {
	if Hook != nil {
		Hook(s)
	}
}

// Steps are the named points of a renewal, in order (Hook's names; the
// crash tests kill the binary at each).
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
	env := verify.NewEnv(cfg, host)
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
		return CannotRenew, rec.LastError + " (found by the renew run at " + stamp(rec.LastAttempt) + ")"
	}
	if v.Action == lifecycle.Reenroll {
		msg := cannotRenew(v, cfg).Summary
		if v.First() == lifecycle.OtherCA {
			msg += " (judged offline against " + filepath.Join(cfg.Paths.PKIDir, credstore.CAFile) + ", the CA's roots when last fetched)"
		}
		return CannotRenew, msg
	}
	due := v.DueAt(cfg.Renew.Splay.Duration)
	if force || !host.Time().Before(due) {
		return Due, fmt.Sprintf("renewal due since %s (renewal point %s plus this node's splay); the certificate expires at %s", stamp(due), stamp(v.RenewAfter), stamp(v.Leaf.NotAfter))
	}
	return NotDue, fmt.Sprintf("not due: the certificate (serial %s) is renewed from %s (renewal point %s plus this node's splay); it expires at %s", v.Leaf.SerialNumber, stamp(due), stamp(v.RenewAfter), stamp(v.Leaf.NotAfter))
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

// Run renews the node's certificate when the verdict says so.
func Run(ctx context.Context, cfg *config.Config, host *system.Host, o Options) *Outcome {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, cfg.Bootstrap.Deadline.Duration)
	defer cancel()
	stateDir := host.Path(cfg.Paths.StateDir)
	pki := host.Path(cfg.Paths.PKIDir)
	out := &Outcome{}
	rec := &renewrec.Record{NodeID: cfg.NodeID, Version: o.Version}
	if prev := renewrec.Read(stateDir); prev != nil {
		rec.LastRenewed, rec.PreviousSerial, rec.RevokedSerial = prev.LastRenewed, prev.PreviousSerial, prev.RevokedSerial
	}
	record := func(result string) {
		rec.LastAttempt, rec.LastResult = host.Time().UTC(), result
		if err := renewrec.Write(stateDir, rec); err != nil {
			log.Error("step", "step", "record", "layer", "state", "status", "fail", "message", err.Error())
		}
	}
	stop := func(step, result string, f *diag.Finding) *Outcome {
		log.Error("step", "step", step, "layer", string(f.Layer), "owner", string(f.Owner), "status", "fail", "message", f.Summary)
		rec.LastError, rec.FailedLayer = f.Summary, string(f.Layer)
		record(result)
		out.Record = rec
		out.Report = verify.Failed("renew", cfg.NodeID, step, f)
		out.Report.DurationMS = time.Since(start).Milliseconds()
		return out
	}
	credstore.Sweep(pki)

	// 1. The CA's current and federated roots, pinned (ca.pem's roots carry
	// trust across a rotation that retired the pinned root).
	env := verify.NewEnv(cfg, host)
	caClient := env.CAClient(2)
	var roots *enroll.Roots
	_, err := retry.Do(ctx, o.Policy, o.Sleep, func(int) (bool, error) {
		var err error
		roots, err = caClient.FetchRoots(ctx)
		if err != nil {
			f := diag.FromEnroll(err, diag.CA, cfg.CA.TokenFile)
			log.Warn("step", "step", "ca-roots", "layer", "ca", "status", "retry", "message", f.Summary)
			return f.Transient, err
		}
		return false, nil
	})
	if err != nil {
		return stop("ca-roots", renewrec.Failed, diag.FromEnroll(err, diag.CA, cfg.CA.TokenFile))
	}
	env.SetRoots(roots)
	hook("roots fetched")

	// 2. The one verdict.
	v := env.Verdict(ctx)
	if v.Leaf != nil {
		rec.Serial, rec.NotAfter, rec.RenewAfter = v.Leaf.SerialNumber.String(), v.Leaf.NotAfter.UTC(), v.RenewAfter.UTC()
		rec.DueAt = v.DueAt(cfg.Renew.Splay.Duration).UTC()
	}
	if v.Action == lifecycle.Reenroll {
		return stop("assess", renewrec.Reenroll, cannotRenew(v, cfg))
	}
	cur, _ := env.Creds()
	now := host.Time()
	bundleStale := string(credstore.EncodeCerts(cur.Roots)) != string(roots.PEM())
	due := o.Force || !now.Before(rec.DueAt)
	log.Info("step", "step", "assess", "layer", "credentials", "status", v.Action.String(), "reasons", fmt.Sprint(v.Reasons), "due_at", rec.DueAt, "due", due, "bundle_stale", bundleStale)
	if !due && !bundleStale {
		rec.LastError, rec.FailedLayer = "", ""
		record(renewrec.NotDue)
		_, msg := Check(cfg, host, false)
		out.Record = rec
		out.Report = &verify.Report{OK: true, Command: "renew", NodeID: cfg.NodeID, Summary: msg, DurationMS: time.Since(start).Milliseconds()}
		return out
	}

	// 3. The candidate set: a renewed certificate, or (not due, but the CA's
	// roots moved) the same one with the new bundle.
	cand := &credstore.Set{Key: cur.Key, Chain: cur.Chain, Roots: roots.Bundle()}
	result := renewrec.Refreshed
	if due {
		result = renewrec.Renewed
		var issued *enroll.Issued
		_, err := retry.Do(ctx, o.Policy, o.Sleep, func(int) (bool, error) {
			var err error
			issued, err = caClient.Renew(ctx, cur.TLSCertificate(), roots, cfg.Renew.Rekey)
			var ee *enroll.Error
			if err != nil && errors.As(err, &ee) && ee.Transient() {
				log.Warn("step", "step", "renew", "layer", "ca", "status", "retry", "message", err.Error())
				return true, err
			}
			return false, err
		})
		if err != nil {
			res, f := renewError(err, v, cfg)
			if res == renewrec.RevokedRes {
				rec.RevokedSerial = rec.Serial
			}
			return stop("renew", res, f)
		}
		cand.Key, cand.Chain = issued.Key, issued.Chain
		rec.Rekeyed = cfg.Renew.Rekey
		log.Info("step", "step", "renew", "layer", "ca", "status", "ok", "serial", issued.Chain[0].SerialNumber.String(), "not_after", issued.Chain[0].NotAfter.UTC(), "rekey", cfg.Renew.Rekey)
	}
	hook("renewed")

	// 4. Aside: complete, validated, not published.
	gen, err := credstore.SaveAside(pki, cand, now)
	if err != nil {
		return stop("credentials-write", renewrec.Failed, &diag.Finding{Layer: diag.Credentials, Owner: diag.Node,
			Summary: "the renewed certificate could not be written: " + err.Error() + "; the old set stays current",
			Remedy:  "make " + cfg.Paths.PKIDir + " writable, then run provision renew again"})
	}
	rec.Generation = filepath.Base(gen)
	hook("aside written")

	// 5. The proof, with the new files read back from disk.
	var rep *verify.Report
	var penv *verify.Env
	attempts, _ := retry.Do(ctx, o.Policy, o.Sleep, func(int) (bool, error) {
		penv = verify.NewEnv(cfg, host)
		penv.CredsDir = gen
		penv.SetRoots(roots)
		t0 := time.Now()
		last := verify.NewReport("renew", cfg.NodeID, verify.Run(ctx, penv, verify.Checks(), log), time.Since(t0))
		if ctx.Err() != nil && rep != nil && !last.OK {
			return false, errors.New(rep.Summary)
		}
		rep = last
		if rep.OK {
			return false, nil
		}
		return rep.Transient, errors.New(rep.Summary)
	})
	out.Report = rep
	if t, ok := penv.Probed().HandedTask(); ok {
		out.Task = &t
		rep.Task = json.RawMessage(t.Raw)
		if _, err := bootstrap.SaveTask(stateDir, t, host.Time()); err != nil {
			return stop("task-save", renewrec.Failed, &diag.Finding{Layer: diag.State, Owner: diag.Node,
				Summary:  "the proof received a task but it could not be handed off: " + err.Error() + "; the renewal was not published",
				Remedy:   "make " + cfg.Paths.StateDir + " writable, give this task (in the evidence) to the node-agent by hand, and run provision renew again",
				Evidence: map[string]string{"task": string(t.Raw)}})
		}
	}
	if !rep.OK {
		rep.Summary = fmt.Sprintf("renewed certificate not published: its proof failed after %d attempt(s): %s; the old certificate (serial %s, valid until %s) stays current, and the unproven set is kept aside in %s for diagnosis",
			attempts, strings.TrimSuffix(rep.Summary, "."), rec.Serial, stamp(rec.NotAfter), filepath.Join(cfg.Paths.PKIDir, rec.Generation))
		rec.LastError, rec.FailedLayer = rep.Summary, string(rep.FailedLayer)
		record(renewrec.Failed)
		out.Record = rec
		rep.DurationMS = time.Since(start).Milliseconds()
		return out
	}
	hook("proven")

	// 6. Publish: one symlink swap.
	if err := credstore.Publish(pki, gen); err != nil {
		return stop("publish", renewrec.Failed, &diag.Finding{Layer: diag.Credentials, Owner: diag.Node,
			Summary: "the renewed set was proven but could not be published: " + err.Error() + "; the old set stays current",
			Remedy:  "make " + cfg.Paths.PKIDir + " writable, then run provision renew again"})
	}
	hook("published")
	out.Renewed = true
	newLeaf := cand.Leaf()
	if newLeaf.SerialNumber.String() != rec.Serial {
		rec.PreviousSerial = rec.Serial
	}
	nv := lifecycle.Judge(lifecycle.Input{Set: cand, NodeID: cfg.NodeID, Roots: roots.Current, Now: host.Time(), RenewFraction: cfg.Renew.Fraction})
	rec.Serial, rec.NotAfter, rec.RenewAfter = newLeaf.SerialNumber.String(), newLeaf.NotAfter.UTC(), nv.RenewAfter.UTC()
	rec.DueAt = nv.DueAt(cfg.Renew.Splay.Duration).UTC()
	rec.LastRenewed = host.Time().UTC()
	rec.LastError, rec.FailedLayer = "", ""
	record(result)
	hook("recorded")
	what := fmt.Sprintf("renewed: serial %s replaced %s, valid until %s, next renewal from %s", rec.Serial, rec.PreviousSerial, stamp(rec.NotAfter), stamp(rec.DueAt))
	if result == renewrec.Refreshed {
		what = fmt.Sprintf("ca.pem refreshed from the CA's %d current and %d federated root(s); the certificate (serial %s) is not due until %s", len(roots.Current), len(roots.Federated), rec.Serial, stamp(rec.DueAt))
	}
	rep.Summary = what + "; proven by tasks/wait through " + cfg.NodeAPI.URL + " before it was published"

	// 7. The post-hook: its failure is reported, the renewal stands.
	if len(cfg.Renew.PostHook) > 0 {
		if err := runHook(ctx, cfg, rec); err != nil {
			rec.Hook = "failed: " + err.Error()
			record(renewrec.HookFailed)
			f := &diag.Finding{Layer: diag.Hook, Owner: diag.Node,
				Summary: "renewal published (serial " + rec.Serial + "), but renew.post_hook failed: " + err.Error(),
				Remedy:  "fix the command in renew.post_hook (or what it reloads) and run it by hand: the new certificate is already in place and stays"}
			log.Error("step", "step", "post-hook", "layer", string(f.Layer), "owner", string(f.Owner), "status", "fail", "message", f.Summary)
			hrep := verify.Failed("renew", cfg.NodeID, "post-hook", f)
			hrep.Checks = append(rep.Checks, hrep.Checks...)
			hrep.Task = rep.Task
			hrep.DurationMS = time.Since(start).Milliseconds()
			out.Report, out.Record = hrep, rec
			return out
		}
		rec.Hook = "ok"
		record(result)
		log.Info("step", "step", "post-hook", "layer", "hook", "status", "ok", "command", cfg.Renew.PostHook[0])
	}
	out.Record = rec
	rep.DurationMS = time.Since(start).Milliseconds()
	return out
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

// maxHookOutput bounds what is kept of the hook's output for the report.
const maxHookOutput = 2048

// runHook runs renew.post_hook (argv, no shell) with its timeout. The new
// certificate's paths and serial are in its environment.
func runHook(ctx context.Context, cfg *config.Config, rec *renewrec.Record) error {
	hctx, cancel := context.WithTimeout(ctx, cfg.Renew.PostHookTimeout.Duration)
	defer cancel()
	argv := cfg.Renew.PostHook
	cmd := exec.CommandContext(hctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(),
		"PROVISION_NODE_ID="+cfg.NodeID,
		"PROVISION_SERIAL="+rec.Serial,
		"PROVISION_NOT_AFTER="+stamp(rec.NotAfter),
		"PROVISION_CERT="+filepath.Join(cfg.Paths.PKIDir, credstore.CertFile),
		"PROVISION_KEY="+filepath.Join(cfg.Paths.PKIDir, credstore.KeyFile),
	)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if err == nil {
		return nil
	}
	outText := strings.TrimSpace(buf.String())
	if len(outText) > maxHookOutput {
		outText = outText[:maxHookOutput] + "..."
	}
	if hctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("%s did not finish within renew.post_hook_timeout (%s)", argv[0], cfg.Renew.PostHookTimeout.Duration)
	} else {
		err = fmt.Errorf("%s: %w", argv[0], err)
	}
	if outText != "" {
		err = fmt.Errorf("%w; output: %s", err, strings.ReplaceAll(outText, "\n", " | "))
	}
	return err
}
