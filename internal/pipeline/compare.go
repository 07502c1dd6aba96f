package pipeline

import (
	"context"
	"fmt"
	"slices"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/report"
)

// The path a proof takes, in order: the node's own checks, the CA, then
// the exchange with the ingress and the API. A set whose proof fails later
// on it got further. The order is declared here, for the comparison alone,
// and is no list position: diag.Layers may gain or move layers without
// changing what is published. A failure at a layer off the path (a check
// that panicked: internal; the records: state) is no evidence about a set:
// it got nowhere on the path, and it is no rejection (outcome).
var proofPath = []diag.Layer{diag.Config, diag.Hosts, diag.Clock, diag.Credentials, diag.CA,
	diag.TCP, diag.TLSServer, diag.TLSClientAuth, diag.Route, diag.Identity, diag.TasksWait}

// reach is how far along proofPath a proof that failed at l got: its
// position, or -1 off the path.
func reach(l diag.Layer) int { return slices.Index(proofPath, l) }

// onPath reports whether l is on the path a proof takes.
func onPath(l diag.Layer) bool { return reach(l) >= 0 }

// pastClientAuth reports whether a proof that failed at l got through the
// ingress's client authentication: the new certificate was accepted there.
func pastClientAuth(l diag.Layer) bool { return reach(l) > reach(diag.TLSClientAuth) }

// outcome is what one proof showed about one set, as evidence for the
// liveness comparison: not the report's wording, but whether the set
// polled, where its proof failed, and whether that failure is a statement
// against the set.
type outcome struct {
	// tried: a proof ran. False when no time was left to prove the set:
	// no evidence at all.
	tried bool
	// polled: the real tasks/wait passed on every layer with this set.
	polled bool
	// layer is where the proof failed.
	layer diag.Layer
	// rejected: the failure is a statement against the set, one that
	// asking again does not change (a TLS alert, a certificate refused, a
	// 4xx, an answer that is not the API's, a check of the set itself).
	// Not rejected: it says nothing against the set (an exchange cut
	// without a word: EOF, reset, timeout, refused, closed after the
	// ClientHello; or a fault the peer says is passing: 5xx, 429).
	rejected bool
	// confirmed: a second attempt was rejected at the same layer. Only a
	// confirmed rejection of the installed set is evidence against it: one
	// the deadline left unconfirmed (it ended during the backoff, or cut
	// the next attempt) may be a flap, and counts as no evidence. A
	// rejection of the new set needs none: it only keeps it aside.
	confirmed bool
}

func (o outcome) String() string {
	switch {
	case !o.tried:
		return "not proven: no time was left (bootstrap.deadline)"
	case o.polled:
		return "polls"
	case o.rejected && o.confirmed:
		return "rejected at " + string(o.layer)
	case o.rejected:
		return "rejected once at " + string(o.layer) + ", unconfirmed when the deadline ended: no evidence"
	}
	return "fails at " + string(o.layer) + " without evidence against it"
}

// candidateOutcome reads the new set's failed proof. Every failed check
// counts against it, the ladder's diagnosis of the set (its chain, its
// key) as much as the exchange: it is published only when nothing speaks
// against it.
func candidateOutcome(ctx context.Context, rep *report.Report, env *observe.Env) outcome {
	if rep == nil {
		return outcome{}
	}
	o := outcome{tried: true, polled: rep.OK, layer: rep.FailedLayer, rejected: !rep.OK && !rep.Transient && onPath(rep.FailedLayer)}
	if o.rejected && slices.Contains(diag.ProbeLayers, rep.FailedLayer) && env != nil && diag.NoEvidence(env.Probed()) {
		o.rejected = false
	}
	o.confirmed = o.rejected // it only keeps the new set aside: no second attempt needed
	return o
}

// installedOutcome reads the installed set's proof. What counts is what
// the ingress and the API said of it, the real exchange, whenever one was
// made: a stale chain (other-ca) the ingress still accepts polls, and a
// new set that ingress rejects must not replace it. Only when no exchange
// was made (a check before it failed: hosts, clock) is the report's
// failure the outcome.
func installedOutcome(ctx context.Context, rep *report.Report, env *observe.Env) outcome {
	if rep == nil {
		return outcome{}
	}
	o := outcome{tried: true, polled: rep.OK, layer: rep.FailedLayer, rejected: !rep.OK && !rep.Transient && onPath(rep.FailedLayer)}
	if rep.OK || env == nil || env.Probed() == nil {
		return o
	}
	f := env.Proof(ctx).Finding
	if f == nil {
		return outcome{tried: true, polled: true}
	}
	return outcome{tried: true, layer: f.Layer, rejected: !f.Transient && !diag.NoEvidence(env.Probed()) && onPath(f.Layer)}
}

// ruling is what the comparison decides for a candidate whose proof failed.
type ruling int

const (
	// keepAside: not published while the installed set is, or may be,
	// accepted; proven again by the next run.
	keepAside ruling = iota
	// publishNow: nothing speaks against the new set where the installed
	// one does better.
	publishNow
	// lastQuarter: no evidence either way; published once the installed
	// certificate is in the last quarter of its life, since the
	// alternative is certain expiry.
	lastQuarter
)

func (r ruling) String() string { return [...]string{"keep-aside", "publish", "last-quarter"}[r] }

// compare is the liveness rule between the new set's failed proof (c) and
// the installed set's (i), on evidence only:
//   - the installed set polls: the new set is kept aside (publish-safety);
//   - the new set got through the ingress's client authentication and its
//     failure says nothing against it (5xx, a timeout, a cut answer): it is
//     published now, whatever the installed set showed short of polling;
//   - the installed set gave no evidence (cut, a passing fault, or no time
//     to prove it): a new set rejected anywhere is kept aside (the
//     installed set may well be accepted: a flap is no evidence); one
//     without evidence against it waits for the last quarter;
//   - a rejection of the installed set no second attempt confirmed is no
//     evidence, ruled as the case above;
//   - the installed set was rejected (confirmed): the new set is published
//     when it gets further, kept aside when it is rejected lower, published
//     now when both are rejected alike past client authentication (a fault
//     they share), and waits for the last quarter otherwise (rejected
//     alike at or below it, or the new set's lower failure says nothing).
//
// So a new set is published only when the installed one does not poll,
// and never when it is rejected while the installed set may be accepted:
// where the installed set was rejected, by the same layer or a lower one.
func compare(c, i outcome) (ruling, string) {
	cl, il := reach(c.layer), reach(i.layer)
	against := i.rejected && i.confirmed // evidence against the installed set
	switch {
	case i.polled:
		return keepAside, "the installed set polls, the new one does not"
	case !c.rejected && pastClientAuth(c.layer):
		if i.tried && c.layer == i.layer {
			return publishNow, sharedFault(c.layer)
		}
		return publishNow, fmt.Sprintf("the new set got through the ingress's client authentication and fails at %s with nothing against it (the installed set %s)", c.layer, i)
	case !against && c.rejected:
		return keepAside, fmt.Sprintf("the new set is rejected at %s, and the installed set gave no evidence against itself (%s), so it may still be accepted", c.layer, i)
	case !i.tried:
		return lastQuarter, fmt.Sprintf("the new set fails at %s with nothing against it, and no time was left to prove the installed set (no evidence either way)", c.layer)
	case !against && c.layer == i.layer:
		return lastQuarter, bothFail(c.layer)
	case !against:
		return lastQuarter, fmt.Sprintf("both sets fail with nothing against either, the new set at %s, the installed set at %s (no evidence either way)", c.layer, i.layer)
	case cl > il:
		return publishNow, fmt.Sprintf("the new set gets further (fails at %s) than the installed one (rejected at %s)", c.layer, i.layer)
	case cl < il && c.rejected:
		return keepAside, fmt.Sprintf("the new set fails at %s, below the installed set's failure at %s", c.layer, i.layer)
	case cl < il:
		return lastQuarter, fmt.Sprintf("the new set fails at %s without evidence against it, below the installed set's failure at %s (no evidence either way)", c.layer, i.layer)
	case pastClientAuth(c.layer):
		return publishNow, sharedFault(c.layer)
	}
	return lastQuarter, bothFail(c.layer)
}

func sharedFault(l diag.Layer) string {
	return fmt.Sprintf("a fault the installed set shares (both fail at %s, past the ingress's client authentication): it says nothing against the new certificate", l)
}

func bothFail(l diag.Layer) string {
	return fmt.Sprintf("both sets fail at %s (no evidence either way)", l)
}
