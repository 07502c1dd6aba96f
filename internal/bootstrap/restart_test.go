package bootstrap

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/verify"
)

const invocation = "2c9f2f1d8a1b4b1e9f0e6c7d5a4b3c2d"

func stepNames(rep *report.Report) []string {
	var ns []string
	for _, s := range rep.Steps {
		ns = append(ns, s.Name+":"+s.Status)
	}
	return ns
}

// TestRunRestartSplay: a failed run leaves state_dir/last-failure.json; the
// next run, when it is the unit's own process, is a restart and waits its
// random delay (full jitter over bootstrap.restart_splay, at most half the
// deadline) in the step restart-splay, before ca-roots; the same run by
// hand does not wait; a run that succeeds forgets the failure.
func TestRunRestartSplay(t *testing.T) {
	n := prepareNode(t)
	n.cfg.Bootstrap.Deadline.Duration = time.Hour
	n.cfg.Bootstrap.RestartSplay.Duration = 10 * time.Minute
	tok, err := os.ReadFile(n.files.TokenPath)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(n.files.TokenPath) // the first run fails at enroll: no token
	var mu sync.Mutex
	var waits []time.Duration
	opts := func(inv string) pipeline.Options {
		return pipeline.Options{Ladder: verify.Ladder, Invocation: inv,
			Policy: retry.Policy{Base: time.Millisecond, Cap: 10 * time.Millisecond, Rand: func(n int64) int64 { return n - 1 }},
			Sleep: func(ctx context.Context, d time.Duration) error {
				mu.Lock()
				waits = append(waits, d)
				mu.Unlock()
				return ctx.Err()
			}}
	}
	splayWait := 10*time.Minute - 1 // the most Rand draws: the wait is the splay's

	out := Run(context.Background(), n.cfg, n.host, opts(invocation))
	rec := state.ReadFailure(n.files.StateDir)
	if out.Report.OK || rec == nil || rec.Layer != string(diag.Enroll) || rec.Owner == "" || rec.SinceBootNS <= 0 || rec.EndedAt.IsZero() {
		t.Fatalf("failed run: ok=%v, record %+v: want layer enroll, its owner, the boot clock and the end time", out.Report.OK, rec)
	}
	if slices.Contains(waits, splayWait) {
		t.Fatal("a first start waited its restart splay")
	}

	for _, tt := range []struct {
		name, invocation string
		wait             bool
	}{
		{"by hand: no wait", "", false},
		{"the unit's restart: waits, before ca-roots", invocation, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			waits = nil
			out := Run(context.Background(), n.cfg, n.host, opts(tt.invocation))
			steps := stepNames(out.Report)
			if i := slices.Index(steps, "restart-splay:ok"); i < 0 || steps[i+1] != "ca-roots:ok" {
				t.Fatalf("steps %v: want restart-splay:ok right before ca-roots", steps)
			}
			if got := slices.Contains(waits, splayWait); got != tt.wait {
				t.Fatalf("waited the splay: %v, want %v (waits %v)", got, tt.wait, waits)
			}
		})
	}

	if err := os.WriteFile(n.files.TokenPath, tok, 0o600); err != nil {
		t.Fatal(err)
	}
	out = Run(context.Background(), n.cfg, n.host, opts(invocation))
	if !out.Report.OK {
		t.Fatalf("with the token back: %s", out.Report.Summary)
	}
	if rec := state.ReadFailure(n.files.StateDir); rec != nil {
		t.Fatalf("the failure record survived a successful run: %+v", rec)
	}
	n.cfg.Bootstrap.Deadline.Duration = 4 * time.Minute // the wait is at most half the deadline
	state.WriteFailure(n.files.StateDir, rec0(t, n), nil)
	waits = nil
	Run(context.Background(), n.cfg, n.host, opts(invocation))
	if !slices.Contains(waits, 2*time.Minute-1) {
		t.Fatalf("waits %v: want the splay capped to half of a 4m deadline", waits)
	}
}

// rec0 is a failure that ended now, in this boot.
func rec0(t *testing.T, n *node) *state.Failure {
	t.Helper()
	b := n.host.Boot()
	return &state.Failure{EndedAt: b.Wall, BootID: b.ID, SinceBootNS: int64(b.Since), Layer: "ca", Owner: "ca"}
}

// TestRestartSplayInterrupted: the run's context (cancelled by SIGTERM in
// the binary) cuts the wait at once: the run ends at restart-splay, before
// anything reached the network, naming the earlier failure.
func TestRestartSplayInterrupted(t *testing.T) {
	n := prepareNode(t)
	n.cfg.Bootstrap.Deadline.Duration = time.Hour
	n.cfg.Bootstrap.RestartSplay.Duration = 10 * time.Minute
	if err := state.WriteFailure(n.files.StateDir, rec0(t, n), nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	waiting := make(chan struct{})
	sleep := func(ctx context.Context, d time.Duration) error {
		close(waiting)
		return retry.Sleep(ctx, d)
	}
	go func() {
		<-waiting
		cancel()
	}()
	out := Run(ctx, n.cfg, n.host, pipeline.Options{Ladder: verify.Ladder, Invocation: invocation, Sleep: sleep,
		Policy: retry.Policy{Rand: func(n int64) int64 { return n - 1 }}})
	steps := stepNames(out.Report)
	if out.Report.OK || out.Report.FailedCheck != "restart-splay" || steps[len(steps)-1] != "restart-splay:fail" {
		t.Fatalf("interrupted wait: ok=%v check %s steps %v: %s", out.Report.OK, out.Report.FailedCheck, steps, out.Report.Summary)
	}
	if out.Report.FailedLayer != diag.CA || out.Report.Remedy == "" {
		t.Errorf("layer %s remedy %q: want the earlier failure's layer and a remedy", out.Report.FailedLayer, out.Report.Remedy)
	}
}

// TestFailureRecordNeverThroughALink: a symbolic link planted at
// state_dir/last-failure.json is neither written through by a failed run
// nor read by the next (which is then no restart): the file it names
// stays as it was.
func TestFailureRecordNeverThroughALink(t *testing.T) {
	n := prepareNode(t)
	os.Remove(n.files.TokenPath) // the run fails at enroll
	outside := filepath.Join(t.TempDir(), "shadow")
	os.WriteFile(outside, []byte("root:x:0:0\n"), 0o600)
	link := filepath.Join(n.files.StateDir, state.FailureFile)
	os.MkdirAll(n.files.StateDir, 0o700)
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	if out := n.run(t); out.Report.OK {
		t.Fatal("bootstrap without a token reported OK")
	}
	if b, _ := os.ReadFile(outside); string(b) != "root:x:0:0\n" {
		t.Fatalf("the file the link names changed: %q", b)
	}
	if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the planted link was replaced: %v", err)
	}
	if rec := state.ReadFailure(n.files.StateDir); rec != nil {
		t.Fatalf("a record was read through the link: %+v", rec)
	}
}
