package bootstrap

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/report"
)

// RevokeCheck is the report line of the replaced certificate's revocation.
const RevokeCheck = "revoke-replaced"

// revokeReplaced runs after a run that enrolled has proven its new
// certificate. If the certificate it replaced (a reinstall on a kept disk,
// a rotated key, a node_id change) is still valid and from this CA, it is
// revoked at the CA, authenticated by itself over mTLS (step-ca's passive
// revocation: a certificate may revoke itself, no token needed): a copy of
// the old key, on the old disk or a backup, must not stay a working
// identity for the rest of its life. A failure is a warning in the report
// and the receipt, never a failed bootstrap: the node is healthy.
func revokeReplaced(ctx context.Context, c *enroll.Client, roots *enroll.Roots, old *credstore.Set, enrolled bool, now time.Time, rep *report.Report, log *slog.Logger) []string {
	if !enrolled || old == nil || !old.KeyMatches() || rep == nil || !rep.OK {
		return nil
	}
	leaf := old.Leaf()
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) || lifecycle.ChainsTo(old.Chain, roots.Current, now) != nil {
		return nil // expired, not yet valid, or from another CA: nothing this CA could revoke
	}
	serial := leaf.SerialNumber.String()
	res := report.Result{Name: RevokeCheck, Layer: diag.Enroll, Owner: diag.CAOwner}
	err := c.Revoke(ctx, old.TLSCertificate(), roots, "superseded: replaced by provision bootstrap")
	if err != nil {
		msg := fmt.Sprintf("the replaced certificate (serial %s, valid until %s) could not be revoked at the CA: %v", serial, leaf.NotAfter.UTC().Format(time.RFC3339), err)
		res.Status, res.Message = report.Warn, msg
		res.Remedy = "revoke it at the CA by hand (step ca revoke " + serial + "), or let it expire; the node itself is healthy"
		rep.Checks = append(rep.Checks, res)
		log.Warn("step", "step", RevokeCheck, "layer", "enroll", "owner", "ca", "status", "warn", "serial", serial, "message", msg)
		return []string{msg + "; " + res.Remedy}
	}
	res.Status, res.Message = report.Pass, fmt.Sprintf("the replaced certificate (serial %s) was revoked at the CA, authenticated by itself", serial)
	rep.Checks = append(rep.Checks, res)
	log.Info("step", "step", RevokeCheck, "layer", "enroll", "status", "ok", "serial", serial)
	return nil
}
