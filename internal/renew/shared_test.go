package renew_test

import (
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/renew"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/verify"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/fleet"
)

// TestRenewHonoursRetryAfter: renew's roots fetch is the pipeline's, so it
// waits what the CA's Retry-After says (not a jittered guess) before it
// asks again, as bootstrap does.
func TestRenewHonoursRetryAfter(t *testing.T) {
	n := bootstrapped(t, controlplane.Options{})
	proxy, err := fleet.StartCAProxy(n.cp.CA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	u, _ := url.Parse(n.cfg.CA.URL)
	u.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(proxy.Port()))
	n.cfg.CA.URL = u.String()
	proxy.SetFault(&fleet.Fault{Status: 503, RetryAfter: 7, Share: 1, Until: time.Now().Add(300 * time.Millisecond)})

	var mu sync.Mutex
	var waits []time.Duration
	sleep := func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		return retry.Sleep(ctx, min(d, 100*time.Millisecond)) // the fault is over long before 7 s
	}
	out := renew.Run(context.Background(), n.cfg, n.host, pipeline.Options{Ladder: verify.Ladder, Policy: retry.Default, Sleep: sleep})
	if !out.Report.OK {
		t.Fatalf("renew after the 503s: %s", out.Report.Summary)
	}
	if len(waits) == 0 || waits[0] != 7*time.Second {
		t.Fatalf("waits %v: want the first to be the CA's Retry-After, 7s", waits)
	}
}

// TestRenewStopsAtClockBeforeRekey: a node clock 5 minutes off the CA's
// (its Date header) stops a due renewal at the clock step, before anything
// is asked of the CA: the certificate it would buy would look not yet valid.
func TestRenewStopsAtClockBeforeRekey(t *testing.T) {
	n := bootstrapped(t, controlplane.Options{})
	before := serial(n.current(t))
	n.host.Now = func() time.Time { return time.Now().Add(5 * time.Minute) }
	out := n.renew(t, true)
	r := out.Report
	if r.OK || r.FailedLayer != diag.Clock || r.FailedCheck != "clock" {
		t.Fatalf("renew with a skewed clock: ok=%v layer %s check %s: %s", r.OK, r.FailedLayer, r.FailedCheck, r.Summary)
	}
	last := r.Steps[len(r.Steps)-1]
	if last.Name != "clock" || last.Status != "fail" {
		t.Fatalf("steps %+v: want the run to stop at clock", r.Steps)
	}
	if serial(n.current(t)) != before || out.Renewed {
		t.Fatal("the certificate changed although the clock stopped the run")
	}
}

// TestRenewTightensExposedKey: renew restricts a key found readable by
// others exactly as bootstrap does (the pipeline's one credentials-mode
// step), records the exposure, and says so, even when nothing is due.
func TestRenewTightensExposedKey(t *testing.T) {
	n := bootstrapped(t, controlplane.Options{})
	key := filepath.Join(n.current(t).Dir, credstore.KeyFile)
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	out := n.renew(t, false)
	if !out.Report.OK {
		t.Fatalf("renew: %s", out.Report.Summary)
	}
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode after renew: %v (%v), want 0600", st.Mode().Perm(), err)
	}
	if _, err := os.Stat(filepath.Join(n.files.StateDir, state.ExposedFile)); err != nil {
		t.Fatalf("the exposure was not recorded: %v", err)
	}
}

// TestStepsInOrder: every step of renew's list reads only stages an
// earlier step wrote (pipeline.CheckOrder).
func TestStepsInOrder(t *testing.T) {
	if err := pipeline.CheckOrder(renew.Steps); err != nil {
		t.Fatal(err)
	}
}
