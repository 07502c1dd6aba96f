package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/cli"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// wantLayer is verify's ladder: each check name (an interface) and its
// layer. The order within the ladder may be tuned (which check runs first
// decides which of two is the root cause), so it is not pinned here beyond
// config first and tasks-wait, the proof, last.
var wantLayer = map[string]string{
	"config": "config", "hosts-block": "hosts", "hosts-resolve": "hosts", "hosts-persist": "hosts",
	"clock": "clock", "ca-root": "ca", "key-store": "credentials", "credentials": "credentials", "renew-timer": "credentials", "ca-chain": "ca", "tcp": "tcp",
	"tls-server": "tls-server", "tls-client-auth": "tls-client-auth", "route": "route",
	"identity": "identity", "tasks-wait": "tasks-wait",
}

// TestJSONReportAndReadOnlyVerify: --format json is one parseable report
// with the contract's fields, and verify writes nothing, healthy or not.
func TestJSONReportAndReadOnlyVerify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		bootstrap bool
		wantCode  int
		wantLayer string
		wantOwner string
	}{
		{"healthy node", true, 0, "", ""},
		{"node never bootstrapped", false, 10, "hosts", "node"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cp := controlplane.Start(t, controlplane.Options{})
			n := newNode(t, cp, true)
			if tc.bootstrap {
				r := n.RunJSON("bootstrap")
				nodetest.WantExit(t, r, 0)
				rep := r.Report
				if !rep.OK || rep.FailedLayer != "" || rep.Owner != "" || rep.Command != "bootstrap" || rep.NodeID != n.ID {
					t.Fatalf("bootstrap report: ok=%v failed_layer=%q owner=%q command=%q node_id=%q", rep.OK, rep.FailedLayer, rep.Owner, rep.Command, rep.NodeID)
				}
				checkLadder(t, rep, true)
			}
			before := snapshot(t, n.Root)
			r := n.RunJSON("verify")
			if tc.wantCode == 0 {
				nodetest.WantExit(t, r, 0)
				if !r.Report.OK || r.Report.Command != "verify" {
					t.Fatalf("verify not ok:\n%s", r)
				}
				checkLadder(t, r.Report, true)
			} else {
				nodetest.WantFailure(t, r, tc.wantCode, tc.wantLayer, tc.wantOwner)
				checkLadder(t, r.Report, false)
			}
			if d := diffSnapshots(before, snapshot(t, n.Root)); len(d) > 0 {
				t.Errorf("verify wrote under the root:\n%s", strings.Join(d, "\n"))
			}
		})
	}
}

// checkLadder requires every check of the ladder exactly once, config
// first and tasks-wait last, each with its layer, an owner, a message and a
// known status; all pass when healthy.
func checkLadder(t *testing.T, rep *nodetest.Report, healthy bool) {
	t.Helper()
	seen := map[string]bool{}
	for i, c := range rep.Checks {
		if l, ok := wantLayer[c.Name]; !ok || seen[c.Name] || l != c.Layer {
			t.Errorf("check %d %q (layer %q): unknown, repeated or in the wrong layer (want %q)", i, c.Name, c.Layer, l)
		}
		seen[c.Name] = true
		if c.Owner == "" || c.Message == "" {
			t.Errorf("check %s lacks layer/owner/message: %+v", c.Name, c)
		}
		switch c.Status {
		case "pass", "warn":
		case "fail", "skip":
			if healthy {
				t.Errorf("healthy report has check %s %s: %s", c.Name, c.Status, c.Message)
			}
		default:
			t.Errorf("check %s has unknown status %q", c.Name, c.Status)
		}
	}
	if len(seen) != len(wantLayer) {
		t.Errorf("report has %d distinct checks, want the %d of the ladder", len(seen), len(wantLayer))
	}
	if n := len(rep.Checks); n == 0 || rep.Checks[0].Name != "config" || rep.Checks[n-1].Name != "tasks-wait" {
		t.Errorf("the ladder must start with config and end with the proof, tasks-wait")
	}
}

// TestVerifyHandsOffEveryTask: verify's proof is the node-agent's own
// tasks/wait, so a task queued for the node is dequeued by it. Verify runs
// from a timer on every node: it must hand each task off exactly as
// bootstrap does (state_dir/tasks/<id>.json), or that work is lost. Three
// tasks are queued, verify runs four times; the node-agent's side holds
// each task exactly once, the API holds none, and verify wrote nothing
// else under the root.
func TestVerifyHandsOffEveryTask(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, true)
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	var queued []string
	for _, kind := range []string{"reboot", "reimage", "drain"} {
		queued = append(queued, cp.API.QueueTask(n.ID, controlplane.Task{Kind: kind}).ID)
	}
	before := snapshot(t, n.Root)
	tasksDir := filepath.Join(n.Files.StateDir, "tasks")
	for i := 0; i < len(queued)+1; i++ {
		r := n.RunJSON("verify")
		nodetest.WantExit(t, r, 0)
		var tw *nodetest.Check
		for j := range r.Report.Checks {
			if r.Report.Checks[j].Name == "tasks-wait" {
				tw = &r.Report.Checks[j]
			}
		}
		if i < len(queued) && (tw == nil || tw.Evidence["task_id"] != queued[i] || !strings.Contains(tw.Message, "handed off")) {
			t.Errorf("verify %d: tasks-wait does not show the hand-off of %s: %+v", i, queued[i], tw)
		}
	}
	got := map[string]int{}
	ents, err := os.ReadDir(tasksDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		var task controlplane.Task
		if err := json.Unmarshal(readFile(t, filepath.Join(tasksDir, e.Name())), &task); err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		got[task.ID]++
		if m := perm(t, filepath.Join(tasksDir, e.Name())); m != 0o600 {
			t.Errorf("%s is %04o, want 0600", e.Name(), m)
		}
	}
	for _, id := range queued {
		if got[id] != 1 {
			t.Errorf("task %s handed off %d times, want exactly once (hand-offs %v)", id, got[id], got)
		}
	}
	if len(got) != len(queued) {
		t.Errorf("hand-offs %v, want exactly the queued %v", got, queued)
	}
	if left := cp.API.Pending(n.ID); left != 0 {
		t.Errorf("%d tasks still queued at the API", left)
	}
	rel, _ := filepath.Rel(n.Root, tasksDir)
	for _, d := range diffSnapshots(before, snapshot(t, n.Root)) {
		if !strings.HasPrefix(d, "added "+rel+string(filepath.Separator)) && !strings.HasPrefix(d, "changed "+rel+":") {
			t.Errorf("verify wrote outside state_dir/tasks: %s", d)
		}
	}
	t.Logf("verify-hand-off: %d tasks queued, %d verify runs, each task handed off once", len(queued), len(queued)+1)
}

// BenchmarkVerifyHealthy measures provision verify on a bootstrapped node:
// the built binary with the default 1s long poll (what an operator runs),
// the same with a task queued before each run so the long poll answers at
// once (the tool's own cost: process start, config, CA roots, TLS), and
// in-process through cli.Run.
func BenchmarkVerifyHealthy(b *testing.B) {
	for _, bc := range []struct {
		name      string
		queue     bool
		inProcess bool
	}{
		{"binary/long-poll=1s", false, false},
		{"binary/task-queued", true, false},
		{"in-process/long-poll=1s", false, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cp := controlplane.Start(b, controlplane.Options{})
			n := newNode(b, cp, true)
			if r := n.Run("bootstrap"); r.Code != 0 {
				b.Fatalf("bootstrap:\n%s", r)
			}
			for b.Loop() {
				if bc.queue {
					cp.API.QueueTask(n.ID, controlplane.Task{Kind: "noop"})
				}
				if bc.inProcess {
					var out, errb bytes.Buffer
					if code := cli.Run(context.Background(), []string{"verify", "--root", n.Root}, &out, &errb); code != 0 {
						b.Fatalf("verify exit %d\n%s%s", code, out.String(), errb.String())
					}
					continue
				}
				if r := n.Run("verify"); r.Code != 0 {
					b.Fatalf("verify:\n%s", r)
				}
			}
		})
	}
}
