package cli

import (
	"errors"
	"fmt"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/system"
)

// claimDirs applies system.ClaimDir, the one rule for the directories
// provision keeps its files in, to state_dir and pki_dir before a command
// does anything else, after the path rule judged the way to them
// (Host.ClaimDir): bootstrap and renew claim them (create, mark, tighten),
// verify, renew --check and the dry runs only judge them (they change
// nothing). A directory that is not provision's own (pki_dir = "/etc/pki"
// holding somebody's ca.pem) is a config error, exit 3, with nothing changed: the
// fix is in the config. One of provision's names that is the wrong kind of
// file (a FIFO at renew.json) is the state layer's (exit 21), or the
// credentials' in pki_dir (exit 12). It returns false, with the report
// printed and the exit code, when a directory is refused.
func claimDirs(env *runEnv, f *flags, cfg *config.Config, host *system.Host, cmd string) (int, bool) {
	dirs := []struct {
		key, path string
		layer     diag.Layer
		check     string
	}{
		{"paths.state_dir", cfg.Paths.StateDir, diag.State, "state-dir"},
		{"paths.pki_dir", cfg.Paths.PKIDir, diag.Credentials, "pki-dir"},
	}
	// Both are judged before either is created or tightened, so a refused
	// pki_dir leaves state_dir as it was too.
	passes := []bool{false}
	if (cmd == "bootstrap" || cmd == "renew" && !f.check) && !f.dryRun {
		passes = append(passes, true)
	}
	log := f.logger(env.stderr, cfg.NodeID)
	paths := []string{cfg.Paths.StateDir, cfg.Paths.PKIDir}
	for _, change := range passes {
		// New marks are made durable in one wait for both, which the run
		// overlaps with reaching the CA (pipeline.Options.Durable).
		states, failed, durable, err := host.ClaimDirs(paths, change, paths...) // pki_dir may sit in state_dir
		if err != nil {
			d := dirs[failed]
			rep := report.Failed(cmd, cfg.NodeID, d.check, claimFinding(d.key, d.path, d.layer, err))
			if f.check || f.dryRun {
				return printReport(env, f, rep), false // renew --check and a dry run are questions: no metrics
			}
			return finish(env, f, cfg, host, log, rep, nil), false
		}
		env.durable = durable
		for i, ds := range states {
			if ds.Tightened {
				log.Warn("directory was writable by other users; restricted it to 0700", "key", dirs[i].key, "dir", dirs[i].path, "was", fmt.Sprintf("%04o", ds.WasMode))
			}
		}
	}
	return 0, true
}

// claimFinding words a refused directory.
func claimFinding(key, path string, layer diag.Layer, err error) *diag.Finding {
	var ue *system.UnsafeFileError
	var pe *system.UnsafePathError
	switch {
	case errors.Is(err, system.ErrForeignDir):
		return &diag.Finding{Layer: diag.Config, Owner: diag.Node, Summary: fmt.Sprintf("%s = %q: %v", key, path, err),
			Remedy: fmt.Sprintf("point %s at a path provision may create (one that does not exist yet, or an empty directory, such as %s), or move the other files out of %s; nothing was changed", key, ownDefault(key), path)}
	case errors.As(err, &pe):
		return &diag.Finding{Layer: layer, Owner: diag.Node, Summary: fmt.Sprintf("%s = %q: %v", key, path, err),
			Remedy: fmt.Sprintf("point %s at a path whose directories only root can write, or have root own %s and remove write access for others (check who changed it); nothing was changed", key, pe.Path)}
	case errors.As(err, &ue):
		return &diag.Finding{Layer: layer, Owner: diag.Node, Summary: fmt.Sprintf("%s = %q: %v", key, path, err),
			Remedy: fmt.Sprintf("remove %s (it is not what provision keeps there) and check who created it, then run provision again; nothing was changed", ue.Path)}
	}
	return &diag.Finding{Layer: layer, Owner: diag.Node, Summary: fmt.Sprintf("%s = %q: %v", key, path, err),
		Remedy: fmt.Sprintf("make %s a directory root can create and write (check the mounts and their options), then run provision again", path)}
}

func ownDefault(key string) string {
	if key == "paths.pki_dir" {
		return config.DefaultPKIDir
	}
	return config.DefaultStateDir
}
