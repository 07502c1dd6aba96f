package pipeline

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/diag"
)

// ladderLayers are the layers a proof can fail at: the path, and the
// layers off it a proof can still end at (a check that panicked, a
// record).
var ladderLayers = []diag.Layer{diag.Config, diag.Hosts, diag.Clock, diag.Credentials, diag.CA,
	diag.TCP, diag.TLSServer, diag.TLSClientAuth, diag.Route, diag.Identity, diag.TasksWait, diag.Internal, diag.State}

// allOutcomes is every outcome a proof can have: not proven, polled, and a
// failure at each layer, not rejected, rejected once (unconfirmed: the
// deadline ended before a second attempt), or rejected and confirmed (off
// the path, never rejected: candidateOutcome and installedOutcome make it
// so).
func allOutcomes() []outcome {
	out := []outcome{{}, {tried: true, polled: true}}
	for _, l := range ladderLayers {
		out = append(out, outcome{tried: true, layer: l})
		if onPath(l) {
			out = append(out, outcome{tried: true, layer: l, rejected: true}, outcome{tried: true, layer: l, rejected: true, confirmed: true})
		}
	}
	return out
}

// TestProofPath: every layer diag knows is on the path or deliberately off
// it, and the path is the order a request crosses the layers.
func TestProofPath(t *testing.T) {
	off := []diag.Layer{diag.Enroll, diag.State, diag.Hook, diag.Internal}
	for _, l := range diag.Layers {
		if onPath(l) == slices.Contains(off, l) {
			t.Errorf("layer %s: on the path %v, listed off it %v", l, onPath(l), slices.Contains(off, l))
		}
	}
	for i, l := range diag.ProbeLayers[1:] {
		if reach(l) != reach(diag.ProbeLayers[i])+1 {
			t.Errorf("the path does not cross %s right after %s", l, diag.ProbeLayers[i])
		}
	}
	if !pastClientAuth(diag.Route) || pastClientAuth(diag.TLSClientAuth) || pastClientAuth(diag.Internal) {
		t.Error("pastClientAuth: route is past client authentication; tls-client-auth and internal are not")
	}
}

// TestCompareIgnoresLayerOrder: the rulings do not depend on the order of
// diag.Layers (a layer added or moved there changes nothing published).
func TestCompareIgnoresLayerOrder(t *testing.T) {
	type key struct{ c, i outcome }
	before := map[key]ruling{}
	for _, c := range allOutcomes() {
		for _, i := range allOutcomes() {
			before[key{c, i}], _ = compare(c, i)
		}
	}
	saved := diag.Layers
	defer func() { diag.Layers = saved }()
	diag.Layers = slices.Clone(saved)
	slices.Reverse(diag.Layers)
	changed := 0
	for k, want := range before {
		if got, _ := compare(k.c, k.i); got != want {
			changed++
			t.Errorf("new %s, installed %s: %s with diag.Layers reversed, %s before", k.c, k.i, got, want)
		}
	}
	if len(before) == 0 {
		t.Fatal("no pairs compared")
	}
	t.Logf("compare: %d pairs, %d changed with diag.Layers reversed", len(before), changed)
}

// failedAt is a failure at l; a rejection is a confirmed one.
func failedAt(l diag.Layer, rejected bool) outcome {
	return outcome{tried: true, layer: l, rejected: rejected, confirmed: rejected}
}

// rejectedOnce is a rejection at l that no second attempt confirmed.
func rejectedOnce(l diag.Layer) outcome {
	return outcome{tried: true, layer: l, rejected: true}
}

// TestCompareScenarios: the liveness comparison on the cases issue 21 and
// issue 29 name, each with the ruling and why.
func TestCompareScenarios(t *testing.T) {
	const cut, rejected = false, true
	tests := []struct {
		name       string
		cand, inst outcome
		want       ruling
		why        string
	}{
		{"API down for both (5xx, a long outage)", failedAt(diag.TasksWait, cut), failedAt(diag.TasksWait, cut), publishNow, "a fault the installed set shares"},
		{"API down, installed cut by a flap", failedAt(diag.TasksWait, cut), failedAt(diag.TLSServer, cut), publishNow, "got through the ingress's client authentication"},
		{"API down, no time left for the installed set", failedAt(diag.TasksWait, cut), outcome{}, publishNow, "got through the ingress's client authentication"},
		{"API down for the new set, the installed one polls", failedAt(diag.TasksWait, cut), outcome{tried: true, polled: true}, keepAside, "the installed set polls"},
		{"the API rejects both (401)", failedAt(diag.Identity, rejected), failedAt(diag.Identity, rejected), publishNow, "a fault the installed set shares"},
		{"the API rejects the new set, the installed one cut", failedAt(diag.Identity, rejected), failedAt(diag.TCP, cut), keepAside, "may still be accepted"},
		{"ingress rejects the new root, installed polls", failedAt(diag.TLSClientAuth, rejected), outcome{tried: true, polled: true}, keepAside, "the installed set polls"},
		{"ingress rejects the new root, installed reset after ClientHello", failedAt(diag.TLSClientAuth, rejected), failedAt(diag.TLSServer, cut), keepAside, "may still be accepted"},
		{"ingress rejects the new root, no time for the installed set", failedAt(diag.TLSClientAuth, rejected), outcome{}, keepAside, "may still be accepted"},
		{"ingress rejects the new root, installed rejected lower (confirmed)", failedAt(diag.TLSClientAuth, rejected), failedAt(diag.TLSServer, rejected), publishNow, "gets further"},
		{"ingress rejects the new root, installed rejected once lower, then the deadline", failedAt(diag.TLSClientAuth, rejected), rejectedOnce(diag.TLSServer), keepAside, "may still be accepted"},
		{"API down, installed rejected once lower, then the deadline", failedAt(diag.TasksWait, cut), rejectedOnce(diag.TLSServer), publishNow, "got through the ingress's client authentication"},
		{"ingress down for the new set, installed rejected once, then the deadline", failedAt(diag.TCP, cut), rejectedOnce(diag.Hosts), lastQuarter, "no evidence either way"},
		{"ingress rejects both alike", failedAt(diag.TLSClientAuth, rejected), failedAt(diag.TLSClientAuth, rejected), lastQuarter, "no evidence either way"},
		{"ingress rejects the stale installed set, new set API 503", failedAt(diag.TasksWait, cut), failedAt(diag.TLSClientAuth, rejected), publishNow, "got through"},
		{"ingress down for both", failedAt(diag.TCP, cut), failedAt(diag.TCP, cut), lastQuarter, "no evidence either way"},
		{"handshake never completes, no time for the installed set", failedAt(diag.TLSServer, cut), outcome{}, lastQuarter, "no time was left to prove the installed set"},
		{"new set cut, installed rejected higher", failedAt(diag.TCP, cut), failedAt(diag.Route, rejected), lastQuarter, "no evidence either way"},
		{"new set cut past the installed set's rejection", failedAt(diag.TLSClientAuth, cut), failedAt(diag.TLSServer, rejected), publishNow, "gets further"},
		{"new set rejected below the installed set's failure", failedAt(diag.TLSServer, rejected), failedAt(diag.Route, rejected), keepAside, "below the installed set's failure"},
		{"the clock is off for both", failedAt(diag.Clock, rejected), failedAt(diag.Clock, rejected), lastQuarter, "no evidence either way"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := compare(tt.cand, tt.inst)
			if got != tt.want || !strings.Contains(why, tt.why) {
				t.Fatalf("compare(new %s, installed %s) = %s (%s), want %s with %q", tt.cand, tt.inst, got, why, tt.want, tt.why)
			}
		})
	}
}

// TestCompareEveryPair checks the rule's promises on every pair of
// outcomes (the new set's failed proof against every outcome of the
// installed set's):
//   - publish-safety: a new set is never published (now or in the last
//     quarter) while the installed set polls, nor when it is rejected
//     where the installed set gave no evidence against itself or was
//     rejected only higher up;
//   - evidence: a new set is published at once only when it got through
//     the ingress's client authentication without a rejection, or the
//     installed set's confirmed rejection is at or below its own failure;
//     a rejection of the installed set no second attempt confirmed is no
//     evidence: the ruling is the one for a failure without evidence;
//   - liveness: a new set with nothing against it is always published,
//     at once or in the last quarter, unless the installed set polls.
func TestCompareEveryPair(t *testing.T) {
	pairs := 0
	for _, c := range allOutcomes() {
		if !c.tried || c.polled {
			continue // decide compares only a new set whose proof failed
		}
		for _, i := range allOutcomes() {
			pairs++
			got, why := compare(c, i)
			cl, il := reach(c.layer), reach(i.layer)
			name := fmt.Sprintf("new %s, installed %s: %s (%s)", c, i, got, why)
			if why == "" {
				t.Errorf("%s: no reason", name)
			}
			if i.polled && got != keepAside {
				t.Errorf("%s: published while the installed set polls", name)
			}
			confirmed := i.rejected && i.confirmed
			if c.rejected && (!i.tried || !confirmed || cl < il) && got != keepAside {
				t.Errorf("%s: a rejected new set published where the installed set may be accepted", name)
			}
			if i.rejected && !i.confirmed {
				if same, _ := compare(c, outcome{tried: true, layer: i.layer}); got != same {
					t.Errorf("%s: an unconfirmed rejection counted as evidence (without it: %s)", name, same)
				}
			}
			passedAuth := !c.rejected && pastClientAuth(c.layer)
			further := confirmed && (cl > il || (cl == il && pastClientAuth(c.layer)))
			if got == publishNow && !passedAuth && !further {
				t.Errorf("%s: published at once without evidence for it", name)
			}
			if !c.rejected && !i.polled && got == keepAside {
				t.Errorf("%s: a new set with nothing against it is never published", name)
			}
			if passedAuth && !i.polled && got != publishNow {
				t.Errorf("%s: a new set past client authentication with nothing against it waits", name)
			}
			if !onPath(c.layer) && got == publishNow {
				t.Errorf("%s: a new set that got nowhere on the path (a check that panicked) published at once", name)
			}
			if confirmed && cl > il && got != publishNow {
				t.Errorf("%s: the new set gets further than a confirmed rejection but waits", name)
			}
		}
	}
	n := len(allOutcomes())
	if want := (n - 2) * n; pairs != want {
		t.Fatalf("checked %d pairs, want %d", pairs, want)
	}
	t.Logf("compare: %d pairs of outcomes checked", pairs)
}
