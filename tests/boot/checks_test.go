package boot

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
)

// paths are where a node keeps what the checks read: the config's
// state_dir, pki_dir and metrics.textfile_dir ("" when the node has no
// node_exporter directory).
type paths struct{ state, pki, metrics string }

var defaultPaths = paths{state: controlplane.DefaultStateDir, pki: controlplane.DefaultPKIDir, metrics: "/var/lib/prometheus/node-exporter"}

// hookTag is the syslog identifier the probe hook logs under.
const hookTag = "provision-hook"

// probeHook is a renew.post_hook that records, from inside the renew
// unit's sandbox, the serial it was handed and the sandbox it runs in:
// its capability sets, no_new_privs, its seccomp mode, and whether /usr
// is writable; into the journal (systemd-cat, over the journal's socket:
// no path of the node is opened for it). A hook inherits the unit's
// sandbox, so this is the sandbox renew itself ran under. then, when set,
// runs after it: the hook's real job, such as reloading the node-agent.
func probeHook(then string) []string {
	probe := "{ echo serial=$PROVISION_SERIAL; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; " +
		"if test -w /usr; then echo usr=writable; else echo usr=read-only; fi; } | systemd-cat -t " + hookTag
	if then != "" {
		probe += " && " + then
	}
	return []string{"/bin/sh", "-c", probe}
}

// sandboxed is what probeHook must record for each renewal: no
// capabilities, even with paths.key_group (the unit is then a member of
// the group instead).
var sandboxed = []string{"CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2", "usr=read-only"}

// checkBootstrapped judges a first boot that cloud-init reported done:
// provision.service ran once under its sandbox and succeeded, with one
// JSON report, and left what bootstrap promises.
func (c *container) checkBootstrapped(p paths) report {
	n, t := c.n, c.n.t
	t.Helper()
	s := c.show("provision.service", "ActiveState", "Result", "ExecMainStatus", "NRestarts")
	if s["ActiveState"] != "active" || s["Result"] != "success" || s["ExecMainStatus"] != "0" || s["NRestarts"] != "0" {
		t.Fatalf("provision.service after cloud-init: %v, want active, success, exit 0, no restart", s)
	}
	reps := c.waitReports("0", "provision.service", 1)
	lines := c.provisionLines("0", "provision.service")
	runs := map[string]bool{}
	for _, e := range lines {
		runs[e.str("_SYSTEMD_INVOCATION_ID")] = true
		// journald reads the writer's capabilities from /proc: the
		// unit's CapabilityBoundingSet= left provision none.
		if e.str("_COMM") == "provision" && e.str("_CAP_EFFECTIVE") != "0" {
			t.Errorf("provision ran with capabilities %s (want none: CapabilityBoundingSet=)", e.str("_CAP_EFFECTIVE"))
		}
	}
	if len(runs) != 1 || len(reps) != 1 {
		t.Fatalf("provision.service: %d invocations and %d JSON reports in the journal, want exactly one run with one report line", len(runs), len(reps))
	}
	r := reps[0]
	if !r.OK || r.Command != "bootstrap" || *r.ExitCode != 0 || r.NodeID != n.id {
		t.Fatalf("bootstrap report: %+v", r)
	}
	c.checkSecurity()
	n.checkBootstrapFiles(p)
	if out, code := c.exec(10*time.Second, "test", "-e", "/run/provision/token"); code != 1 {
		t.Errorf("the one-time token is still in /run/provision after bootstrap (test -e: exit %d %s)", code, out)
	}
	if p.metrics != "" {
		n.checkMetrics(p.metrics, "provision_bootstrap.prom")
	}
	return r
}

// checkBootstrapFiles: the receipt for this node, the done marker of this
// install (its machine id), published credentials, and the hosts block
// next to the image's own lines.
func (n *node) checkBootstrapFiles(p paths) {
	t := n.t
	t.Helper()
	var receipt struct {
		NodeID    string `json:"node_id"`
		MachineID string `json:"machine_id"`
	}
	if err := json.Unmarshal([]byte(n.read(p.state+"/receipt.json")), &receipt); err != nil || receipt.NodeID != n.id {
		t.Fatalf("%s/receipt.json: %+v (%v)", p.state, receipt, err)
	}
	if mid := n.machineID(); mid == "" || receipt.MachineID != mid || !n.exists(p.state+"/done/"+mid) {
		t.Errorf("no done marker %s/done/%s for this install (receipt's machine id %q)", p.state, mid, receipt.MachineID)
	}
	for _, f := range []string{"current/cert.pem", "current/key.pem", "current/ca.pem"} {
		if !n.exists(p.pki + "/" + f) {
			t.Errorf("%s/%s missing", p.pki, f)
		}
	}
	hosts := n.read("/etc/hosts")
	block := hostsBlock(hosts)
	if !strings.Contains(block, controlplane.DefaultAPIHostname) || !strings.Contains(block, controlplane.DefaultCAHostname) ||
		!strings.Contains(hosts, "10.1.2.3\tbuild-cache.example.internal") {
		t.Errorf("/etc/hosts after bootstrap:\n%s", hosts)
	}
}

var exposure = regexp.MustCompile(`(?m)^(provision[a-z-]*\.service)\s+([0-9.]+)\s`)

// checkSecurity scores the units as systemd loaded them inside the node,
// drop-ins and all: the sandbox the services run under is the one CI
// scores offline (deploy/systemd, at most 2.0).
func (c *container) checkSecurity() {
	t := c.n.t
	t.Helper()
	out, _ := c.exec(time.Minute, "systemd-analyze", "security", "--no-pager", "provision.service", "provision-verify.service", "provision-renew.service")
	m := exposure.FindAllStringSubmatch(out, -1)
	if len(m) != 3 {
		t.Fatalf("systemd-analyze security inside the node:\n%s", out)
	}
	for _, u := range m {
		if v, err := strconv.ParseFloat(u[2], 64); err != nil || v > 2.0 {
			t.Errorf("%s loaded with exposure %s inside the node, want at most 2.0", u[1], u[2])
		}
	}
}

// checkMetrics: provision left file in the textfile directory and the
// real promtool accepts it.
func (n *node) checkMetrics(dir, file string) {
	t := n.t
	t.Helper()
	text := n.read(dir + "/" + file)
	if text == "" {
		t.Errorf("no metrics %s/%s", dir, file)
		return
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics %s: %v\n%s", file, err, out)
	}
}

// waitVerify waits for a verify run, started by provision-verify.timer,
// that began after since, and judges every verify report after since: all
// of them passed. It returns the time of the last one.
func (c *container) waitVerify(since time.Time) time.Time {
	t := c.n.t
	t.Helper()
	var last time.Time
	waitFor(t, "provision-verify.timer to run a verify after "+since.Format(time.TimeOnly), 4*time.Minute, func() (bool, string) {
		var after []report
		for _, r := range c.reports("0", "provision-verify.service") {
			if r.at.After(since) {
				after = append(after, r)
			}
		}
		for _, r := range after {
			if !r.OK {
				t.Fatalf("verify failed on a bootstrapped node: %s (%s, owner %s)", r.Summary, r.FailedLayer, r.Owner)
			}
			last = r.at
		}
		return len(after) > 0, strconv.Itoa(len(after)) + " verify reports"
	})
	if s := c.show("provision-verify.service", "Result"); s["Result"] != "success" {
		t.Errorf("provision-verify.service: %v", s)
	}
	return last
}

// renewRecord is state_dir/renew.json.
type renewRecord struct {
	Serial         string    `json:"serial"`
	LastResult     string    `json:"last_result"`
	LastAttempt    time.Time `json:"last_attempt"`
	LastRenewed    time.Time `json:"last_renewed"`
	PreviousSerial string    `json:"previous_serial"`
	Hook           string    `json:"hook"`
	Unproven       string    `json:"unproven"`
}

// waitRenewed waits for provision-renew.timer to renew the certificate
// bootstrap got (serial first) and judges the renewal: recorded in
// renew.json, the new certificate current, the post_hook run inside the
// sandbox with the new serial. During an outage (unproven) the renewal
// must have been published without a passing proof (its hook, run in
// that run all the same, is judged by waitHook after); else every renew
// run must have succeeded. It returns the record.
func (c *container) waitRenewed(p paths, first string, unproven bool) renewRecord {
	n, t := c.n, c.n.t
	t.Helper()
	var rec renewRecord
	waitFor(t, "provision-renew.timer to renew the bootstrap certificate", 5*time.Minute, func() (bool, string) {
		raw := n.read(p.state + "/renew.json")
		rec = renewRecord{}
		json.Unmarshal([]byte(raw), &rec)
		return !rec.LastRenewed.IsZero() && rec.Serial != first, raw
	})
	switch {
	case unproven && rec.Unproven == "":
		t.Errorf("renewed during the outage with a passing proof? renew.json %+v", rec)
	case !unproven:
		for _, r := range c.reports("0", "provision-renew.service") {
			if !r.OK || *r.ExitCode != 0 {
				t.Errorf("a renew run failed: %s (%s)", r.Summary, r.FailedLayer)
			}
		}
	}
	if !unproven {
		c.waitHook(rec.Serial)
	}
	if p.metrics != "" {
		n.checkMetrics(p.metrics, "provision_renew.prom")
	}
	return rec
}

// waitHook waits for the post_hook to have run for serial, and judges the
// sandbox it recorded from inside the renew unit.
func (c *container) waitHook(serial string) {
	t := c.n.t
	t.Helper()
	var hook string
	waitFor(t, "the post_hook's journal lines for serial "+serial, 2*time.Minute, func() (bool, string) {
		hook = ""
		for _, e := range c.journal("0", "SYSLOG_IDENTIFIER="+hookTag) {
			hook += e.str("MESSAGE") + "\n"
		}
		return strings.Contains(hook, "serial="+serial+"\n") && strings.Contains(hook, "usr="), hook
	})
	for _, want := range sandboxed {
		if !strings.Contains(hook, want) {
			t.Errorf("the post_hook (inside provision-renew.service) did not run sandboxed: no %q in\n%s", want, hook)
		}
	}
}

// serialOf is the serial of the node's current certificate, from the
// receipt bootstrap wrote.
func (n *node) serialOf(state string) string {
	var r struct{ Serial string }
	json.Unmarshal([]byte(n.read(state+"/receipt.json")), &r)
	return r.Serial
}

// checkRenewScheduled: renewal is scheduled by what the node was given
// alone (the package, the user-data): both timers enabled and waiting, as
// systemd itself says, and provision status reads the same offline.
func (c *container) checkRenewScheduled() {
	t := c.n.t
	t.Helper()
	for _, timer := range []string{"provision-renew.timer", "provision-verify.timer"} {
		if got := c.unitState(timer); got != "enabled active" {
			t.Errorf("%s is %s, want enabled and active with nothing but the package (and the user-data)", timer, got)
		}
	}
	out, _ := c.exec(30*time.Second, "provision", "status", "--format", "json")
	var st struct {
		RenewTimer struct{ State, Path string } `json:"renew_timer"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.RenewTimer.State != "enabled" {
		t.Errorf("provision status's renew_timer: %+v (%v)\n%s", st.RenewTimer, err, out)
	}
}

// checkKeyGroupModes: with paths.key_group the way to the key is the
// group's: state_dir 0710, pki_dir and the generation 0750, key.pem 0640,
// each in the group (its gid as the node's /etc/group has it).
func (n *node) checkKeyGroupModes(group string) {
	t := n.t
	t.Helper()
	gid := -1
	for _, l := range strings.Split(n.read("/etc/group"), "\n") {
		if f := strings.Split(l, ":"); len(f) > 2 && f[0] == group {
			gid, _ = strconv.Atoi(f[2])
		}
	}
	gen, _ := os.Readlink(n.path(defaultPaths.pki + "/current"))
	for p, want := range map[string]os.FileMode{
		defaultPaths.state: 0o710, defaultPaths.pki: 0o750,
		defaultPaths.pki + "/" + gen: 0o750, defaultPaths.pki + "/" + gen + "/key.pem": 0o640,
	} {
		st, err := os.Stat(n.path(p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if g := int(st.Sys().(*syscall.Stat_t).Gid); st.Mode().Perm() != want || g != gid {
			t.Errorf("%s is %04o group %d, want %04o group %s (%d)", p, st.Mode().Perm(), g, want, group, gid)
		}
	}
}

// agentEvent is one line of the stand-in node-agent (tests/boot/agent).
type agentEvent struct {
	Event  string `json:"event"`
	Serial string `json:"serial"`
	Status int    `json:"status"`
	UID    *int   `json:"uid"`
	File   string `json:"file"`
	Bytes  int    `json:"bytes"`
	Error  string `json:"error"`
}

// agentEvents are the node-agent's lines in this boot.
func (c *container) agentEvents() []agentEvent {
	var out []agentEvent
	for _, e := range c.journal("0", "_SYSTEMD_UNIT=node-agent.service") {
		var ev agentEvent
		if json.Unmarshal([]byte(e.str("MESSAGE")), &ev) == nil && ev.Event != "" {
			out = append(out, ev)
		}
	}
	return out
}

// waitAgent waits for the node-agent, running as its own user, to hold
// the certificate serial (loaded at its start or on the hook's reload) or,
// with polled, to have polled tasks/wait with it and been answered (200 or
// 204).
func (c *container) waitAgent(what, serial string, polled bool) {
	t := c.n.t
	t.Helper()
	waitFor(t, what, 2*time.Minute, func() (bool, string) {
		evs := c.agentEvents()
		for _, ev := range evs {
			if ev.UID != nil && *ev.UID == 0 {
				t.Fatalf("the stand-in node-agent runs as root: %+v", ev)
			}
			switch {
			case polled && ev.Event == "poll" && ev.Serial == serial && (ev.Status == 200 || ev.Status == 204):
				return true, ""
			case !polled && (ev.Event == "start" || ev.Event == "reload") && ev.Serial == serial:
				return true, ""
			}
		}
		if len(evs) > 4 {
			evs = evs[len(evs)-4:]
		}
		return false, fmt.Sprintf("last events: %+v", evs)
	})
}

// handOffToAgent queues a task while the node-agent is stopped, so that
// provision-verify.service's proof (the unit as shipped) is the poll that
// receives it and hands it off; the task file is the key group's, and the
// agent, started again, reads it.
func (c *container) handOffToAgent(l *lab, nodeID string) {
	n, t := c.n, c.n.t
	t.Helper()
	if out, code := c.exec(time.Minute, "systemctl", "stop", "node-agent.service"); code != 0 {
		t.Fatalf("systemctl stop node-agent.service: exit %d\n%s", code, out)
	}
	task := l.api.QueueTask(nodeID, controlplane.Task{Kind: "boot-test"})
	c.exec(2*time.Minute, "systemctl", "start", "provision-verify.service")
	file := defaultPaths.state + "/tasks/" + task.ID + ".json"
	if st, err := os.Stat(n.path(file)); err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("verify did not hand the task off readable by the key group: %s (%v)", file, err)
	}
	if out, code := c.exec(time.Minute, "systemctl", "start", "node-agent.service"); code != 0 {
		t.Fatalf("systemctl start node-agent.service: exit %d\n%s", code, out)
	}
	waitFor(t, "the node-agent to read the task verify handed off", time.Minute, func() (bool, string) {
		for _, ev := range c.agentEvents() {
			if ev.Event == "task" && ev.File == task.ID+".json" {
				return ev.Error == "" && ev.Bytes > 0, fmt.Sprintf("%+v", ev)
			}
		}
		return false, "no task event"
	})
}
