package pipeline

import (
	"path/filepath"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/state"
)

// installed is the set installed as the run ends and its one verdict,
// from what the run already knows: the published candidate as its proof
// read it back from disk, the installed set as assess judged it, or,
// when the run stopped before assess, the run's observation judged now
// (with the roots the roots step handed in, or none: never a fetch).
func (r *Run) installed() (*credstore.Set, lifecycle.Verdict) {
	if p, pr := r.st.published, r.st.proven; p != nil && p.Swapped && pr != nil {
		set, _ := pr.Env.Creds()
		return set, pr.Env.Verdict(r.Ctx)
	}
	if j := r.st.judged; j != nil {
		return j.Current, j.Verdict
	}
	set, _ := r.Env.Creds()
	return set, r.Env.Verdict(r.Ctx)
}

// composeRecord is the renew record as the run's stages stand: the record
// as found, with what each stage changed. The same composition is written
// mid-run (the hook made pending before a swap) and last.
func (r *Run) composeRecord() *state.Renewal {
	rec := *r.Found
	rec.NodeID, rec.Version = r.Cfg.NodeID, r.Opts.Version
	if g := r.st.obtained; g != nil {
		if g.Gen != "" {
			rec.Generation = filepath.Base(g.Gen)
		}
		if g.Renewed {
			rec.Rekeyed = g.Rekeyed
		}
		if g.RevocationCleared {
			rec.RevokedSerial, rec.RevocationEvidence = "", ""
		}
		if g.Revocation != nil {
			rec.RevokedSerial, rec.RevocationEvidence = g.Revocation.Serial, g.Revocation.Evidence
		}
		if g.Refused {
			rec.Refusals++
		}
	}
	if p := r.st.published; p != nil {
		if p.HookDue {
			rec.HookPending = true
		}
		if p.Swapped {
			rec.Generation, rec.Aside, rec.Unproven = filepath.Base(r.st.obtained.Gen), "", p.Unproven
		}
		if p.Aside != "" {
			rec.Aside = p.Aside
		}
	}
	if h := r.st.hooked; h != nil {
		switch {
		case !h.Configured:
			rec.Hook, rec.HookPending = "", false
		case h.Err != nil:
			rec.Hook = "failed: " + h.Err.Error()
		case h.Ran:
			rec.Hook, rec.HookPending = "ok", false
		}
	}
	return &rec
}

// RecordRenewal writes the renew record for this run (Renewal), with the
// receipt if the run composed one (WriteRecords). It is renew's finish.
func (r *Run) RecordRenewal(rep *report.Report) {
	r.WriteRecords(rep, r.Renewal(rep))
}

// Renewal is the renew record for this run: the certificate now
// installed with its schedule (from the one verdict the run already took:
// no fresh look), the result, and what stays pending. renew records it
// every run, bootstrap when it changed the credentials or ran the hook.
func (r *Run) Renewal(rep *report.Report) *state.Renewal {
	rec := r.composeRecord()
	if j := r.st.judged; j != nil {
		if v := j.Verdict; v.Has(lifecycle.OtherCA) && v.Leaf != nil && !v.Has(lifecycle.RootsUnknown) {
			rec.StaleSerial = v.Leaf.SerialNumber.String()
		}
	}
	published := r.st.published != nil && r.st.published.Swapped
	if _, v := r.installed(); v.Leaf != nil {
		if s := v.Leaf.SerialNumber.String(); s != rec.Serial && rec.Serial != "" && published {
			rec.PreviousSerial = rec.Serial
		}
		sch := v.Schedule
		rec.Serial, rec.NotAfter, rec.RenewAfter, rec.DueAt = v.Leaf.SerialNumber.String(), sch.NotAfter.UTC(), sch.RenewAfter.UTC(), sch.DueAt.UTC()
	}
	result := r.Result()
	switch {
	case result == "" && rep.OK:
		result = state.NotDue
	case result == "" || (!rep.OK && (result == state.Renewed || result == state.Refreshed)):
		result = state.Failed
	}
	if published {
		rec.LastRenewed, rec.Aside = r.Host.Time().UTC(), ""
	}
	rec.LastAttempt, rec.LastResult = r.Host.Time().UTC(), result
	rec.LastError, rec.FailedLayer = "", ""
	if !rep.OK {
		rec.LastError, rec.FailedLayer = rep.Summary, string(rep.FailedLayer)
	}
	if p := r.st.proven; rep.OK && p != nil && p.Report.OK {
		rec.Unproven = "" // the installed set polled
	}
	switch {
	case rep.OK:
		rec.Failures = 0
	default:
		rec.Failures++
	}
	if result != state.Refused {
		rec.Refusals = 0
	}
	return rec
}

// WriteRecords writes what a run ends with: the receipt the receipt step
// composed (none when the run did not reach it) and rec, the renew record
// (nil: none this run), together when there are both (state.WriteDone:
// one wait for the disk for their contents and one for their renames). A
// receipt that cannot be written fails the run, with the renew record
// written with it; a renew record alone that cannot be written is logged.
// Execute calls it for a receipt no finish wrote.
func (r *Run) WriteRecords(rep *report.Report, rec *state.Renewal) {
	rc := r.receipt
	r.receipt = nil
	switch {
	case rc != nil:
		if err := state.WriteDone(r.StateDir, rc, rec, r.Host.Hook); err != nil {
			r.receiptFailed(rep, err)
			break
		}
		r.Out.Receipt = rc
		r.Log.Info("step", "step", "receipt", "layer", "state", "status", "ok", "path", filepath.Join(r.Cfg.Paths.StateDir, state.ReceiptFile), "serial", rc.Serial)
	case rec != nil:
		if err := state.WriteRenewal(r.StateDir, rec); err != nil {
			r.Log.Error("step", "step", "record", "layer", string(diag.State), "status", "fail", "message", err.Error())
		}
	}
	if rec != nil {
		r.Out.Record = rec
		r.Host.Hook.At("recorded")
	}
}

// receiptFailed turns the run's report into the failure to write its
// receipt: the node polled, but it is not done.
func (r *Run) receiptFailed(rep *report.Report, err error) {
	f := &diag.Finding{Layer: diag.State, Owner: diag.Node, Summary: "the proof succeeded but the receipt could not be written: " + err.Error(), Remedy: diag.Writable(r.Cfg.Paths.StateDir) + " and run again (the node itself is healthy)"}
	failed := r.failed("receipt", f)
	failed.Command, failed.Steps = rep.Command, rep.Steps
	for i := range failed.Steps {
		if failed.Steps[i].Name == ReceiptStep.Name {
			failed.Steps[i].Status = "fail"
		}
	}
	*rep = *failed
}

// Receipt is the receipt of the set the proof read back from disk and
// judged: the set now installed.
func (r *Run) Receipt() (*state.Receipt, error) {
	p := r.Proven()
	creds, err := p.Env.Creds()
	if err != nil {
		return nil, err
	}
	g, pub := r.Obtained(), r.Published()
	rc := &state.Receipt{NodeID: r.Cfg.NodeID, RootFingerprint: r.Cfg.CA.Fingerprint, Endpoint: r.Cfg.NodeAPI.URL,
		Enrolled: g.Enrolled, ProvedAt: r.Host.Time().UTC(), MachineID: r.Host.MachineID(), Version: r.Opts.Version,
		Warnings: r.warnings(), Command: r.Command, Unproven: pub.Unproven}
	leaf := creds.Leaf()
	rc.Serial, rc.Issuer, rc.Subject, rc.NotAfter = leaf.SerialNumber.String(), leaf.Issuer.String(), leaf.Subject.String(), leaf.NotAfter.UTC()
	if res := p.Env.Probed(); res != nil {
		rc.ResolvedAddr, rc.ProbeStatus = res.RemoteAddr, res.Status
	}
	return rc, nil
}

// ReceiptStep makes the receipt, last: only a proved node has one.
var ReceiptStep = Step{Name: "receipt", Do: WriteReceipt, Reads: []Stage{StageObtained, StageProven, StagePublished, StageRevoked}}

// WriteReceipt makes the receipt of the proven, published set, last: only
// a proved node has one. It is written as the run ends (WriteRecords),
// after the post hook, together with the renew record the run ends with:
// one wait for the disk for both, where writing each at its step waited
// twice for each.
func WriteReceipt(r *Run) *diag.Finding {
	rc, err := r.Receipt()
	if err != nil {
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Summary: err.Error(), Remedy: "run provision verify to see what changed under " + r.Cfg.Paths.PKIDir}
	}
	r.Host.Hook.At("before receipt")
	r.receipt = rc
	return nil
}

// UpdateReceipt keeps an existing receipt naming the certificate in use
// after renew published a new set; a node without a receipt (never
// bootstrapped to done) gets none from renew.
func (r *Run) UpdateReceipt() {
	old, err := state.ReadReceipt(r.StateDir)
	if err != nil {
		return
	}
	rc, err := r.Receipt()
	if err != nil {
		return
	}
	rc.Enrolled = false
	if rc.Unproven != "" {
		rc.ProvedAt = old.ProvedAt // the new set has not polled yet
	}
	if err := state.WriteReceipt(r.StateDir, rc, r.Host.Hook); err != nil {
		r.Log.Error("step", "step", "receipt", "layer", "state", "status", "fail", "message", err.Error())
		return
	}
	r.Out.Receipt = rc
}
