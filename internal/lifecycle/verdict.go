// Package lifecycle answers one question in one place: what should happen to
// the credentials on disk? Judge looks at the key, the certificate chain and
// the CA bundle (with their modes), the CA's current and federated roots,
// node_id, the node clock against the CA's, and what the CA last said about
// this certificate with evidence (revocation), and returns a typed Verdict.
// bootstrap and renew act on it, verify renders it, renew --check and the
// metrics schedule from it, and Remedy words what to do about each reason.
// The one place that gathers Judge's input from disk and network is
// observe.Env.Verdict.
//
// Why one function: the same facts used to be read by bootstrap (to decide
// whether to re-enroll) and by verify (to tell the operator what to do), in
// a different order, and the two disagreed: verify told the owner of a
// 0644 key that bootstrap "rewrites the key 0600" while bootstrap in fact
// demanded a token and failed; a certificate in the last third of its life
// was healthy to verify and fatal to bootstrap. With one verdict, the
// remedy verify prints is what bootstrap does.
package lifecycle

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
)

// Action is what the credentials need, from least to most.
type Action int

// The actions, ordered: a verdict's Action is the largest of its reasons'.
const (
	Keep     Action = iota // nothing to do
	Tighten                // fixable on the node without a token: modes, a stale ca.pem
	Renew                  // valid, past the renewal point: a new certificate before it expires
	Reenroll               // unusable for the node: a fresh one-time token is needed
)

var actionNames = [...]string{"keep", "tighten", "renew", "re-enroll"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// MarshalText renders the action by name in JSON reports and receipts.
func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// Reason names one fact about the credentials. The names are an interface:
// reports and logs carry them.
type Reason string

// The reasons, each with the action it calls for.
const (
	Missing       Reason = "missing"         // no credentials: the node has not enrolled
	Unreadable    Reason = "unreadable"      // a file is missing, garbled or unparsable
	KeyMismatch   Reason = "key-mismatch"    // key.pem does not belong to cert.pem
	KeyLost       Reason = "key-lost"        // key.pem's TPM key no longer loads: the TPM was cleared, or it is another TPM's
	WrongNode     Reason = "wrong-node"      // the certificate is for another node_id
	NotYetValid   Reason = "not-yet-valid"   // not valid yet by the node's clock
	Expired       Reason = "expired"         // past NotAfter
	OtherCA       Reason = "other-ca"        // does not chain to any of the CA's current roots (stale)
	Revoked       Reason = "revoked"         // the CA refused to renew it as revoked (recorded by renew)
	KeyExposed    Reason = "key-exposed"     // the key is readable by others now: restrict it, rotate with a token
	KeyWasExposed Reason = "key-was-exposed" // restricted since, but still the key others could read
	DirOpen       Reason = "dir-open"        // pki_dir lets group or others in
	BundleStale   Reason = "bundle-stale"    // ca.pem lacks one of the CA's current roots
	PastRenewal   Reason = "past-renewal"    // valid, past the renewal point
	RootsUnknown  Reason = "roots-unknown"   // the CA's roots could not be fetched: chain not judged
	ClockSkewed   Reason = "clock-skew"      // the node clock is more than MaxSkew off the CA's: judge nothing irreversible
)

// KeyUnreachable: paths.key_group is set, but a member of that group
// cannot get to the installed key, judged the way the kernel walks the
// path (credstore.Access.Reach): the node-agent would fail to read it.
const KeyUnreachable Reason = "key-unreachable"

var reasonAction = map[Reason]Action{
	Missing: Reenroll, Unreadable: Reenroll, KeyMismatch: Reenroll, KeyLost: Reenroll, WrongNode: Reenroll,
	NotYetValid: Reenroll, Expired: Reenroll, OtherCA: Reenroll, Revoked: Reenroll,
	KeyExposed: Tighten, KeyWasExposed: Tighten, DirOpen: Tighten, KeyUnreachable: Tighten, BundleStale: Tighten,
	PastRenewal: Renew, RootsUnknown: Keep, ClockSkewed: Keep,
}

// Clock tolerances against the CA's Date header.
const (
	// MaxSkew is the most the node clock may be off the CA's: step-ca gives
	// tokens one minute of leeway, and TLS has none.
	MaxSkew = time.Minute
	// WarnSkew is when a skew is worth a warning before it matters.
	WarnSkew = 10 * time.Second
)

// Skew is the node clock minus a peer's (the CA's or the API's Date
// header) and whether it is beyond MaxSkew; zero and false without a peer
// time. at is the node clock at the instant the peer's answer arrived, not
// the clock now: an observation is judged against the clock of the moment
// it was made, or its age (a slow CA, a long outage, a loaded machine)
// would read as skew.
func Skew(at, peer time.Time) (time.Duration, bool) {
	if peer.IsZero() || at.IsZero() {
		return 0, false
	}
	d := at.Sub(peer)
	return d, d > MaxSkew || d < -MaxSkew
}

// Action returns what the reason calls for on its own.
func (r Reason) Action() Action { return reasonAction[r] }

// ExposedFile, under state_dir, records that the installed key was found
// readable by others; bootstrap writes it and removes it when a new key
// replaces the exposed one.
const ExposedFile = "key-exposed.json"

// DefaultRenewFraction is the share of a certificate's lifetime after which
// it is renewed: step's and kubelet's two thirds.
const DefaultRenewFraction = 2.0 / 3.0

// Input is everything Judge looks at.
type Input struct {
	Set     *credstore.Set // nil when Load failed
	LoadErr error          // credstore.Load's error
	NodeID  string
	// Roots are the CA's current roots; nil when they could not be fetched
	// (the chain is then not judged and RootsUnknown is reported).
	Roots []*x509.Certificate
	// Federated are the roots the CA vouches for beside Roots: ca.pem must
	// hold exactly Roots and Federated, no more, no fewer.
	Federated []*x509.Certificate
	Now       time.Time
	// CADate is the CA's clock (its Date header, from an authenticated
	// answer), and CADateAt the node clock when that answer arrived; zero
	// when unknown. Skew is judged between the two, not against Now.
	CADate, CADateAt time.Time
	// RenewFraction of the lifetime after which the certificate is due;
	// 0 means DefaultRenewFraction.
	RenewFraction float64
	// Splay is the most this node renews after the renewal point
	// (renew.splay): see Schedule.DueAt.
	Splay time.Duration
	// Exposed is set when state records the key as having been readable
	// by others: the mode is fixed, the key is still the exposed one.
	Exposed bool
	// Access is who may read the key besides root (paths.key_group): the
	// key and pki_dir are judged against it. The zero value means nobody.
	Access credstore.Access
	// Unreachable is why a member of the key group cannot read the
	// installed key (credstore.Access.Reach); nil when it can, or without
	// a key group.
	Unreachable error
	// RevokedSerial is a serial found revoked with evidence (the CA's
	// signed CRL, recorded in state_dir's renew record); a refusal alone
	// (a 401 from anything in front of the CA) is never recorded here.
	RevokedSerial string
	// KeyLost, when set, is why the installed key's TPM refused to load
	// it (observed by signing with it: evidence, not a guess): the TPM
	// was cleared since enrollment, or key.pem was made by another TPM.
	KeyLost string
	// StaleSerial is a serial an earlier run judged stale against the CA's
	// current roots (fetched verified, state_dir's renew record): judged
	// offline against an equally stale ca.pem, the certificate is still
	// stale.
	StaleSerial string
}

// Verdict is the one answer.
type Verdict struct {
	Action  Action
	Reasons []Reason // every fact that holds, most severe first
	// Detail is one line per reason, for reports.
	Detail map[Reason]string
	// Leaf and its schedule, when a certificate could be read.
	Leaf      *x509.Certificate
	Schedule  Schedule
	ChainErr  error             // why the chain does not verify against Roots
	ChainRoot *x509.Certificate // the current root it chains to, when it does
	// BundleMissing counts the CA's current roots ca.pem lacks;
	// BundleUseless is set when it holds none of them: the node can then
	// verify no server of the control plane. BundleDropped counts roots
	// ca.pem holds that the CA no longer serves or vouches for.
	BundleMissing int
	BundleUseless bool
	BundleDropped int
	// Skew is the node clock minus the CA's (zero when unknown).
	Skew time.Duration
}

// RenewableAfterExpiry reports whether expiry is all that stands between
// the certificate and a renewal: the key matches, it is this node's, it
// chains to a current root (judged at its last valid instant), and it is
// not revoked. step-ca renews such a certificate when its provisioner
// allows renewal after expiry.
func (v Verdict) RenewableAfterExpiry() bool {
	if !v.Has(Expired) {
		return false
	}
	for _, r := range v.Reasons {
		if r != Expired && r.Action() == Reenroll {
			return false
		}
	}
	return !v.Has(RootsUnknown)
}

// Has reports whether r is among the verdict's reasons.
func (v Verdict) Has(r Reason) bool {
	for _, x := range v.Reasons {
		if x == r {
			return true
		}
	}
	return false
}

// First returns the most severe reason, or "" for Keep.
func (v Verdict) First() Reason {
	if len(v.Reasons) == 0 {
		return ""
	}
	return v.Reasons[0]
}

func (v *Verdict) add(r Reason, format string, a ...any) {
	v.Reasons = append(v.Reasons, r)
	if v.Detail == nil {
		v.Detail = map[Reason]string{}
	}
	v.Detail[r] = fmt.Sprintf(format, a...)
	if r.Action() > v.Action {
		v.Action = r.Action()
	}
}

// Judge decides. It never touches the disk: the caller loaded the set.
func Judge(in Input) Verdict {
	var v Verdict
	switch {
	case errors.Is(in.LoadErr, credstore.ErrNotFound):
		v.add(Missing, "no credentials: the node has not enrolled")
		return v
	case in.LoadErr != nil || in.Set == nil:
		v.add(Unreadable, "the credentials cannot be read: %v", in.LoadErr)
		return v
	}
	s := in.Set
	leaf := s.Leaf()
	v.Leaf = leaf
	frac := in.RenewFraction
	if frac <= 0 || frac >= 1 {
		frac = DefaultRenewFraction
	}
	v.Schedule = schedule(leaf, frac, in.Splay)

	if !s.KeyMatches() {
		v.add(KeyMismatch, "key.pem does not match cert.pem")
	}
	if in.KeyLost != "" {
		v.add(KeyLost, "key.pem's key lives in a TPM that no longer accepts it (the TPM was cleared since enrollment, or key.pem was made by another TPM): %s", in.KeyLost)
	}
	if leaf.Subject.CommonName != in.NodeID {
		v.add(WrongNode, "the certificate is for %q, but node_id is %q", leaf.Subject.CommonName, in.NodeID)
	}
	switch {
	case in.Now.Before(leaf.NotBefore):
		v.add(NotYetValid, "the certificate is not valid until %s (node clock %s)", stamp(leaf.NotBefore), stamp(in.Now))
	case in.Now.After(leaf.NotAfter):
		v.add(Expired, "the certificate expired at %s", stamp(leaf.NotAfter))
	}
	if in.RevokedSerial != "" && in.RevokedSerial == leaf.SerialNumber.String() {
		v.add(Revoked, "certificate serial %s is on the CA's revocation list", in.RevokedSerial)
	}
	if v.Skew, _ = Skew(in.CADateAt, in.CADate); v.Skew > MaxSkew || v.Skew < -MaxSkew {
		v.add(ClockSkewed, "the node clock is %s off the CA's", v.Skew.Round(time.Second))
	}
	v.judgeChain(in, leaf)
	if in.StaleSerial != "" && in.StaleSerial == leaf.SerialNumber.String() && !v.Has(OtherCA) {
		v.add(OtherCA, "the node certificate (issuer %s) does not chain to any of the CA's current roots: it is stale (found by an earlier run against the CA's roots of then, serial %s)", leaf.Issuer, in.StaleSerial)
	}
	a := in.Access
	if !a.Allows(s.KeyMode, s.KeyGID, a.KeyMode()) {
		v.add(KeyExposed, "key.pem is mode %04o (group %d); a private key must be %s", s.KeyMode, s.KeyGID, a.Describe(a.KeyMode()))
	} else if in.Exposed {
		v.add(KeyWasExposed, "key.pem was found readable by others (recorded in state_dir/%s) and restricted since; it is still that key", ExposedFile)
	}
	if !a.Allows(s.DirMode, s.DirGID, a.DirMode()) {
		v.add(DirOpen, "pki_dir is mode %04o (group %d); it holds a private key and must be %s", s.DirMode, s.DirGID, a.Describe(a.DirMode()))
	}
	if in.Unreachable != nil {
		v.add(KeyUnreachable, "the node-agent cannot read its key: %v", in.Unreachable)
	}
	v.judgeBundle(in)
	if v.Action < Reenroll && !in.Now.Before(v.Schedule.RenewAfter) {
		v.add(PastRenewal, "past its renewal point %s; it expires at %s (in %s)", stamp(v.Schedule.RenewAfter), stamp(leaf.NotAfter), leaf.NotAfter.Sub(in.Now).Round(time.Minute))
	}
	sortBySeverity(v.Reasons)
	return v
}

// judgeChain: the certificate must chain to one of the CA's current roots.
// An expired (or not yet valid) certificate is judged at its last (first)
// valid instant, so a stale one is still told apart from one that only ran
// out, which the CA may renew after expiry.
func (v *Verdict) judgeChain(in Input, leaf *x509.Certificate) {
	if in.Roots == nil {
		v.add(RootsUnknown, "the CA's current roots are unknown: the chain was not judged")
		return
	}
	at := in.Now
	switch {
	case in.Now.After(leaf.NotAfter):
		at = leaf.NotAfter
	case in.Now.Before(leaf.NotBefore):
		at = leaf.NotBefore
	}
	if err := ChainsTo(in.Set.Chain, in.Roots, at); err != nil {
		v.ChainErr = err
		v.add(OtherCA, "the node certificate (issuer %s) does not chain to any of the CA's current roots: it is stale (%v)", leaf.Issuer, err)
		return
	}
	v.ChainRoot = IssuingRoot(in.Set.Chain, in.Roots)
}

// IssuingRoot is the root among roots that issued chain (leaf first): the
// one answer to "which root did this chain come from?" (the verdict, status
// and the metrics ask it). Found by signature, not by verification at a
// time, so an expired certificate still names the root it was issued
// under; nil when none did.
func IssuingRoot(chain, roots []*x509.Certificate) *x509.Certificate {
	if len(chain) == 0 || chain[0] == nil {
		return nil
	}
	top := chain[len(chain)-1]
	for _, r := range roots {
		if bytes.Equal(top.Raw, r.Raw) || (bytes.Equal(top.RawIssuer, r.RawSubject) && top.CheckSignatureFrom(r) == nil) {
			return r
		}
	}
	return nil
}

// judgeBundle: ca.pem must hold exactly the roots the CA serves now,
// current and federated. A missing current root is stale material (the node
// cannot verify servers under it); a root the CA dropped is trust the node
// must not keep (a server certificate under it would still verify).
func (v *Verdict) judgeBundle(in Input) {
	if in.Roots == nil {
		return
	}
	have := in.Set.Roots
	want := append(append([]*x509.Certificate(nil), in.Roots...), in.Federated...)
	v.BundleMissing = missingRoots(have, in.Roots)
	v.BundleDropped = missingRoots(want, have)
	fedMissing := missingRoots(have, in.Federated)
	switch {
	case v.BundleMissing > 0 && v.BundleDropped > 0:
		v.add(BundleStale, "ca.pem lacks %d of the CA's %d current root(s) and holds %d root(s) the CA no longer serves", v.BundleMissing, len(in.Roots), v.BundleDropped)
	case v.BundleMissing > 0:
		v.add(BundleStale, "ca.pem lacks %d of the CA's %d current root(s)", v.BundleMissing, len(in.Roots))
	case v.BundleDropped > 0:
		v.add(BundleStale, "ca.pem holds %d root(s) the CA no longer serves or vouches for", v.BundleDropped)
	case fedMissing > 0:
		v.add(BundleStale, "ca.pem lacks %d of the CA's %d federated root(s)", fedMissing, len(in.Federated))
	}
	v.BundleUseless = v.BundleMissing > 0 && v.BundleMissing == len(in.Roots)
}

// Schedule is the one answer to "when is this certificate due?": every
// command that renews, reports, records or alerts reads it from the
// verdict, and none computes a time of its own.
type Schedule struct {
	// RenewAfter is the renewal point: renew.fraction of the lifetime.
	RenewAfter time.Time
	// DueAt is when the certificate is to be renewed: the renewal point
	// plus a splay of up to renew.splay, fixed per certificate (derived
	// from its serial, so every run on the node agrees while a fleet
	// spreads out), and capped to half the time between the renewal point
	// and expiry so that a short-lived certificate is still renewed well
	// before it expires.
	DueAt time.Time
	// LastQuarter is when the last quarter of the certificate's life
	// begins: from then a renewed set the liveness rule held back (no
	// evidence either way) is published, since the alternative is certain
	// expiry.
	LastQuarter time.Time
	NotAfter    time.Time
}

// Due reports whether the certificate is due at now (false without one).
func (s Schedule) Due(now time.Time) bool { return !s.DueAt.IsZero() && !now.Before(s.DueAt) }

// InLastQuarter reports whether now is in the last quarter of the
// certificate's life.
func (s Schedule) InLastQuarter(now time.Time) bool {
	return !s.LastQuarter.IsZero() && !now.Before(s.LastQuarter)
}

func schedule(leaf *x509.Certificate, frac float64, maxSplay time.Duration) Schedule {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	s := Schedule{RenewAfter: leaf.NotBefore.Add(time.Duration(float64(life) * frac)), NotAfter: leaf.NotAfter,
		LastQuarter: leaf.NotAfter.Add(-life / 4)}
	s.DueAt = s.RenewAfter
	room := leaf.NotAfter.Sub(s.RenewAfter) / 2
	if maxSplay > room {
		maxSplay = room
	}
	if maxSplay > 0 {
		h := sha256.Sum256(leaf.Raw)
		f := float64(binary.BigEndian.Uint64(h[:8])>>11) / float64(1<<53)
		s.DueAt = s.RenewAfter.Add(time.Duration(f * float64(maxSplay)))
	}
	return s
}

func sortBySeverity(rs []Reason) {
	// Insertion sort, stable: a handful of reasons at most.
	for i := 1; i < len(rs); i++ {
		for j := i; j > 0 && rs[j].Action() > rs[j-1].Action(); j-- {
			rs[j], rs[j-1] = rs[j-1], rs[j]
		}
	}
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func missingRoots(have, want []*x509.Certificate) int {
	n := 0
	for _, r := range want {
		found := false
		for _, b := range have {
			if bytes.Equal(b.Raw, r.Raw) {
				found = true
				break
			}
		}
		if !found {
			n++
		}
	}
	return n
}

// ChainsTo verifies that chain[0] chains to one of roots, through the
// intermediates in chain, for client authentication, at now.
func ChainsTo(chain []*x509.Certificate, roots []*x509.Certificate, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("no certificate")
	}
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rp.AddCert(r)
	}
	for _, c := range chain[1:] {
		ip.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots: rp, Intermediates: ip, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return err
}
