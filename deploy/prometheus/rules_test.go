package prometheus

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/gpuaas/provision/internal/cli"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/testenv"
)

const (
	rulesFile = "provision.rules.yml"
	testsFile = "provision.rules.test.yml"
)

type rule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func readRules(t *testing.T) []rule {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []rule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	var rs []rule
	for _, g := range f.Groups {
		rs = append(rs, g.Rules...)
	}
	if len(rs) == 0 {
		t.Fatal("no rules")
	}
	return rs
}

func promtool(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	p := testenv.RequireProgram(t, "promtool", "prometheus")
	cmd := exec.Command(p, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestPromtoolCheckRules(t *testing.T) {
	if out, err := promtool(t, ".", "check", "rules", rulesFile); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

// TestPromtoolTestRules runs the rule unit tests (series in, alerts out),
// among them: 3 of 5 nodes fail at tls-client-auth and exactly one fleet
// alert fires, for owner ingress, with the count 3; renew failing for an
// hour; a certificate past its renewal time. Then it proves the tests can
// fail: with each rule broken in a way that matters (the fleet threshold
// raised to 4, the count left out of the summary, renew alerting at once,
// the overdue alert reading the oldest certificate), promtool must report
// the case that covers it.
func TestPromtoolTestRules(t *testing.T) {
	if out, err := promtool(t, ".", "test", "rules", testsFile); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	orig, _ := os.ReadFile(rulesFile)
	tests, _ := os.ReadFile(testsFile)
	const fleetCase = "3 of 5 nodes fail at tls-client-auth"
	for name, edit := range map[string][3]string{
		"threshold 4":        {") >= 3", ") >= 4", fleetCase},
		"no count":           {"summary: '{{ $value }} nodes fail", "summary: 'nodes fail", fleetCase},
		"per check, not per": {"max by (instance, layer, owner) (provision_failed{layer!=\"interrupted\"} == 1)", "provision_failed{layer!=\"interrupted\"} == 1", fleetCase},
		// Renew failing: at once instead of after an hour, or counting a
		// reboot's interruption as a renewal failure.
		"renew failing at once": {"provision_failed{command=\"renew\", layer!=\"interrupted\"}) == 1\n        for: 1h", "provision_failed{command=\"renew\", layer!=\"interrupted\"}) == 1\n        for: 0m", "renew failing for over an hour"},
		"renew interrupted":     {"provision_failed{command=\"renew\", layer!=\"interrupted\"}", "provision_failed{command=\"renew\"}", "renew failing for over an hour"},
		// Renewal overdue: the oldest certificate a command saw (bootstrap's
		// file keeps the first one) instead of the newest, or no grace.
		"overdue by the oldest certificate": {"time() - max by (instance) (provision_cert_renew_due_timestamp_seconds)", "time() - min by (instance) (provision_cert_renew_due_timestamp_seconds)", "certificate past its renewal time"},
		"overdue without grace":             {"(provision_cert_renew_due_timestamp_seconds) > 3600", "(provision_cert_renew_due_timestamp_seconds) > 0", "certificate past its renewal time"},
		// Renew not run: a threshold of ten periods, or forgetting the node
		// that never renewed at all.
		"renew not run after ten periods": {"provision_renew\\\\.prom\"}) > 3600)", "provision_renew\\\\.prom\"}) > 36000)", "renew timer not running"},
		"renew never run forgotten":       {"\n          or\n          (max by (instance) (time() - node_textfile_mtime_seconds", "\n          and\n          (max by (instance) (time() - node_textfile_mtime_seconds", "renew timer not running"},
		// Expiring soon at verify's warning point fires within every splay.
		"expiring at a third": {"provision_cert_not_before_timestamp_seconds) / 6)", "provision_cert_not_before_timestamp_seconds) / 3)", "certificate close to expiry"},
	} {
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(string(orig), edit[0]) {
				t.Fatalf("the rules no longer contain %q", edit[0])
			}
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, rulesFile), []byte(strings.Replace(string(orig), edit[0], edit[1], 1)), 0o644)
			os.WriteFile(filepath.Join(dir, testsFile), tests, 0o644)
			out, err := promtool(t, dir, "test", "rules", testsFile)
			if err == nil || !strings.Contains(out, "name: "+edit[2]+",") {
				t.Fatalf("promtool test rules passed a broken rule (%v); want case %q to fail:\n%s", err, edit[2], out)
			}
		})
	}
}

// runbookAnchors are the GitHub anchors of docs/runbook.md's headings.
func runbookAnchors(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "runbook.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	strip := regexp.MustCompile(`[^a-z0-9 _-]`)
	for _, line := range strings.Split(string(b), "\n") {
		if h, ok := strings.CutPrefix(line, "#"); ok {
			h = strings.TrimSpace(strings.TrimLeft(h, "#"))
			anchors[strings.ReplaceAll(strip.ReplaceAllString(strings.ToLower(h), ""), " ", "-")] = true
		}
	}
	return anchors
}

// TestAlertsCarryLayerOwnerAndRunbook: every alert has layer and owner
// labels (static, or kept by its aggregation) and a runbook_url into
// docs/runbook.md whose anchor exists, for every layer provision_failed can
// carry when the anchor is the layer label.
func TestAlertsCarryLayerOwnerAndRunbook(t *testing.T) {
	anchors := runbookAnchors(t)
	const prefix = "https://github.com/gpuaas/provision/blob/main/docs/runbook.md#"
	layers := append([]diag.Layer{cli.LayerInterrupted}, diag.Layers...)
	for _, r := range readRules(t) {
		t.Run(r.Alert, func(t *testing.T) {
			for _, l := range []string{"layer", "owner"} {
				if r.Labels[l] == "" && !regexp.MustCompile(`by \([^)]*\b`+l+`\b`).MatchString(r.Expr) {
					t.Errorf("no %s label: neither static nor kept by the expression's by (...)", l)
				}
			}
			u := r.Annotations["runbook_url"]
			anchor, ok := strings.CutPrefix(u, prefix)
			if !ok {
				t.Fatalf("runbook_url %q is not into docs/runbook.md", u)
			}
			if anchor == "{{ $labels.layer }}" {
				for _, l := range layers {
					if !anchors[string(l)] {
						t.Errorf("layer %s can fire this alert but docs/runbook.md has no #%s section", l, l)
					}
				}
				return
			}
			if !anchors[anchor] {
				t.Errorf("docs/runbook.md has no anchor #%s", anchor)
			}
		})
	}
	// The check can fail.
	if anchors["no-such-section"] || !anchors["tls-client-auth"] || !anchors["reinstall-and-re-enrollment"] {
		t.Fatalf("anchor parsing is wrong: %v", anchors)
	}
}
