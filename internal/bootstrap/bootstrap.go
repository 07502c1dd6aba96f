// Package bootstrap runs provision's whole line: config -> hosts override ->
// current CA roots -> keep or re-enroll -> credentials as one unit -> proof
// by a real mTLS tasks/wait -> receipt, written last.
//
// The incident's worst failure was a bootstrap that reported success while
// the node could not poll. Here "done" is not a step that can be reached
// any other way than through the proof: the receipt is written only after
// verify's ladder, ending with the real tasks/wait, passes. Transient
// failures are retried with jittered backoff inside the deadline; anything
// retrying cannot fix stops at once with the same report verify would print.
package bootstrap

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/hosts"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/internal/tasks"
	"github.com/gpuaas/provision/internal/verify"
)

// File names under state_dir.
const (
	ReceiptFile = "receipt.json"
	PendingFile = "enroll-pending.json"
	ExposedFile = lifecycle.ExposedFile
	DoneDir     = "done"
)

// Receipt is the done receipt. Field names are an interface.
type Receipt struct {
	NodeID          string    `json:"node_id"`
	Serial          string    `json:"serial"`
	Issuer          string    `json:"issuer"`
	Subject         string    `json:"subject"`
	RootFingerprint string    `json:"root_fingerprint"`
	NotAfter        time.Time `json:"not_after"`
	Endpoint        string    `json:"endpoint"`
	ResolvedAddr    string    `json:"resolved_addr"`
	ProbeStatus     int       `json:"probe_status"`
	Enrolled        bool      `json:"enrolled"` // this run obtained a new certificate
	ProvedAt        time.Time `json:"proved_at"`
	MachineID       string    `json:"machine_id,omitempty"`
	Version         string    `json:"version"`
	// Warnings are what the run fixed or left for a person, such as a
	// private key found readable by others and kept for want of a token.
	Warnings []string `json:"warnings,omitempty"`
}

// Options tune a run.
type Options struct {
	Log     *slog.Logger
	Version string
	Policy  retry.Policy
	// Sleep waits between proof attempts; tests may shorten it.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Outcome is what a run did.
type Outcome struct {
	Report   *report.Report
	Receipt  *Receipt
	Enrolled bool
	Hosts    hosts.Strategy
	Attempts int
	Task     *probe.Task
}

// The steps of a run, in order. Each has one job; what it observes is left
// on the run for the steps after it, never fetched twice.
var steps = []struct {
	name string
	do   func(*run) *diag.Finding
}{
	{"sweep", (*run).sweep},               // temp files a killed run left
	{"credentials-mode", (*run).restrict}, // an exposed key is restricted first
	{"hosts", (*run).applyHosts},          // the /etc/hosts override
	{"ca-roots", (*run).fetchRoots},       // the CA's current roots, pinned
	{"assess", (*run).assess},             // the credential verdict, and the clock before a token
	{"credentials", (*run).credentials},   // enroll, or keep and refresh the bundle
	{"proof", (*run).prove},               // verify's ladder ending in a real tasks/wait; a task it got, kept
	{"revoke", (*run).revoke},             // a still-valid certificate the enrollment replaced (a failure warns)
	{"receipt", (*run).writeReceipt},      // last, only after the proof
}

// run is one bootstrap: its inputs and what the steps observed so far.
type run struct {
	ctx      context.Context
	cfg      *config.Config
	host     *system.Host
	o        Options
	log      *slog.Logger
	stateDir string
	pki      string
	out      *Outcome

	exposure *Exposure
	client   *enroll.Client
	roots    *enroll.Roots
	verdict  lifecycle.Verdict
	reason   string         // why to enroll; "" keeps the credentials
	replaced *credstore.Set // the set an enrollment replaces, revoked after the proof
	warnings []string       // for the receipt
	env      *observe.Env
	rep      *report.Report // the proof's report
	halt     bool           // the proof failed: its report is the run's, no receipt
	check    string         // the failed_check of a step's finding, when not the step's name
}

// Run bootstraps the node described by cfg on host: the steps above, in
// order, each timed in the report; the first that fails ends the run.
func Run(ctx context.Context, cfg *config.Config, host *system.Host, o Options) *Outcome {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, cfg.Bootstrap.Deadline.Duration)
	defer cancel()
	r := &run{ctx: ctx, cfg: cfg, host: host, o: o, log: o.Log, out: &Outcome{},
		stateDir: host.Path(cfg.Paths.StateDir), pki: host.Path(cfg.Paths.PKIDir)}
	var timings []report.Step
	for _, s := range steps {
		t0 := time.Now()
		r.check = ""
		f := s.do(r)
		st := report.Step{Name: s.name, Status: "ok", DurationMS: time.Since(t0).Milliseconds()}
		if f != nil || r.halt {
			st.Status = "fail"
		}
		timings = append(timings, st)
		if f != nil {
			r.log.Error("step", "step", s.name, "layer", string(f.Layer), "owner", string(f.Owner), "status", "fail", "message", f.Summary)
			check := s.name
			if r.check != "" {
				check = r.check // the failed_check names scripts key on
			}
			r.out.Report = report.Failed("bootstrap", cfg.NodeID, check, f)
			break
		}
		if r.halt {
			break
		}
	}
	if r.out.Report == nil {
		r.out.Report = r.rep
	}
	r.out.Report.Steps = timings
	r.out.Report.DurationMS = time.Since(start).Milliseconds()
	return r.out
}

func (r *run) sweep() *diag.Finding {
	system.SweepTemp(r.stateDir, ReceiptFile, PendingFile, ExposedFile)
	// A kill while writing the done marker or a task file leaves renameio's
	// ".<name><digits>" temp file in those directories too.
	system.SweepTemp(filepath.Join(r.stateDir, DoneDir), r.host.MachineID())
	tasks.Sweep(r.stateDir)
	credstore.Sweep(r.pki)
	return nil
}

// restrict records an exposed key and restricts it, before anything else,
// in the same run that finds it. The record stays until the key is
// rotated: a crash, or a run without a token, must not forget that this
// key may have been read.
func (r *run) restrict() *diag.Finding {
	x, err := restrictKeys(r.stateDir, r.pki, r.host.Hook)
	if err != nil {
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Summary: "a private key under " + r.cfg.Paths.PKIDir + " is readable by others and cannot be restricted: " + err.Error(),
			Remedy: "restrict it by hand (chmod 0600 the key, 0700 the directory) and treat the key as exposed: issue a fresh one-time token and run provision bootstrap to rotate it"}
	}
	if x != nil {
		r.log.Warn("step", "step", "credentials-mode", "layer", "credentials", "status", "exposed", "found", x.Found, "changes", strings.Join(x.Changes, "; "))
	}
	r.exposure = x
	return nil
}

func (r *run) applyHosts() *diag.Finding {
	strategy, err := ApplyHosts(r.cfg, r.host)
	if err != nil {
		r.check = "hosts-apply"
		return &diag.Finding{Layer: diag.Hosts, Owner: diag.Node, Summary: err.Error(),
			Remedy: "fix " + r.cfg.Paths.HostsFile + " as the message says, then run again; nothing was changed"}
	}
	r.out.Hosts = strategy
	r.log.Info("step", "step", "hosts-apply", "layer", "hosts", "status", "ok", "strategy", string(strategy), "path", r.cfg.Paths.HostsFile)
	r.host.Hook.At("hosts written")
	return nil
}

// fetchRoots gets the CA's current roots through the pinned root. The
// client makes one request per attempt; this loop is the only retry, with
// the CA's Retry-After honoured, bounded by the bootstrap deadline.
func (r *run) fetchRoots() *diag.Finding {
	r.env = observe.NewEnv(r.cfg, r.host)
	r.client = r.env.CAClient(0)
	var f *diag.Finding
	retry.Until(r.ctx, r.o.Policy, r.o.Sleep, func(int) (bool, time.Duration) {
		roots, err := r.client.FetchRoots(r.ctx)
		r.roots, f = roots, nil
		if err == nil {
			return true, 0
		}
		// The pinned fetch carries the CA's Date even when the CA's
		// certificate then fails by the node's clock: a skew is the cause.
		if f = clockBeforeToken(roots, r.host.Time()); f != nil {
			f.Summary = strings.Replace(f.Summary, "the one-time token was not sent", "the CA's certificate cannot be judged and the one-time token was not sent", 1)
			f.Evidence["ca_error"] = err.Error()
			r.check = "clock"
			return true, 0
		}
		f = diag.FromEnroll(err, diag.CA, r.cfg.CA.TokenFile)
		if !f.Transient {
			return true, 0
		}
		r.log.Warn("step", "step", "ca-roots", "layer", "ca", "status", "retry", "message", f.Summary)
		var ee *enroll.Error
		errors.As(err, &ee)
		return false, retryAfter(ee)
	})
	if f != nil {
		return f
	}
	r.env.SetRoots(r.roots)
	r.log.Info("step", "step", "ca-roots", "layer", "ca", "status", "ok", "roots", len(r.roots.Current), "fingerprint", r.cfg.CA.Fingerprint)
	return nil
}

func retryAfter(e *enroll.Error) time.Duration {
	if e == nil {
		return 0
	}
	return e.RetryAfter
}

// assess takes the one credential verdict (verify renders the same one, so
// its remedy is what this run does) and, before a token can be spent,
// compares the node clock with the CA's.
func (r *run) assess() *diag.Finding {
	r.verdict = r.env.Verdict(r.ctx)
	r.reason, r.warnings = decide(r.cfg, r.host, r.verdict)
	if r.reason == "" {
		r.log.Info("step", "step", "assess", "layer", "credentials", "status", "keep", "verdict", r.verdict.Action.String(), "reasons", fmt.Sprint(r.verdict.Reasons))
		return nil
	}
	r.log.Info("step", "step", "assess", "layer", "credentials", "status", "enroll", "reason", r.reason)
	r.replaced, _ = r.env.Creds()
	// The one-time token is spent by the sign: a skew the CA's Date header
	// already shows would only buy a certificate the node then judges not
	// yet valid or expired, and cost the token.
	r.check = "clock"
	return clockBeforeToken(r.roots, r.host.Time())
}

// credentials enrolls when assess said so, or keeps the installed set and
// refreshes its CA bundle and modes.
func (r *run) credentials() *diag.Finding {
	if r.reason != "" {
		if f := enrollNode(r.ctx, r.cfg, r.host, r.client, r.roots, r.reason, r.log); f != nil {
			r.check = "enroll"
			return f
		}
		r.out.Enrolled = true
	} else {
		forgetBurntToken(r.cfg, r.host, r.log)
		if err := refreshBundle(r.pki, r.env, r.roots, r.host.Time(), r.host.Hook); err != nil {
			r.check = "credentials-write"
			return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Summary: err.Error(), Remedy: "check " + r.cfg.Paths.PKIDir + " is writable"}
		}
	}
	return nil
}

// freshEnv re-reads the credentials from disk (the node-agent reads the
// same files) with the roots already fetched.
func (r *run) freshEnv() *observe.Env {
	e := observe.NewEnv(r.cfg, r.host)
	e.SetRoots(r.roots)
	return e
}

// prove runs verify's ladder, ending in the real tasks/wait, retried with
// the one retry loop while the failure is transient.
func (r *run) prove() *diag.Finding {
	attempts := retry.Until(r.ctx, r.o.Policy, r.o.Sleep, func(n int) (bool, time.Duration) {
		env := r.freshEnv()
		t0 := time.Now()
		last := report.New("bootstrap", r.cfg.NodeID, verify.Run(r.ctx, env, verify.Checks(), r.log), time.Since(t0))
		if r.ctx.Err() != nil && r.rep != nil && !last.OK {
			// The deadline cut this attempt short; the previous attempt's
			// report shows the real failure, not "context deadline exceeded".
			return true, 0
		}
		r.rep, r.env = last, env
		if last.OK || !last.Transient {
			return true, 0
		}
		var ra time.Duration
		if res := env.Probed(); res != nil {
			ra = retry.RetryAfterHeader(res.Status, res.Header, r.host.Time())
		}
		r.log.Warn("step", "step", "proof", "layer", string(last.FailedLayer), "owner", string(last.Owner), "status", "retry", "attempt", n+1, "message", last.Summary)
		return false, ra
	})
	r.out.Attempts = attempts
	if !r.rep.OK && r.ctx.Err() != nil && r.rep.Transient {
		r.rep.Summary = fmt.Sprintf("gave up after %d attempts in %s (bootstrap.deadline): %s", attempts, r.cfg.Bootstrap.Deadline.Duration, r.rep.Summary)
	}
	if f := r.handOff(); f != nil {
		return f
	}
	r.halt = !r.rep.OK
	return nil
}

// handOff keeps a task the proof received: the API has dequeued it,
// whatever the verdict (a route without mTLS can hand one out and fail).
func (r *run) handOff() *diag.Finding {
	t, ok := r.env.Probed().HandedTask()
	if !ok {
		return nil
	}
	r.out.Task = &t
	r.rep.Task = json.RawMessage(t.Raw)
	if _, err := tasks.Save(r.stateDir, t, r.host.Time(), r.host.Hook); err != nil {
		if r.rep.OK {
			r.check = "task-save"
			return &diag.Finding{Layer: diag.State, Owner: diag.Node, Summary: "the proof received a task but it could not be saved: " + err.Error(), Remedy: "make " + r.cfg.Paths.StateDir + " writable; the task is in this report's evidence",
				Evidence: map[string]string{"task": string(t.Raw)}}
		}
		r.log.Error("step", "step", "task-save", "layer", "state", "status", "fail", "message", err.Error(), "task_id", t.ID)
	}
	return nil
}

// revoke revokes, at the CA and authenticated by itself, a still-valid
// certificate this run's enrollment replaced, now that the new one is
// proven (reinstall on a kept disk, a rotated key). A failure is a warning.
func (r *run) revoke() *diag.Finding {
	r.warnings = append(r.warnings, revokeReplaced(r.ctx, r.client, r.roots, r.replaced, r.out.Enrolled, r.host.Time(), r.rep, r.log)...)
	return nil
}

// writeReceipt writes the receipt, last: only a proved node has one.
func (r *run) writeReceipt() *diag.Finding {
	creds, err := r.env.Creds()
	if err != nil {
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node, Summary: err.Error(), Remedy: "run provision verify to see what changed under " + r.cfg.Paths.PKIDir}
	}
	res := r.env.Probed()
	leaf := creds.Leaf()
	rc := &Receipt{
		NodeID: r.cfg.NodeID, Serial: leaf.SerialNumber.String(), Issuer: leaf.Issuer.String(), Subject: leaf.Subject.String(),
		RootFingerprint: r.cfg.CA.Fingerprint, NotAfter: leaf.NotAfter.UTC(), Endpoint: r.cfg.NodeAPI.URL,
		ResolvedAddr: res.RemoteAddr, ProbeStatus: res.Status, Enrolled: r.out.Enrolled,
		ProvedAt: r.host.Time().UTC(), MachineID: r.host.MachineID(), Version: r.o.Version, Warnings: r.warnings,
	}
	r.host.Hook.At("before receipt")
	if err := WriteReceipt(r.stateDir, rc, r.host.Hook); err != nil {
		return &diag.Finding{Layer: diag.State, Owner: diag.Node, Summary: "the proof succeeded but the receipt could not be written: " + err.Error(), Remedy: "make " + r.cfg.Paths.StateDir + " writable and run again (the node itself is healthy)"}
	}
	r.out.Receipt = rc
	r.log.Info("step", "step", "receipt", "layer", "state", "status", "ok", "path", filepath.Join(r.cfg.Paths.StateDir, ReceiptFile), "serial", rc.Serial)
	r.rep.Summary = fmt.Sprintf("done: %s polls tasks/wait through %s with certificate serial %s", r.cfg.NodeID, r.cfg.NodeAPI.URL, rc.Serial)
	return nil
}

// ApplyHosts writes the managed block for cfg. A hosts file that is a
// symbolic link is edited at its target, resolved inside --root
// (system.Host.Resolve), so the link stays a link and --root stays a sandbox.
func ApplyHosts(cfg *config.Config, host *system.Host) (hosts.Strategy, error) {
	target, err := host.Resolve(cfg.Paths.HostsFile)
	if err != nil {
		return "", fmt.Errorf("resolving %s: %w", cfg.Paths.HostsFile, err)
	}
	path := host.Path(target)
	old, err := hosts.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("reading %s: %w", cfg.Paths.HostsFile, err)
	}
	nb, changed, err := hosts.Apply(old, HostEntries(cfg))
	if err != nil {
		return "", fmt.Errorf("%s: %w", cfg.Paths.HostsFile, err)
	}
	if !changed {
		return hosts.Unchanged, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	s, err := hosts.Write(path, old, nb, host.Hook)
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", cfg.Paths.HostsFile, err)
	}
	return s, nil
}

// HostEntries is the config's [[hosts]] as managed-block entries.
func HostEntries(cfg *config.Config) []hosts.Entry { return hosts.EntriesOf(cfg.HostMap()) }

// decide turns the credential verdict into bootstrap's decision: the reason
// to enroll ("" to keep) and, when keeping, the warnings for the receipt
// (the report shows the same facts through verify's credentials check).
//
//	re-enroll                          enroll (a token is needed; without one: exit 20)
//	renew, key-exposed, key-was-exposed enroll if a fresh token is there; else keep, warn
//	tighten, keep                      keep (modes were restricted in step 0; refreshBundle
//	                                   rewrites a stale ca.pem or an open pki_dir)
func decide(cfg *config.Config, host *system.Host, v lifecycle.Verdict) (string, []string) {
	if v.Action == lifecycle.Reenroll {
		return string(v.First()) + ": " + v.Detail[v.First()], nil
	}
	var why, warnings []string
	for _, r := range []lifecycle.Reason{lifecycle.KeyExposed, lifecycle.KeyWasExposed, lifecycle.PastRenewal} {
		if v.Has(r) {
			why = append(why, string(r)+": "+v.Detail[r])
			warnings = append(warnings, v.Detail[r]+"; kept, since "+cfg.CA.TokenFile+" holds no fresh token; "+verify.CredentialRemedy(r, cfg))
		}
	}
	if len(why) > 0 && tokenPresent(cfg, host) {
		return strings.Join(why, "; "), nil
	}
	return "", warnings
}

// clockBeforeToken compares the node clock with the CA's Date header from
// the roots fetch, with verify's clock tolerance, before a token is spent.
func clockBeforeToken(roots *enroll.Roots, now time.Time) *diag.Finding {
	if roots == nil || roots.ServerDate.IsZero() {
		return nil
	}
	skew := now.Sub(roots.ServerDate)
	if skew <= verify.MaxSkew && skew >= -verify.MaxSkew {
		return nil
	}
	return &diag.Finding{Layer: diag.Clock, Owner: diag.Node,
		Summary: fmt.Sprintf("the node clock is %s off the CA's (its Date header): the one-time token was not sent, since the certificate it buys would look expired or not yet valid", skew.Round(time.Second)),
		Remedy:  "synchronise the node clock (chrony or systemd-timesyncd, and order provision after time-sync.target), then run bootstrap again: the token is unspent",
		Evidence: map[string]string{"node_time": now.UTC().Format(time.RFC3339), "ca_time": roots.ServerDate.UTC().Format(time.RFC3339),
			"skew": skew.Round(time.Second).String(), "max_skew": verify.MaxSkew.String()}}
}

// tokenPresent reports whether a non-empty token file is there to rotate
// an exposed key with.
func tokenPresent(cfg *config.Config, host *system.Host) bool {
	st, err := os.Stat(host.Path(cfg.CA.TokenFile))
	return err == nil && st.Mode().IsRegular() && st.Size() > 0
}

// Exposure records that the installed private key was found readable by
// others. It stays in state_dir until an enrollment replaces the key.
type Exposure struct {
	Found   time.Time `json:"found"`
	Changes []string  `json:"changes"`
}

// restrictKeys records an exposed key in state_dir (before changing
// anything, so a crash cannot lose it), then restricts every loose path
// under pki. It returns the recorded exposure, old or new, if any.
func restrictKeys(stateDir, pki string, hook system.Hook) (*Exposure, error) {
	var x *Exposure
	if b, err := system.ReadRegular(context.Background(), filepath.Join(stateDir, ExposedFile), maxRecord); err == nil { // never a FIFO
		x = &Exposure{}
		if json.Unmarshal(b, x) != nil {
			x = &Exposure{Changes: []string{"(unreadable record)"}}
		}
	}
	loose, err := credstore.FindLoose(pki)
	if err != nil {
		return x, err
	}
	var keys []string
	for _, l := range loose {
		if l.Key {
			keys = append(keys, l.String())
		}
	}
	if len(keys) > 0 {
		if x == nil {
			x = &Exposure{Found: time.Now().UTC()}
		}
		x.Changes = append(x.Changes, keys...)
		if err := writeJSON(hook, stateDir, ExposedFile, x, 0o600); err != nil {
			return x, fmt.Errorf("recording the exposure: %w", err)
		}
	}
	return x, credstore.Tighten(loose)
}

// Pending records that a token is about to be presented to the CA. If the
// process dies after the CA accepted the token but before the certificate
// was saved, the token is burnt; the marker lets the next run say so plainly
// instead of reporting a bare 401.
type Pending struct {
	TokenSHA256 string    `json:"token_sha256"`
	Started     time.Time `json:"started"`
}

func tokenHash(raw string) string {
	sum := sha256.Sum256([]byte(strings.TrimSpace(raw)))
	return hex.EncodeToString(sum[:])
}

// MaxTokenSize bounds the token read: a step-ca one-time token is about a
// kilobyte.
const MaxTokenSize = 64 << 10

// readToken reads the token file within ctx (the run's deadline, cancelled by
// SIGTERM), refusing a link, FIFO, device or directory before it could block
// on it, and anything larger than MaxTokenSize.
func readToken(ctx context.Context, path string) ([]byte, error) {
	return system.ReadRegular(ctx, path, MaxTokenSize)
}

func enrollNode(ctx context.Context, cfg *config.Config, host *system.Host, c *enroll.Client, roots *enroll.Roots, why string, log *slog.Logger) *diag.Finding {
	tokPath := host.Path(cfg.CA.TokenFile)
	raw, err := readToken(ctx, tokPath)
	if err != nil {
		msg := "cannot be read: " + err.Error()
		var ue *system.UnsafeFileError
		switch {
		case errors.Is(err, os.ErrNotExist):
			msg = "does not exist"
		case errors.As(err, &ue):
			msg = "is a " + ue.Kind + ", not a regular file, so provision did not read it"
		}
		f := diag.FromEnroll(&enroll.Error{Kind: enroll.TokenMissing, Op: "read token", Err: errors.New(msg)}, diag.Enroll, cfg.CA.TokenFile)
		f.Summary = fmt.Sprintf("re-enrollment needed (%s), but the token file %s %s", why, cfg.CA.TokenFile, msg)
		return f
	}
	tok, err := enroll.ParseToken(string(raw))
	if err != nil {
		f := diag.FromEnroll(err, diag.Enroll, cfg.CA.TokenFile)
		f.Summary = fmt.Sprintf("re-enrollment needed (%s): %s", why, f.Summary)
		return f
	}
	if err := tok.Check(cfg.NodeID, cfg.CA.Fingerprint, host.Time()); err != nil {
		f := diag.FromEnroll(err, diag.Enroll, cfg.CA.TokenFile)
		f.Summary = fmt.Sprintf("the token in %s cannot be used (it was not sent, so it is not burnt): %s", cfg.CA.TokenFile, f.Summary)
		return f
	}
	stateDir := host.Path(cfg.Paths.StateDir)
	pendingPath := filepath.Join(stateDir, PendingFile)
	h := tokenHash(string(raw))
	var prev Pending
	if b, err := system.ReadRegular(ctx, pendingPath, MaxTokenSize); err == nil && json.Unmarshal(b, &prev) == nil && prev.TokenSHA256 == h {
		log.Warn("step", "step", "enroll", "layer", "enroll", "status", "retry-token",
			"message", "this token was already presented by a run that did not finish; trying it once more", "since", prev.Started)
	}
	if err := writeJSON(host.Hook, stateDir, PendingFile, Pending{TokenSHA256: h, Started: host.Time().UTC()}, 0o600); err != nil {
		return &diag.Finding{Layer: diag.State, Owner: diag.Node, Summary: "cannot record the enrollment in " + cfg.Paths.StateDir + ": " + err.Error(), Remedy: "make " + cfg.Paths.StateDir + " writable (nothing was sent to the CA; the token is unused)"}
	}
	host.Hook.At("before sign")
	issued, err := c.Sign(ctx, tok, roots)
	if err != nil {
		f := diag.FromEnroll(err, diag.Enroll, cfg.CA.TokenFile)
		var ee *enroll.Error
		if errors.As(err, &ee) && ee.Kind == enroll.TokenRejected && prev.TokenSHA256 == h {
			f.Summary = fmt.Sprintf("the CA rejected the enrollment token (401): an earlier run presented this same token at %s and did not finish, so the CA has burnt it", prev.Started.Format(time.RFC3339))
		}
		if !enroll.NotSent(err) {
			// The CA saw the token, or may have (a timeout after sending):
			// it is burnt whatever happened.
			writeJSON(host.Hook, stateDir, PendingFile, Pending{TokenSHA256: h, Started: host.Time().UTC()}, 0o600)
		} else {
			os.Remove(pendingPath)
		}
		return f
	}
	host.Hook.At("after sign")
	set := &credstore.Set{Key: issued.Key, Chain: issued.Chain, Roots: roots.Bundle()}
	if _, err := credstore.Save(host.Path(cfg.Paths.PKIDir), set, host.Time(), host.Hook); err != nil {
		return &diag.Finding{Layer: diag.Credentials, Owner: diag.Node,
			Summary: "the CA issued a certificate but it could not be saved: " + err.Error(),
			Remedy:  "make " + cfg.Paths.PKIDir + " writable, then run again with a fresh token (this one is used)"}
	}
	// The CA has burnt the token; leaving it on disk only leaves a secret
	// lying around (cloud-init keeps its own copy in the instance directory).
	// The token goes before the marker: a run killed in between leaves the
	// marker, and the next run (keeping these credentials) removes it; the
	// other order could leave the used token forever.
	if err := os.Remove(tokPath); err == nil {
		system.SyncDir(filepath.Dir(tokPath))
		log.Info("step", "step", "enroll", "layer", "enroll", "status", "token-removed", "path", cfg.CA.TokenFile)
	}
	os.Remove(pendingPath)
	// A new key replaced whatever key may have been exposed.
	os.Remove(filepath.Join(stateDir, ExposedFile))
	// No fsync of state_dir here: the receipt's write, moments later,
	// fsyncs that same directory, and until then a marker brought back by
	// a power cut is one the next run clears (forgetBurntToken).
	log.Info("step", "step", "enroll", "layer", "enroll", "status", "ok", "serial", issued.Chain[0].SerialNumber.String(), "not_after", issued.Chain[0].NotAfter.UTC())
	return nil
}

// refreshBundle rewrites the credential set when the CA's current and
// federated roots differ from ca.pem, keeping key and certificate.
func refreshBundle(pki string, env *observe.Env, roots *enroll.Roots, now time.Time, hook system.Hook) error {
	s, err := env.Creds()
	if err != nil {
		return err
	}
	if string(credstore.EncodeCerts(s.Roots)) == string(roots.PEM()) && s.DirMode&0o077 == 0 {
		return nil
	}
	s.Roots = roots.Bundle()
	_, err = credstore.Save(pki, s, now, hook)
	return err
}

func writeJSON(hook system.Hook, dir, name string, v any, mode os.FileMode) error {
	// state_dir may be a link to another volume; done/ is provision's own
	// and may not (a link there would send the done marker anywhere).
	sub := filepath.Base(dir) == DoneDir
	if _, err := system.EnsurePrivateDir(dir, !sub); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return system.WriteFileAtomic(filepath.Join(dir, name), append(b, '\n'), system.WriteOptions{Mode: mode, Hook: hook})
}

// WriteReceipt writes the done receipt and the per-install done marker.
func WriteReceipt(stateDir string, r *Receipt, hook system.Hook) error {
	if err := writeJSON(hook, stateDir, ReceiptFile, r, 0o644); err != nil {
		return err
	}
	// The hand-off directory exists on every done node, so verify, whose
	// unit may write nowhere else, can leave a task there.
	if err := os.MkdirAll(filepath.Join(stateDir, tasks.Dir), 0o700); err != nil {
		return err
	}
	if r.MachineID != "" {
		if err := writeJSON(hook, filepath.Join(stateDir, DoneDir), r.MachineID, map[string]string{"serial": r.Serial, "proved_at": r.ProvedAt.Format(time.RFC3339)}, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// maxRecord bounds what provision reads back of its own records in
// state_dir (the receipt, the key-exposure record): each is under 4 KiB.
const maxRecord = 1 << 20

// ReadReceipt reads the receipt, if any.
func ReadReceipt(stateDir string) (*Receipt, error) {
	b, err := system.ReadRegular(context.Background(), filepath.Join(stateDir, ReceiptFile), maxRecord) // never a FIFO
	if err != nil {
		return nil, err
	}
	var r Receipt
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// forgetBurntToken runs when the installed credentials are kept. If an
// enrollment marker is left, a run was killed after the CA issued the
// certificate (which was saved, since it is being kept) but before the token
// and the marker were removed: the token is burnt, so it is removed now
// rather than left lying around; a different token (written since) is kept.
func forgetBurntToken(cfg *config.Config, host *system.Host, log *slog.Logger) {
	pendingPath := filepath.Join(host.Path(cfg.Paths.StateDir), PendingFile)
	b, err := system.ReadRegular(context.Background(), pendingPath, MaxTokenSize)
	if err != nil {
		return
	}
	var prev Pending
	if json.Unmarshal(b, &prev) == nil && prev.TokenSHA256 != "" {
		tokPath := host.Path(cfg.CA.TokenFile)
		if raw, err := readToken(context.Background(), tokPath); err == nil && tokenHash(string(raw)) == prev.TokenSHA256 {
			if os.Remove(tokPath) == nil {
				log.Info("step", "step", "assess", "layer", "enroll", "status", "token-removed", "path", cfg.CA.TokenFile,
					"message", "an earlier run enrolled with this token and was interrupted before removing it")
			}
		}
	}
	os.Remove(pendingPath)
	system.SyncDir(filepath.Dir(pendingPath))
}
