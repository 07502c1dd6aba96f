package fleet

import (
	"math/rand/v2"
	"sort"
	"time"
)

// How the storm restarts a failed run, and how it measures a herd.
//
// provision.service has Restart=on-failure and RestartSec=30s, and systemd
// 252 (Debian bookworm) has no RestartSteps= and no jitter of its own: it
// arms the restart timer with sd_event_add_time(..., accuracy 0), which
// sd-event turns into its default accuracy of 250 ms. sd-event then wakes
// at the point of [due, due+250ms] that matches a per-boot perturbation
// (derived from the boot ID), so that every timer of that machine fires
// together. Across a fleet the perturbations differ, so the only spread
// systemd adds is a per-machine phase within 250 ms: nodes that failed
// within the same 100 ms come back within the same 350 ms. restartAt is
// that rule; each storm node draws its phase once, as a booted machine has
// one boot ID.
//
// A herd is measured where it lands: at the CA. Each storm node reaches the
// CA proxy by a hostname of its own (SNI), so the proxy knows which node
// opened each connection and when it accepted it; a restarted run "starts
// its network work" at the first connection its node opens after the run's
// process started. That holds whatever a run does before its network work
// (such as waiting a random delay of its own).

// SystemdAccuracy is sd-event's default timer accuracy (DEFAULT_ACCURACY_USEC).
const SystemdAccuracy = 250 * time.Millisecond

// restartAt is when systemd starts a unit again whose process exited at
// exit (on any clock) with RestartSec=restart, for a machine whose boot
// perturbation puts its wake-ups at phase (mod accuracy) on that clock.
// accuracy 0 is an exact timer.
func restartAt(exit, restart, accuracy, phase time.Duration) time.Duration {
	due := exit + restart
	if accuracy <= 0 {
		return due
	}
	d := (phase - due) % accuracy
	if d < 0 {
		d += accuracy
	}
	return due + d
}

// randomPhase draws a machine's phase within accuracy.
func randomPhase(accuracy time.Duration) time.Duration {
	if accuracy <= 0 {
		return 0
	}
	return rand.N(accuracy)
}

// densest returns the largest number of ts that fall within one window of
// length w ([t, t+w)), and the earliest t where it does. ts need not be
// sorted; it is not changed.
func densest(ts []time.Duration, w time.Duration) (n int, at time.Duration) {
	if w <= 0 {
		return 0, 0
	}
	s := append([]time.Duration(nil), ts...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := 0
	for j := range s {
		for s[j]-s[i] >= w {
			i++
		}
		if j-i+1 > n {
			n, at = j-i+1, s[i]
		}
	}
	return n, at
}

// Herd is how restarted runs came back.
type Herd struct {
	// Restarts is the number of restarted runs (a node's second start
	// and later); Seen is how many of them opened a connection to the CA.
	Restarts, Seen int
	// In100ms is the most restarted runs that started their network work
	// within one 100 ms window, At100ms where that window starts (since
	// the storm started); In1s the same within one second.
	In100ms, In1s int
	At100ms       time.Duration
	// WaitP50 and WaitMax are from a restarted run's process start to its
	// first connection: the delay a run adds before its network work.
	WaitP50, WaitMax time.Duration
	// Waited is how many restarted runs logged a restart-splay wait (took
	// themselves for a restart), SplayP50 and SplayMax the waits drawn.
	Waited             int
	SplayP50, SplayMax time.Duration
	// Starts is the network start of every seen restarted run.
	Starts []time.Duration
	// How far the measurement itself may bunch runs: LateMax is the most
	// the harness started a restarted run after systemd would have (its
	// timers wait for a CPU like everything else), AcceptLagMax the most
	// the CA proxy accepted one of those first connections after the
	// kernel saw it (not part of the start, which is the kernel's time).
	LateMax, AcceptLagMax time.Duration
}

// StartRate is the restarted runs' network starts per second, from the
// second of the first to the second of the last: the peak and the mean.
func (h Herd) StartRate() (peak, mean float64) {
	if len(h.Starts) == 0 {
		return 0, 0
	}
	lo, hi := h.Starts[0], h.Starts[0]
	for _, s := range h.Starts {
		lo, hi = min(lo, s), max(hi, s)
	}
	bins := make([]float64, int(hi/time.Second)-int(lo/time.Second)+1)
	for _, s := range h.Starts {
		bins[int(s/time.Second)-int(lo/time.Second)]++
	}
	return peakMean(bins, 0, len(bins))
}

// Share100ms is In100ms as a share of the restarted runs that were seen.
func (h Herd) Share100ms() float64 { return share(h.In100ms, h.Seen) }

// Share1s is In1s as a share of the restarted runs that were seen.
func (h Herd) Share1s() float64 { return share(h.In1s, h.Seen) }

func share(n, of int) float64 {
	if of == 0 {
		return 0
	}
	return float64(n) / float64(of)
}

// herdOf finds each restarted run's first connection. conns are the CA
// proxy's connections, At relative to the storm's start.
func herdOf(nodes []NodeRun, conns []Conn) Herd {
	byNode := map[string][]Conn{}
	for _, c := range conns {
		byNode[c.Node] = append(byNode[c.Node], c)
	}
	var h Herd
	var waits, splays []time.Duration
	for _, n := range nodes {
		cs := byNode[n.ID]
		sort.Slice(cs, func(i, j int) bool { return cs[i].At < cs[j].At })
		for k := 1; k < len(n.Runs); k++ {
			h.Restarts++
			run, next := n.Runs[k], time.Duration(1<<62)
			if run.Waited {
				h.Waited++
				splays = append(splays, run.Splay)
			}
			if k+1 < len(n.Runs) {
				next = n.Runs[k+1].Start
			}
			h.LateMax = max(h.LateMax, run.Start-run.Due)
			i := sort.Search(len(cs), func(i int) bool { return cs[i].At >= run.Start })
			if i == len(cs) || cs[i].At >= next {
				continue // this run never reached the CA
			}
			h.Seen++
			h.Starts = append(h.Starts, cs[i].At)
			h.AcceptLagMax = max(h.AcceptLagMax, cs[i].Accepted-cs[i].At)
			waits = append(waits, cs[i].At-run.Start)
		}
	}
	h.In100ms, h.At100ms = densest(h.Starts, 100*time.Millisecond)
	h.In1s, _ = densest(h.Starts, time.Second)
	h.WaitP50, h.WaitMax = medianMax(waits)
	h.SplayP50, h.SplayMax = medianMax(splays)
	return h
}

// medianMax is the median and the largest of d (zero when empty); d is
// sorted in place.
func medianMax(d []time.Duration) (time.Duration, time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[(len(d)-1)/2], d[len(d)-1]
}
