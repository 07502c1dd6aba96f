package e2e

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
)

// TestLabDemo runs the README's demo exactly as a new user would, from the
// module root: a successful bootstrap, then a failing verify with its layer
// named, then a healthy one again.
func TestLabDemo(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.GoTool(), "run", "./tests/lab")
	cmd.Dir = moduleRoot
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out := stdout.Bytes()
	if err != nil {
		t.Fatalf("go run ./tests/lab: %v\n%s%s", err, out, stderr.Bytes())
	}
	// The demo's stderr is quiet: no log lines for a first-time user (the
	// go command's own "go: downloading" lines on a cold cache aside).
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if l != "" && !strings.HasPrefix(l, "go: ") {
			t.Errorf("go run ./tests/lab wrote to stderr: %q", l)
		}
	}
	for _, want := range []string{
		"provision bootstrap: done: ",
		"FAILED at layer tls-client-auth (owner: ingress)",
		"provision verify: healthy",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, out)
		}
	}
}
