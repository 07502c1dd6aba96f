package cli

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/metrics"
	"github.com/gpuaas/provision/internal/report"
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

// finish ends a bootstrap, verify or renew run whose config loaded: it prints the
// report, writes the command's metrics and logs the one line that closes
// the run (with its exit code). It returns the exit code. A metrics write
// that fails is a warning, never a different exit code.
func finish(env *runEnv, f *flags, cfg *config.Config, host *system.Host, log *slog.Logger, r *report.Report) int {
	r, code := outcome(env, r)
	renderReport(env, f, r, code)
	writeMetrics(env, cfg, host, log, r)
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
func writeMetrics(env *runEnv, cfg *config.Config, host *system.Host, log *slog.Logger, r *report.Report) {
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
		if set, err := credstore.Load(host.Path(cfg.Paths.PKIDir)); err == nil {
			cert = metrics.CertFacts(set.Chain, set.Roots)
			if cert != nil {
				// The renewal point and due time are the one verdict's,
				// the same renew acts on (the chain is not judged here:
				// the timing does not depend on it).
				v := lifecycle.Judge(lifecycle.Input{Set: set, NodeID: cfg.NodeID, Now: host.Time(), RenewFraction: cfg.Renew.Fraction})
				cert.RenewAfter, cert.DueAt = v.RenewAfter, v.DueAt(cfg.Renew.Splay.Duration)
			}
		}
	}
	run := metrics.Run{Command: r.Command, Report: r, Finished: time.Now(), Duration: time.Since(env.start), Cert: cert, Version: Version()}
	path, err := metrics.Write(host.ResolvedPath(dir), run)
	switch {
	case err == nil:
		log.Debug("metrics written", "path", strings.TrimPrefix(path, strings.TrimSuffix(host.Path("/"), "/")))
	case errors.Is(err, metrics.ErrNoDir) && dir == config.DefaultTextfileDir:
		log.Debug("metrics not written: node_exporter's textfile directory does not exist", "dir", dir)
	default:
		log.Warn("metrics not written; the run's result stands", "dir", dir, "error", err.Error())
	}
}

// metricsForConfigFailure writes the metrics of a run stopped by its config
// (see writeMetrics) with a logger that knows no node_id.
func metricsForConfigFailure(env *runEnv, f *flags, host *system.Host, r *report.Report) {
	if !metricsCommands[r.Command] {
		return
	}
	r, _ = outcome(env, r)
	writeMetrics(env, nil, host, f.logger(env.stderr, ""), r)
}
