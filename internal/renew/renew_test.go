package renew_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/bootstrap"
	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/renew"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/internal/verify"
	"github.com/gpuaas/provision/tests/controlplane"
)

const nodeID = "gpu-0042"

type node struct {
	cp    *controlplane.ControlPlane
	files controlplane.NodeFiles
	cfg   *config.Config
	host  *system.Host
}

var fast = retry.Policy{Base: time.Millisecond, Cap: 20 * time.Millisecond}

// bootstrapped starts a control plane with certificates of lifetime and a
// node bootstrapped against it.
func bootstrapped(t *testing.T, opts controlplane.Options) *node {
	t.Helper()
	t.Setenv("STEPPATH", t.TempDir())
	cp := controlplane.Start(t, opts)
	root := t.TempDir()
	nf, err := cp.PrepareNode(root, nodeID)
	if err != nil {
		t.Fatal(err)
	}
	cfg, host := controlplane.LoadNode(t, nf)
	n := &node{cp: cp, files: nf, cfg: cfg, host: host}
	out := bootstrap.Run(context.Background(), cfg, host, pipeline.Options{Ladder: verify.Ladder, Policy: fast})
	if !out.Report.OK || !out.Enrolled {
		t.Fatalf("bootstrap: %s", out.Report.Summary)
	}
	return n
}

func (n *node) renew(t *testing.T, force bool) *pipeline.Outcome {
	t.Helper()
	return renew.Run(context.Background(), n.cfg, n.host, pipeline.Options{Ladder: verify.Ladder, Policy: fast, Force: force})
}

func (n *node) current(t *testing.T) *credstore.Set {
	t.Helper()
	s, err := credstore.Load(n.files.PKIDir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func serial(s *credstore.Set) string { return s.Leaf().SerialNumber.String() }

// agent is a simulated node-agent: it long-polls tasks/wait with the
// stable key.pem/cert.pem/ca.pem links, reading them afresh for every
// connection, as the real one does after a reload.
func (n *node) agent(t *testing.T, stop <-chan struct{}, polls, failures *atomic.Int64, errs chan<- string) {
	u, _ := url.Parse(n.cfg.WaitURL())
	for {
		select {
		case <-stop:
			return
		default:
		}
		cert, err := tls.LoadX509KeyPair(filepath.Join(n.files.PKIDir, credstore.CertFile), filepath.Join(n.files.PKIDir, credstore.KeyFile))
		if err != nil {
			failures.Add(1)
			errs <- "key pair: " + err.Error()
			continue
		}
		caPEM, err := os.ReadFile(filepath.Join(n.files.PKIDir, credstore.CAFile))
		pool := x509.NewCertPool()
		if err != nil || !pool.AppendCertsFromPEM(caPEM) {
			failures.Add(1)
			errs <- "ca.pem unreadable"
			continue
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext:       n.host.DialContext,
			TLSClientConfig:   &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: u.Hostname()},
			DisableKeepAlives: true,
		}}
		resp, err := c.Get(u.String())
		if err != nil {
			failures.Add(1)
			errs <- "poll: " + err.Error()
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != 200 && resp.StatusCode != 204 {
			failures.Add(1)
			errs <- "poll: " + resp.Status
			continue
		}
		polls.Add(1)
	}
}

// TestRenewForSeveralLifetimes: with 8-second certificates, a node renews
// on its own for several lifetimes while a node-agent polls with the stable
// links; the agent never sees a failure or a mismatched pair, and every
// renewal gets a new key.
func TestRenewForSeveralLifetimes(t *testing.T) {
	const life = 8 * time.Second
	n := bootstrapped(t, controlplane.Options{CALifetime: life})
	// Due at half the lifetime, no splay: 4s of slack for a renewal on a
	// loaded CI machine under -race (the default 2/3 plus splay left about
	// one second with certificates this short, and a slow run let one expire).
	n.cfg.Renew.Fraction, n.cfg.Renew.Splay.Duration = 0.5, 0
	var polls, failures atomic.Int64
	errs := make(chan string, 1000)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); n.agent(t, stop, &polls, &failures, errs) }()

	first := n.current(t)
	serials := map[string]bool{serial(first): true}
	keys := map[string]bool{}
	end := time.Now().Add(3*life + life/2)
	renewals := 0
	for time.Now().Before(end) {
		out := n.renew(t, false)
		if !out.Report.OK {
			t.Fatalf("renew: %s (layer %s)", out.Report.Summary, out.Report.FailedLayer)
		}
		if out.Renewed {
			renewals++
			cur := n.current(t)
			if serials[serial(cur)] {
				t.Fatalf("renewal %d published an old serial %s", renewals, serial(cur))
			}
			serials[serial(cur)] = true
			pub, _ := x509.MarshalPKIXPublicKey(cur.Key.Public())
			if keys[string(pub)] {
				t.Fatalf("renewal %d kept the key, want a new key (renew.rekey default)", renewals)
			}
			keys[string(pub)] = true
			if out.Record.LastResult != state.Renewed || out.Record.Serial != serial(cur) {
				t.Fatalf("record %+v", out.Record)
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("node-agent: %s", e)
	}
	if renewals < 3 || failures.Load() != 0 || polls.Load() == 0 {
		t.Fatalf("renewals %d, agent polls %d, failures %d; want >= 3 renewals and no failure", renewals, polls.Load(), failures.Load())
	}
	t.Logf("%d renewals in %s, node-agent polled %d times without a failure", renewals, 3*life+life/2, polls.Load())
}

// TestRenewNotDueIsQuick: a fresh certificate is not due; renew says so,
// changes nothing, and --check agrees.
func TestRenewNotDueIsQuick(t *testing.T) {
	n := bootstrapped(t, controlplane.Options{})
	before := n.current(t)
	out := n.renew(t, false)
	if !out.Report.OK || out.Renewed || !strings.HasPrefix(out.Report.Summary, "not due") {
		t.Fatalf("renew: ok=%v renewed=%v %s", out.Report.OK, out.Renewed, out.Report.Summary)
	}
	if serial(n.current(t)) != serial(before) {
		t.Fatal("a renew that was not due changed the certificate")
	}
	if d, msg := renew.Check(n.cfg, n.host, false); d != renew.NotDue {
		t.Fatalf("Check = %v %s, want NotDue", d, msg.Summary)
	}
	if d, _ := renew.Check(n.cfg, n.host, true); d != renew.Due {
		t.Fatalf("Check --force = %v, want Due", d)
	}
}

// TestRenewRejectedByIngressKeepsOldSet: during a root rotation the ingress
// still trusts only the old root; the renewed certificate (under the new
// root) fails its proof at tls-client-auth, the old set stays current and
// keeps polling, and the unproven set is kept aside.
func TestRenewRejectedByIngressKeepsOldSet(t *testing.T) {
	n := bootstrapped(t, controlplane.Options{})
	if err := n.cp.AddCARoot(); err != nil {
		t.Fatal(err)
	}
	if out := n.renew(t, false); !out.Report.OK || out.Record.LastResult != state.Refreshed {
		t.Fatalf("renew after a root was added: %s (%+v)", out.Report.Summary, out.Record)
	}
	before := n.current(t)
	if err := n.cp.SwitchCARoot(); err != nil {
		t.Fatal(err)
	}
	n.cp.SetClientCAMode(controlplane.ClientCARetired)
	out := n.renew(t, true)
	if out.Report.OK || out.Report.FailedLayer != diag.TLSClientAuth {
		t.Fatalf("renew: ok=%v layer %s: %s", out.Report.OK, out.Report.FailedLayer, out.Report.Summary)
	}
	if !strings.Contains(out.Report.Summary, "stays current") || out.Record.LastResult != state.Failed {
		t.Fatalf("summary %q, record %+v", out.Report.Summary, out.Record)
	}
	if serial(n.current(t)) != serial(before) {
		t.Fatal("the rejected certificate was published")
	}
	if _, err := os.Stat(filepath.Join(n.files.PKIDir, out.Record.Generation)); err != nil {
		t.Fatalf("the unproven set was not kept aside: %v", err)
	}
	// The old set still polls: verify is healthy.
	e := observe.NewEnv(n.cfg, n.host)
	if rep := report.New("verify", nodeID, verify.Run(context.Background(), e, verify.Checks(), nil), 0); !rep.OK {
		t.Fatalf("verify after the rejected renewal: %s", rep.Summary)
	}
}

// TestRenewCannotRenew: expired, stale and revoked certificates each stop
// at once with their own message and layer (exit code), saying that
// re-enrollment with a fresh token is needed.
func TestRenewCannotRenew(t *testing.T) {
	t.Run("expired", func(t *testing.T) {
		n := bootstrapped(t, controlplane.Options{CALifetime: 3 * time.Second})
		time.Sleep(4 * time.Second)
		out := n.renew(t, true)
		wantStop(t, out, diag.Credentials, "certificate expired")
		// Offline, expiry alone is due: the run renews after expiry where
		// the CA allows it, and says so where it does not.
		if d, _ := renew.Check(n.cfg, n.host, false); d != renew.Due {
			t.Fatalf("Check = %v, want Due", d)
		}
	})
	t.Run("stale", func(t *testing.T) {
		n := bootstrapped(t, controlplane.Options{})
		l, err := n.cp.IssueStaleCert(nodeID)
		if err != nil {
			t.Fatal(err)
		}
		os.RemoveAll(n.files.PKIDir)
		if err := controlplane.WriteNodeCredentials(n.files.Root, n.cfg.Paths.PKIDir, l, n.cp.CA.RootPEM()); err != nil {
			t.Fatal(err)
		}
		wantDryStop(t, n, true, diag.CA, "certificate stale")
		wantStop(t, n.renew(t, true), diag.CA, "certificate stale")
		// Offline, --check judges the chain against the installed ca.pem.
		if d, f := renew.Check(n.cfg, n.host, true); d != renew.CannotRenew || !strings.HasPrefix(f.Summary, "certificate stale:") {
			t.Fatalf("Check = %v %q, want CannotRenew, stale (even with --force)", d, f.Summary)
		}
	})
	t.Run("revoked", func(t *testing.T) {
		// Revoked is recorded only from evidence: the CA's signed CRL.
		n := bootstrapped(t, controlplane.Options{CARevocation: true, CACRL: true})
		cur := n.current(t)
		revokeAtCA(t, n, cur)
		wantStop(t, n.renew(t, true), diag.Enroll, "certificate revoked")
		if rec := state.ReadRenewal(n.files.StateDir); rec == nil || rec.RevokedSerial != serial(cur) {
			t.Fatalf("record %+v, want revoked_serial %s", rec, serial(cur))
		}
		// The next run knows without asking the CA, and verify says so.
		wantStop(t, n.renew(t, false), diag.Enroll, "certificate revoked")
		wantDryStop(t, n, false, diag.Enroll, "certificate revoked")
		e := observe.NewEnv(n.cfg, n.host)
		rep := report.New("verify", nodeID, verify.Run(context.Background(), e, verify.Checks(), nil), 0)
		if rep.OK || rep.FailedLayer != diag.Credentials || !strings.Contains(rep.Summary, "revoked") || !strings.Contains(rep.Remedy, "re-enroll") {
			t.Fatalf("verify: %s / %s", rep.Summary, rep.Remedy)
		}
	})
	t.Run("revoked, but the CA serves no CRL: a refusal, asked again, never revoked", func(t *testing.T) {
		n := bootstrapped(t, controlplane.Options{CARevocation: true})
		cur := n.current(t)
		revokeAtCA(t, n, cur)
		for i := 1; i <= 2; i++ {
			out := n.renew(t, true)
			if out.Report.OK || out.Report.FailedLayer != diag.CA || !out.Report.Transient || !strings.Contains(out.Report.Summary, "not recorded as revoked") {
				t.Fatalf("run %d: ok=%v layer %s transient=%v: %s", i, out.Report.OK, out.Report.FailedLayer, out.Report.Transient, out.Report.Summary)
			}
			rec := state.ReadRenewal(n.files.StateDir)
			if rec.RevokedSerial != "" || rec.LastResult != state.Refused || rec.Refusals != i {
				t.Fatalf("run %d: record %+v, want refused %d in a row and no revoked_serial", i, rec, i)
			}
		}
		if d, f := renew.Check(n.cfg, n.host, false); d == renew.CannotRenew {
			t.Fatalf("--check after refusals: %s; a refusal must not become permanent", f.Summary)
		}
	})
}

func wantStop(t *testing.T, out *pipeline.Outcome, layer diag.Layer, prefix string) {
	t.Helper()
	wantStopReport(t, out.Report, layer, prefix)
	if out.Renewed {
		t.Fatal("renew renewed")
	}
}

// wantDryStop: renew --dry-run (with --force or not) stops where the run
// stops, and calls it cannot-renew.
func wantDryStop(t *testing.T, n *node, force bool, layer diag.Layer, prefix string) {
	t.Helper()
	p := renew.DryRun(context.Background(), n.cfg, n.host, pipeline.Options{Ladder: verify.Ladder, Policy: fast, Force: force})
	wantStopReport(t, p.Report, layer, prefix)
	if p.Plan != "cannot-renew" {
		t.Fatalf("dry run plan %q, want cannot-renew", p.Plan)
	}
}

func wantStopReport(t *testing.T, r *report.Report, layer diag.Layer, prefix string) {
	t.Helper()
	if r.OK || r.FailedLayer != layer || !strings.HasPrefix(r.Summary, prefix) ||
		!strings.Contains(r.Summary, "re-enrollment with a fresh one-time token is needed (provision bootstrap)") {
		t.Fatalf("renew: ok=%v layer %s summary %q; want layer %s, %q", r.OK, r.FailedLayer, r.Summary, layer, prefix)
	}
}

func caClient(n *node) *enroll.Client {
	u, _ := url.Parse(n.cp.CA.URL())
	return &enroll.Client{URL: u, Fingerprint: n.cp.CA.Fingerprint(), Dial: n.cp.CA.DialContext, Timeout: 5 * time.Second}
}

func revokeAtCA(t *testing.T, n *node, s *credstore.Set) {
	t.Helper()
	c := caClient(n)
	roots, err := c.FetchRoots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Revoke(context.Background(), s.TLSCertificate(), roots, "test"); err != nil {
		t.Fatalf("revoke: %v", err)
	}
}

// TestRootRotation: the CA gains a second root, then drops the first; renew
// moves the node onto the new root and ca.pem follows, and bootstrap and
// verify stay healthy at every phase, without manual steps.
func TestRootRotation(t *testing.T) {
	n := bootstrapped(t, controlplane.Options{})
	healthy := func(phase string) *report.Report {
		t.Helper()
		e := observe.NewEnv(n.cfg, n.host)
		rep := report.New("verify", nodeID, verify.Run(context.Background(), e, verify.Checks(), nil), 0)
		if !rep.OK {
			t.Fatalf("%s: verify: %s (%s)", phase, rep.Summary, rep.FailedLayer)
		}
		if out := bootstrap.Run(context.Background(), n.cfg, n.host, pipeline.Options{Ladder: verify.Ladder, Policy: fast}); !out.Report.OK || out.Enrolled {
			t.Fatalf("%s: bootstrap: ok=%v enrolled=%v %s", phase, out.Report.OK, out.Enrolled, out.Report.Summary)
		}
		return rep
	}
	if err := n.cp.AddCARoot(); err != nil {
		t.Fatal(err)
	}
	if out := n.renew(t, false); !out.Report.OK || out.Record.LastResult != state.Refreshed {
		t.Fatalf("renew after a root was added: %s (%+v)", out.Report.Summary, out.Record)
	}
	healthy("second root added")
	if err := n.cp.SwitchCARoot(); err != nil {
		t.Fatal(err)
	}
	healthy("new root issues")
	if out := n.renew(t, true); !out.Report.OK || !out.Renewed {
		t.Fatalf("renew during the rotation: %s", out.Report.Summary)
	}
	cur := n.current(t)
	if len(cur.Roots) != 2 {
		t.Fatalf("ca.pem holds %d roots, want both", len(cur.Roots))
	}
	rep := healthy("renewed under the new root")
	for _, c := range rep.Checks {
		if c.Name == "ca-chain" && c.Evidence["chains_to_newest"] != "true" {
			t.Fatalf("ca-chain evidence %v, want chains_to_newest true", c.Evidence)
		}
	}
	dropped := n.cp.CA.RetiredRoots()
	if err := n.cp.DropOldCARoots(false); err != nil {
		t.Fatal(err)
	}
	// The pinned root is gone from the CA: trust follows through ca.pem, and
	// ca.pem holds exactly the roots the CA serves (the dropped one goes);
	// verify warns to update the pin.
	if out := n.renew(t, false); !out.Report.OK || out.Record.LastResult != state.Refreshed {
		t.Fatalf("renew after the old root was dropped: %s (%+v)", out.Report.Summary, out.Record)
	}
	if cur := n.current(t); len(cur.Roots) != 1 || !cur.Roots[0].Equal(n.cp.CA.PKI().Root) {
		t.Fatalf("ca.pem holds %d roots, want only the new one", len(cur.Roots))
	}
	rep = healthy("old root dropped")
	if c := rep.Checks[4]; c.Name != "ca-root" || c.Status != report.Warn || !strings.Contains(c.Remedy, n.cp.CA.Fingerprint()) {
		t.Fatalf("ca-root after the pinned root was dropped: %+v", c)
	}
	// Issue 24's repro: a server certificate that chains only to the dropped
	// root must not pass tls-server (ca.pem no longer trusts that root).
	if len(dropped) == 0 {
		t.Fatal("no retired root to issue from")
	}
	old, err := dropped[0].IssueServerCert(n.cp.API.Hostname(), net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	good, err := n.cp.CA.PKI().IssueServerCert(n.cp.API.Hostname(), net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	n.cp.API.SetServerCert(old.TLSCertificate())
	e := observe.NewEnv(n.cfg, n.host)
	if rep := report.New("verify", nodeID, verify.Ladder(context.Background(), e, nil), 0); rep.OK || rep.FailedCheck != "tls-server" {
		t.Fatalf("verify against a server certificate under the dropped root: ok=%v at %s: %s", rep.OK, rep.FailedCheck, rep.Summary)
	}
	n.cp.API.SetServerCert(good.TLSCertificate())
	// The template pins the new root: nothing left to do.
	n.cfg.CA.Fingerprint = n.cp.CA.Fingerprint()
	if out := n.renew(t, false); !out.Report.OK || out.Record.LastResult != state.NotDue {
		t.Fatalf("renew after the pin moved: %s (%+v)", out.Report.Summary, out.Record)
	}
	if c := healthy("pin moved").Checks[4]; c.Status != report.Pass {
		t.Fatalf("ca-root after the pin moved: %+v", c)
	}
	healthy("old root dropped")
}

// TestReinstallRevokesReplaced: a bootstrap with a fresh token on a kept
// disk replaces a still-valid certificate and revokes it at the CA (which
// then refuses to renew it); a CA that cannot revoke only warns.
func TestReinstallRevokesReplaced(t *testing.T) {
	for _, canRevoke := range []bool{true, false} {
		t.Run(map[bool]string{true: "revoked", false: "ca refuses: warning"}[canRevoke], func(t *testing.T) {
			n := bootstrapped(t, controlplane.Options{CARevocation: canRevoke})
			old := n.current(t)
			tok, err := n.cp.Token(nodeID)
			if err != nil {
				t.Fatal(err)
			}
			if err := controlplane.WriteToken(n.files.Root, n.cfg.CA.TokenFile, tok); err != nil {
				t.Fatal(err)
			}
			// A reinstall: the kept key looks exposed, so bootstrap rotates it.
			os.Chmod(filepath.Join(n.files.PKIDir, "current", credstore.KeyFile), 0o644)
			out := bootstrap.Run(context.Background(), n.cfg, n.host, pipeline.Options{Ladder: verify.Ladder, Policy: fast})
			if !out.Report.OK || !out.Enrolled {
				t.Fatalf("bootstrap: %s", out.Report.Summary)
			}
			var line *report.Result
			for i := range out.Report.Checks {
				if out.Report.Checks[i].Name == pipeline.RevokeCheck {
					line = &out.Report.Checks[i]
				}
			}
			if line == nil {
				t.Fatal("no revoke-replaced line in the report")
			}
			if !canRevoke {
				if line.Status != report.Warn || len(out.Receipt.Warnings) == 0 {
					t.Fatalf("revoke line %+v, receipt warnings %v; want a warning in both", line, out.Receipt.Warnings)
				}
				return
			}
			if line.Status != report.Pass {
				t.Fatalf("revoke line %+v", line)
			}
			// The CA now refuses to renew the old certificate.
			c := caClient(n)
			roots, err := c.FetchRoots(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Renew(context.Background(), old.TLSCertificate(), roots, false)
			if ee, ok := err.(*enroll.Error); !ok || ee.Kind != enroll.CertRefused {
				t.Fatalf("renewing the revoked certificate: %v, want %s", err, enroll.CertRefused)
			}
		})
	}
}
