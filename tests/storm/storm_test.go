package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
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
		// first ten signs: a sign that meets one fails the run (a sign is
		// never retried), so each of those ten nodes' restarted run must
		// present the same token once more and get exactly one certificate.
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
		})
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
	res, err := fleet.Storm(ctx, f, fleet.StormOptions{Name: "pg-healthy", Nodes: n, Spread: time.Second, Binary: bin,
		Work: filepath.Join(work, "nodes"), Deadline: "5m", Restart: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s := res.Summarize()
	t.Logf("storm on PostgreSQL (%s): %s", db.Version, s.String())
	if !s.OK() {
		t.Errorf("the storm did not meet the bar: %d/%d done, %d certificates, twice: %v, tokens twice at the CA: %d", s.Done, s.Nodes, s.Signs201, s.NodesSignedTwice, s.TokensTwiceAtCA)
	}
	certs, err := db.Count("x509_certs")
	if err != nil {
		t.Fatalf("counting step-ca's certificates in PostgreSQL: %v", err)
	}
	if certs != n {
		t.Errorf("PostgreSQL holds %d certificates, want %d (one per node)", certs, n)
	}
}
