package integration

// Renewal liveness (issue 21): a node whose certificate is valid never
// reaches expiry because of a fault that says nothing against the renewed
// certificate, and publish-safety still holds. Real step-ca, real nginx in
// front of the node API, the real binary, no token on disk after bootstrap.

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/clientcert"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/ingress"
)

// livenessLifetime is step-ca's certificate lifetime in the outage tests:
// long enough for a few renew runs (each up to bootstrap.deadline) within
// one lifetime on a busy machine, short enough to outlast it in a test.
const livenessLifetime = 45 * time.Second

// leafOf is the certificate behind the stable cert.pem.
func leafOf(t *testing.T, e *env) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(e.files.PKIDir, "cert.pem"), filepath.Join(e.files.PKIDir, "key.pem"))
	if err != nil {
		t.Fatalf("the published set: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// renewRecord is state_dir/renew.json, decoded independently of the
// product's types.
type renewRecord struct {
	Serial        string `json:"serial"`
	LastResult    string `json:"last_result"`
	RevokedSerial string `json:"revoked_serial"`
	Refusals      int    `json:"consecutive_refusals"`
	Unproven      string `json:"unproven"`
	Aside         string `json:"aside"`
	HookPending   bool   `json:"hook_pending"`
	Generation    string `json:"generation"`
}

func (e *env) record() renewRecord {
	e.t.Helper()
	var r renewRecord
	b, err := os.ReadFile(filepath.Join(e.files.StateDir, "renew.json"))
	if err != nil {
		e.t.Fatalf("renew.json: %v", err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		e.t.Fatalf("renew.json %s: %v", b, err)
	}
	return r
}

// newEnvOn is a bootstrapped node behind nginx on an existing control
// plane, its config adjusted by edit.
func newEnvOn(t *testing.T, cp *controlplane.ControlPlane, edit func(c *controlplane.NodeConfig)) *env {
	t.Helper()
	e := newEnv(t, ingress.Nginx, envOptions{cp: cp, node: func(_ *env, c *controlplane.NodeConfig) {
		c.Bootstrap.Deadline, c.Bootstrap.RequestTimeout = "15s", "2s"
		if edit != nil {
			edit(c)
		}
	}})
	if r := e.bootstrap(); r.code != 0 {
		t.Fatalf("bootstrap: exit %d %s: %s\n%s", r.code, r.rep.FailedLayer, r.rep.Summary, r.stderr)
	}
	return e
}

func livenessEnv(t *testing.T, ca controlplane.Options) *env {
	e := newEnv(t, ingress.Nginx, envOptions{viaService: true, ca: ca,
		node: func(e *env, c *controlplane.NodeConfig) {
			c.Renew = &controlplane.RenewConfig{Fraction: 0.5, Splay: "0s"}
			c.Bootstrap.Deadline = "15s"
			c.Bootstrap.RequestTimeout = "2s"
		}})
	if r := e.bootstrap(); r.code != 0 {
		t.Fatalf("bootstrap: exit %d %s: %s\n%s", r.code, r.rep.FailedLayer, r.rep.Summary, r.stderr)
	}
	if _, err := os.Stat(e.files.TokenPath); err == nil {
		t.Fatal("the token is still on disk after bootstrap")
	}
	return e
}

// outlast runs renew every few seconds from now until the first
// certificate has been expired for a while, checking after every run that
// the installed certificate is valid. It returns the results seen.
func outlast(t *testing.T, e *env, first *x509.Certificate) map[string]int {
	results := map[string]int{}
	for end := first.NotAfter.Add(8 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Second) {
		r := e.provision("renew")
		results[e.record().LastResult]++
		if leaf := leafOf(t, e); !time.Now().Before(leaf.NotAfter) {
			t.Fatalf("the installed certificate (serial %s) expired at %s during the outage; last renew: exit %d %s: %s",
				leaf.SerialNumber, leaf.NotAfter.Format(time.RFC3339), r.code, r.rep.FailedLayer, r.rep.Summary)
		}
	}
	return results
}

// recovered checks the node polls with a renewed certificate once the
// fault is gone: renew proves the installed set (clearing "unproven") and
// verify passes.
func recovered(t *testing.T, e *env, first *x509.Certificate) {
	t.Helper()
	r := e.provision("renew")
	if r.code != 0 {
		t.Fatalf("renew after the outage: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
	if v := e.verify(); v.code != 0 {
		t.Fatalf("verify after the outage: exit %d %s: %s", v.code, v.rep.FailedLayer, v.rep.Summary)
	}
	if leafOf(t, e).SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("the node still has its first certificate")
	}
	if rec := e.record(); rec.Unproven != "" {
		t.Fatalf("renew.json still says unproven after a passing proof: %q", rec.Unproven)
	}
}

// TestLivenessAPIDown: the node API answers 503 from before the renewal
// point until after the first certificate's end. The renewed certificate
// gets through the ingress exactly as the current one does and the API
// fails both alike: it is published at once, as a warning, and the node
// never holds an expired certificate.
func TestLivenessAPIDown(t *testing.T) {
	t.Parallel()
	e := livenessEnv(t, controlplane.Options{CALifetime: livenessLifetime})
	first := leafOf(t, e)
	e.api.FailAlways(controlplane.StatusFault(503))
	results := outlast(t, e, first)
	if results["published-unproven"] == 0 {
		t.Fatalf("no run published under the liveness rule: %v", results)
	}
	e.api.ClearFaults()
	recovered(t, e, first)
	t.Logf("liveness-api-down: renew results over the outage %v, node never expired", results)
}

// TestLivenessIngressDown: the ingress is down from before the renewal
// point until after the first certificate's end, so neither set gets any
// evidence. The renewed set is kept aside, then published once the
// installed certificate enters the last quarter of its life.
func TestLivenessIngressDown(t *testing.T) {
	t.Parallel()
	e := livenessEnv(t, controlplane.Options{CALifetime: livenessLifetime})
	first := leafOf(t, e)
	if err := e.in.Stop(); err != nil {
		t.Fatal(err)
	}
	results := outlast(t, e, first)
	if results["failed"] == 0 || results["published-unproven"] == 0 {
		t.Fatalf("want runs that kept the renewed set aside, then one that published it: %v", results)
	}
	e.restartIngress(func(*ingress.Options) {})
	recovered(t, e, first)
	t.Logf("liveness-ingress-down: renew results over the outage %v, node never expired", results)
}

// TestLivenessIngressRejectsRenewed: the CA moves to a new root that the
// ingress does not trust yet. The renewed certificate is rejected where the
// current one is accepted: it is never published, and the set aside is
// proven again and published once the ingress trusts the new root, without
// another certificate from the CA.
func TestLivenessIngressRejectsRenewed(t *testing.T) {
	t.Parallel()
	e := livenessEnv(t, controlplane.Options{})
	first := leafOf(t, e)
	e.renewRejectedByIngress()
	if leafOf(t, e).SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatal("the rejected certificate was published")
	}
	aside := e.record().Aside
	if aside == "" {
		t.Fatal("renew.json names no set kept aside")
	}
	if v := e.verify(); v.code != 0 {
		t.Fatalf("verify with the installed set: exit %d: %s", v.code, v.rep.Summary)
	}
	// The ingress and the API behind it trust both roots now: the next
	// renew, though nothing is due, proves the set aside again and
	// publishes it.
	e.trustCurrentRoots()
	if r := e.provision("renew"); r.code != 0 {
		t.Fatalf("renew once nginx trusts the new root: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
	if got := e.record().Generation; got != aside || leafOf(t, e).SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatalf("published %s, want the set kept aside %s (no second certificate)", got, aside)
	}
}

// renewRejectedByIngress stages a root rotation the ingress is not told
// of (rotateUnderIngress) and runs renew --force: the renewed set is
// rejected where the installed one is accepted, so it is not published.
func (e *env) renewRejectedByIngress() {
	e.t.Helper()
	rotateUnderIngress(e.t, e)
	r := e.provision("renew", "--force")
	if r.code != layerExit["tls-client-auth"] || !strings.Contains(r.rep.Summary, "not published") {
		e.t.Fatalf("renew with the renewal rejected by nginx: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
}

// trustCurrentRoots restarts the ingress, and the API behind it, trusting
// every current root of the CA for client certificates (the control-plane
// team catching up with a rotation).
func (e *env) trustCurrentRoots() {
	e.t.Helper()
	bundle := filepath.Join(e.t.TempDir(), "client-ca.pem")
	var pem []byte
	api := x509.NewCertPool()
	for _, p := range e.cp.CA.CurrentRoots() {
		pem = append(pem, p.RootPEM()...)
		api.AddCert(p.Root)
		api.AddCert(p.Intermediate)
	}
	if err := os.WriteFile(bundle, pem, 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := e.ident.Set(clientcert.Config{Roots: api}); err != nil {
		e.t.Fatal(err)
	}
	e.restartIngress(func(o *ingress.Options) { o.ClientCAFile = bundle })
}

// TestLivenessStray401: something in front of the CA answers 401 to one
// renewal. That is a refusal, retried by the next run, never "revoked".
func TestLivenessStray401(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	e, front := envBehindFront(t, cp, nil)
	first := leafOf(t, e)
	front.Refuse(1, controlplane.FrontAnswer{})
	r := e.provision("renew", "--force")
	rec := e.record()
	if r.code != layerExit["ca"] || !r.rep.Transient || rec.LastResult != "refused" || rec.RevokedSerial != "" || rec.Refusals != 1 {
		t.Fatalf("renew behind the 401: exit %d transient=%v %s; record %+v", r.code, r.rep.Transient, r.rep.Summary, rec)
	}
	if c := e.provision("renew", "--check"); c.code == 31 {
		t.Fatalf("renew --check after one refusal: exit 31 (cannot renew): %s", c.rep.Summary)
	}
	if r := e.provision("renew", "--force"); r.code != 0 {
		t.Fatalf("the next renew: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
	if leafOf(t, e).SerialNumber.Cmp(first.SerialNumber) == 0 || e.record().Refusals != 0 {
		t.Fatalf("the next run did not renew: %+v", e.record())
	}
}

// TestLivenessAfterExpiry: a node that was off past its certificate's end
// renews by itself, without a token, through step-ca's renewal after
// expiry, by renew and by bootstrap alike; where the CA does not allow it,
// the message names both ways out.
func TestLivenessAfterExpiry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		allowed bool
		cmd     string
	}{{"renew, allowed", true, "renew"}, {"bootstrap, allowed", true, "bootstrap"}, {"renew, not allowed", false, "renew"}, {"bootstrap, not allowed", false, "bootstrap"}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cp := controlplane.Start(t, controlplane.Options{CAAllowRenewalAfterExpiry: tc.allowed, CAAge: 7 * 24 * time.Hour})
			e := newEnvOn(t, cp, nil)
			// Powered off for days: the certificate ended two days ago.
			l := e.plantExpired(t)
			r := e.provision(tc.cmd)
			if !tc.allowed {
				if r.code != layerExit["credentials"] || !strings.Contains(r.rep.Summary, "allowRenewalAfterExpiry") ||
					!strings.Contains(r.rep.Remedy, "fresh one-time token") || !strings.Contains(r.rep.Remedy, "allowRenewalAfterExpiry") {
					t.Fatalf("%s, after expiry not allowed: exit %d: %s / %s", tc.cmd, r.code, r.rep.Summary, r.rep.Remedy)
				}
				return
			}
			if r.code != 0 {
				t.Fatalf("%s after expiry: exit %d %s: %s", tc.cmd, r.code, r.rep.FailedLayer, r.rep.Summary)
			}
			if leaf := leafOf(t, e); !time.Now().Before(leaf.NotAfter) || leaf.SerialNumber.Cmp(l.Cert.SerialNumber) == 0 {
				t.Fatalf("not renewed: serial %s until %s", leaf.SerialNumber, leaf.NotAfter)
			}
		})
	}
}

// TestLivenessHookUntilItSucceeds: a post hook that fails twice, then
// succeeds, stays pending (in renew.json and the renew metrics) and is run
// by every later run until it succeeds; bootstrap runs it when it replaces
// the credentials.
func TestLivenessHookUntilItSucceeds(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	count, script := filepath.Join(dir, "count"), filepath.Join(dir, "hook.sh")
	// Fails on its first and second run, succeeds from the third.
	body := "#!/bin/sh\necho x >> " + count + "\n[ $(wc -l < " + count + ") -ge 3 ]\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	cp := controlplane.Start(t, controlplane.Options{})
	e := newEnvOn(t, cp, func(c *controlplane.NodeConfig) {
		c.Renew = &controlplane.RenewConfig{PostHook: []string{script}, PostHookTimeout: "5s"}
	})
	textfiles := filepath.Join(e.root, "var", "lib", "prometheus", "node-exporter")
	if err := os.MkdirAll(textfiles, 0o755); err != nil {
		t.Fatal(err)
	}
	pending := func() string {
		b, _ := os.ReadFile(filepath.Join(textfiles, "provision_renew.prom"))
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "provision_renew_hook_pending{") {
				return l[strings.LastIndex(l, " ")+1:]
			}
		}
		return "absent"
	}
	for i, args := range [][]string{{"renew", "--force"}, {"renew"}} {
		r := e.provision(args...)
		if r.code != 22 || !e.record().HookPending || pending() != "1" {
			t.Fatalf("run %d (%v): exit %d, hook_pending %v, metric %s: %s", i+1, args, r.code, e.record().HookPending, pending(), r.rep.Summary)
		}
	}
	if r := e.provision("renew"); r.code != 0 || e.record().HookPending || pending() != "0" {
		t.Fatalf("third run: exit %d, hook_pending %v, metric %s: %s", r.code, e.record().HookPending, pending(), r.rep.Summary)
	}
	// A reinstall's re-enrollment replaces the credentials: bootstrap runs
	// the hook too.
	stale, err := cp.IssueStaleCert(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(e.files.PKIDir)
	if err := controlplane.WriteNodeCredentials(e.root, e.cfg.Paths.PKIDir, stale, cp.CA.RootPEM()); err != nil {
		t.Fatal(err)
	}
	tok, err := cp.Token(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	if err := controlplane.WriteToken(e.root, e.cfg.CA.TokenFile, tok); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(count)
	if r := e.bootstrap(); r.code != 0 {
		t.Fatalf("bootstrap re-enrolling: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
	if after, _ := os.ReadFile(count); len(after) <= len(before) {
		t.Fatal("bootstrap replaced the credentials but did not run the post hook")
	}
}
