package verify_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/bootstrap"
	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/hosts"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/internal/verify"
	"github.com/gpuaas/provision/tests/controlplane"
)

// The whole ladder, verify.Checks() through verify.Run, against the real
// in-process step-ca and node API of tests/controlplane on loopback, with a
// node laid out under a temporary --root (config, hosts file with the managed
// block, credentials). Each failing run breaks exactly one thing the way the
// incident did and checks that the report names the layer and owner the
// incident's root cause names, with one FAIL and the dependents SKIPped.

const nodeID = "gpu-0042"

type node struct {
	root string
	cfg  controlplane.NodeConfig
}

// plant lays out a node under a fresh root: config, hosts block and, unless
// leaf is nil, credentials with caPEM as the bundle.
func plant(t testing.TB, cp *controlplane.ControlPlane, edit func(*controlplane.NodeConfig), leaf *controlplane.Leaf, caPEM []byte) node {
	t.Helper()
	root := t.TempDir()
	cfg := cp.NodeConfig(nodeID)
	if edit != nil {
		edit(&cfg)
	}
	if _, err := controlplane.WriteNode(root, cfg, ""); err != nil {
		t.Fatal(err)
	}
	applyHosts(t, root, cfg)
	if leaf != nil {
		if err := controlplane.WriteNodeCredentials(root, cfg.Paths.PKIDir, leaf, caPEM); err != nil {
			t.Fatal(err)
		}
	}
	return node{root: root, cfg: cfg}
}

func applyHosts(t testing.TB, root string, cfg controlplane.NodeConfig) {
	t.Helper()
	path := controlplane.InRoot(root, cfg.Paths.HostsFile)
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var es []hosts.Entry
	for _, h := range cfg.Hosts {
		es = append(es, hosts.Entry{Name: h.Name, IP: mustAddr(t, h.IP)})
	}
	nb, _, err := hosts.Apply(old, es)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nb, 0o644); err != nil {
		t.Fatal(err)
	}
}

func healthyNode(t testing.TB, cp *controlplane.ControlPlane) node {
	t.Helper()
	leaf, err := cp.IssueNodeCert(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	return plant(t, cp, nil, leaf, cp.CA.RootPEM())
}

// env loads the node's config the way the CLI does and returns a fresh Env.
func (n node) env(t testing.TB, clock system.Clock) *observe.Env {
	t.Helper()
	host, err := system.New(n.root)
	if err != nil {
		t.Fatal(err)
	}
	host.Now = clock
	cfg, err := config.Load(host.Path(controlplane.DefaultConfigPath))
	if err != nil {
		t.Fatal(err)
	}
	host.HostsFile = cfg.Paths.HostsFile
	return observe.NewEnv(cfg, host)
}

func (n node) verify(t testing.TB, clock system.Clock) *report.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	res := verify.Run(ctx, n.env(t, clock), verify.Checks(), nil)
	return report.New("verify", nodeID, res, time.Since(start))
}

func dump(r *report.Report) string {
	var b strings.Builder
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "  %-5s %-16s %-16s %-8s %s\n", c.Status, c.Name, c.Layer, c.Owner, c.Message)
	}
	return b.String()
}

func statuses(r *report.Report) map[string]report.Status {
	m := map[string]report.Status{}
	for _, c := range r.Checks {
		m[c.Name] = c.Status
	}
	return m
}

func TestLadderHealthyAfterRealEnrollment(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	root := t.TempDir()
	if _, err := cp.PrepareNode(root, nodeID); err != nil {
		t.Fatal(err)
	}
	n := node{root: root, cfg: cp.NodeConfig(nodeID)}
	e := n.env(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := bootstrap.Run(ctx, e.Cfg, e.Host, pipeline.Options{Ladder: verify.Ladder, Policy: retry.Default, Version: "test"})
	if !out.Report.OK {
		t.Fatalf("bootstrap against the real step-ca failed: %s\n%s", out.Report.Summary, dump(out.Report))
	}
	r := n.verify(t, nil)
	if !r.OK || r.FailedLayer != "" {
		t.Fatalf("healthy node: ok=%v failed %s/%s: %s\n%s", r.OK, r.FailedLayer, r.Owner, r.Summary, dump(r))
	}
	if len(r.Checks) != len(verify.Checks()) {
		t.Errorf("%d results for %d checks", len(r.Checks), len(verify.Checks()))
	}
	for _, c := range r.Checks {
		if c.Status != report.Pass {
			t.Errorf("%s: %s (%s), want pass", c.Name, c.Status, c.Message)
		}
	}
	if got := cp.API.Requests(); len(got) == 0 || got[len(got)-1].PeerCN != nodeID || got[len(got)-1].SNI != cp.API.Hostname() {
		t.Errorf("the node API did not see the node's certificate by hostname: %+v", got)
	}
}

func TestLadderHealthyWithTask(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	n := healthyNode(t, cp)
	cp.API.QueueTask(nodeID, controlplane.Task{ID: "task-9", Kind: "reboot"})
	r := n.verify(t, nil)
	if !r.OK {
		t.Fatalf("ok=false: %s\n%s", r.Summary, dump(r))
	}
	tw := r.Checks[len(r.Checks)-1]
	if tw.Name != "tasks-wait" || tw.Evidence["task_id"] != "task-9" || !strings.Contains(tw.Evidence["task"], `"kind":"reboot"`) {
		t.Errorf("tasks-wait does not carry the task in its evidence: %+v", tw)
	}
}

// ladderCase breaks one thing. Exactly the check named fail fails; skip
// lists checks that must be skipped because of it.
type ladderCase struct {
	name      string
	setup     func(t *testing.T, cp *controlplane.ControlPlane) node
	clock     system.Clock
	fail      string
	layer     diag.Layer
	owner     diag.Owner
	transient bool
	summary   string
	skip      []string
	alsoFail  map[string]diag.Owner // further FAILs the ladder is known to report (see the test)
}

var probeChain = []string{"tcp", "tls-server", "tls-client-auth", "route", "identity", "tasks-wait"}

func after(name string) []string {
	for i, n := range probeChain {
		if n == name {
			return probeChain[i+1:]
		}
	}
	return nil
}

func withFault(f controlplane.Fault) func(t *testing.T, cp *controlplane.ControlPlane) node {
	return func(t *testing.T, cp *controlplane.ControlPlane) node {
		cp.API.FailAlways(f)
		return healthyNode(t, cp)
	}
}

func skewed(d time.Duration) system.Clock { return func() time.Time { return time.Now().Add(d) } }

func ladderCases() []ladderCase {
	return []ladderCase{
		{
			name: "hosts: the managed block maps the API to another address",
			setup: func(t *testing.T, cp *controlplane.ControlPlane) node {
				n := healthyNode(t, cp)
				// Rewrite the block as if it came from an old config.
				old := n.cfg
				old.Hosts = []controlplane.HostEntry{{Name: cp.API.Hostname(), IP: "127.0.0.2"}, {Name: cp.CA.Hostname(), IP: "127.0.0.1"}}
				applyHosts(t, n.root, old)
				return n
			},
			fail: "hosts-block", layer: diag.Hosts, owner: diag.Node, summary: "differs from the config",
			skip: append([]string{"hosts-resolve"}, probeChain...),
		},
		{
			name: "hosts: cloud-init rewrote /etc/hosts and dropped the block",
			setup: func(t *testing.T, cp *controlplane.ControlPlane) node {
				n := healthyNode(t, cp)
				p := controlplane.InRoot(n.root, n.cfg.Paths.HostsFile)
				if err := os.WriteFile(p, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return n
			},
			fail: "hosts-block", layer: diag.Hosts, owner: diag.Node, summary: "no provision managed block",
			skip: append([]string{"hosts-resolve", "ca-root", "ca-chain"}, probeChain...),
		},
		{
			name:  "clock: the node is two minutes ahead of the CA's Date",
			setup: func(t *testing.T, cp *controlplane.ControlPlane) node { return healthyNode(t, cp) },
			clock: skewed(2 * time.Minute),
			fail:  "clock", layer: diag.Clock, owner: diag.Node, summary: "off the CA's",
		},
		{
			name:  "clock: the node is two minutes behind, so its fresh cert looks not yet valid",
			setup: func(t *testing.T, cp *controlplane.ControlPlane) node { return healthyNode(t, cp) },
			clock: skewed(-2 * time.Minute),
			fail:  "clock", layer: diag.Clock, owner: diag.Node, summary: "off the CA's",
			skip: append([]string{"credentials", "ca-chain"}, probeChain[1:]...),
		},
		{
			name: "credentials: the node never enrolled",
			setup: func(t *testing.T, cp *controlplane.ControlPlane) node {
				return plant(t, cp, nil, nil, nil)
			},
			fail: "credentials", layer: diag.Credentials, owner: diag.Node, summary: "has not enrolled",
			skip: []string{"ca-chain", "tls-client-auth", "route", "identity", "tasks-wait"},
		},
		{
			name: "credentials: key.pem is world-readable",
			setup: func(t *testing.T, cp *controlplane.ControlPlane) node {
				n := healthyNode(t, cp)
				if err := os.Chmod(filepath.Join(controlplane.InRoot(n.root, n.cfg.Paths.PKIDir), "key.pem"), 0o644); err != nil {
					t.Fatal(err)
				}
				return n
			},
			fail: "credentials", layer: diag.Credentials, owner: diag.Node, summary: "must be 0600",
			skip: []string{"ca-chain", "tls-client-auth", "route", "identity", "tasks-wait"},
		},
		{
			name: "ca: the node's certificate is stale (issued by a CA the control plane no longer uses)",
			setup: func(t *testing.T, cp *controlplane.ControlPlane) node {
				leaf, err := cp.IssueStaleCert(nodeID)
				if err != nil {
					t.Fatal(err)
				}
				return plant(t, cp, nil, leaf, cp.CA.RootPEM())
			},
			fail: "ca-chain", layer: diag.CA, owner: diag.Node, summary: "stale",
			skip: after("tls-client-auth"),
			// The ingress really does reject the stale certificate; the
			// probe reports it with the same owner (see below).
			alsoFail: map[string]diag.Owner{"tls-client-auth": diag.Node},
		},
		{
			name: "tcp: nothing listens where the hosts override points",
			setup: func(t *testing.T, cp *controlplane.ControlPlane) node {
				leaf, err := cp.IssueNodeCert(nodeID)
				if err != nil {
					t.Fatal(err)
				}
				return plant(t, cp, func(c *controlplane.NodeConfig) {
					c.Hosts = []controlplane.HostEntry{{Name: cp.API.Hostname(), IP: "127.0.0.2"}, {Name: cp.CA.Hostname(), IP: "127.0.0.1"}}
				}, leaf, cp.CA.RootPEM())
			},
			fail: "tcp", layer: diag.TCP, owner: diag.Network, transient: true, summary: "refused",
			skip: after("tcp"),
		},
		{
			name: "tls-server: the ingress closes after the ClientHello (broken client-auth CA secret)",
			setup: func(t *testing.T, cp *controlplane.ControlPlane) node {
				cp.SetClientCAMode(controlplane.ClientCABroken)
				return healthyNode(t, cp)
			},
			fail: "tls-server", layer: diag.TLSServer, owner: diag.Ingress, summary: "closed the connection before presenting a server certificate",
			skip: after("tls-server"),
		},
		{
			name: "tls-server: the ingress serves a certificate for another host",
			setup: func(t *testing.T, cp *controlplane.ControlPlane) node {
				leaf, err := cp.CA.PKI().IssueServerCert("default.ingress.invalid")
				if err != nil {
					t.Fatal(err)
				}
				cp.API.SetServerCert(leaf.TLSCertificate())
				return healthyNode(t, cp)
			},
			fail: "tls-server", layer: diag.TLSServer, owner: diag.Ingress, summary: "not valid for " + controlplane.DefaultAPIHostname,
			skip: after("tls-server"),
		},
		{
			name: "tls-client-auth: the ingress trusts the wrong CA for client certificates",
			setup: func(t *testing.T, cp *controlplane.ControlPlane) node {
				cp.SetClientCAMode(controlplane.ClientCAUnrelated)
				return healthyNode(t, cp)
			},
			fail: "tls-client-auth", layer: diag.TLSClientAuth, owner: diag.Ingress, summary: "unknown certificate authority",
			skip: after("tls-client-auth"),
		},
		{
			name:  "route: 404 from the router",
			setup: withFault(controlplane.Fault{Status: 404, Body: "404 page not found"}),
			fail:  "route", layer: diag.Route, owner: diag.Ingress, summary: "no route for Host",
			skip: after("route"),
		},
		{
			name:  "route: 421 misdirected",
			setup: withFault(controlplane.StatusFault(421)),
			fail:  "route", layer: diag.Route, owner: diag.Ingress, summary: "421",
			skip: after("route"),
		},
		{
			name:  "identity: the certificate is not forwarded (mtls_present=false)",
			setup: withFault(controlplane.IdentityFault(false, "no client certificate")),
			fail:  "identity", layer: diag.Identity, owner: diag.Ingress, summary: "mtls_present=false",
			skip: after("identity"),
		},
		{
			name:  "identity: the API cannot parse the forwarded certificate (mtls_present=true)",
			setup: withFault(controlplane.IdentityFault(true, "cannot parse forwarded certificate")),
			fail:  "identity", layer: diag.Identity, owner: diag.API, summary: "cannot parse forwarded certificate",
			skip: after("identity"),
		},
		{
			name:  "tasks-wait: 503 from the API",
			setup: withFault(controlplane.StatusFault(503)),
			fail:  "tasks-wait", layer: diag.TasksWait, owner: diag.API, transient: true, summary: "503",
		},
		{
			name:  "tasks-wait: 502 from the ingress",
			setup: withFault(controlplane.StatusFault(502)),
			fail:  "tasks-wait", layer: diag.TasksWait, owner: diag.Ingress, transient: true, summary: "502",
		},
	}
}

func TestLadderOneRootCausePerLayer(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	for _, tc := range ladderCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(func() { resetControlPlane(t, cp) })
			n := tc.setup(t, cp)
			r := n.verify(t, tc.clock)
			if r.OK {
				t.Fatalf("ok=true, want a failure at %s\n%s", tc.fail, dump(r))
			}
			if r.FailedCheck != tc.fail || r.FailedLayer != tc.layer || r.Owner != tc.owner || r.Transient != tc.transient {
				t.Errorf("root cause %s (layer %s owner %s transient %v), want %s (%s %s %v)\n%s",
					r.FailedCheck, r.FailedLayer, r.Owner, r.Transient, tc.fail, tc.layer, tc.owner, tc.transient, dump(r))
			}
			if !strings.Contains(r.Summary, tc.summary) || r.Remedy == "" {
				t.Errorf("summary %q lacks %q (remedy %q)", r.Summary, tc.summary, r.Remedy)
			}
			st := statuses(r)
			for _, c := range r.Checks {
				if c.Status == report.Fail && c.Name != tc.fail {
					if o, ok := tc.alsoFail[c.Name]; !ok || o != c.Owner {
						t.Errorf("%s also FAILs (%s, owner %s): want exactly one FAIL, the root cause\n%s", c.Name, c.Message, c.Owner, dump(r))
					}
				}
			}
			for _, s := range tc.skip {
				if st[s] != report.Skip {
					t.Errorf("%s is %s, want skip\n%s", s, st[s], dump(r))
				}
			}
			for _, c := range r.Checks {
				if c.Status == report.Skip && !strings.HasPrefix(c.Message, "skipped: depends on ") {
					t.Errorf("%s skipped without naming its dependency: %q", c.Name, c.Message)
				}
			}
		})
	}
}

// resetControlPlane puts the shared control plane back to healthy.
func resetControlPlane(t *testing.T, cp *controlplane.ControlPlane) {
	cp.API.ClearFaults()
	cp.SetClientCAMode(controlplane.ClientCAStep)
	leaf, err := cp.CA.PKI().IssueServerCert(cp.API.Hostname(), net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	cp.API.SetServerCert(leaf.TLSCertificate())
}

func TestLadderClockWarn(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	n := healthyNode(t, cp)
	r := n.verify(t, skewed(30*time.Second))
	if !r.OK {
		t.Fatalf("30s skew must warn, not fail: %s\n%s", r.Summary, dump(r))
	}
	if st := statuses(r); st["clock"] != report.Warn {
		t.Errorf("clock is %s, want warn\n%s", st["clock"], dump(r))
	}
	for _, c := range r.Checks {
		if c.Name == "clock" && (c.Evidence["ca_time"] == "" || c.Evidence["skew"] == "") {
			t.Errorf("clock evidence lacks ca_time/skew: %v", c.Evidence)
		}
	}
}

// TestLadderCADown: with step-ca stopped, the CA layer fails (owner network:
// nothing answers) and the API checks still run and pass, so the operator
// learns the node itself is fine.
func TestLadderCADown(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	n := healthyNode(t, cp)
	if err := cp.CA.Close(); err != nil {
		t.Fatal(err)
	}
	r := n.verify(t, nil)
	if r.FailedCheck != "ca-root" || r.FailedLayer != diag.CA || r.Owner != diag.Network || !r.Transient {
		t.Errorf("root cause %s %s %s transient %v, want ca-root ca network transient\n%s", r.FailedCheck, r.FailedLayer, r.Owner, r.Transient, dump(r))
	}
	st := statuses(r)
	for _, c := range []string{"clock"} {
		if st[c] != report.Warn {
			t.Errorf("%s is %s, want warn (not checked)", c, st[c])
		}
	}
	if st["ca-chain"] != report.Skip {
		t.Errorf("ca-chain is %s, want skip", st["ca-chain"])
	}
	for _, c := range probeChain {
		if st[c] != report.Pass {
			t.Errorf("%s is %s, want pass: the API path does not need the CA\n%s", c, st[c], dump(r))
		}
	}
}

func mustAddr(t testing.TB, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestPinAnchorsFirstTrustOnly: the pin is checked over the one unverified
// connection, so a 404 there proves nothing. A node whose ca.pem vouches for
// the CA asks again over a verified connection: the CA not listing the
// pinned root is then a warning with the fleet config's remedy, and the node
// stays healthy; a node with nothing that vouches for the CA fails at
// ca-root.
func TestPinAnchorsFirstTrustOnly(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	leaf, err := cp.IssueNodeCert(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	wrongPin := func(c *controlplane.NodeConfig) { c.CA.Fingerprint = cp.Unrelated.Fingerprint() }
	r := plant(t, cp, wrongPin, leaf, cp.CA.RootPEM()).verify(t, nil)
	if !r.OK || statuses(r)["ca-root"] != report.Warn {
		t.Fatalf("enrolled node, pin unknown to the CA: ok=%v ca-root %s, want ok and a warning\n%s", r.OK, statuses(r)["ca-root"], dump(r))
	}
	for _, c := range r.Checks {
		if c.Name == "ca-root" && (!strings.Contains(c.Message, "no longer") || !strings.Contains(c.Remedy, "ca.fingerprint")) {
			t.Errorf("ca-root %q remedy %q: want the dropped pin named and the config's fix", c.Message, c.Remedy)
		}
	}
	fresh := plant(t, cp, wrongPin, nil, nil).verify(t, nil)
	if fresh.OK || fresh.FailedCheck != "ca-root" || fresh.FailedLayer != diag.CA {
		t.Fatalf("node without ca.pem, pin unknown to the CA: failed at %s (%s), want ca-root\n%s", fresh.FailedCheck, fresh.FailedLayer, dump(fresh))
	}
}
