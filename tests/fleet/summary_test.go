package fleet

import (
	"strings"
	"testing"
	"time"
)

// stormOf builds a result: two nodes, b restarted once after a 503 on its
// sign; requests at the given seconds.
func stormOf(faultEnd time.Duration, reqAt ...time.Duration) *StormResult {
	r := &StormResult{
		Opts:     StormOptions{Name: "t", Spread: time.Second},
		Duration: 6 * time.Second,
		FaultEnd: faultEnd,
		CPU:      CPU{Nodes: 2 * time.Second, Storm: time.Second, Ingress: time.Second, Cores: 2},
		Nodes: []NodeRun{
			{ID: "t-a", Starts: 1, Done: true, ToDone: 2 * time.Second, DoneAt: 2 * time.Second,
				Runs: []Run{{Start: 0, End: 2 * time.Second}}},
			{ID: "t-b", Starts: 2, Done: true, ToDone: 5 * time.Second, DoneAt: 5500 * ms,
				Runs: []Run{{Start: 500 * ms, End: 1500 * ms, Code: 20, Why: "enroll: sign: CA answered 503"}, {Due: 3500 * ms, Start: 3500 * ms, End: 5500 * ms}}},
		},
		Events: []Event{
			{At: 1 * time.Second, Sign: true, Subject: "t-a", TokenID: "ja", Forwarded: true, Status: 201},
			{At: 1200 * ms, Sign: true, Subject: "t-b", TokenID: "jb", Faulted: true, Status: 503},
			{At: 4 * time.Second, Sign: true, Subject: "t-b", TokenID: "jb", Forwarded: true, Status: 201},
		},
		Conns: []Conn{{At: 3600 * ms, Accepted: 3600 * ms, Node: "t-b"}},
	}
	for _, at := range reqAt {
		r.Events = append(r.Events, Event{At: at, Forwarded: true, Status: 200})
	}
	return r
}

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		name      string
		res       *StormResult
		ratio     float64 // time to done over the floor
		ptm       float64
		recovery  bool
		mentioned []string
	}{
		{
			// 5.5 s to done over 4 s of CPU on 2 cores (2 s): 2.75x. Requests
			// per second 0 3 0 0 1 0 0 (seven buckets for 6 s, the last
			// one partial): peak 3, mean 4/7.
			name: "no fault: peak-to-mean of the whole storm", res: stormOf(0, 1500*ms),
			ratio: 2.75, ptm: 5.25, recovery: false,
			mentioned: []string{"2.75x the CPU floor (2s)", "peak-to-mean 5.2 (the whole storm, no fault)", "1 restarted runs, 1 reached the CA", "1 x enroll: sign: CA answered 503",
				"offered load: CA connections opened per second by the kernel's time, same window: peak 1/s, mean 0.1/s, peak-to-mean 7.0",
				"network work per second, from the first to the last: peak 1, mean 1.0, peak-to-mean 1.0"},
		},
		{
			// From second 3 (the fault's end) to second 5 (the last done):
			// 0 1 3, peak 3, mean 4/3.
			name: "fault: peak-to-mean from its end to the last done", res: stormOf(3*time.Second, 5*time.Second, 5100*ms, 5200*ms),
			ratio: 2.75, ptm: 2.25, recovery: true,
			mentioned: []string{"peak-to-mean 2.2 (from the fault's end to the last node done)"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.res.Summarize()
			if !s.OK() {
				t.Errorf("not OK: %s", s.String())
			}
			if s.TimeToDone != 5500*ms || s.FloorRatio < tc.ratio-0.001 || s.FloorRatio > tc.ratio+0.001 {
				t.Errorf("time to done %s, ratio %.3f; want 5.5s, %.2f", s.TimeToDone, s.FloorRatio, tc.ratio)
			}
			ptm, window, ok := s.PeakToMean()
			if rec := strings.Contains(window, "fault's end"); !ok || ptm < tc.ptm-0.001 || ptm > tc.ptm+0.001 || rec != tc.recovery {
				t.Errorf("peak-to-mean %.3f (%s, %v), want %.2f (recovery %v)", ptm, window, ok, tc.ptm, tc.recovery)
			}
			if s.Restarts != 1 || s.Herd.Seen != 1 || s.RestartSeries[36] != 1 {
				t.Errorf("restarts %d, seen %d, series at 3.6 s %v", s.Restarts, s.Herd.Seen, s.RestartSeries[36])
			}
			out := s.String()
			for _, m := range tc.mentioned {
				if !strings.Contains(out, m) {
					t.Errorf("the report does not say %q:\n%s", m, out)
				}
			}
		})
	}
}

// A node not done has no floor ratio, and the report says so instead of
// printing a number.
func TestSummarizeNotDone(t *testing.T) {
	r := stormOf(0)
	r.Nodes[1].Done = false
	s := r.Summarize()
	if s.OK() || s.FloorRatio != 0 || s.TimeToDone != 0 {
		t.Errorf("OK %v, ratio %.2f, to done %s for a storm with a node not done", s.OK(), s.FloorRatio, s.TimeToDone)
	}
	if out := s.String(); !strings.Contains(out, "no floor ratio") || !strings.Contains(out, "NOT DONE: t-b") {
		t.Errorf("the report hides the node not done:\n%s", out)
	}
}

// A fault that outlasts the last node done leaves no recovery window: the
// report says n/a instead of a peak-to-mean of 0.
func TestPeakToMeanNoWindow(t *testing.T) {
	s := stormOf(time.Minute).Summarize()
	if _, _, ok := s.PeakToMean(); ok {
		t.Error("a peak-to-mean for a recovery that never started")
	}
	if out := s.String(); !strings.Contains(out, "peak-to-mean n/a (from the fault's end") {
		t.Errorf("the report does not say n/a:\n%s", out)
	}
}

func TestFaultEnd(t *testing.T) {
	events := []Event{{At: 20 * time.Second}, {At: 18 * time.Second}, {At: 25 * time.Second}}
	for _, tc := range []struct {
		name   string
		opts   StormOptions
		events []Event
		want   time.Duration
	}{
		{"CA fault: from the first request", StormOptions{CAFault: &Fault{Status: 503}, CAFaultFor: 30 * time.Second}, events, 48 * time.Second},
		{"API fault: from the first request at the CA", StormOptions{APIFault503: 30 * time.Second}, events, 48 * time.Second},
		{"no fault", StormOptions{}, events, 0},
		{"no request", StormOptions{APIFault503: 30 * time.Second}, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := (&storm{opts: tc.opts}).faultEnd(tc.events); got != tc.want {
				t.Errorf("faultEnd = %s, want %s", got, tc.want)
			}
		})
	}
}
