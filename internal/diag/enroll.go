package diag

import (
	"errors"
	"fmt"

	"github.com/gpuaas/provision/internal/enroll"
)

// FromEnroll classifies a failure talking to step-ca. layer is CA for the
// roots fetch and Enroll for the token and the signing request.
func FromEnroll(err error, layer Layer, tokenFile string) *Finding {
	var e *enroll.Error
	if !errors.As(err, &e) {
		return &Finding{Layer: layer, Owner: CAOwner, Summary: err.Error(), Remedy: "check the CA logs and the node's network path to the CA"}
	}
	f := &Finding{Layer: layer, Summary: e.Error(), Transient: e.Transient()}
	if e.Status > 0 {
		f.add("http_status", fmt.Sprint(e.Status))
	}
	switch e.Kind {
	case enroll.Unreachable:
		f.Owner = Network
		f.Summary = "cannot reach the CA: " + e.Error()
		f.Remedy = "check that ca.url resolves (a [[hosts]] entry or DNS) and that step-ca is running and reachable from the node"
	case enroll.TrustMismatch:
		f.Layer = CA
		f.Owner = CAOwner
		f.Summary = "trust mismatch at the CA: " + e.Error()
		f.Remedy = "the endpoint answering for ca.url presents a certificate that does not chain to the pinned root: remove any TLS-intercepting proxy between the node and step-ca, and check ca.url names step-ca itself (its certificate is issued by the root ca.fingerprint names); if the node clock is far off, fix that first"
	case enroll.Unavailable:
		f.Owner = CAOwner
		f.Summary = "the CA is unavailable: " + e.Error()
		f.Remedy = "the CA is overloaded or failing; check step-ca's health and logs (bootstrap retries this within its deadline)"
	case enroll.NotStepCA:
		f.Owner = CAOwner
		f.Remedy = "ca.url points at something that is not step-ca (a proxy or another service); point it at step-ca itself"
	case enroll.PinMismatch:
		f.Layer = CA
		f.Owner = CAOwner
		f.Remedy = "ca.fingerprint does not match the CA's root: if the CA was re-initialised, distribute the new root fingerprint (step certificate fingerprint root_ca.crt) and issue fresh tokens; otherwise fix ca.fingerprint"
	case enroll.BadRoot:
		f.Layer = CA
		f.Owner = CAOwner
		f.Remedy = "ca.fingerprint must name the CA's self-signed root certificate, not an intermediate or leaf"
	case enroll.TokenMissing:
		f.Owner = Node
		f.Summary = fmt.Sprintf("enrollment needs a one-time token but %s: %v", tokenFile, e.Err)
		f.Remedy = fmt.Sprintf("issue a fresh one-time token for this node (step ca token <node_id>) and write it to %s (mode 0600), then run provision bootstrap again", tokenFile)
	case enroll.TokenInvalid:
		f.Owner = Node
		f.Summary = fmt.Sprintf("the token in %s is unusable: %v", tokenFile, e.Err)
		f.Remedy = fmt.Sprintf("write a fresh one-time token (the whole JWT, nothing else) to %s", tokenFile)
	case enroll.TokenMismatch:
		f.Owner = CAOwner
		f.Remedy = "the token was minted for another node or another CA; issue a token for this node_id from the current CA"
	case enroll.TokenExpired:
		f.Owner = CAOwner
		f.Remedy = "issue a fresh one-time token with a lifetime that covers the node's boot time, and check the node clock is synchronised"
	case enroll.TokenRejected:
		f.Owner = CAOwner
		f.Summary = "the CA rejected the enrollment token (401): it is already used, expired, or was minted before the CA restarted"
		f.Remedy = "issue a fresh one-time token for this node and write it to " + tokenFile + "; the CA logs give the exact reason"
	case enroll.Forbidden:
		f.Owner = CAOwner
		f.Summary = "the CA refused the signing request (403): " + e.Err.Error()
		f.Remedy = "the token's SANs or the provisioner's policy do not allow this certificate; issue a token whose subject and SANs are this node_id"
	case enroll.BadResponse:
		f.Owner = CAOwner
		f.Remedy = "the CA issued an unusable certificate; check the provisioner's templates"
	default:
		f.Owner = CAOwner
		f.Remedy = "check the CA logs for the reason"
	}
	return f
}
