package hook_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/hook"
)

// script writes an executable file into dir and returns its path.
func script(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func asError(t *testing.T, err error) *hook.Error {
	t.Helper()
	var he *hook.Error
	if !errors.As(err, &he) {
		t.Fatalf("error %v (%T) is not a *hook.Error", err, err)
	}
	return he
}

// TestRunOutcomes: how a hook ends, told apart by Kind, in a one-line
// message a person can act on that quotes its output.
func TestRunOutcomes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		body     string // script body; "" runs a missing path
		kind     hook.Kind
		exitCode int
		msg      []string
	}{
		{"success", "#!/bin/sh\necho reloaded\n", "", 0, nil},
		{"exit status", "#!/bin/sh\necho 'node-agent: reload refused' >&2\nexit 3\n", hook.Exit, 3, []string{"exit status 3", "output: node-agent: reload refused"}},
		{"killed by a signal", "#!/bin/sh\nkill -TERM $$\nsleep 5\n", hook.Exit, -1, []string{"killed by signal terminated"}},
		{"no #! line: never a shell", "touch /nonexistent/shell-ran\n", hook.Start, 0, []string{"could not be started", "exec format error"}},
		{"missing", "", hook.Start, 0, []string{"could not be started", "no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "missing")
			if tt.body != "" {
				path = script(t, "hook", tt.body)
			}
			res, err := hook.Run(context.Background(), hook.Spec{Argv: []string{path}, Timeout: 30 * time.Second})
			if tt.kind == "" {
				if err != nil || res.Output != "reloaded" {
					t.Fatalf("Run = %+v, %v; want success with its output", res, err)
				}
				return
			}
			he := asError(t, err)
			if he.Kind != tt.kind || he.ExitCode != tt.exitCode {
				t.Fatalf("kind %s exit %d (%v), want %s %d", he.Kind, he.ExitCode, err, tt.kind, tt.exitCode)
			}
			for _, w := range append(tt.msg, path) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("message %q is more than one line", err)
			}
		})
	}
	if _, err := hook.Run(context.Background(), hook.Spec{}); asError(t, err).Kind != hook.Start {
		t.Fatalf("no command: %v, want %s", err, hook.Start)
	}
}

// TestRunArgvAndEnv: the argv arrives as written (no shell expands it),
// with provision's environment and the PROVISION_* variables.
func TestRunArgvAndEnv(t *testing.T) {
	t.Parallel()
	out := filepath.Join(t.TempDir(), "seen")
	path := script(t, "hook", `#!/bin/sh
{ for a in "$@"; do printf 'arg=%s\n' "$a"; done
  printf 'serial=%s\ncert=%s\nkey=%s\nroot=%s\nextra=%s\n' "$PROVISION_SERIAL" "$PROVISION_CERT" "$PROVISION_KEY" "${PROVISION_ROOT-unset}" "$PATH"; } > "`+out+`"
`)
	args := []string{"reload", "; touch /tmp/x", "$(id)", "*"}
	v := hook.Vars{NodeID: "gpu-0042", Serial: "1234", NotAfter: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), PKIDir: "/var/lib/provision/pki", Root: "/"}
	if _, err := hook.Run(context.Background(), hook.Spec{Argv: append([]string{path}, args...), Timeout: 30 * time.Second, Env: v.Env()}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, a := range args {
		want.WriteString("arg=" + a + "\n")
	}
	want.WriteString("serial=1234\ncert=/var/lib/provision/pki/cert.pem\nkey=/var/lib/provision/pki/key.pem\nroot=unset\nextra=" + os.Getenv("PATH") + "\n")
	if string(b) != want.String() {
		t.Fatalf("the hook saw\n%s\nwant\n%s", b, want.String())
	}
}

// TestVarsEnv: the certificate's paths are the node's configured ones,
// never prefixed with --root; PROVISION_ROOT names a root other than "/".
func TestVarsEnv(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{NodeID: "gpu-0042"}
	cfg.Paths.PKIDir = "/srv/provision/pki"
	cfg.Renew.PostHook = []string{"/usr/bin/systemctl", "reload", "node-agent"}
	cfg.Renew.PostHookTimeout.Duration = 7 * time.Second
	tests := []struct {
		root     string
		wantRoot string
	}{
		{"/", ""},
		{"", ""},
		{"/mnt/target", "/mnt/target"},
	}
	for _, tt := range tests {
		s := hook.FromConfig(cfg, tt.root, "99", time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
		if s.Timeout != 7*time.Second || len(s.Argv) != 3 {
			t.Fatalf("spec %+v does not carry the config's hook", s)
		}
		want := []string{"PROVISION_NODE_ID=gpu-0042", "PROVISION_SERIAL=99", "PROVISION_NOT_AFTER=2030-01-02T03:04:05Z",
			"PROVISION_CERT=/srv/provision/pki/cert.pem", "PROVISION_KEY=/srv/provision/pki/key.pem"}
		if tt.wantRoot != "" {
			want = append(want, "PROVISION_ROOT="+tt.wantRoot)
		}
		if strings.Join(s.Env, " ") != strings.Join(want, " ") {
			t.Errorf("root %q: env %q, want %q", tt.root, s.Env, want)
		}
	}
}

// TestRunOwnTimeoutOrRunDeadline: the hook's own timeout and the run's
// context are told apart, in Kind, in the error chain and in the message.
func TestRunOwnTimeoutOrRunDeadline(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		timeout time.Duration
		ctx     func() (context.Context, context.CancelFunc)
		kind    hook.Kind
		is      error
		msg     string
	}{
		{"own timeout", time.Second, func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			hook.Timeout, context.DeadlineExceeded, "did not finish within renew.post_hook_timeout (1s); its process group was killed"},
		{"run's deadline first", time.Minute, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), time.Second)
		},
			hook.RunDeadline, context.DeadlineExceeded, "stopped by the run's deadline (bootstrap.deadline), before its own renew.post_hook_timeout (1m0s)"},
		{"run interrupted", time.Minute, func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(500*time.Millisecond, cancel)
			return ctx, cancel
		}, hook.RunDeadline, context.Canceled, "stopped because the run was interrupted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := script(t, "hang", "#!/bin/sh\necho started\nexec sleep 60\n")
			ctx, cancel := tt.ctx()
			defer cancel()
			_, err := hook.Run(ctx, hook.Spec{Argv: []string{path}, Timeout: tt.timeout})
			he := asError(t, err)
			if he.Kind != tt.kind || !errors.Is(err, tt.is) {
				t.Fatalf("kind %s (%v), want %s wrapping %v", he.Kind, err, tt.kind, tt.is)
			}
			if !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), "output: started") {
				t.Fatalf("message %q lacks %q or the output", err, tt.msg)
			}
		})
	}
	t.Run("run already over: not started", func(t *testing.T) {
		t.Parallel()
		marker := filepath.Join(t.TempDir(), "ran")
		path := script(t, "hook", "#!/bin/sh\ntouch "+marker+"\n")
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := hook.Run(ctx, hook.Spec{Argv: []string{path}, Timeout: time.Minute})
		if he := asError(t, err); he.Kind != hook.RunDeadline {
			t.Fatalf("kind %s, want %s", he.Kind, hook.RunDeadline)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatal("the hook ran although the run was over")
		}
	})
}

// dead reports whether pid has ended (gone, or a zombie not yet reaped).
func dead(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}

// waitDead waits (boundedly: SIGKILL is asynchronous) for every pid in
// file to end.
func waitDead(t *testing.T, file string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("the hook did not record its children: %v", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	if len(pids) == 0 {
		t.Fatal("no child pids recorded")
	}
	for _, pid := range pids {
		for i := 0; !dead(pid); i++ {
			if i == 200 {
				for _, p := range pids { // the test's own leftovers: not left running
					syscall.Kill(p, syscall.SIGKILL)
				}
				t.Fatalf("child %d of the hook outlived it", pid)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestRunKillsItsGroup: a hook's background children, and their children,
// do not outlive it: killed with its group when its timeout fires, and
// when it exits leaving them behind (then it still succeeds, saying so,
// without waiting for them although they hold its output open).
func TestRunKillsItsGroup(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		tail string // how the hook ends after starting its children
		kind hook.Kind
	}{
		{"own timeout", "wait\n", hook.Timeout},
		{"exits, children left behind", "echo done\nexit 0\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pids := filepath.Join(t.TempDir(), "pids")
			path := script(t, "hook", fmt.Sprintf(`#!/bin/sh
sleep 300 &
echo $! >> %[1]s
( sleep 300 & echo $! >> %[1]s; wait ) &
echo $! >> %[1]s
sleep 0.2
`, pids)+tt.tail)
			res, err := hook.Run(context.Background(), hook.Spec{Argv: []string{path}, Timeout: 2 * time.Second})
			if tt.kind != "" {
				if he := asError(t, err); he.Kind != tt.kind {
					t.Fatalf("kind %s (%v), want %s", he.Kind, err, tt.kind)
				}
			} else if err != nil || !res.LeftBehind || res.Output != "done" {
				t.Fatalf("Run = %+v, %v; want success, output \"done\", children left behind", res, err)
			}
			waitDead(t, pids)
		})
	}
}

// TestRunOutputBounded: a hook that writes a megabyte is read to its end
// (it is not blocked on a full pipe) and only the first and last
// MaxOutput/2 bytes are kept, marked, in success and failure alike.
func TestRunOutputBounded(t *testing.T) {
	t.Parallel()
	for _, code := range []int{0, 4} {
		t.Run(fmt.Sprintf("exit %d", code), func(t *testing.T) {
			t.Parallel()
			path := script(t, "hook", fmt.Sprintf("#!/bin/sh\necho FIRST\nhead -c 1048576 /dev/zero | tr '\\0' x\necho\necho LAST\nexit %d\n", code))
			res, err := hook.Run(context.Background(), hook.Spec{Argv: []string{path}, Timeout: time.Minute})
			out, truncated := "", false
			if code == 0 {
				if err != nil {
					t.Fatal(err)
				}
				out, truncated = res.Output, res.Truncated
			} else {
				he := asError(t, err)
				out, truncated = he.Output, he.Truncated
			}
			if !truncated || len(out) > hook.MaxOutput+64 || !strings.HasPrefix(out, "FIRST") || !strings.HasSuffix(out, "LAST") || !strings.Contains(out, "bytes left out") {
				t.Fatalf("output (%d bytes, truncated=%v) is not the marked head and tail: %.80q...%.80q", len(out), truncated, out, out[max(0, len(out)-80):])
			}
		})
	}
}

// TestSanitize: control characters, escape sequences, bidirectional
// overrides and invalid UTF-8 cannot reach a terminal or break a line.
func TestSanitize(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"plain text", "plain text"},
		{"  line one\nline two\r\nline three\n", "line one | line two | line three"},
		{"\x1b[31mred\x1b[0m\a", `\x1b[31mred\x1b[0m\x07`},
		{"tab\there", "tab here"},
		{"evil\u202etxt.exe", `evil\u202etxt.exe`},
		{"bad \xff byte", `bad \xff byte`}, // shown as the byte it is
		{"nul\x00c1\u0085end", `nul\x00c1\x85end`},
		{"ünïcödé ✓", "ünïcödé ✓"},
	}
	for _, tt := range tests {
		if got := hook.Sanitize(tt.in); got != tt.want {
			t.Errorf("Sanitize(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
