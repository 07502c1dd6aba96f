// Package swtpm runs a software TPM (swtpm, Debian packages swtpm and
// swtpm-tools) for tests: a fresh TPM per test, served on a unix socket in
// socket mode, named by the "swtpm:path=<socket>" string nodekey.WithTPM
// and provision's key.tpm take (the TCTI syntax tpm2-tools read from
// TPM2TOOLS_TCTI, so the test can drive the same TPM with them).
//
// Why: a node key in a TPM is only tested when a TPM answers. This machine
// (and CI's) has no TPM device and a kernel without TPM support, so swtpm
// in socket mode is the TPM; it speaks the raw TPM 2.0 command stream, as
// /dev/tpmrm0 does, but with no resource manager: what a killed process
// leaves loaded stays loaded until FlushTransient (the kernel's resource
// manager flushes it on a node).
//
// One state is manufactured per process (swtpm_setup, about half a second)
// and copied for each TPM (a few KiB, no time): copies share seeds, so a
// key one copy made loads in another; [New] with Fresh manufactures a TPM
// of its own, whose keys no other copy accepts ("another TPM").
//
// When swtpm is not installed, New skips the test, and fails it under
// CI=true: a test whose program is missing must not pass.
package swtpm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TPM is one running software TPM.
type TPM struct {
	Dir    string // its state and log directory (short: a socket path is at most 107 bytes)
	Socket string // the command socket
	tb     testing.TB
	cmd    *exec.Cmd
	done   chan error
}

// Spec is the TPM's name for nodekey.WithTPM and key.tpm.
func (t *TPM) Spec() string { return "swtpm:path=" + t.Socket }

// TCTI is the TPM's name for tpm2-tools (TPM2TOOLS_TCTI) and the OpenSSL
// tpm2 provider (TPM2OPENSSL_TCTI): the same string.
func (t *TPM) TCTI() string { return t.Spec() }

// Option changes how New makes a TPM.
type Option func(*opts)

type opts struct{ fresh bool }

// Fresh manufactures a TPM of its own instead of copying the process's
// shared state: other seeds, so keys the shared TPMs made do not load in it.
func Fresh() Option { return func(o *opts) { o.fresh = true } }

var (
	templateOnce sync.Once
	templateDir  string
	templateErr  error
)

// require finds a program or skips the test (fails it under CI=true).
func require(tb testing.TB, prog string) string {
	tb.Helper()
	p, err := exec.LookPath(prog)
	if err != nil {
		msg := fmt.Sprintf("%s is not installed (Debian packages swtpm, swtpm-tools, tpm2-tools): %v", prog, err)
		if os.Getenv("CI") == "true" {
			tb.Fatal(msg + "; under CI=true a missing program fails the test")
		}
		tb.Skip(msg)
	}
	return p
}

// New starts a software TPM for the test and stops it when the test ends.
func New(tb testing.TB, o ...Option) *TPM {
	tb.Helper()
	require(tb, "swtpm")
	require(tb, "swtpm_setup")
	t, err := Launch(o...)
	if err != nil {
		tb.Fatal(err)
	}
	t.tb = tb
	tb.Cleanup(t.Close)
	return t
}

// Launch starts a software TPM outside a test (a benchmark); Close stops
// it and removes its state. The tool methods need a TPM from New.
func Launch(o ...Option) (*TPM, error) {
	var op opts
	for _, f := range o {
		f(&op)
	}
	dir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		return nil, err
	}
	state := filepath.Join(dir, "state")
	if op.fresh {
		err = manufacture(state)
	} else {
		templateOnce.Do(func() {
			templateDir, templateErr = os.MkdirTemp("", "swtpm-template")
			if templateErr == nil {
				templateErr = manufacture(filepath.Join(templateDir, "state"))
			}
		})
		err = templateErr
		if err == nil {
			err = copyState(filepath.Join(templateDir, "state"), state)
		}
	}
	t := &TPM{Dir: dir, Socket: filepath.Join(dir, "tpm.sock")}
	if err == nil {
		err = t.Start()
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return t, nil
}

// Close stops the TPM and removes its state.
func (t *TPM) Close() {
	t.Stop()
	os.RemoveAll(t.Dir)
}

// manufacture makes a TPM 2.0 state in dir (an EK, no certificates).
func manufacture(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	out, err := exec.Command("swtpm_setup", "--tpm2", "--tpm-state", dir, "--createek", "--config", "/dev/null").CombinedOutput()
	if err != nil {
		return fmt.Errorf("swtpm_setup: %v\n%s", err, out)
	}
	return nil
}

func copyState(from, to string) error {
	if err := os.MkdirAll(to, 0o700); err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(from, "tpm2-00.permall"))
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(to, "tpm2-00.permall"), b, 0o600)
}

// Start serves the TPM's state on its socket (again, after Stop: a reboot
// of the machine, as far as the TPM is concerned).
func (t *TPM) Start() error {
	os.Remove(t.Socket)
	t.cmd = exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+filepath.Join(t.Dir, "state"),
		"--flags", "not-need-init,startup-clear",
		"--log", "file="+filepath.Join(t.Dir, "swtpm.log")+",level=1",
		"--server", "type=unixio,path="+t.Socket,
		"--ctrl", "type=unixio,path="+t.Socket+".ctrl")
	t.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with the test binary
	if err := t.cmd.Start(); err != nil {
		return fmt.Errorf("starting swtpm: %w", err)
	}
	t.done = make(chan error, 1)
	go func() { t.done <- t.cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-t.done:
			log, _ := os.ReadFile(filepath.Join(t.Dir, "swtpm.log"))
			return fmt.Errorf("swtpm exited while starting: %v\n%s", err, log)
		default:
		}
		if c, err := net.Dial("unix", t.Socket); err == nil { // listening, not only bound
			c.Close()
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Stop()
	return errors.New("swtpm did not listen on its socket within 10s")
}

// Stop ends swtpm (SIGTERM; its state is on disk). It may be started again.
func (t *TPM) Stop() {
	if t.cmd == nil || t.cmd.Process == nil {
		return
	}
	t.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-t.done:
	case <-time.After(5 * time.Second):
		t.cmd.Process.Kill()
		<-t.done
	}
	t.cmd = nil
}

// Tool runs a tpm2-tools command against the TPM and returns its output;
// a failure fails the test.
func (t *TPM) Tool(args ...string) string {
	t.tb.Helper()
	out, err := t.TryTool(args...)
	if err != nil {
		t.tb.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TryTool runs a tpm2-tools command against the TPM and returns its
// combined output and error.
func (t *TPM) TryTool(args ...string) (string, error) {
	t.tb.Helper()
	require(t.tb, "tpm2_getcap")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+t.TCTI())
	cmd.Dir = t.Dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// FlushTransient flushes every transient object and session left loaded
// (what a killed process leaves in a TPM without a resource manager; the
// kernel's /dev/tpmrm0 does this itself when the process's file closes).
func (t *TPM) FlushTransient() {
	t.tb.Helper()
	t.Tool("tpm2_flushcontext", "--transient-object")
	t.Tool("tpm2_flushcontext", "--loaded-session")
	t.Tool("tpm2_flushcontext", "--saved-session")
}

// Clear clears the TPM (TPM2_Clear with platform authorization, as the
// firmware's "clear TPM" or an installer does): the owner seed changes,
// and every key made under it no longer loads.
func (t *TPM) Clear() { t.tb.Helper(); t.Tool("tpm2_clear", "-c", "p") }

// SetOwnerPassword gives the owner hierarchy a password.
func (t *TPM) SetOwnerPassword(pw string) {
	t.tb.Helper()
	t.Tool("tpm2_changeauth", "-c", "owner", pw)
}

// Lockout puts the TPM into dictionary-attack lockout the way another
// program on the node would: wrong passwords on a key that is subject to
// it, until the TPM stops counting and locks out.
func (t *TPM) Lockout() {
	t.tb.Helper()
	// Every tpm2-tools command that loads a context leaves it loaded, and
	// a software TPM holds three objects: flush after each.
	t.Tool("tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", "primary.ctx")
	t.FlushTransient()
	t.Tool("tpm2_create", "-C", "primary.ctx", "-G", "ecc", "-p", "right", "-u", "da.pub", "-r", "da.priv")
	t.FlushTransient()
	t.Tool("tpm2_load", "-C", "primary.ctx", "-u", "da.pub", "-r", "da.priv", "-c", "da.ctx")
	t.FlushTransient()
	os.WriteFile(filepath.Join(t.Dir, "digest"), make([]byte, 32), 0o600)
	for i := 0; i < 32 && !t.InLockout(); i++ {
		t.TryTool("tpm2_sign", "-c", "da.ctx", "-p", "wrong", "-g", "sha256", "-d", "-o", "sig", "digest")
		t.FlushTransient()
	}
	if !t.InLockout() {
		t.tb.Fatal("the software TPM did not enter dictionary-attack lockout")
	}
}

// InLockout reads the TPM's inLockout flag.
func (t *TPM) InLockout() bool {
	t.tb.Helper()
	return strings.Contains(t.Tool("tpm2_getcap", "properties-variable"), "inLockout:                 1")
}
