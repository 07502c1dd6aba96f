package fleet

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// Summary is a storm's verdict and numbers.
type Summary struct {
	Nodes, Done             int
	Signs201                int // signs step-ca answered 201
	SignsAtCA               int // sign requests that reached step-ca
	SignsAtFront            int // sign requests at the proxy, faulted ones included
	NodesSignedTwice        []string
	NodesNotDone            []string
	TokensTwiceAtCA         int // a jti that reached step-ca more than once
	TokensTwiceAtFront      int
	Restarts                int
	P50, P95, P99, Max      time.Duration
	Requests, Faulted       int
	PeakRate, MeanRate      float64 // CA requests/s at the front, whole storm
	RecPeak, RecMean        float64 // from the fault's end to the last done
	FaultEnd                time.Duration
	Duration                time.Duration
	ExitCodes               map[int]int
	SignsPerNode            float64
	DoneSeries, ReqSeries   []float64 // per second
	FwdSeries, FaultSeries  []float64
	SignSeries              []float64
	StartSpread, StormLabel string
	Why                     map[string]int // failed runs by failed_check and summary
	// TimeToDone is from the storm's start to the last node done (0
	// unless every node is done); CPU what every part used meanwhile, and
	// FloorRatio TimeToDone over CPU.Floor().
	TimeToDone time.Duration
	CPU        CPU
	FloorRatio float64
	// Herd is how the restarted runs came back; RestartSeries counts
	// their network starts per 100 ms.
	Herd          Herd
	RestartSeries []float64
	// ConnSeries counts the TLS connections nodes opened to the CA per
	// second, by the kernel's time (Conn.At): the load the fleet offered,
	// apart from when the storm process (the CA proxy, step-ca) found a
	// CPU to handle it, which is when ReqSeries counts a request. ConnPeak
	// and ConnMean are over PeakToMean's window.
	ConnSeries         []float64
	ConnPeak, ConnMean float64
}

// Summarize counts what the storm did.
func (r *StormResult) Summarize() Summary {
	s := Summary{Nodes: len(r.Nodes), ExitCodes: map[int]int{}, Why: map[string]int{}, Duration: r.Duration,
		StormLabel: r.Opts.Name, StartSpread: r.Opts.Spread.String(), FaultEnd: r.FaultEnd, CPU: r.CPU}
	secs := int(r.Duration/time.Second) + 1
	s.countNodes(r.Nodes, secs)
	issued := s.countEvents(r.Events, secs)
	for _, n := range r.Nodes {
		if issued[n.ID] == 0 && n.Done {
			s.NodesSignedTwice = append(s.NodesSignedTwice, n.ID+" (done without a sign)")
		}
	}
	sort.Strings(s.NodesSignedTwice)
	s.PeakRate, s.MeanRate = peakMean(s.ReqSeries, 0, secs)
	last := 0
	for _, n := range r.Nodes {
		last = max(last, int(n.DoneAt/time.Second))
	}
	if r.FaultEnd > 0 {
		s.RecPeak, s.RecMean = peakMean(s.ReqSeries, int(r.FaultEnd/time.Second), last+1)
	}
	if s.Done == s.Nodes && s.Nodes > 0 {
		for _, n := range r.Nodes {
			s.TimeToDone = max(s.TimeToDone, n.DoneAt)
		}
		if f := r.CPU.Floor(); f > 0 {
			s.FloorRatio = float64(s.TimeToDone) / float64(f)
		}
	}
	s.countConns(r.Conns, secs, last)
	s.Herd = herdOf(r.Nodes, r.Conns)
	s.RestartSeries = make([]float64, int(r.Duration/(100*time.Millisecond))+1)
	for _, at := range s.Herd.Starts {
		s.RestartSeries[min(len(s.RestartSeries)-1, max(0, int(at/(100*time.Millisecond))))]++
	}
	return s
}

// countConns is ConnSeries, and its peak and mean over the window
// PeakToMean judges (the fault's end, or the start, to the last done).
func (s *Summary) countConns(conns []Conn, secs, last int) {
	s.ConnSeries = make([]float64, secs)
	for _, c := range conns {
		s.ConnSeries[min(secs-1, max(0, int(c.At/time.Second)))]++
	}
	from, to := 0, secs
	if s.FaultEnd > 0 {
		from, to = int(s.FaultEnd/time.Second), last+1
	}
	s.ConnPeak, s.ConnMean = peakMean(s.ConnSeries, from, to)
}

// countNodes counts runs, exit codes, reasons and times to done.
func (s *Summary) countNodes(nodes []NodeRun, secs int) {
	var times []time.Duration
	s.DoneSeries = make([]float64, secs)
	for _, n := range nodes {
		s.Restarts += max(0, n.Starts-1)
		for _, r := range n.Runs {
			s.ExitCodes[r.Code]++
			if r.Code == 0 {
				continue
			}
			w := r.Why
			if len(w) > 160 {
				w = w[:160] + "..."
			}
			s.Why[w]++
		}
		if !n.Done {
			s.NodesNotDone = append(s.NodesNotDone, n.ID)
			continue
		}
		s.Done++
		times = append(times, n.ToDone)
		for k := int(n.DoneAt / time.Second); k < secs; k++ {
			s.DoneSeries[k]++
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	pct := func(p float64) time.Duration {
		if len(times) == 0 {
			return 0
		}
		return times[min(len(times)-1, int(math.Ceil(p*float64(len(times))))-1)]
	}
	s.P50, s.P95, s.P99 = pct(0.50), pct(0.95), pct(0.99)
	if len(times) > 0 {
		s.Max = times[len(times)-1]
	}
}

// countEvents counts the requests at the CA proxy by second, the signs and
// the tokens, and returns the certificates issued per node (the token's
// subject).
func (s *Summary) countEvents(events []Event, secs int) map[string]int {
	issued := map[string]int{}
	jtiCA, jtiFront := map[string]int{}, map[string]int{}
	s.ReqSeries = make([]float64, secs)
	s.FwdSeries = make([]float64, secs)
	s.FaultSeries = make([]float64, secs)
	s.SignSeries = make([]float64, secs)
	for _, e := range events {
		k := min(secs-1, max(0, int(e.At/time.Second)))
		s.Requests++
		s.ReqSeries[k]++
		if e.Faulted {
			s.Faulted++
			s.FaultSeries[k]++
		} else {
			s.FwdSeries[k]++
		}
		if !e.Sign {
			continue
		}
		s.SignsAtFront++
		jtiFront[e.TokenID]++
		if e.Forwarded {
			s.SignsAtCA++
			s.SignSeries[k]++
			jtiCA[e.TokenID]++
			if e.Status == 201 {
				s.Signs201++
				issued[e.Subject]++
			}
		}
	}
	for id, c := range issued {
		if c > 1 {
			s.NodesSignedTwice = append(s.NodesSignedTwice, id)
		}
	}
	s.TokensTwiceAtCA, s.TokensTwiceAtFront = countOver1(jtiCA), countOver1(jtiFront)
	if s.Nodes > 0 {
		s.SignsPerNode = float64(s.Signs201) / float64(s.Nodes)
	}
	return issued
}

func countOver1(m map[string]int) int {
	n := 0
	for _, c := range m {
		if c > 1 {
			n++
		}
	}
	return n
}

func peakMean(v []float64, from, to int) (float64, float64) {
	to = min(to, len(v))
	if to <= from {
		return 0, 0
	}
	var peak, sum float64
	for _, x := range v[from:to] {
		peak = max(peak, x)
		sum += x
	}
	return peak, sum / float64(to-from)
}

// OK says whether the storm met the bar: every node done, exactly one
// issued certificate per node, no token reaching step-ca twice.
func (s Summary) OK() bool {
	return s.Done == s.Nodes && len(s.NodesSignedTwice) == 0 && s.Signs201 == s.Nodes && s.TokensTwiceAtCA == 0
}

// PeakToMean is the CA request rate's peak over its mean, per second, from
// the fault's end to the last node done, or over the whole storm when there
// was no fault; window says which. ok is false when there is no such
// window (the fault outlasted the last node done) or no request in it.
func (s Summary) PeakToMean() (ratio float64, window string, ok bool) {
	if s.FaultEnd > 0 {
		window = "from the fault's end to the last node done"
		if s.RecMean == 0 {
			return 0, window, false
		}
		return s.RecPeak / s.RecMean, window, true
	}
	window = "the whole storm, no fault"
	if s.MeanRate == 0 {
		return 0, window, false
	}
	return s.PeakRate / s.MeanRate, window, true
}

// peakToMeanText is PeakToMean for a report: "n/a" when there is none.
func (s Summary) peakToMeanText() string {
	ptm, window, ok := s.PeakToMean()
	if !ok {
		return "n/a (" + window + ": no requests, or the fault lasted until then)"
	}
	return fmt.Sprintf("%.1f (%s)", ptm, window)
}

// String is the storm's report, as docs/performance.md records it.
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "storm %s: %d nodes started within %s, all finished in %s\n", s.StormLabel, s.Nodes, s.StartSpread, s.Duration.Round(100*time.Millisecond))
	fmt.Fprintf(&b, "  done: %d/%d (%.1f%%); restarts (Restart=on-failure): %d; exit codes of all runs: %v\n", s.Done, s.Nodes, 100*float64(s.Done)/float64(max(1, s.Nodes)), s.Restarts, s.ExitCodes)
	fmt.Fprintf(&b, "  time to done: p50 %s  p95 %s  p99 %s  max %s\n", s.P50.Round(time.Millisecond), s.P95.Round(time.Millisecond), s.P99.Round(time.Millisecond), s.Max.Round(time.Millisecond))
	fmt.Fprintf(&b, "  CA signs: %d issued (%.2f per node); sign requests at the CA %d, at the proxy %d; nodes signed twice: %d; tokens reaching the CA twice: %d (presented at the proxy twice: %d)\n",
		s.Signs201, s.SignsPerNode, s.SignsAtCA, s.SignsAtFront, len(s.NodesSignedTwice), s.TokensTwiceAtCA, s.TokensTwiceAtFront)
	fmt.Fprintf(&b, "  CA requests: %d (%d answered by the fault proxy); rate peak %.0f/s, mean %.1f/s over the storm", s.Requests, s.Faulted, s.PeakRate, s.MeanRate)
	if s.RecMean > 0 {
		fmt.Fprintf(&b, "; recovery (the fault's end to the last done): peak %.0f/s, mean %.1f/s", s.RecPeak, s.RecMean)
	}
	b.WriteString("\n  CA requests/s by second: ")
	for i, v := range s.ReqSeries {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%.0f", v)
	}
	b.WriteString("\n")
	s.writeSpeed(&b)
	s.writeHerd(&b)
	s.writeWhy(&b)
	return b.String()
}

// writeSpeed is the floor ratio next to the peak-to-mean, and where the
// CPU went.
func (s Summary) writeSpeed(b *strings.Builder) {
	c := s.CPU
	if s.FloorRatio > 0 {
		fmt.Fprintf(b, "  speed: time to done %s = %.2fx the CPU floor (%s); CA request rate peak-to-mean %s\n",
			s.TimeToDone.Round(100*time.Millisecond), s.FloorRatio, c.Floor().Round(100*time.Millisecond), s.peakToMeanText())
	} else {
		fmt.Fprintf(b, "  speed: no floor ratio (not every node done, or no CPU measured); CA request rate peak-to-mean %s\n", s.peakToMeanText())
	}
	if s.ConnMean > 0 {
		fmt.Fprintf(b, "  offered load: CA connections opened per second by the kernel's time, same window: peak %.0f/s, mean %.1f/s, peak-to-mean %.1f\n",
			s.ConnPeak, s.ConnMean, s.ConnPeak/s.ConnMean)
	}
	fmt.Fprintf(b, "  CPU: nodes %.1fs (%.1f ms per node), storm process (step-ca, CA proxy, node API, harness) %.1fs, nginx %.1fs",
		c.Nodes.Seconds(), c.Nodes.Seconds()*1000/float64(max(1, s.Nodes)), c.Storm.Seconds(), c.Ingress.Seconds())
	if c.DB > 0 {
		fmt.Fprintf(b, ", PostgreSQL %.1fs", c.DB.Seconds())
	}
	fmt.Fprintf(b, "; total %.1fs on %d cores: floor %.1fs\n", c.Total().Seconds(), c.Cores, c.Floor().Seconds())
	if len(c.Missing) > 0 {
		fmt.Fprintf(b, "  CPU NOT MEASURED (counted as 0): %s\n", strings.Join(c.Missing, "; "))
	}
	fmt.Fprintf(b, "  machine meanwhile: %.1f of %.1f core-seconds busy (this storm %.1f, other work %.1f); load average %s at the start, %s at the end\n",
		c.MachineBusy.Seconds(), c.MachineTotal.Seconds(), c.Total().Seconds(), (c.MachineBusy - c.Total()).Seconds(), c.LoadStart, c.LoadEnd)
}

// writeHerd is how the restarted runs came back.
func (s Summary) writeHerd(b *strings.Builder) {
	h := s.Herd
	if h.Restarts == 0 {
		b.WriteString("  restart herd: no restarted runs\n")
		return
	}
	fmt.Fprintf(b, "  restart herd: %d restarted runs, %d reached the CA; most starting their network work within one 100 ms: %d (%.1f%%) from +%s; within one second: %d (%.1f%%); process start to first CA connection: p50 %s, max %s\n",
		h.Restarts, h.Seen, h.In100ms, 100*h.Share100ms(), h.At100ms.Round(time.Millisecond), h.In1s, 100*h.Share1s(), h.WaitP50.Round(time.Millisecond), h.WaitMax.Round(time.Millisecond))
	if pk, mean := h.StartRate(); mean > 0 {
		fmt.Fprintf(b, "  restarted runs starting their network work per second, from the first to the last: peak %.0f, mean %.1f, peak-to-mean %.1f\n", pk, mean, pk/mean)
	}
	fmt.Fprintf(b, "  restart splay: %d of %d restarted runs took themselves for a restart and waited (bootstrap.restart_splay): p50 %s, max %s\n",
		h.Waited, h.Restarts, h.SplayP50.Round(time.Millisecond), h.SplayMax.Round(time.Millisecond))
	fmt.Fprintf(b, "  (measurement: the harness started restarts up to %s after systemd would have; the proxy accepted first connections up to %s after the kernel saw them)\n",
		h.LateMax.Round(time.Millisecond), h.AcceptLagMax.Round(time.Millisecond))
}

// writeWhy lists the failed runs by reason, and the nodes that failed the bar.
func (s Summary) writeWhy(b *strings.Builder) {
	type kv struct {
		k string
		v int
	}
	var whys []kv
	for k, v := range s.Why {
		whys = append(whys, kv{k, v})
	}
	sort.Slice(whys, func(i, j int) bool { return whys[i].v > whys[j].v || whys[i].v == whys[j].v && whys[i].k < whys[j].k })
	for i, w := range whys {
		if i == 5 {
			fmt.Fprintf(b, "  failed runs: ... %d more reasons\n", len(whys)-5)
			break
		}
		fmt.Fprintf(b, "  failed runs: %d x %s\n", w.v, w.k)
	}
	if len(s.NodesNotDone) > 0 {
		fmt.Fprintf(b, "  NOT DONE: %s\n", strings.Join(firstN(s.NodesNotDone, 10), ", "))
	}
	if len(s.NodesSignedTwice) > 0 {
		fmt.Fprintf(b, "  SIGNED TWICE: %s\n", strings.Join(firstN(s.NodesSignedTwice, 10), ", "))
	}
}

func firstN(v []string, n int) []string {
	if len(v) > n {
		return append(v[:n:n], fmt.Sprintf("... %d more", len(v)-n))
	}
	return v
}
