package pipeline

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/state"
)

// Obtain carries out the plan for every case but Enroll (bootstrap's own):
// keep the installed set, or build a candidate (the same set with ca.pem
// refreshed, or a renewed certificate) and write it aside, complete and
// validated, for the proof. A renewal first looks for a set an earlier run
// obtained and left aside: a certificate the CA already issued is proven
// again, not thrown away for another sign.
func Obtain(r *Run) *diag.Finding {
	switch r.Plan {
	case Keep:
		return nil
	case Refresh:
		r.Cand = &credstore.Set{Key: r.Current.Key, Chain: r.Current.Chain, Roots: r.Roots.Bundle()}
		r.SetResult(state.Refreshed)
	case Adopt:
		if !r.reuseAside() {
			return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Summary: "the set left aside is no longer usable", Remedy: "run again"}
		}
		return nil
	case Renew, RenewExpired:
		// renew --force asks the CA for a new certificate, whatever an
		// earlier run left aside.
		if !r.Opts.Force && r.reuseAside() {
			r.Host.Hook.At("renewed")
			return nil
		}
		if r.Current == nil {
			return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Summary: "no installed certificate to renew", Remedy: lifecycle.Remedy(lifecycle.Missing, r.Cfg)}
		}
		if f := r.renew(); f != nil {
			return f
		}
		r.Host.Hook.At("renewed")
	default:
		return nil
	}
	return r.WriteAside()
}

// WriteAside writes the candidate into a new generation directory without
// publishing it: "current" and the stable links still name the old set.
func (r *Run) WriteAside() *diag.Finding {
	gen, err := credstore.SaveAsideFor(r.PKI, r.Cand, r.Host.Time(), r.Host.Hook, observe.Access(r.Cfg, r.Host))
	if err != nil {
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Check: "credentials-write",
			Summary: "the new credentials could not be written: " + err.Error() + "; the installed set stays current",
			Remedy:  "make " + r.Cfg.Paths.PKIDir + " writable, then run again"}
	}
	r.Gen = gen
	r.Rec.Generation = filepath.Base(gen)
	r.Host.Hook.At("aside written")
	return nil
}

// HasAside reports whether a set an earlier run left aside is still good
// for this node (see reuseAside) and holds another key than the installed
// one (an enrollment a killed run did not publish); it changes nothing.
func (r *Run) HasAside() bool {
	for _, g := range credstore.Asides(r.PKI) {
		v, e := r.asideVerdict(g)
		if v.Action >= lifecycle.Reenroll || v.Leaf == nil {
			continue
		}
		if set, err := e.Creds(); err == nil && (r.Current == nil || !sameKey(set.Key, r.Current.Key)) {
			return true
		}
	}
	return false
}

func (r *Run) asideVerdict(g string) (lifecycle.Verdict, *observe.Env) {
	e := r.observeSet(filepath.Join(r.PKI, g))
	return e.Verdict(r.Ctx), e
}

// reuseAside looks for a set left aside by an earlier run that is still
// good (usableAside) and makes it the candidate. Its ca.pem is refreshed
// in a new generation if the CA's roots moved since.
func (r *Run) reuseAside() bool {
	for _, g := range credstore.Asides(r.PKI) {
		v, e, ok := r.usableAside(g)
		if !ok {
			continue
		}
		set, _ := e.Creds()
		r.Cand, r.Reused, r.Gen = set, true, e.CredsDir
		if r.Plan != Adopt {
			r.SetResult(state.Renewed)
		}
		r.Rec.Generation = g
		r.Log.Info("step", "step", "renew", "layer", "ca", "status", "reuse", "generation", g, "serial", v.Leaf.SerialNumber.String(), "not_after", v.Leaf.NotAfter.UTC())
		if v.Has(lifecycle.BundleStale) {
			r.Cand = &credstore.Set{Key: set.Key, Chain: set.Chain, Roots: r.Roots.Bundle()}
			r.Gen = ""
			if r.WriteAside() != nil {
				continue
			}
		}
		return true
	}
	return false
}

// HasRenewalAside reports whether an earlier run left aside a renewed set
// that is still good (usableAside); it changes nothing. renew proves it
// again even before the installed certificate is due: a certificate the
// CA issued is proven again by every run until it is published or no
// longer good.
func (r *Run) HasRenewalAside() bool {
	for _, g := range credstore.Asides(r.PKI) {
		if _, _, ok := r.usableAside(g); ok {
			return true
		}
	}
	return false
}

// usableAside judges the set left aside in generation g: it is good when
// it loads, its key matches, it is this node's, valid now, chains to a
// current root, is not the installed certificate, lasts at least as long,
// and does not carry an exposed key forward.
func (r *Run) usableAside(g string) (lifecycle.Verdict, *observe.Env, bool) {
	var curEnd time.Time
	curSerial := ""
	if r.Current != nil {
		curEnd, curSerial = r.Current.Leaf().NotAfter, r.Current.Leaf().SerialNumber.String()
	}
	v, e := r.asideVerdict(g)
	if v.Action >= lifecycle.Reenroll || v.Leaf == nil || v.Leaf.NotAfter.Before(curEnd) || v.Leaf.SerialNumber.String() == curSerial {
		return v, e, false
	}
	set, err := e.Creds()
	if err != nil || (r.KeyExposed() && r.Current != nil && sameKey(set.Key, r.Current.Key)) {
		return v, e, false
	}
	return v, e, true
}

// renew asks the CA for a new certificate with the current one: over mTLS
// (renew, or rekey with renew.rekey), or, for an expired certificate, by
// step-ca's renewal after expiry. Transient failures are retried with the
// CA's Retry-After within the deadline; renewing twice only costs the CA a
// second certificate.
func (r *Run) renew() *diag.Finding {
	var issued, mid *enroll.Issued
	var err error
	retry.Until(r.Ctx, r.Opts.Policy, r.Opts.Sleep, func(int) (bool, time.Duration) {
		issued, err = r.renewOnce(&mid)
		var ee *enroll.Error
		if err == nil || !errors.As(err, &ee) || !ee.Transient() {
			return true, 0
		}
		r.Log.Warn("step", "step", "renew", "layer", "ca", "status", "retry", "message", err.Error())
		return false, ee.RetryAfter
	})
	if err != nil {
		return r.renewFailure(err)
	}
	r.Cand = &credstore.Set{Key: issued.Key, Chain: issued.Chain, Roots: r.Roots.Bundle()}
	r.Rec.Rekeyed = !sameKey(issued.Key, r.Current.Key)
	if r.Rec.RevokedSerial != "" {
		// The CA renewed the certificate (step-ca refuses a revoked one):
		// the revocation recorded from an earlier CRL no longer holds.
		r.Log.Info("step", "step", "renew", "layer", "ca", "status", "revocation-cleared", "serial", r.Rec.RevokedSerial)
		r.Rec.RevokedSerial, r.Rec.RevocationEvidence = "", ""
	}
	r.SetResult(state.Renewed)
	r.Log.Info("step", "step", "renew", "layer", "ca", "status", "ok", "plan", r.Plan.String(), "serial", issued.Chain[0].SerialNumber.String(), "not_after", issued.Chain[0].NotAfter.UTC(), "rekey", r.Rec.Rekeyed)
	return nil
}

// renewOnce is one attempt at the renewal. A key that was exposed is never
// carried forward: an mTLS renewal of it rekeys, whatever renew.rekey says,
// and a renewal after expiry (which step-ca grants for the same key only)
// is rekeyed at once over mTLS with the certificate it gave, which is
// never published. mid keeps that certificate across attempts.
func (r *Run) renewOnce(mid **enroll.Issued) (*enroll.Issued, error) {
	if r.Plan != RenewExpired {
		return r.Client.Renew(r.Ctx, r.Current.TLSCertificate(), r.Roots, r.Cfg.Renew.Rekey || r.KeyExposed())
	}
	if *mid == nil {
		got, err := r.Client.RenewExpired(r.Ctx, r.Current.TLSCertificate(), r.Roots)
		if err != nil || !r.KeyExposed() {
			return got, err
		}
		*mid = got
		r.Log.Info("step", "step", "renew", "layer", "ca", "status", "rekey-exposed", "message", "renewed after expiry with the exposed key; rekeying it now", "serial", got.Chain[0].SerialNumber.String())
	}
	set := credstore.Set{Key: (*mid).Key, Chain: (*mid).Chain}
	return r.Client.Renew(r.Ctx, set.TLSCertificate(), r.Roots, true)
}

// KeyExposed reports whether the installed key was found readable by
// others, now or before (the exposure record): a renewal must replace it.
func (r *Run) KeyExposed() bool {
	return r.Verdict.Has(lifecycle.KeyExposed) || r.Verdict.Has(lifecycle.KeyWasExposed)
}

// renewFailure words a failed renewal. No single answer becomes permanent:
// a refusal (401/403) is recorded as revoked only when the CA's signed
// revocation list names the serial; otherwise it is a failed attempt the
// next run repeats.
func (r *Run) renewFailure(err error) *diag.Finding {
	var ee *enroll.Error
	if !errors.As(err, &ee) {
		r.SetResult(state.Failed)
		return &diag.Finding{Layer: diag.CA, Owner: diag.CAOwner, Check: "renew", Summary: "renewal failed: " + err.Error() + "; the installed certificate stays current",
			Remedy: "run provision renew again; the installed certificate stays current"}
	}
	leaf := r.Current.Leaf()
	serial := leaf.SerialNumber.String()
	switch ee.Kind {
	case enroll.CertExpired:
		// The CA's TLS layer sees the certificate as expired although the
		// node's clock did not: renew after expiry next, like an expired one.
		r.SetResult(state.Failed)
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Check: "renew", Summary: fmt.Sprintf("the CA refused certificate serial %s as expired (%v); the next run renews it after expiry where the CA allows it", serial, ee.Err),
			Remedy: lifecycle.Remedy(lifecycle.Expired, r.Cfg)}
	case enroll.AfterExpiryRefused:
		return r.expiredRefused(ee)
	case enroll.CertUnknownCA:
		r.SetResult(state.Reenroll)
		return &diag.Finding{Layer: diag.CA, Owner: diag.Node, Check: "renew", Summary: fmt.Sprintf("certificate stale: the CA does not trust its issuer (%v); renew does not renew a stale identity, so re-enrollment with a fresh one-time token is needed (provision bootstrap)", ee.Err),
			Remedy: lifecycle.Remedy(lifecycle.OtherCA, r.Cfg)}
	case enroll.CertRefused:
		return r.refused(ee, serial)
	case enroll.RenewClock:
		r.SetResult(state.Failed)
		return &diag.Finding{Layer: diag.Clock, Owner: diag.Node, Check: "renew",
			Summary: fmt.Sprintf("the CA refused the renewal token's times (%v): the node clock is off", ee.Err),
			Remedy:  lifecycle.Remedy(lifecycle.ClockSkewed, r.Cfg)}
	}
	r.SetResult(state.Failed)
	f := diag.FromEnroll(err, diag.CA, r.Cfg.CA.TokenFile)
	f.Check = "renew"
	f.Summary = "renewal failed: " + f.Summary + "; the installed certificate stays current"
	f.Remedy = "check the CA (provision verify's ca-root), then run provision renew again; the installed certificate stays current until it expires, and " + lifecycle.RenewTimer + " tries again"
	return f
}

// refused handles a 401/403 to the node's own certificate: revoked only
// with the CA's signed CRL as evidence, else a refusal the next run asks
// about again (counted, so a persistent one alerts).
func (r *Run) refused(ee *enroll.Error, serial string) *diag.Finding {
	ev := r.Client.CheckRevocation(r.Ctx, r.Current.Chain, r.Roots)
	if ev.Status == enroll.Revoked {
		evidence := fmt.Sprintf("the CA's signed revocation list (CRL number %v, %s) lists it, revoked at %s", ev.CRLNumber, ev.Reason, stamp(ev.RevokedAt))
		r.Rec.RevokedSerial, r.Rec.RevocationEvidence = serial, evidence
		r.SetResult(state.RevokedRes)
		return &diag.Finding{Layer: diag.Enroll, Owner: diag.Node, Check: "renew",
			Summary:  fmt.Sprintf("certificate revoked: serial %s is on the CA's revocation list (%s); re-enrollment with a fresh one-time token is needed (provision bootstrap)", serial, evidence),
			Remedy:   lifecycle.Remedy(lifecycle.Revoked, r.Cfg),
			Evidence: map[string]string{"serial": serial, "evidence": evidence}}
	}
	if r.Plan == RenewExpired {
		// Expired and refused: nothing to keep alive any more, and the way
		// out is the same as when the CA does not renew after expiry.
		return r.expiredRefused(ee)
	}
	why := "the revocation list does not name it"
	if ev.Status != enroll.NotRevoked {
		why = "no evidence of revocation: " + ev.Reason
	}
	r.Rec.Refusals++
	r.SetResult(state.Refused)
	return &diag.Finding{Layer: diag.CA, Owner: diag.CAOwner, Check: "renew", Transient: true,
		Summary: fmt.Sprintf("the CA (or something in front of it) refused to renew certificate serial %s (answered %d: %v); not recorded as revoked (%s); refusal %d in a row, asked again by the next run", serial, ee.Status, ee.Err, why, r.Rec.Refusals),
		Remedy:  "check the CA's logs and anything in front of it (a proxy or WAF answering 401); " + lifecycle.RenewTimer + " asks again, and the installed certificate stays current until it expires"}
}

// expiredRefused words an expired certificate the CA will not renew:
// both ways out, a fresh token or the provisioner's claim.
func (r *Run) expiredRefused(ee *enroll.Error) *diag.Finding {
	r.SetResult(state.Reenroll)
	return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Check: "renew",
		Summary: fmt.Sprintf("certificate expired: the certificate expired at %s, and the CA does not renew it after expiry (%v; the provisioner's claim allowRenewalAfterExpiry would let it), so re-enrollment with a fresh one-time token is needed (provision bootstrap)", stamp(r.Current.Leaf().NotAfter), ee.Err),
		Remedy:  "either write a fresh one-time token for this node_id to " + r.Cfg.CA.TokenFile + " and run provision bootstrap, or have the control-plane team allow renewal after expiry on the provisioner (the claim allowRenewalAfterExpiry) and run provision renew"}
}
