package bootstrap

import (
	"context"
	"errors"
	"net/netip"
	"strings"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/hosts"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// DryRun is bootstrap --dry-run: bootstrap's own list up to the first
// step that would change anything (pipeline.DryRun): the hosts block
// decided but not written, the CA's roots fetched, the same assess, clock
// and key-store checks, and the token read and checked but not sent.
func DryRun(ctx context.Context, cfg *config.Config, host *system.Host, o pipeline.Options) *pipeline.Preview {
	return pipeline.DryRun(ctx, "bootstrap", cfg, host, o, func(p *pipeline.Preview) []pipeline.Step {
		return []pipeline.Step{
			{Name: "hosts", Do: func(r *pipeline.Run) *diag.Finding { return previewHosts(r, p) }},
			pipeline.RootsStep,
			AssessStep,
			pipeline.ClockStep,
			pipeline.KeyStoreStep, // the TPM that would make or holds the key (it signs a test digest; nothing written)
			{Name: "credentials", Do: func(r *pipeline.Run) *diag.Finding { return previewToken(r, p) }, Reads: []pipeline.Stage{pipeline.StageJudged}},
		}
	})
}

// previewHosts is applyHosts' decision without the write.
func previewHosts(r *pipeline.Run, p *pipeline.Preview) *diag.Finding {
	entries := HostEntries(r.Cfg)
	c, err := hosts.PlanTo(r.Host, r.Cfg.Paths.HostsFile, entries)
	if err != nil {
		return hostsFinding(r.Cfg, err)
	}
	h := &pipeline.HostsChange{File: r.Cfg.Paths.HostsFile, Change: "none", Diffs: []string{}, Block: hosts.BlockLines(c.New)}
	if c.Changed {
		h.Change = "update"
		if hosts.BlockLines(c.Old) == nil {
			h.Change = "add"
		}
	}
	var de *hosts.DiffError
	if errors.As(hosts.Check(c.Old, entries), &de) {
		h.Diffs = de.Diffs
	}
	p.Hosts = h
	// The run resolves the CA and the node API through the block it has
	// just written: the dry run resolves through the block it decided.
	overlay := *r.Host
	overlay.Overlay = map[string][]netip.Addr{}
	for _, e := range entries {
		overlay.Overlay[strings.ToLower(e.Name)] = []netip.Addr{e.IP}
	}
	r.Host, r.Env.Host = &overlay, &overlay // the run's observation resolves through it too
	return nil
}

// previewToken says what the run would do with the token: send it (the
// plan is enroll), keep it as the fallback of a renewal, or nothing. A
// token the run would need is checked as the run checks it before sending
// (loadToken), and one that fails stops the dry run where the run would
// stop.
func previewToken(r *pipeline.Run, p *pipeline.Preview) *diag.Finding {
	t := &p.Token
	t.Present = tokenPresent(r.Cfg, r.Host)
	j := r.Judged()
	p.Why = j.Why
	switch {
	case j.Plan == pipeline.Enroll:
		t.Use = "enroll"
	case (j.Plan == pipeline.Renew || j.Plan == pipeline.RenewExpired) && t.Present:
		t.Use = "fallback"
	default:
		return nil
	}
	_, raw, f := loadToken(r, j.Why)
	if f != nil {
		t.Problem = f.Summary
		if t.Use == "enroll" {
			return f
		}
		return nil
	}
	prev, _ := state.ReadPending(r.Ctx, r.StateDir)
	t.Burnt = prev.TokenSHA256 == tokenHash(string(raw))
	return nil
}
