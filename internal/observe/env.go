// Package observe is what a run has seen: the config and host it runs on,
// the credentials on disk, the CA's roots (fetched once, pinned), the renew
// record, the one credential verdict over them, and the one tasks/wait probe
// with its classification. Every observation is made at most once per Env
// and cached, so every step and check of a run interprets the same evidence;
// an observation of another set (a generation left aside, a proof attempt)
// is an Env of its own derived by ForSet, sharing the answers that do not
// depend on the set (the CA's roots, the renew record, the exposure
// record), so a run asks each of those once.
//
// Why a package of its own: the observation cache used to live in verify,
// which made the diagnosis ladder the hub every command imported. Here it
// knows nothing of checks, reports or wording; verify reads it, bootstrap
// and renew act on it.
//
// An observation carries its time. What is cached here is judged against
// the clock of the moment it was made, never against the clock of a later
// one: a run may outlive its observations by minutes (a proof retried
// through a long API outage, a slow CA, a loaded machine), and comparing an
// old reading with the clock now would turn its age into a fault. So the
// CA's clock is kept as its Date header together with the node clock at the
// instant that answer arrived (enroll.Roots.ServerDate and DateAt), and the
// offset between the two is the skew, whenever it is judged. And only an
// answer that came over a connection authenticated by the pinned root or
// the roots the node holds is a reading of the CA's clock: the unverified
// pinned-root fetch, or anything else answering on the CA's address,
// says nothing about it (a forged Date on a 503 is not skew).
package observe

import (
	"context"
	"crypto/x509"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// Env is what the steps and checks of one run share. Expensive observations (the
// CA's roots, the credentials on disk, the probe) are made once and cached,
// so each check interprets the same evidence.
//
// An Env observes one set of credentials (CredsDir) and makes one probe
// with it. What a run learns once whatever set it looks at (the CA's roots,
// the renew record, whether the key was recorded exposed) is shared by
// every Env ForSet derives from it: a set aside, or a proof attempt, is an
// observation of its own, appended to the run's, that never reads those
// again.
type Env struct {
	Cfg     *config.Config
	Host    *system.Host
	Timeout time.Duration // per network operation
	// CredsDir, when set, is the host path of a generation directory whose
	// set is judged and proven instead of pki_dir's current one: a renewed
	// or enrolled set is proven before it is published.
	CredsDir string
	// Bundle, when set, stands in for the set's ca.pem: the set is judged
	// and proven with these roots, as a refresh would publish it (the CA's
	// current and federated roots). The liveness comparison proves the
	// installed key and certificate so: a ca.pem gone stale while the node
	// was off (the ingress's certificate moved to a root it lacks) says
	// nothing against them, and must not make them look rejected.
	Bundle []*x509.Certificate
	// Offline judges without the network: the CA's roots are taken to be
	// the installed ca.pem (the roots the last run fetched, authenticated,
	// and proved with this very certificate), and the CA's clock is unknown.
	// renew --check, status and the metrics judge so.
	Offline bool
	// RootsGiven: the CA's roots are handed in (SetRoots, or RootsFailed)
	// by the step that fetched them with its own retries; asked for before
	// that, they are unknown, and never fetched here. bootstrap and renew
	// observe so: one fetch a run, the roots step's.
	RootsGiven bool

	run *shared // the answers shared with every Env derived by ForSet

	credsOnce sync.Once
	creds     *credstore.Set
	credsErr  error

	chainOnce sync.Once
	chain     diag.ChainState
	chainErr  error

	probeOnce sync.Once
	probe     *probe.Result

	proofOnce sync.Once
	proof     diag.Proof

	verdictOnce sync.Once
	verdict     lifecycle.Verdict
	judged      bool

	keyOnce sync.Once
	key     KeyState
}

// shared are the answers of a run that do not depend on the set observed.
type shared struct {
	rootsOnce sync.Once
	roots     *enroll.Roots
	rootsErr  error

	recordOnce sync.Once
	record     *state.Renewal

	exposedOnce sync.Once
	exposed     bool
}

// NewEnv returns an Env for cfg on host.
func NewEnv(cfg *config.Config, host *system.Host) *Env {
	return &Env{Cfg: cfg, Host: host, Timeout: cfg.Bootstrap.RequestTimeout.Duration, run: &shared{}}
}

// ForSet is a new observation of the set in dir (a generation directory's
// host path; "" for the installed one), with a probe of its own, sharing
// e's answers that do not depend on the set: the CA's roots, the renew
// record, the exposure record.
func (e *Env) ForSet(dir string) *Env {
	return &Env{Cfg: e.Cfg, Host: e.Host, Timeout: e.Timeout, CredsDir: dir, Offline: e.Offline, RootsGiven: e.RootsGiven, run: e.run}
}

// CAClient returns the step-ca client for the configured CA.
func (e *Env) CAClient(retries int) *enroll.Client {
	u, _ := url.Parse(e.Cfg.CA.URL)
	c := &enroll.Client{
		URL: u, Fingerprint: e.Cfg.CA.Fingerprint, Dial: e.Host.DialContext,
		Timeout: e.Timeout, Retries: retries, Policy: retry.Default, Now: e.Host.Time,
		NewKey: NewKey(e.Cfg, e.Host),
	}
	// The roots in ca.pem were fetched authenticated: after a rotation that
	// retired the pinned root, they still vouch for the CA.
	if creds, err := e.Creds(); err == nil {
		c.Known = creds.Roots
	}
	return c
}

// SetRoots hands the env roots fetched elsewhere (the roots step fetched
// them, with its retries).
func (e *Env) SetRoots(r *enroll.Roots) {
	e.run.rootsOnce.Do(func() { e.run.roots = r })
}

// RootsFailed hands the env the failure of the fetch made elsewhere: the
// roots are unknown to this run, and nothing asks the CA again.
func (e *Env) RootsFailed(err error) {
	e.run.rootsOnce.Do(func() { e.run.rootsErr = err })
}

// errRootsNotGiven is the roots of a run that stopped before its roots
// step.
var errRootsNotGiven = errors.New("the CA's roots were not fetched: the run stopped before it asked the CA")

// Roots fetches the CA's current roots once, without retries: verify must
// diagnose a dead CA in seconds. Offline, they are the installed ca.pem's;
// with RootsGiven, what the roots step handed in.
func (e *Env) Roots(ctx context.Context) (*enroll.Roots, error) {
	e.run.rootsOnce.Do(func() {
		switch {
		case e.Offline:
			e.run.roots, e.run.rootsErr = e.installedRoots()
		case e.RootsGiven:
			e.run.rootsErr = errRootsNotGiven
		default:
			e.run.roots, e.run.rootsErr = e.CAClient(0).FetchRoots(ctx)
		}
	})
	return e.run.roots, e.run.rootsErr
}

func (e *Env) installedRoots() (*enroll.Roots, error) {
	creds, err := e.Creds()
	if err != nil {
		return nil, err
	}
	if len(creds.Roots) == 0 {
		return nil, errors.New("ca.pem holds no root")
	}
	return &enroll.Roots{Current: creds.Roots}, nil
}

// Creds loads the installed credentials once.
func (e *Env) Creds() (*credstore.Set, error) {
	e.credsOnce.Do(func() {
		dir := e.Host.Path(e.Cfg.Paths.PKIDir)
		if e.CredsDir != "" {
			dir = e.CredsDir
		}
		e.creds, e.credsErr = credstore.Load(dir, KeyOptions(e.Cfg, e.Host)...)
		if e.credsErr == nil && e.Bundle != nil {
			s := *e.creds
			s.Roots = e.Bundle
			e.creds = &s
		}
	})
	return e.creds, e.credsErr
}

// Chain says, from the one verdict, whether the node certificate chains to
// the CA's current roots: who owns a client-certificate rejection depends on
// it.
func (e *Env) Chain(ctx context.Context) (diag.ChainState, error) {
	e.chainOnce.Do(func() {
		if _, err := e.Creds(); err != nil {
			e.chain, e.chainErr = diag.ChainUnknown, err
			return
		}
		v := e.Verdict(ctx)
		switch {
		case v.Has(lifecycle.RootsUnknown):
			_, err := e.Roots(ctx)
			e.chain, e.chainErr = diag.ChainUnknown, errors.Join(errors.New("CA roots unavailable"), err)
		case v.Has(lifecycle.OtherCA):
			e.chain, e.chainErr = diag.ChainStale, v.ChainErr
		case v.BundleUseless:
			// A ca.pem without any current root is stale material too: a
			// server certificate it cannot verify is the node's to fix.
			e.chain, e.chainErr = diag.ChainStale, errors.New(v.Detail[lifecycle.BundleStale])
		default:
			e.chain = diag.ChainCurrent
		}
	})
	return e.chain, e.chainErr
}

// Probe makes the tasks/wait request once, with the credentials read back
// from disk (not from memory): the node-agent will read the same files.
func (e *Env) Probe(ctx context.Context) *probe.Result {
	e.probeOnce.Do(func() {
		req := probe.Request{
			URL: e.Cfg.WaitURL(), Dial: e.Host.DialContext, Timeout: e.Timeout,
			Wait: e.Cfg.NodeAPI.WaitTimeout.Duration, Now: e.Host.Time,
		}
		if creds, err := e.Creds(); err == nil {
			cert := creds.TLSCertificate()
			req.Cert = &cert
			req.Roots = creds.RootPool()
		} else if roots, err := e.Roots(ctx); err == nil {
			req.Roots = roots.Pool()
		} else {
			req.Roots = x509.NewCertPool() // nothing to trust: tls-server will say so
		}
		e.probe = probe.Do(ctx, req)
	})
	return e.probe
}

// Proof classifies the probe once, with the chain state deciding who owns a
// client-certificate rejection.
func (e *Env) Proof(ctx context.Context) diag.Proof {
	e.proofOnce.Do(func() {
		res := e.Probe(ctx)
		chain, _ := e.Chain(ctx)
		e.proof = diag.Classify(res, chain)
	})
	return e.proof
}

// Probed returns the probe's result if a check made it, without making it:
// after a run, the caller must hand off a task the probe received.
func (e *Env) Probed() *probe.Result {
	return e.probe
}

// Access is who may read the private key (paths.key_group), resolved on
// the host; the default when none is set or it cannot be resolved (cli
// refuses such a config before any run).
func Access(cfg *config.Config, host *system.Host) credstore.Access {
	if cfg.Paths.KeyGroup == "" {
		return credstore.RootOnly
	}
	gid, err := host.LookupGroup(cfg.Paths.KeyGroup)
	if err != nil {
		return credstore.RootOnly
	}
	return credstore.Access{Group: true, GID: gid, Name: cfg.Paths.KeyGroup}
}

// Verdict judges the credentials once: the one place that gathers
// lifecycle.Judge's input (the set on disk with its modes, the CA's current
// and federated roots and its clock when they can be fetched, the exposure
// bootstrap recorded, the revocation the renew record holds evidence of).
func (e *Env) Verdict(ctx context.Context) lifecycle.Verdict {
	e.verdictOnce.Do(func() {
		set, err := e.Creds()
		a := Access(e.Cfg, e.Host)
		in := lifecycle.Input{Set: set, LoadErr: err, NodeID: e.Cfg.NodeID, Now: e.Host.Time(),
			Exposed: e.Exposed(), RenewFraction: e.Cfg.Renew.Fraction, Splay: e.Cfg.Renew.Splay.Duration, Access: a}
		if err == nil && e.CredsDir == "" {
			// The installed set, as the node-agent opens it: by the
			// stable names, walked as a member of its group.
			pki := e.Cfg.Paths.PKIDir
			in.Unreachable = a.Reach(e.Host.Root, filepath.Join(pki, credstore.KeyFile), filepath.Join(pki, credstore.CertFile), filepath.Join(pki, credstore.CAFile))
		}
		if k := e.Key(); k.KeyLost() {
			in.KeyLost = k.SignErr.Error()
		}
		if rec := e.RenewRecord(); rec != nil {
			in.RevokedSerial = rec.RevokedSerial
			if e.Offline {
				in.StaleSerial = rec.StaleSerial
			}
		}
		if roots, rerr := e.Roots(ctx); rerr == nil && roots != nil && len(roots.Current) > 0 {
			in.Roots, in.Federated, in.CADate, in.CADateAt = roots.Current, roots.Federated, roots.ServerDate, roots.DateAt
		}
		e.verdict, e.judged = lifecycle.Judge(in), true
	})
	return e.verdict
}

// Judged is the verdict if this observation was judged, without judging
// it: what a run saw, for those who must not look again. Call it once the
// checks that judge are done (it does not wait for one judging now).
func (e *Env) Judged() (lifecycle.Verdict, bool) {
	return e.verdict, e.judged
}

// RenewRecord reads state_dir/renew.json once a run; nil when there is
// none.
func (e *Env) RenewRecord() *state.Renewal {
	e.run.recordOnce.Do(func() { e.run.record = state.ReadRenewal(e.Host.Path(e.Cfg.Paths.StateDir)) })
	return e.run.record
}

// UseRecord hands the env the renew record the run read (nil: none), so
// that it is read once a run.
func (e *Env) UseRecord(rec *state.Renewal) {
	e.run.recordOnce.Do(func() { e.run.record = rec })
}

// Exposed reports, once a run, whether state_dir records the installed key
// as having been readable by others.
func (e *Env) Exposed() bool {
	e.run.exposedOnce.Do(func() {
		e.run.exposed = fileExists(e.Host.Path(filepath.Join(e.Cfg.Paths.StateDir, lifecycle.ExposedFile)))
	})
	return e.run.exposed
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// RenewTimer is whether renewal is scheduled on the node: the state of
// lifecycle.RenewTimer (enabled, disabled, masked, not-installed) and the
// file that says so, read offline from the timers.target.wants link under
// --root. status shows it and verify warns when it is not enabled: step-ca
// certificates can live a day, and a node whose timer is off lapses in one.
func RenewTimer(host *system.Host) (system.UnitState, string) {
	return host.UnitEnablement(lifecycle.RenewTimer, "timers.target")
}
