package boot

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
)

// certLifetime is what the lab's step-ca issues: short enough that the
// renew timer renews inside a test, long enough that a busy machine never
// sees a certificate expire before its renewal.
const certLifetime = 2 * time.Minute

// renewConfig is [renew] of a node in these tests: due after fraction of
// the lifetime, no splay, the probe hook then (when set) its real job.
func renewConfig(fraction float64, then string) *controlplane.RenewConfig {
	return &controlplane.RenewConfig{Fraction: fraction, Splay: "0s", PostHook: probeHook(then)}
}

// keyGroup is paths.key_group of TestBootFirstBoot's node: the stand-in
// node-agent's group.
const keyGroup = "node-agent"

// TestBootFirstBoot boots a node the way a rack does: an image with
// nothing but the package installed (dpkg in the image's root: no unit
// enabled by hand) and a node-agent of its own, which runs as user agent
// and reads its identity through paths.key_group; the seed from `provision
// userdata`. It judges the first boot and that renewal is scheduled by the
// package and the user-data alone; then the node API goes down before the
// renewal is due, and the renew timer renews across the outage (the
// liveness rule publishes the certificate both sets fail alike with, and
// its hook reloads the agent at once); once the API is back the next renew
// proves it, and the agent polls with the new certificate and reads a task
// verify handed off.
// Then a reboot.
func TestBootFirstBoot(t *testing.T) {
	require(t)
	l := startLab(t, certLifetime, false)
	n := newNode(t, "gpu-boot-1")
	cfg := l.nodeConfig(n.id)
	cfg.Paths.KeyGroup = keyGroup
	// Due at half the lifetime: a minute after bootstrap, time enough to
	// take the API down first on a busy machine.
	cfg.Renew = renewConfig(0.5, "systemctl reload node-agent.service")
	n.addAgent(keyGroup, cfg.NodeAPI.URL+strings.ReplaceAll(cfg.NodeAPI.WaitPath, "{node_id}", n.id)+"?timeout=1")
	ud := n.seed(l.operatorFiles(cfg, ""))
	for _, unit := range []string{"provision.service", "provision-verify.service", "provision-renew.service"} {
		if !strings.Contains(ud, "/etc/systemd/system/"+unit+".d/provision-key-group.conf") {
			t.Fatalf("the user-data has no key-group drop-in for %s:\n%s", unit, ud)
		}
	}
	n.fastTimers("15s", "10s")
	// node_exporter's package would ship this directory; provision never
	// creates it.
	n.write(defaultPaths.metrics+"/.keep", "", 0o644)

	c := n.boot()
	status, done := c.cloudInit()
	if !done || !strings.Contains(status, "status: done") || !strings.Contains(status, "DataSourceNoCloud") {
		t.Fatalf("cloud-init on first boot:\n%s", status)
	}
	// The node API goes down (every request 503) before anything is due.
	l.api.FailAlways(controlplane.StatusFault(503))
	t.Logf("first boot: cloud-init done %s after nspawn started; system %s", time.Since(c.booted).Round(100*time.Millisecond), c.waitBooted())
	c.checkBootstrapped(defaultPaths)
	c.checkRenewScheduled()
	n.checkKeyGroupModes(keyGroup)
	first := n.serialOf(defaultPaths.state)
	c.waitAgent("the node-agent, user agent, to read the key", first, false)

	// The renewal falls due during the outage: the proof of the new
	// certificate fails as the installed one's does, so the liveness rule
	// publishes it, and its hook reloads the agent in that run, whatever
	// the proof said. Once the API is back, the next renew proves it.
	rec := c.waitRenewed(defaultPaths, first, true)
	t.Logf("renewed during the outage: serial %s -> %s at %s (%s)", rec.PreviousSerial, rec.Serial, rec.LastRenewed.Format(time.TimeOnly), rec.Unproven)
	l.api.ClearFaults()
	back := time.Now()
	c.waitHook(rec.Serial)
	c.waitAgent("the post_hook to reload the node-agent with the renewed certificate", rec.Serial, false)
	c.waitAgent("the node-agent to poll with the renewed certificate once the API is back", rec.Serial, true)
	c.handOffToAgent(l, n.id)
	waitFor(t, "a renew run to prove the certificate published without a proof", 3*time.Minute, func() (bool, string) {
		raw := n.read(defaultPaths.state + "/renew.json")
		var r renewRecord
		json.Unmarshal([]byte(raw), &r)
		return r.Unproven == "" && r.LastAttempt.After(back), raw
	})
	// A verify that began during the outage may end just after it (a 503
	// answers at once): judge those that began after it.
	c.waitVerify(back.Add(10 * time.Second))
	n.checkMetrics(defaultPaths.metrics, "provision_verify.prom")
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
	c.checkRenewScheduled()
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
	// The unit as shipped: it retries a failed bootstrap after
	// RestartSec=30s, then waits its restart splay.

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
	cfg.Renew = renewConfig(0.25, "")
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
	rec := c.waitRenewed(p, n.serialOf(p.state), false)
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
