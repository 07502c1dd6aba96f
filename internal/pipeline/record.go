package pipeline

import (
	"path/filepath"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/state"
)

// RecordRenewal writes the renew record for this run: the certificate now
// installed with its renewal point and due time (from the one verdict), the
// result, and what stays pending. It is renew's finish, and bootstrap's when
// bootstrap changed the credentials or ran the hook.
func (r *Run) RecordRenewal(rep *report.Report) {
	rec := r.Rec
	if r.Verdict.Has(lifecycle.OtherCA) && r.Verdict.Leaf != nil && !r.Verdict.Has(lifecycle.RootsUnknown) {
		rec.StaleSerial = r.Verdict.Leaf.SerialNumber.String()
	}
	if v := r.observeSet("").Verdict(r.Ctx); v.Leaf != nil {
		if s := v.Leaf.SerialNumber.String(); s != rec.Serial && rec.Serial != "" && r.Published {
			rec.PreviousSerial = rec.Serial
		}
		rec.Serial, rec.NotAfter, rec.RenewAfter = v.Leaf.SerialNumber.String(), v.Leaf.NotAfter.UTC(), v.RenewAfter.UTC()
		rec.DueAt = v.DueAt(r.Cfg.Renew.Splay.Duration).UTC()
	}
	result := r.result
	switch {
	case result == "" && rep.OK:
		result = state.NotDue
	case result == "" || (!rep.OK && (result == state.Renewed || result == state.Refreshed)):
		result = state.Failed
	}
	if r.Published {
		rec.LastRenewed, rec.Aside = r.Host.Time().UTC(), ""
	}
	rec.LastAttempt, rec.LastResult = r.Host.Time().UTC(), result
	rec.LastError, rec.FailedLayer = "", ""
	if !rep.OK {
		rec.LastError, rec.FailedLayer = rep.Summary, string(rep.FailedLayer)
	}
	if rep.OK && r.Proof != nil && r.Proof.OK {
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
	if err := state.WriteRenewal(r.StateDir, rec); err != nil {
		r.Log.Error("step", "step", "record", "layer", string(diag.State), "status", "fail", "message", err.Error())
	}
	r.Out.Record = rec
	r.Host.Hook.At("recorded")
}

// Receipt is the receipt of the set now installed and the proof that
// judged it.
func (r *Run) Receipt() (*state.Receipt, error) {
	creds, err := credstore.Load(r.PKI)
	if err != nil {
		return nil, err
	}
	rc := &state.Receipt{NodeID: r.Cfg.NodeID, RootFingerprint: r.Cfg.CA.Fingerprint, Endpoint: r.Cfg.NodeAPI.URL,
		Enrolled: r.Out.Enrolled, ProvedAt: r.Host.Time().UTC(), MachineID: r.Host.MachineID(), Version: r.Opts.Version,
		Warnings: r.Warnings, Command: r.Command, Unproven: r.Unproven}
	leaf := creds.Leaf()
	rc.Serial, rc.Issuer, rc.Subject, rc.NotAfter = leaf.SerialNumber.String(), leaf.Issuer.String(), leaf.Subject.String(), leaf.NotAfter.UTC()
	if r.ProofEnv != nil {
		if res := r.ProofEnv.Probed(); res != nil {
			rc.ResolvedAddr, rc.ProbeStatus = res.RemoteAddr, res.Status
		}
	}
	return rc, nil
}

// WriteReceipt writes the receipt, last: only a proved node has one.
func WriteReceipt(r *Run) *diag.Finding {
	rc, err := r.Receipt()
	if err != nil {
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Summary: err.Error(), Remedy: "run provision verify to see what changed under " + r.Cfg.Paths.PKIDir}
	}
	r.Host.Hook.At("before receipt")
	if err := state.WriteReceipt(r.StateDir, rc, r.Host.Hook); err != nil {
		return &diag.Finding{Layer: diag.State, Owner: diag.Node, Summary: "the proof succeeded but the receipt could not be written: " + err.Error(), Remedy: "make " + r.Cfg.Paths.StateDir + " writable and run again (the node itself is healthy)"}
	}
	r.Out.Receipt = rc
	r.Log.Info("step", "step", "receipt", "layer", "state", "status", "ok", "path", filepath.Join(r.Cfg.Paths.StateDir, state.ReceiptFile), "serial", rc.Serial)
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
	if r.Unproven != "" {
		rc.ProvedAt = old.ProvedAt // the new set has not polled yet
	}
	if err := state.WriteReceipt(r.StateDir, rc, r.Host.Hook); err != nil {
		r.Log.Error("step", "step", "receipt", "layer", "state", "status", "fail", "message", err.Error())
		return
	}
	r.Out.Receipt = rc
}
