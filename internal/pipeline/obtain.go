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
// refreshed, a renewed certificate, or a set an earlier run left aside,
// which assess judged) and write it aside, complete and validated, for the
// proof. A renewal first takes a set an earlier run obtained and left
// aside: a certificate the CA already issued is proven again, not thrown
// away for another sign. It neither observes nor proves: the proof step
// proves whatever candidate it leaves.
func Obtain(r *Run) *diag.Finding {
	g, f := r.ObtainFor(r.Judged())
	r.SetObtained(g)
	return f
}

// ObtainFor carries out j's plan (see Obtain) and returns what it obtained,
// also when it failed (what the CA said is recorded either way).
func (r *Run) ObtainFor(j *Judged) (*Obtained, *diag.Finding) {
	g := &Obtained{Plan: j.Plan, Why: j.Why}
	switch j.Plan {
	case Refresh:
		g.Set = &credstore.Set{Key: j.Current.Key, Chain: j.Current.Chain, Roots: r.Observed().Roots.Bundle()}
		g.Result = state.Refreshed
	case Adopt:
		if !r.reuseAside(j, g) {
			return g, &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Summary: "the set left aside is no longer usable", Remedy: "run again"}
		}
		return g, nil
	case Renew, RenewExpired:
		// renew --force asks the CA for a new certificate, whatever an
		// earlier run left aside.
		if !r.Opts.Force && r.reuseAside(j, g) {
			g.Result = state.Renewed
			r.Host.Hook.At("renewed")
			return g, nil
		}
		if j.Current == nil {
			return g, &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Summary: "no installed certificate to renew", Remedy: lifecycle.Remedy(lifecycle.Missing, r.Cfg)}
		}
		if f := r.renew(j, g); f != nil {
			return g, f
		}
		r.Host.Hook.At("renewed")
	default:
		return g, nil
	}
	return g, r.WriteAside(g)
}

// WriteAside writes g's candidate into a new generation directory without
// publishing it: "current" and the stable links still name the old set.
func (r *Run) WriteAside(g *Obtained) *diag.Finding {
	gen, err := credstore.SaveAsideFor(r.PKI, g.Set, r.Host.Time(), r.Host.Hook, observe.Access(r.Cfg, r.Host))
	if err != nil {
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Check: "credentials-write",
			Summary: "the new credentials could not be written: " + err.Error() + "; the installed set stays current",
			Remedy:  diag.Writable(r.Cfg.Paths.PKIDir) + ", then run again"}
	}
	g.Gen = gen
	r.Host.Hook.At("aside written")
	// A first install's stable links are made while the proof waits on
	// the network; publish waits for them (Settle).
	pki := r.PKI
	r.Meanwhile(func() *diag.Finding {
		if err := credstore.LinkAhead(pki); err != nil {
			return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Check: "publish",
				Summary: "the stable links of the new set could not be made: " + err.Error() + "; nothing was published",
				Remedy:  diag.Writable(r.Cfg.Paths.PKIDir) + ", then run again"}
		}
		return nil
	})
	return nil
}

// Aside is a set an earlier run obtained and left aside, observed once a
// run (a derived observation of its generation directory) and judged with
// the run's roots.
type Aside struct {
	Gen     string // the generation's name under pki_dir
	Env     *observe.Env
	Verdict lifecycle.Verdict
	Set     *credstore.Set // nil when it did not load
}

// asides are the sets aside, observed the first time a step asks.
func (r *Run) asides() []Aside {
	if r.asideOnce {
		return r.asideSeen
	}
	r.asideOnce = true
	for _, g := range credstore.Asides(r.PKI) {
		e := r.Env.ForSet(filepath.Join(r.PKI, g))
		set, _ := e.Creds()
		r.asideSeen = append(r.asideSeen, Aside{Gen: g, Env: e, Verdict: e.Verdict(r.Ctx), Set: set})
	}
	return r.asideSeen
}

// HasAside reports whether a set an earlier run left aside is still good
// for this node and holds another key than the installed one cur (an
// enrollment a killed run did not publish).
func (r *Run) HasAside(cur *credstore.Set) bool {
	for _, a := range r.asides() {
		if a.Verdict.Action < lifecycle.Reenroll && a.Verdict.Leaf != nil && a.Set != nil && (cur == nil || !sameKey(a.Set.Key, cur.Key)) {
			return true
		}
	}
	return false
}

// HasRenewalAside reports whether an earlier run left aside a renewed set
// that is still good for j (usable). renew proves it again even before the
// installed certificate is due: a certificate the CA issued is proven
// again by every run until it is published or no longer good.
func (r *Run) HasRenewalAside(j *Judged) bool { return len(j.Usable) > 0 }

// usable judges a set left aside against the installed one: it is good
// when it loads, its key matches, it is this node's, valid now, chains to
// a current root, is not the installed certificate, lasts at least as
// long, and does not carry an exposed key forward.
func usable(j *Judged, a Aside) bool {
	v := a.Verdict
	var curEnd time.Time
	curSerial := ""
	if j.Current != nil {
		curEnd, curSerial = j.Current.Leaf().NotAfter, j.Current.Leaf().SerialNumber.String()
	}
	if v.Action >= lifecycle.Reenroll || v.Leaf == nil || v.Leaf.NotAfter.Before(curEnd) || v.Leaf.SerialNumber.String() == curSerial {
		return false
	}
	return a.Set != nil && !(j.KeyExposed() && j.Current != nil && sameKey(a.Set.Key, j.Current.Key))
}

// reuseAside makes the first usable set aside g's candidate. Its ca.pem is
// refreshed in a new generation if the CA's roots moved since.
func (r *Run) reuseAside(j *Judged, g *Obtained) bool {
	for _, a := range j.Usable {
		g.Set, g.Reused, g.Gen = a.Set, true, a.Env.CredsDir
		v := a.Verdict
		r.Log.Info("step", "step", "renew", "layer", "ca", "status", "reuse", "generation", a.Gen, "serial", v.Leaf.SerialNumber.String(), "not_after", v.Leaf.NotAfter.UTC())
		if v.Has(lifecycle.BundleStale) {
			g.Set = &credstore.Set{Key: a.Set.Key, Chain: a.Set.Chain, Roots: r.Observed().Roots.Bundle()}
			g.Gen = ""
			if r.WriteAside(g) != nil {
				continue
			}
		}
		return true
	}
	g.Set, g.Reused, g.Gen = nil, false, ""
	return false
}

// renew asks the CA for a new certificate with the current one: over mTLS
// (renew, or rekey with renew.rekey), or, for an expired certificate, by
// step-ca's renewal after expiry. Transient failures are retried with the
// CA's Retry-After within the deadline; renewing twice only costs the CA a
// second certificate.
func (r *Run) renew(j *Judged, g *Obtained) *diag.Finding {
	var issued, mid *enroll.Issued
	var err error
	retry.Until(r.Ctx, r.Opts.Policy, r.Opts.Sleep, func(int) (bool, time.Duration) {
		issued, err = r.renewOnce(j, &mid)
		var ee *enroll.Error
		if err == nil || !errors.As(err, &ee) || !ee.Transient() {
			return true, 0
		}
		r.Log.Warn("step", "step", "renew", "layer", "ca", "status", "retry", "message", err.Error())
		return false, ee.RetryAfter
	})
	if err != nil {
		return r.renewFailure(j, g, err)
	}
	g.Set = &credstore.Set{Key: issued.Key, Chain: issued.Chain, Roots: r.Observed().Roots.Bundle()}
	g.Renewed, g.Rekeyed = true, !sameKey(issued.Key, j.Current.Key)
	if r.Found.RevokedSerial != "" {
		// The CA renewed the certificate (step-ca refuses a revoked one):
		// the revocation recorded from an earlier CRL no longer holds.
		r.Log.Info("step", "step", "renew", "layer", "ca", "status", "revocation-cleared", "serial", r.Found.RevokedSerial)
		g.RevocationCleared = true
	}
	g.Result = state.Renewed
	r.Log.Info("step", "step", "renew", "layer", "ca", "status", "ok", "plan", j.Plan.String(), "serial", issued.Chain[0].SerialNumber.String(), "not_after", issued.Chain[0].NotAfter.UTC(), "rekey", g.Rekeyed)
	return nil
}

// renewOnce is one attempt at the renewal. A key that was exposed is never
// carried forward: an mTLS renewal of it rekeys, whatever renew.rekey says,
// and a renewal after expiry (which step-ca grants for the same key only)
// is rekeyed at once over mTLS with the certificate it gave, which is
// never published. mid keeps that certificate across attempts.
func (r *Run) renewOnce(j *Judged, mid **enroll.Issued) (*enroll.Issued, error) {
	o := r.Observed()
	if j.Plan != RenewExpired {
		return o.Client.Renew(r.Ctx, j.Current.TLSCertificate(), o.Roots, r.Cfg.Renew.Rekey || j.KeyExposed())
	}
	if *mid == nil {
		got, err := o.Client.RenewExpired(r.Ctx, j.Current.TLSCertificate(), o.Roots)
		if err != nil || !j.KeyExposed() {
			return got, err
		}
		*mid = got
		r.Log.Info("step", "step", "renew", "layer", "ca", "status", "rekey-exposed", "message", "renewed after expiry with the exposed key; rekeying it now", "serial", got.Chain[0].SerialNumber.String())
	}
	set := credstore.Set{Key: (*mid).Key, Chain: (*mid).Chain}
	return o.Client.Renew(r.Ctx, set.TLSCertificate(), o.Roots, true)
}

// renewFailure words a failed renewal. No single answer becomes permanent:
// a refusal (401/403) is recorded as revoked only when the CA's signed
// revocation list names the serial; otherwise it is a failed attempt the
// next run repeats.
func (r *Run) renewFailure(j *Judged, g *Obtained, err error) *diag.Finding {
	var ee *enroll.Error
	if !errors.As(err, &ee) {
		g.Result = state.Failed
		return &diag.Finding{Layer: diag.CA, Owner: diag.CAOwner, Check: "renew", Summary: "renewal failed: " + err.Error() + stillCurrent,
			Remedy: "run provision renew again; the installed certificate stays current"}
	}
	leaf := j.Current.Leaf()
	serial := leaf.SerialNumber.String()
	switch ee.Kind {
	case enroll.CertExpired:
		// The CA's TLS layer sees the certificate as expired although the
		// node's clock did not: renew after expiry next, like an expired one.
		g.Result = state.Failed
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Check: "renew", Summary: fmt.Sprintf("the CA refused certificate serial %s as expired (%v); the next run renews it after expiry where the CA allows it", serial, ee.Err),
			Remedy: lifecycle.Remedy(lifecycle.Expired, r.Cfg)}
	case enroll.AfterExpiryRefused:
		return r.expiredRefused(j, g, ee)
	case enroll.CertUnknownCA:
		g.Result = state.Reenroll
		return &diag.Finding{Layer: diag.CA, Owner: diag.Node, Check: "renew", Summary: fmt.Sprintf("certificate stale: the CA does not trust its issuer (%v); renew does not renew a stale identity, so "+lifecycle.NeedsToken, ee.Err),
			Remedy: lifecycle.Remedy(lifecycle.OtherCA, r.Cfg)}
	case enroll.CertRefused:
		return r.refused(j, g, ee, serial)
	case enroll.RenewClock:
		g.Result = state.Failed
		return &diag.Finding{Layer: diag.Clock, Owner: diag.Node, Check: "renew",
			Summary: fmt.Sprintf("the CA refused the renewal token's times (%v): the node clock is off", ee.Err),
			Remedy:  lifecycle.Remedy(lifecycle.ClockSkewed, r.Cfg)}
	}
	g.Result = state.Failed
	f := diag.FromEnroll(err, diag.CA, r.Cfg.CA.TokenFile)
	f.Check = "renew"
	f.Summary = "renewal failed: " + f.Summary + stillCurrent
	f.Remedy = "check the CA (provision verify's ca-root), then run provision renew again; the installed certificate stays current until it expires, and " + lifecycle.RenewTimer + " tries again"
	return f
}

// refused handles a 401/403 to the node's own certificate: revoked only
// with the CA's signed CRL as evidence, else a refusal the next run asks
// about again (counted, so a persistent one alerts).
func (r *Run) refused(j *Judged, g *Obtained, ee *enroll.Error, serial string) *diag.Finding {
	ev := r.RevocationOf(j.Current.Chain)
	if ev.Status == enroll.Revoked {
		evidence := fmt.Sprintf("the CA's signed revocation list (CRL number %v, %s) lists it, revoked at %s", ev.CRLNumber, ev.Reason, stamp(ev.RevokedAt))
		g.Revocation = &RevocationEvidence{Serial: serial, Evidence: evidence}
		g.Result = state.RevokedRes
		return &diag.Finding{Layer: diag.Enroll, Owner: diag.Node, Check: "renew",
			Summary:  fmt.Sprintf("certificate revoked: serial %s is on the CA's revocation list (%s); "+lifecycle.NeedsToken, serial, evidence),
			Remedy:   lifecycle.Remedy(lifecycle.Revoked, r.Cfg),
			Evidence: map[string]string{"serial": serial, "evidence": evidence}}
	}
	if j.Plan == RenewExpired {
		// Expired and refused: nothing to keep alive any more, and the way
		// out is the same as when the CA does not renew after expiry.
		return r.expiredRefused(j, g, ee)
	}
	why := "the revocation list does not name it"
	if ev.Status != enroll.NotRevoked {
		why = "no evidence of revocation: " + ev.Reason
	}
	g.Refused = true
	g.Result = state.Refused
	return &diag.Finding{Layer: diag.CA, Owner: diag.CAOwner, Check: "renew", Transient: true,
		Summary: fmt.Sprintf("the CA (or something in front of it) refused to renew certificate serial %s (answered %d: %v); not recorded as revoked (%s); refusal %d in a row, asked again by the next run", serial, ee.Status, ee.Err, why, r.Found.Refusals+1),
		Remedy:  "check the CA's logs and anything in front of it (a proxy or WAF answering 401); " + lifecycle.RenewTimer + " asks again, and the installed certificate stays current until it expires"}
}

// expiredRefused words an expired certificate the CA will not renew:
// both ways out, a fresh token or the provisioner's claim.
func (r *Run) expiredRefused(j *Judged, g *Obtained, ee *enroll.Error) *diag.Finding {
	g.Result = state.Reenroll
	return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Check: "renew",
		Summary: fmt.Sprintf("certificate expired: the certificate expired at %s, and the CA does not renew it after expiry (%v; the provisioner's claim allowRenewalAfterExpiry would let it), so "+lifecycle.NeedsToken, stamp(j.Current.Leaf().NotAfter), ee.Err),
		Remedy:  "either " + lifecycle.FreshToken(r.Cfg) + ", or have the control-plane team allow renewal after expiry on the provisioner (the claim allowRenewalAfterExpiry) and run provision renew"}
}

// stillCurrent ends a failed renewal's summary.
const stillCurrent = "; the installed certificate stays current"
