package pipeline

import (
	"crypto/x509"
	"fmt"
	"time"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/report"
)

// RevokeCheck is the report line of the replaced certificate's revocation.
const RevokeCheck = "revoke-replaced"

// Revoke revokes, at the CA and authenticated by itself, a still-valid
// certificate this run replaced with a new key (an enrollment on a kept
// disk, an exposed key rotated), now that the new set is proven and
// published. A failure is a warning.
func Revoke(r *Run) *diag.Finding {
	v := &Revocation{}
	r.setRevoked(v)
	revokeReplaced(r, v)
	return nil
}

// revokeReplaced runs after a run has proven and published a new key. If
// the certificate it replaced (a reinstall on a kept disk, a rotated key, a
// node_id change) is still valid and from this CA, it is
// revoked at the CA, authenticated by itself over mTLS (step-ca's passive
// revocation: a certificate may revoke itself, no token needed): a copy of
// the old key, on the old disk or a backup, must not stay a working
// identity for the rest of its life. A failure is a warning in the report
// and the receipt, never a failed bootstrap: the node is healthy.
func revokeReplaced(r *Run, out *Revocation) {
	old, o, g, rep := r.Replaced(), r.Observed(), r.Obtained(), r.Proven().Report
	if old == nil || !r.Published().Swapped || rep == nil || !rep.OK || sameKey(old.Key, g.Set.Key) {
		return
	}
	// The verdict assess took judged the replaced set: expired, not yet
	// valid, or from another CA, it is nothing this CA could revoke.
	if v := r.Judged().Verdict; v.Has(lifecycle.Expired) || v.Has(lifecycle.NotYetValid) || v.Has(lifecycle.OtherCA) || v.Has(lifecycle.RootsUnknown) {
		return
	}
	leaf := old.Leaf()
	serial := leaf.SerialNumber.String()
	res := report.Result{Name: RevokeCheck, Layer: diag.Enroll, Owner: diag.CAOwner}
	out.Check = &res
	err := o.Client.Revoke(r.Ctx, old.TLSCertificate(), o.Roots, "superseded: replaced by provision "+r.Command)
	if err != nil {
		msg := fmt.Sprintf("the replaced certificate (serial %s, valid until %s) could not be revoked at the CA: %v", serial, leaf.NotAfter.UTC().Format(time.RFC3339), err)
		res.Status, res.Message = report.Warn, msg
		res.Remedy = "revoke it at the CA by hand (step ca revoke " + serial + "), or let it expire; the node itself is healthy"
		out.Warning = msg + "; " + res.Remedy
		r.Log.Warn("step", "step", RevokeCheck, "layer", "enroll", "owner", "ca", "status", "warn", "serial", serial, "message", msg)
		return
	}
	res.Status, res.Message = report.Pass, fmt.Sprintf("the replaced certificate (serial %s) was revoked at the CA, authenticated by itself", serial)
	r.Log.Info("step", "step", RevokeCheck, "layer", "enroll", "status", "ok", "serial", serial)
}

// RevocationOf is the CA's signed evidence about chain's certificate (its
// CRL, verified against the roots the run observed): the one way a run
// asks whether a certificate was revoked. The step that asks must have
// read the observed stage.
func (r *Run) RevocationOf(chain []*x509.Certificate) *enroll.Revocation {
	o := r.Observed()
	return o.Client.CheckRevocation(r.Ctx, chain, o.Roots)
}
