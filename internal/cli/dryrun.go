package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/bootstrap"
	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/renew"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// dryRun is bootstrap --dry-run and renew --dry-run: the command's own
// steps up to the first that would change anything (pipeline.DryRun), no
// lock (a dry run writes nothing, not even the lock file), no metrics. Its
// report is the command's report with what the run would do in dry_run,
// and its exit code the one the run would stop with (0: nothing it can see
// stands in the way).
//
// The roots fetch is bounded like verify's checks, not by
// bootstrap.deadline: a question about a dead CA is answered in seconds.
func dryRun(ctx context.Context, env *runEnv, f *flags, cfg *config.Config, host *system.Host, log *slog.Logger) int {
	ctx, cancel := context.WithTimeout(ctx, 2*cfg.Bootstrap.RequestTimeout.Duration+time.Second)
	defer cancel()
	o := pipelineOptions(log, f.force)
	var p *pipeline.Preview
	if f.cmd == bootstrapCmd {
		p = bootstrap.DryRun(ctx, cfg, host, o)
	} else {
		p = renew.DryRun(ctx, cfg, host, o)
	}
	rep := p.Report
	rep.DryRun = p
	said := rep.Summary // renew's not-due says when it is due
	rep.Summary = "dry run: " + said
	if rep.OK {
		rep.Summary = "dry run: would " + planShort(p, said) + "; nothing was changed"
	}
	rep, code := outcome(env, rep)
	if f.format == "json" {
		printJSON(env, rep, code)
	} else {
		if !f.quiet {
			printPreview(env.stdout, f, cfg, p, said)
		}
		fmt.Fprintln(env.stdout, finalLine(rep, code))
	}
	log.Info("run", "status", map[bool]string{true: "ok", false: "fail"}[rep.OK], "dry_run", true, "layer", string(rep.FailedLayer),
		"owner", string(rep.Owner), "check", rep.FailedCheck, "exit_code", code, "duration_ms", time.Since(env.start).Milliseconds())
	return code
}

// planShort is the plan in a few words, for the summary.
func planShort(p *pipeline.Preview, said string) string {
	switch p.Plan {
	case "keep":
		return "keep the installed certificate and prove it"
	case "refresh":
		return "refresh ca.pem from the CA's roots, prove and publish it"
	case "renew":
		if p.Rekey {
			return "renew the certificate with a new key over mTLS (step-ca's rekey), prove and publish it"
		}
		return "renew the certificate over mTLS (step-ca's renew, same key), prove and publish it"
	case "renew-after-expiry":
		return "renew the expired certificate by step-ca's renewal after expiry, prove and publish it"
	case "enroll":
		return "enroll with the one-time token, prove and publish the new set"
	case "adopt":
		return "prove and publish the set an earlier run left aside"
	case "not-due":
		return "do nothing: " + said
	}
	return "run"
}

// printPreview is the dry run for a person: one fact a line, as status.
func printPreview(w io.Writer, f *flags, cfg *config.Config, p *pipeline.Preview, said string) {
	line := func(k, format string, a ...any) {
		fmt.Fprintf(w, "%-12s %s\n", k+":", clean(fmt.Sprintf(format, a...)))
	}
	line("config", "%s (node_id %s)", f.config, cfg.NodeID)
	if h := p.Hosts; h != nil {
		switch h.Change {
		case "none":
			line("hosts", "%s: the managed block is up to date", h.File)
		case "add":
			line("hosts", "%s: would add the managed block: %s", h.File, strings.Join(blockEntries(h.Block), ", "))
		default:
			line("hosts", "%s: would rewrite the managed block to %s (%s)", h.File, strings.Join(blockEntries(h.Block), ", "), strings.Join(h.Diffs, "; "))
		}
	}
	if ca := p.CA; ca != nil {
		line("ca", "%s answered: %d current and %d federated root(s), its clock %s", cfg.CA.URL, len(ca.Current), len(ca.Federated), ts(ca.Date))
		for _, r := range append(append([]pipeline.RootSeen{}, ca.Current...), ca.Federated...) {
			line("ca root", "%s %s, valid until %s", short(r.Fingerprint), r.Subject, ts(r.NotAfter))
		}
	}
	c := p.Credentials
	verdict := strings.Join(append([]string{c.Verdict}, c.Reasons...), " ")
	if c.Present {
		line("credentials", "serial %s, valid until %s, renewal due %s; verdict %s", c.Serial, ts(c.NotAfter), ts(c.DueAt), verdict)
	} else {
		line("credentials", "none usable in %s; verdict %s", cfg.Paths.PKIDir, verdict)
	}
	if len(p.KeyModes) > 0 {
		line("key modes", "would restrict first: %s", strings.Join(p.KeyModes, "; "))
	}
	if p.Plan != "" {
		line("plan", "%s", planLong(p, cfg, said))
	}
	if f.cmd == bootstrapCmd {
		line("token", "%s", tokenLine(p))
	}
	if len(p.Aside) > 0 {
		line("aside", "%s (left by an earlier run; a renewal proves a good one before it asks the CA)", strings.Join(p.Aside, ", "))
	}
	if p.RevokeSerial != "" {
		line("revoke", "the replaced certificate, serial %s, at the CA once the new set is proven and published", p.RevokeSerial)
	}
	line("hook", "%s", hookLine(p))
	if p.Receipt {
		line("receipt", "%s after the proof", path.Join(cfg.Paths.StateDir, state.ReceiptFile))
	}
}

// blockEntries are the block's mappings, markers left out.
func blockEntries(block []string) []string {
	var out []string
	for _, l := range block {
		if !strings.HasPrefix(l, "#") {
			out = append(out, strings.Join(strings.Fields(l), " "))
		}
	}
	return out
}

// planLong says what the run would do about the credentials, where, and
// what it would publish.
func planLong(p *pipeline.Preview, cfg *config.Config, said string) string {
	proven := "written aside in a new generation under " + cfg.Paths.PKIDir + ", proven with tasks/wait through " + p.ProofURL + ", then published (pki_dir/" + credstore.CurrentLink + " switched)"
	switch p.Plan {
	case "keep":
		return "keep: nothing is requested from the CA; the installed set is proven with tasks/wait through " + p.ProofURL + " and stays current"
	case "refresh":
		return fmt.Sprintf("refresh: ca.pem rewritten from the CA's %d current and %d federated root(s), same key and certificate, %s", len(p.CA.Current), len(p.CA.Federated), proven)
	case "renew", "renew-after-expiry":
		how := "step-ca's /renew over mTLS with the installed certificate, same key"
		switch {
		case p.Plan == "renew-after-expiry":
			how = "step-ca's renewal after expiry (a token signed by the expired certificate's own key, no one-time token)"
		case p.Rekey:
			how = "step-ca's /rekey over mTLS with the installed certificate, a new P-256 key generated here"
		}
		return fmt.Sprintf("%s: serial %s by %s; the new certificate %s", p.Plan, p.Credentials.Serial, how, proven)
	case "enroll":
		return "enroll (" + p.Why + "): a new P-256 key generated here, a CSR for " + cfg.NodeID + " and the one-time token sent to the CA's /sign; the new set " + proven
	case "adopt":
		return "adopt: the set an earlier run obtained and left aside is " + strings.TrimPrefix(proven, "written aside in a new generation under "+cfg.Paths.PKIDir+", ")
	}
	return p.Plan + ": " + said
}

func tokenLine(p *pipeline.Preview) string {
	t := p.Token
	switch t.Use {
	case "enroll":
		s := t.File + ": would be sent to the CA's /sign (read and checked here: for this node and this CA, not expired; not sent)"
		if t.Burnt {
			s += "; an earlier run presented this same token and did not finish, so the CA may have burnt it: the run presents it once more"
		}
		return s
	case "fallback":
		if t.Problem != "" {
			return t.File + ": the fallback if the renewal fails, but it cannot be used: " + t.Problem
		}
		return t.File + ": sent to the CA's /sign only if the renewal fails (checked here; not sent)"
	}
	if t.Present {
		return t.File + " holds a token; this run would not use it"
	}
	return "not needed"
}

func hookLine(p *pipeline.Preview) string {
	h := p.Hook
	switch {
	case len(h.Command) == 0:
		return "none configured (renew.post_hook)"
	case h.Run && h.Pending:
		return fmt.Sprintf("%q would run: pending since an earlier run changed the credentials", h.Command)
	case h.Run:
		return fmt.Sprintf("%q would run after the new set is published", h.Command)
	}
	return fmt.Sprintf("%q would not run: the credentials the node-agent holds would not change", h.Command)
}
