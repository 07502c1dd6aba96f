package integration

// Publish-safety and liveness under compound faults (issue 29): two
// ordinary faults at once must break neither promise, "never publish what
// the ingress rejects where the installed set is accepted" nor "never let
// a valid identity lapse". Real step-ca, real nginx in front of the node
// API, the real binary.

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/ingress"
	"github.com/gpuaas/provision/tests/nodetest"
)

// rewriteConfig writes the node's provision.toml again after edit.
func (e *env) rewriteConfig(edit func(c *controlplane.NodeConfig)) {
	e.t.Helper()
	edit(&e.cfg)
	if err := controlplane.WriteConfig(e.files, e.cfg); err != nil {
		e.t.Fatal(err)
	}
}

// check returns the report's check of that name.
func check(rep nodetest.Report, name string) nodetest.Check {
	for _, c := range rep.Checks {
		if c.Name == name {
			return c
		}
	}
	return nodetest.Check{}
}

// textfileMetric is one sample's value from the node's renew metrics, or
// "absent".
func (e *env) textfileMetric(name string) string {
	b, _ := os.ReadFile(filepath.Join(e.root, "var", "lib", "prometheus", "node-exporter", "provision_renew.prom"))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+"{") {
			return l[strings.LastIndex(l, " ")+1:]
		}
	}
	return "absent"
}

// rotateUnderIngress stages a root rotation the ingress is not told about:
// the CA adds a root, the node refreshes ca.pem, then the CA issues under
// the new root while nginx still trusts only the old one.
func rotateUnderIngress(t *testing.T, e *env) {
	t.Helper()
	if err := e.cp.AddCARoot(); err != nil {
		t.Fatal(err)
	}
	if r := e.provision("renew"); r.code != 0 || e.record().LastResult != "refreshed" {
		t.Fatalf("renew after the root was added: exit %d %s (%+v)", r.code, r.rep.Summary, e.record())
	}
	if err := e.cp.SwitchCARoot(); err != nil {
		t.Fatal(err)
	}
}

// TestEvidenceLongAPIOutage (issue 29, 1): the node API answers 503 for
// longer than the clock's tolerance, so one renew run outlives it. The
// clock is judged when the CA's answer arrived, not when the ladder runs a
// minute later: the run ends at the API's layer, owner api, and the new
// set, which got through the ingress with nothing against it, is
// published at once.
func TestEvidenceLongAPIOutage(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	e := newEnvOn(t, cp, func(c *controlplane.NodeConfig) { c.Bootstrap.Deadline, c.NodeAPI.WaitTimeout = "80s", "1s" })
	first := leafOf(t, e)
	e.api.FailAlways(controlplane.StatusFault(503))
	r := e.provision("renew", "--force")
	if r.took < 65*time.Second {
		t.Fatalf("the run took %s: it must outlive the clock's one-minute tolerance to show anything", r.took)
	}
	if r.code != layerExit["tasks-wait"] || r.rep.FailedLayer != "tasks-wait" || r.rep.Owner != "api" {
		t.Fatalf("renew through a %s API outage: exit %d layer %s owner %s: %s", r.took.Round(time.Second), r.code, r.rep.FailedLayer, r.rep.Owner, r.rep.Summary)
	}
	if c := check(r.rep, "clock"); c.Status != "pass" {
		t.Fatalf("clock check %s: %s", c.Status, c.Message)
	}
	if rec := e.record(); rec.LastResult != "published-unproven" || leafOf(t, e).SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatalf("the renewed set was not published at once: %+v", rec)
	}
	if !strings.Contains(r.rep.Summary, "published without a passing proof") {
		t.Fatalf("summary: %s", r.rep.Summary)
	}
	e.api.ClearFaults()
	recovered(t, e, first)
	t.Logf("evidence-long-api-outage: one run of %s, exit %d (tasks-wait, owner api), published at once", r.took.Round(time.Second), r.code)
}

// TestEvidenceFlapDuringComparison (issue 29, 2): a root rotation the
// ingress does not trust yet, and a reset of exactly the connection that
// proves the installed set for the comparison. The reset is no evidence
// against the installed set: it is tried again, polls, and the new set,
// which the ingress rejects, is not published.
func TestEvidenceFlapDuringComparison(t *testing.T) {
	t.Parallel()
	e := livenessEnv(t, controlplane.Options{})
	first := leafOf(t, e)
	rotateUnderIngress(t, e)
	// The new set's proof is the first connection, the installed set's
	// comparison the second.
	e.svc.cutNth(2)
	r := e.provision("renew", "--force")
	if r.code != layerExit["tls-client-auth"] || !strings.Contains(r.rep.Summary, "not published") || !strings.Contains(r.rep.Summary, "the installed set polls") {
		t.Fatalf("renew with the installed set's comparison reset: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
	if e.svc.cutCount() != 1 {
		t.Fatalf("the relay reset %d connections, want exactly the comparison's", e.svc.cutCount())
	}
	if !strings.Contains(r.stderr, "compare-retry") {
		t.Errorf("the log does not show the installed set tried again:\n%s", r.stderr)
	}
	if leafOf(t, e).SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatal("a set the ingress rejects was published")
	}
	if v := e.verify(); v.code != 0 {
		t.Fatalf("verify with the installed set: exit %d %s: %s", v.code, v.rep.FailedLayer, v.rep.Summary)
	}
	t.Logf("evidence-flap: the comparison's connection reset once, retried, installed set polls; exit %d, nothing published", r.code)
}

// TestEvidenceAlertOnceThenDeadline: a root rotation the ingress does not
// trust yet, and the installed set's comparison meets a TLS alert once
// (a reload, a proxy refusing for a moment), after which its next attempt
// is held until bootstrap.deadline ends. One rejection no second attempt
// confirmed is no evidence against the installed set: the new set, which
// the ingress rejects, is kept aside, not published as "getting further".
func TestEvidenceAlertOnceThenDeadline(t *testing.T) {
	t.Parallel()
	e := livenessEnv(t, controlplane.Options{})
	first := leafOf(t, e)
	rotateUnderIngress(t, e)
	e.rewriteConfig(func(c *controlplane.NodeConfig) {
		c.Bootstrap.Deadline, c.Bootstrap.RequestTimeout, c.NodeAPI.WaitTimeout = "8s", "8s", "0s"
	})
	// The new set's proof is forwarded (the ingress rejects it); the
	// installed set's first comparison attempt gets the alert; every
	// attempt after is held.
	e.svc.arm(nil, alertAfterHello, holdAfterHello)
	r := e.provision("renew", "--force")
	e.svc.arm()
	if e.svc.takenCount() < 2 {
		t.Fatalf("the relay took %d connections: the installed set was never compared twice (run too slow to show anything?): exit %d %s", e.svc.takenCount(), r.code, r.rep.Summary)
	}
	if leafOf(t, e).SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("a set the ingress rejects was published on one unconfirmed rejection of the installed set: exit %d: %s\n%s", r.code, r.rep.Summary, r.stderr)
	}
	if r.code != layerExit["tls-client-auth"] || !strings.Contains(r.rep.Summary, "not published") || !strings.Contains(r.rep.Summary, "may still be accepted") {
		t.Fatalf("renew: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
	if rec := e.record(); rec.Aside == "" {
		t.Fatalf("the new set was not kept aside: %+v", rec)
	}
	if v := e.verify(); v.code != 0 {
		t.Fatalf("verify with the installed set: exit %d %s: %s", v.code, v.rep.FailedLayer, v.rep.Summary)
	}
	t.Logf("evidence-alert-once: exit %d, %s", r.code, r.rep.Summary)
}

// TestEvidenceStaleBundleInComparison: the node was off while the CA
// added a root and moved to it (the fleet's config now pins the new root),
// and the ingress moved its server certificate to the new root while its
// client authentication still trusts only the old one. The installed
// ca.pem, fetched before the rotation, cannot verify the ingress's new
// certificate; the renewed set, under the new root, is rejected at
// tls-client-auth. The installed key and certificate are compared as a
// refresh would publish them, with the CA's current roots: they poll, so
// the new set is kept aside, and the next run refreshes ca.pem.
func TestEvidenceStaleBundleInComparison(t *testing.T) {
	t.Parallel()
	e := livenessEnv(t, controlplane.Options{})
	first := leafOf(t, e)
	if err := e.cp.AddCARoot(); err != nil {
		t.Fatal(err)
	}
	if err := e.cp.SwitchCARoot(); err != nil {
		t.Fatal(err)
	}
	newRoot := e.cp.CA.PKI()
	e.rewriteConfig(func(c *controlplane.NodeConfig) { c.CA.Fingerprint = newRoot.Fingerprint() })
	leaf, err := newRoot.IssueServerCert(controlplane.DefaultAPIHostname, net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := os.WriteFile(cert, leaf.ChainPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, leaf.KeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	e.restartIngress(func(o *ingress.Options) { o.ServerCertFile, o.ServerKeyFile = cert, key })

	r := e.provision("renew", "--force")
	if leafOf(t, e).SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("a set the ingress rejects replaced one that polls with the CA's current roots: exit %d: %s", r.code, r.rep.Summary)
	}
	if r.code != layerExit["tls-client-auth"] || !strings.Contains(r.rep.Summary, "the installed set polls") {
		t.Fatalf("renew --force: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
	if r := e.provision("renew"); r.code != 0 || e.record().LastResult != "refreshed" || leafOf(t, e).SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("the next renew: exit %d %s, result %s: %s", r.code, r.rep.FailedLayer, e.record().LastResult, r.rep.Summary)
	}
	if v := e.verify(); v.code != 0 {
		t.Fatalf("verify with the refreshed installed set: exit %d %s: %s", v.code, v.rep.FailedLayer, v.rep.Summary)
	}
	t.Logf("evidence-stale-bundle: renew --force kept the new set aside (exit %d); the next renew refreshed ca.pem; verify passes", r.code)
}

// TestEvidenceComparisonTaskKept: the API hands a task to the installed
// set's comparison poll (it is dequeued there) while the new set is
// rejected by the ingress, and the task cannot be handed off (both names
// it could take in state_dir/tasks/ hold other tasks). The task is not
// lost: the run fails at the state layer with the task in its evidence,
// nothing is published, and nothing says it was handed off.
func TestEvidenceComparisonTaskKept(t *testing.T) {
	t.Parallel()
	e := livenessEnv(t, controlplane.Options{})
	first := leafOf(t, e)
	rotateUnderIngress(t, e)
	const task = `{"id":"t-9","kind":"drain"}`
	sum := sha256.Sum256([]byte(task + "\n"))
	tasks := filepath.Join(e.files.StateDir, "tasks")
	for _, name := range []string{"t-9.json", "t-9.redelivered-" + hex.EncodeToString(sum[:8]) + ".json"} {
		if err := os.WriteFile(filepath.Join(tasks, name), []byte(`{"id":"t-9","kind":"other"}`+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.api.QueueTask(nodeID, controlplane.Task{ID: "t-9", Raw: []byte(task)})
	r := e.provision("renew", "--force")
	if e.api.Pending(nodeID) != 0 {
		t.Fatalf("the task was not dequeued by the comparison: exit %d %s", r.code, r.rep.Summary)
	}
	c := check(r.rep, "task-save")
	if r.code != layerExit["state"] || c.Evidence["task"] != task || !strings.Contains(r.rep.Summary, "could not be handed off") {
		t.Fatalf("renew: exit %d %s, task-save evidence %q: %s", r.code, r.rep.FailedLayer, c.Evidence["task"], r.rep.Summary)
	}
	if strings.Contains(r.stderr, "handed off\"") || strings.Contains(r.stderr, "msg=\"task received during the proof and handed off\"") {
		t.Errorf("the log says the task was handed off:\n%s", r.stderr)
	}
	if leafOf(t, e).SerialNumber.Cmp(first.SerialNumber) != 0 || e.record().Aside == "" {
		t.Fatalf("the new set was published, or not kept aside: %+v", e.record())
	}
	t.Logf("evidence-comparison-task: exit %d, the task in the report's evidence: %s", r.code, r.rep.Summary)
}

// TestEvidenceStaleInstalledStillPolls (issue 29, 3): the installed
// certificate chains to a root the CA no longer issues under nor lists as
// current (other-ca), but the ingress still trusts it and it polls. A
// bootstrap with a fresh token enrolls under the new root, which the
// ingress rejects: the stale set is compared like any other, and wins.
func TestEvidenceStaleInstalledStillPolls(t *testing.T) {
	t.Parallel()
	e := livenessEnv(t, controlplane.Options{})
	first := leafOf(t, e)
	rotateUnderIngress(t, e)
	if err := e.cp.DropOldCARoots(true); err != nil {
		t.Fatal(err)
	}
	// The fleet's config still pins the old root (federated now): the
	// token carries that pin.
	tok, err := e.cp.Token(nodeID, controlplane.TokenSHA(e.cfg.CA.Fingerprint))
	if err != nil {
		t.Fatal(err)
	}
	if err := controlplane.WriteToken(e.root, e.cfg.CA.TokenFile, tok); err != nil {
		t.Fatal(err)
	}
	r := e.bootstrap()
	if r.code != layerExit["tls-client-auth"] || !strings.Contains(r.rep.Summary, "not published") || !strings.Contains(r.rep.Summary, "the installed set polls") {
		t.Fatalf("bootstrap over a stale set that polls: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
	if leafOf(t, e).SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatal("the new set, which the ingress rejects, replaced a stale set that polls")
	}
	v := e.verify()
	if c := check(v.rep, "tasks-wait"); c.Status != "pass" {
		t.Fatalf("verify: the installed set no longer polls: tasks-wait %s: %s", c.Status, c.Message)
	}
	if c := check(v.rep, "ca-chain"); c.Status != "fail" {
		t.Fatalf("verify: ca-chain %s, want the installed set judged stale", c.Status)
	}
	t.Logf("evidence-stale-polls: bootstrap exit %d, the stale set that polls stays; verify: ca-chain fail, tasks-wait pass", r.code)
}

// TestEvidenceTightestDeadline (issue 29, 4): bootstrap.deadline equal to
// request_timeout, the tightest budget validation accepts, and an ingress
// that accepts TCP but never finishes the handshake: no time is ever left
// to prove the installed set too. The identity does not lapse: the set
// kept aside is published by the last-quarter rule all the same.
func TestEvidenceTightestDeadline(t *testing.T) {
	t.Parallel()
	e := livenessEnv(t, controlplane.Options{CALifetime: 90 * time.Second})
	first := leafOf(t, e)
	e.rewriteConfig(func(c *controlplane.NodeConfig) {
		c.Bootstrap.Deadline, c.Bootstrap.RequestTimeout, c.NodeAPI.WaitTimeout = "2s", "2s", "0s"
	})
	e.svc.setTarget(controlplane.StartHoldServer(t).Addr())
	results := outlast(t, e, first)
	if results["published-unproven"] == 0 {
		t.Fatalf("the set kept aside was never published: %v", results)
	}
	e.svc.setTarget(e.in.Addr)
	e.rewriteConfig(func(c *controlplane.NodeConfig) {
		c.Bootstrap.Deadline, c.Bootstrap.RequestTimeout, c.NodeAPI.WaitTimeout = "15s", "2s", "1s"
	})
	recovered(t, e, first)
	t.Logf("evidence-tightest-deadline: renew results %v, node never expired", results)
}

// TestEvidenceHookAfterUnprovenPublish (issue 29, 5): a set published
// without a passing proof (the API answering 503) makes the post hook
// pending, in renew.json and the metrics, and the hook runs at once. One
// that fails stays pending, and it is run again by the next run, while
// the API still fails and that run's proof with it: the node-agent is told
// about the published set whatever the proof says. Once it succeeded, no
// later run repeats it.
func TestEvidenceHookAfterUnprovenPublish(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	count, script, failing := filepath.Join(dir, "count"), filepath.Join(dir, "hook.sh"), filepath.Join(dir, "failing")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho x >> "+count+"\n[ ! -e "+failing+" ]\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(failing, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	runs := func() int {
		b, _ := os.ReadFile(count)
		return strings.Count(string(b), "x")
	}
	cp := controlplane.Start(t, controlplane.Options{})
	e := newEnvOn(t, cp, func(c *controlplane.NodeConfig) {
		c.NodeAPI.WaitTimeout = "1s"
		c.Renew = &controlplane.RenewConfig{PostHook: []string{script}, PostHookTimeout: "5s"}
	})
	if err := os.MkdirAll(filepath.Join(e.root, "var", "lib", "prometheus", "node-exporter"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.api.FailAlways(controlplane.StatusFault(503))
	r := e.provision("renew", "--force")
	rec := e.record()
	if rec.LastResult != "published-unproven" || !rec.HookPending || runs() != 1 || e.textfileMetric("provision_renew_hook_pending") != "1" {
		t.Fatalf("unproven publish, the hook failing: exit %d, record %+v, hook runs %d, hook_pending metric %s: %s\n%s", r.code, rec, runs(), e.textfileMetric("provision_renew_hook_pending"), r.rep.Summary, r.stderr)
	}
	// The hook is fixed; the API still fails, and so does this run's proof.
	os.Remove(failing)
	r = e.provision("renew")
	if rec := e.record(); r.code != layerExit["tasks-wait"] || rec.HookPending || runs() != 2 || e.textfileMetric("provision_renew_hook_pending") != "0" {
		t.Fatalf("renew with the API failing and the hook pending: exit %d %s, record %+v, hook runs %d, metric %s: %s", r.code, r.rep.FailedLayer, rec, runs(), e.textfileMetric("provision_renew_hook_pending"), r.rep.Summary)
	}
	e.api.ClearFaults()
	if r := e.provision("renew"); r.code != 0 {
		t.Fatalf("renew once the API is back: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
	if rec := e.record(); rec.HookPending || rec.Unproven != "" || runs() != 2 {
		t.Fatalf("after the API came back: record %+v, hook runs %d", rec, runs())
	}
	t.Logf("evidence-hook-unproven: the hook failed in the unproven publish's run (pending), ran again and succeeded in the next run while the API still failed; not repeated after")
}

// crlWith is a CRL signed by the CA's own intermediate, as genuine as the
// CA's: valid from thisUpdate to nextUpdate (from now), listing serial
// with reason (RFC 5280 CRLReason) unless reason < 0.
func crlWith(t *testing.T, cp *controlplane.ControlPlane, serial *big.Int, reason int, thisUpdate, nextUpdate time.Duration) []byte {
	t.Helper()
	p := cp.CA.PKI()
	now := time.Now()
	rl := &x509.RevocationList{Number: big.NewInt(now.UnixNano()), ThisUpdate: now.Add(thisUpdate), NextUpdate: now.Add(nextUpdate)}
	if reason >= 0 {
		rl.RevokedCertificateEntries = []x509.RevocationListEntry{{SerialNumber: serial, RevocationTime: now.Add(thisUpdate), ReasonCode: reason}}
	}
	der, err := x509.CreateRevocationList(rand.Reader, rl, p.Intermediate, p.IntermediateKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestEvidenceRevocationAndForce (issue 29, 6): a refusal is recorded as
// revoked only from a CRL within its validity listing the serial with a
// final reason; a hold is a refusal. renew --force always asks the CA for
// a new certificate: with a revocation recorded (cleared when the CA
// signs), and with a set left aside (every run a new one).
func TestEvidenceRevocationAndForce(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	e, front := envBehindFront(t, cp, func(c *controlplane.NodeConfig) { c.Bootstrap.Deadline = "6s" })
	const hold, keyCompromise = 6, 1
	for _, tc := range []struct {
		name string
		crl  func(serial *big.Int) []byte
	}{
		{"a stale CRL listing the serial on hold", func(s *big.Int) []byte { return crlWith(t, cp, s, hold, -2*time.Hour, -time.Hour) }},
		{"a current CRL listing the serial on hold", func(s *big.Int) []byte { return crlWith(t, cp, s, hold, -time.Minute, time.Hour) }},
		{"a stale CRL listing the serial as compromised", func(s *big.Int) []byte { return crlWith(t, cp, s, keyCompromise, -2*time.Hour, -time.Hour) }},
	} {
		front.ServeCRL(tc.crl(leafOf(t, e).SerialNumber))
		front.Refuse(1, controlplane.FrontAnswer{})
		r := e.provision("renew", "--force")
		rec := e.record()
		if r.code != layerExit["ca"] || !r.rep.Transient || rec.LastResult != "refused" || rec.RevokedSerial != "" {
			t.Fatalf("%s: exit %d transient=%v %s; record %+v", tc.name, r.code, r.rep.Transient, r.rep.Summary, rec)
		}
	}
	// The hold is released: the next forced renewal renews.
	front.ServeCRL(nil)
	before := leafOf(t, e)
	if r := e.provision("renew", "--force"); r.code != 0 || leafOf(t, e).SerialNumber.Cmp(before.SerialNumber) == 0 {
		t.Fatalf("renew --force after the hold was released: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}

	// A revocation recorded from an earlier CRL: renew stops, renew
	// --force asks the CA, which signs, and the record is cleared.
	revoked := leafOf(t, e).SerialNumber.String()
	e.editRecord(func(m map[string]any) {
		m["revoked_serial"], m["revocation_evidence"] = revoked, "an earlier CRL listed it"
	})
	if r := e.provision("renew"); r.code != layerExit["enroll"] {
		t.Fatalf("renew with a recorded revocation: exit %d, want %d: %s", r.code, layerExit["enroll"], r.rep.Summary)
	}
	relayed := front.Relayed()
	if r := e.provision("renew", "--force"); r.code != 0 || front.Relayed() == relayed {
		t.Fatalf("renew --force with a recorded revocation: exit %d %s (connections to the CA %d -> %d): %s", r.code, r.rep.FailedLayer, relayed, front.Relayed(), r.rep.Summary)
	}
	if rec := e.record(); rec.RevokedSerial != "" || rec.Serial == revoked {
		t.Fatalf("the CA signed but the revocation stays recorded: %+v", rec)
	}

	// A set left aside (the ingress is down: no evidence either way):
	// every forced run asks the CA for another certificate.
	if err := e.in.Stop(); err != nil {
		t.Fatal(err)
	}
	asides := map[string]bool{}
	for i := 0; i < 3; i++ {
		r := e.provision("renew", "--force")
		rec := e.record()
		if r.code != layerExit["tcp"] || rec.Aside == "" || asides[rec.Aside] {
			t.Fatalf("forced run %d with a set aside: exit %d, aside %q (seen %v): %s", i+1, r.code, rec.Aside, asides, r.rep.Summary)
		}
		asides[rec.Aside] = true
	}
	t.Logf("evidence-revocation: holds and stale CRLs refused, not revoked; --force renewed past a recorded revocation and asked the CA 3 times with a set aside")
}

// envBehindFront is a bootstrapped node on cp that reaches the CA through
// a CAFront, its config adjusted by edit.
func envBehindFront(t *testing.T, cp *controlplane.ControlPlane, edit func(c *controlplane.NodeConfig)) (*env, *controlplane.CAFront) {
	t.Helper()
	front, err := controlplane.StartCAFront(cp.CA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { front.Close() })
	e := newEnvOn(t, cp, func(c *controlplane.NodeConfig) {
		c.CA.URL = front.URL()
		if edit != nil {
			edit(c)
		}
	})
	return e, front
}

// plantExpired replaces the node's credentials with a certificate from
// the CA that ended two days ago: a node powered off for days.
func (e *env) plantExpired(t *testing.T) *controlplane.Leaf {
	t.Helper()
	l, err := e.cp.CA.IssueNodeCertAt(nodeID, time.Now().Add(-72*time.Hour), time.Now().Add(-48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(e.files.PKIDir)
	if err := controlplane.WriteNodeCredentials(e.root, e.cfg.Paths.PKIDir, l, e.cp.CA.RootPEM()); err != nil {
		t.Fatal(err)
	}
	return l
}

// editRecord changes renew.json's fields as JSON.
func (e *env) editRecord(edit func(m map[string]any)) {
	e.t.Helper()
	path := filepath.Join(e.files.StateDir, "renew.json")
	b, err := os.ReadFile(path)
	if err != nil {
		e.t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		e.t.Fatal(err)
	}
	edit(m)
	if b, err = json.Marshal(m); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// TestEvidenceExposedKeyPastExpiry (issue 29, 7): an expired certificate
// whose key was left readable by others is never renewed with that key:
// with a fresh token, bootstrap enrolls (a new key, the token used up);
// without one, renew renews after expiry and rekeys at once.
func TestEvidenceExposedKeyPastExpiry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, cmd string
		token     bool
	}{{"bootstrap with a fresh token", "bootstrap", true}, {"renew without a token", "renew", false}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cp := controlplane.Start(t, controlplane.Options{CAAllowRenewalAfterExpiry: true, CAAge: 7 * 24 * time.Hour})
			e := newEnvOn(t, cp, nil)
			l := e.plantExpired(t)
			if err := os.Chmod(filepath.Join(e.files.PKIDir, "key.pem"), 0o644); err != nil {
				t.Fatal(err)
			}
			if tc.token {
				tok, err := cp.Token(nodeID)
				if err != nil {
					t.Fatal(err)
				}
				if err := controlplane.WriteToken(e.root, e.cfg.CA.TokenFile, tok); err != nil {
					t.Fatal(err)
				}
			}
			r := e.provision(tc.cmd)
			if r.code != 0 {
				t.Fatalf("%s: exit %d %s: %s", tc.cmd, r.code, r.rep.FailedLayer, r.rep.Summary)
			}
			leaf := leafOf(t, e)
			if !time.Now().Before(leaf.NotAfter) || l.Key.PublicKey.Equal(leaf.PublicKey) {
				t.Fatalf("%s: the installed certificate (serial %s, until %s) still carries the exposed key", tc.cmd, leaf.SerialNumber, leaf.NotAfter)
			}
			if _, err := os.Stat(e.files.TokenPath); tc.token && err == nil {
				t.Fatal("the token that enrolled is still on disk")
			}
			if _, err := os.Stat(filepath.Join(e.files.StateDir, "key-exposed.json")); err == nil {
				t.Fatal("the exposure record outlived the exposed key")
			}
		})
	}
}
