package hook_test

import (
	"context"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/hook"
)

// BenchmarkRun: the cost of running a hook that does nothing (/bin/true):
// the process group, the pipe, the group check after it exits.
func BenchmarkRun(b *testing.B) {
	s := hook.Spec{Argv: []string{"/bin/true"}, Timeout: 10 * time.Second}
	for b.Loop() {
		if _, err := hook.Run(context.Background(), s); err != nil {
			b.Fatal(err)
		}
	}
}
