// Package metrics renders a finished provision run as node_exporter textfile
// metrics and writes them atomically, one file per command.
//
// Why the textfile collector: provision is a oneshot, not a server, and the
// node already runs node_exporter. A file per command
// (provision_bootstrap.prom, provision_verify.prom, provision_renew.prom)
// means one command's run never erases another's; every series carries the
// command label, because node_exporter merges the files and two files
// exposing the same series would fail the whole collector.
//
// The package renders from what the CLI already has (the final report.Report
// and the installed certificate's facts) and writes one file; it never
// prints and decides nothing about exit codes. Only internal/cli calls it,
// and a failed write is the caller's warning, never a failed run.
package metrics

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gpuaas/provision/internal/lifecycle"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"

	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/system"
)

// FileMode is the mode of a written file: node_exporter runs as its own user
// and must read it; it holds no secret.
const FileMode = 0o644

// Run is one finished run of a command, as its metrics describe it.
type Run struct {
	// Command names the run: "bootstrap", "verify", "renew". It is the
	// command label and the file name (provision_<command>.prom).
	Command string
	// Report is the run's final report, as printed.
	Report *report.Report
	// Finished is when the run ended; Duration how long it took.
	Finished time.Time
	Duration time.Duration
	// Cert is the installed certificate's facts after the run; nil when
	// there is none (a node that never enrolled).
	Cert *Cert
	// Version is provision's version, for provision_build_info.
	Version string
	// Renewal is what the renew record says after the run (bootstrap and
	// renew); nil writes no renewal series.
	Renewal *Renewal
}

// Renewal is what the metrics say about the renewal lifecycle, from the
// renew record: what must not be forgotten between runs.
type Renewal struct {
	HookPending bool // renew.post_hook has not succeeded since the credentials changed
	Failures    int  // renewal attempts in a row that did not end well
	Refusals    int  // 401/403 answers in a row without evidence of revocation
	Unproven    bool // the installed set was published without a passing proof (liveness rule)
}

// Cert is what the metrics say about the installed certificate.
type Cert struct {
	NotBefore, NotAfter time.Time
	// RootFingerprint is the hex SHA-256 of the DER of the root the
	// certificate chains to in the installed CA bundle; "" when none of the
	// bundle's roots issued the chain (then no root series is written).
	RootFingerprint string
	// RenewAfter is the credential verdict's renewal point (renew.fraction
	// of the lifetime) and DueAt that point plus this node's splay, when
	// provision renew acts; zero writes no series.
	RenewAfter, DueAt time.Time
}

// CertFacts derives Cert from an installed chain (leaf first) and CA bundle.
// The root is found by signature, not by verification at the current time,
// so an expired certificate still names the root it was issued under.
func CertFacts(chain, roots []*x509.Certificate) *Cert {
	if len(chain) == 0 || chain[0] == nil {
		return nil
	}
	c := &Cert{NotBefore: chain[0].NotBefore, NotAfter: chain[0].NotAfter}
	if r := lifecycle.IssuingRoot(chain, roots); r != nil {
		sum := sha256.Sum256(r.Raw)
		c.RootFingerprint = hex.EncodeToString(sum[:])
	}
	return c
}

// The check_status values, worst last, so max() over a node's checks is its
// worst evaluated state and "> 1" selects failures.
const (
	StatusSkip = -1 // not run: a check it depends on did not pass
	StatusPass = 0
	StatusWarn = 1
	StatusFail = 2
)

var statusValue = map[report.Status]float64{
	report.Skip: StatusSkip, report.Pass: StatusPass, report.Warn: StatusWarn, report.Fail: StatusFail,
}

// family is one metric: its name, help and type. The help text must be the
// same in every file (node_exporter merges the families of all files).
type family struct{ name, help string }

// The families, in the order they are written. Names lists them for the
// documentation test.
var families = []family{
	{"provision_build_info", "provision's version; always 1."},
	{"provision_last_run_timestamp_seconds", "Unix time the last run of the command ended."},
	{"provision_last_run_success", "1 if the last run of the command was ok (exit 0), else 0."},
	{"provision_run_duration_seconds", "Wall-clock duration of the last run of the command."},
	{"provision_failed", "1 for the layer and owner the last run of the command failed at; no series when it was ok."},
	{"provision_check_status", "Status of each check in the last run of the command: -1 skip, 0 pass, 1 warn, 2 fail."},
	{"provision_cert_not_before_timestamp_seconds", "Unix time the installed node certificate became valid (NotBefore), as seen after the run."},
	{"provision_cert_not_after_timestamp_seconds", "Unix time the installed node certificate expires (NotAfter), as seen after the run."},
	{"provision_cert_issuer_root_info", "The CA root the installed node certificate chains to (hex SHA-256 of its DER); always 1."},
	{"provision_cert_renew_after_timestamp_seconds", "Unix time the installed node certificate reaches its renewal point (renew.fraction of its lifetime), as seen after the run."},
	{"provision_cert_renew_due_timestamp_seconds", "Unix time provision renew renews the installed node certificate: its renewal point plus this node's splay."},
	{"provision_renew_hook_pending", "1 while renew.post_hook has not succeeded since the credentials last changed (every later run retries it), else 0."},
	{"provision_renew_consecutive_failures", "Renewal attempts in a row that did not end well (reset by a renewal or a not-due run)."},
	{"provision_renew_consecutive_refusals", "Renewals in a row the CA (or something in front of it) refused with 401/403, without evidence of revocation."},
	{"provision_renew_published_unproven", "1 when the installed credentials were published without a passing proof under the liveness rule (a fault both sets shared), else 0."},
}

// Names returns every metric name Render may write.
func Names() []string {
	out := make([]string, len(families))
	for i, f := range families {
		out[i] = f.name
	}
	return out
}

// commandPattern keeps a command usable as a file name and a label value.
var commandPattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`) })

// FileName is the file a command's metrics go to.
func FileName(command string) (string, error) {
	if !commandPattern().MatchString(command) {
		return "", fmt.Errorf("metrics: command %q is not a lower-case word usable as a file name", command)
	}
	return "provision_" + command + ".prom", nil
}

type series struct {
	labels [][2]string // sorted by name
	value  float64
}

func (s series) key() string {
	var b strings.Builder
	for _, l := range s.labels {
		b.WriteString(l[0] + "\x00" + l[1] + "\x00")
	}
	return b.String()
}

func labels(kv ...string) [][2]string {
	ls := make([][2]string, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		ls = append(ls, [2]string{kv[i], kv[i+1]})
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i][0] < ls[j][0] })
	return ls
}

// Render returns the run's metrics in the Prometheus text exposition format
// that node_exporter's textfile collector reads, written by the Prometheus
// project's own encoder (github.com/prometheus/common/expfmt): its escaping
// of label values and help texts and its number format are the ones
// node_exporter parses, not a copy of them. The families, their order and
// the one-series-per-label-set rule are provision's.
func Render(r Run) ([]byte, error) {
	if _, err := FileName(r.Command); err != nil {
		return nil, err
	}
	if r.Report == nil {
		return nil, errors.New("metrics: no report to render")
	}
	cmd := r.Command
	ok := 0.0
	if r.Report.OK {
		ok = 1
	}
	version := r.Version
	if version == "" {
		version = "unknown"
	}
	m := map[string][]series{
		"provision_build_info":                 {{labels("command", cmd, "version", version), 1}},
		"provision_last_run_timestamp_seconds": {{labels("command", cmd), seconds(r.Finished)}},
		"provision_last_run_success":           {{labels("command", cmd), ok}},
		"provision_run_duration_seconds":       {{labels("command", cmd), r.Duration.Seconds()}},
	}
	if !r.Report.OK {
		m["provision_failed"] = []series{{labels("command", cmd, "layer", string(r.Report.FailedLayer), "owner", string(r.Report.Owner)), 1}}
	}
	for _, c := range r.Report.Checks {
		v, known := statusValue[c.Status]
		if !known {
			continue
		}
		m["provision_check_status"] = append(m["provision_check_status"],
			series{labels("command", cmd, "check", c.Name, "layer", string(c.Layer), "owner", string(c.Owner)), v})
	}
	if r.Cert != nil && !r.Cert.NotAfter.IsZero() {
		m["provision_cert_not_after_timestamp_seconds"] = []series{{labels("command", cmd), seconds(r.Cert.NotAfter)}}
		if !r.Cert.NotBefore.IsZero() {
			m["provision_cert_not_before_timestamp_seconds"] = []series{{labels("command", cmd), seconds(r.Cert.NotBefore)}}
		}
		if !r.Cert.RenewAfter.IsZero() {
			m["provision_cert_renew_after_timestamp_seconds"] = []series{{labels("command", cmd), seconds(r.Cert.RenewAfter)}}
		}
		if !r.Cert.DueAt.IsZero() {
			m["provision_cert_renew_due_timestamp_seconds"] = []series{{labels("command", cmd), seconds(r.Cert.DueAt)}}
		}
		if r.Cert.RootFingerprint != "" {
			m["provision_cert_issuer_root_info"] = []series{{labels("command", cmd, "fingerprint", r.Cert.RootFingerprint), 1}}
		}
	}
	if rn := r.Renewal; rn != nil {
		m["provision_renew_hook_pending"] = []series{{labels("command", cmd), boolValue(rn.HookPending)}}
		m["provision_renew_consecutive_failures"] = []series{{labels("command", cmd), float64(rn.Failures)}}
		m["provision_renew_consecutive_refusals"] = []series{{labels("command", cmd), float64(rn.Refusals)}}
		m["provision_renew_published_unproven"] = []series{{labels("command", cmd), boolValue(rn.Unproven)}}
	}
	var b bytes.Buffer
	for _, f := range families {
		ss := dedupe(m[f.name])
		if len(ss) == 0 {
			continue
		}
		mf := &dto.MetricFamily{Name: proto.String(f.name), Help: proto.String(f.help), Type: dto.MetricType_GAUGE.Enum()}
		for _, s := range ss {
			mt := &dto.Metric{Gauge: &dto.Gauge{Value: proto.Float64(s.value)}}
			for _, l := range s.labels {
				mt.Label = append(mt.Label, &dto.LabelPair{Name: proto.String(l[0]), Value: proto.String(l[1])})
			}
			mf.Metric = append(mf.Metric, mt)
		}
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			return nil, fmt.Errorf("metrics: %s: %w", f.name, err)
		}
	}
	return b.Bytes(), nil
}

// dedupe keeps one series per label set (the worst value) in a stable
// order: a duplicate series makes node_exporter drop every textfile metric.
func dedupe(ss []series) []series {
	seen := map[string]int{}
	var out []series
	for _, s := range ss {
		if i, dup := seen[s.key()]; dup {
			out[i].value = max(out[i].value, s.value)
			continue
		}
		seen[s.key()] = len(out)
		out = append(out, s)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].key() < out[j].key() })
	return out
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func seconds(t time.Time) float64 {
	return float64(t.UnixMilli()) / 1000
}

// ErrNoDir says the textfile directory does not exist: node_exporter is not
// installed (or reads another directory). provision never creates it.
var ErrNoDir = errors.New("the textfile directory does not exist")

// Write renders r and replaces dir/provision_<command>.prom atomically: a
// temp file in dir (whose name does not end in .prom, so node_exporter never
// reads a partial file), fsync, rename, fsync of dir. dir is a node path on
// host, reached under the path rule (system.Host.Chase): node_exporter's
// user owns the directory on Debian, and a link it planted there is not
// followed unless root owns it in a directory only root can write; the
// write then goes through the directory opened, not its name. An existing
// symbolic link or other non-regular file at the file's path is refused,
// not followed. It returns the path written.
func Write(host *system.Host, dir string, r Run) (string, error) {
	name, err := FileName(r.Command)
	if err != nil {
		return "", err
	}
	// The directory first: where node_exporter is not installed nothing
	// is rendered for nobody.
	d, _, err := host.Chase(dir, system.ChaseOptions{Dir: true})
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("%s: %w", dir, ErrNoDir)
	case err != nil:
		return "", fmt.Errorf("metrics: %w", err)
	}
	defer d.Close()
	data, err := Render(r)
	if err != nil {
		return "", err
	}
	// A run killed between temp file and rename left renameio's
	// ".<name><digits>"; it is provision's own.
	d.SweepTemp(name)
	// Atomic, so node_exporter never reads half a file; not made durable:
	// after a power cut the previous file is as good, and the next run
	// rewrites it.
	if err := d.WriteAtomic(name, data, system.WriteOptions{Mode: FileMode, Replaceable: true}); err != nil {
		return "", err
	}
	return d.Join(name), nil
}

// Remove deletes the textfile metrics of commands from dir, a node path
// on host reached under the path rule as Write reaches it: provision revoke
// removes a decommissioned node's bootstrap, verify and renew files, which
// would otherwise go on reporting a certificate that is gone (and, past its
// renewal point, alert). Only a regular file at one of provision's names
// is removed; anything else there is left alone. It returns the names
// removed; a missing directory removes nothing.
func Remove(host *system.Host, dir string, commands ...string) ([]string, error) {
	d, _, err := host.Chase(dir, system.ChaseOptions{Dir: true})
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer d.Close()
	var removed []string
	for _, c := range commands {
		name, err := FileName(c)
		if err != nil {
			return removed, err
		}
		if st, err := d.Lstat(name); err != nil || !st.Mode().IsRegular() {
			continue
		}
		if err := d.Remove(name); err != nil {
			return removed, err
		}
		removed = append(removed, name)
	}
	return removed, d.Sync()
}
