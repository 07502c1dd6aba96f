package integration

// Ingress misconfigurations from outside the incident: the ways operators
// break TLS and client authentication in real nginx, HAProxy and Caddy, as
// their documentation and issue trackers describe them (issue 11, "Ingress
// behaviours from outside the suite"). The incident replay (replay_test.go)
// only proves the failures the suite's authors chose; these rows are the
// ones users report, each driven through the real program with a generated
// configuration, each with the layer, owner and exit code verify must name.
//
// The rules the expectations follow (stage first, then error):
//
//	alert or close before the server certificate        tls-server / ingress       15
//	server certificate fails verification (name, CA)    tls-server / ingress       15
//	alert after the client sent its certificate         tls-client-auth / ingress  16  (node cert chains to the current root)
//	the ingress never asks for a client certificate     tls-client-auth / ingress  16  (mTLS not enforced)
//	404, 421, or an answer that is not the API's (3xx)  route / ingress            17
//	401/403 with mtls_present=false                     identity / ingress         18
//	502/504 and other 5xx from the ingress              tasks-wait / ingress       19  (HAProxy's 503 is an HTML page, not the API's JSON)
//
// A row whose misconfiguration works anyway (exit 0) records that it is not
// a failure; a row the program cannot express is notApplicable, with a
// proof run against the program.
//
// Every row runs bootstrap (which enrolls, then fails its proof: the same
// exit code, no receipt) and then verify --format json, and logs one
// "misconfig: <ingress> <case>: <layer>/<owner> exit <n>" line for the CI log.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/ingress"
)

// misconfig is one row: one misconfiguration of one ingress.
type misconfig struct {
	kind ingress.Kind
	name string
	// ingress applies the misconfiguration to the healthy options.
	ingress func(e *env, o *ingress.Options)
	// want is what bootstrap and verify must report; exit 0 means the
	// configuration works (the row documents that it is not a failure).
	want expect
	// transient: bootstrap retries the failure until bootstrap.deadline,
	// which these rows keep short.
	transient bool
	// check asserts more of the failing verify run.
	check func(t *testing.T, e *env, ver run)
	// source is where the misconfiguration comes from.
	source string
	// proveNotApplicable shows the ingress cannot express the
	// misconfiguration (want.notApplicable says why).
	proveNotApplicable func(t *testing.T, e *env)
}

// Mutations shared by the rows. Each starts from the healthy configuration
// newEnv builds (client CA = the step-ca root, certificate forwarded,
// server certificate for the node API hostname with its intermediate).

func rejectHandshake(e *env, o *ingress.Options) { o.RejectHandshake = true }

// rejectHandshakeStrictSNI: HAProxy's way to refuse a name is strict-sni
// with no certificate for it, here a certificate for another name.
func rejectHandshakeStrictSNI(e *env, o *ingress.Options) {
	o.RejectHandshake = true
	o.ServerCertFile, o.ServerKeyFile = e.serverCertFor(certOtherName)
}

func wrongCA(version string) func(e *env, o *ingress.Options) {
	return func(e *env, o *ingress.Options) {
		o.ClientCAFile = e.cp.Unrelated.RootPath
		o.MinTLS, o.MaxTLS = version, version
	}
}

func optionalNotForwarded(e *env, o *ingress.Options) {
	o.ClientAuth = ingress.ClientAuthOptional
	o.NoForwardCert = true
}

func requestNotForwarded(e *env, o *ingress.Options) {
	o.ClientAuth = ingress.ClientAuthRequest
	o.NoForwardCert = true
}

func serverCert(kind serverCertKind) func(e *env, o *ingress.Options) {
	return func(e *env, o *ingress.Options) { o.ServerCertFile, o.ServerKeyFile = e.serverCertFor(kind) }
}

func maxTLS11(e *env, o *ingress.Options) { o.MaxTLS = "1.1" }

func upstreamClosed(e *env, o *ingress.Options) { o.Upstream = "http://" + closedAddr(e.t) }

func plainHTTP(e *env, o *ingress.Options) { o.PlainHTTP = true }

func clientCAIntermediateOnly(e *env, o *ingress.Options) {
	o.ClientCAFile = e.cp.CA.PKI().IntermediatePath
}

func clientAuthOff(e *env, o *ingress.Options) { o.ClientAuth = ingress.ClientAuthOff }

func verifyDepth(n int) func(e *env, o *ingress.Options) {
	return func(e *env, o *ingress.Options) { o.VerifyDepth = &n }
}

func stripPrefix(e *env, o *ingress.Options) { o.StripPrefix = "/v1" }

func redirect(e *env, o *ingress.Options) { o.RedirectTo = "/v2/nodes/" + nodeID + "/tasks/wait" }

// Sources, cited once.
const (
	srcRejectNginx  = "nginx docs ssl_reject_handshake (1.19.4, changeset 59e1c73fe02b, trac #195): 'unrecognized_name' alert; NginxProxyManager a7f0c3b uses it for the default site"
	srcStrictSNI    = "HAProxy docs bind strict-sni; haproxy/haproxy#2966 (strict-sni: ERR_SSL_UNRECOGNIZED_NAME_ALERT), #3082; cloudfoundry/haproxy-boshrelease#87"
	srcCaddyNoSite  = "Caddy JSON tls_connection_policies (a handshake matching no policy fails); caddyserver/caddy#6049; ion-app-web#27 'no certificate available for <name>'"
	srcWrongCA      = "the incident's wrong CA secret, with the protocol pinned: nginx ssl_protocols, HAProxy ssl-min-ver/ssl-max-ver, Caddy protocol_min/max; reference §3.2"
	srcOptional     = "nginx ssl_verify_client optional / HAProxy verify optional (discourse.haproxy.org 'Adding client certificate authentication'; ssl_c_used/ssl_c_verify left to the ACLs) without the forwarding header; reference §5"
	srcCaddyRequest = "Caddy client_auth mode request (asks, never verifies) without header_up; reference §5 (Caddy forwards nothing by default)"
	srcWrongName    = "a certificate for another site served for the node API name (the default certificate when no SNI matches: cloudfoundry/haproxy-boshrelease#87, openshift/openshift-docs#4595; reference §3.5)"
	srcLeafOnly     = "ssl_certificate/crt/load_files with the leaf only, no intermediate: 'unable to verify the first certificate' (certwatch.app, securebin.ai chain-incomplete guides)"
	srcExpired      = "server certificate not renewed (fixwikihub 'nginx ssl certificate error': certificate has expired)"
	srcOldTLS       = "legacy protocol lists (ssl_protocols TLSv1 TLSv1.1; ssl-max-ver TLSv1.1): haproxy/haproxy#1484 (handshake failure on mismatching SSL versions); fail2ban nginx 'version too low' filter"
	srcCaddyOldTLS  = "Caddy docs tls 'protocols <min> [<max>]': supported tls1.2 and tls1.3 (default minimum tls1.2)"
	srcUpstream     = "upstream address pointing at a closed port (proxy_pass / server / reverse_proxy): nginx and Caddy answer 502, HAProxy 503 'No server is available to handle this request'"
	srcPlainHTTP    = "listen/bind without ssl on the TLS port: the client reads 'tls: first record does not look like a TLS handshake' (233boy/v2ray#229, behind Caddy)"
	srcIntermOnly   = "client CA file holding only the intermediate (stackoverflow 8431528 'nginx client cert signed by intermediate CA'; envoyproxy/envoy#22350: OpenSSL needs X509_V_FLAG_PARTIAL_CHAIN; Go treats any pool certificate as an anchor)"
	srcVerifyDepth  = "nginx ssl_verify_depth left at its default of 1 (stackoverflow 8431528; stackengine.dev 'nginx client certificate verification failed 400')"
	srcOff          = "client authentication switched off on the route (nginx ssl_verify_client off, HAProxy verify none, Caddy without client_auth): explaintopic 'ssl_verify_client not working' (clients without certificates get through)"
	srcStripPrefix  = "path rewritten on the way: nginx proxy_pass with a URI replaces the matched location (nginx proxy_pass docs; oneuptime/getpagespeed 'proxy_pass trailing slash' guides), HAProxy replace-path, Caddy handle_path strips the prefix (caddyserver/caddy#3904, #4304; coollabsio/coolify#3895)"
	srcRedirect     = "a redirect left on the node API route (nginx return 301, HAProxy http-request redirect, Caddy redir) answering 301 instead of proxying; the probe does not follow redirects"
)

// misconfigs is the table, grouped by ingress.
var misconfigs = []misconfig{
	// nginx 1.22 (Debian 12).
	{kind: ingress.Nginx, name: "reject-handshake", ingress: rejectHandshake, want: exp(15, "tls-server", "ingress"), source: srcRejectNginx},
	{kind: ingress.Nginx, name: "wrong-client-ca-tls1.2", ingress: wrongCA("1.2"), want: exp(16, "tls-client-auth", "ingress"), check: negotiates(tls.VersionTLS12), source: srcWrongCA},
	{kind: ingress.Nginx, name: "wrong-client-ca-tls1.3", ingress: wrongCA("1.3"), want: exp(16, "tls-client-auth", "ingress"), check: negotiates(tls.VersionTLS13), source: srcWrongCA},
	{kind: ingress.Nginx, name: "verify-optional-not-forwarded", ingress: optionalNotForwarded, want: exp(18, "identity", "ingress"), check: apiSawNoCert, source: srcOptional},
	{kind: ingress.Nginx, name: "server-cert-other-name", ingress: serverCert(certOtherName), want: exp(15, "tls-server", "ingress"), source: srcWrongName},
	{kind: ingress.Nginx, name: "server-cert-leaf-only", ingress: serverCert(certLeafOnly), want: exp(15, "tls-server", "ingress"), source: srcLeafOnly},
	{kind: ingress.Nginx, name: "server-cert-expired", ingress: serverCert(certExpired), want: exp(15, "tls-server", "ingress"), source: srcExpired},
	{kind: ingress.Nginx, name: "max-tls1.1", ingress: maxTLS11, want: exp(15, "tls-server", "ingress"), check: negotiates(0), source: srcOldTLS},
	{kind: ingress.Nginx, name: "plain-http-on-tls-port", ingress: plainHTTP, want: exp(15, "tls-server", "ingress"), source: srcPlainHTTP},
	{kind: ingress.Nginx, name: "client-ca-intermediate-only", ingress: clientCAIntermediateOnly, want: exp(16, "tls-client-auth", "ingress"), source: srcIntermOnly},
	{kind: ingress.Nginx, name: "verify-depth-0", ingress: verifyDepth(0), want: exp(16, "tls-client-auth", "ingress"), source: srcVerifyDepth},
	// nginx's default depth, which the sources blame, is enough for leaf +
	// intermediate + root (OpenSSL counts the intermediates): it works.
	{kind: ingress.Nginx, name: "verify-depth-1-default", ingress: verifyDepth(1), want: expect{exit: 0}, source: srcVerifyDepth},
	{kind: ingress.Nginx, name: "client-auth-off", ingress: clientAuthOff, want: exp(16, "tls-client-auth", "ingress"), source: srcOff},
	{kind: ingress.Nginx, name: "upstream-port-closed", ingress: upstreamClosed, transient: true, want: exp(19, "tasks-wait", "ingress"), source: srcUpstream},
	{kind: ingress.Nginx, name: "strip-path-prefix", ingress: stripPrefix, want: exp(17, "route", "ingress"), source: srcStripPrefix},
	{kind: ingress.Nginx, name: "redirect", ingress: redirect, want: exp(17, "route", "ingress"), source: srcRedirect},

	// HAProxy 2.6 (Debian 12).
	{kind: ingress.HAProxy, name: "reject-handshake", ingress: rejectHandshakeStrictSNI, want: exp(15, "tls-server", "ingress"), source: srcStrictSNI},
	{kind: ingress.HAProxy, name: "wrong-client-ca-tls1.2", ingress: wrongCA("1.2"), want: exp(16, "tls-client-auth", "ingress"), check: negotiates(tls.VersionTLS12), source: srcWrongCA},
	{kind: ingress.HAProxy, name: "wrong-client-ca-tls1.3", ingress: wrongCA("1.3"), want: exp(16, "tls-client-auth", "ingress"), check: negotiates(tls.VersionTLS13), source: srcWrongCA},
	{kind: ingress.HAProxy, name: "verify-optional-not-forwarded", ingress: optionalNotForwarded, want: exp(18, "identity", "ingress"), check: apiSawNoCert, source: srcOptional},
	{kind: ingress.HAProxy, name: "server-cert-other-name", ingress: serverCert(certOtherName), want: exp(15, "tls-server", "ingress"), source: srcWrongName},
	{kind: ingress.HAProxy, name: "server-cert-leaf-only", ingress: serverCert(certLeafOnly), want: exp(15, "tls-server", "ingress"), source: srcLeafOnly},
	{kind: ingress.HAProxy, name: "server-cert-expired", ingress: serverCert(certExpired), want: exp(15, "tls-server", "ingress"), source: srcExpired},
	{kind: ingress.HAProxy, name: "max-tls1.1", ingress: maxTLS11, want: exp(15, "tls-server", "ingress"), check: negotiates(0), source: srcOldTLS},
	{kind: ingress.HAProxy, name: "plain-http-on-tls-port", ingress: plainHTTP, want: exp(15, "tls-server", "ingress"), source: srcPlainHTTP},
	{kind: ingress.HAProxy, name: "client-ca-intermediate-only", ingress: clientCAIntermediateOnly, want: exp(16, "tls-client-auth", "ingress"), source: srcIntermOnly},
	{kind: ingress.HAProxy, name: "client-auth-off", ingress: clientAuthOff, want: exp(16, "tls-client-auth", "ingress"), source: srcOff},
	{kind: ingress.HAProxy, name: "upstream-port-closed", ingress: upstreamClosed, transient: true, want: exp(19, "tasks-wait", "ingress"), source: srcUpstream},
	{kind: ingress.HAProxy, name: "strip-path-prefix", ingress: stripPrefix, want: exp(17, "route", "ingress"), source: srcStripPrefix},
	{kind: ingress.HAProxy, name: "redirect", ingress: redirect, want: exp(17, "route", "ingress"), source: srcRedirect},

	// Caddy 2.6 (Debian 12).
	{kind: ingress.Caddy, name: "reject-handshake", ingress: rejectHandshake, want: exp(15, "tls-server", "ingress"), source: srcCaddyNoSite},
	{kind: ingress.Caddy, name: "wrong-client-ca-tls1.2", ingress: wrongCA("1.2"), want: exp(16, "tls-client-auth", "ingress"), check: negotiates(tls.VersionTLS12), source: srcWrongCA},
	{kind: ingress.Caddy, name: "wrong-client-ca-tls1.3", ingress: wrongCA("1.3"), want: exp(16, "tls-client-auth", "ingress"), check: negotiates(tls.VersionTLS13), source: srcWrongCA},
	{kind: ingress.Caddy, name: "request-not-forwarded", ingress: requestNotForwarded, want: exp(18, "identity", "ingress"), check: apiSawNoCert, source: srcCaddyRequest},
	{kind: ingress.Caddy, name: "server-cert-other-name", ingress: serverCert(certOtherName), want: exp(15, "tls-server", "ingress"), source: srcWrongName},
	{kind: ingress.Caddy, name: "server-cert-leaf-only", ingress: serverCert(certLeafOnly), want: exp(15, "tls-server", "ingress"), source: srcLeafOnly},
	{kind: ingress.Caddy, name: "server-cert-expired", ingress: serverCert(certExpired), want: exp(15, "tls-server", "ingress"), source: srcExpired},
	{kind: ingress.Caddy, name: "max-tls1.1", want: expect{notApplicable: "Caddy 2.6 knows only tls1.2 and tls1.3: it loads protocol_max tls1.1 without a word and still negotiates TLS 1.3"},
		proveNotApplicable: caddyIgnoresTLS11, source: srcCaddyOldTLS},
	{kind: ingress.Caddy, name: "plain-http-on-tls-port", ingress: plainHTTP, want: exp(15, "tls-server", "ingress"), source: srcPlainHTTP},
	{kind: ingress.Caddy, name: "client-ca-intermediate-only", ingress: clientCAIntermediateOnly, want: expect{exit: 0}, source: srcIntermOnly},
	{kind: ingress.Caddy, name: "client-auth-off", ingress: clientAuthOff, want: exp(16, "tls-client-auth", "ingress"), source: srcOff},
	{kind: ingress.Caddy, name: "upstream-port-closed", ingress: upstreamClosed, transient: true, want: exp(19, "tasks-wait", "ingress"), source: srcUpstream},
	{kind: ingress.Caddy, name: "strip-path-prefix", ingress: stripPrefix, want: exp(17, "route", "ingress"), source: srcStripPrefix},
	{kind: ingress.Caddy, name: "redirect", ingress: redirect, want: exp(17, "route", "ingress"), source: srcRedirect},
}

func exp(exit int, layer, owner string) expect { return expect{exit: exit, layer: layer, owner: owner} }

// misconfigCount tallies the rows, for the summary line.
var misconfigCount struct {
	sync.Mutex
	held, rows map[ingress.Kind]int // rows whose expectation held / all rows run
	works, na  int                  // rows that work anyway / cannot be expressed
}

// TestMisconfig runs every row through its real ingress.
func TestMisconfig(t *testing.T) {
	seen := map[string]bool{}
	for _, mc := range misconfigs {
		key := string(mc.kind) + "/" + mc.name
		if seen[key] {
			t.Fatalf("duplicate row %s", key)
		}
		seen[key] = true
	}
	misconfigCount.held, misconfigCount.rows = map[ingress.Kind]int{}, map[ingress.Kind]int{}
	t.Cleanup(func() {
		misconfigCount.Lock()
		defer misconfigCount.Unlock()
		var parts []string
		held, rows := 0, 0
		for _, k := range ingress.Kinds {
			if n := misconfigCount.rows[k]; n > 0 {
				parts = append(parts, fmt.Sprintf("%s %d/%d", k, misconfigCount.held[k], n))
				held += misconfigCount.held[k]
				rows += n
			}
		}
		t.Logf("misconfig: %d of %d ingress misconfigurations named as expected through the real programs (%s; %d of them work anyway), %d not applicable",
			held, rows, strings.Join(parts, ", "), misconfigCount.works, misconfigCount.na)
	})
	for _, mc := range misconfigs {
		t.Run(string(mc.kind)+"/"+mc.name, func(t *testing.T) {
			t.Parallel()
			t.Cleanup(func() {
				if mc.want.notApplicable != "" {
					return
				}
				misconfigCount.Lock()
				defer misconfigCount.Unlock()
				misconfigCount.rows[mc.kind]++
				if !t.Failed() {
					misconfigCount.held[mc.kind]++
				}
			})
			runMisconfig(t, mc)
		})
	}
}

func runMisconfig(t *testing.T, mc misconfig) {
	if mc.source == "" {
		t.Fatal("row without a source")
	}
	if mc.want.notApplicable != "" {
		// Healthy cell; show the program refuses the misconfiguration, then
		// that the node bootstraps through the correct configuration.
		e := newEnv(t, mc.kind, envOptions{})
		mc.proveNotApplicable(t, e)
		if boot := e.bootstrap(); boot.code != 0 || !e.hasReceipt() {
			t.Fatalf("bootstrap through the correctly configured %s: exit %d: %s", mc.kind, boot.code, boot.rep.Summary)
		}
		t.Logf("misconfig: %s %s: not applicable: %s", mc.kind, mc.name, mc.want.notApplicable)
		misconfigCount.Lock()
		misconfigCount.na++
		misconfigCount.Unlock()
		return
	}
	eo := envOptions{ingress: mc.ingress}
	if mc.transient {
		// request_timeout must fit in the deadline with the 1s long poll.
		eo.node = func(e *env, c *controlplane.NodeConfig) {
			c.Bootstrap.Deadline, c.Bootstrap.RequestTimeout = "4s", "3s"
		}
	}
	e := newEnv(t, mc.kind, eo)
	// What the wire looks like, for the reader of a failure.
	v, err := handshake(t, e, e.in.Addr)
	t.Logf("handshake without a client certificate: server certificate over %s, then %v", versionName(v), err)

	boot := e.bootstrap()
	w := mc.want
	if w.exit == 0 {
		if boot.code != 0 || !e.hasReceipt() {
			t.Fatalf("bootstrap: exit %d (want 0: this configuration works), receipt %v: %s/%s %s", boot.code, e.hasReceipt(), boot.rep.FailedLayer, boot.rep.Owner, boot.rep.Summary)
		}
		ver := e.verify()
		if ver.code != 0 || !ver.rep.OK {
			t.Errorf("verify: exit %d %s/%s %s", ver.code, ver.rep.FailedLayer, ver.rep.Owner, ver.rep.Summary)
		}
		t.Logf("misconfig: %s %s: works (exit %d)", mc.kind, mc.name, ver.code)
		misconfigCount.Lock()
		misconfigCount.works++
		misconfigCount.Unlock()
		return
	}
	if boot.code != w.exit || boot.rep.FailedLayer != w.layer || boot.rep.Owner != w.owner {
		t.Errorf("bootstrap: exit %d %s/%s, want exit %d %s/%s: %s", boot.code, boot.rep.FailedLayer, boot.rep.Owner, w.exit, w.layer, w.owner, boot.rep.Summary)
	}
	if e.hasReceipt() {
		t.Errorf("a failed bootstrap wrote %s", e.receiptPath())
	}
	if _, err := os.Stat(e.files.TokenPath); err == nil {
		t.Errorf("token still present: bootstrap did not enroll before the proof, so verify cannot reach the ingress")
	}
	ver := e.verify()
	t.Logf("misconfig: %s %s: %s/%s exit %d (want %s/%s exit %d) | %s", mc.kind, mc.name,
		orNone(ver.rep.FailedLayer), orNone(ver.rep.Owner), ver.code, w.layer, w.owner, w.exit, observed(ver))
	if ver.code != w.exit || ver.rep.FailedLayer != w.layer || ver.rep.Owner != w.owner || layerExit[w.layer] != w.exit {
		t.Errorf("verify: exit %d %s/%s, want exit %d %s/%s: %s\nstderr: %s", ver.code, ver.rep.FailedLayer, ver.rep.Owner, w.exit, w.layer, w.owner, ver.rep.Summary, firstLine(ver.stderr))
	}
	if ver.rep.OK {
		t.Errorf("verify reports ok through a misconfigured %s", mc.kind)
	}
	if e.hasReceipt() {
		t.Errorf("verify wrote a receipt")
	}
	if mc.check != nil {
		mc.check(t, e, ver)
	}
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// apiSawNoCert: the API answered 401 with mtls_present=false, and said so
// in its log: the request reached it without a certificate.
func apiSawNoCert(t *testing.T, e *env, ver run) {
	t.Helper()
	if v := evidence(ver.rep, "mtls_present"); v != "false" {
		t.Errorf("verify evidence mtls_present=%q, want false", v)
	}
	rej := e.api.Rejections()
	if len(rej) == 0 {
		t.Fatal("the node API logged no rejection")
	}
	for _, r := range rej {
		if r.MTLSPresent {
			t.Errorf("API rejection with mtls_present=true: %+v", r)
		}
	}
}

// negotiates checks the ingress really pins the protocol: a client offering
// TLS 1.2 and 1.3 reaches the server certificate with version v (0: the
// handshake never gets that far). It presents no client certificate; only
// the version is looked at.
func negotiates(v uint16) func(t *testing.T, e *env, ver run) {
	return func(t *testing.T, e *env, ver run) {
		t.Helper()
		if got, _ := handshake(t, e, e.in.Addr); got != v {
			t.Errorf("the ingress negotiated %s, want %s: the protocol pin did not take", versionName(got), versionName(v))
		}
	}
}

// handshake dials addr as the node would (SNI the node API hostname, the
// CA's root, TLS 1.2 or 1.3), without a client certificate, and returns
// the version seen with the server certificate (0 when none was) and the
// handshake's error.
func handshake(t *testing.T, e *env, addr string) (uint16, error) {
	t.Helper()
	var got uint16
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	c := tls.Client(raw, &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: controlplane.DefaultAPIHostname,
		RootCAs:    e.cp.CA.PKI().RootPool(),
		VerifyConnection: func(cs tls.ConnectionState) error {
			got = cs.Version
			return nil
		},
	})
	return got, c.Handshake()
}

// caddyIgnoresTLS11: Caddy starts with protocol_max tls1.1 and negotiates
// TLS 1.3 anyway, so no Caddy configuration caps the protocol below 1.2.
func caddyIgnoresTLS11(t *testing.T, e *env) {
	o := e.opts
	o.MaxTLS = "1.1"
	in, err := ingress.Start(context.Background(), e.kind, o)
	if err != nil {
		t.Fatalf("Caddy refused protocol_max tls1.1 (then the row should expect tls-server): %v", err)
	}
	defer in.Stop()
	if got, err := handshake(t, e, in.Addr); got != tls.VersionTLS13 {
		t.Fatalf("Caddy with protocol_max tls1.1 negotiated %s (%v): the setting takes effect, make the row expect tls-server", versionName(got), err)
	}
}

func versionName(v uint16) string {
	if v == 0 {
		return "nothing"
	}
	return tls.VersionName(v)
}

// serverCertKind names a wrong server certificate.
type serverCertKind string

const (
	certOtherName serverCertKind = "other-name" // valid chain, SAN for another site
	certLeafOnly  serverCertKind = "leaf-only"  // the right name, no intermediate
	certExpired   serverCertKind = "expired"    // the right name and chain, expired yesterday
)

// serverCertFor writes a server certificate of that kind, issued by the
// control plane's CA, and returns its certificate and key files.
func (e *env) serverCertFor(kind serverCertKind) (certFile, keyFile string) {
	e.t.Helper()
	p := e.cp.CA.PKI()
	req := controlplane.LeafRequest{
		CommonName:  controlplane.DefaultAPIHostname,
		DNSNames:    []string{controlplane.DefaultAPIHostname},
		IPs:         []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	switch kind {
	case certOtherName:
		req.CommonName, req.DNSNames, req.IPs = "other-site.cp.internal", []string{"other-site.cp.internal"}, nil
	case certExpired:
		req.NotBefore, req.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
	}
	leaf, err := p.IssueLeaf(req)
	if err != nil {
		e.t.Fatal(err)
	}
	chain := leaf.ChainPEM()
	if kind == certLeafOnly {
		chain = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Cert.Raw})
	}
	dir := e.t.TempDir()
	certFile, keyFile = filepath.Join(dir, string(kind)+".crt"), filepath.Join(dir, string(kind)+".key")
	if err := os.WriteFile(certFile, chain, 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, leaf.KeyPEM(), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return certFile, keyFile
}

// closedAddr is a loopback address nothing listens on, and nothing else
// can take while the test runs: a socket bound to it, never listening, so
// connections are refused (a freed port could be reused by another cell's
// node API, which would then answer).
func closedAddr(t *testing.T) string {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}
