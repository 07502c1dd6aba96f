// Command storm is the fleet boot storm: N real provision processes, each
// with its own --root and one-time token, started within a few seconds of
// each other against one lab control plane (step-ca behind a counting
// fault proxy, nginx in front of the node API), on loopback.
//
//	go run ./tests/storm -n 1000                      # the four scenarios
//	go run ./tests/storm -n 100 -scenarios healthy
//	go run ./tests/storm -n 200 -scenarios healthy -postgres   # step-ca on PostgreSQL
//	go run ./tests/storm -n 1000 -scenarios fail-together   # a fleet that fails at once and is restarted
//
// Scenarios: healthy; ca503 (the proxy answers half the CA requests 503
// for 30 s); ca503-retry-after (the same with Retry-After: 5); api503 (the
// node API answers 503 for 30 s); fail-together (not in the default list:
// the CA hangs until every node waits on it, then its balancer answers them
// all 404 at once until every first run has failed, so the whole fleet is
// restarted together; see fleet.StormOptions.FailTogether).
// A failed run is started again after -restart (provision.service's
// Restart=on-failure, RestartSec=30s), at a per-node phase within systemd's
// 250 ms timer accuracy.
//
// For each scenario it prints its counts, the CPU time of every process it
// ran (the nodes, this process with step-ca, the CA proxy and the node API,
// nginx, PostgreSQL), time to done as a multiple of that CPU time spread
// over the cores (the floor), the CA's request rate peak-to-mean, and when
// the restarted runs started their network work (the largest share within
// one 100 ms); with -plots it writes a PNG of each. Exit 1 if any node is
// not done, any node got a second certificate, or a token reached step-ca
// twice.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/fleet"
)

// config is the command line.
type config struct {
	n                 int
	spread            time.Duration
	scenarios         []string
	faultFor, restart time.Duration
	accuracy          time.Duration
	plots, plotPrefix string
	pg                bool
	pgConns           int
}

func main() {
	var c config
	var scen string
	flag.IntVar(&c.n, "n", 1000, "nodes per scenario")
	flag.DurationVar(&c.spread, "spread", 5*time.Second, "the nodes start evenly within this window")
	flag.StringVar(&scen, "scenarios", "healthy,ca503,ca503-retry-after,api503", "comma-separated scenarios (also: fail-together)")
	flag.DurationVar(&c.faultFor, "fault", 30*time.Second, "how long a fault lasts")
	flag.DurationVar(&c.restart, "restart", 30*time.Second, "wait before a failed run is started again (RestartSec)")
	flag.DurationVar(&c.accuracy, "restart-accuracy", fleet.SystemdAccuracy, "systemd's timer accuracy: each node's restart lands at a phase of its own within it (negative: exact)")
	flag.StringVar(&c.plots, "plots", "", "write one PNG per scenario into this directory")
	flag.StringVar(&c.plotPrefix, "plot-prefix", "storm-", "the PNGs are named <prefix><scenario>.png")
	flag.BoolVar(&c.pg, "postgres", false, "run step-ca on PostgreSQL (initdb/pg_ctl on loopback, in a temporary directory)")
	flag.IntVar(&c.pgConns, "pg-max-connections", 1000, "PostgreSQL's max_connections with -postgres (step-ca does not bound its pool)")
	flag.Parse()
	c.scenarios = strings.Split(scen, ",")
	log.SetOutput(io.Discard)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "storm:", err)
		os.Exit(1)
	}
	if !ok {
		fmt.Println("storm: FAILED (a node not done, a second sign, or a token at the CA twice)")
		os.Exit(1)
	}
	fmt.Println("storm: every scenario met the bar")
}

func run(ctx context.Context, c config) (bool, error) {
	if c.n < 1 || c.n > 5000 {
		return false, fmt.Errorf("-n must be 1-5000")
	}
	work, err := os.MkdirTemp("", "provision-storm-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(work)
	bin, err := build(work)
	if err != nil {
		return false, err
	}
	opts := fleet.Options{Dir: filepath.Join(work, "fleet"), Proxy: true, Connections: 4 * c.n}
	var db *fleet.Postgres
	if c.pg {
		if db, err = fleet.StartPostgres(filepath.Join(work, "pg"), c.pgConns); err != nil {
			return false, err
		}
		defer db.Stop()
		opts.CADB = db.Config()
		fmt.Printf("step-ca database: PostgreSQL %s on %s\n", db.Version, db.Addr)
	}
	f, err := fleet.Start(opts)
	if err != nil {
		return false, err
	}
	defer f.Close()
	if c.plots != "" {
		if err := os.MkdirAll(c.plots, 0o755); err != nil {
			return false, err
		}
	}
	fmt.Printf("%s; %d cores; load average %s\n", time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), fleet.LoadAvg())
	var all []fleet.Summary
	for _, sc := range c.scenarios {
		so, err := c.scenario(sc, bin, work, db)
		if err != nil {
			return false, err
		}
		s, err := storm(ctx, f, so, c)
		if err != nil {
			return false, err
		}
		all = append(all, s)
	}
	printTable(all)
	if db != nil {
		certs, err1 := db.Count("x509_certs")
		otts, err2 := db.Count("used_ott")
		fmt.Printf("PostgreSQL rows: x509_certs %d, used_ott %d (errors: %v %v); max_connections %d, refused for too many clients: %d\n",
			certs, otts, err1, err2, c.pgConns, db.LogCount("too many clients already"))
	}
	ok := true
	for _, s := range all {
		ok = ok && s.OK()
	}
	return ok, nil
}

// build builds provision as shipped.
func build(work string) (string, error) {
	bin := filepath.Join(work, "provision")
	return bin, testenv.BuildShipped(bin)
}

// scenario is the storm of one named scenario.
func (c config) scenario(sc, bin, work string, db *fleet.Postgres) (fleet.StormOptions, error) {
	so := fleet.StormOptions{Name: sc, Nodes: c.n, Spread: c.spread, Binary: bin, Work: filepath.Join(work, "nodes-"+sc),
		Deadline: "10m", Restart: c.restart, RestartAccuracy: c.accuracy}
	if db != nil {
		so.Name = "pg-" + sc
		pid, err := db.Pid()
		if err != nil {
			return so, fmt.Errorf("PostgreSQL's CPU cannot be counted: %w", err)
		}
		so.DBPid = pid
	}
	switch sc {
	case "healthy":
	case "ca503":
		so.CAFault, so.CAFaultFor = &fleet.Fault{Status: 503, Share: 0.5}, c.faultFor
	case "ca503-retry-after":
		so.CAFault, so.CAFaultFor = &fleet.Fault{Status: 503, Share: 0.5, RetryAfter: 5}, c.faultFor
	case "api503":
		so.APIFault503 = c.faultFor
	case "fail-together":
		so.FailTogether()
	default:
		return so, fmt.Errorf("unknown scenario %q", sc)
	}
	return so, nil
}

// storm runs one scenario, prints its report and writes its plot.
func storm(ctx context.Context, f *fleet.Fleet, so fleet.StormOptions, c config) (fleet.Summary, error) {
	defer fleet.RemoveRoots(so.Work)
	res, err := fleet.Storm(ctx, f, so)
	if err != nil {
		return fleet.Summary{}, err
	}
	s := res.Summarize()
	fmt.Print(s.String())
	if c.plots != "" {
		p := filepath.Join(c.plots, c.plotPrefix+so.Name+".png")
		if err := writePlot(s, p); err != nil {
			return s, err
		}
		fmt.Printf("  plot: %s\n", p)
	}
	return s, nil
}

// printTable is every scenario on one line each: the figures issue 26's
// goals are judged by.
func printTable(all []fleet.Summary) {
	fmt.Printf("\n%-20s %9s %6s %11s %9s %9s %7s %12s %9s %14s\n", "scenario", "done", "certs", "to done", "CPU", "floor", "x floor", "peak-to-mean", "(offered)", "restarts/100ms")
	for _, s := range all {
		ratio, herd, ptm, offered := "-", "-", "-", "-"
		if v, _, ok := s.PeakToMean(); ok {
			ptm = fmt.Sprintf("%.1f", v)
		}
		if s.ConnMean > 0 {
			offered = fmt.Sprintf("%.1f", s.ConnPeak/s.ConnMean)
		}
		if s.FloorRatio > 0 {
			ratio = fmt.Sprintf("%.2f", s.FloorRatio)
		}
		if s.Herd.Seen > 0 {
			herd = fmt.Sprintf("%d/%d %.0f%%", s.Herd.In100ms, s.Herd.Seen, 100*s.Herd.Share100ms())
		}
		fmt.Printf("%-20s %9s %6.2f %11s %8.1fs %8.1fs %7s %12s %9s %14s\n", s.StormLabel, fmt.Sprintf("%d/%d", s.Done, s.Nodes), s.SignsPerNode,
			s.TimeToDone.Round(100*time.Millisecond), s.CPU.Total().Seconds(), s.CPU.Floor().Seconds(), ratio, ptm, offered, herd)
	}
}
