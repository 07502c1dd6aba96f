package boot

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
)

// sigPoweroff is SIGRTMIN+4, which systemd as PID 1 takes as "power off"
// (systemd(1)); glibc's SIGRTMIN is 34.
const sigPoweroff = syscall.Signal(34 + 4)

// container is one boot of a node: its systemd-nspawn and the container's
// PID 1, both processes of this test.
type container struct {
	n       *node
	name    string
	nspawn  *exec.Cmd
	exited  chan struct{}
	pid1    int
	console *testenv.SyncBuffer
	booted  time.Time
}

// boot starts the node's root under systemd-nspawn with systemd as PID 1,
// sharing this machine's network namespace (the lab is on 127.0.0.1), and
// returns once PID 1 answers. --register=no --keep-unit: this machine's
// PID 1 is not systemd, so there is no machined to register with. The
// container is stopped at cleanup, by its own PID, whatever the test did.
func (n *node) boot() *container {
	n.t.Helper()
	suffix := make([]byte, 3)
	rand.Read(suffix)
	c := &container{n: n, name: "pboot-" + n.id + "-" + hex.EncodeToString(suffix), exited: make(chan struct{}), console: &testenv.SyncBuffer{}}
	c.nspawn = exec.Command("systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
		"--machine="+c.name, "--directory="+n.root)
	c.nspawn.Stdout, c.nspawn.Stderr = c.console, c.console
	// Its own session: a terminal signal to go test does not reach it, and
	// nspawn does not take over this process's terminal. Should the test
	// binary die without its cleanups (go test's -timeout), nspawn gets
	// SIGTERM, which powers the container off.
	c.nspawn.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGTERM}
	c.booted = time.Now()
	if err := c.nspawn.Start(); err != nil {
		n.t.Fatalf("systemd-nspawn: %v", err)
	}
	go func() {
		c.nspawn.Wait()
		close(c.exited)
	}()
	n.t.Cleanup(func() {
		if err := c.stop(); err != nil {
			n.t.Errorf("stopping container %s: %v", c.name, err)
		}
		if n.t.Failed() {
			c.logJournal()
		}
	})
	c.findPID1()
	return c
}

// findPID1 waits for the container's PID 1: the child of nspawn running
// systemd (nspawn's first child is short-lived), whose namespaces nsenter
// can enter.
func (c *container) findPID1() {
	t := c.n.t
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		select {
		case <-c.exited:
			t.Fatalf("systemd-nspawn exited before the container booted:\n%s", c.console.String())
		default:
		}
		if pid := childRunning(c.nspawn.Process.Pid, "systemd"); pid > 0 {
			if _, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-a", "true").CombinedOutput(); err == nil {
				c.pid1 = pid
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no systemd PID 1 under systemd-nspawn %d within a minute:\n%s", c.nspawn.Process.Pid, c.console.String())
}

// childRunning is the PID of a child of parent whose command is comm, or 0.
func childRunning(parent int, comm string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		i := bytes.LastIndexByte(stat, ')')
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 || f[1] != strconv.Itoa(parent) {
			continue
		}
		if c, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm")); strings.TrimSpace(string(c)) == comm {
			return pid
		}
	}
	return 0
}

// exec runs a command inside the container (nsenter into all of PID 1's
// namespaces) and returns its output and exit code; a command that could
// not run at all fails the test.
func (c *container) exec(timeout time.Duration, args ...string) (string, int) {
	t := c.n.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(c.pid1), "-a"}, args...)...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case ctx.Err() != nil:
		t.Fatalf("in %s: %s did not finish within %s:\n%s", c.name, strings.Join(args, " "), timeout, out)
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("in %s: %s: %v\n%s", c.name, strings.Join(args, " "), err, out)
	return "", 0
}

// show is `systemctl show unit -p prop...` inside, as a map.
func (c *container) show(unit string, props ...string) map[string]string {
	c.n.t.Helper()
	args := []string{"systemctl", "show", unit}
	for _, p := range props {
		args = append(args, "-p", p)
	}
	out, code := c.exec(30*time.Second, args...)
	if code != 0 {
		c.n.t.Fatalf("systemctl show %s: exit %d\n%s", unit, code, out)
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

// waitBooted waits for the end of the boot transaction inside (systemctl
// is-system-running --wait: running, or degraded when a unit failed) and
// returns the state. Right after PID 1 appears its bus may not be up yet
// ("Failed to connect to bus"): asked again until it answers a state.
func (c *container) waitBooted() string {
	var state string
	waitFor(c.n.t, "systemd in "+c.name+" to finish booting", 5*time.Minute, func() (bool, string) {
		out, _ := c.exec(5*time.Minute, "systemctl", "is-system-running", "--wait")
		state = strings.TrimSpace(out)
		switch state {
		case "running", "degraded", "maintenance", "stopping":
			return true, state
		}
		return false, state
	})
	return state
}

// cloudInit waits for cloud-init to finish this boot and returns `cloud-init
// status --long` and whether it reported done (exit 0; 1 is error).
func (c *container) cloudInit() (string, bool) {
	out, code := c.exec(5*time.Minute, "cloud-init", "status", "--wait", "--long")
	return out, code == 0
}

// stop powers the container off by its own PID (SIGRTMIN+4 to its PID 1)
// and waits for its nspawn; one that does not stop is killed, PID 1 first
// (which ends its PID namespace), then nspawn.
func (c *container) stop() error {
	select {
	case <-c.exited:
		return nil
	default:
	}
	if c.pid1 > 0 {
		syscall.Kill(c.pid1, sigPoweroff)
	} else {
		c.nspawn.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-c.exited:
		return nil
	case <-time.After(90 * time.Second):
	}
	if c.pid1 > 0 {
		syscall.Kill(c.pid1, syscall.SIGKILL)
	}
	c.nspawn.Process.Kill()
	<-c.exited
	return fmt.Errorf("did not power off within 90s; killed")
}

// entry is one journal entry (journalctl -o json).
type entry map[string]any

func (e entry) str(k string) string {
	s, _ := e[k].(string)
	return s
}

// at is the entry's time.
func (e entry) at() time.Time {
	us, _ := strconv.ParseInt(e.str("__REALTIME_TIMESTAMP"), 10, 64)
	return time.UnixMicro(us)
}

// journal reads the container's persistent journal from outside, from its
// files under the root: boot is journalctl's -b (0 this boot, -1 the one
// before), matches are journalctl field matches.
func (c *container) journal(boot string, matches ...string) []entry {
	return readJournal(c.n.t, c.n.path("/var/log/journal"), boot, matches...)
}

func readJournal(t *testing.T, dir, boot string, matches ...string) []entry {
	t.Helper()
	args := append([]string{"-D", dir, "-b", boot, "-o", "json", "--no-pager", "--all"}, matches...)
	out, err := exec.Command("journalctl", args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("journalctl %s: %v\n%s", strings.Join(args, " "), err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var es []entry
	for _, l := range bytes.Split(out, []byte("\n")) {
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		var e entry
		if err := json.Unmarshal(l, &e); err != nil {
			t.Fatalf("journalctl -o json gave a line that is not JSON: %v\n%s", err, l)
		}
		es = append(es, e)
	}
	return es
}

// logJournal shows, for a failed test, the last lines of what this boot
// logged about provision and cloud-init.
func (c *container) logJournal() {
	t := c.n.t
	args := []string{"-D", c.n.path("/var/log/journal"), "-b", "0", "-o", "short-monotonic", "--no-pager",
		"-u", "provision.service", "-u", "provision-verify.service", "-u", "provision-renew.service", "-u", "cloud-final.service", "-u", "cloud-init.service"}
	out, err := exec.Command("journalctl", args...).CombinedOutput()
	t.Logf("journal of %s (provision and cloud-init units, last lines; %v):\n%s", c.name, err, tail(string(out), 60))
}
