package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/system"

	"github.com/gpuaas/provision/internal/diag"
)

// StopGrace is how long a run may take to wind down after SIGTERM or SIGINT
// before Main ends it anyway. Every write provision makes is crash-safe (the
// SIGKILL tests prove it), so ending it is always safe; waiting a little
// lets it print its report.
const StopGrace = 5 * time.Second

// Interrupted is the cause Main gives the run's context when a signal
// arrives; printReport turns a failure under it into the signal's exit code.
type Interrupted struct{ Signal os.Signal }

func (i *Interrupted) Error() string { return "interrupted by " + signalName(i.Signal) }

// SignalExit is the exit code of a run ended by sig: 128 + its number, as a
// shell reports it (SIGTERM 143, SIGINT 130).
func SignalExit(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return ExitInternal
}

func signalName(sig os.Signal) string {
	switch sig {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return sig.String()
}

// interruptedBy returns the signal that cancelled ctx, or nil.
func interruptedBy(ctx context.Context) *Interrupted {
	if ctx == nil {
		return nil
	}
	var i *Interrupted
	if errors.As(context.Cause(ctx), &i) {
		return i
	}
	return nil
}

// Main runs the command line as the process does: the first SIGTERM or
// SIGINT on sigs cancels the run (network calls, backoff sleeps and the lock
// wait all end), and the run ends with the signal's exit code (SignalExit)
// and its report, in JSON too. If the run has not returned within grace, or
// a second signal arrives, Main returns anyway with the same code, printing
// the JSON report itself when the run had not printed one. The process never
// outlives a SIGTERM by more than grace.
func Main(args []string, stdout, stderr io.Writer, sigs <-chan os.Signal, grace time.Duration) int {
	return MainWithHook(args, stdout, stderr, sigs, grace, nil)
}

// MainWithHook is Main with crash points: hook is set on every Host the run
// builds (system.Host.Hook). Only the crash tests' build of the binary
// passes one.
func MainWithHook(args []string, stdout, stderr io.Writer, sigs <-chan os.Signal, grace time.Duration, hook system.Hook) int {
	ctx, cancel := context.WithCancelCause(system.WithHook(context.Background(), hook))
	defer cancel(nil)
	out := &stopWriter{w: stdout}
	done := make(chan int, 1)
	go func() { done <- Run(ctx, args, out, stderr) }()
	var sig os.Signal
	select {
	case code := <-done:
		return code
	case sig = <-sigs:
	}
	cancel(&Interrupted{Signal: sig})
	fmt.Fprintf(stderr, "provision: received %s: stopping (every write is crash-safe; run it again to finish)\n", signalName(sig))
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case code := <-done:
		return code
	case <-sigs:
	case <-timer.C:
	}
	fmt.Fprintf(stderr, "provision: the run did not stop within %s of %s; exiting now (exit %d)\n", grace, signalName(sig), SignalExit(sig))
	if !out.stop() && (wantsJSON(args) || (underJournal(stdout) && !formatGiven(args))) {
		cmd := ""
		if len(args) > 0 {
			cmd = args[0]
		}
		env := &runEnv{stdout: stdout, stderr: stderr}
		printJSON(env, interruptedReport(cmd, sig, nil), SignalExit(sig))
	}
	return SignalExit(sig)
}

// interruptedReport is the report of a run a signal ended; r is what the run
// had found so far (nil when it never got to report).
func interruptedReport(cmd string, sig os.Signal, r *report.Report) *report.Report {
	summary := fmt.Sprintf("interrupted by %s before it finished", signalName(sig))
	if r != nil && r.Summary != "" {
		summary += fmt.Sprintf(" (it was at layer %s: %s)", r.FailedLayer, r.Summary)
	}
	f := &diag.Finding{Layer: LayerInterrupted, Owner: diag.Node, Transient: true, Summary: summary,
		Remedy: "run provision " + cmd + " again: an interrupted run leaves the old state or the new one, never a mix, and a token not yet sent is still usable"}
	if r == nil {
		return report.Failed(cmd, "", "interrupted", f)
	}
	r.OK = false
	r.FailedLayer, r.Owner, r.Summary, r.Remedy, r.Transient = f.Layer, f.Owner, f.Summary, f.Remedy, true
	if r.FailedCheck == "" {
		r.FailedCheck = "interrupted"
	}
	return r
}

// stopWriter passes writes through until stop; after it, writes are
// dropped, so a run still winding down cannot add a second report after
// Main printed one.
type stopWriter struct {
	mu      sync.Mutex
	w       io.Writer
	wrote   bool
	stopped bool
}

func (s *stopWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return len(p), nil
	}
	s.wrote = s.wrote || len(p) > 0
	return s.w.Write(p)
}

// stop drops every later write and reports whether anything was written.
func (s *stopWriter) stop() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	return s.wrote
}
