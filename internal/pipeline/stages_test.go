package pipeline

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// TestCheckOrder: a list in which a step reads a stage no earlier step
// writes, or two steps write one stage, is refused, naming the step.
func TestCheckOrder(t *testing.T) {
	nop := func(*Run) *diag.Finding { return nil }
	judge := Step{Name: "assess", Do: nop, Reads: []Stage{StageObserved}, Writes: StageJudged}
	tests := []struct {
		name  string
		steps []Step
		want  string // "" for a good list
	}{
		{"the shared order", []Step{SweepStep, RestrictStep, RootsStep, judge, ClockStep, KeyStoreStep, ObtainStep, ProveStep, PublishStep, RevokeStep, ReceiptStep, HookStep}, ""},
		{"the proof before the credentials", []Step{RootsStep, judge, ProveStep, ObtainStep}, "step proof reads stage obtained"},
		{"assess before the roots", []Step{judge, RootsStep}, "step assess reads stage observed"},
		{"publish without a proof", []Step{RootsStep, judge, ObtainStep, PublishStep}, "step publish reads stage proven"},
		{"two steps write one stage", []Step{RootsStep, judge, judge}, "writes stage judged, which step assess wrote"},
	}
	for _, tt := range tests {
		err := CheckOrder(tt.steps)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: got %v, want an error with %q", tt.name, err, tt.want)
		}
	}
}

// TestStagesHeldAtRunTime: a step that reads a stage it did not declare,
// or one no step wrote, or does not write the stage it declares, ends the
// run as a bug (layer internal); a stage no step wrote reads as its zero
// value, never as a nil to panic on.
func TestStagesHeldAtRunTime(t *testing.T) {
	var read Plan
	readsJudged := func(r *Run) *diag.Finding {
		read = r.Judged().Plan
		return nil
	}
	writesJudged := func(r *Run) *diag.Finding {
		r.SetJudged(&Judged{Plan: Renew})
		return nil
	}
	tests := []struct {
		name  string
		steps []Step
		want  string
	}{
		{"undeclared read", []Step{{Name: "a", Do: writesJudged, Writes: StageJudged}, {Name: "b", Do: readsJudged}}, "step b reads stage judged without declaring it"},
		{"read before written", []Step{{Name: "b", Do: readsJudged, Reads: []Stage{StageJudged}}}, "step b reads stage judged before any step wrote it"},
		{"undeclared write", []Step{{Name: "a", Do: writesJudged}}, "step a writes stage judged without declaring it"},
		{"declared write not made", []Step{{Name: "a", Do: func(*Run) *diag.Finding { return nil }, Writes: StageJudged}}, "step a did not write stage judged"},
		{"written twice", []Step{{Name: "a", Do: writesJudged, Writes: StageJudged}, {Name: "c", Do: writesJudged, Writes: StageJudged}}, "stage judged written twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := testRun(t)
			out := r.Execute(tt.steps, nil)
			rep := out.Report
			if rep.OK || rep.FailedLayer != diag.Internal || !strings.Contains(rep.Summary, tt.want) {
				t.Fatalf("report ok=%v layer %s %q, want a failure at internal with %q", rep.OK, rep.FailedLayer, rep.Summary, tt.want)
			}
		})
	}
	// The control: declared, written, then read.
	read = Keep
	r := testRun(t)
	if rep := r.Execute([]Step{{Name: "a", Do: writesJudged, Writes: StageJudged}, {Name: "b", Do: readsJudged, Reads: []Stage{StageJudged}}}, nil).Report; !rep.OK {
		t.Fatalf("a declared read of a written stage failed: %s", rep.Summary)
	}
	if read != Renew {
		t.Fatalf("step b read plan %s, want the renew step a wrote", read)
	}
}

func testRun(t *testing.T) *Run { return testRunWith(t, Options{}) }

// testRunWith is a run on a fresh root with options o.
func testRunWith(t *testing.T, o Options) *Run {
	t.Helper()
	host, err := system.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{NodeID: "node-1"}
	cfg.Paths.StateDir, cfg.Paths.PKIDir = "/state", "/pki"
	cfg.Bootstrap.Deadline.Duration = 1e9
	r, cancel := New(context.Background(), "test", cfg, host, o)
	t.Cleanup(cancel)
	return r
}

// TestMeanwhileSettled: work a step leaves to run meanwhile (the hosts
// block made durable, the token's removal after an enrollment) is done
// before publish runs, and before a run that stopped earlier ends: no step
// from publish on, and nothing after the run, sees it unfinished; and its
// failure fails the run at publish, before anything is published.
func TestMeanwhileSettled(t *testing.T) {
	var done atomic.Bool
	var failure *diag.Finding
	later := func(r *Run) *diag.Finding {
		done.Store(false)
		f := failure
		r.Meanwhile(func() *diag.Finding {
			time.Sleep(20 * time.Millisecond) // so that only a wait can see it done
			done.Store(true)
			return f
		})
		r.SetObtained(&Obtained{})
		return nil
	}
	proven := func(r *Run) *diag.Finding {
		r.setProven(&Proven{Report: &report.Report{OK: true}})
		return nil
	}
	var seen bool
	check := func(*Run) *diag.Finding {
		seen = done.Load()
		return nil
	}
	fail := func(*Run) *diag.Finding { return &diag.Finding{Layer: diag.Enroll, Summary: "stop"} }
	obtain := Step{Name: "obtain", Do: later, Writes: StageObtained}
	prove := Step{Name: "prove", Do: proven, Writes: StageProven}

	r := testRun(t)
	if rep := r.Execute([]Step{obtain, prove, PublishStep, {Name: "check", Do: check}}, nil).Report; !rep.OK {
		t.Fatalf("run failed: %s", rep.Summary)
	}
	if !seen {
		t.Error("a step after publish saw the work started meanwhile unfinished: publish did not settle it")
	}
	r = testRun(t)
	if rep := r.Execute([]Step{obtain, {Name: "fail", Do: fail}}, nil).Report; rep.OK {
		t.Fatal("the failing step did not end the run")
	}
	if !done.Load() {
		t.Error("a run that stopped before publish ended with the work started meanwhile unfinished")
	}
	failure = &diag.Finding{Layer: diag.Hosts, Summary: "not durable"}
	seen = false
	r = testRun(t)
	rep := r.Execute([]Step{obtain, prove, PublishStep, {Name: "check", Do: check}}, nil).Report
	if rep.OK || rep.FailedLayer != diag.Hosts || rep.FailedCheck != "publish" || seen {
		t.Errorf("report ok=%v layer %s check %q, later step ran %v: want the meanwhile failure to fail publish", rep.OK, rep.FailedLayer, rep.FailedCheck, seen)
	}
}

// TestDurableSettled: what the command left to make durable (cli's new
// directory marks, Options.Durable) runs meanwhile from the run's start,
// is done before publish, and its failure fails publish at layer state,
// with the disk's remedy, before anything is published.
func TestDurableSettled(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"made durable", nil},
		{"fsync failed", errors.New("making the marks of /state and /pki durable: input/output error")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var done atomic.Bool
			started := make(chan struct{})
			r := testRunWith(t, Options{Durable: func() error {
				close(started)
				time.Sleep(20 * time.Millisecond) // so that only a wait can see it done
				done.Store(true)
				return tc.err
			}})
			var seen bool
			steps := []Step{
				{Name: "obtain", Do: func(r *Run) *diag.Finding {
					r.SetObtained(&Obtained{})
					select { // it runs meanwhile, from the run's start
					case <-started:
						return nil
					case <-time.After(5 * time.Second):
						return &diag.Finding{Layer: diag.Internal, Summary: "Durable did not start with the run"}
					}
				}, Writes: StageObtained},
				{Name: "prove", Do: func(r *Run) *diag.Finding { r.setProven(&Proven{Report: &report.Report{OK: true}}); return nil }, Writes: StageProven},
				PublishStep,
				{Name: "check", Do: func(*Run) *diag.Finding { seen = done.Load(); return nil }},
			}
			rep := r.Execute(steps, nil).Report
			if tc.err == nil {
				if !rep.OK || !seen {
					t.Fatalf("ok=%v (%s), a step after publish saw it done: %v; want ok and done", rep.OK, rep.Summary, seen)
				}
				return
			}
			if rep.OK || rep.FailedLayer != diag.State || rep.FailedCheck != "state-dir" || !strings.Contains(rep.Remedy, "nothing was published") || seen {
				t.Fatalf("ok=%v layer %s check %q remedy %q, later step ran %v: want publish stopped at state-dir", rep.OK, rep.FailedLayer, rep.FailedCheck, rep.Remedy, seen)
			}
		})
	}
}

// TestWriteRecords: the receipt the receipt step made is written as the run
// ends, with the renew record, both whole; a receipt that cannot be written
// fails the run at layer state, the receipt step marked failed, and no
// receipt is claimed.
func TestWriteRecords(t *testing.T) {
	r := testRun(t)
	r.receipt = &state.Receipt{NodeID: "node-1", Serial: "17"}
	rep := &report.Report{OK: true, Command: "test", Steps: []report.Step{{Name: ReceiptStep.Name, Status: "ok"}}}
	r.WriteRecords(rep, &state.Renewal{NodeID: "node-1", Serial: "17"})
	if !rep.OK || r.Out.Receipt == nil || r.Out.Record == nil {
		t.Fatalf("report ok=%v %q, receipt %v, record %v", rep.OK, rep.Summary, r.Out.Receipt, r.Out.Record)
	}
	if rc, err := state.ReadReceipt(r.StateDir); err != nil || rc.Serial != "17" {
		t.Errorf("receipt on disk: %+v %v", rc, err)
	}
	if rec := state.ReadRenewal(r.StateDir); rec == nil || rec.Serial != "17" {
		t.Errorf("renew record on disk: %+v", rec)
	}

	r = testRun(t)
	if err := os.MkdirAll(filepath.Join(r.StateDir, state.ReceiptFile), 0o700); err != nil {
		t.Fatal(err)
	}
	r.receipt = &state.Receipt{NodeID: "node-1", Serial: "18"}
	rep = &report.Report{OK: true, Command: "test", Steps: []report.Step{{Name: ReceiptStep.Name, Status: "ok"}}}
	r.WriteRecords(rep, nil)
	if rep.OK || rep.FailedLayer != diag.State || !strings.Contains(rep.Summary, "receipt could not be written") {
		t.Fatalf("report ok=%v layer %s %q, want a failure at state naming the receipt", rep.OK, rep.FailedLayer, rep.Summary)
	}
	if len(rep.Steps) != 1 || rep.Steps[0].Status != "fail" || rep.Command != "test" || r.Out.Receipt != nil {
		t.Errorf("steps %+v, command %q, receipt %v: want the receipt step failed, the command kept, no receipt", rep.Steps, rep.Command, r.Out.Receipt)
	}
}
