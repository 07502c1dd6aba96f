// Command storm is the fleet boot storm: N real provision processes, each
// with its own --root and one-time token, started within a few seconds of
// each other against one lab control plane (step-ca behind a counting
// fault proxy, nginx in front of the node API), on loopback.
//
//	go run ./tests/storm -n 1000                      # every scenario
//	go run ./tests/storm -n 100 -scenarios healthy
//	go run ./tests/storm -n 200 -scenarios healthy -postgres   # step-ca on PostgreSQL
//
// Scenarios: healthy; ca503 (the proxy answers half the CA requests 503
// for 30 s); ca503-retry-after (the same with Retry-After: 5); api503 (the
// node API answers 503 for 30 s). A failed run is started again after
// -restart (provision.service's Restart=on-failure, Restart=30s). Each
// scenario prints its counts and writes a PNG of done-over-time and CA
// requests/s into -plots. Exit 1 if any node is not done, any node got a
// second certificate, or a token reached step-ca twice.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/fleet"
)

func main() {
	n := flag.Int("n", 1000, "nodes per scenario")
	spread := flag.Duration("spread", 5*time.Second, "the nodes start evenly within this window")
	scen := flag.String("scenarios", "healthy,ca503,ca503-retry-after,api503", "comma-separated scenarios")
	faultFor := flag.Duration("fault", 30*time.Second, "how long a fault lasts")
	restart := flag.Duration("restart", 30*time.Second, "wait before a failed run is started again (Restart)")
	plots := flag.String("plots", "", "write one PNG per scenario into this directory")
	pg := flag.Bool("postgres", false, "run step-ca on PostgreSQL (initdb/pg_ctl on loopback, in a temporary directory)")
	flag.IntVar(&pgConns, "pg-max-connections", 1000, "PostgreSQL's max_connections with -postgres (step-ca does not bound its pool)")
	flag.Parse()
	log.SetOutput(io.Discard)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, *n, *spread, strings.Split(*scen, ","), *faultFor, *restart, *plots, *pg)
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

var pgConns int

func run(ctx context.Context, n int, spread time.Duration, scenarios []string, faultFor, restart time.Duration, plots string, pg bool) (bool, error) {
	if n < 1 || n > 5000 {
		return false, fmt.Errorf("-n must be 1-5000")
	}
	work, err := os.MkdirTemp("", "provision-storm-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(work)
	bin := filepath.Join(work, "provision")
	root, err := testenv.ModuleRoot()
	if err != nil {
		return false, err
	}
	b := exec.Command(testenv.GoTool(), "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./cmd/provision")
	b.Dir = root
	if o, err := b.CombinedOutput(); err != nil {
		return false, fmt.Errorf("go build: %v\n%s", err, o)
	}
	opts := fleet.Options{Dir: filepath.Join(work, "fleet"), Proxy: true, Connections: 4 * n}
	var db *fleet.Postgres
	if pg {
		db, err = fleet.StartPostgres(filepath.Join(work, "pg"), pgConns)
		if err != nil {
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
	if plots != "" {
		if err := os.MkdirAll(plots, 0o755); err != nil {
			return false, err
		}
	}
	allOK := true
	for _, sc := range scenarios {
		so := fleet.StormOptions{Name: sc, Nodes: n, Spread: spread, Binary: bin, Work: filepath.Join(work, "nodes-"+sc),
			Deadline: "10m", Restart: restart}
		if pg {
			so.Name = "pg-" + sc
		}
		switch sc {
		case "healthy":
		case "ca503":
			so.CAFault, so.CAFaultFor = &fleet.Fault{Status: 503, Share: 0.5}, faultFor
		case "ca503-retry-after":
			so.CAFault, so.CAFaultFor = &fleet.Fault{Status: 503, Share: 0.5, RetryAfter: 5}, faultFor
		case "api503":
			so.APIFault503 = faultFor
		default:
			return false, fmt.Errorf("unknown scenario %q", sc)
		}
		res, err := fleet.Storm(ctx, f, so)
		if err != nil {
			return false, err
		}
		s := res.Summarize()
		fmt.Print(s.String())
		if plots != "" {
			p := filepath.Join(plots, "storm-"+so.Name+".png")
			if err := writePlot(s, p); err != nil {
				return false, err
			}
			fmt.Printf("  plot: %s\n", p)
		}
		fleet.RemoveRoots(so.Work)
		allOK = allOK && s.OK()
	}
	if db != nil {
		certs, err1 := db.Count("x509_certs")
		otts, err2 := db.Count("used_ott")
		fmt.Printf("PostgreSQL rows: x509_certs %d, used_ott %d (errors: %v %v); max_connections %d, refused for too many clients: %d\n",
			certs, otts, err1, err2, pgConns, db.LogCount("too many clients already"))
	}
	return allOK, nil
}
