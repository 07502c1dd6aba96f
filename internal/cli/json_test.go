package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/report"
)

// TestJSONReportCarriesEveryReportField: jsonReport lists report.Report's
// fields by hand (to drop their omitempty); a field added to the report and
// not here would vanish from the JSON.
func TestJSONReportCarriesEveryReportField(t *testing.T) {
	have := map[string]bool{}
	jt := reflect.TypeOf(jsonReport{})
	for i := 0; i < jt.NumField(); i++ {
		have[strings.Split(jt.Field(i).Tag.Get("json"), ",")[0]] = true
	}
	rt := reflect.TypeOf(report.Report{})
	for i := 0; i < rt.NumField(); i++ {
		name := strings.Split(rt.Field(i).Tag.Get("json"), ",")[0]
		if name != "-" && name != "" && !have[name] {
			t.Errorf("report.Report field %s (json %q) is missing from jsonReport", rt.Field(i).Name, name)
		}
	}
}

// oneJSONReport requires out to be exactly one JSON document holding every
// documented field, with exit_code equal to code, and returns it.
func oneJSONReport(t *testing.T, out string, code int) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("stdout is not a JSON document: %v\n%q", err, out)
	}
	var extra any
	if err := dec.Decode(&extra); err != io.EOF {
		t.Fatalf("stdout holds more than one JSON document (%v):\n%s", err, out)
	}
	wantAllFields(t, m, out)
	if m["exit_code"] != float64(code) {
		t.Errorf("exit_code %v, process exit %d", m["exit_code"], code)
	}
	if code != 0 && (m["ok"] != false || m["failed_layer"] == "" || m["summary"] == "" || m["remedy"] == "") {
		t.Errorf("a failure must say ok false, the layer, what and what to do:\n%s", out)
	}
	return m
}

const jsonTestConfig = hostsTestConfig + `[bootstrap]
deadline = "2s"
request_timeout = "1s"
`

// jsonRoot is a --root with a config; every case below stops before the
// network.
func jsonRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	p := filepath.Join(root, "etc/provision/provision.toml")
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(jsonTestConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// holdLock takes state_dir/.lock as another run would.
func holdLock(t *testing.T, root string) {
	t.Helper()
	dir := filepath.Join(root, "var/lib/provision")
	os.MkdirAll(dir, 0o700)
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	f.WriteString("4242\n")
}

// TestJSONEveryExitPath: with --format json, every exit path prints exactly
// one JSON report on stdout, with every documented field and the process's
// exit code: usage errors, a bad --root, config errors, a busy lock, an
// unsafe lock, a failing layer, and a run interrupted by SIGTERM.
func TestJSONEveryExitPath(t *testing.T) {
	tests := []struct {
		name   string
		args   func(root string) []string
		setup  func(t *testing.T, root string)
		ctx    func() context.Context
		code   int
		layer  string
		inText string // in summary
	}{
		{name: "unknown flag", args: func(r string) []string { return []string{"verify", "--format", "json", "--bogus"} }, code: 2, layer: "usage", inText: "-bogus"},
		{name: "flag before --format", args: func(r string) []string { return []string{"bootstrap", "--bogus", "--format=json"} }, code: 2, layer: "usage"},
		{name: "unknown command", args: func(r string) []string { return []string{"verfy", "--format", "json"} }, code: 2, layer: "usage", inText: "did you mean"},
		{name: "unexpected argument", args: func(r string) []string { return []string{"verify", "--format", "json", "--root", r, "extra"} }, code: 2, layer: "usage"},
		{name: "bad log format", args: func(r string) []string { return []string{"bootstrap", "--format", "json", "--log-format", "xml"} }, code: 2, layer: "usage"},
		// hosts and userdata take no --format: TestNoFormatNoReport.
		{name: "bad root", args: func(r string) []string { return []string{"bootstrap", "--format", "json", "--root", r + "/nope"} }, code: 2, layer: "usage", inText: "--root"},
		{name: "root is a file", args: func(r string) []string {
			return []string{"verify", "--format", "json", "--root", r + "/etc/provision/provision.toml"}
		}, code: 2, layer: "usage", inText: "not a directory"},
		{name: "missing config", args: func(r string) []string {
			return []string{"bootstrap", "--format", "json", "--root", r, "--config", "/nope.toml"}
		}, code: 3, layer: "config"},
		{name: "invalid config", args: func(r string) []string { return []string{"verify", "--format", "json", "--root", r} },
			setup: func(t *testing.T, r string) {
				os.WriteFile(filepath.Join(r, "etc/provision/provision.toml"), []byte("node_id = 1\n"), 0o644)
			}, code: 3, layer: "config"},
		{name: "lock busy", args: func(r string) []string { return []string{"bootstrap", "--format", "json", "--root", r} },
			setup: holdLock, code: 4, layer: "lock", inText: "pid 4242"},
		{name: "lock is a symlink", args: func(r string) []string { return []string{"bootstrap", "--format", "json", "--root", r} },
			setup: func(t *testing.T, r string) {
				os.MkdirAll(filepath.Join(r, "var/lib/provision"), 0o700)
				os.Symlink(filepath.Join(r, "elsewhere"), filepath.Join(r, "var/lib/provision", LockFile))
			}, code: 21, layer: "state", inText: "symbolic link"},
		{name: "hosts layer", args: func(r string) []string { return []string{"bootstrap", "--format", "json", "--root", r} },
			setup: func(t *testing.T, r string) {
				os.WriteFile(filepath.Join(r, "etc/hosts"), []byte("# BEGIN provision managed block: do not edit, run 'provision hosts'\n"), 0o644)
			}, code: 10, layer: "hosts"},
		{name: "interrupted while waiting for the lock", args: func(r string) []string { return []string{"bootstrap", "--format", "json", "--root", r} },
			setup: holdLock, ctx: func() context.Context {
				ctx, cancel := context.WithCancelCause(context.Background())
				cancel(&Interrupted{Signal: syscall.SIGTERM})
				return ctx
			}, code: 143, layer: "interrupted", inText: "SIGTERM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := jsonRoot(t)
			if tt.setup != nil {
				tt.setup(t, root)
			}
			ctx := context.Background()
			if tt.ctx != nil {
				ctx = tt.ctx()
			}
			var out, errb bytes.Buffer
			code := Run(ctx, tt.args(root), &out, &errb)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, out.String(), errb.String())
			}
			m := oneJSONReport(t, out.String(), code)
			if m["failed_layer"] != tt.layer {
				t.Errorf("failed_layer %v, want %s", m["failed_layer"], tt.layer)
			}
			if !strings.Contains(m["summary"].(string), tt.inText) {
				t.Errorf("summary %q lacks %q", m["summary"], tt.inText)
			}
		})
	}
}

// TestMainSignal: a SIGTERM while the run waits (here on another run's lock,
// with a 30s deadline) ends it promptly with exit 143 and one JSON report;
// a second signal, or a run that does not wind down within the grace,
// ends it at once with the same code and still exactly one report.
func TestMainSignal(t *testing.T) {
	tests := []struct {
		name    string
		signals int
		grace   time.Duration
	}{
		{"one SIGTERM, run winds down", 1, 10 * time.Second},
		{"second SIGTERM, no waiting", 2, time.Hour},
		{"grace over", 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := jsonRoot(t)
			cfg := filepath.Join(root, "etc/provision/provision.toml")
			os.WriteFile(cfg, []byte(strings.Replace(jsonTestConfig, `deadline = "2s"`, `deadline = "30s"`, 1)), 0o644)
			holdLock(t, root)
			sigs := make(chan os.Signal, 2)
			var out, errb syncBuffer
			go func() {
				time.Sleep(300 * time.Millisecond)
				for range tt.signals {
					sigs <- syscall.SIGTERM
				}
			}()
			start := time.Now()
			code := Main([]string{"bootstrap", "--format", "json", "--root", root}, &out, &errb, sigs, tt.grace)
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("took %s after SIGTERM", took)
			}
			if code != 143 {
				t.Fatalf("exit %d, want 143\nstdout %s\nstderr %s", code, out.String(), errb.String())
			}
			time.Sleep(300 * time.Millisecond) // a run still winding down must not add a report
			m := oneJSONReport(t, out.String(), code)
			if m["failed_layer"] != "interrupted" || !strings.Contains(m["summary"].(string), "SIGTERM") {
				t.Errorf("report: %s", out.String())
			}
			if !strings.Contains(errb.String(), "received SIGTERM") {
				t.Errorf("stderr does not say what happened: %s", errb.String())
			}
		})
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
