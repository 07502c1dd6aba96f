package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// statusDoc is `provision status --format json`, decoded independently of
// the product's types: the field names are the README's contract.
type statusDoc struct {
	NodeID      string   `json:"node_id"`
	State       string   `json:"state"`
	Summary     string   `json:"summary"`
	Attention   []string `json:"attention"`
	Remedy      string   `json:"remedy"`
	ExitCode    *int     `json:"exit_code"`
	Credentials struct {
		Present         bool     `json:"present"`
		Serial          string   `json:"serial"`
		Subject         string   `json:"subject"`
		RootFingerprint string   `json:"root_fingerprint"`
		NotAfter        string   `json:"not_after"`
		RenewAfter      string   `json:"renew_after"`
		DueAt           string   `json:"due_at"`
		KeyMode         string   `json:"key_mode"`
		Verdict         string   `json:"verdict"`
		Reasons         []string `json:"reasons"`
	} `json:"credentials"`
	Renew *struct {
		LastResult  string `json:"last_result"`
		HookPending bool   `json:"hook_pending"`
	} `json:"renew"`
	Receipt *struct {
		Serial   string `json:"serial"`
		ProvedAt string `json:"proved_at"`
	} `json:"receipt"`
	Metrics struct {
		TextfileDir string   `json:"textfile_dir"`
		Files       []string `json:"files"`
	} `json:"metrics"`
	RenewTimer struct {
		Unit  string `json:"unit"`
		State string `json:"state"`
		Path  string `json:"path"`
	} `json:"renew_timer"`
}

func (n *node) status(t *testing.T) (statusDoc, nodetest.Result) {
	t.Helper()
	r := n.Run("status", "--format", "json")
	var d statusDoc
	if err := json.Unmarshal([]byte(r.Stdout), &d); err != nil {
		t.Fatalf("status --format json is not one JSON document: %v\n%s", err, r)
	}
	if d.ExitCode == nil || *d.ExitCode != r.Code {
		t.Fatalf("status exit_code %v, process exit %d", d.ExitCode, r.Code)
	}
	return d, r
}

// TestStatus: the offline inventory through the real binary: not enrolled
// (31), healthy (0, every fact of the installed certificate and the
// receipt), a pending hook (30), an expired certificate (31); it never
// touches the network (the control plane is stopped for the last runs).
func TestStatus(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	hook := filepath.Join(t.TempDir(), "hook.sh")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	n := newNode(t, cp, true, func(c *controlplane.NodeConfig) {
		c.Renew = &controlplane.RenewConfig{PostHook: []string{hook}, PostHookTimeout: "5s"}
	})

	if d, r := n.status(t); r.Code != 31 || d.State != "unusable" || d.Credentials.Present || !strings.HasPrefix(d.Summary, "not enrolled") || d.Remedy == "" {
		t.Fatalf("before bootstrap: exit %d %+v", r.Code, d)
	}
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	d, r := n.status(t)
	rc := n.Receipt()
	if r.Code != 0 || d.State != "ok" || d.Credentials.Serial != rc.Serial || d.Receipt == nil || d.Receipt.Serial != rc.Serial ||
		d.Credentials.KeyMode != "0600" || d.Credentials.RootFingerprint != cp.CA.Fingerprint() || d.Credentials.DueAt == "" || d.Credentials.Verdict != "keep" {
		t.Fatalf("after bootstrap: exit %d %+v", r.Code, d)
	}
	// Text for a person: the serial and the state, one line each.
	text := n.Run("status")
	if text.Code != 0 || !strings.Contains(text.Stdout, rc.Serial) || !strings.Contains(text.Stdout, "provision status: ok") {
		t.Fatalf("status text:\n%s", text)
	}
	if d.RenewTimer.Unit != "provision-renew.timer" || d.RenewTimer.State != "enabled" || d.RenewTimer.Path != controlplane.RenewTimerLink {
		t.Errorf("renew_timer after bootstrap: %+v, want enabled by %s", d.RenewTimer, controlplane.RenewTimerLink)
	}
	// Renewal not scheduled (the timer disabled: its wants link gone):
	// status asks for attention and verify warns, from the files alone;
	// verify still passes (the node polls today).
	os.Remove(n.Path(controlplane.RenewTimerLink))
	if d, r := n.status(t); r.Code != 30 || d.RenewTimer.State != "disabled" || !strings.Contains(d.Summary, "renewal is not scheduled: provision-renew.timer is disabled") ||
		!strings.Contains(d.Remedy, "systemctl enable --now provision-renew.timer") {
		t.Fatalf("timer disabled: exit %d %+v", r.Code, d)
	}
	v := n.RunJSON("verify")
	nodetest.WantExit(t, v, 0)
	if c := v.Report.Check("renew-timer"); c == nil || c.Status != "warn" || !strings.Contains(c.Message, "disabled") {
		t.Errorf("verify with the timer disabled: renew-timer %+v, want a warning", c)
	}
	controlplane.EnableRenewTimer(n.Root)
	// A renewal whose hook fails: attention, the hook pending.
	nodetest.WantExit(t, n.Run("renew", "--force"), 22)
	if d, r := n.status(t); r.Code != 30 || d.State != "attention" || d.Renew == nil || !d.Renew.HookPending || !strings.Contains(strings.Join(d.Attention, "\n"), "post_hook") {
		t.Fatalf("hook pending: exit %d %+v", r.Code, d)
	}
	// Offline: the control plane stops; an expired certificate is unusable.
	cp.Close()
	l, err := cp.CA.PKI().IssueLeaf(controlplane.LeafRequest{CommonName: n.ID, DNSNames: []string{n.ID}, NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(n.Files.PKIDir)
	if err := controlplane.WriteNodeCredentials(n.Root, n.Cfg.Paths.PKIDir, l, cp.CA.RootPEM()); err != nil {
		t.Fatal(err)
	}
	if d, r := n.status(t); r.Code != 31 || d.State != "unusable" || !strings.Contains(d.Summary, "expired") {
		t.Fatalf("expired: exit %d %+v", r.Code, d)
	}
}
