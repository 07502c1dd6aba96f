package cli

import (
	"errors"
	"fmt"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/system"
)

// load resolves --root and reads the config. On failure it prints the
// report and returns the exit code.
func load(env *runEnv, f *flags, cmd string) (*config.Config, *system.Host, int, bool) {
	host, err := system.New(f.root)
	if err != nil {
		return nil, nil, env.usage(cmd, err.Error(), "--root must name an existing directory"), false
	}
	if env.ctx != nil {
		host.Hook = system.HookFrom(env.ctx) // crash points: set only by the tests' build of main
	}
	cfg, err := config.Load(host.Path(f.config))
	if err != nil {
		var ce *config.Error
		msg := err.Error()
		remedy := "fix the named keys in " + f.config + " (see docs/configuration.md); nothing was changed"
		if errors.As(err, &ce) {
			ce.Path = f.config
			msg = ce.Error()
			if len(ce.Problems) == 1 && ce.Problems[0].Key == "--config" {
				remedy = "write the config to " + f.config + " (under --root) or point --config at it; see docs/configuration.md"
			}
		}
		rep := report.Failed(cmd, "", "config", &diag.Finding{Layer: diag.Config, Owner: diag.Node, Summary: msg, Remedy: remedy})
		metricsForConfigFailure(env, f, host, rep)
		return nil, nil, printReport(env, f, rep), false
	}
	host.HostsFile = cfg.Paths.HostsFile
	if g := cfg.Paths.KeyGroup; g != "" {
		if _, err := host.LookupGroup(g); err != nil {
			remedy := "create the group (the node-agent's, e.g. groupadd " + g + ") before provision runs, or fix paths.key_group; nothing was changed"
			if errors.Is(err, system.ErrGroupTooLarge) {
				remedy = "give paths.key_group as the numeric gid (getent group " + g + "), which needs no lookup; nothing was changed"
			}
			rep := report.Failed(cmd, cfg.NodeID, "config", &diag.Finding{Layer: diag.Config, Owner: diag.Node,
				Summary: fmt.Sprintf("config %s: paths.key_group = %q: %v", f.config, g, err),
				Remedy:  remedy})
			metricsForConfigFailure(env, f, host, rep)
			return nil, nil, printReport(env, f, rep), false
		}
	}
	if metricsCommands[cmd] || cmd == "status" || cmd == "revoke" {
		if code, ok := claimDirs(env, f, cfg, host, cmd); !ok {
			return nil, nil, code, false
		}
	}
	return cfg, host, 0, true
}
