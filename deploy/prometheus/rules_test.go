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
// alert fires, for owner ingress, with the count 3. Then it proves the
// tests can fail: with the fleet threshold raised to 4, or the count left
// out of the summary, promtool must report that case.
func TestPromtoolTestRules(t *testing.T) {
	if out, err := promtool(t, ".", "test", "rules", testsFile); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	orig, _ := os.ReadFile(rulesFile)
	tests, _ := os.ReadFile(testsFile)
	for name, edit := range map[string][2]string{
		"threshold 4":        {") >= 3", ") >= 4"},
		"no count":           {"summary: '{{ $value }} nodes fail", "summary: 'nodes fail"},
		"per check, not per": {"max by (instance, layer, owner) (provision_failed{layer!=\"interrupted\"} == 1)", "provision_failed{layer!=\"interrupted\"} == 1"},
	} {
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(string(orig), edit[0]) {
				t.Fatalf("the rules no longer contain %q", edit[0])
			}
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, rulesFile), []byte(strings.Replace(string(orig), edit[0], edit[1], 1)), 0o644)
			os.WriteFile(filepath.Join(dir, testsFile), tests, 0o644)
			out, err := promtool(t, dir, "test", "rules", testsFile)
			if err == nil || !strings.Contains(out, "3 of 5 nodes fail at tls-client-auth") {
				t.Fatalf("promtool test rules passed a broken fleet rule (%v):\n%s", err, out)
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
