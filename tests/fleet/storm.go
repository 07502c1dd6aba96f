package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
)

// StormOptions shape one boot storm.
type StormOptions struct {
	Name   string
	Nodes  int
	Spread time.Duration // the nodes start evenly within this window
	Binary string        // the provision binary
	Work   string        // node roots go under it
	// Deadline is each node's bootstrap.deadline.
	Deadline string
	// Restart is what provision.service's Restart=on-failure waits
	// before starting a failed run again (the unit says 30s); MaxStarts
	// bounds the starts (the unit's StartLimitBurst=6).
	Restart   time.Duration
	MaxStarts int
	// CAFault, when set, is installed on the CA proxy at the start for
	// CAFaultFor.
	CAFault    *Fault
	CAFaultFor time.Duration
	// APIFault503 makes the node API answer 503 for this long from the start.
	APIFault503 time.Duration
}

// NodeRun is one node's storm.
type NodeRun struct {
	ID     string
	Starts int
	Codes  []int
	Why    []string // failed_check and summary of each failed run
	Done   bool
	ToDone time.Duration // from its own start to the end of its successful run
	DoneAt time.Duration // since the storm started
}

// StormResult is what a storm measured.
type StormResult struct {
	Opts     StormOptions
	Nodes    []NodeRun
	Events   []Event       // at the CA proxy, At relative to the storm's start
	Duration time.Duration // until the last node finished
	FaultEnd time.Duration
}

// Storm starts opts.Nodes real provision processes against f (which needs
// its CA proxy), each with its own root and token, and waits for all.
func Storm(ctx context.Context, f *Fleet, opts StormOptions) (*StormResult, error) {
	if f.Proxy == nil {
		return nil, errors.New("the storm counts at the CA proxy: start the fleet with Options.Proxy")
	}
	if opts.MaxStarts <= 0 {
		opts.MaxStarts = 6
	}
	if opts.Deadline == "" {
		opts.Deadline = "5m"
	}
	res := &StormResult{Opts: opts, Nodes: make([]NodeRun, opts.Nodes)}
	type node struct {
		root string
		cfg  string
	}
	nodes := make([]node, opts.Nodes)
	for i := range nodes {
		id := fmt.Sprintf("%s-%05d", opts.Name, i)
		root := filepath.Join(opts.Work, id)
		tok, err := f.CP.Token(id, controlplane.TokenLifetime(time.Hour))
		if err != nil {
			return nil, err
		}
		files, err := controlplane.WriteNode(root, f.NodeConfig(id, opts.Deadline), tok)
		if err != nil {
			return nil, err
		}
		nodes[i] = node{root: root, cfg: files.ConfigArg}
		res.Nodes[i].ID = id
	}
	skip := len(f.Proxy.Events())
	t0 := time.Now()
	base := f.Proxy.Since()
	if opts.CAFault != nil {
		fault := *opts.CAFault
		fault.Until = t0.Add(opts.CAFaultFor)
		f.Proxy.SetFault(&fault)
		res.FaultEnd = opts.CAFaultFor
	}
	if opts.APIFault503 > 0 {
		f.API.FailAlways(controlplane.StatusFault(503))
		res.FaultEnd = opts.APIFault503
		stop := time.AfterFunc(opts.APIFault503, f.API.ClearFaults)
		defer stop.Stop()
	}
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			at := time.Duration(0)
			if opts.Nodes > 1 {
				at = opts.Spread * time.Duration(i) / time.Duration(opts.Nodes-1)
			}
			select {
			case <-time.After(time.Until(t0.Add(at))):
			case <-ctx.Done():
				return
			}
			nr := &res.Nodes[i]
			start := time.Now()
			for nr.Starts < opts.MaxStarts && ctx.Err() == nil {
				nr.Starts++
				code, why := runBootstrap(ctx, opts.Binary, nodes[i].cfg, nodes[i].root)
				nr.Codes = append(nr.Codes, code)
				if code != 0 {
					nr.Why = append(nr.Why, why)
				}
				if code == 0 {
					nr.Done, nr.ToDone, nr.DoneAt = true, time.Since(start), time.Since(t0)
					return
				}
				if code == 2 || code == 3 { // RestartPreventExitStatus=2 3
					return
				}
				select {
				case <-time.After(opts.Restart):
				case <-ctx.Done():
					return
				}
			}
		}(i)
	}
	wg.Wait()
	res.Duration = time.Since(t0)
	if opts.CAFault != nil {
		f.Proxy.SetFault(nil) // a fault outlasting the storm must not reach the next one
	}
	for _, e := range f.Proxy.Events()[skip:] {
		e.At -= base
		res.Events = append(res.Events, e)
	}
	return res, ctx.Err()
}

func runBootstrap(ctx context.Context, bin, cfg, root string) (int, string) {
	cmd := exec.CommandContext(ctx, bin, "bootstrap", "--config", cfg, "--root", root, "--format", "json")
	out, err := cmd.Output()
	var rep struct {
		OK          bool   `json:"ok"`
		FailedCheck string `json:"failed_check"`
		Summary     string `json:"summary"`
	}
	json.Unmarshal(out, &rep)
	why := rep.FailedCheck + ": " + rep.Summary
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), why
	default:
		return -1, err.Error()
	}
	if !rep.OK {
		return -2, "exit 0 without an ok report" // never done
	}
	return 0, ""
}

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
	Duration                time.Duration
	ExitCodes               map[int]int
	SignsPerNode            float64
	DoneSeries, ReqSeries   []float64 // per second
	FwdSeries, FaultSeries  []float64
	SignSeries              []float64
	StartSpread, StormLabel string
	Why                     map[string]int // failed runs by failed_check and summary
}

// Summarize counts what the storm did.
func (r *StormResult) Summarize() Summary {
	s := Summary{Nodes: len(r.Nodes), ExitCodes: map[int]int{}, Why: map[string]int{}, Duration: r.Duration, StormLabel: r.Opts.Name, StartSpread: r.Opts.Spread.String()}
	var times []time.Duration
	for _, n := range r.Nodes {
		s.Restarts += max(0, n.Starts-1)
		for _, c := range n.Codes {
			s.ExitCodes[c]++
		}
		for _, w := range n.Why {
			if len(w) > 160 {
				w = w[:160] + "..."
			}
			s.Why[w]++
		}
		if n.Done {
			s.Done++
			times = append(times, n.ToDone)
		} else {
			s.NodesNotDone = append(s.NodesNotDone, n.ID)
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
	signs201 := map[string]int{}
	jtiCA, jtiFront := map[string]int{}, map[string]int{}
	secs := int(r.Duration/time.Second) + 1
	s.DoneSeries = make([]float64, secs)
	s.ReqSeries = make([]float64, secs)
	s.FwdSeries = make([]float64, secs)
	s.FaultSeries = make([]float64, secs)
	s.SignSeries = make([]float64, secs)
	for _, n := range r.Nodes {
		if n.Done {
			for k := int(n.DoneAt / time.Second); k < secs; k++ {
				s.DoneSeries[k]++
			}
		}
	}
	for _, e := range r.Events {
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
				signs201[e.Subject]++
			}
		}
	}
	for id, c := range signs201 {
		if c > 1 {
			s.NodesSignedTwice = append(s.NodesSignedTwice, id)
		}
	}
	for _, n := range r.Nodes {
		if signs201[n.ID] == 0 && n.Done {
			s.NodesSignedTwice = append(s.NodesSignedTwice, n.ID+" (done without a sign)")
		}
	}
	sort.Strings(s.NodesSignedTwice)
	for _, c := range jtiCA {
		if c > 1 {
			s.TokensTwiceAtCA++
		}
	}
	for _, c := range jtiFront {
		if c > 1 {
			s.TokensTwiceAtFront++
		}
	}
	if s.Nodes > 0 {
		s.SignsPerNode = float64(s.Signs201) / float64(s.Nodes)
	}
	s.PeakRate, s.MeanRate = peakMean(s.ReqSeries, 0, secs)
	if r.FaultEnd > 0 {
		last := 0
		for _, n := range r.Nodes {
			last = max(last, int(n.DoneAt/time.Second))
		}
		s.RecPeak, s.RecMean = peakMean(s.ReqSeries, int(r.FaultEnd/time.Second), last+1)
	}
	return s
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
		fmt.Fprintf(&b, "; recovery (the fault's end to the last done): peak %.0f/s, mean %.1f/s, peak-to-mean %.1f", s.RecPeak, s.RecMean, s.RecPeak/s.RecMean)
	}
	b.WriteString("\n  CA requests/s by second: ")
	for i, v := range s.ReqSeries {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%.0f", v)
	}
	b.WriteString("\n")
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
			fmt.Fprintf(&b, "  failed runs: ... %d more reasons\n", len(whys)-5)
			break
		}
		fmt.Fprintf(&b, "  failed runs: %d x %s\n", w.v, w.k)
	}
	if len(s.NodesNotDone) > 0 {
		fmt.Fprintf(&b, "  NOT DONE: %s\n", strings.Join(firstN(s.NodesNotDone, 10), ", "))
	}
	if len(s.NodesSignedTwice) > 0 {
		fmt.Fprintf(&b, "  SIGNED TWICE: %s\n", strings.Join(firstN(s.NodesSignedTwice, 10), ", "))
	}
	return b.String()
}

func firstN(v []string, n int) []string {
	if len(v) > n {
		return append(v[:n:n], fmt.Sprintf("... %d more", len(v)-n))
	}
	return v
}

// RemoveRoots deletes the node roots of a finished storm.
func RemoveRoots(work string) { os.RemoveAll(work) }
