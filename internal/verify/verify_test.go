package verify_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/internal/verify"
)

// fake is a check that records that it ran and returns a fixed outcome. The
// runner's logic (order, suppression, root cause) does not depend on what a
// check does, so fakes are the honest way to pin it down.
func fake(name string, layer diag.Layer, owner diag.Owner, o verify.Answer, ran *[]string, deps ...string) verify.Check {
	return verify.Check{Name: name, Layer: layer, Owner: owner, DependsOn: deps,
		Run: func(context.Context, *observe.Env) verify.Answer {
			*ran = append(*ran, name)
			return o
		}}
}

var (
	ok   = verify.Answer{Status: report.Pass, Message: "fine"}
	warn = verify.Answer{Status: report.Warn, Message: "meh", Remedy: "look at it"}
	bad  = verify.Answer{Status: report.Fail, Message: "broken", Remedy: "fix it", Evidence: map[string]string{"k": "v"}}
)

type row struct {
	name   string
	status report.Status
	msg    string
}

func rows(rs []report.Result) []row {
	var out []row
	for _, r := range rs {
		out = append(out, row{r.Name, r.Status, r.Message})
	}
	return out
}

func TestRunOrderAndSuppression(t *testing.T) {
	skipped := func(dep string) string { return "skipped: depends on " + dep + ", which did not pass" }
	tests := []struct {
		name    string
		checks  func(ran *[]string) []verify.Check
		wantRan []string
		want    []row
	}{
		{
			name: "all pass run in declared order, not alphabetical",
			checks: func(ran *[]string) []verify.Check {
				return []verify.Check{
					fake("zeta", diag.Config, diag.Node, ok, ran),
					fake("alpha", diag.Hosts, diag.Node, ok, ran, "zeta"),
					fake("mid", diag.TCP, diag.Network, ok, ran),
				}
			},
			wantRan: []string{"zeta", "alpha", "mid"},
			want:    []row{{"zeta", report.Pass, "fine"}, {"alpha", report.Pass, "fine"}, {"mid", report.Pass, "fine"}},
		},
		{
			name: "a failed check's dependents are skipped, naming it, and never run",
			checks: func(ran *[]string) []verify.Check {
				return []verify.Check{
					fake("a", diag.Hosts, diag.Node, bad, ran),
					fake("b", diag.TCP, diag.Network, ok, ran, "a"),
					fake("c", diag.Clock, diag.Node, ok, ran),
				}
			},
			wantRan: []string{"a", "c"},
			want:    []row{{"a", report.Fail, "broken"}, {"b", report.Skip, skipped("a")}, {"c", report.Pass, "fine"}},
		},
		{
			name: "suppression is transitive: a skip blocks its own dependents and names the skipped check",
			checks: func(ran *[]string) []verify.Check {
				return []verify.Check{
					fake("a", diag.TCP, diag.Network, bad, ran),
					fake("b", diag.TLSServer, diag.Ingress, ok, ran, "a"),
					fake("c", diag.TLSClientAuth, diag.Ingress, ok, ran, "b"),
					fake("d", diag.Route, diag.Ingress, ok, ran, "c"),
				}
			},
			wantRan: []string{"a"},
			want:    []row{{"a", report.Fail, "broken"}, {"b", report.Skip, skipped("a")}, {"c", report.Skip, skipped("b")}, {"d", report.Skip, skipped("c")}},
		},
		{
			name: "warn does not block dependents",
			checks: func(ran *[]string) []verify.Check {
				return []verify.Check{
					fake("a", diag.Hosts, diag.Node, warn, ran),
					fake("b", diag.TCP, diag.Network, ok, ran, "a"),
				}
			},
			wantRan: []string{"a", "b"},
			want:    []row{{"a", report.Warn, "meh"}, {"b", report.Pass, "fine"}},
		},
		{
			name: "the first failing dependency in DependsOn order is named",
			checks: func(ran *[]string) []verify.Check {
				return []verify.Check{
					fake("x", diag.CA, diag.CAOwner, ok, ran),
					fake("y", diag.Credentials, diag.Node, bad, ran),
					fake("z", diag.CA, diag.CAOwner, bad, ran),
					fake("w", diag.CA, diag.Node, ok, ran, "x", "y", "z"),
				}
			},
			wantRan: []string{"x", "y", "z"},
			want:    []row{{"x", report.Pass, "fine"}, {"y", report.Fail, "broken"}, {"z", report.Fail, "broken"}, {"w", report.Skip, skipped("y")}},
		},
		{
			name: "a dependency that is declared later (or unknown) blocks: order is the contract",
			checks: func(ran *[]string) []verify.Check {
				return []verify.Check{
					fake("early", diag.TCP, diag.Network, ok, ran, "late"),
					fake("late", diag.Hosts, diag.Node, ok, ran),
					fake("orphan", diag.Route, diag.Ingress, ok, ran, "nonexistent"),
				}
			},
			wantRan: []string{"late"},
			want:    []row{{"early", report.Skip, skipped("late")}, {"late", report.Pass, "fine"}, {"orphan", report.Skip, skipped("nonexistent")}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ran []string
			got := verify.Run(context.Background(), nil, tt.checks(&ran), nil)
			if !reflect.DeepEqual(ran, tt.wantRan) {
				t.Errorf("ran %v, want %v", ran, tt.wantRan)
			}
			if g := rows(got); !reflect.DeepEqual(g, tt.want) {
				t.Errorf("results\n got %v\nwant %v", g, tt.want)
			}
		})
	}
}

func TestRunOutcomeOverridesLayerAndOwner(t *testing.T) {
	var ran []string
	o := verify.Answer{Status: report.Fail, Message: "lower", Layer: diag.Hosts, Owner: diag.Node}
	got := verify.Run(context.Background(), nil, []verify.Check{
		fake("tcp", diag.TCP, diag.Network, o, &ran),
		fake("plain", diag.Route, diag.Ingress, bad, &ran),
	}, nil)
	if got[0].Layer != diag.Hosts || got[0].Owner != diag.Node {
		t.Errorf("override: got layer %s owner %s, want hosts node", got[0].Layer, got[0].Owner)
	}
	if got[1].Layer != diag.Route || got[1].Owner != diag.Ingress {
		t.Errorf("default: got layer %s owner %s, want route ingress", got[1].Layer, got[1].Owner)
	}
	if got[0].Remedy != "" || got[1].Remedy != "fix it" || got[1].Evidence["k"] != "v" {
		t.Errorf("remedy/evidence not carried: %+v", got)
	}
}

func TestRunLogsEveryCheckWithLayerAndOwner(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var ran []string
	verify.Run(context.Background(), nil, []verify.Check{
		fake("a", diag.TCP, diag.Network, bad, &ran),
		fake("b", diag.TLSServer, diag.Ingress, ok, &ran, "a"),
		fake("c", diag.Clock, diag.Node, warn, &ran),
	}, log)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("want one log line per check, got %d:\n%s", len(lines), buf.String())
	}
	want := []map[string]string{
		{"level": "ERROR", "check": "a", "layer": "tcp", "owner": "network", "status": "fail"},
		{"level": "INFO", "check": "b", "layer": "tls-server", "owner": "ingress", "status": "skip"},
		{"level": "WARN", "check": "c", "layer": "clock", "owner": "node", "status": "warn"},
	}
	for i, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		for k, v := range want[i] {
			if m[k] != v {
				t.Errorf("line %d: %s = %v, want %s (%s)", i, k, m[k], v, l)
			}
		}
	}
}

func TestNewReport(t *testing.T) {
	transientFail := verify.Answer{Status: report.Fail, Message: "503 from the API", Remedy: "wait", Transient: true,
		Owner: diag.API, Layer: diag.TasksWait}
	tests := []struct {
		name   string
		checks func(ran *[]string) []verify.Check
		want   report.Report // Checks and durations not compared here
	}{
		{
			name: "all pass or warn: ok, no failed fields",
			checks: func(ran *[]string) []verify.Check {
				return []verify.Check{fake("a", diag.Config, diag.Node, ok, ran), fake("b", diag.Hosts, diag.Node, warn, ran)}
			},
			want: report.Report{OK: true, Command: "verify", NodeID: "gpu-1",
				Summary: "healthy: the node polls tasks/wait through the ingress with its own certificate"},
		},
		{
			name: "root cause is the first failure, not the last nor the lowest layer",
			checks: func(ran *[]string) []verify.Check {
				return []verify.Check{
					fake("a", diag.Config, diag.Node, ok, ran),
					fake("route", diag.Route, diag.Ingress, bad, ran),
					fake("hosts", diag.Hosts, diag.Node, verify.Answer{Status: report.Fail, Message: "later"}, ran),
				}
			},
			want: report.Report{Command: "verify", NodeID: "gpu-1", FailedLayer: diag.Route, Owner: diag.Ingress,
				FailedCheck: "route", Summary: "broken", Remedy: "fix it"},
		},
		{
			name: "transient and the outcome's owner/layer override reach the report",
			checks: func(ran *[]string) []verify.Check {
				return []verify.Check{fake("tasks-wait", diag.TasksWait, diag.Ingress, transientFail, ran)}
			},
			want: report.Report{Command: "verify", NodeID: "gpu-1", FailedLayer: diag.TasksWait, Owner: diag.API,
				FailedCheck: "tasks-wait", Summary: "503 from the API", Remedy: "wait", Transient: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ran []string
			res := verify.Run(context.Background(), nil, tt.checks(&ran), nil)
			r := report.New("verify", "gpu-1", res, 1500*time.Millisecond)
			if r.DurationMS != 1500 {
				t.Errorf("duration_ms %d, want 1500", r.DurationMS)
			}
			if len(r.Checks) != len(res) {
				t.Errorf("report has %d checks, want %d", len(r.Checks), len(res))
			}
			got := *r
			got.Checks, got.DurationMS = nil, 0
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("report\n got %+v\nwant %+v", got, tt.want)
			}
			rc := r.RootCause()
			if tt.want.OK != (rc == nil) {
				t.Errorf("RootCause() = %v with ok=%v", rc, tt.want.OK)
			}
			if rc != nil && rc.Name != tt.want.FailedCheck {
				t.Errorf("RootCause().Name = %s, want %s", rc.Name, tt.want.FailedCheck)
			}
		})
	}
}

func TestFailed(t *testing.T) {
	f := &diag.Finding{Layer: diag.Enroll, Owner: diag.CAOwner, Transient: true, Summary: "the CA is unavailable",
		Remedy: "wait", Evidence: map[string]string{"http_status": "503"}}
	r := report.Failed("bootstrap", "gpu-7", "enroll", f)
	if r.OK || r.Command != "bootstrap" || r.NodeID != "gpu-7" || r.FailedLayer != diag.Enroll || r.Owner != diag.CAOwner ||
		r.FailedCheck != "enroll" || r.Summary != f.Summary || r.Remedy != "wait" || !r.Transient {
		t.Errorf("Failed report wrong: %+v", r)
	}
	if len(r.Checks) != 1 || r.Checks[0].Status != report.Fail || r.Checks[0].Evidence["http_status"] != "503" ||
		r.Checks[0].Layer != diag.Enroll || r.Checks[0].Owner != diag.CAOwner {
		t.Errorf("Failed report's single check wrong: %+v", r.Checks)
	}
}

// TestReportJSONFieldNames pins the JSON field names: consumers and runbooks
// key on them.
func TestReportJSONFieldNames(t *testing.T) {
	var ran []string
	res := verify.Run(context.Background(), nil, []verify.Check{
		fake("tasks-wait", diag.TasksWait, diag.API, verify.Answer{Status: report.Fail, Message: "m", Remedy: "r",
			Evidence: map[string]string{"http_status": "503"}, Transient: true}, &ran),
	}, nil)
	b, err := json.Marshal(report.New("verify", "gpu-1", res, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ok", "command", "node_id", "failed_layer", "owner", "failed_check", "summary", "remedy", "transient", "checks", "duration_ms"} {
		if _, ok := m[k]; !ok {
			t.Errorf("report JSON lacks %q: %s", k, b)
		}
	}
	c := m["checks"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "layer", "owner", "status", "message", "remedy", "evidence", "duration_ms"} {
		if _, ok := c[k]; !ok {
			t.Errorf("check JSON lacks %q: %s", k, b)
		}
	}
	if m["ok"] != false || m["failed_layer"] != "tasks-wait" || m["owner"] != "api" || c["status"] != "fail" {
		t.Errorf("values wrong: %s", b)
	}
}

// TestChecksLadder pins the real ladder's names, layers, owners and
// dependencies: check names are an interface, and every dependency must name
// an earlier check or the runner would skip it forever.
func TestChecksLadder(t *testing.T) {
	type c struct {
		name  string
		layer diag.Layer
		owner diag.Owner
	}
	want := []c{
		{"config", diag.Config, diag.Node}, {"hosts-block", diag.Hosts, diag.Node}, {"hosts-resolve", diag.Hosts, diag.Node},
		{"hosts-persist", diag.Hosts, diag.Node}, {"ca-root", diag.CA, diag.CAOwner}, {"clock", diag.Clock, diag.Node},
		{"key-store", diag.Credentials, diag.Node}, {"credentials", diag.Credentials, diag.Node}, {"renew-timer", diag.Credentials, diag.Node}, {"ca-chain", diag.CA, diag.Node}, {"tcp", diag.TCP, diag.Network},
		{"tls-server", diag.TLSServer, diag.Ingress}, {"tls-client-auth", diag.TLSClientAuth, diag.Ingress},
		{"route", diag.Route, diag.Ingress}, {"identity", diag.Identity, diag.API}, {"tasks-wait", diag.TasksWait, diag.API},
	}
	checks := verify.Checks()
	var got []c
	seen := map[string]bool{}
	for _, x := range checks {
		got = append(got, c{x.Name, x.Layer, x.Owner})
		for _, d := range x.DependsOn {
			if !seen[d] {
				t.Errorf("%s depends on %s, which is not an earlier check", x.Name, d)
			}
		}
		seen[x.Name] = true
		if x.Run == nil {
			t.Errorf("%s has no Run", x.Name)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ladder\n got %v\nwant %v", got, want)
	}
}

// TestRunContainsAPanickingCheck: a check that panics (a nil slice indexed,
// as passMessage once did for tls-server) fails itself in layer internal,
// owner provision; checks after it keep running and its dependents skip;
// the report stays whole in JSON and names the check.
func TestRunContainsAPanickingCheck(t *testing.T) {
	var ran []string
	boom := verify.Check{Name: "tls-server", Layer: diag.TLSServer, Owner: diag.Ingress,
		Run: func(context.Context, *observe.Env) verify.Answer {
			ran = append(ran, "tls-server")
			var chain []int
			_ = chain[0]
			return ok
		}}
	checks := []verify.Check{
		fake("tcp", diag.TCP, diag.Network, ok, &ran),
		boom,
		fake("tls-client-auth", diag.TLSClientAuth, diag.Ingress, ok, &ran, "tls-server"),
		fake("hosts-persist", diag.Hosts, diag.Node, ok, &ran),
	}
	results := verify.Run(context.Background(), nil, checks, nil)
	if want := []string{"tcp", "tls-server", "hosts-persist"}; !reflect.DeepEqual(ran, want) {
		t.Errorf("ran %v, want %v", ran, want)
	}
	rep := report.New("verify", "gpu-1", results, time.Millisecond)
	if rep.OK || rep.FailedLayer != diag.Internal || rep.Owner != diag.Provision || rep.FailedCheck != "tls-server" {
		t.Fatalf("report ok=%v layer=%s owner=%s check=%s, want a failure in internal/provision at tls-server", rep.OK, rep.FailedLayer, rep.Owner, rep.FailedCheck)
	}
	if !strings.Contains(rep.Summary, "internal error in check tls-server; this is a bug") || !strings.Contains(rep.Summary, "index out of range") {
		t.Errorf("summary %q", rep.Summary)
	}
	if results[2].Status != report.Skip || results[3].Status != report.Pass {
		t.Errorf("dependent %s, independent %s; want skip and pass", results[2].Status, results[3].Status)
	}
	b, err := json.Marshal(rep)
	if err != nil || !json.Valid(b) {
		t.Fatalf("report does not marshal: %v", err)
	}
}

// TestManageEtcHosts: cloud-init reads YAML 1.1, so yes and on are true
// (the regular expression this replaced missed them), a commented-out key
// or one under another key sets nothing, and a non-YAML user-data sets
// nothing.
func TestManageEtcHosts(t *testing.T) {
	for _, tt := range []struct {
		doc     string
		on, set bool
	}{
		{"manage_etc_hosts: true\n", true, true},
		{"manage_etc_hosts: yes\n", true, true},
		{"manage_etc_hosts: on\n", true, true},
		{"manage_etc_hosts: template\n", true, true},
		{"manage_etc_hosts: localhost\n", true, true},
		{"manage_etc_hosts: false\n", false, true},
		{"manage_etc_hosts: no\n", false, true},
		{"manage_etc_hosts: off\n", false, true},
		{"#cloud-config\nmanage_etc_hosts: True\nhostname: gpu-1\n", true, true},
		{"# manage_etc_hosts: true\n", false, false},
		{"system_info:\n  manage_etc_hosts: true\n", false, false},
		{"#!/bin/sh\necho manage_etc_hosts: true\n", false, false},
		{"Content-Type: multipart/mixed; boundary=x\n\n--x\n", false, false},
	} {
		if on, set := verify.ManageEtcHosts([]byte(tt.doc)); on != tt.on || set != tt.set {
			t.Errorf("ManageEtcHosts(%q) = %v, %v; want %v, %v", tt.doc, on, set, tt.on, tt.set)
		}
	}
}

// TestHostsPersistMergeOrder: the last file in cloud-init's merge order
// decides, as cloud-init does: a cloud.cfg.d drop-in turning it off wins
// over cloud.cfg, and user-data wins over both.
func TestHostsPersistMergeOrder(t *testing.T) {
	for _, tt := range []struct {
		name  string
		files map[string]string
		want  report.Status
		by    string
	}{
		{"nothing sets it", map[string]string{"etc/cloud/cloud.cfg": "users: [default]\n"}, report.Pass, ""},
		{"cloud.cfg on", map[string]string{"etc/cloud/cloud.cfg": "manage_etc_hosts: yes\n"}, report.Warn, "/etc/cloud/cloud.cfg"},
		{"drop-in turns it off", map[string]string{"etc/cloud/cloud.cfg": "manage_etc_hosts: true\n", "etc/cloud/cloud.cfg.d/99-provision.cfg": "manage_etc_hosts: false\n"}, report.Pass, "/etc/cloud/cloud.cfg.d/99-provision.cfg"},
		{"later drop-in turns it back on", map[string]string{"etc/cloud/cloud.cfg.d/10-a.cfg": "manage_etc_hosts: false\n", "etc/cloud/cloud.cfg.d/20-b.cfg": "manage_etc_hosts: on\n"}, report.Warn, "/etc/cloud/cloud.cfg.d/20-b.cfg"},
		{"user-data wins", map[string]string{"etc/cloud/cloud.cfg": "manage_etc_hosts: true\n", "var/lib/cloud/instance/user-data.txt": "#cloud-config\nmanage_etc_hosts: false\n"}, report.Pass, "/var/lib/cloud/instance/user-data.txt"},
		{"cloud-init's merged result is authoritative", map[string]string{"var/lib/cloud/instance/user-data.txt": "#cloud-config\nmanage_etc_hosts: false\n", "run/cloud-init/combined-cloud-config.json": `{"manage_etc_hosts": "template"}`}, report.Warn, "/run/cloud-init/combined-cloud-config.json"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for p, data := range tt.files {
				full := filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			e := observe.NewEnv(&config.Config{}, &system.Host{Root: root})
			res := verify.Run(context.Background(), e, checksNamed("hosts-persist"), nil)
			if len(res) != 1 || res[0].Status != tt.want || res[0].Evidence["decided_by"] != tt.by {
				t.Fatalf("hosts-persist = %+v, want %s decided by %q", res, tt.want, tt.by)
			}
		})
	}
}

// TestDeadlineIsNoEvidence: a check whose run's deadline has ended (or
// ends while it asks) reports a failure that says nothing about its layer:
// getent killed by the context is not "glibc resolves it differently". The
// runner makes such a failure transient and words it as the deadline; a
// judgement of an observation recorded in time (Timed: the probe's
// stages) keeps its own classification, and a pass stays a pass. Under a
// live context nothing changes. hosts-persist reads nothing after the
// deadline and so cannot say cloud-init leaves /etc/hosts alone.
func TestDeadlineIsNoEvidence(t *testing.T) {
	ended, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	glibc := verify.Answer{Status: report.Fail, Message: "getent ahosts ca.cp.internal gives  (err getent ahosts ca.cp.internal: context deadline exceeded), want 10.0.0.1: glibc programs resolve it differently from Go", Remedy: "check nsswitch"}
	alert := verify.Answer{Status: report.Fail, Message: "the ingress refused the client certificate", Timed: true}
	var ran []string
	checks := []verify.Check{
		fake("hosts-resolve", diag.Hosts, diag.Node, glibc, &ran),
		fake("tls-client-auth", diag.TLSClientAuth, diag.Ingress, alert, &ran),
		fake("config", diag.Config, diag.Node, ok, &ran),
	}
	for _, tc := range []struct {
		name           string
		ctx            context.Context
		hostsTransient bool
	}{{"deadline ended", ended, true}, {"live", context.Background(), false}} {
		t.Run(tc.name, func(t *testing.T) {
			res := verify.Run(tc.ctx, nil, checks, nil)
			h := res[0]
			if h.Status != report.Fail || h.Transient != tc.hostsTransient || strings.Contains(h.Message, "not judged: the run's deadline ended") != tc.hostsTransient {
				t.Errorf("hosts-resolve: %s transient=%v %q", h.Status, h.Transient, h.Message)
			}
			if res[1].Status != report.Fail || res[1].Transient || res[1].Message != alert.Message {
				t.Errorf("a probe stage recorded in time was reworded: %+v", res[1])
			}
			if res[2].Status != report.Pass {
				t.Errorf("a pass under an ended deadline: %+v", res[2])
			}
			rep := report.New("verify", "gpu-1", res, 0)
			if rep.FailedLayer != diag.Hosts || rep.Transient != tc.hostsTransient {
				t.Errorf("report: layer %s transient %v", rep.FailedLayer, rep.Transient)
			}
		})
	}

	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc", "cloud"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "cloud", "cloud.cfg"), []byte("manage_etc_hosts: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := observe.NewEnv(&config.Config{}, &system.Host{Root: root})
	for i := 0; i < 20; i++ { // the read races the ended context: try it both ways
		if res := verify.Run(ended, e, checksNamed("hosts-persist"), nil); len(res) != 1 || res[0].Status == report.Pass {
			t.Fatalf("hosts-persist after the deadline: %+v, want anything but a pass", res)
		}
	}
}

// checksNamed is the ladder's check of that name, alone.
func checksNamed(name string) []verify.Check {
	var out []verify.Check
	for _, c := range verify.Checks() {
		if c.Name == name {
			out = append(out, c)
		}
	}
	return out
}

// TestRunObservesEarly: a check's observation (Check.Observe) starts as soon
// as its dependencies have passed, while the checks listed ahead of it run,
// and never when a dependency failed; the check is still judged in ladder
// order; a panic inside the early observation is the check's internal
// failure, with the panic's words and stack.
func TestRunObservesEarly(t *testing.T) {
	for _, tc := range []struct {
		name      string
		dep       verify.Answer
		panics    bool
		observed  bool          // the observation ran
		overlap   bool          // it ran while "local" ran
		want      report.Status // the observing check's status
		wantLayer diag.Layer
	}{
		{name: "dependency passed", dep: ok, observed: true, overlap: true, want: report.Pass, wantLayer: diag.TCP},
		{name: "dependency warned", dep: warn, observed: true, overlap: true, want: report.Pass, wantLayer: diag.TCP},
		{name: "dependency failed", dep: bad, observed: false, want: report.Skip, wantLayer: diag.TCP},
		{name: "observation panicked", dep: ok, panics: true, observed: true, overlap: true, want: report.Fail, wantLayer: diag.Internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ran []string
			started := make(chan struct{})
			observed := false
			overlap := false
			checks := []verify.Check{
				fake("hosts-resolve", diag.Hosts, diag.Node, tc.dep, &ran),
				{Name: "local", Layer: diag.Credentials, Owner: diag.Node, Run: func(context.Context, *observe.Env) verify.Answer {
					ran = append(ran, "local")
					select { // the observation starts while this check runs
					case <-started:
						overlap = true
					case <-time.After(10 * time.Second):
					}
					return ok
				}},
				{Name: "tcp", Layer: diag.TCP, Owner: diag.Network, DependsOn: []string{"hosts-resolve"},
					Observe: func(context.Context, *observe.Env) {
						observed = true
						close(started)
						if tc.panics {
							var chain []int
							_ = chain[0]
						}
					},
					Run: func(context.Context, *observe.Env) verify.Answer {
						ran = append(ran, "tcp")
						return ok
					}},
			}
			if !tc.observed { // nothing would close started: do not wait for it
				checks[1].Run = func(context.Context, *observe.Env) verify.Answer { ran = append(ran, "local"); return ok }
			}
			results := verify.Run(context.Background(), nil, checks, nil)
			if observed != tc.observed || overlap != tc.overlap {
				t.Errorf("observed %v, while local ran %v; want %v, %v", observed, overlap, tc.observed, tc.overlap)
			}
			wantRan := []string{"hosts-resolve", "local"}
			if tc.want == report.Pass {
				wantRan = append(wantRan, "tcp")
			}
			if !reflect.DeepEqual(ran, wantRan) {
				t.Errorf("ran %v, want %v (judged in ladder order)", ran, wantRan)
			}
			got := results[2]
			if got.Status != tc.want || got.Layer != tc.wantLayer {
				t.Fatalf("tcp: %s in %s (%s), want %s in %s", got.Status, got.Layer, got.Message, tc.want, tc.wantLayer)
			}
			if tc.panics && (!strings.Contains(got.Message, "index out of range") || !strings.Contains(got.Evidence["stack"], "verify_test")) {
				t.Errorf("panic not named: %q, stack %q", got.Message, got.Evidence["stack"])
			}
		})
	}
}
