package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/gpuaas/provision/tests/controlplane"
)

// TestDemo runs the README demo in-process against its own control plane:
// bootstrap passes, verify fails with the ingress's wrong client CA, verify
// passes once restored. If this fails, the README's first command is broken.
func TestDemo(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	files, err := cp.PrepareNode(t.TempDir(), nodeID)
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := demo(context.Background(), cp, files, &out, &errOut, false); code != 0 {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{
		"exit code 0 (expected exit 0): as expected",
		"tls-client-auth",
		"lab: every step behaved as expected",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
	if cp.ClientCAMode() != controlplane.ClientCAStep {
		t.Errorf("demo left the node API in mode %v", cp.ClientCAMode())
	}
	// A first-time user sees the reports, not pages of log lines: every
	// step behaved, so nothing was written to stderr.
	if errOut.Len() != 0 {
		t.Errorf("the demo wrote to stderr without --logs:\n%s", errOut.String())
	}
}

// TestDemoLogs: --logs streams provision's structured log for every step.
func TestDemoLogs(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	files, err := cp.PrepareNode(t.TempDir(), nodeID)
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := demo(context.Background(), cp, files, &out, &errOut, true); code != 0 {
		t.Fatalf("demo --logs exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{"command=bootstrap", "command=verify", "msg=run"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("--logs: stderr lacks %q:\n%s", want, errOut.String())
		}
	}
}
