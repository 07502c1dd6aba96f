package fleet

import (
	"testing"
	"time"
)

const ms = time.Millisecond

func TestRestartAt(t *testing.T) {
	for _, tc := range []struct {
		name                           string
		exit, restart, accuracy, phase time.Duration
		want                           time.Duration
	}{
		{"exact timer", 1000 * ms, 30 * time.Second, 0, 100 * ms, 31000 * ms},
		{"negative accuracy is exact", 1000 * ms, 30 * time.Second, -1, 100 * ms, 31000 * ms},
		{"due on the phase", 1000 * ms, 2 * time.Second, 250 * ms, 0, 3000 * ms},
		{"phase later in the window", 1000 * ms, 2 * time.Second, 250 * ms, 100 * ms, 3100 * ms},
		{"phase earlier: the next window", 1010 * ms, 2 * time.Second, 250 * ms, 0, 3250 * ms},
		{"phase beyond accuracy wraps", 1000 * ms, 2 * time.Second, 250 * ms, 350 * ms, 3100 * ms},
		{"negative phase wraps", 1000 * ms, 2 * time.Second, 250 * ms, -150 * ms, 3100 * ms},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := restartAt(tc.exit, tc.restart, tc.accuracy, tc.phase)
			if got != tc.want {
				t.Errorf("restartAt = %s, want %s", got, tc.want)
			}
			if tc.accuracy > 0 && (got < tc.exit+tc.restart || got >= tc.exit+tc.restart+tc.accuracy) {
				t.Errorf("restartAt = %s outside [due, due+accuracy)", got)
			}
		})
	}
}

// Two nodes that fail together come back within the accuracy of each
// other, and one node's restarts keep its phase.
func TestRestartAtKeepsTheNodesPhase(t *testing.T) {
	phase := randomPhase(SystemdAccuracy)
	if phase < 0 || phase >= SystemdAccuracy {
		t.Fatalf("randomPhase = %s, want [0, %s)", phase, SystemdAccuracy)
	}
	a := restartAt(1234*ms, 30*time.Second, SystemdAccuracy, phase)
	b := restartAt(5678*ms, 30*time.Second, SystemdAccuracy, phase)
	if (a-phase)%SystemdAccuracy != 0 || (b-phase)%SystemdAccuracy != 0 {
		t.Errorf("restarts at %s and %s are not at the node's phase %s", a, b, phase)
	}
	if randomPhase(0) != 0 {
		t.Error("randomPhase(0) != 0")
	}
}

func TestDensest(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ts     []time.Duration
		w      time.Duration
		n      int
		at     time.Duration
		sorted bool
	}{
		{"none", nil, 100 * ms, 0, 0, true},
		{"one", []time.Duration{5 * ms}, 100 * ms, 1, 5 * ms, true},
		{"a window is half-open", []time.Duration{0, 100 * ms, 200 * ms}, 100 * ms, 1, 0, true},
		{"just inside", []time.Duration{0, 99 * ms, 198 * ms}, 100 * ms, 2, 0, true},
		{"unsorted, the densest later", []time.Duration{3000 * ms, 10 * ms, 3050 * ms, 500 * ms, 3099 * ms}, 100 * ms, 3, 3000 * ms, false},
		{"ties: the earliest", []time.Duration{0, 10 * ms, 1000 * ms, 1010 * ms}, 100 * ms, 2, 0, true},
		{"equal times", []time.Duration{7 * ms, 7 * ms, 7 * ms}, 100 * ms, 3, 7 * ms, true},
		{"no window", []time.Duration{1, 2}, 0, 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]time.Duration(nil), tc.ts...)
			n, at := densest(tc.ts, tc.w)
			if n != tc.n || at != tc.at {
				t.Errorf("densest = %d at %s, want %d at %s", n, at, tc.n, tc.at)
			}
			for i := range in {
				if in[i] != tc.ts[i] {
					t.Fatal("densest changed its input")
				}
			}
		})
	}
}

func TestHerdOf(t *testing.T) {
	nodes := []NodeRun{
		// Restarted once; its first connection after the restart is at 2010.
		{ID: "a", Runs: []Run{{Start: 0}, {Due: 2000 * ms, Start: 2005 * ms}}},
		// Restarted twice; the second restart never reached the CA.
		{ID: "b", Runs: []Run{{Start: 0}, {Due: 2020 * ms, Start: 2030 * ms}, {Due: 5000 * ms, Start: 5100 * ms}}},
		// Never restarted: not part of the herd.
		{ID: "c", Runs: []Run{{Start: 0}}},
		// Restarted, its restart connects 900 ms after its start.
		{ID: "d", Runs: []Run{{Start: 0}, {Due: 2000 * ms, Start: 2000 * ms}}},
	}
	conns := []Conn{
		{At: 10 * ms, Accepted: 12 * ms, Node: "a"},
		{At: 2010 * ms, Accepted: 2060 * ms, Node: "a"},
		{At: 2500 * ms, Accepted: 2500 * ms, Node: "a"},
		{At: 20 * ms, Accepted: 20 * ms, Node: "b"},
		{At: 2040 * ms, Accepted: 2041 * ms, Node: "b"},
		{At: 30 * ms, Accepted: 30 * ms, Node: "c"},
		{At: 2900 * ms, Accepted: 2900 * ms, Node: "d"},
		{At: 2050 * ms, Accepted: 2050 * ms, Node: "unknown"},
	}
	h := herdOf(nodes, conns)
	if h.Restarts != 4 || h.Seen != 3 {
		t.Errorf("restarts %d seen %d, want 4 and 3", h.Restarts, h.Seen)
	}
	if h.In100ms != 2 || h.At100ms != 2010*ms {
		t.Errorf("most within 100 ms: %d from %s, want 2 from 2.01s", h.In100ms, h.At100ms)
	}
	if h.In1s != 3 {
		t.Errorf("most within 1 s: %d, want 3", h.In1s)
	}
	if got := h.Share100ms(); got < 0.66 || got > 0.67 {
		t.Errorf("Share100ms = %.3f, want 2/3", got)
	}
	if h.WaitP50 != 10*ms || h.WaitMax != 900*ms {
		t.Errorf("waits p50 %s max %s, want 10ms and 900ms", h.WaitP50, h.WaitMax)
	}
	if h.LateMax != 100*ms || h.AcceptLagMax != 50*ms {
		t.Errorf("late %s, accept lag %s, want 100ms and 50ms", h.LateMax, h.AcceptLagMax)
	}
	if (Herd{}).Share100ms() != 0 || (Herd{}).Share1s() != 0 {
		t.Error("an empty herd has a share")
	}
}
