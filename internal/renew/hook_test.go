package renew_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/tests/controlplane"
)

// script writes an executable file into dir and returns its path.
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPostHook: renew.post_hook runs after the renewal is published, as an
// argv without a shell, with the new certificate's serial and paths in its
// environment. A hook that exits non-zero, that outlives
// renew.post_hook_timeout, or that cannot be executed at all is a failure
// at layer hook (exit 22), with its output in the summary, and the renewal
// stands: the new certificate is current and recorded.
func TestPostHook(t *testing.T) {
	n := bootstrapped(t, controlplane.Options{})
	dir := t.TempDir()
	out := filepath.Join(dir, "hook.out")
	marker := filepath.Join(dir, "shell-ran")

	// renewed runs renew --force with hook and checks that the renewal was
	// published whatever the hook did.
	renewed := func(t *testing.T, hook []string, timeout time.Duration) (summary string, layer diag.Layer, ok bool, rec *state.Renewal, took time.Duration) {
		t.Helper()
		n.cfg.Renew.PostHook = hook
		n.cfg.Renew.PostHookTimeout.Duration = timeout
		before := serial(n.current(t))
		t0 := time.Now()
		o := n.renew(t, true)
		took = time.Since(t0)
		if !o.Renewed {
			t.Fatalf("renew did not publish a renewal: %s (layer %s)", o.Report.Summary, o.Report.FailedLayer)
		}
		cur := serial(n.current(t))
		if cur == before || o.Record.Serial != cur {
			t.Fatalf("serial %s -> %s, record %s: the renewal must stand whatever the hook does", before, cur, o.Record.Serial)
		}
		if disk := state.ReadRenewal(n.files.StateDir); disk == nil || disk.Serial != cur || disk.Hook != o.Record.Hook || disk.LastResult != o.Record.LastResult {
			t.Fatalf("renew.json %+v does not record the run %+v", disk, o.Record)
		}
		return o.Report.Summary, o.Report.FailedLayer, o.Report.OK, o.Record, took
	}

	t.Run("success: argv without a shell, the new serial in its environment", func(t *testing.T) {
		hook := script(t, dir, "ok.sh", `#!/bin/sh
{ for a in "$@"; do printf 'arg=%s\n' "$a"; done
  printf 'serial=%s\nnode=%s\ncert=%s\nkey=%s\n' "$PROVISION_SERIAL" "$PROVISION_NODE_ID" "$PROVISION_CERT" "$PROVISION_KEY"; } > "`+out+`"
`)
		// Arguments a shell would expand or run: they must arrive as written.
		args := []string{"reload", "; touch " + marker, "$(touch " + marker + ")", "*", "$HOME"}
		summary, layer, ok, rec, _ := renewed(t, append([]string{hook}, args...), 10*time.Second)
		if !ok || layer != "" || rec.Hook != "ok" || rec.LastResult != state.Renewed {
			t.Fatalf("ok=%v layer %q hook %q result %q: %s", ok, layer, rec.Hook, rec.LastResult, summary)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatalf("the hook did not run: %v", err)
		}
		var want strings.Builder
		for _, a := range args {
			want.WriteString("arg=" + a + "\n")
		}
		want.WriteString("serial=" + rec.Serial + "\nnode=" + nodeID + "\ncert=" + filepath.Join(n.cfg.Paths.PKIDir, "cert.pem") + "\nkey=" + filepath.Join(n.cfg.Paths.PKIDir, "key.pem") + "\n")
		if string(b) != want.String() {
			t.Fatalf("the hook saw\n%s\nwant\n%s", b, want.String())
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatal("an argument was run by a shell")
		}
	})

	t.Run("non-zero exit: layer hook, output quoted, renewal kept", func(t *testing.T) {
		hook := script(t, dir, "fail.sh", "#!/bin/sh\necho 'node-agent: reload refused' >&2\nexit 3\n")
		summary, layer, ok, rec, _ := renewed(t, []string{hook}, 10*time.Second)
		if ok || layer != diag.Hook || rec.LastResult != state.HookFailed || !strings.HasPrefix(rec.Hook, "failed: ") {
			t.Fatalf("ok=%v layer %q result %q hook %q", ok, layer, rec.LastResult, rec.Hook)
		}
		for _, w := range []string{"renewal published (serial " + rec.Serial + "), but renew.post_hook failed", "exit status 3", "node-agent: reload refused"} {
			if !strings.Contains(summary, w) {
				t.Errorf("summary %q lacks %q", summary, w)
			}
		}
	})

	t.Run("timeout: a hook failure, ended on time", func(t *testing.T) {
		hook := script(t, dir, "hang.sh", "#!/bin/sh\nexec sleep 60\n")
		summary, layer, ok, rec, took := renewed(t, []string{hook}, time.Second)
		if ok || layer != diag.Hook || rec.LastResult != state.HookFailed {
			t.Fatalf("ok=%v layer %q result %q: %s", ok, layer, rec.LastResult, summary)
		}
		if !strings.Contains(summary, "did not finish within renew.post_hook_timeout (1s)") {
			t.Errorf("summary %q does not name the timeout", summary)
		}
		if took > 20*time.Second {
			t.Errorf("renew took %s with a 1s hook timeout", took)
		}
	})

	t.Run("never a shell: a script without #! is not run", func(t *testing.T) {
		// A shell would run this file as a script; exec(2) refuses it.
		hook := script(t, dir, "noshebang", "touch "+marker+"\n")
		summary, layer, ok, _, _ := renewed(t, []string{hook}, 10*time.Second)
		if ok || layer != diag.Hook || !strings.Contains(summary, "exec format error") {
			t.Fatalf("ok=%v layer %q: %s", ok, layer, summary)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatal("the hook was run through a shell")
		}
	})

	t.Run("no hook: nothing recorded", func(t *testing.T) {
		_, _, ok, rec, _ := renewed(t, nil, 30*time.Second)
		if !ok || rec.Hook != "" {
			t.Fatalf("ok=%v hook %q, want no hook outcome", ok, rec.Hook)
		}
	})
}

// TestPostHookAfterUnprovenPublish: the node API fails every request alike
// (503 for the installed set and the renewed one), so the liveness rule
// publishes the renewal without a passing proof. The credentials the
// node-agent reads changed, so the hook is due from that run on (recorded
// before the swap) and runs in that very run, with the new serial, though
// its proof failed: the node-agent is told about the set it must load
// whatever the proof says. A later run whose proof passes does not run it
// again.
func TestPostHookAfterUnprovenPublish(t *testing.T) {
	n := bootstrapped(t, controlplane.Options{})
	out := filepath.Join(t.TempDir(), "hook.out")
	n.cfg.Renew.PostHook = []string{script(t, filepath.Dir(out), "ok.sh", "#!/bin/sh\necho \"serial=$PROVISION_SERIAL\" >> "+out+"\n")}
	n.cfg.Renew.PostHookTimeout.Duration = 10 * time.Second
	before := serial(n.current(t))
	n.cp.API.FailAlways(controlplane.StatusFault(503))
	o := n.renew(t, true)
	cur := serial(n.current(t))
	if !o.Renewed || cur == before || o.Record.Unproven == "" || o.Record.HookPending || o.Record.Hook != "ok" || o.Report.OK {
		t.Fatalf("renew during a node API outage: ok %v, renewed %v, serial %s -> %s, unproven %q, hook %q pending %v: %s", o.Report.OK, o.Renewed, before, cur, o.Record.Unproven, o.Record.Hook, o.Record.HookPending, o.Report.Summary)
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "serial="+cur+"\n" {
		t.Fatalf("the hook in the unproven publish's run: %q (%v), want it run once with serial %s", b, err, cur)
	}
	n.cp.API.ClearFaults()
	o = n.renew(t, false)
	b, err := os.ReadFile(out)
	if err != nil || string(b) != "serial="+cur+"\n" {
		t.Fatalf("the hook after the outage: %q (%v), want it not run again (%s)", b, err, o.Report.Summary)
	}
	if !o.Report.OK || o.Record.HookPending || o.Record.Unproven != "" {
		t.Errorf("after the outage: ok %v, pending %v, unproven %q: %s", o.Report.OK, o.Record.HookPending, o.Record.Unproven, o.Report.Summary)
	}
}

// TestDamagedRecordHookPending is issue 31 item 4 through renew: a
// truncated renew.json may have held a pending post hook, and reading it
// as no record forgot the hook. renew, not due, keeps the damaged record
// aside under a timestamped name, unchanged, treats the hook as pending
// (fail toward telling the node-agent) and runs it, and writes a new
// record.
func TestDamagedRecordHookPending(t *testing.T) {
	n := bootstrapped(t, controlplane.Options{})
	dir := t.TempDir()
	ran := filepath.Join(dir, "ran")
	n.cfg.Renew.PostHook = []string{script(t, dir, "hook.sh", "#!/bin/sh\ntouch "+ran+"\n")}
	damaged := []byte(`{"node_id":"gpu-0042","serial":"4","hook_pen`)
	if err := os.WriteFile(filepath.Join(n.files.StateDir, state.RenewalFile), damaged, 0o644); err != nil {
		t.Fatal(err)
	}
	o := n.renew(t, false)
	if !o.Report.OK || o.Renewed {
		t.Fatalf("renew: ok=%v renewed=%v: %s", o.Report.OK, o.Renewed, o.Report.Summary)
	}
	if _, err := os.Stat(ran); err != nil {
		t.Fatalf("the hook a damaged record may have held did not run: %v", err)
	}
	ds := state.FindDamage(n.files.StateDir)
	if len(ds) != 1 || ds[0].File != state.RenewalFile || !strings.HasPrefix(ds[0].Aside, "renew.json.damaged-") {
		t.Fatalf("damage after renew = %+v, want renew.json kept aside", ds)
	}
	if b, _ := os.ReadFile(filepath.Join(n.files.StateDir, ds[0].Aside)); string(b) != string(damaged) {
		t.Fatalf("the record kept aside holds %q", b)
	}
	rec, err := state.LoadRenewal(n.files.StateDir)
	if err != nil || rec == nil || rec.Hook != "ok" || rec.HookPending {
		t.Fatalf("the new record: %+v, %v; want the hook done", rec, err)
	}
}
