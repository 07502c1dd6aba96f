// Package hook runs renew.post_hook: the operator's command that tells the
// node-agent (or anything else) that the node's credentials changed.
//
// The hook is an argv without a shell, run in provision's own namespace
// with provision's environment plus the PROVISION_* variables of Vars. It
// is bounded three ways, because provision runs as root from a timer and
// a hook is someone else's code:
//
//   - In time. It has its own timeout (renew.post_hook_timeout) and lives
//     inside the run's context (bootstrap.deadline, or an interrupt). The
//     error says which one ended it (Kind Timeout or RunDeadline): a hook
//     cut by the run's deadline did not take too long by its own measure,
//     and the fix differs.
//   - In processes. It runs as the leader of a process group of its own,
//     and the whole group is killed with SIGKILL when either limit fires,
//     and again when the hook itself exits: a hook's background children
//     (a `reload &`, a daemon it forgot to detach properly) must not
//     outlive it, hold its output open, or run on past the timer that
//     started them. A child that leaves the group (setsid) escapes this;
//     under systemd the unit's control group still ends it.
//   - In output. Its stdout and stderr (one pipe) are read to the end but
//     only the first and last MaxOutput/2 bytes are kept, and control
//     characters are neutralised (Sanitize), since the output ends up in a
//     one-line report, a JSON document and the journal.
//
// PROVISION_CERT and PROVISION_KEY are the node's paths as configured
// (paths.pki_dir), not the --root-prefixed paths provision itself opens:
// the hook's consumers (the node-agent's unit, a reload script) are
// configured with the node's own paths, and on a live node --root is "/"
// and both agree. Under --root (an installer, a test) PROVISION_ROOT names
// that root, so a hook that must open the files joins the two.
//
// The package only runs and reports; the caller decides what a failure
// means (renew: layer hook, exit 22, the renewal stands).
package hook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
)

// MaxOutput is how many bytes of a hook's output are kept by default: the
// first and the last half.
const MaxOutput = 2048

// drainGrace bounds the wait for the end of the hook's output once its
// group is dead: only a process that left the group can still hold it.
const drainGrace = time.Second

// Spec is one run of a hook.
type Spec struct {
	// Argv is the command, argv[0] an absolute path; no shell.
	Argv []string
	// Timeout is the hook's own limit; 0 leaves only the run's context.
	Timeout time.Duration
	// Env is added to provision's own environment (Vars.Env).
	Env []string
	// Key names the hook's config key in messages; default
	// "renew.post_hook" (its timeout is Key + "_timeout").
	Key string
	// MaxOutput is how many bytes of output are kept; default MaxOutput.
	MaxOutput int
}

// Vars is what a hook is told about the credentials now in use.
type Vars struct {
	NodeID   string
	Serial   string
	NotAfter time.Time
	// PKIDir is paths.pki_dir as configured (not under --root).
	PKIDir string
	// Root is --root; PROVISION_ROOT is set only when it is not "/".
	Root string
}

// Env is the hook's PROVISION_* environment.
func (v Vars) Env() []string {
	env := []string{
		"PROVISION_NODE_ID=" + v.NodeID,
		"PROVISION_SERIAL=" + v.Serial,
		"PROVISION_NOT_AFTER=" + v.NotAfter.UTC().Format(time.RFC3339),
		"PROVISION_CERT=" + filepath.Join(v.PKIDir, credstore.CertFile),
		"PROVISION_KEY=" + filepath.Join(v.PKIDir, credstore.KeyFile),
	}
	if v.Root != "" && filepath.Clean(v.Root) != "/" {
		env = append(env, "PROVISION_ROOT="+v.Root)
	}
	return env
}

// FromConfig is the Spec of renew.post_hook for the certificate serial,
// valid until notAfter, on a host whose --root is root.
func FromConfig(cfg *config.Config, root, serial string, notAfter time.Time) Spec {
	v := Vars{NodeID: cfg.NodeID, Serial: serial, NotAfter: notAfter, PKIDir: cfg.Paths.PKIDir, Root: root}
	return Spec{Argv: cfg.Renew.PostHook, Timeout: cfg.Renew.PostHookTimeout.Duration, Env: v.Env()}
}

// Kind says how a hook failed.
type Kind string

// The kinds of failure.
const (
	// Timeout: its own timeout fired; its process group was killed.
	Timeout Kind = "timeout"
	// RunDeadline: the run's context ended first (bootstrap.deadline, or
	// the run was interrupted: Err is context.DeadlineExceeded or
	// context.Canceled); its process group was killed.
	RunDeadline Kind = "run-deadline"
	// Exit: it exited with a non-zero status, or died of a signal it did
	// not get from provision.
	Exit Kind = "exit"
	// Start: it could not be executed (missing, not executable, no #!).
	Start Kind = "start"
)

// Error is a failed hook.
type Error struct {
	Kind    Kind
	Command string // argv[0]
	Key     string // the config key, e.g. renew.post_hook
	Timeout time.Duration
	// ExitCode is the exit status for Exit (-1 when a signal ended it);
	// Signal names that signal.
	ExitCode int
	Signal   string
	// Output is the hook's output, bounded and sanitised; Truncated says
	// bytes were left out.
	Output    string
	Truncated bool
	Err       error
}

func (e *Error) Error() string {
	var msg string
	switch e.Kind {
	case Timeout:
		msg = fmt.Sprintf("%s did not finish within %s_timeout (%s); its process group was killed", e.Command, e.Key, e.Timeout)
	case RunDeadline:
		if errors.Is(e.Err, context.Canceled) {
			msg = fmt.Sprintf("%s was stopped because the run was interrupted; its process group was killed", e.Command)
		} else {
			msg = fmt.Sprintf("%s was stopped by the run's deadline (bootstrap.deadline), before its own %s_timeout (%s); its process group was killed", e.Command, e.Key, e.Timeout)
		}
	case Exit:
		if e.Signal != "" {
			msg = fmt.Sprintf("%s: killed by signal %s", e.Command, e.Signal)
		} else {
			msg = fmt.Sprintf("%s: exit status %d", e.Command, e.ExitCode)
		}
	default:
		msg = fmt.Sprintf("%s could not be started: %v", e.Command, e.Err)
	}
	if e.Output != "" {
		msg += "; output: " + e.Output
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Result is a hook that succeeded.
type Result struct {
	Output    string // bounded and sanitised
	Truncated bool
	// LeftBehind says its process group still had members when it exited
	// (background children, or ones not yet reaped); they were killed.
	LeftBehind bool
	Duration   time.Duration
}

// errOwnTimeout is the cause of the hook's context when its own timeout
// fires, to tell it from the run's deadline.
var errOwnTimeout = errors.New("the hook's own timeout")

// Run runs s and waits for it, within ctx and s.Timeout. It returns a
// *Error for every failure.
func Run(ctx context.Context, s Spec) (*Result, error) {
	if s.Key == "" {
		s.Key = "renew.post_hook"
	}
	if s.MaxOutput <= 0 {
		s.MaxOutput = MaxOutput
	}
	fail := &Error{Key: s.Key, Timeout: s.Timeout}
	if len(s.Argv) == 0 || s.Argv[0] == "" {
		fail.Kind, fail.Err = Start, errors.New("no command")
		return nil, fail
	}
	fail.Command = s.Argv[0]
	if err := ctx.Err(); err != nil {
		fail.Kind, fail.Err = RunDeadline, err
		return nil, fail
	}
	var hctx context.Context
	var cancel context.CancelFunc
	if s.Timeout > 0 {
		hctx, cancel = context.WithTimeoutCause(ctx, s.Timeout, errOwnTimeout)
	} else {
		hctx, cancel = context.WithCancel(ctx)
	}
	defer cancel()
	t0 := time.Now()
	p, err := start(s)
	if err != nil {
		fail.Kind, fail.Err = Start, err
		return nil, fail
	}
	stopped, werr := p.wait(hctx)
	out, truncated := p.output.String()
	fail.Output, fail.Truncated = Sanitize(out), truncated
	switch {
	case stopped && errors.Is(context.Cause(hctx), errOwnTimeout):
		fail.Kind, fail.Err = Timeout, context.DeadlineExceeded
	case stopped:
		fail.Kind, fail.Err = RunDeadline, ctx.Err()
	case werr != nil:
		fail.Kind, fail.Err, fail.ExitCode = Exit, werr, -1
		var ee *exec.ExitError
		if errors.As(werr, &ee) {
			fail.ExitCode = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				fail.Signal = ws.Signal().String()
			}
		}
	default:
		return &Result{Output: fail.Output, Truncated: truncated, LeftBehind: p.leftBehind, Duration: time.Since(t0)}, nil
	}
	return nil, fail
}

// proc is a started hook.
type proc struct {
	cmd        *exec.Cmd
	r          *os.File // the read end of its output pipe
	output     *bounded
	read       chan struct{} // closed at the end of its output
	leftBehind bool
}

// start starts s as the leader of a new process group, its stdout and
// stderr one pipe read into a bounded buffer.
func start(s Spec) (*proc, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(s.Argv[0], s.Argv[1:]...)
	cmd.Env = append(os.Environ(), s.Env...)
	cmd.Stdout, cmd.Stderr = w, w // *os.File: no copying goroutines tie Wait to the pipe
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, r: r, output: newBounded(s.MaxOutput), read: make(chan struct{})}
	go func() {
		defer close(p.read)
		io.Copy(p.output, r)
	}()
	return p, nil
}

// wait waits for the hook to exit or ctx to end (then it kills the group
// first), kills whatever of its group is left, and waits for the end of
// its output. stopped says ctx ended it.
func (p *proc) wait(ctx context.Context) (stopped bool, err error) {
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	pgid := p.cmd.Process.Pid
	select {
	case err = <-exited:
	case <-ctx.Done():
		stopped = true
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		err = <-exited
	}
	// The leader is gone; anything still in its group is left behind. The
	// group's id cannot be reused while it has members.
	if syscall.Kill(-pgid, 0) == nil {
		p.leftBehind = !stopped
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	select {
	case <-p.read:
	case <-time.After(drainGrace):
		_ = p.r.SetReadDeadline(time.Now())
		<-p.read
	}
	p.r.Close()
	return stopped, err
}

// bounded keeps the first and the last max/2 bytes written to it.
type bounded struct {
	head, tail []byte
	half       int
	total      int64
}

func newBounded(max int) *bounded {
	return &bounded{half: max / 2}
}

func (b *bounded) Write(p []byte) (int, error) {
	b.total += int64(len(p))
	n := len(p)
	if room := b.half - len(b.head); room > 0 {
		k := min(room, len(p))
		b.head = append(b.head, p[:k]...)
		p = p[k:]
	}
	b.tail = append(b.tail, p...)
	if over := len(b.tail) - b.half; over > 0 {
		b.tail = append(b.tail[:0], b.tail[over:]...)
	}
	return n, nil
}

// String is what was kept, with a marker where bytes were left out.
func (b *bounded) String() (string, bool) {
	kept := int64(len(b.head) + len(b.tail))
	if kept == b.total {
		return string(b.head) + string(b.tail), false
	}
	return string(b.head) + fmt.Sprintf(" [... %d bytes left out ...] ", b.total-kept) + string(b.tail), true
}

// Sanitize makes a hook's output safe to put on one line of text: line
// breaks become " | ", tabs a space, a byte that is not UTF-8 \xNN, and every other
// character that is not printable (control characters, escape sequences'
// ESC, bidirectional overrides and other format characters) is written as
// a \x or \u escape. Surrounding space is trimmed.
func Sanitize(s string) string {
	s = strings.TrimSpace(strings.ReplaceAll(s, "\r\n", "\n"))
	var b strings.Builder
	for len(s) > 0 {
		r, size := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[0]) // a byte that is not UTF-8, shown as what it is
		case r == '\n' || r == '\r':
			b.WriteString(" | ")
		case r == '\t':
			b.WriteByte(' ')
		case r == ' ' || unicode.IsPrint(r):
			b.WriteRune(r)
		case r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
		s = s[size:]
	}
	return b.String()
}
