package reliability

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/tests/controlplane"
)

// TestTokenCrashWindow pins down what happens when provision dies between
// the CA accepting the one-time token and the certificate being saved.
//
// step-ca burns a token as soon as it sees the sign request, before it
// validates it; the key was generated in memory for that request. A process
// killed after the CA answered ("after sign") loses the certificate and the
// key together, and the token cannot be redeemed again. Nothing the node can
// do recovers that token, so provision makes the situation plain instead:
// before sending the token it records its SHA-256 (never the token) in
// state_dir/enroll-pending.json. The next run with the same token gets the
// CA's 401 and reports, with exit 20 (layer enroll, owner ca), that an
// earlier run presented this same token and the CA burnt it, and that a
// fresh token is needed; orchestration keys on exit 20 to mint one. With a
// fresh token the next run enrolls and exits 0, removing the token file and
// the marker.
//
// A kill before the request left ("before sign") does not burn the token:
// the marker is there but the CA never saw it, and the same token works.
func TestTokenCrashWindow(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	t.Run("after sign", func(t *testing.T) {
		n := newNode(t, cp, "gpu-tok-after", nil)
		if r := n.bootstrap("PROVISION_CRASH_AT=after sign"); !r.Killed {
			t.Fatalf("not killed at after sign: %s", r)
		}
		if !fileExists(filepath.Join(n.Files.StateDir, state.PendingFile)) {
			t.Fatal("no enrollment marker after a kill after sign")
		}
		if !fileExists(n.Files.TokenPath) {
			t.Fatal("token file removed although no certificate was saved")
		}
		r := n.bootstrap()
		wantExit(t, r, 20, "layer enroll", "earlier run presented this same token", "burnt", n.Cfg.CA.TokenFile)
		n.GiveToken()
		cp.API.QueueTask(n.ID, controlplane.Task{Kind: "noop"})
		r2 := n.bootstrap()
		wantExit(t, r2, 0, "done")
		if fileExists(n.Files.TokenPath) || fileExists(filepath.Join(n.Files.StateDir, state.PendingFile)) {
			t.Error("token file or marker left after the enrollment")
		}
		t.Logf("token after sign: same token exit %d (%s); fresh token exit %d", r.Code, r.LastOutputLine(), r2.Code)
	})
	t.Run("before sign", func(t *testing.T) {
		n := newNode(t, cp, "gpu-tok-before", nil)
		if r := n.bootstrap("PROVISION_CRASH_AT=before sign"); !r.Killed {
			t.Fatalf("not killed at before sign: %s", r)
		}
		cp.API.QueueTask(n.ID, controlplane.Task{Kind: "noop"})
		r := n.bootstrap()
		wantExit(t, r, 0, "done")
		if !strings.Contains(r.Stderr, "trying it once more") {
			t.Errorf("the re-run did not say it reused the presented token:\n%s", r.Stderr)
		}
		b, _ := os.ReadFile(filepath.Join(n.Files.StateDir, state.ReceiptFile))
		t.Logf("token before sign: same token exit %d, receipt %d bytes", r.Code, len(b))
	})
	t.Logf("token-window: 2 kills, 0 violations")
}
