// Package status is provision's offline inventory of a node, what `provision
// status` shows: the installed credentials with their times and modes, the
// root they chain to, the last renew attempt, a pending hook, the receipt,
// and where the metrics go. It reads files only: no network, no lock, no
// task taken off the queue (verify's proof is a real tasks/wait), so
// on-call can run it anywhere, any time, as certbot's `certificates` and
// kubeadm's `certs check-expiration` are run.
//
// The credentials are judged by the one verdict (observe.Env offline:
// against the installed ca.pem), so status, renew --check, verify and the
// metrics agree on the renewal point, the due time and what is wrong.
package status

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// State is the node's overall state, worst first. Its names are an
// interface (the JSON's "state").
type State string

// The states.
const (
	// Unusable: no usable identity now (not enrolled, unreadable, expired,
	// revoked, stale, another node's); the node cannot poll.
	Unusable State = "unusable"
	// Attention: a usable identity with something to act on (renewal due
	// or overdue, the last renewal failed, a hook pending, a key exposed,
	// credentials published without a passing proof, renewal not
	// scheduled).
	Attention State = "attention"
	// OK: a usable identity and nothing pending.
	OK State = "ok"
)

// Node is the inventory. Field names are an interface (README, `provision
// status --format json`).
type Node struct {
	NodeID      string       `json:"node_id"`
	State       State        `json:"state"`
	Summary     string       `json:"summary"`
	Attention   []string     `json:"attention"` // what to act on, one line each
	Remedy      string       `json:"remedy"`
	Credentials *Credentials `json:"credentials"`
	Key         Key          `json:"key"`
	Renew       *Renew       `json:"renew"`   // nil: renew never ran
	Receipt     *Receipt     `json:"receipt"` // nil: never done
	Metrics     Metrics      `json:"metrics"`
	// RenewTimer says whether renewal is scheduled (issue 30).
	RenewTimer Timer `json:"renew_timer"`
	// damage is the records of state_dir that do not parse or were kept
	// aside for that: each is on the attention list.
	damage []state.Damage

	// Revoked is what provision revoke did (state_dir/revoke.json); nil
	// when it never ran.
	Revoked *Revoked `json:"revoked"`
}

// Revoked is the revoke record, in short.
type Revoked struct {
	At       time.Time `json:"revoked_at"`
	Serials  []string  `json:"serials"`  // the certificates revoked at the CA (now or before)
	Complete bool      `json:"complete"` // the credentials and records were removed
}

// Timer is a systemd timer's enablement, from the node's files alone.
type Timer struct {
	Unit  string `json:"unit"`
	State string `json:"state"`          // enabled, disabled, masked, not-installed
	Path  string `json:"path,omitempty"` // the wants link, the mask or the unit file
}

// Credentials are the installed key, certificate and CA bundle.
type Credentials struct {
	PKIDir          string    `json:"pki_dir"`
	Present         bool      `json:"present"`
	Error           string    `json:"error,omitempty"` // why they could not be read
	Subject         string    `json:"subject,omitempty"`
	Serial          string    `json:"serial,omitempty"`
	Issuer          string    `json:"issuer,omitempty"`
	RootFingerprint string    `json:"root_fingerprint,omitempty"` // the ca.pem root it chains to
	RootSubject     string    `json:"root_subject,omitempty"`
	NotBefore       time.Time `json:"not_before,omitzero"`
	NotAfter        time.Time `json:"not_after,omitzero"`
	RenewAfter      time.Time `json:"renew_after,omitzero"` // the renewal point
	DueAt           time.Time `json:"due_at,omitzero"`      // the renewal point plus this node's splay
	ExpiresIn       string    `json:"expires_in,omitempty"` // Go duration, negative when expired
	KeyMode         string    `json:"key_mode,omitempty"`   // octal, e.g. "0600"
	DirMode         string    `json:"dir_mode,omitempty"`
	BundleRoots     int       `json:"bundle_roots"`
	Verdict         string    `json:"verdict"`           // keep, tighten, renew, re-enroll
	Reasons         []string  `json:"reasons,omitempty"` // the verdict's reasons

	// ExpiresInSeconds is ExpiresIn in whole seconds (negative when
	// expired), for a script that compares; nil without a certificate.
	ExpiresInSeconds *int64 `json:"expires_in_seconds,omitempty"`
	// KeyPath, CertPath and CAPath are the stable paths the node-agent
	// reads (links through pki_dir/current), as the node names them.
	KeyPath  string `json:"key_path"`
	CertPath string `json:"cert_path"`
	CAPath   string `json:"ca_path"`
	// CARoots are the roots in ca.pem with their own expiry, as kubeadm's
	// check-expiration lists the CAs: a root that expires ends every
	// certificate under it.
	CARoots []Root `json:"ca_roots"`
}

// Root is one root certificate of the installed CA bundle.
type Root struct {
	Subject          string    `json:"subject"`
	Fingerprint      string    `json:"fingerprint"` // hex SHA-256 of the DER
	NotBefore        time.Time `json:"not_before"`
	NotAfter         time.Time `json:"not_after"`
	ExpiresInSeconds int64     `json:"expires_in_seconds"`
	ChainsHere       bool      `json:"issued_certificate"` // the installed certificate chains to this root
}

// Key is the node's key store: where keys are made, where the installed
// one is, and whether it signed just now (in the TPM, for a TPM key).
type Key struct {
	Store     string `json:"store"`               // key.store: where new keys are made
	Installed string `json:"installed,omitempty"` // the installed key's store, file or tpm
	TPM       string `json:"tpm,omitempty"`       // key.tpm, when a TPM is involved
	TPMStatus string `json:"tpm_status,omitempty"`
	Signs     bool   `json:"signs"` // the installed key signed a test digest that verified
	Error     string `json:"error,omitempty"`
}

// Renew is the last renew attempt, from state_dir/renew.json.
type Renew struct {
	LastAttempt         time.Time `json:"last_attempt,omitzero"`
	LastResult          string    `json:"last_result"`
	LastError           string    `json:"last_error,omitempty"`
	FailedLayer         string    `json:"failed_layer,omitempty"`
	LastRenewed         time.Time `json:"last_renewed,omitzero"`
	HookPending         bool      `json:"hook_pending"`
	Hook                string    `json:"hook,omitempty"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	ConsecutiveRefusals int       `json:"consecutive_refusals"`
	Unproven            string    `json:"unproven,omitempty"`
	Aside               string    `json:"aside,omitempty"`
	RevokedSerial       string    `json:"revoked_serial,omitempty"`
}

// Receipt is the done receipt.
type Receipt struct {
	Serial    string    `json:"serial"`
	ProvedAt  time.Time `json:"proved_at"`
	Command   string    `json:"command,omitempty"`
	Enrolled  bool      `json:"enrolled"`
	Unproven  string    `json:"unproven,omitempty"`
	MachineID string    `json:"machine_id,omitempty"` // the install that proved it
}

// Metrics says where the textfile metrics go and which exist.
type Metrics struct {
	Enabled     bool     `json:"enabled"`
	TextfileDir string   `json:"textfile_dir"`
	Files       []string `json:"files"`
}

// Take reads the node's state from its files.
func Take(cfg *config.Config, host *system.Host) *Node {
	n := &Node{NodeID: cfg.NodeID, Attention: []string{}}
	e := observe.NewEnv(cfg, host)
	e.Offline = true
	v := e.Verdict(context.Background())
	n.Credentials = credentials(cfg, e, v, host.Time())
	n.Key = key(e)
	if rec := e.RenewRecord(); rec != nil {
		n.Renew = &Renew{LastAttempt: rec.LastAttempt, LastResult: rec.LastResult, LastError: rec.LastError, FailedLayer: rec.FailedLayer,
			LastRenewed: rec.LastRenewed, HookPending: rec.HookPending, Hook: rec.Hook, ConsecutiveFailures: rec.Failures,
			ConsecutiveRefusals: rec.Refusals, Unproven: rec.Unproven, Aside: rec.Aside, RevokedSerial: rec.RevokedSerial}
	}
	n.damage = state.FindDamage(host.Path(cfg.Paths.StateDir))
	if rc, err := state.ReadReceipt(host.Path(cfg.Paths.StateDir)); err == nil {
		n.Receipt = &Receipt{Serial: rc.Serial, ProvedAt: rc.ProvedAt, Command: rc.Command, Enrolled: rc.Enrolled, Unproven: rc.Unproven, MachineID: rc.MachineID}
	}
	n.Metrics = metricsFiles(cfg, host)
	st, at := observe.RenewTimer(host)
	n.RenewTimer = Timer{Unit: lifecycle.RenewTimer, State: string(st), Path: at}
	if rv := state.ReadRevocation(host.Path(cfg.Paths.StateDir)); rv != nil {
		n.Revoked = &Revoked{At: rv.At, Complete: rv.Complete, Serials: []string{}}
		for _, c := range rv.Certificates {
			if c.Result == state.RevokedNow || c.Result == state.RevokedBefore {
				n.Revoked.Serials = append(n.Revoked.Serials, c.Serial)
			}
		}
	}
	judge(n, v, cfg, host.Time(), func(add func(string, string)) { keyAttention(n, e, add) })
	return n
}

// key observes the key store (it signs once with the installed key).
func key(e *observe.Env) Key {
	k := e.Key()
	out := Key{Store: k.Store, Installed: k.Installed, Signs: k.Signed}
	if e.UsesTPM() {
		out.TPM = e.Cfg.Key.TPM
	}
	if k.TPM != nil {
		out.TPMStatus = k.TPM.String()
	}
	switch {
	case k.SignErr != nil:
		out.Error = k.SignErr.Error()
	case k.TPMErr != nil && (k.Store == config.KeyStoreTPM || k.Installed == config.KeyStoreTPM):
		out.Error = k.TPMErr.Error()
	}
	return out
}

// keyAttention adds what the key store says needs acting on: a key that
// does not sign (a lost one is the verdict's), a TPM new keys cannot be
// made in, a key not where key.store keeps keys.
func keyAttention(n *Node, e *observe.Env, add func(what, remedy string)) {
	k := e.Key()
	switch {
	case k.KeyLost():
	case k.SignErr != nil:
		f := diag.FromKeyStore(k.SignErr, "")
		add(f.Summary, f.Remedy)
	case k.TPMErr != nil && (k.Store == config.KeyStoreTPM || k.Installed == config.KeyStoreTPM):
		f := diag.FromKeyStore(k.TPMErr, "")
		add(f.Summary, f.Remedy)
	case k.Installed != "" && k.Installed != k.Store:
		add(fmt.Sprintf("the installed key is a %s key, but key.store is %q", k.Installed, k.Store),
			diag.RemedyKeyElsewhere)
	}
}

func credentials(cfg *config.Config, e *observe.Env, v lifecycle.Verdict, now time.Time) *Credentials {
	c := &Credentials{PKIDir: cfg.Paths.PKIDir, Verdict: v.Action.String(), CARoots: []Root{},
		KeyPath:  filepath.Join(cfg.Paths.PKIDir, credstore.KeyFile),
		CertPath: filepath.Join(cfg.Paths.PKIDir, credstore.CertFile),
		CAPath:   filepath.Join(cfg.Paths.PKIDir, credstore.CAFile)}
	for _, r := range v.Reasons {
		c.Reasons = append(c.Reasons, string(r))
	}
	set, err := e.Creds()
	if err != nil {
		if !errors.Is(err, credstore.ErrNotFound) {
			c.Error = err.Error()
		}
		return c
	}
	c.Present = true
	leaf := set.Leaf()
	c.Subject, c.Serial, c.Issuer = leaf.Subject.String(), leaf.SerialNumber.String(), leaf.Issuer.String()
	c.NotBefore, c.NotAfter = leaf.NotBefore.UTC(), leaf.NotAfter.UTC()
	c.RenewAfter, c.DueAt = v.Schedule.RenewAfter.UTC(), v.Schedule.DueAt.UTC()
	c.ExpiresIn = leaf.NotAfter.Sub(now).Round(time.Second).String()
	secs := secondsUntil(leaf.NotAfter, now)
	c.ExpiresInSeconds = &secs
	c.KeyMode, c.DirMode = fmt.Sprintf("%04o", set.KeyMode), fmt.Sprintf("%04o", set.DirMode)
	c.BundleRoots = len(set.Roots)
	root := lifecycle.IssuingRoot(set.Chain, set.Roots)
	if root != nil {
		c.RootFingerprint, c.RootSubject = enroll.Fingerprint(root), root.Subject.String()
	}
	for _, r := range set.Roots {
		c.CARoots = append(c.CARoots, Root{Subject: r.Subject.String(), Fingerprint: enroll.Fingerprint(r),
			NotBefore: r.NotBefore.UTC(), NotAfter: r.NotAfter.UTC(), ExpiresInSeconds: secondsUntil(r.NotAfter, now),
			ChainsHere: root != nil && r.Equal(root)})
	}
	return c
}

// secondsUntil is t - now in whole seconds (rounded), negative once passed.
func secondsUntil(t, now time.Time) int64 {
	return int64(t.Sub(now).Round(time.Second) / time.Second)
}

func metricsFiles(cfg *config.Config, host *system.Host) Metrics {
	m := Metrics{Enabled: cfg.Metrics.Enabled, TextfileDir: cfg.Metrics.TextfileDir, Files: []string{}}
	if !m.Enabled {
		return m
	}
	// Reached as the metrics writer reaches it: under the path rule.
	d, _, err := host.Chase(cfg.Metrics.TextfileDir, system.ChaseOptions{Dir: true})
	if err != nil {
		return m
	}
	defer d.Close()
	ents, _ := d.ReadDir()
	for _, e := range ents {
		if ok, _ := filepath.Match("provision_*.prom", e.Name()); ok && e.Type().IsRegular() {
			m.Files = append(m.Files, e.Name())
		}
	}
	sort.Strings(m.Files)
	return m
}

// judge sets the state, the summary, what needs attention and the remedy.
func judge(n *Node, v lifecycle.Verdict, cfg *config.Config, now time.Time, more func(add func(what, remedy string))) {
	if v.Action == lifecycle.Reenroll {
		r := v.First()
		n.State, n.Summary, n.Remedy = Unusable, "no usable identity: "+v.Detail[r], lifecycle.Remedy(r, cfg)
		if r == lifecycle.Missing {
			n.Summary = "not enrolled: " + v.Detail[r]
			if rv := n.Revoked; rv != nil && rv.Complete {
				n.Summary = fmt.Sprintf("not enrolled: taken out of service by provision revoke at %s (%d certificate(s) revoked at the CA, the credentials removed)", stamp(rv.At), len(rv.Serials))
			}
		}
		for _, d := range n.damage {
			n.Attention = append(n.Attention, d.String())
		}
		return
	}
	var remedies []string
	add := func(what, remedy string) {
		n.Attention = append(n.Attention, what)
		remedies = append(remedies, remedy)
	}
	for _, r := range v.Reasons {
		switch r {
		case lifecycle.KeyExposed, lifecycle.KeyWasExposed, lifecycle.DirOpen, lifecycle.KeyUnreachable, lifecycle.BundleStale:
			add(v.Detail[r], lifecycle.Remedy(r, cfg))
		}
	}
	if sch := v.Schedule; sch.Due(now) {
		add(fmt.Sprintf("renewal due since %s (expires %s)", stamp(sch.DueAt), stamp(sch.NotAfter)), lifecycle.Remedy(lifecycle.PastRenewal, cfg))
	}
	more(add)
	renewAttention(n, add)
	if n.RenewTimer.State != string(system.UnitEnabled) {
		add(fmt.Sprintf("renewal is not scheduled: %s is %s", n.RenewTimer.Unit, n.RenewTimer.State), lifecycle.Remedy(lifecycle.RenewUnscheduled, cfg))
	}
	for _, d := range n.damage {
		add(d.String(), d.Remedy())
	}
	if n.Receipt == nil {
		add("no receipt: no bootstrap has proven this node yet", "run provision bootstrap: it proves the installed credentials with a real tasks/wait and writes the receipt")
	}
	if len(n.Attention) == 0 {
		n.State = OK
		n.Summary = report.Healthy(v.Leaf.SerialNumber.String(), v.Leaf.NotAfter, v.Schedule.DueAt)
		return
	}
	n.State, n.Summary, n.Remedy = Attention, n.Attention[0], remedies[0]
	if len(n.Attention) > 1 {
		n.Summary += fmt.Sprintf(" (and %d more)", len(n.Attention)-1)
	}
}

// renewAttention adds what the renew record says needs acting on.
func renewAttention(n *Node, add func(what, remedy string)) {
	rn := n.Renew
	if rn == nil {
		return
	}
	if rn.HookPending {
		add("renew.post_hook is pending since the credentials changed: "+rn.Hook, "fix renew.post_hook (or what it reloads); every renew and bootstrap runs it again until it succeeds (docs/runbook.md, hook)")
	}
	switch rn.LastResult {
	case state.NotDue, state.Renewed, state.Refreshed, state.Enrolled, state.HookFailed, "":
	default:
		add(fmt.Sprintf("the last renew attempt (%s) ended %s: %s", stamp(rn.LastAttempt), rn.LastResult, rn.LastError),
			"fix the layer it names ("+rn.FailedLayer+"; docs/runbook.md), then run provision renew")
	}
	if rn.Unproven != "" {
		add("the installed credentials were published without a passing proof: "+rn.Unproven, "fix the node API or ingress fault; the next provision renew whose proof passes clears it")
	}
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// Usable says, offline, whether the node holds a usable identity (the one
// verdict, judged against the installed ca.pem as Take judges it):
// provision revoke ends it only when told to (--yes). what names it.
func Usable(cfg *config.Config, host *system.Host) (ok bool, what string) {
	e := observe.NewEnv(cfg, host)
	e.Offline = true
	v := e.Verdict(context.Background())
	if v.Action == lifecycle.Reenroll || v.Leaf == nil {
		return false, "no usable identity: " + v.Detail[v.First()]
	}
	return true, fmt.Sprintf("the node holds a usable identity: certificate serial %s, valid until %s", v.Leaf.SerialNumber, stamp(v.Leaf.NotAfter))
}
