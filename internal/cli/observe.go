package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/metrics"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// LogSchema is the version of the log schema (docs/logging.md), carried by
// every log line as log_schema. It changes only when a documented key is
// renamed or removed, or its meaning changes; adding a key does not change it.
const LogSchema = 1

// Log keys every line carries. They are the stable schema of
// docs/logging.md; TestLogSchemaGolden fails if one is renamed.
const (
	KeyLogSchema = "log_schema"
	KeyCommand   = "command"
	KeyNodeID    = "node_id"
	KeyRunID     = "run_id"
)

// newRunID returns a random id that ties a run's log lines together
// (several runs of a command may interleave in the journal).
func newRunID() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return strconv.FormatInt(time.Now().UnixNano(), 16)
	}
	return hex.EncodeToString(b)
}

// underJournal reports whether w is the journal's stream: systemd sets
// JOURNAL_STREAM to "<dev>:<inode>" of the stream it connected to stdout
// or stderr (systemd.exec(5)), which is how a service knows its output is
// a log and not a terminal. The binary hands Run its stdout wrapped in a
// stopWriter (MainWithHook): the stream under it is what counts.
func underJournal(w io.Writer) bool {
	if s, ok := w.(*stopWriter); ok {
		w = s.w
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	dev, ino, ok := strings.Cut(os.Getenv("JOURNAL_STREAM"), ":")
	if !ok {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return strconv.FormatUint(uint64(st.Dev), 10) == dev && strconv.FormatUint(st.Ino, 10) == ino
}

// metricsCommands are the commands that write textfile metrics. renew
// --check writes none: it is a question, not a run.
var metricsCommands = map[string]bool{"bootstrap": true, "verify": true, "renew": true}

// MetricsCommands are the commands that write textfile metrics, sorted:
// the package's purge removes each one's file (packaging's test).
func MetricsCommands() []string {
	var out []string
	for c := range metricsCommands {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// seen is what a run already knows that its metrics say, so that they
// never look again: the set installed as it ended with its one verdict,
// and the renew record as the run left it (or found it).
type seen struct {
	installed *pipeline.Installed
	record    *state.Renewal
}

// seenBy is what a bootstrap or renew run saw.
func seenBy(out *pipeline.Outcome) *seen {
	return &seen{installed: out.Installed, record: out.Record}
}

// finish ends a bootstrap, verify or renew run whose config loaded: it prints the
// report, writes the command's metrics and logs the one line that closes
// the run (with its exit code). It returns the exit code. A metrics write
// that fails is a warning, never a different exit code. s is what the run
// saw; nil when no run looked at the node (the lock was not taken).
func finish(env *runEnv, f *flags, cfg *config.Config, host *system.Host, log *slog.Logger, r *report.Report, s *seen) int {
	warnDamaged(cfg, host, r)
	r, code := outcome(env, r)
	renderReport(env, f, r, code)
	writeMetrics(env, cfg, host, log, r, s)
	lvl := slog.LevelInfo
	status := "ok"
	if !r.OK {
		lvl, status = slog.LevelError, "fail"
	}
	log.Log(env.ctx, lvl, "run", "status", status, "layer", string(r.FailedLayer), "owner", string(r.Owner),
		"check", r.FailedCheck, "exit_code", code, "duration_ms", time.Since(env.start).Milliseconds())
	return code
}

// writeMetrics writes r as the command's textfile metrics when cfg turns
// them on. cfg nil means the config itself could not be loaded: then the
// default directory is used if it exists, because the config that could
// say otherwise is the broken thing, and a fleet must see a bad config
// rollout as a failing layer rather than as silence.
func writeMetrics(env *runEnv, cfg *config.Config, host *system.Host, log *slog.Logger, r *report.Report, s *seen) {
	if !metricsCommands[r.Command] || host == nil {
		return
	}
	dir := config.DefaultTextfileDir
	var cert *metrics.Cert
	if cfg != nil {
		if !cfg.Metrics.Enabled {
			return
		}
		dir = cfg.Metrics.TextfileDir
		// The credentials are read for the metrics only where node_exporter
		// reads them (metrics.Write says why when there is no directory).
		if st, err := os.Stat(host.ResolvedPath(dir)); err == nil && st.IsDir() {
			cert = certFacts(cfg, host, s)
		}
	}
	run := metrics.Run{Command: r.Command, Report: r, Finished: time.Now(), Duration: time.Since(env.start), Cert: cert, Version: Version()}
	// Only renew's file carries the renew record's facts: it runs every 15
	// minutes, while bootstrap's file would keep a stale copy for the life
	// of the node.
	if cfg != nil && r.Command == "renew" {
		run.Renewal = renewalFacts(host.Path(cfg.Paths.StateDir), s)
	}
	path, err := metrics.Write(host, dir, run)
	switch {
	case err == nil:
		log.Debug("metrics written", "path", strings.TrimPrefix(path, strings.TrimSuffix(host.Path("/"), "/")))
	case errors.Is(err, metrics.ErrNoDir) && (cfg == nil || !cfg.Written("metrics.textfile_dir")):
		// The default directory missing means no node_exporter here: silence.
		log.Debug("metrics not written: node_exporter's textfile directory does not exist", "dir", dir)
	case errors.Is(err, metrics.ErrNoDir):
		// A directory the operator wrote (even the default path) is one
		// they expect to be read.
		log.Warn("metrics not written: the configured metrics.textfile_dir does not exist (provision never creates it); the run's result stands", "dir", dir)
	default:
		log.Warn("metrics not written; the run's result stands", "dir", dir, "error", err.Error())
	}
}

// metricsForConfigFailure writes the metrics of a run stopped by its config
// (see writeMetrics) with a logger that knows no node_id.
func metricsForConfigFailure(env *runEnv, f *flags, host *system.Host, r *report.Report) {
	if !metricsCommands[r.Command] || f.dryRun {
		return
	}
	r, _ = outcome(env, r)
	writeMetrics(env, nil, host, f.logger(env.stderr, ""), r, nil)
}

// RecordsCheck names the warning a report carries while a record of
// state_dir does not parse, or one was kept aside for that.
const RecordsCheck = "state-records"

// warnDamaged adds the records check to r, a warning, when state_dir holds
// a damaged record: the text and JSON reports and the metrics
// (provision_check_status) then all say so.
func warnDamaged(cfg *config.Config, host *system.Host, r *report.Report) {
	ds := state.FindDamage(host.Path(cfg.Paths.StateDir))
	if len(ds) == 0 {
		return
	}
	msgs := make([]string, len(ds))
	for i, d := range ds {
		msgs[i] = d.String()
	}
	r.Checks = append(r.Checks, report.Result{Name: RecordsCheck, Layer: diag.State, Owner: diag.Node, Status: report.Warn,
		Message: "state_dir " + cfg.Paths.StateDir + ": " + strings.Join(msgs, "; "), Remedy: ds[0].Remedy()})
}

// certFacts are the installed certificate's times for the metrics, from
// the one verdict the run took (the renewal point and due time renew acts
// on). Only when no run looked (the lock was not taken) is the node looked
// at here, offline.
func certFacts(cfg *config.Config, host *system.Host, s *seen) *metrics.Cert {
	var in *pipeline.Installed
	if s != nil {
		in = s.installed
	} else {
		e := observe.NewEnv(cfg, host)
		e.Offline = true
		set, _ := e.Creds()
		in = &pipeline.Installed{Set: set, Verdict: e.Verdict(context.Background())}
	}
	if in == nil || in.Set == nil {
		return nil
	}
	cert := metrics.CertFacts(in.Set.Chain, in.Set.Roots)
	if cert != nil {
		cert.RenewAfter, cert.DueAt = in.Verdict.Schedule.RenewAfter, in.Verdict.Schedule.DueAt
	}
	return cert
}

// renewalFacts are the renew record's facts for the metrics: what a later
// run must not forget (a pending hook) and what alerts when it persists;
// the record as the run left it (read here only when no run looked).
func renewalFacts(stateDir string, s *seen) *metrics.Renewal {
	var rec *state.Renewal
	if s != nil {
		rec = s.record
	} else {
		rec = state.ReadRenewal(stateDir)
	}
	if rec == nil {
		return nil
	}
	return &metrics.Renewal{HookPending: rec.HookPending, Failures: rec.Failures, Refusals: rec.Refusals, Unproven: rec.Unproven != ""}
}
