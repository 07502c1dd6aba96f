package metrics

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
)

var (
	finished  = time.Date(2026, 3, 14, 9, 26, 53, 589_000_000, time.UTC)
	notAfter  = time.Date(2026, 3, 15, 9, 0, 0, 0, time.UTC)
	notBefore = time.Date(2026, 3, 14, 9, 0, 0, 0, time.UTC)
	rootFP    = strings.Repeat("ab", 32)
	// renewAt is 2/3 of the lifetime; dueAt adds a splay of 20 minutes.
	renewAt = time.Date(2026, 3, 15, 1, 0, 0, 0, time.UTC)
	dueAt   = time.Date(2026, 3, 15, 1, 20, 0, 0, time.UTC)
)

// failingVerify is the incident's report: the ingress trusts the wrong CA.
func failingVerify() *report.Report {
	return report.New("verify", "gpu-0042", []report.Result{
		{Name: "config", Layer: diag.Config, Owner: diag.Node, Status: report.Pass},
		{Name: "hosts-persist", Layer: diag.Hosts, Owner: diag.Node, Status: report.Warn},
		{Name: "tcp", Layer: diag.TCP, Owner: diag.Network, Status: report.Pass},
		{Name: "tls-client-auth", Layer: diag.TLSClientAuth, Owner: diag.Ingress, Status: report.Fail, Message: `remote error: "unknown authority"`},
		{Name: "route", Layer: diag.Route, Owner: diag.Ingress, Status: report.Skip},
	}, 1500*time.Millisecond)
}

func healthyBootstrap() *report.Report {
	return report.New("bootstrap", "gpu-0042", []report.Result{
		{Name: "config", Layer: diag.Config, Owner: diag.Node, Status: report.Pass},
		{Name: "tasks-wait", Layer: diag.TasksWait, Owner: diag.API, Status: report.Pass},
	}, time.Second)
}

func TestRenderFailingVerify(t *testing.T) {
	got, err := Render(Run{Command: "verify", Report: failingVerify(), Finished: finished, Duration: 1250 * time.Millisecond,
		Cert: &Cert{NotBefore: notBefore, NotAfter: notAfter, RootFingerprint: rootFP, RenewAfter: renewAt, DueAt: dueAt}, Version: "1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	want := `# HELP provision_build_info provision's version; always 1.
# TYPE provision_build_info gauge
provision_build_info{command="verify",version="1.2.3"} 1
# HELP provision_last_run_timestamp_seconds Unix time the last run of the command ended.
# TYPE provision_last_run_timestamp_seconds gauge
provision_last_run_timestamp_seconds{command="verify"} 1.773480413589e+09
# HELP provision_last_run_success 1 if the last run of the command was ok (exit 0), else 0.
# TYPE provision_last_run_success gauge
provision_last_run_success{command="verify"} 0
# HELP provision_run_duration_seconds Wall-clock duration of the last run of the command.
# TYPE provision_run_duration_seconds gauge
provision_run_duration_seconds{command="verify"} 1.25
# HELP provision_failed 1 for the layer and owner the last run of the command failed at; no series when it was ok.
# TYPE provision_failed gauge
provision_failed{command="verify",layer="tls-client-auth",owner="ingress"} 1
# HELP provision_check_status Status of each check in the last run of the command: -1 skip, 0 pass, 1 warn, 2 fail.
# TYPE provision_check_status gauge
provision_check_status{check="config",command="verify",layer="config",owner="node"} 0
provision_check_status{check="hosts-persist",command="verify",layer="hosts",owner="node"} 1
provision_check_status{check="route",command="verify",layer="route",owner="ingress"} -1
provision_check_status{check="tcp",command="verify",layer="tcp",owner="network"} 0
provision_check_status{check="tls-client-auth",command="verify",layer="tls-client-auth",owner="ingress"} 2
# HELP provision_cert_not_before_timestamp_seconds Unix time the installed node certificate became valid (NotBefore), as seen after the run.
# TYPE provision_cert_not_before_timestamp_seconds gauge
provision_cert_not_before_timestamp_seconds{command="verify"} 1.7734788e+09
# HELP provision_cert_not_after_timestamp_seconds Unix time the installed node certificate expires (NotAfter), as seen after the run.
# TYPE provision_cert_not_after_timestamp_seconds gauge
provision_cert_not_after_timestamp_seconds{command="verify"} 1.7735652e+09
# HELP provision_cert_issuer_root_info The CA root the installed node certificate chains to (hex SHA-256 of its DER); always 1.
# TYPE provision_cert_issuer_root_info gauge
provision_cert_issuer_root_info{command="verify",fingerprint="` + rootFP + `"} 1
# HELP provision_cert_renew_after_timestamp_seconds Unix time the installed node certificate reaches its renewal point (renew.fraction of its lifetime), as seen after the run.
# TYPE provision_cert_renew_after_timestamp_seconds gauge
provision_cert_renew_after_timestamp_seconds{command="verify"} 1.7735364e+09
# HELP provision_cert_renew_due_timestamp_seconds Unix time provision renew renews the installed node certificate: its renewal point plus this node's splay.
# TYPE provision_cert_renew_due_timestamp_seconds gauge
provision_cert_renew_due_timestamp_seconds{command="verify"} 1.7735376e+09
`
	if string(got) != want {
		t.Errorf("--- got\n%s--- want\n%s", got, want)
	}
}

// TestRenderSeries: which series exist for which run (absent, not 0, for
// the layers a run did not fail at).
func TestRenderSeries(t *testing.T) {
	for _, tc := range []struct {
		name    string
		run     Run
		want    []string // substrings that must appear
		notWant []string
	}{
		{"healthy bootstrap: no failed series", Run{Command: "bootstrap", Report: healthyBootstrap(), Cert: &Cert{NotAfter: notAfter, RootFingerprint: rootFP}},
			[]string{`provision_last_run_success{command="bootstrap"} 1`, `provision_check_status{check="tasks-wait",command="bootstrap",layer="tasks-wait",owner="api"} 0`},
			[]string{"provision_failed"}},
		{"no certificate: no cert series", Run{Command: "verify", Report: failingVerify()},
			[]string{`provision_failed{command="verify",layer="tls-client-auth",owner="ingress"} 1`},
			[]string{"provision_cert_"}},
		{"root unknown: expiry without root", Run{Command: "verify", Report: failingVerify(), Cert: &Cert{NotAfter: notAfter}},
			[]string{"provision_cert_not_after_timestamp_seconds"}, []string{"provision_cert_issuer_root_info"}},
		{"renew is a command like the others", Run{Command: "renew", Report: healthyBootstrap(), Cert: &Cert{NotAfter: notAfter, RenewAfter: renewAt, DueAt: dueAt}},
			[]string{`provision_last_run_success{command="renew"} 1`, `provision_cert_renew_after_timestamp_seconds{command="renew"} 1.7735364e+09`,
				`provision_cert_renew_due_timestamp_seconds{command="renew"} 1.7735376e+09`}, []string{`command="bootstrap"`}},
		{"no renewal point: no renewal series", Run{Command: "verify", Report: failingVerify(), Cert: &Cert{NotAfter: notAfter}},
			[]string{"provision_cert_not_after_timestamp_seconds"}, []string{"provision_cert_renew_"}},
		{"config failure outside the ladder", Run{Command: "verify", Report: report.Failed("verify", "", "config", &diag.Finding{Layer: diag.Config, Owner: diag.Node, Summary: "bad"})},
			[]string{`provision_failed{command="verify",layer="config",owner="node"} 1`, `provision_check_status{check="config",command="verify",layer="config",owner="node"} 2`}, nil},
		{"a duplicated check is one series, the worst", Run{Command: "verify", Report: &report.Report{OK: true, Checks: []report.Result{
			{Name: "x", Layer: diag.Hosts, Owner: diag.Node, Status: report.Pass}, {Name: "x", Layer: diag.Hosts, Owner: diag.Node, Status: report.Warn}}}},
			[]string{`provision_check_status{check="x",command="verify",layer="hosts",owner="node"} 1`}, []string{`owner="node"} 0`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Render(tc.run)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(b), w) {
					t.Errorf("missing %q in\n%s", w, b)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(string(b), w) {
					t.Errorf("unexpected %q in\n%s", w, b)
				}
			}
		})
	}
}

func TestFileName(t *testing.T) {
	for _, tc := range []struct {
		cmd, want string
		ok        bool
	}{
		{"bootstrap", "provision_bootstrap.prom", true},
		{"verify", "provision_verify.prom", true},
		{"renew", "provision_renew.prom", true},
		{"", "", false},
		{"../etc/passwd", "", false},
		{"hosts apply", "", false},
		{"Verify", "", false},
	} {
		got, err := FileName(tc.cmd)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("FileName(%q) = %q, %v; want %q ok=%v", tc.cmd, got, err, tc.want, tc.ok)
		}
	}
	if _, err := Render(Run{Command: "a/b", Report: healthyBootstrap()}); err == nil {
		t.Error("Render accepted a command that cannot be a file name")
	}
	if _, err := Render(Run{Command: "verify"}); err == nil {
		t.Error("Render accepted a run without a report")
	}
}

// rooted returns a Host rooted at a new directory holding node_exporter's
// textfile directory, and that directory's path on this machine.
func rooted(t *testing.T) (*system.Host, string) {
	t.Helper()
	h, err := system.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := h.Path(textfileDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return h, dir
}

const textfileDir = "/var/lib/prometheus/node-exporter"

func TestWrite(t *testing.T) {
	run := Run{Command: "verify", Report: failingVerify(), Finished: finished}
	t.Run("atomic, 0644, sweeps a killed run's temp file, keeps other files", func(t *testing.T) {
		h, dir := rooted(t)
		other := filepath.Join(dir, "provision_bootstrap.prom")
		os.WriteFile(other, []byte("x 1\n"), 0o644)
		leftover := filepath.Join(dir, ".provision_verify.prom123456")
		os.WriteFile(leftover, []byte("partial"), 0o600)
		path, err := Write(h, textfileDir, run)
		if err != nil {
			t.Fatal(err)
		}
		if path != filepath.Join(dir, "provision_verify.prom") {
			t.Fatalf("wrote %s", path)
		}
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != FileMode {
			t.Fatalf("stat %v mode %v", err, st.Mode())
		}
		want, _ := Render(run)
		if got, _ := os.ReadFile(path); string(got) != string(want) {
			t.Fatalf("content differs")
		}
		if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
			t.Error("leftover temp file not swept")
		}
		if b, _ := os.ReadFile(other); string(b) != "x 1\n" {
			t.Error("another command's file changed")
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != 2 {
			t.Errorf("files left: %v", ents)
		}
	})
	t.Run("missing directory is ErrNoDir and is not created", func(t *testing.T) {
		h, dir := rooted(t)
		os.Remove(dir)
		if _, err := Write(h, textfileDir, run); !errors.Is(err, ErrNoDir) {
			t.Fatalf("err = %v, want ErrNoDir", err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatal("the directory was created")
		}
	})
	t.Run("a symlink at the path is refused, its target untouched", func(t *testing.T) {
		h, dir := rooted(t)
		target := filepath.Join(t.TempDir(), "shadow")
		os.WriteFile(target, []byte("secret\n"), 0o600)
		os.Symlink(target, filepath.Join(dir, "provision_verify.prom"))
		if _, err := Write(h, textfileDir, run); err == nil {
			t.Fatal("wrote through a symlink")
		}
		if b, _ := os.ReadFile(target); string(b) != "secret\n" {
			t.Fatal("the link's target changed")
		}
	})
	t.Run("a file where the directory should be", func(t *testing.T) {
		h, dir := rooted(t)
		os.Remove(dir)
		os.WriteFile(dir, nil, 0o644)
		if _, err := Write(h, textfileDir, run); err == nil || errors.Is(err, ErrNoDir) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("a link the exporter's user planted is not followed (issue 31)", func(t *testing.T) {
		if os.Geteuid() != 0 {
			testenv.SkipOrFail(t, "needs root to give the link to another user")
		}
		h, dir := rooted(t)
		sudoers := h.Path("/etc/sudoers.d")
		os.MkdirAll(sudoers, 0o755)
		prom := filepath.Dir(dir)
		os.Chown(prom, 1001, 1001)
		os.Remove(dir)
		os.Symlink("/etc/sudoers.d", dir)
		os.Lchown(dir, 1001, 1001)
		_, err := Write(h, textfileDir, run)
		if !errors.Is(err, system.ErrUnsafePath) || !strings.Contains(err.Error(), textfileDir+" is a symbolic link owned by uid 1001") {
			t.Fatalf("err = %v, want the path rule's refusal naming the link and its owner", err)
		}
		if ents, _ := os.ReadDir(sudoers); len(ents) != 0 {
			t.Fatalf("root wrote into /etc/sudoers.d: %v", ents)
		}
	})
}

func TestCertFacts(t *testing.T) {
	p, err := controlplane.NewPKI(t.TempDir(), "root")
	if err != nil {
		t.Fatal(err)
	}
	o, err := controlplane.NewPKI(t.TempDir(), "other root")
	if err != nil {
		t.Fatal(err)
	}
	l, err := p.IssueLeaf(controlplane.LeafRequest{CommonName: "gpu-0042", NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	root, other, inter, leaf := p.Root, o.Root, p.Intermediate, l.Cert
	sum := sha256.Sum256(root.Raw)
	fp := hex.EncodeToString(sum[:])
	for _, tc := range []struct {
		name         string
		chain, roots []*x509.Certificate
		want         *Cert
	}{
		{"expired leaf still names its root", []*x509.Certificate{leaf, inter}, []*x509.Certificate{other, root}, &Cert{NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, RootFingerprint: fp}},
		{"chain ending in the root itself", []*x509.Certificate{leaf, inter, root}, []*x509.Certificate{root}, &Cert{NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, RootFingerprint: fp}},
		{"stale: no bundle root issued it", []*x509.Certificate{leaf, inter}, []*x509.Certificate{other}, &Cert{NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}},
		{"no certificate", nil, []*x509.Certificate{root}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := CertFacts(tc.chain, tc.roots)
			if (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestPromtoolCheckMetrics runs the real promtool (Debian package
// prometheus) on every shape of file Render writes; a lint problem (a
// counter without _total, a bad unit suffix, a duplicate series) fails.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := testenv.RequireProgram(t, "promtool", "prometheus")
	for name, run := range map[string]Run{
		"failing verify":    {Command: "verify", Report: failingVerify(), Finished: finished, Cert: &Cert{NotAfter: notAfter, RootFingerprint: rootFP}},
		"healthy bootstrap": {Command: "bootstrap", Report: healthyBootstrap(), Finished: finished, Cert: &Cert{NotAfter: notAfter, RootFingerprint: rootFP}},
	} {
		t.Run(name, func(t *testing.T) {
			b, err := Render(run)
			if err != nil {
				t.Fatal(err)
			}
			if out, err := promtoolCheck(promtool, b); err != nil {
				t.Fatalf("promtool check metrics: %v\n%s\n%s", err, out, b)
			}
		})
	}
	// The check can fail: a counter without _total, a unit that is not a
	// base unit, a missing HELP. (promtool 2.42 does not flag duplicate
	// series; TestRenderSeries covers those.)
	for _, bad := range []string{
		"# HELP provision_runs a counter\n# TYPE provision_runs counter\nprovision_runs 1\n",
		"# HELP provision_run_duration_milliseconds x\n# TYPE provision_run_duration_milliseconds gauge\nprovision_run_duration_milliseconds 2\n",
		"# TYPE provision_x gauge\nprovision_x 2\n",
	} {
		if out, err := promtoolCheck(promtool, []byte(bad)); err == nil {
			t.Errorf("promtool accepted\n%s\n%s", bad, out)
		}
	}
}

// promtoolCheck pipes text into `promtool check metrics`.
func promtoolCheck(promtool string, text []byte) (string, error) {
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(string(text))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestDocsListEveryMetric: docs/metrics.md names exactly the metrics
// Render can write, and a run with every kind of series writes them all.
func TestDocsListEveryMetric(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(provision_[a-z_]+)`").FindAllStringSubmatch(string(b), -1) {
		documented[m[1]] = true
	}
	b, _ = Render(Run{Command: "verify", Report: failingVerify(), Cert: &Cert{NotBefore: notBefore, NotAfter: notAfter, RootFingerprint: rootFP, RenewAfter: renewAt, DueAt: dueAt},
		Renewal: &Renewal{HookPending: true, Failures: 2, Refusals: 1}})
	written := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) `).FindAllStringSubmatch(string(b), -1) {
		written[m[1]] = true
	}
	names := Names()
	sort.Strings(names)
	for _, n := range names {
		if !documented[n] {
			t.Errorf("%s is written but not in docs/metrics.md's table", n)
		}
		if !written[n] {
			t.Errorf("%s is in Names() but a full run did not write it", n)
		}
	}
	for n := range documented {
		if !written[n] {
			t.Errorf("docs/metrics.md documents %s, which provision does not write", n)
		}
	}
}
