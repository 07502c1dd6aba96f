package boot

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
)

// certLifetime is what the lab's step-ca issues: short enough that the
// renew timer renews inside a test, long enough that a busy machine never
// sees a certificate expire before its renewal (renewFraction of it).
const (
	certLifetime  = 2 * time.Minute
	renewFraction = 0.25
)

// hookLog is where the probe hook writes: a directory of its own, not
// state_dir (provision refuses a state_dir holding files it did not write),
// opened to the renew unit's sandbox by a drop-in, as an operator whose
// hook writes somewhere would.
const hookLog = "/var/lib/provision-hook/post-hook.log"

// renewConfig is [renew] of a node in these tests: due after a quarter of
// the lifetime, no splay, the probe hook writing into hookLog.
func renewConfig() *controlplane.RenewConfig {
	return &controlplane.RenewConfig{Fraction: renewFraction, Splay: "0s", PostHook: probeHook(hookLog)}
}

// openHookLog makes the hook's directory and lets the renew unit write it.
func (n *node) openHookLog() {
	n.write(filepath.Dir(hookLog)+"/.keep", "", 0o644)
	n.dropIn("provision-renew.service", "[Service]\nReadWritePaths="+filepath.Dir(hookLog)+"\n")
}

// TestBootFirstBoot boots a healthy node with the .deb and a seed from
// `provision userdata`, lets the timers verify and renew it, and reboots
// it.
func TestBootFirstBoot(t *testing.T) {
	require(t)
	l := startLab(t, certLifetime, false)
	n := newNode(t, "gpu-boot-1")
	cfg := l.nodeConfig(n.id)
	cfg.Renew = renewConfig()
	n.openHookLog()
	n.seed(l.operatorFiles(cfg, ""))
	n.fastTimers("15s", "10s")
	// node_exporter's package would ship this directory; provision never
	// creates it.
	n.write(defaultPaths.metrics+"/.keep", "", 0o644)

	c := n.boot()
	status, done := c.cloudInit()
	if !done || !strings.Contains(status, "status: done") || !strings.Contains(status, "DataSourceNoCloud") {
		t.Fatalf("cloud-init on first boot:\n%s", status)
	}
	t.Logf("first boot: cloud-init done %s after nspawn started; system %s", time.Since(c.booted).Round(100*time.Millisecond), c.waitBooted())
	boot := c.checkBootstrapped(defaultPaths)
	c.waitVerify(boot.at)
	n.checkMetrics(defaultPaths.metrics, "provision_verify.prom")
	rec := c.waitRenewed(defaultPaths, n.serialOf(defaultPaths.state))
	t.Logf("renewed: serial %s -> %s at %s", rec.PreviousSerial, rec.Serial, rec.LastRenewed.Format(time.TimeOnly))
	c.waitVerify(rec.LastRenewed)
	hostsBefore := n.read("/etc/hosts")
	if err := c.stop(); err != nil {
		t.Fatal(err)
	}

	// The reboot: same root, a new boot.
	c = n.boot()
	if status, done := c.cloudInit(); !done {
		t.Fatalf("cloud-init on the second boot:\n%s", status)
	}
	if got := n.read("/etc/hosts"); got != hostsBefore {
		t.Errorf("/etc/hosts changed across the reboot (cloud-init's second boot):\nbefore:\n%s\nafter:\n%s", hostsBefore, got)
	}
	if s := c.show("provision.service", "ConditionResult", "ExecMainStartTimestampMonotonic"); s["ConditionResult"] != "no" || s["ExecMainStartTimestampMonotonic"] != "0" {
		t.Errorf("provision.service on the second boot: %v, want skipped by its done-marker condition", s)
	}
	if lines := c.provisionLines("0", "provision.service"); len(lines) != 0 {
		t.Errorf("bootstrap ran again on the second boot: %d journal lines", len(lines))
	}
	c.waitVerify(c.booted)
}

// TestBootBrokenIngress boots a node whose ingress trusts the wrong client
// CA: the boot must not claim success, must name the layer and its owner,
// and the node must recover by itself once the ingress is fixed.
func TestBootBrokenIngress(t *testing.T) {
	require(t)
	l := startLab(t, 0, true)
	n := newNode(t, "gpu-boot-2")
	n.seed(l.operatorFiles(l.nodeConfig(n.id), ""))
	// The unit retries a failed bootstrap after RestartSec=30s; 10s here,
	// still well inside StartLimitBurst=6 per StartLimitIntervalSec=2h.
	n.dropIn("provision.service", "[Service]\nRestartSec=10s\n")

	c := n.boot()
	status, done := c.cloudInit()
	if done || !strings.Contains(status, "status: error") || !strings.Contains(status, "runcmd") {
		t.Fatalf("cloud-init claimed success, or failed for another reason, with the ingress broken:\n%s", status)
	}
	r := c.waitReports("0", "provision.service", 1)[0]
	if r.OK || r.FailedLayer != "tls-client-auth" || r.Owner != "ingress" || *r.ExitCode != 16 || r.Remedy == "" {
		t.Fatalf("first bootstrap report: %+v, want tls-client-auth, owner ingress, exit 16, with a remedy", r)
	}
	if mid := n.machineID(); n.exists(defaultPaths.state + "/done/" + mid) {
		t.Fatal("a done marker exists although bootstrap failed")
	}
	t.Logf("broken ingress: %s", r.Summary)

	l.fixIngress()
	waitFor(t, "provision.service's own restart to bootstrap the node once the ingress is fixed", 3*time.Minute, func() (bool, string) {
		s := c.show("provision.service", "ActiveState", "Result", "NRestarts")
		return s["ActiveState"] == "active" && s["Result"] == "success", strings.Join([]string{s["ActiveState"], s["Result"], "restarts " + s["NRestarts"]}, ", ")
	})
	var reps []report
	waitFor(t, "the successful run's report in the journal", time.Minute, func() (bool, string) {
		reps = c.reports("0", "provision.service")
		last := reps[len(reps)-1]
		return last.OK && *last.ExitCode == 0, fmt.Sprintf("last of %d reports: %+v", len(reps), last)
	})
	for _, r := range reps[:len(reps)-1] {
		if r.OK || r.FailedLayer != "tls-client-auth" {
			t.Errorf("a run before the fix: ok %v at %q, want tls-client-auth", r.OK, r.FailedLayer)
		}
	}
	// Under systemd itself (INVOCATION_ID, SYSTEMD_EXEC_PID, the sandbox
	// hiding the boot ID), every restart knew itself for one and waited
	// its random delay before its network work; the first start did not.
	runs, waited := c.splayed("0", "provision.service")
	if len(runs) != len(reps) || len(runs) < 2 {
		t.Errorf("%d runs logged, %d reports: want one run per report, and a restart", len(runs), len(reps))
	}
	t.Logf("under systemd: %d runs; restart-splay wait logged by each: %v", len(runs), func() (w []bool) {
		for _, id := range runs {
			w = append(w, waited[id])
		}
		return w
	}())
	for i, id := range runs {
		if waited[id] != (i > 0) {
			t.Errorf("run %d of %d (run_id %s): restart-splay wait logged %v, want %v", i+1, len(runs), id, waited[id], i > 0)
		}
	}
	n.checkBootstrapFiles(defaultPaths)
	if out, code := c.exec(2*time.Minute, "systemctl", "start", "provision-verify.service"); code != 0 {
		t.Errorf("verify after the recovery: exit %d\n%s", code, out)
	}
	// This node has no node_exporter: provision never creates its
	// directory, so it writes no metrics.
	if n.exists("/var/lib/prometheus") {
		t.Errorf("provision created /var/lib/prometheus on a node without node_exporter")
	}
}

// TestBootMovedPaths boots a node whose config moves state_dir, pki_dir and
// the metrics directory: only the drop-ins `provision userdata` writes let
// the sandboxed units write there.
func TestBootMovedPaths(t *testing.T) {
	require(t)
	l := startLab(t, certLifetime, false)
	n := newNode(t, "gpu-boot-3")
	p := paths{state: "/srv/provision", pki: "/srv/provision/pki", metrics: "/srv/metrics"}
	cfg := l.nodeConfig(n.id)
	cfg.Paths.StateDir, cfg.Paths.PKIDir = p.state, p.pki
	cfg.Renew = renewConfig()
	n.openHookLog()
	ud := n.seed(l.operatorFiles(cfg, "\n[metrics]\ntextfile_dir = \""+p.metrics+"\"\n"))
	for _, unit := range []string{"provision.service", "provision-verify.service", "provision-renew.service"} {
		if !strings.Contains(ud, "/etc/systemd/system/"+unit+".d/provision-paths.conf") {
			t.Fatalf("the user-data has no drop-in for %s:\n%s", unit, ud)
		}
	}
	n.fastTimers("15s", "10s")
	n.write(p.metrics+"/.keep", "", 0o644)

	c := n.boot()
	if status, done := c.cloudInit(); !done {
		t.Fatalf("cloud-init:\n%s", status)
	}
	boot := c.checkBootstrapped(p)
	if n.exists(defaultPaths.pki) || n.exists(defaultPaths.state+"/receipt.json") {
		t.Errorf("bootstrap wrote under the default paths too")
	}
	c.waitVerify(boot.at)
	n.checkMetrics(p.metrics, "provision_verify.prom")
	rec := c.waitRenewed(p, n.serialOf(p.state))
	c.waitVerify(rec.LastRenewed)
	if err := c.stop(); err != nil {
		t.Fatal(err)
	}

	c = n.boot()
	if status, done := c.cloudInit(); !done {
		t.Fatalf("cloud-init on the second boot:\n%s", status)
	}
	if s := c.show("provision.service", "ConditionResult"); s["ConditionResult"] != "no" {
		t.Errorf("provision.service on the second boot: %v, want skipped by the done marker under the moved state_dir", s)
	}
}
