package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// TestUnitInvocation: only the unit's own process counts as started by
// systemd (and so can be a restart that waits): INVOCATION_ID set, and
// SYSTEMD_EXEC_PID, where systemd sets it, naming this process; a shell or
// a test that inherited a service's environment does not.
func TestUnitInvocation(t *testing.T) {
	const id = "2c9f2f1d8a1b4b1e9f0e6c7d5a4b3c2d"
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"by hand", nil, ""},
		{"systemd before 248: INVOCATION_ID only", map[string]string{"INVOCATION_ID": id}, id},
		{"the unit's process", map[string]string{"INVOCATION_ID": id, "SYSTEMD_EXEC_PID": "4242"}, id},
		{"inherited from a service (a CI runner, a terminal)", map[string]string{"INVOCATION_ID": id, "SYSTEMD_EXEC_PID": "17"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := unitInvocation(func(k string) string { return tt.env[k] }, 4242); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestMainSignalCutsRestartSplay: a restart (the unit's process, a failed
// run recorded moments ago in this boot) waiting its random delay before
// its network work is ended by SIGTERM at once: the run's own report says
// it stopped at restart-splay (had the wait not been cut, Main would have
// ended the run after its grace with a report of its own), exit 143.
func TestMainSignalCutsRestartSplay(t *testing.T) {
	t.Setenv("INVOCATION_ID", "2c9f2f1d8a1b4b1e9f0e6c7d5a4b3c2d")
	t.Setenv("SYSTEMD_EXEC_PID", "")
	// The delay is random in [0, 10m): a draw under 2 s could end before
	// the signal arrives, so such an attempt proves nothing and is run
	// again (three draws that short: about one in 10^11).
	for attempt := 1; attempt <= 3; attempt++ {
		m, code, wait, stderr := restartUnderSIGTERM(t)
		if wait < 2*time.Second {
			t.Logf("attempt %d drew a %s wait, too short to interrupt: again", attempt, wait)
			continue
		}
		if code != 143 || m["failed_check"] != "restart-splay" || m["failed_layer"] != "interrupted" || !strings.Contains(m["summary"].(string), "SIGTERM") {
			t.Fatalf("exit %d, report %v: want 143 with the run's own report stopping at restart-splay\n%s", code, m, stderr)
		}
		return
	}
	t.Fatal("three draws too short to interrupt")
}

// restartUnderSIGTERM runs a restarted bootstrap and sends SIGTERM when it
// logs its wait; it returns the report, the exit code and the wait drawn.
func restartUnderSIGTERM(t *testing.T) (map[string]any, int, time.Duration, string) {
	root := t.TempDir()
	cfg := strings.Replace(hostsTestConfig, "[ca]", "[bootstrap]\ndeadline = \"30m\"\nrestart_splay = \"10m\"\n[ca]", 1)
	for p, data := range map[string]string{"etc/provision/provision.toml": cfg, "etc/hosts": userLines} {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	host, err := system.New(root)
	if err != nil {
		t.Fatal(err)
	}
	b := host.Boot()
	if err := state.WriteFailure(filepath.Join(root, "var/lib/provision"), &state.Failure{EndedAt: b.Wall, BootID: b.ID, SinceBootNS: int64(b.Since), Layer: "ca", Owner: "ca"}, nil); err != nil {
		t.Fatal(err)
	}
	sigs := make(chan os.Signal, 1)
	var out, errb syncBuffer
	waitCh := make(chan time.Duration, 1)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if d, ok := splayWait(errb.String()); ok {
				waitCh <- d
				sigs <- syscall.SIGTERM
				return
			}
		}
	}()
	code := Main([]string{"bootstrap", "--format", "json", "--log-format", "json", "--root", root}, &out, &errb, sigs, 10*time.Second)
	var wait time.Duration
	select {
	case wait = <-waitCh:
	default:
		t.Fatalf("no restart-splay wait was logged (exit %d):\n%s\n%s", code, out.String(), errb.String())
	}
	if wait < 2*time.Second {
		return nil, code, wait, errb.String()
	}
	return oneJSONReport(t, out.String(), code), code, wait, errb.String()
}

// splayWait finds the restart-splay step's wait in JSON log lines.
func splayWait(log string) (time.Duration, bool) {
	for _, l := range strings.Split(log, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil || m["step"] != "restart-splay" || m["status"] != "wait" {
			continue
		}
		s, _ := m["wait"].(string)
		d, err := time.ParseDuration(s)
		return d, err == nil
	}
	return 0, false
}
