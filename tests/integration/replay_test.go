package integration

// The incident, line by line, and the scenario that replays it.
//
//	Incident report line                                                   | scenario
//	-----------------------------------------------------------------------+---------------------------------------------
//	Symptoms
//	  tasks/wait returned 404 against raw-IP routing                       | 2 raw-ip-url (config refuses; ingress by IP: 404/421 -> route/ingress)
//	  hostname route then failed with TLS EOF before a server certificate  | 5 broken-tls-option (Traefik: EOF -> tls-server/ingress)
//	  remote error: tls: unknown certificate authority                     | 3 ingress-trusts-wrong-ca (-> tls-client-auth/ingress);
//	                                                                       | 4 stale-node-cert (node side of the same alert)
//	  after CA alignment, API returned 401 invalid node identity           | 6 cert-not-forwarded, 7 api-wrong-format
//	  API logging showed mtls_present=false: headers missing at the API    | 6 cert-not-forwarded (API log asserted)
//	Root cause
//	  URL path that bypassed the hostname router                           | 2 raw-ip-url
//	  gpuaas-node-mtls-ca populated with the wrong certificate content      | 3 ingress-trusts-wrong-ca
//	  node certificates issued from a transient CA                         | 4 stale-node-cert, 4 stale-node-cert-no-token
//	  Traefik not forwarding client-cert identity on the node API route    | 6 cert-not-forwarded
//	  API understood one forwarded format, Traefik emitted another          | 7 api-wrong-format
//	  (no line: the long poll outliving the ingress timeout)               | 8 long-poll-vs-ingress-timeout, 8 default-wait-below-timeout
//	Recovery
//	  restore hostname-based URLs with /etc/hosts override                 | 2 recovery: hostname URL; bootstrap writes the hosts block
//	  persist and reuse a node CA shared by API issuance and client-auth   | 3 recovery: ingress restarted with the step-ca root
//	  patch Traefik CA secret content and shape                            | 5 recovery: ingress restarted with a valid CA file
//	  force node re-enrollment so stale certificates were replaced         | 4 bootstrap re-enrolls by itself; no token: a fresh token
//	  explicit route where mTLS middleware applied                         | 6 recovery: forwarding directive on the route
//	  teach API to parse Traefik forwarded client-cert headers             | 7 recovery: API reads the ingress's format;
//	                                                                       | 7 api-pool-root-only: and can verify what it reads
//	  (healthy baseline every recovery must reach)                         | 1 healthy
//
// Every failing cell asserts: bootstrap exits with the failing layer's code
// and writes no receipt; verify --format json names the same layer and owner
// as the Root Cause section; the recovery is applied to the control plane
// only; the unchanged bootstrap command then exits 0 with a receipt and
// verify passes.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/clientcert"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/ingress"
	"github.com/gpuaas/provision/tests/nodetest"
)

// expect is one cell of the matrix.
type expect struct {
	exit         int    // bootstrap's exit code (0: it succeeds at once)
	layer, owner string // bootstrap's failed_layer and owner
	// verifyLayer/verifyOwner, when set, are what verify says if it differs
	// from bootstrap (bootstrap stops at enrollment, verify at the chain).
	verifyLayer, verifyOwner string
	// notApplicable explains why the misconfiguration cannot be replayed
	// through this ingress; the scenario's proveNotApplicable shows it.
	notApplicable string
}

// scenario is one row of the matrix.
type scenario struct {
	name string
	env  envOptions
	// before runs after the cell is up and before the first bootstrap:
	// control-plane faults and checks of the broken state.
	before func(t *testing.T, e *env)
	want   map[ingress.Kind]expect
	// check runs after the failing bootstrap and verify.
	check func(t *testing.T, e *env, boot, ver run)
	// recover applies the incident's recovery step to the control plane.
	recover func(t *testing.T, e *env)
	// after runs after the successful bootstrap (recovered or at once).
	after func(t *testing.T, e *env)
	// proveNotApplicable runs for kinds whose expect is notApplicable.
	proveNotApplicable func(t *testing.T, e *env)
}

func all(x expect) map[ingress.Kind]expect {
	return map[ingress.Kind]expect{ingress.Nginx: x, ingress.HAProxy: x, ingress.Caddy: x, ingress.Traefik: x}
}

// wrongFormat is, per ingress, a clientcert configuration that reads the
// header this ingress sends as another ingress's format: the incident's
// "API understood one forwarded format, Traefik emitted another".
func wrongFormat(kind ingress.Kind, fwd ingress.Forwarding) (clientcert.ParseOptions, string) {
	switch kind {
	case ingress.Nginx:
		// URL-escaped PEM read as Caddy's base64 DER.
		return clientcert.ParseOptions{Formats: []clientcert.Format{clientcert.FormatCaddy}, Headers: clientcert.HeaderNames{Caddy: fwd.Header}}, "caddy"
	default:
		// base64 DER (HAProxy, Caddy) and Traefik's comma-separated base64
		// DER chain read as nginx's URL-escaped PEM.
		return clientcert.ParseOptions{Formats: []clientcert.Format{clientcert.FormatNginx}, Headers: clientcert.HeaderNames{Nginx: fwd.Header}}, "nginx"
	}
}

var scenarios = []scenario{
	{
		name: "1 healthy",
		want: all(expect{exit: 0}),
		after: func(t *testing.T, e *env) {
			rc := e.receipt()
			if rc["node_id"] != nodeID || rc["endpoint"] != e.cfg.NodeAPI.URL || rc["root_fingerprint"] != e.cp.CA.Fingerprint() {
				t.Errorf("receipt %v does not name node, endpoint %s and root %s", rc, e.cfg.NodeAPI.URL, e.cp.CA.Fingerprint())
			}
			if n := len(e.api.Rejections()); n != 0 {
				t.Errorf("the API rejected %d requests on a healthy path", n)
			}
		},
	},
	{
		name: "2 raw-ip-url",
		env: envOptions{node: func(e *env, c *controlplane.NodeConfig) {
			// The incident's shape: the ingress's address instead of the
			// node API hostname.
			_, port, _ := net.SplitHostPort(strings.TrimPrefix(c.NodeAPI.URL, "https://"))
			c.NodeAPI.URL = "https://" + net.JoinHostPort("127.0.0.1", port)
		}},
		want: all(expect{exit: 3, layer: "config", owner: "node"}),
		check: func(t *testing.T, e *env, boot, ver run) {
			for _, r := range []run{boot, ver} {
				if !strings.Contains(r.rep.Summary, "node_api.url") {
					t.Errorf("%s does not name node_api.url: %q", r.rep.Command, r.rep.Summary)
				}
			}
			// Refused before any network call: the token is unspent, no
			// credentials exist, the API and ingress saw nothing.
			if _, err := os.Stat(e.files.TokenPath); err != nil {
				t.Errorf("the token is gone after a config refusal: %v", err)
			}
			if _, err := os.Stat(e.files.PKIDir); err == nil {
				t.Errorf("pki_dir exists after a config refusal")
			}
			if n := len(e.api.Requests()); n != 0 {
				t.Errorf("the node API saw %d requests", n)
			}
		},
		recover: func(t *testing.T, e *env) {
			// Restore the hostname URL; the hosts override comes from the
			// node's own [[hosts]], written by bootstrap.
			e.cfg.NodeAPI.URL = "https://" + controlplane.DefaultAPIHostname + ":" + fmt.Sprint(e.in.Port)
			if _, err := controlplane.WriteNode(e.root, e.cfg, ""); err != nil {
				t.Fatal(err)
			}
		},
		after: func(t *testing.T, e *env) { rawIPProbe(t, e) },
	},
	{
		name: "3 ingress-trusts-wrong-ca",
		env: envOptions{viaService: true, ingress: func(e *env, o *ingress.Options) {
			o.ClientCAFile = e.cp.Unrelated.RootPath
		}},
		want: all(expect{exit: 16, layer: "tls-client-auth", owner: "ingress"}),
		check: func(t *testing.T, e *env, boot, ver run) {
			// The node enrolled (its certificate chains to the current root)
			// and only the proof failed.
			if _, err := os.Stat(e.files.TokenPath); err == nil {
				t.Errorf("token still present: bootstrap did not enroll before the proof")
			}
			if n := len(e.api.Requests()); n != 0 {
				t.Errorf("the node API saw %d requests through an ingress that refuses the node", n)
			}
		},
		recover: func(t *testing.T, e *env) {
			e.restartIngress(func(o *ingress.Options) { o.ClientCAFile = e.cp.CA.PKI().RootPath })
		},
	},
	{
		name: "4 stale-node-cert",
		env:  envOptions{},
		before: func(t *testing.T, e *env) {
			plantStale(t, e)
			ver := e.verify()
			if ver.code != 13 || ver.rep.FailedLayer != "ca" || ver.rep.Owner != "node" {
				t.Errorf("verify on a node with a transient-CA certificate: exit %d %s/%s, want 13 ca/node: %s", ver.code, ver.rep.FailedLayer, ver.rep.Owner, ver.rep.Summary)
			}
			noIngressBlame(t, ver)
			record("4 stale-node-cert (verify before)", string(e.kind), observed(ver))
		},
		want: all(expect{exit: 0}),
		after: func(t *testing.T, e *env) {
			rc := e.receipt()
			if rc["enrolled"] != true || !strings.Contains(fmt.Sprint(rc["issuer"]), e.cp.CA.PKI().Intermediate.Subject.CommonName) {
				t.Errorf("receipt %v: want a re-enrolled certificate from the current intermediate", rc)
			}
		},
	},
	{
		name: "4 stale-node-cert-no-token",
		env:  envOptions{noToken: true},
		before: func(t *testing.T, e *env) {
			plantStale(t, e)
		},
		want: all(expect{exit: 20, layer: "enroll", owner: "node", verifyLayer: "ca", verifyOwner: "node"}),
		check: func(t *testing.T, e *env, boot, ver run) {
			if !strings.Contains(boot.rep.Summary+boot.rep.Remedy, "token") || !strings.Contains(strings.ToLower(boot.rep.Summary+" "+boot.rep.Remedy), "enroll") {
				t.Errorf("bootstrap does not say re-enrollment with a token is needed: %q / %q", boot.rep.Summary, boot.rep.Remedy)
			}
			noIngressBlame(t, ver)
		},
		recover: func(t *testing.T, e *env) {
			// Force re-enrollment: the control plane delivers a fresh token.
			tok, err := e.cp.Token(nodeID)
			if err != nil {
				t.Fatal(err)
			}
			if err := controlplane.WriteToken(e.root, e.cfg.CA.TokenFile, tok); err != nil {
				t.Fatal(err)
			}
		},
	},
	{
		name: "5 broken-tls-option",
		env: envOptions{viaService: true, ingress: func(e *env, o *ingress.Options) {
			o.ClientCAFile = e.brokenCA
		}},
		want: map[ingress.Kind]expect{
			ingress.Nginx:   {notApplicable: "refuses to start"},
			ingress.HAProxy: {notApplicable: "refuses to start"},
			ingress.Caddy:   {exit: 16, layer: "tls-client-auth", owner: "ingress"},
			ingress.Traefik: {exit: 15, layer: "tls-server", owner: "ingress"},
		},
		proveNotApplicable: func(t *testing.T, e *env) {
			o := e.opts
			o.ClientCAFile = e.brokenCA
			in, err := ingress.Start(context.Background(), e.kind, o)
			if err == nil {
				in.Stop()
				t.Fatalf("%s started with a client-CA file holding a private key", e.kind)
			}
			// The program names the file and says it holds no certificate.
			line := ""
			for _, l := range strings.Split(err.Error(), "\n") {
				if strings.Contains(l, filepath.Base(e.brokenCA)) && strings.Contains(l, "no certificate") {
					line = strings.TrimSpace(l)
					break
				}
			}
			if line == "" {
				t.Fatalf("%s failed to start, but not because of the CA file: %v", e.kind, err)
			}
			record("5 broken-tls-option", string(e.kind), "not applicable: refuses to start: "+line)
		},
		recover: func(t *testing.T, e *env) {
			e.restartIngress(func(o *ingress.Options) { o.ClientCAFile = e.cp.CA.PKI().RootPath })
		},
	},
	{
		name: "6 cert-not-forwarded",
		env: envOptions{viaService: true, ingress: func(e *env, o *ingress.Options) {
			o.NoForwardCert = true
		}},
		want: all(expect{exit: 18, layer: "identity", owner: "ingress"}),
		check: func(t *testing.T, e *env, boot, ver run) {
			checkRejections(t, e, false, clientcert.ReasonMissing)
		},
		recover: func(t *testing.T, e *env) {
			e.restartIngress(func(o *ingress.Options) { o.NoForwardCert = false })
		},
	},
	{
		name: "7 api-wrong-format",
		before: func(t *testing.T, e *env) {
			po, _ := wrongFormat(e.kind, e.in.Forwarding)
			cfg := e.healthyIdentity()
			cfg.ParseOptions = po
			if err := e.ident.Set(cfg); err != nil {
				t.Fatal(err)
			}
		},
		want: all(expect{exit: 18, layer: "identity", owner: "api"}),
		check: func(t *testing.T, e *env, boot, ver run) {
			checkRejections(t, e, true, clientcert.ReasonMalformed)
		},
		recover: func(t *testing.T, e *env) {
			// Teach the API the ingress's format (detected by header).
			if err := e.ident.Set(e.healthyIdentity()); err != nil {
				t.Fatal(err)
			}
		},
	},
	{
		// Not an incident line, but the trap next to it: nginx and Caddy
		// forward only the leaf, so an API that trusts only the root cannot
		// verify what they forward; Traefik and HAProxy forward the chain.
		name: "7 api-pool-root-only",
		before: func(t *testing.T, e *env) {
			cfg := e.healthyIdentity()
			cfg.Roots = e.cp.CA.PKI().RootPool()
			if err := e.ident.Set(cfg); err != nil {
				t.Fatal(err)
			}
		},
		want: map[ingress.Kind]expect{
			ingress.Nginx:   {exit: 18, layer: "identity", owner: "api"},
			ingress.HAProxy: {exit: 0},
			ingress.Caddy:   {exit: 18, layer: "identity", owner: "api"},
			ingress.Traefik: {exit: 0},
		},
		check: func(t *testing.T, e *env, boot, ver run) {
			checkRejections(t, e, true, clientcert.ReasonUnknownAuthority)
		},
		recover: func(t *testing.T, e *env) {
			// Give the API the intermediate too (controlplane.ForwardedRoots).
			if err := e.ident.Set(e.healthyIdentity()); err != nil {
				t.Fatal(err)
			}
		},
	},
	{
		name: "8 long-poll-vs-ingress-timeout",
		env: envOptions{viaService: true,
			ingress: func(e *env, o *ingress.Options) { o.UpstreamTimeout = 1500 * time.Millisecond },
			node:    func(e *env, c *controlplane.NodeConfig) { c.Bootstrap.Deadline = "6s" },
		},
		before: func(t *testing.T, e *env) { e.api.HoldFor(3 * time.Second) },
		want:   all(expect{exit: 19, layer: "tasks-wait", owner: "ingress"}),
		check: func(t *testing.T, e *env, boot, ver run) {
			// verify's one probe gets the ingress's answer. Bootstrap's
			// final report may instead carry its last attempt cut short by
			// bootstrap.deadline, so its retries are checked in its log.
			if st := evidence(ver.rep, "http_status"); st != "502" && st != "504" {
				t.Errorf("verify: http_status %q, want the ingress's 502 or 504", st)
			}
			// Bootstrap saw the ingress's answer on its attempts and retried
			// it as transient until bootstrap.deadline.
			if !retried504.MatchString(boot.stderr) {
				t.Errorf("bootstrap's log has no retried 502/504 from the ingress:\n%s", boot.stderr)
			}
			if !boot.rep.Transient {
				t.Errorf("a 502/504 from the ingress must be reported transient")
			}
		},
		recover: func(t *testing.T, e *env) {
			// Raise the ingress's upstream timeout back to its default.
			e.restartIngress(func(o *ingress.Options) { o.UpstreamTimeout = 0 })
		},
	},
	{
		name: "8 default-wait-below-timeout",
		env: envOptions{
			// A stingy but sane ingress: 5s for the upstream's headers.
			ingress: func(e *env, o *ingress.Options) { o.UpstreamTimeout = 5 * time.Second },
			// node_api.wait_timeout left out: the default applies.
			node: func(e *env, c *controlplane.NodeConfig) { c.NodeAPI.WaitTimeout = "" },
		},
		before: func(t *testing.T, e *env) {
			if b, _ := os.ReadFile(e.files.ConfigPath); strings.Contains(string(b), "wait_timeout") {
				t.Fatalf("config still sets wait_timeout:\n%s", b)
			}
		},
		want: all(expect{exit: 0}),
		after: func(t *testing.T, e *env) {
			reqs := e.api.Requests()
			if len(reqs) == 0 {
				t.Fatal("the API saw no tasks/wait")
			}
			for _, r := range reqs {
				if r.RawQuery != "timeout=1" {
					t.Errorf("the proof asked the API to hold %q, want timeout=1 (the default wait)", r.RawQuery)
				}
			}
		},
	},
}

// TestIncidentReplay runs every scenario through every ingress.
func TestIncidentReplay(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			for _, kind := range ingress.Kinds {
				t.Run(string(kind), func(t *testing.T) {
					t.Parallel()
					runCell(t, sc, kind)
				})
			}
		})
	}
}

func runCell(t *testing.T, sc scenario, kind ingress.Kind) {
	w, ok := sc.want[kind]
	if !ok {
		t.Fatalf("scenario %q has no expectation for %s", sc.name, kind)
	}
	start := time.Now()
	if w.notApplicable != "" {
		// Bring the cell up healthy, prove the misconfiguration cannot be
		// deployed, then show the node bootstraps through the fixed ingress.
		eo := sc.env
		eo.ingress = nil
		e := newEnv(t, kind, eo)
		sc.proveNotApplicable(t, e)
		boot := e.bootstrap()
		if boot.code != 0 || !e.hasReceipt() {
			t.Fatalf("bootstrap through the correctly configured %s: exit %d: %s", kind, boot.code, boot.rep.Summary)
		}
		return
	}
	e := newEnv(t, kind, sc.env)
	if sc.before != nil {
		sc.before(t, e)
	}
	boot := e.bootstrap()
	if w.exit == 0 {
		if boot.code != 0 || !e.hasReceipt() {
			t.Fatalf("bootstrap: exit %d (want 0), receipt %v: %s/%s %s\nstderr:\n%s", boot.code, e.hasReceipt(), boot.rep.FailedLayer, boot.rep.Owner, boot.rep.Summary, boot.stderr)
		}
		ver := e.verify()
		if ver.code != 0 || !ver.rep.OK {
			t.Errorf("verify after a successful bootstrap: exit %d %s/%s %s", ver.code, ver.rep.FailedLayer, ver.rep.Owner, ver.rep.Summary)
		}
		record(sc.name, string(kind), fmt.Sprintf("bootstrap exit 0 (%s); verify exit %d; %s total", boot.took.Round(time.Millisecond), ver.code, time.Since(start).Round(time.Millisecond)))
		if sc.after != nil {
			sc.after(t, e)
		}
		return
	}

	// The failing run.
	if boot.code != w.exit {
		t.Errorf("bootstrap exit %d, want %d (%s): got %s/%s: %s", boot.code, w.exit, w.layer, boot.rep.FailedLayer, boot.rep.Owner, boot.rep.Summary)
	}
	if boot.rep.FailedLayer != w.layer || boot.rep.Owner != w.owner {
		t.Errorf("bootstrap names %s/%s, want %s/%s: %s", boot.rep.FailedLayer, boot.rep.Owner, w.layer, w.owner, boot.rep.Summary)
	}
	if e.hasReceipt() {
		t.Errorf("a failed bootstrap wrote %s", e.receiptPath())
	}
	ver := e.verify()
	vl, vo := w.layer, w.owner
	if w.verifyLayer != "" {
		vl, vo = w.verifyLayer, w.verifyOwner
	}
	if ver.rep.FailedLayer != vl || ver.rep.Owner != vo || ver.code != layerExit[vl] {
		t.Errorf("verify: exit %d %s/%s, want exit %d %s/%s: %s", ver.code, ver.rep.FailedLayer, ver.rep.Owner, layerExit[vl], vl, vo, ver.rep.Summary)
	}
	if e.hasReceipt() {
		t.Errorf("verify wrote a receipt")
	}
	if sc.check != nil {
		sc.check(t, e, boot, ver)
	}
	obs := fmt.Sprintf("bootstrap %s (%s) | verify %s", observed(boot), boot.took.Round(time.Millisecond), observed(ver))

	// Recovery on the control plane; the node is not touched except by
	// what the recovery itself delivers (a token, a corrected config).
	sc.recover(t, e)
	again := e.bootstrap()
	if again.code != 0 || !e.hasReceipt() {
		t.Fatalf("after the recovery, the unchanged bootstrap: exit %d, receipt %v: %s/%s %s\nstderr:\n%s", again.code, e.hasReceipt(), again.rep.FailedLayer, again.rep.Owner, again.rep.Summary, again.stderr)
	}
	if ver := e.verify(); ver.code != 0 {
		t.Errorf("verify after recovery: exit %d %s/%s %s", ver.code, ver.rep.FailedLayer, ver.rep.Owner, ver.rep.Summary)
	}
	if sc.after != nil {
		sc.after(t, e)
	}
	record(sc.name, string(kind), fmt.Sprintf("%s | recovered: exit 0 (%s) | %s total", obs, again.took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond)))
}

func observed(r run) string {
	if r.code == 0 {
		return "exit 0"
	}
	s := fmt.Sprintf("exit %d %s/%s", r.code, r.rep.FailedLayer, r.rep.Owner)
	if st := evidence(r.rep, "http_status"); st != "" {
		s += " http " + st
	}
	if er := evidence(r.rep, "error"); er != "" {
		s += " err " + shorten(er)
	}
	if rs := evidence(r.rep, "api_reason"); rs != "" {
		s += " reason " + rs
	}
	return s
}

// evidence finds key in the failing check's evidence.
func evidence(rep nodetest.Report, key string) string {
	for _, c := range rep.Checks {
		if c.Status == "fail" {
			if v, ok := c.Evidence[key]; ok {
				return v
			}
		}
	}
	return ""
}

func shorten(s string) string {
	if i := strings.Index(s, "remote error: "); i >= 0 {
		return s[i:]
	}
	if i := strings.LastIndex(s, ": "); i >= 0 && len(s) > 60 {
		return s[i+2:]
	}
	return s
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}

var retried504 = regexp.MustCompile(`step=proof layer=tasks-wait owner=ingress status=retry .*message="50[24] from the ingress`)

// plantStale installs a key and certificate from a CA that step-ca does not
// hold (the incident's transient CA), as if an earlier install had enrolled
// against it.
func plantStale(t *testing.T, e *env) {
	t.Helper()
	leaf, err := e.cp.IssueStaleCert(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	if err := controlplane.WriteNodeCredentials(e.root, e.cfg.Paths.PKIDir, leaf, e.cp.Unrelated.RootPEM()); err != nil {
		t.Fatal(err)
	}
	// That install also wrote the hosts override.
	if out, err := exec.Command(provisionBin, "hosts", "apply", "--root", e.root).CombinedOutput(); err != nil {
		t.Fatalf("provision hosts apply: %v\n%s", err, out)
	}
}

// noIngressBlame: on a node with stale credentials behind a healthy
// ingress, no failing check of verify may name the ingress (or anyone but
// the node) as owner.
func noIngressBlame(t *testing.T, ver run) {
	t.Helper()
	for _, c := range ver.rep.Checks {
		if c.Status == "fail" && c.Owner != "node" {
			t.Errorf("verify's %s check blames %s on a node whose own credentials are stale: %s", c.Name, c.Owner, c.Message)
		}
	}
}

// checkRejections asserts the API's own log: every rejection carries
// mtls_present and the clientcert reason, and the text log has both.
func checkRejections(t *testing.T, e *env, present bool, reason clientcert.Reason) {
	t.Helper()
	rej := e.api.Rejections()
	if len(rej) == 0 {
		t.Fatal("the node API logged no rejection")
	}
	for _, r := range rej {
		if r.MTLSPresent != present || r.Reason != string(reason) {
			t.Errorf("API rejection mtls_present=%v reason=%q, want %v %q", r.MTLSPresent, r.Reason, present, reason)
		}
	}
	logText := e.apiLog.String()
	for _, want := range []string{fmt.Sprintf("mtls_present=%v", present), "reason=" + string(reason)} {
		if !strings.Contains(logText, want) {
			t.Errorf("the API log lacks %q:\n%s", want, logText)
		}
	}
}

// rawIPProbe reaches the ingress by IP (no SNI, Host = the IP), as the
// incident's node-agent did, with the node's real credentials, and
// classifies the answer with the classifier verify uses.
func rawIPProbe(t *testing.T, e *env) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(e.files.PKIDir, "cert.pem"), filepath.Join(e.files.PKIDir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(e.files.PKIDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	var d = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, e.in.Addr)
	}
	url := "https://" + e.in.Addr + strings.Replace(controlplane.WaitPath, "{node_id}", nodeID, 1) + "?timeout=1"
	res := probe.Do(context.Background(), probe.Request{URL: url, Cert: &cert, Roots: roots, Dial: d, Timeout: 5 * time.Second, Wait: time.Second})
	f := diag.FromProbe(res, diag.ChainCurrent)
	if f == nil {
		t.Fatalf("%s reached by IP answered %d: the raw-IP path reached tasks/wait", e.kind, res.Status)
	}
	if f.Layer != diag.Route || f.Owner != diag.Ingress {
		t.Errorf("%s reached by IP: %d %q err %v classified %s/%s, want route/ingress", e.kind, res.Status, strings.TrimSpace(string(res.Body)), res.Err, f.Layer, f.Owner)
	}
	if res.Status == http.StatusOK || res.Status == http.StatusNoContent {
		t.Errorf("raw IP reached the API")
	}
	record("2 raw-ip-url (ingress by IP)", string(e.kind), fmt.Sprintf("HTTP %d %q -> %s/%s", res.Status, firstLine(strings.TrimSpace(string(res.Body))), f.Layer, f.Owner))
}
