package verify_test

import (
	"context"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/verify"
	"github.com/gpuaas/provision/tests/controlplane"
)

// BenchmarkVerifyHealthy is one whole healthy verify run on loopback: config
// load, hosts checks, the CA's roots (two HTTPS requests to the real
// step-ca), credentials, chain, and the mTLS tasks/wait probe.
//
// "task-queued" queues a task before each run, so the node API answers 200
// at once and the number is provision's own cost. "long-poll" is what an
// operator waits for on a node with no work: the API holds tasks/wait for
// node_api.wait_timeout (1s) and answers 204.
func BenchmarkVerifyHealthy(b *testing.B) {
	cp := controlplane.Start(b, controlplane.Options{})
	leaf, err := cp.IssueNodeCert(nodeID)
	if err != nil {
		b.Fatal(err)
	}
	n := plant(b, cp, nil, leaf, cp.CA.RootPEM())
	for _, bc := range []struct {
		name  string
		queue bool
	}{{"task-queued", true}, {"long-poll", false}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if bc.queue {
					cp.API.QueueTask(nodeID, controlplane.Task{ID: "bench"})
				}
				e := n.env(b, nil)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				res := verify.Run(ctx, e, verify.Checks(), nil)
				cancel()
				if r := report.New("verify", nodeID, res, 0); !r.OK {
					b.Fatalf("not healthy: %s\n%s", r.Summary, dump(r))
				}
			}
		})
	}
}
