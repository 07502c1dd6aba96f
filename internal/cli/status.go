package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/status"
)

var statusCmd = &command{
	name:   "status",
	format: true,
	exits:  codes(ExitConfig, ExitStatusAttention, ExitStatusUnusable),
	exitNotes: map[int]exitNote{
		ExitOK:              {"ok", "a usable identity, nothing pending"},
		ExitStatusAttention: {"attention", "renewal due, the last renewal failed, a hook pending, a key exposed or out of paths.key_group's reach, credentials published without a passing proof, no receipt, provision-renew.timer not enabled"},
		ExitStatusUnusable:  {"unusable", "not enrolled, expired, revoked, stale or unreadable"},
	},
	summary: "show the installed credentials, the last renewal, a pending hook and the receipt, offline",
	usage: `Shows what provision knows about this node from its files alone: no network,
no lock, no task taken off the queue (verify's proof is a real tasks/wait).
The installed certificate (subject, serial, issuer, the CA root it chains to,
validity, the renewal point and this node's due time, key and directory
modes), judged by the same credential verdict bootstrap, renew and verify use
(offline: against the installed ca.pem); the last renew attempt and its
result; a post hook still pending; the receipt; where the textfile
metrics go; and whether provision-renew.timer is enabled (from its
timers.target.wants link, so under --root too). --format json prints it as
one JSON object (README, "provision status").

Examples:
  provision status
  provision status --format json | jq '{state, summary, due: .credentials.due_at}'
`,
}

func init() { statusCmd.run = runStatus }

func runStatus(_ context.Context, env *runEnv, args []string) int {
	f := newFlags(statusCmd, env)
	if code, ok := f.parse(env, args); !ok {
		return code
	}
	cfg, host, code, ok := load(env, f, "status")
	if !ok {
		return code
	}
	n := status.Take(cfg, host)
	code = map[status.State]int{status.OK: ExitOK, status.Attention: ExitStatusAttention, status.Unusable: ExitStatusUnusable}[n.State]
	if f.format == "json" {
		b, _ := json.Marshal(struct {
			SchemaVersion int `json:"schema_version"`
			*status.Node
			ExitCode int `json:"exit_code"`
		}{SchemaVersion, n, code})
		fmt.Fprintln(env.stdout, string(b))
		return code
	}
	printStatus(env.stdout, n, code, f.quiet)
	return code
}

// printStatus is status for a person: one fact a line, then the verdict;
// quiet, the verdict's line only.
func printStatus(w io.Writer, n *status.Node, code int, quiet bool) {
	facts := w
	if quiet {
		facts = io.Discard
	}
	line := func(k, format string, a ...any) {
		fmt.Fprintf(facts, "%s\n", strings.TrimRight(fmt.Sprintf("%-14s %s", k+":", clean(fmt.Sprintf(format, a...))), " "))
	}
	line("node", "%s", n.NodeID)
	c := n.Credentials
	switch {
	case c.Present:
		line("certificate", "serial %s, %s, issued by %s", c.Serial, c.Subject, c.Issuer)
		line("root", "%s %s (one of %d in ca.pem)", short(c.RootFingerprint), c.RootSubject, c.BundleRoots)
		line("valid", "%s to %s (expires in %s)", ts(c.NotBefore), ts(c.NotAfter), c.ExpiresIn)
		line("renewal", "point %s, due %s (this node's splay)", ts(c.RenewAfter), ts(c.DueAt))
		line("modes", "key %s, %s %s", c.KeyMode, c.PKIDir, c.DirMode)
		line("files", "key %s, certificate %s, CA bundle %s", c.KeyPath, c.CertPath, c.CAPath)
		for _, r := range c.CARoots {
			line("ca root", "%s %s, valid until %s (%s)", short(r.Fingerprint), r.Subject, ts(r.NotAfter), inDays(r.ExpiresInSeconds))
		}
	case c.Error != "":
		line("credentials", "%s: %s", c.PKIDir, c.Error)
	default:
		line("credentials", "none in %s", c.PKIDir)
	}
	line("verdict", "%s %s", c.Verdict, strings.Join(c.Reasons, ","))
	printKey(line, n.Key)
	if r := n.Renew; r != nil {
		line("last renew", "%s: %s %s", ts(r.LastAttempt), r.LastResult, r.LastError)
		if r.HookPending {
			line("post hook", "pending (%s)", r.Hook)
		}
	} else {
		line("last renew", "never")
	}
	if r := n.Receipt; r != nil {
		line("receipt", "serial %s proved %s by %s", r.Serial, ts(r.ProvedAt), r.Command)
	} else {
		line("receipt", "none: bootstrap has not proven this node")
	}
	line("metrics", "%s %s", n.Metrics.TextfileDir, strings.Join(n.Metrics.Files, " "))
	line("renew timer", "%s %s %s", n.RenewTimer.Unit, n.RenewTimer.State, n.RenewTimer.Path)
	if rv := n.Revoked; rv != nil {
		done := "credentials removed"
		if !rv.Complete {
			done = "not finished: run provision revoke again"
		}
		line("revoked", "%s by provision revoke: serials %s; %s", ts(rv.At), strings.Join(rv.Serials, ", "), done)
	}
	fmt.Fprintf(w, "provision status: %s: %s", n.State, clean(n.Summary))
	if n.Remedy != "" {
		fmt.Fprintf(w, ". Next: %s", clean(n.Remedy))
	}
	fmt.Fprintf(w, " (exit %d)\n", code)
}

// inDays says how far off an expiry is, for a person: days, or hours
// under two days; "expired" once passed.
func inDays(secs int64) string {
	d := time.Duration(secs) * time.Second
	switch {
	case d <= 0:
		return "expired"
	case d < 48*time.Hour:
		return fmt.Sprintf("expires in %s", d.Round(time.Minute))
	}
	return fmt.Sprintf("expires in %d days", int64(d/(24*time.Hour)))
}

// printKey is the key store's line: where the key is, and whether it
// signed just now.
func printKey(line func(k, format string, a ...any), k status.Key) {
	signs := "signs"
	switch {
	case k.Error != "":
		signs = "FAILS: " + k.Error
	case !k.Signs:
		signs = "none installed"
	}
	where := "key.store " + k.Store
	if k.Installed != "" {
		where += ", installed key in " + k.Installed
	}
	line("key", "%s: %s", where, signs)
	if k.TPMStatus != "" {
		line("tpm", "%s", k.TPMStatus)
	} else if k.TPM != "" {
		line("tpm", "%s", k.TPM)
	}
}

func ts(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16] + "..."
	}
	if fp == "" {
		return "(none in ca.pem)"
	}
	return fp
}
