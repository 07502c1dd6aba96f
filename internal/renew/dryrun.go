package renew

import (
	"context"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/system"
)

// DryRun is renew --dry-run: renew's own list up to the first step that
// would change anything (pipeline.DryRun): the CA's roots fetched, the
// same assess (due, not due, after expiry, refresh, cannot renew), the
// clock check and the key store's; nothing is renewed, proven, published
// or recorded.
func DryRun(ctx context.Context, cfg *config.Config, host *system.Host, o pipeline.Options) *pipeline.Preview {
	return pipeline.DryRun(ctx, "renew", cfg, host, o, func(*pipeline.Preview) []pipeline.Step {
		return []pipeline.Step{pipeline.RootsStep, AssessStep, pipeline.ClockStep, pipeline.KeyStoreStep}
	})
}
