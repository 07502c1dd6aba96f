package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
)

// stepVersion is the step CLI the operator's script is measured with, built
// from its module source as its own release is (CGO_ENABLED=0, -trimpath,
// -ldflags=-w).
const stepVersion = "v0.30.6"

// stepBinary returns the step CLI to measure: -step when given, else
// stepVersion built with the Go toolchain into the user's cache directory
// (once; later runs reuse it). The error says why there is none.
func stepBinary(flagged string) (string, error) {
	if flagged != "" {
		return flagged, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "provision-bench", "step-"+stepVersion)
	bin := filepath.Join(dir, "step")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	cmd := exec.Command(testenv.GoTool(), "install", "-trimpath", "-ldflags=-w", "github.com/smallstep/cli/cmd/step@"+stepVersion)
	cmd.Dir = os.TempDir() // outside this module: go install pkg@version builds it on its own go.mod
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install github.com/smallstep/cli/cmd/step@%s: %v\n%s", stepVersion, err, tailLines(out, 5))
	}
	return bin, nil
}

func tailLines(b []byte, n int) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return bytes.Join(lines[max(0, len(lines)-n):], []byte("\n"))
}

// hostsNS starts processes in a private mount namespace whose /etc/hosts
// also maps the control plane's hostnames to 127.0.0.1, as on a node where
// the operator's script runs: step resolves the CA's name through
// /etc/hosts, and the bench must not edit the machine's. The namespace is
// one OS thread's (locked, never released, so it ends with the thread);
// a process forked from that thread starts inside it.
type hostsNS struct{ start chan nsStart }

type nsStart struct {
	cmd  *exec.Cmd
	done chan error
}

// newHostsNS makes the namespace. It needs CAP_SYS_ADMIN (root).
func newHostsNS(work string) (*hostsNS, error) {
	orig, err := os.ReadFile("/etc/hosts")
	if err != nil {
		return nil, err
	}
	hosts := filepath.Join(work, "step-hosts")
	extra := fmt.Sprintf("\n127.0.0.1\t%s %s\n", controlplane.DefaultCAHostname, controlplane.DefaultAPIHostname)
	if err := os.WriteFile(hosts, append(orig, extra...), 0o644); err != nil {
		return nil, err
	}
	ns := &hostsNS{start: make(chan nsStart)}
	ready := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the namespace dies with this thread
		if err := enterHostsNS(hosts); err != nil {
			ready <- err
			return
		}
		ready <- nil
		for s := range ns.start {
			s.done <- s.cmd.Start()
		}
	}()
	return ns, <-ready
}

// enterHostsNS moves the calling thread into a new mount namespace, keeps
// its mounts from propagating back, and bind-mounts hosts on /etc/hosts.
func enterHostsNS(hosts string) error {
	if err := syscall.Unshare(syscall.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare(CLONE_NEWNS): %w (needs root)", err)
	}
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private in the new namespace: %w", err)
	}
	if err := syscall.Mount(hosts, "/etc/hosts", "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s on /etc/hosts: %w", hosts, err)
	}
	return nil
}

// run runs cmd inside the namespace and returns its wall time (from just
// before the fork to its exit), its CPU time and its combined output.
func (ns *hostsNS) run(cmd *exec.Cmd) (time.Duration, time.Duration, []byte, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error)
	t0 := time.Now()
	ns.start <- nsStart{cmd, done}
	if err := <-done; err != nil {
		return 0, 0, nil, err
	}
	err := cmd.Wait()
	d := time.Since(t0)
	var cpu time.Duration
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		return d, cpu, out.Bytes(), errors.New(err.Error())
	}
	return d, cpu, out.Bytes(), nil
}
