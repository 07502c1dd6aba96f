package e2e

import (
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// textfileDir is node_exporter's directory on Debian, provision's default
// metrics.textfile_dir: a node that has it gets metrics without a config key.
const textfileDir = "/var/lib/prometheus/node-exporter"

// TestMetricsFromRealRuns: the real binary, against a real step-ca, writes
// provision_bootstrap.prom after a bootstrap and provision_verify.prom after
// a healthy and then a failing verify (the ingress trusts the wrong CA),
// and provision_renew.prom after a real renewal (with the new certificate's
// renewal point and due time, later than bootstrap's); the real promtool
// accepts each file, each says what the report said, and every metric name
// written is documented in docs/metrics.md.
func TestMetricsFromRealRuns(t *testing.T) {
	t.Parallel()
	promtool := testenv.RequireProgram(t, "promtool", "prometheus")
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, true)
	dir := n.Path(textfileDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	documented := docMetricNames(t)
	type step struct {
		name    string
		run     func() nodetest.Result
		code    int
		file    string
		want    []string
		notWant []string
	}
	fp := cp.CA.Fingerprint()
	for _, s := range []step{
		{"bootstrap", func() nodetest.Result { return n.RunJSON("bootstrap") }, 0, "provision_bootstrap.prom",
			[]string{`provision_last_run_success{command="bootstrap"} 1`, `provision_cert_issuer_root_info{command="bootstrap",fingerprint="` + fp + `"} 1`,
				`provision_check_status{check="tasks-wait",command="bootstrap",layer="tasks-wait",owner="api"} 0`, "provision_cert_not_after_timestamp_seconds{command=\"bootstrap\"} ",
				"provision_cert_renew_after_timestamp_seconds{command=\"bootstrap\"} ", "provision_cert_renew_due_timestamp_seconds{command=\"bootstrap\"} "},
			[]string{"provision_failed"}},
		{"healthy verify", func() nodetest.Result { return n.RunJSON("verify") }, 0, "provision_verify.prom",
			[]string{`provision_last_run_success{command="verify"} 1`, `provision_check_status{check="tls-client-auth",command="verify",layer="tls-client-auth",owner="ingress"} 0`,
				`provision_cert_issuer_root_info{command="verify",fingerprint="` + fp + `"} 1`},
			[]string{"provision_failed"}},
		{"failing verify", func() nodetest.Result {
			cp.SetClientCAMode(controlplane.ClientCAUnrelated)
			defer cp.SetClientCAMode(controlplane.ClientCAStep)
			return n.RunJSON("verify")
		}, 16, "provision_verify.prom",
			[]string{`provision_last_run_success{command="verify"} 0`, `provision_failed{command="verify",layer="tls-client-auth",owner="ingress"} 1`,
				`provision_check_status{check="tls-client-auth",command="verify",layer="tls-client-auth",owner="ingress"} 2`,
				`provision_check_status{check="route",command="verify",layer="route",owner="ingress"} -1`},
			nil},
		{"renew --force", func() nodetest.Result { return n.RunJSON("renew", "--force") }, 0, "provision_renew.prom",
			[]string{`provision_last_run_success{command="renew"} 1`, `provision_cert_issuer_root_info{command="renew",fingerprint="` + fp + `"} 1`,
				`provision_check_status{check="tasks-wait",command="renew",layer="tasks-wait",owner="api"} 0`,
				"provision_cert_renew_after_timestamp_seconds{command=\"renew\"} ", "provision_cert_renew_due_timestamp_seconds{command=\"renew\"} "},
			[]string{"provision_failed"}},
		{"renew, nothing due", func() nodetest.Result { return n.RunJSON("renew") }, 0, "provision_renew.prom",
			[]string{`provision_last_run_success{command="renew"} 1`, "provision_cert_renew_due_timestamp_seconds{command=\"renew\"} "},
			[]string{"provision_failed"}},
	} {
		r := s.run()
		nodetest.WantExit(t, r, s.code)
		b, err := os.ReadFile(filepath.Join(dir, s.file))
		if err != nil {
			t.Fatalf("%s: %v\n%s", s.name, err, r)
		}
		text := string(b)
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(text)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: promtool check metrics: %v\n%s\n%s", s.name, err, out, text)
		}
		for _, w := range s.want {
			if !strings.Contains(text, w) {
				t.Errorf("%s: %s lacks %q:\n%s", s.name, s.file, w, text)
			}
		}
		for _, w := range s.notWant {
			if strings.Contains(text, w) {
				t.Errorf("%s: %s has %q:\n%s", s.name, s.file, w, text)
			}
		}
		for _, m := range regexp.MustCompile(`(?m)^([a-z_]+)\{`).FindAllStringSubmatch(text, -1) {
			if !documented[m[1]] {
				t.Errorf("%s: %s writes %s, which docs/metrics.md does not document", s.name, s.file, m[1])
			}
		}
		st, _ := os.Stat(filepath.Join(dir, s.file))
		if st.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, want 0644 (node_exporter must read it)", s.name, st.Mode())
		}
	}
	// Each command has its own file, and nothing else is left there.
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "provision_bootstrap.prom provision_renew.prom provision_verify.prom" {
		t.Errorf("textfile directory holds %v", names)
	}
	// The renewal moved the renewal point and due time on: renew's file
	// holds the new certificate's, bootstrap's the first one's, and
	// renew.json's due_at is renew's metric.
	renewDue := gauge(t, filepath.Join(dir, "provision_renew.prom"), "provision_cert_renew_due_timestamp_seconds")
	bootAfter := gauge(t, filepath.Join(dir, "provision_bootstrap.prom"), "provision_cert_renew_after_timestamp_seconds")
	renewAfter := gauge(t, filepath.Join(dir, "provision_renew.prom"), "provision_cert_renew_after_timestamp_seconds")
	if renewAfter <= bootAfter || renewDue < renewAfter {
		t.Errorf("renewal point %v -> %v, due %v: want a later renewal point after the renewal, and due at or after it", bootAfter, renewAfter, renewDue)
	}
	var rec struct {
		DueAt      time.Time `json:"due_at"`
		RenewAfter time.Time `json:"renew_after"`
	}
	if err := json.Unmarshal(readFile(t, filepath.Join(n.Files.StateDir, "renew.json")), &rec); err != nil {
		t.Fatal(err)
	}
	if math.Abs(float64(rec.DueAt.UnixMilli())/1000-renewDue) > 0.001 || math.Abs(float64(rec.RenewAfter.UnixMilli())/1000-renewAfter) > 0.001 {
		t.Errorf("renew.json due_at %s renew_after %s, metrics %v %v: the metric is not the record's", rec.DueAt, rec.RenewAfter, renewDue, renewAfter)
	}
}

// gauge reads the value of a metric's one series in a .prom file.
func gauge(t *testing.T, path, name string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + name + `\{[^}]*\} (\S+)$`).FindStringSubmatch(string(readFile(t, path)))
	if m == nil {
		t.Fatalf("%s has no %s", path, name)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// docMetricNames are the metric names in docs/metrics.md's table.
func docMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot, "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, x := range regexp.MustCompile("(?m)^\\| `(provision_[a-z_]+)`").FindAllStringSubmatch(string(b), -1) {
		m[x[1]] = true
	}
	if len(m) < 5 {
		t.Fatalf("docs/metrics.md lists %d metrics", len(m))
	}
	return m
}
