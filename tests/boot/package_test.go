package boot

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBootPackage installs, upgrades, removes and purges the .deb with dpkg
// inside a booted node, so the maintainer scripts run under systemd as on
// a live machine (an image build runs them without one: newNode). The node
// carries its config and token as a PXE image would (no cloud-init seed):
//
//   - install: postinst enables and starts both timers (systemctl and
//     provision status agree), and provision.service bootstraps under the
//     units just installed;
//   - the operator disables the verify timer; the upgrade to the next
//     version keeps it disabled and the renew timer enabled and running,
//     and does not run bootstrap again;
//   - remove: prerm stops the timers, the units are gone from systemd, the
//     node's key and state stay;
//   - purge: provision's files and the timers' enablement are gone, with
//     deb-systemd-helper's record of it.
func TestBootPackage(t *testing.T) {
	require(t)
	l := startLab(t, 0, false)
	n := bareNode(t, "gpu-boot-4")
	_, deb := image(t)
	next := nextDeb(t)
	debs := map[string]string{}
	for _, d := range []string{deb, next} {
		debs[d] = n.put(d, "/var/cache/provision-test/"+filepath.Base(d))
	}
	cfgFile, tokenFile := l.operatorFiles(l.nodeConfig(n.id), "")
	n.put(cfgFile, "/etc/provision/provision.toml")
	n.put(tokenFile, "/var/tmp/provision-token")

	c := n.boot()
	t.Logf("booted without the package: system %s", c.waitBooted())
	c.must(time.Minute, "dpkg", "-i", debs[deb])
	c.checkRenewScheduled()
	// /run is the booted node's own tmpfs: the token goes there from inside.
	c.must(time.Minute, "install", "-D", "-m", "0600", "/var/tmp/provision-token", "/run/provision/token")
	c.must(time.Minute, "rm", "/var/tmp/provision-token")
	c.must(5*time.Minute, "systemctl", "start", "provision.service")
	n.checkBootstrapFiles(defaultPaths)
	bootstrapped := c.show("provision.service", "ExecMainStartTimestampMonotonic")["ExecMainStartTimestampMonotonic"]

	// The operator's choice, then the upgrade.
	c.must(time.Minute, "systemctl", "disable", "--now", "provision-verify.timer")
	c.must(time.Minute, "dpkg", "-i", debs[next])
	if out := c.must(time.Minute, "provision", "version"); !strings.HasPrefix(out, "provision "+nextVersion+"\n") {
		t.Errorf("after the upgrade: %q, want provision %s", out, nextVersion)
	}
	for timer, want := range map[string]string{"provision-renew.timer": "enabled active", "provision-verify.timer": "disabled inactive"} {
		if got := c.unitState(timer); got != want {
			t.Errorf("after the upgrade %s is %s, want %s (an operator's disable survives the upgrade)", timer, got, want)
		}
	}
	if s := c.show("provision.service", "ExecMainStartTimestampMonotonic"); s["ExecMainStartTimestampMonotonic"] != bootstrapped {
		t.Errorf("the upgrade ran bootstrap again: started at %s, then %s", bootstrapped, s["ExecMainStartTimestampMonotonic"])
	}
	c.must(2*time.Minute, "systemctl", "start", "provision-verify.service")

	// Remove: the timers stop, the units go, the node's state stays.
	c.must(time.Minute, "dpkg", "-r", "provision")
	for _, u := range []string{"provision-renew.timer", "provision-verify.timer", "provision.service"} {
		if s := c.show(u, "LoadState", "ActiveState"); s["LoadState"] != "not-found" || s["ActiveState"] != "inactive" {
			t.Errorf("after dpkg -r %s is %v, want not-found and inactive", u, s)
		}
	}
	for _, p := range []string{defaultPaths.state + "/receipt.json", defaultPaths.pki + "/current/key.pem"} {
		if !n.exists(p) {
			t.Errorf("dpkg -r removed %s: the node's keys and state must stay until purge", p)
		}
	}

	// Purge: provision's files and the enablement go.
	c.must(time.Minute, "dpkg", "-P", "provision")
	for _, p := range []string{defaultPaths.state, "/etc/systemd/system/timers.target.wants/provision-renew.timer",
		"/etc/systemd/system/timers.target.wants/provision-verify.timer", "/var/lib/systemd/deb-systemd-helper-enabled/provision-renew.timer.dsh-also",
		"/var/lib/systemd/deb-systemd-helper-enabled/timers.target.wants/provision-renew.timer"} {
		if n.exists(p) {
			t.Errorf("%s is still there after dpkg -P", p)
		}
	}
	if out, code := c.exec(time.Minute, "test", "-e", "/run/provision"); code == 0 {
		t.Errorf("/run/provision is still there after dpkg -P %s", out)
	}
	if !n.exists("/etc/provision/provision.toml") {
		t.Errorf("dpkg -P removed the config, which the image or cloud-init wrote")
	}
}

// must runs a command inside the container and fails the test unless it
// exits 0; it returns the output.
func (c *container) must(timeout time.Duration, args ...string) string {
	c.n.t.Helper()
	out, code := c.exec(timeout, args...)
	if code != 0 {
		c.n.t.Fatalf("in %s: %s: exit %d\n%s", c.name, strings.Join(args, " "), code, out)
	}
	return out
}

// unitState is "is-enabled is-active" as systemctl answers them inside.
func (c *container) unitState(unit string) string {
	en, _ := c.exec(30*time.Second, "systemctl", "is-enabled", unit)
	act, _ := c.exec(30*time.Second, "systemctl", "is-active", unit)
	return strings.TrimSpace(en) + " " + strings.TrimSpace(act)
}
