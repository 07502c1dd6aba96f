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
		// Half the CA's answers are 503 with Retry-After for a few seconds:
		// a sign that meets one fails the run (a sign is never retried), so
		// the restarted run must present the same token once more and get
		// exactly one certificate.
		{"ca503-retry-after", &fleet.Fault{Status: 503, Every: 2, RetryAfter: 1}},
	} {
		t.Run(sc.name, func(t *testing.T) {
			res, err := fleet.Storm(ctx, f, fleet.StormOptions{Name: sc.name, Nodes: n, Spread: 2 * time.Second, Binary: bin,
				Work: filepath.Join(work, sc.name), Deadline: "5m", Restart: 2 * time.Second, CAFault: sc.fault, CAFaultFor: 3 * time.Second})
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
			if sc.fault != nil && s.Faulted == 0 {
				t.Errorf("the fault proxy answered nothing: the scenario did not test recovery")
			}
		})
	}
}
