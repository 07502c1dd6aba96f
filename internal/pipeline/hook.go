package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/state"
)

// PostHook runs renew.post_hook when this run published a new set, or when
// an earlier run's hook has not succeeded yet (the record's hook_pending):
// the node-agent must be told about credentials that changed, however long
// that takes. A failure keeps it pending (exit 22); the new set stands.
func PostHook(r *Run) *diag.Finding {
	if len(r.Cfg.Renew.PostHook) == 0 {
		r.Rec.Hook, r.Rec.HookPending = "", false
		return nil
	}
	if r.Published && r.Current != nil {
		// The credentials the node-agent holds were replaced: it must be
		// told, until it has been (a first enrollment replaces nothing).
		r.Rec.HookPending = true
	}
	if !r.Rec.HookPending {
		return nil
	}
	r.HookRan = true
	leaf := r.installedLeafFacts()
	if err := runHook(r.Ctx, r.Cfg, leaf.serial, leaf.notAfter); err != nil {
		r.Rec.Hook = "failed: " + err.Error()
		r.SetResult(state.HookFailed)
		what := "renew.post_hook (pending since an earlier run changed the credentials) failed again: "
		if r.Published {
			what = "renewal published (serial " + leaf.serial + "), but renew.post_hook failed: "
		}
		return &diag.Finding{Layer: diag.Hook, Owner: diag.Node, Check: "post-hook",
			Summary: what + err.Error() + "; it stays pending, and every later run (renew, bootstrap) runs it again until it succeeds",
			Remedy:  "fix the command in renew.post_hook (or what it reloads) and run provision renew: the credentials in place stay, and the node-agent has not been told about them yet"}
	}
	r.Rec.Hook, r.Rec.HookPending = "ok", false
	r.Log.Info("step", "step", "post-hook", "layer", "hook", "status", "ok", "command", r.Cfg.Renew.PostHook[0])
	return nil
}

type leafFacts struct {
	serial   string
	notAfter time.Time
}

// installedLeafFacts are the serial and expiry of the set now current.
func (r *Run) installedLeafFacts() leafFacts {
	set := r.Current
	if r.Published {
		set = r.Cand
	}
	if set == nil {
		if s, err := credstore.Load(r.PKI); err == nil {
			set = s
		}
	}
	if set == nil {
		return leafFacts{}
	}
	return leafFacts{serial: set.Leaf().SerialNumber.String(), notAfter: set.Leaf().NotAfter}
}

// maxHookOutput bounds what is kept of the hook's output for the report.
const maxHookOutput = 2048

// runHook runs renew.post_hook (argv, no shell) with its timeout. The new
// certificate's paths and serial are in its environment.
func runHook(ctx context.Context, cfg *config.Config, serial string, notAfter time.Time) error {
	hctx, cancel := context.WithTimeout(ctx, cfg.Renew.PostHookTimeout.Duration)
	defer cancel()
	argv := cfg.Renew.PostHook
	cmd := exec.CommandContext(hctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(),
		"PROVISION_NODE_ID="+cfg.NodeID,
		"PROVISION_SERIAL="+serial,
		"PROVISION_NOT_AFTER="+stamp(notAfter),
		"PROVISION_CERT="+filepath.Join(cfg.Paths.PKIDir, credstore.CertFile),
		"PROVISION_KEY="+filepath.Join(cfg.Paths.PKIDir, credstore.KeyFile),
	)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if err == nil {
		return nil
	}
	outText := strings.TrimSpace(buf.String())
	if len(outText) > maxHookOutput {
		outText = outText[:maxHookOutput] + "..."
	}
	if hctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("%s did not finish within renew.post_hook_timeout (%s)", argv[0], cfg.Renew.PostHookTimeout.Duration)
	} else {
		err = fmt.Errorf("%s: %w", argv[0], err)
	}
	if outText != "" {
		err = fmt.Errorf("%w; output: %s", err, strings.ReplaceAll(outText, "\n", " | "))
	}
	return err
}
