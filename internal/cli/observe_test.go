package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
)

// metricsRoot is jsonRoot with [metrics] lines appended and, unless
// mkdir is false, the node_exporter textfile directory created.
func metricsRoot(t *testing.T, extra string, mkdir bool) (root, dir string) {
	t.Helper()
	root = jsonRoot(t)
	if extra != "" {
		p := filepath.Join(root, "etc/provision/provision.toml")
		b, _ := os.ReadFile(p)
		os.WriteFile(p, append(b, []byte("[metrics]\n"+extra+"\n")...), 0o644)
	}
	dir = filepath.Join(root, "var/lib/prometheus/node-exporter")
	if mkdir {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root, dir
}

// TestCLIWritesMetrics: bootstrap, verify and renew leave their own file in the
// textfile directory whatever the outcome, and a metrics problem never
// changes the exit code.
func TestCLIWritesMetrics(t *testing.T) {
	for _, tc := range []struct {
		name     string
		extra    string // [metrics] lines
		mkdir    bool
		setup    func(t *testing.T, root, dir string)
		args     []string
		code     int
		file     string   // expected file in the default dir, "" for none
		want     []string // in the file
		inLog    string   // in stderr
		notInLog string
	}{
		{name: "verify failing at hosts", mkdir: true, args: []string{"verify"}, code: 10, file: "provision_verify.prom",
			want: []string{`provision_failed{command="verify",layer="hosts",owner="node"} 1`, `provision_last_run_success{command="verify"} 0`,
				`provision_check_status{check="hosts-block",command="verify",layer="hosts",owner="node"} 2`,
				`provision_check_status{check="tasks-wait",command="verify",layer="tasks-wait",owner="api"} -1`}},
		{name: "bootstrap failing at hosts", mkdir: true, args: []string{"bootstrap"}, code: 10, file: "provision_bootstrap.prom",
			setup: func(t *testing.T, root, dir string) {
				os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("# BEGIN provision managed block: do not edit, run 'provision hosts'\n"), 0o644)
			},
			want: []string{`provision_failed{command="bootstrap",layer="hosts",owner="node"} 1`}},
		{name: "config failure goes to the default directory", mkdir: true, args: []string{"verify"}, code: 3, file: "provision_verify.prom",
			setup: func(t *testing.T, root, dir string) {
				os.WriteFile(filepath.Join(root, "etc/provision/provision.toml"), []byte("node_id = 1\n"), 0o644)
			},
			want: []string{`provision_failed{command="verify",layer="config",owner="node"} 1`}},
		{name: "renew with a broken config writes provision_renew.prom", mkdir: true, args: []string{"renew"}, code: 3, file: "provision_renew.prom",
			setup: func(t *testing.T, root, dir string) {
				os.WriteFile(filepath.Join(root, "etc/provision/provision.toml"), []byte("node_id = 1\n"), 0o644)
			},
			want: []string{`provision_failed{command="renew",layer="config",owner="node"} 1`, `provision_last_run_success{command="renew"} 0`}},
		{name: "renew --check is a question: no metrics", mkdir: true, args: []string{"renew", "--check"}, code: ExitCheckCannotRenew},
		{name: "turned off", extra: "enabled = false", mkdir: true, args: []string{"verify"}, code: 10},
		{name: "no node_exporter: nothing, quietly", args: []string{"verify"}, code: 10, notInLog: "metrics"},
		{name: "a named directory that is missing is a warning", extra: `textfile_dir = "/srv/textfile"`, args: []string{"verify"}, code: 10,
			inLog: `"level":"WARN","msg":"metrics not written: the configured metrics.textfile_dir does not exist`},
		{name: "the default path written out and missing is a warning too", extra: `textfile_dir = "/var/lib/prometheus/node-exporter"`, args: []string{"verify"}, code: 10,
			inLog: `"level":"WARN","msg":"metrics not written: the configured metrics.textfile_dir does not exist`},
		{name: "the default path left out and missing is silent", args: []string{"verify"}, code: 10,
			inLog: `"level":"DEBUG","msg":"metrics not written: node_exporter's textfile directory does not exist"`, notInLog: "metrics"},
		{name: "a symlink at the file is refused with a warning, exit unchanged", mkdir: true, args: []string{"verify"}, code: 10,
			setup: func(t *testing.T, root, dir string) {
				os.Symlink(filepath.Join(root, "elsewhere"), filepath.Join(dir, "provision_verify.prom"))
			},
			inLog: "symbolic link"},
		{name: "hosts commands write none", mkdir: true, args: []string{"hosts", "show"}, code: 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, dir := metricsRoot(t, tc.extra, tc.mkdir)
			if tc.setup != nil {
				tc.setup(t, root, dir)
			}
			var out, errb bytes.Buffer
			code := Run(context.Background(), append(tc.args, "--root", root, "--log-format", "json", "--log-level", "debug"), &out, &errb)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\n%s\n%s", code, tc.code, out.String(), errb.String())
			}
			ents, _ := os.ReadDir(dir)
			var names []string
			for _, e := range ents {
				if e.Type().IsRegular() {
					names = append(names, e.Name())
				}
			}
			if tc.file == "" {
				if len(names) > 0 {
					t.Fatalf("files written: %v", names)
				}
			} else {
				if !slices.Equal(names, []string{tc.file}) {
					t.Fatalf("files %v, want [%s]\n%s", names, tc.file, errb.String())
				}
				b, _ := os.ReadFile(filepath.Join(dir, tc.file))
				for _, w := range tc.want {
					if !strings.Contains(string(b), w) {
						t.Errorf("%s lacks %q:\n%s", tc.file, w, b)
					}
				}
			}
			if tc.inLog != "" && !strings.Contains(errb.String(), tc.inLog) {
				t.Errorf("log lacks %q:\n%s", tc.inLog, errb.String())
			}
			if tc.notInLog != "" && strings.Contains(strings.ReplaceAll(errb.String(), `"level":"DEBUG"`, ""), `"level":"WARN","msg":"`+tc.notInLog) {
				t.Errorf("log warns about %s:\n%s", tc.notInLog, errb.String())
			}
		})
	}
}

// logKeys is the golden log schema: the keys of each kind of line a run
// writes with --log-format json (docs/logging.md). Renaming one fails here.
var logKeys = map[string][]string{
	// every line
	"*": {"time", "level", "msg", "log_schema", "command", "node_id", "run_id"},
	// one per check (verify, and the end of bootstrap)
	"check": {"check", "layer", "owner", "status", "message", "duration_ms"},
	// one per bootstrap step
	"step": {"step", "layer", "status"},
	// the last line of every bootstrap and verify whose config loaded
	"run": {"status", "layer", "owner", "check", "exit_code", "duration_ms"},
}

// TestLogSchemaGolden runs a failing verify and a failing bootstrap and
// requires every line to carry the common keys with their values, and each
// kind of line its own keys; docs/logging.md must name every key.
func TestLogSchemaGolden(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "logging.md"))
	if err != nil {
		t.Fatal(err)
	}
	for kind, keys := range logKeys {
		for _, k := range keys {
			if !strings.Contains(string(doc), "`"+k+"`") {
				t.Errorf("docs/logging.md does not document the %s key `%s`", kind, k)
			}
		}
	}
	for _, tc := range []struct {
		cmd   string
		setup func(root string)
		kinds []string
	}{
		{"verify", nil, []string{"check", "run"}},
		{"bootstrap", func(root string) {
			os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("# BEGIN provision managed block: do not edit, run 'provision hosts'\n"), 0o644)
		}, []string{"step", "run"}},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			root := jsonRoot(t)
			if tc.setup != nil {
				tc.setup(root)
			}
			var out, errb bytes.Buffer
			Run(context.Background(), []string{tc.cmd, "--root", root, "--log-format", "json"}, &out, &errb)
			seen := map[string]bool{}
			runIDs := map[any]bool{}
			lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
			for _, line := range lines {
				var m map[string]any
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Fatalf("log line is not JSON: %v\n%s", err, line)
				}
				for _, k := range logKeys["*"] {
					if _, ok := m[k]; !ok {
						t.Errorf("line lacks %q: %s", k, line)
					}
				}
				if m["log_schema"] != float64(LogSchema) || m["command"] != tc.cmd || m["node_id"] != "gpu-0042" {
					t.Errorf("common values wrong: %s", line)
				}
				runIDs[m["run_id"]] = true
				msg, _ := m["msg"].(string)
				if keys, ok := logKeys[msg]; ok {
					seen[msg] = true
					for _, k := range keys {
						if _, ok := m[k]; !ok {
							t.Errorf("%s line lacks %q: %s", msg, k, line)
						}
					}
				}
			}
			if len(runIDs) != 1 {
				t.Errorf("run ids %v, want one per run", runIDs)
			}
			for _, k := range tc.kinds {
				if !seen[k] {
					t.Errorf("no %q line in\n%s", k, errb.String())
				}
			}
			var last map[string]any
			json.Unmarshal([]byte(lines[len(lines)-1]), &last)
			if last["msg"] != "run" || last["exit_code"] != float64(10) || last["layer"] != "hosts" || last["status"] != "fail" {
				t.Errorf("the last line does not close the run with its exit code: %v", last)
			}
		})
	}
	keys := slices.Collect(func(yield func(string) bool) {
		for k := range logKeys {
			if !yield(k) {
				return
			}
		}
	})
	sort.Strings(keys)
	if !slices.Equal(keys, []string{"*", "check", "run", "step"}) {
		t.Fatalf("kinds %v", keys)
	}
}

// TestReportUnderJournal: when stdout is the stream systemd named in
// JOURNAL_STREAM, the report is one JSON line even without --format json;
// an explicit --format text, or any other stdout, keeps the text. The
// "binary's wiring" case goes through MainWithHook, as cmd/provision does:
// it wraps stdout, and the report came out as text under systemd until the
// boot suite (tests/boot) saw it in a real journal.
func TestReportUnderJournal(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stream  func(st *syscall.Stat_t) string
		args    []string
		wantOne bool
		main    bool // through MainWithHook, the binary's entry point
	}{
		{"journal, no --format", func(st *syscall.Stat_t) string { return fmt.Sprintf("%d:%d", st.Dev, st.Ino) }, nil, true, false},
		{"journal, no --format, the binary's wiring", func(st *syscall.Stat_t) string { return fmt.Sprintf("%d:%d", st.Dev, st.Ino) }, nil, true, true},
		{"journal, --format text, the binary's wiring", func(st *syscall.Stat_t) string { return fmt.Sprintf("%d:%d", st.Dev, st.Ino) }, []string{"--format", "text"}, false, true},
		{"journal, usage error", func(st *syscall.Stat_t) string { return fmt.Sprintf("%d:%d", st.Dev, st.Ino) }, []string{"--bogus"}, true, false},
		{"journal, --format text asked for", func(st *syscall.Stat_t) string { return fmt.Sprintf("%d:%d", st.Dev, st.Ino) }, []string{"--format", "text"}, false, false},
		{"another stream", func(st *syscall.Stat_t) string { return fmt.Sprintf("%d:%d", st.Dev, st.Ino+1) }, nil, false, false},
		{"not under systemd", func(*syscall.Stat_t) string { return "" }, nil, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := jsonRoot(t)
			f, err := os.Create(filepath.Join(t.TempDir(), "stdout"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var st syscall.Stat_t
			syscall.Fstat(int(f.Fd()), &st)
			t.Setenv("JOURNAL_STREAM", tc.stream(&st))
			var errb bytes.Buffer
			args := append([]string{"verify", "--root", root}, tc.args...)
			if tc.main {
				MainWithHook(args, f, &errb, make(chan os.Signal), StopGrace, nil)
			} else {
				Run(context.Background(), args, f, &errb)
			}
			b, _ := os.ReadFile(f.Name())
			one := strings.Count(string(b), "\n") == 1 && json.Valid(bytes.TrimSpace(b))
			if one != tc.wantOne {
				t.Fatalf("one JSON line = %v, want %v:\n%s", one, tc.wantOne, b)
			}
		})
	}
}
