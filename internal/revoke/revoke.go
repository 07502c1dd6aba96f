// Package revoke takes a node out of service, for decommissioning or
// re-imaging: every certificate provision finds in pki_dir that is still an
// identity (the current one, the rollback target, sets left aside) is
// revoked at the CA, each authenticated by itself over mTLS with its own
// key (step-ca's passive revocation, reason cessationOfOperation, no
// token), and only then are the credentials and the node's records
// removed; state_dir/revoke.json says what was done.
//
// Why here and not "delete the files": a decommissioned or re-imaged
// node's certificate stays valid until it expires, and a copy of its key
// (a disk pulled from the rack, a backup) stays a working identity for the
// rest of that time. Deleting the files first would also throw away the
// one key that can revoke the certificate without an operator at the CA.
// So removal comes strictly after every revocation the CA accepted (or
// evidence that it was already revoked: its signed CRL, or this node's
// earlier revoke the CA accepted); a failure to revoke leaves everything in
// place to run again.
//
// It is one list of named steps over the pipeline, as bootstrap and renew
// are: the CA's roots come through the shared, pinned fetch with its
// Retry-After and clock check, and the request is signed by the same
// crypto.Signer the renewal presents (credstore.Set.TLSCertificate, the
// key loaded through observe.KeyOptions: in the TPM for a TPM key).
package revoke

import (
	"context"
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/metrics"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// found is one certificate in pki_dir and what became of it.
type found struct {
	set  *credstore.Set
	cert state.RevokedCert
}

// decom is one run of provision revoke.
type decom struct {
	r     *pipeline.Run
	prev  *state.Revocation // an earlier run's record
	found []*found
	rec   *state.Revocation
	// warnings are what the run could not do that does not stop it.
	warnings []string
}

// Run revokes and removes the node's credentials.
func Run(ctx context.Context, cfg *config.Config, host *system.Host, o pipeline.Options) *pipeline.Outcome {
	r, cancel := pipeline.New(ctx, "revoke", cfg, host, o)
	defer cancel()
	d := &decom{r: r, rec: &state.Revocation{NodeID: cfg.NodeID, CAURL: cfg.CA.URL, MachineID: host.MachineID(), Version: o.Version,
		Certificates: []state.RevokedCert{}, Removed: []string{}}}
	steps := []pipeline.Step{
		{Name: "inventory", Do: d.inventory},
		{Name: "ca-roots", Do: d.roots, Writes: pipeline.StageObserved},
		{Name: "revoke", Do: d.revoke, Reads: []pipeline.Stage{pipeline.StageObserved}},
		{Name: "remove", Do: d.remove},
	}
	return r.Execute(steps, d.finish)
}

// inventory lists every distinct certificate in pki_dir: the current set
// first, then every generation (the rollback target, sets left aside).
func (d *decom) inventory(r *pipeline.Run) *diag.Finding {
	system.SweepTemp(r.StateDir, state.RevokeFile)
	d.prev = state.ReadRevocation(r.StateDir)
	seen := map[string]bool{}
	add := func(set *credstore.Set, err error) {
		if err != nil || set.Leaf() == nil || seen[set.Leaf().SerialNumber.String()] {
			return
		}
		leaf := set.Leaf()
		seen[leaf.SerialNumber.String()] = true
		d.found = append(d.found, &found{set: set, cert: state.RevokedCert{Serial: leaf.SerialNumber.String(), Subject: leaf.Subject.String(),
			NotAfter: leaf.NotAfter.UTC(), Generation: path.Base(set.Dir), Result: state.RevokeNotTried}})
	}
	// The key is loaded as every run loads it (the run's observation): a
	// key in the TPM signs the revocation inside the TPM, as it signs
	// renewals.
	add(r.Env.Creds())
	for _, g := range credstore.Generations(r.PKI) {
		add(r.Env.ForSet(path.Join(r.PKI, g)).Creds())
	}
	r.Log.Info("step", "step", "inventory", "layer", "credentials", "status", "ok", "certificates", len(d.found))
	return nil
}

// roots fetches the CA's roots (pipeline.Roots: pinned, retried, the clock
// judged) when anything may be left to revoke: a certificate that, judged
// offline, is neither expired nor not yet valid and has its key (whether
// it is this CA's only the CA's roots say).
func (d *decom) roots(r *pipeline.Run) *diag.Finding {
	need := false
	for _, x := range d.found {
		need = need || d.notRevocable(r, x, nil) == ""
	}
	if !need {
		r.NoRoots() // nothing this CA could revoke: the CA is not asked
		return nil
	}
	f := pipeline.Roots(r)
	if f != nil {
		f.Summary += "; nothing was revoked or removed"
	}
	return f
}

// revoke revokes each certificate that is still an identity of this CA,
// and records the outcome before anything is removed.
func (d *decom) revoke(r *pipeline.Run) *diag.Finding {
	var f *diag.Finding
	roots := r.Observed().Roots
	for _, x := range d.found {
		if f == nil {
			f = d.revokeOne(r, x, roots)
		}
		d.rec.Certificates = append(d.rec.Certificates, x.cert)
	}
	d.rec.At = r.Host.Time().UTC()
	if err := state.WriteRevocation(r.StateDir, d.rec, r.Host.Hook); err != nil && f == nil {
		return &diag.Finding{Layer: diag.State, Owner: diag.Node, Check: "record",
			Summary: "the certificates were revoked at the CA, but the record of it could not be written: " + err.Error() + "; nothing was removed",
			Remedy:  diag.Writable(r.Cfg.Paths.StateDir) + " and run provision revoke again (it finds them revoked)"}
	}
	return f
}

// revokeOne decides and, when it is an identity this CA can revoke, asks
// the CA to revoke x.
func (d *decom) revokeOne(r *pipeline.Run, x *found, roots *enroll.Roots) *diag.Finding {
	client := r.Observed().Client
	if why := d.notRevocable(r, x, roots); why != "" {
		x.cert.Result, x.cert.Detail = state.NotRevocable, why
		return nil
	}
	if at := d.revokedEarlier(x.cert.Serial); at != "" {
		x.cert.Result, x.cert.Detail = state.RevokedBefore, at
		return nil
	}
	if client == nil { // it became valid after the roots step judged it: never removed unrevoked
		x.cert.Result, x.cert.Detail = state.RevokeFailed, "the CA's roots were not fetched for it"
		return &diag.Finding{Layer: diag.CA, Owner: diag.Node, Check: "revoke",
			Summary: fmt.Sprintf("certificate serial %s (%s) became valid during the run, after the CA's roots were judged not needed; nothing was removed", x.cert.Serial, x.cert.Generation),
			Remedy:  "run provision revoke again"}
	}
	var err error
	retry.Until(r.Ctx, r.Opts.Policy, r.Opts.Sleep, func(int) (bool, time.Duration) {
		err = client.RevokeFor(r.Ctx, x.set.TLSCertificate(), roots, enroll.ReasonCessationOfOperation, "cessation of operation: provision revoke on "+r.Cfg.NodeID)
		var ee *enroll.Error
		if err == nil || !errors.As(err, &ee) || !ee.Transient() {
			return true, 0
		}
		r.Log.Warn("step", "step", "revoke", "layer", "ca", "status", "retry", "serial", x.cert.Serial, "message", err.Error())
		return false, ee.RetryAfter
	})
	if err == nil {
		x.cert.Result, x.cert.Detail = state.RevokedNow, "the CA accepted the revocation (reason cessationOfOperation), requested by the certificate itself over mTLS"
		r.Log.Info("step", "step", "revoke", "layer", "ca", "status", "ok", "serial", x.cert.Serial)
		return nil
	}
	// Already revoked? Only the CA's signed CRL says so; its refusal alone
	// does not (no single answer becomes permanent).
	if ev := r.RevocationOf(x.set.Chain); ev.Status == enroll.Revoked {
		x.cert.Result = state.RevokedBefore
		x.cert.Detail = fmt.Sprintf("the CA's signed revocation list (CRL number %v) lists it, revoked at %s; the CA answered this run: %v", ev.CRLNumber, stamp(ev.RevokedAt), err)
		return nil
	}
	f := diag.FromEnroll(err, diag.CA, r.Cfg.CA.TokenFile)
	f.Check = "revoke"
	f.Summary = fmt.Sprintf("the CA did not revoke certificate serial %s (%s): %s; nothing was removed", x.cert.Serial, x.cert.Generation, f.Summary)
	f.Remedy = "fix what the CA or the way to it says (" + f.Remedy + "), or revoke it at the CA by hand (step ca revoke " + x.cert.Serial + "), then run provision revoke again: the credentials stay until every certificate is revoked"
	x.cert.Result, x.cert.Detail = state.RevokeFailed, err.Error()
	return f
}

// notRevocable says why x is no identity this CA could revoke, "" when it
// is one: its key is not there, it expired or is not valid yet, or, once
// the CA's roots are known (roots not nil), it is another CA's (a stale
// certificate: this CA does not know it).
func (d *decom) notRevocable(r *pipeline.Run, x *found, roots *enroll.Roots) string {
	if !x.set.KeyMatches() {
		return "its key is not the certificate's: it cannot authenticate a revocation, nor anything else"
	}
	if roots == nil { // before the roots fetch: time and key only
		leaf, now := x.set.Leaf(), r.Host.Time()
		switch {
		case now.After(leaf.NotAfter):
			return fmt.Sprintf("%s: it expired at %s; no identity this CA could revoke", lifecycle.Expired, stamp(leaf.NotAfter))
		case now.Before(leaf.NotBefore):
			return fmt.Sprintf("%s: it is valid only from %s; no identity this CA could revoke", lifecycle.NotYetValid, stamp(leaf.NotBefore))
		}
		return ""
	}
	// The run's observation of this set, judged against the roots the
	// roots step handed it.
	v := r.Env.ForSet(x.set.Dir).Verdict(r.Ctx)
	for _, why := range []lifecycle.Reason{lifecycle.Expired, lifecycle.NotYetValid, lifecycle.OtherCA, lifecycle.RootsUnknown} {
		if v.Has(why) {
			return string(why) + ": " + v.Detail[why] + "; no identity this CA could revoke"
		}
	}
	return ""
}

// revokedEarlier is the evidence that serial was revoked before: an
// earlier provision revoke the CA accepted (a run stopped before it
// removed the files), or the CA's CRL as renew recorded it.
func (d *decom) revokedEarlier(serial string) string {
	if d.prev != nil {
		for _, c := range d.prev.Certificates {
			if c.Serial == serial && (c.Result == state.RevokedNow || c.Result == state.RevokedBefore) {
				return "revoked by provision revoke at " + stamp(d.prev.At) + ": " + c.Detail
			}
		}
	}
	if rec := d.r.Found; rec.RevokedSerial == serial && rec.RevocationEvidence != "" {
		return rec.RevocationEvidence
	}
	return ""
}

// remove deletes the credentials, the node's records and its metrics,
// now that no certificate in them is an identity any more, and completes
// the record.
func (d *decom) remove(r *pipeline.Run) *diag.Finding {
	cfg := r.Cfg
	if err := d.removed(cfg.Paths.PKIDir)(credstore.Remove(r.PKI)); err != nil {
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Check: "remove",
			Summary: "the certificates are revoked, but the credentials could not all be removed from " + cfg.Paths.PKIDir + ": " + err.Error(),
			Remedy:  diag.Writable(cfg.Paths.PKIDir) + " and run provision revoke again (it finds them revoked), or remove its contents by hand"}
	}
	if err := d.removed(cfg.Paths.StateDir)(state.Forget(r.StateDir)); err != nil {
		return &diag.Finding{Layer: diag.State, Owner: diag.Node, Check: "remove",
			Summary: "the certificates are revoked and the credentials removed, but the node's records could not all be removed from " + cfg.Paths.StateDir + ": " + err.Error(),
			Remedy:  diag.Writable(cfg.Paths.StateDir) + " and run provision revoke again"}
	}
	if err := d.removed(cfg.Metrics.TextfileDir)(metrics.Remove(r.Host, cfg.Metrics.TextfileDir, "bootstrap", "verify", "renew")); err != nil {
		d.warnings = append(d.warnings, "the textfile metrics could not all be removed from "+cfg.Metrics.TextfileDir+": "+err.Error())
	}
	d.rec.Complete = true
	if err := state.WriteRevocation(r.StateDir, d.rec, r.Host.Hook); err != nil {
		return &diag.Finding{Layer: diag.State, Owner: diag.Node, Check: "record",
			Summary: "the certificates are revoked and removed, but the record could not be completed: " + err.Error(),
			Remedy:  diag.Writable(cfg.Paths.StateDir) + "; the node is out of service"}
	}
	r.Log.Info("step", "step", "remove", "layer", "credentials", "status", "ok", "removed", len(d.rec.Removed))
	return nil
}

// removed records names removed from dir (a node path) and passes on the
// error of the removal that returned them.
func (d *decom) removed(dir string) func(names []string, err error) error {
	return func(names []string, err error) error {
		for _, n := range names {
			d.rec.Removed = append(d.rec.Removed, path.Join(dir, n))
		}
		return err
	}
}

// finish puts each certificate's outcome in the report, and words the
// summary of a run that did everything.
func (d *decom) finish(r *pipeline.Run, rep *report.Report) {
	var lines []report.Result
	revoked := 0
	for _, c := range d.rec.Certificates {
		res := report.Result{Name: "revoke", Layer: diag.CA, Owner: diag.CAOwner, Status: report.Pass,
			Message: fmt.Sprintf("serial %s (%s, valid until %s): %s: %s", c.Serial, c.Generation, stamp(c.NotAfter), c.Result, c.Detail)}
		switch c.Result {
		case state.RevokedNow, state.RevokedBefore:
			revoked++
		case state.RevokeFailed:
			continue // the report's failure says it
		case state.RevokeNotTried:
			res.Status, res.Message = report.Skip, fmt.Sprintf("serial %s (%s): not tried: an earlier certificate could not be revoked", c.Serial, c.Generation)
		}
		lines = append(lines, res)
	}
	for _, w := range d.warnings {
		lines = append(lines, report.Result{Name: "remove", Layer: diag.Credentials, Owner: diag.Node, Status: report.Warn, Message: w})
	}
	rep.Checks = append(lines, rep.Checks...)
	if !rep.OK {
		return
	}
	switch {
	case len(d.rec.Certificates) == 0:
		rep.Summary = fmt.Sprintf("nothing to revoke: no certificate in %s; removed %d file(s) of the node's records; recorded in %s", r.Cfg.Paths.PKIDir, len(d.rec.Removed), path.Join(r.Cfg.Paths.StateDir, state.RevokeFile))
	default:
		rep.Summary = fmt.Sprintf("%d of %d certificate(s) revoked at the CA (the others were no identity any more), then the credentials, the receipt and the node's records removed (%d paths); recorded in %s",
			revoked, len(d.rec.Certificates), len(d.rec.Removed), path.Join(r.Cfg.Paths.StateDir, state.RevokeFile))
	}
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
