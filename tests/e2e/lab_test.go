package e2e

import (
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
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run ./tests/lab: %v\n%s", err, out)
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
