package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/fleet"
	"github.com/gpuaas/provision/tests/ingress"
)

// stormNodes is the CI storm's size: small enough for 2 cores under -race
// in a few minutes; STORM_NODES changes it.
func stormNodes(t *testing.T) int {
	if v := os.Getenv("STORM_NODES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("STORM_NODES=%q is not a positive number", v)
		}
		return n
	}
	return 100
}

// TestStorm starts a small boot storm of real provision processes against
// one control plane and fails if any node is not done, any node got a
// second certificate (or none), or any token reached step-ca twice. It
// measures nothing against a clock: the numbers are logged, not asserted.
func TestStorm(t *testing.T) {
	ingress.Require(t, ingress.Nginx)
	n := stormNodes(t)
	work := t.TempDir()
	bin, err := testenv.BuildProvision(work)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleet.Start(fleet.Options{Dir: filepath.Join(work, "fleet"), Proxy: true, Connections: 4 * n})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	for _, sc := range []struct {
		name  string
		fault *fleet.Fault
	}{
		{"healthy", nil},
		// Half the CA's answers are 503 with Retry-After, and so are the
		// first ten signs: a sign that meets one is presented again with
		// the same token inside the run (step-ca never saw it), so each of
		// those ten nodes must get exactly one certificate, the token
		// reaching step-ca once, without its run failing.
		{"ca503-retry-after", &fleet.Fault{Status: 503, Share: 0.5, RetryAfter: 1, FirstSigns: 10}},
	} {
		t.Run(sc.name, func(t *testing.T) {
			res, err := fleet.Storm(ctx, f, fleet.StormOptions{Name: sc.name, Nodes: n, Spread: 2 * time.Second, Binary: bin,
				Work: filepath.Join(work, sc.name), Deadline: "5m", Restart: 2 * time.Second, CAFault: sc.fault, CAFaultFor: 2 * time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			s := res.Summarize()
			t.Logf("storm: %s", s.String())
			if s.Done != s.Nodes {
				t.Errorf("%d of %d nodes not done: %v", s.Nodes-s.Done, s.Nodes, s.NodesNotDone)
			}
			if len(s.NodesSignedTwice) > 0 || s.Signs201 != s.Nodes {
				t.Errorf("want exactly one certificate per node: %d issued for %d nodes; wrong: %v", s.Signs201, s.Nodes, s.NodesSignedTwice)
			}
			if s.TokensTwiceAtCA > 0 {
				t.Errorf("%d tokens reached step-ca twice", s.TokensTwiceAtCA)
			}
			if sc.fault != nil && s.SignsAtFront-s.SignsAtCA != sc.fault.FirstSigns {
				t.Errorf("%d signs answered by the fault proxy, want %d: the scenario did not test recovery from a failed sign", s.SignsAtFront-s.SignsAtCA, sc.fault.FirstSigns)
			}
			for why, runs := range s.Why {
				if strings.Contains(why, "503") {
					t.Errorf("%d runs ended on a 503 (%s): a 503 is waited out inside the run", runs, why)
				}
			}
			checkMeasured(t, s)
			checkSplay(t, res)
		})
	}
}

// checkSplay fails a storm where a first start waited a restart splay
// (a run by systemd with nothing failed before it is not a restart), or a
// restarted run did not (provision did not know it for a restart).
func checkSplay(t *testing.T, res *fleet.StormResult) {
	t.Helper()
	var firstWaited, restartNoWait []string
	for _, n := range res.Nodes {
		for k, r := range n.Runs {
			switch {
			case k == 0 && r.Waited:
				firstWaited = append(firstWaited, n.ID)
			case k > 0 && !r.Waited:
				restartNoWait = append(restartNoWait, fmt.Sprintf("%s run %d", n.ID, k+1))
			}
		}
	}
	if len(firstWaited) > 0 || len(restartNoWait) > 0 {
		t.Errorf("restart splay: first starts that waited: %v; restarted runs that did not: %v", firstWaited, restartNoWait)
	}
}

// checkMeasured fails a storm whose speed figures would be made up: every
// part's CPU must have been measured, and the restarted runs seen at the CA.
func checkMeasured(t *testing.T, s fleet.Summary) {
	t.Helper()
	c := s.CPU
	if len(c.Missing) > 0 || c.Nodes <= 0 || c.Storm <= 0 || c.Ingress <= 0 || c.Cores < 1 {
		t.Errorf("CPU not measured: nodes %s, storm process %s, nginx %s, %d cores; missing: %v", c.Nodes, c.Storm, c.Ingress, c.Cores, c.Missing)
	}
	if s.FloorRatio <= 0 && s.Done == s.Nodes {
		t.Errorf("every node is done but there is no floor ratio (time to done %s, floor %s)", s.TimeToDone, c.Floor())
	}
	if s.Herd.Seen != s.Herd.Restarts {
		t.Errorf("%d of %d restarted runs never reached the CA: their network start is unknown", s.Herd.Restarts-s.Herd.Seen, s.Herd.Restarts)
	}
}

// restartSpreadBar is the most of a restarted fleet that may start its
// network work within one 100 ms. A fleet that returns within one second
// puts at least a tenth of its restarts into one of that second's ten
// 100 ms windows, so a share of 10% or more fails.
const restartSpreadBar = 0.10

// TestStormRestartSpread is issue 26's herd check: the whole fleet fails
// in one instant (fleet.StormOptions.FailTogether: the CA hangs, then its
// balancer answers every waiting node 404) and provision.service restarts
// every node RestartSec later. It fails if the restarted runs come back
// together: restartSpreadBar or more of them starting their network work
// (their first connection to the CA, as the kernel under the CA proxy saw
// it) within one 100 ms. It also checks the storm's correctness bar, and
// that every restarted run did wait (bootstrap.restart_splay, the default
// 30s): a spread that came from the machine's load alone is not the fix.
// It runs provision as shipped (not under -race), since it judges timing
// the race detector would distort.
func TestStormRestartSpread(t *testing.T) {
	ingress.Require(t, ingress.Nginx)
	n := stormNodes(t)
	work := t.TempDir()
	bin, err := build(work)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleet.Start(fleet.Options{Dir: filepath.Join(work, "fleet"), Proxy: true, Connections: 4 * n})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	so := fleet.StormOptions{Name: "fail-together", Nodes: n, Binary: bin, Work: filepath.Join(work, "nodes"), Deadline: "5m", Restart: 2 * time.Second}
	so.FailTogether()
	res, err := fleet.Storm(ctx, f, so)
	if err != nil {
		t.Fatal(err)
	}
	s := res.Summarize()
	t.Logf("storm: %s", s.String())
	if !s.OK() {
		t.Errorf("the storm did not meet the bar: %d/%d done, %d certificates, twice: %v, tokens twice at the CA: %d", s.Done, s.Nodes, s.Signs201, s.NodesSignedTwice, s.TokensTwiceAtCA)
	}
	checkMeasured(t, s)
	checkSplay(t, res)
	h := s.Herd
	if h.Seen < n {
		t.Fatalf("%d restarted runs reached the CA, want at least one per node (%d): the scenario did not fail every node's first run (exit codes %v)", h.Seen, n, s.ExitCodes)
	}
	if h.Share100ms() >= restartSpreadBar {
		t.Errorf("restart herd: %d of %d restarted runs (%.0f%%) started their network work within one 100 ms (from +%s), %.0f%% within one second; the bar is under %.0f%%: a fleet that failed together came back together (issue 26)",
			h.In100ms, h.Seen, 100*h.Share100ms(), h.At100ms.Round(time.Millisecond), 100*h.Share1s(), 100*restartSpreadBar)
	}
}

// TestStormPostgres runs a small healthy storm with step-ca on its
// PostgreSQL backend (a throwaway cluster on loopback) and checks the
// same bar, plus that the database holds exactly one certificate per node.
// Where PostgreSQL is not installed it skips loudly on a developer machine
// and fails under CI, which installs it.
func TestStormPostgres(t *testing.T) {
	ingress.Require(t, ingress.Nginx)
	if _, err := fleet.FindPostgres(); err != nil {
		testenv.SkipOrFail(t, "step-ca on PostgreSQL not tested: %v (.ci/run installs the postgresql package)", err)
	}
	work := t.TempDir()
	db, err := fleet.StartPostgres(filepath.Join(work, "pg"), 200)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Stop() })
	bin, err := testenv.BuildProvision(work)
	if err != nil {
		t.Fatal(err)
	}
	const n = 30
	f, err := fleet.Start(fleet.Options{Dir: filepath.Join(work, "fleet"), Proxy: true, Connections: 4 * n, CADB: db.Config()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pid, err := db.Pid()
	if err != nil {
		t.Fatal(err)
	}
	res, err := fleet.Storm(ctx, f, fleet.StormOptions{Name: "pg-healthy", Nodes: n, Spread: time.Second, Binary: bin,
		Work: filepath.Join(work, "nodes"), Deadline: "5m", Restart: 2 * time.Second, DBPid: pid})
	if err != nil {
		t.Fatal(err)
	}
	s := res.Summarize()
	t.Logf("storm on PostgreSQL (%s): %s", db.Version, s.String())
	if !s.OK() {
		t.Errorf("the storm did not meet the bar: %d/%d done, %d certificates, twice: %v, tokens twice at the CA: %d", s.Done, s.Nodes, s.Signs201, s.NodesSignedTwice, s.TokensTwiceAtCA)
	}
	checkMeasured(t, s)
	checkSplay(t, res)
	if s.CPU.DB <= 0 {
		t.Errorf("PostgreSQL's CPU was not measured (postmaster %d)", pid)
	}
	certs, err := db.Count("x509_certs")
	if err != nil {
		t.Fatalf("counting step-ca's certificates in PostgreSQL: %v", err)
	}
	if certs != n {
		t.Errorf("PostgreSQL holds %d certificates, want %d (one per node)", certs, n)
	}
}
