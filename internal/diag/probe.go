package diag

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/system"
)

// ChainState says whether the node certificate chains to the CA's current
// roots; it decides who owns a client-certificate rejection.
type ChainState int

// The chain states.
const (
	ChainUnknown ChainState = iota // the CA could not be asked
	ChainCurrent                   // issued by the current CA: a rejection is the ingress's
	ChainStale                     // issued by another CA: a rejection is the node's
)

// ProbeLayers are the layers one tasks/wait probe crosses, in order.
var ProbeLayers = []Layer{TCP, TLSServer, TLSClientAuth, Route, Identity, TasksWait}

// Proof is the classifier's whole answer for one probe.
//
// Invariant: every probe layer below the finding's layer is in Proven (the
// exchange recorded evidence for it) or in Unproven (the exchange got past
// it without evidence, for a reason the classifier names); the finding's
// layer and every layer above it are in neither. A layer that is in neither
// and below no finding cannot exist: Classify moves the finding down to it
// as an unrecognised failure. So a pass is always tied to recorded
// evidence, and the node is done only when all six layers are proven.
type Proof struct {
	Proven   map[Layer]string // layer -> what the exchange recorded that proves it
	Unproven map[Layer]string // layer -> why it was crossed without proof (rendered as a warning)
	Finding  *Finding         // nil only when every probe layer is proven
}

// Remedies more than one classification gives.
const (
	remedyNoListener   = "check that the ingress listens on the node API port at the IP the hosts override names, and that no firewall blocks the node"
	remedyNoClientCert = "enroll the node so it has a certificate to present: provision bootstrap with a one-time token"
)

// unproveAnswer leaves route and identity unproven for why: an answer
// that did not arrive whole proves neither.
func unproveAnswer(unproven map[Layer]string, why string) {
	unproven[Route], unproven[Identity] = why, why
}

// traefikNotFound is the body of Traefik's default router and of Go's
// http.NotFound: the request never reached a route.
const traefikNotFound = "404 page not found"

// FromProbe classifies a probe result. It returns nil only when the node API
// answered tasks/wait with a proof on every layer: the node is done.
func FromProbe(r *probe.Result, chain ChainState) *Finding {
	return Classify(r, chain).Finding
}

// Classify turns one probe into per-layer evidence and at most one finding.
func Classify(r *probe.Result, chain ChainState) Proof {
	p := Proof{Proven: proven(r), Unproven: map[Layer]string{}}
	if r.Stage >= probe.StageHandshake && !r.ClientCertAsked {
		p.Unproven[TLSClientAuth] = "not proven: the ingress did not ask for a client certificate, so mTLS is not enforced on the route this request reached"
	}
	f := newProbeFinding(r)
	switch {
	case r.Stage < probe.StageResponse:
		p.Finding = fromTransport(r, f, chain)
	default:
		p.Finding = fromAnswer(r, f, chain, p.Unproven)
	}
	p.settle(r, f)
	return p
}

// settle enforces the invariant documented on Proof.
func (p *Proof) settle(r *probe.Result, facts *Finding) {
	top := len(Layers)
	if p.Finding != nil {
		top = p.Finding.Layer.Index()
	}
	for _, l := range ProbeLayers {
		if l.Index() >= top {
			delete(p.Proven, l)
			delete(p.Unproven, l)
			continue
		}
		if _, ok := p.Proven[l]; ok {
			continue
		}
		if _, ok := p.Unproven[l]; ok {
			continue
		}
		// Nothing proves l and nothing explains crossing it: fail here.
		guess := ""
		if p.Finding != nil {
			guess = string(p.Finding.Layer) + ": " + p.Finding.Summary
		}
		p.Finding = unexplained(l, r, facts, guess)
		top = l.Index()
	}
}

// proven collects, for each probe layer, the recorded evidence that passes
// it. Only facts the probe saw count; absence of an error proves nothing.
func proven(r *probe.Result) map[Layer]string {
	m := map[Layer]string{}
	if r.Stage >= probe.StageConnected {
		m[TCP] = fmt.Sprintf("connected to %s (%s)", r.Host, r.RemoteAddr)
	}
	if r.ServerVerified && len(r.ServerChain) > 0 {
		m[TLSServer] = fmt.Sprintf("the ingress presented a certificate for %s issued by %s, verified against ca.pem", r.Host, r.ServerChain[0].Issuer.String())
	}
	if r.ClientCertSent && r.ServerVerified {
		switch {
		case r.Stage >= probe.StageFirstByte:
			m[TLSClientAuth] = "the ingress accepted the node's client certificate: it answered after the handshake"
		case r.TicketAfterHandshake:
			m[TLSClientAuth] = "the ingress accepted the node's client certificate: it sent a TLS 1.3 session ticket after verifying it"
		case r.Stage >= probe.StageHandshake && r.TLSVersion == tls.VersionTLS12:
			m[TLSClientAuth] = "the ingress accepted the node's client certificate: the TLS 1.2 handshake finished after it was sent"
		}
	}
	if r.Stage < probe.StageResponse {
		return m
	}
	done := r.Stage >= probe.StageBody && (r.Status == 204 || (r.Status == 200 && probe.IsTask(r.Body)))
	// A 200 of JSON that is no task came from a backend that speaks JSON:
	// the request was routed; what it answered is the API's to explain.
	jsonNoTask := r.Stage >= probe.StageBody && r.Status == 200 && isJSON(r.Body) && !done
	if done || jsonNoTask || r.Status == 401 || r.Status == 403 || r.Status == 429 || r.Status >= 500 && r.Status <= 599 {
		m[Route] = fmt.Sprintf("the ingress routed %s to a backend (it answered %d)", r.Host, r.Status)
	}
	if done {
		m[Identity] = "the node API accepted the node's identity"
		m[TasksWait] = fmt.Sprintf("tasks/wait answered %d in %s", r.Status, r.Duration.Round(1e6))
	}
	return m
}

func isHTML(r *probe.Result) bool {
	b := bytes.TrimSpace(r.Body)
	return strings.HasPrefix(r.Header.Get("Content-Type"), "text/html") || bytes.HasPrefix(b, []byte("<"))
}

func isJSON(b []byte) bool { return json.Valid(bytes.TrimSpace(b)) }

// newProbeFinding starts a finding with every fact the probe recorded.
func newProbeFinding(r *probe.Result) *Finding {
	f := &Finding{}
	f.add("url", r.URL)
	f.add("remote_addr", r.RemoteAddr)
	f.add("stage", r.Stage.String())
	if len(r.ServerChain) > 0 {
		f.add("server_subject", r.ServerChain[0].Subject.String())
		f.add("server_issuer", r.ServerChain[0].Issuer.String())
		f.add("server_dns_names", strings.Join(r.ServerChain[0].DNSNames, ","))
	}
	if r.ServerCertSeen {
		f.add("server_cert_verified", fmt.Sprint(r.ServerVerified))
	}
	if r.ClientCertAsked {
		f.add("client_cert_requested", "true")
		f.add("client_cert_sent", fmt.Sprint(r.ClientCertSent))
		if len(r.AcceptableCAs) > 0 {
			f.add("server_accepts_client_certs_from", strings.Join(r.AcceptableCAs, " | "))
		}
	}
	if r.TLSVersion != 0 {
		f.add("tls_version", tls.VersionName(r.TLSVersion))
	}
	if r.Err != nil {
		f.add("error", r.Err.Error())
	}
	if r.Status != 0 {
		f.add("http_status", fmt.Sprint(r.Status))
		f.add("body", bodyExcerpt(r.Body))
		if r.BodyTruncated {
			f.add("body_truncated", fmt.Sprintf("longer than %d bytes", r.BodyLimit()))
		}
		if s := r.Header.Get("Server"); s != "" {
			f.add("server_header", s)
		}
	}
	return f
}

// errKind is what stopped an exchange, independent of when.
type errKind int

const (
	errOther       errKind = iota // not recognised
	errDNS                        // the hostname does not resolve
	errRefused                    // nothing listens
	errDial                       // another dial failure (unreachable network or host)
	errTimeout                    // the peer held the connection
	errClosed                     // EOF or reset without an alert
	errAlert                      // a TLS alert from the peer
	errCertInvalid                // the server's certificate failed verification
	errNotHTTP                    // bytes that are not an HTTP answer
)

func kindOf(err error) errKind {
	var dnsErr *net.DNSError
	var cve *tls.CertificateVerificationError
	var opErr *net.OpError
	switch {
	case errors.As(err, &dnsErr) || errors.Is(err, system.ErrNotFound):
		return errDNS
	case errors.As(err, &cve):
		return errCertInvalid
	case enroll.IsTLSAlert(err):
		return errAlert
	case errors.Is(err, syscall.ECONNREFUSED):
		return errRefused
	case isTimeout(err):
		return errTimeout
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || strings.Contains(err.Error(), "connection reset"):
		return errClosed
	case strings.Contains(err.Error(), "malformed HTTP") || strings.Contains(err.Error(), "HTTP/1.x transport connection broken"):
		return errNotHTTP
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return errDial
	}
	return errOther
}

// NoEvidence reports whether an exchange that failed was cut without any
// statement from the peer: refused, unreachable, timed out, closed or reset
// (right after the ClientHello too), before any HTTP status was read. The
// classifier places such a failure at the layer where it happened, and
// calls EOF after the ClientHello final (a broken TLS option looks like
// that), but in kind it is what a reload, a flap or an outage also look
// like: it says nothing for or against the credentials the exchange
// carried. The liveness comparison (pipeline.Publish) never counts it as
// a rejection of either set.
func NoEvidence(r *probe.Result) bool {
	if r == nil || r.Err == nil || r.Status != 0 {
		return false
	}
	switch kindOf(r.Err) {
	case errRefused, errDial, errTimeout, errClosed:
		return true
	}
	return false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// Remedies shared by several rows of the table.
const (
	remedyTLSOption  = "the ingress's TLS configuration for this hostname refuses the handshake (no certificate or site for this SNI, a rejected SNI, a protocol or cipher mismatch, or a client-auth CA file it cannot load); check the ingress's TLS option and certificate for the node API hostname, then its error log"
	remedyHeldTLS    = "the ingress accepted the connection but did not complete the TLS handshake: check it is up and not overloaded, and that the port is the TLS entry point"
	remedyDropped    = "check the ingress logs for this node's request: it may reject the client certificate without an alert, or its upstream for the node API is failing; bootstrap retries this within its deadline"
	remedyNoAnswer   = "check the ingress and node API are responsive; node_api.wait_timeout must stay below the ingress's response timeout"
	remedyCutAnswer  = "the ingress or the API cut its answer short; check the ingress logs and its upstream for the node API"
	remedyCollect    = "provision does not recognise this failure: collect this report with --format json, the ingress's TLS and access logs for this node at this time, and `openssl s_client -connect <host>:<port> -servername <host> -cert cert.pem -key key.pem` from the node, and report it"
	remedyNotEnforce = "enable client-certificate authentication (the mTLS TLS option, with the step-ca root as its client CA) on the node API route and forward the certificate to the API"
)

// fromTransport classifies a failure before any HTTP status was read. The
// stage the exchange reached is the first key, the kind of error the
// second: an alert before the server's certificate is the server side's TLS
// configuration; only an alert after the client sent its certificate can be
// a client-certificate rejection.
func fromTransport(r *probe.Result, f *Finding, chain ChainState) *Finding {
	if r.Stage < probe.StageHandshake {
		return duringHandshake(r, f, chain, kindOf(r.Err))
	}
	return afterHandshake(r, f, chain, kindOf(r.Err))
}

// set fills in a finding's classification and summary.
func (f *Finding) set(l Layer, o Owner, transient bool, remedy, format string, a ...any) *Finding {
	f.Layer, f.Owner, f.Transient, f.Remedy, f.Summary = l, o, transient, remedy, fmt.Sprintf(format, a...)
	return f
}

// duringHandshake: the rows for an exchange that stopped before the TLS
// handshake finished on the client, by stage then error kind.
func duringHandshake(r *probe.Result, f *Finding, chain ChainState, kind errKind) *Finding {
	set := f.set
	switch st := r.Stage; {
	// Before a TCP connection.
	case kind == errDNS:
		return set(Hosts, Node, false, "restore the /etc/hosts override mapping the node API hostname to the private control-plane IP: provision hosts apply",
			"the node API hostname %s does not resolve", r.Host)
	case st == probe.StageNone && kind == errRefused:
		return set(TCP, Network, true, remedyNoListener,
			"connection to %s refused: nothing listens on the node API port", r.Host)
	case st == probe.StageNone && (kind == errDial || kind == errTimeout):
		return set(TCP, Network, true, remedyNoListener,
			"cannot connect to %s: %v", r.Host, r.Err)

	// Connected, no server certificate yet: the server side's TLS.
	case st == probe.StageConnected && kind == errAlert:
		return set(TLSServer, Ingress, false, remedyTLSOption,
			"the ingress refused the TLS handshake before presenting a server certificate: %s", alertText(r.Err))
	case st == probe.StageConnected && kind == errClosed:
		return set(TLSServer, Ingress, false, remedyTLSOption,
			"the ingress closed the connection before presenting a server certificate (%v)", r.Err)
	case st == probe.StageConnected && kind == errTimeout:
		return set(TLSServer, Ingress, true, remedyHeldTLS, "the TLS handshake with the ingress timed out before a server certificate (%v)", r.Err)
	case st == probe.StageConnected && kind == errNotHTTP, st == probe.StageConnected && strings.Contains(r.Err.Error(), "first record does not look like a TLS handshake"):
		return set(TLSServer, Ingress, false, "the node API port does not speak TLS: point node_api.url at the ingress's TLS entry point, or enable TLS on it",
			"the ingress did not answer with TLS: %v", r.Err)

	// A server certificate that does not verify.
	case kind == errCertInvalid:
		return serverCertFinding(r, f, chain)

	// Server certificate verified, no client certificate asked for yet.
	case st == probe.StageServerVerified && kind == errAlert:
		return set(TLSServer, Ingress, false, remedyTLSOption,
			"the ingress aborted the handshake after its certificate, before the node sent a client certificate: %s", alertText(r.Err))
	case st == probe.StageServerVerified && kind == errClosed:
		return set(TLSServer, Ingress, false, remedyTLSOption,
			"the ingress closed the connection after its certificate, before the handshake finished (%v)", r.Err)
	case st == probe.StageServerVerified && kind == errTimeout:
		return set(TLSServer, Ingress, true, remedyHeldTLS, "the TLS handshake with the ingress timed out after its certificate (%v)", r.Err)

	// The client certificate was asked for and answered; the handshake did
	// not finish (TLS 1.2, or TLS 1.3 failing before its Finished).
	case st == probe.StageClientCert && !r.ClientCertSent && (kind == errAlert || kind == errClosed):
		return set(TLSClientAuth, Node, false, remedyNoClientCert,
			"the ingress requires a client certificate and the node has none to send: %v", r.Err)
	case st == probe.StageClientCert && kind == errAlert:
		return clientAuthFinding(f, chain, alertSummary(r.Err, "during the handshake"))
	case st == probe.StageClientCert && kind == errClosed:
		return clientAuthFinding(f, chain, fmt.Sprintf("the ingress closed the connection right after the node sent its client certificate (%v)", r.Err))
	case st == probe.StageClientCert && kind == errTimeout:
		return set(TLSClientAuth, Ingress, true, remedyHeldTLS, "the TLS handshake timed out after the node sent its client certificate (%v)", r.Err)
	}
	return nil // settle places it as unrecognised at the lowest layer without evidence
}

// afterHandshake: the rows for an exchange whose handshake finished on the
// client and that read no HTTP status.
func afterHandshake(r *probe.Result, f *Finding, chain ChainState, kind errKind) *Finding {
	set := f.set
	tls12 := r.TLSVersion == tls.VersionTLS12
	switch st := r.Stage; {
	// The handshake finished on the client, no byte of an answer arrived.
	// Under TLS 1.3 the server judges the client certificate after the
	// client's Finished, so this is still tls-client-auth; under TLS 1.2 the
	// finished handshake proved the certificate, so it is the route's.
	case st == probe.StageHandshake && kind == errAlert && !tls12:
		if !r.ClientCertAsked {
			return set(TLSServer, Ingress, false, remedyTLSOption,
				"the ingress sent an alert after the handshake without having asked for a client certificate: %s", alertText(r.Err))
		}
		if !r.ClientCertSent {
			return set(TLSClientAuth, Node, false, remedyNoClientCert,
				"the ingress requires a client certificate and the node has none to send: %s", alertText(r.Err))
		}
		return clientAuthFinding(f, chain, alertSummary(r.Err, "on the first read after the handshake (TLS 1.3)"))
	case st == probe.StageHandshake && (kind == errClosed || kind == errTimeout) && !tls12 && r.ClientCertSent && !r.TicketAfterHandshake:
		what := "dropped the connection"
		if kind == errTimeout {
			what = "sent nothing before the timeout"
		}
		return set(TLSClientAuth, Ingress, true, remedyDropped,
			"the ingress %s after the TLS 1.3 handshake without answering, so it never confirmed the node's client certificate (%v)", what, r.Err)
	case st >= probe.StageHandshake && kind == errClosed:
		return set(Route, Ingress, true, remedyCutAnswer, "the ingress dropped the connection before a complete HTTP answer (%v)", r.Err)
	case st >= probe.StageHandshake && kind == errTimeout:
		return set(Route, Ingress, true, remedyNoAnswer, "no answer to tasks/wait before the timeout: the ingress or the API holds the request (%v)", r.Err)
	case st >= probe.StageHandshake && kind == errNotHTTP:
		return set(Route, Ingress, false, "the ingress's node API route must proxy HTTP to the node API; check its upstream and protocol settings",
			"the answer to tasks/wait is not HTTP: %v", r.Err)
	}
	return nil // settle places it as unrecognised at the lowest layer without evidence
}

// serverCertFinding names what is wrong with a server certificate that
// failed verification against ca.pem for the hostname.
func serverCertFinding(r *probe.Result, f *Finding, chain ChainState) *Finding {
	f.Layer, f.Owner = TLSServer, Ingress
	var hostErr x509.HostnameError
	var uae x509.UnknownAuthorityError
	var inv x509.CertificateInvalidError
	switch err := r.Err; {
	case errors.As(err, &hostErr):
		f.Summary = fmt.Sprintf("the ingress presented a certificate not valid for %s (%s): it has no certificate or router for this SNI and served its default", r.Host, subjectOf(r))
		f.Remedy = "install a server certificate for the node API hostname on the ingress and bind it to the node API router"
	case errors.As(err, &uae) && chain == ChainStale:
		// The node's certificate, and the ca.pem written with it, come
		// from a CA the control plane no longer uses: the bundle is what
		// is wrong, not the ingress's certificate.
		f.Owner = Node
		f.Summary = fmt.Sprintf("the ingress's certificate (%s) is not signed by the CA bundle in pki_dir/ca.pem, which is stale: the node's credentials come from a CA the control plane no longer uses", subjectOf(r))
		f.Remedy = "re-enroll the node (provision bootstrap with a fresh token): that replaces the certificate and the CA bundle together"
	case errors.As(err, &uae):
		f.Summary = fmt.Sprintf("the ingress's certificate (%s) is not signed by the CA bundle in pki_dir/ca.pem", subjectOf(r))
		f.Remedy = "issue the ingress's node API certificate from the control-plane CA, or re-run bootstrap if the CA bundle is stale"
	case errors.As(err, &inv) && inv.Reason == x509.Expired:
		f.Summary = fmt.Sprintf("the ingress's certificate is expired or not yet valid by the node's clock: %v", inv)
		f.Remedy = "renew the ingress certificate; if it looks valid, check the node clock (the clock layer)"
	default:
		f.Summary = fmt.Sprintf("the ingress's certificate failed verification: %v", err)
		f.Remedy = "fix the ingress's server certificate for the node API hostname"
	}
	return f
}

// fromAnswer classifies an exchange that got an HTTP status. unproven
// collects the layers crossed without proof and why.
func fromAnswer(r *probe.Result, f *Finding, chain ChainState, unproven map[Layer]string) *Finding {
	set := func(l Layer, o Owner, transient bool, remedy, format string, a ...any) *Finding {
		f.Layer, f.Owner, f.Transient, f.Remedy, f.Summary = l, o, transient, remedy, fmt.Sprintf(format, a...)
		return f
	}
	s := r.Status
	success := s == 204 || (s == 200 && probe.IsTask(r.Body))
	// Without a client-certificate request, mTLS is not enforced where the
	// request landed. Unless the answer shows the request reached no node
	// API route at all (404, 421, a redirect: route, with client auth
	// unjudged), that is the defect, below whatever the API then said.
	noRoute := s == 404 || s == 421 || s >= 300 && s <= 399
	if !r.ClientCertAsked && !noRoute {
		return set(TLSClientAuth, Ingress, false, remedyNotEnforce,
			"the ingress answered %d without asking for a client certificate: mTLS is not enforced on the node API route, so no node identity can reach the API", s)
	}
	if s >= 500 && s <= 599 || s == 429 || success && r.Stage < probe.StageBody {
		unproven[Identity] = fmt.Sprintf("not proven: the node API never judged the identity (the answer was %d)", s)
	}
	if s == 200 && !success {
		return fromNoTask(r, f, unproven)
	}
	switch {
	case r.Err != nil && success:
		return set(TasksWait, Ingress, true, remedyCutAnswer, "the answer to tasks/wait was cut mid-body (%v)", r.Err)
	case success:
		return nil
	case s == 404 && strings.TrimSpace(string(r.Body)) == traefikNotFound:
		return set(Route, Ingress, false, remedyRoute,
			"the ingress has no route for Host %s: 404 %q came from the router, not the API", r.Host, traefikNotFound)
	case s == 404:
		return set(Route, Ingress, false, remedyRoute, "404 for %s: the ingress routed nowhere, or the API does not serve this path", r.URL)
	case s == 421:
		return set(Route, Ingress, false, "make the router for the node API hostname and its TLS option use the same host name; connect by hostname, never by IP",
			"421 Misdirected Request: the ingress chose a TLS configuration by SNI that does not match the Host's router")
	case s >= 300 && s <= 399:
		return set(Route, Ingress, false, "route the node API hostname straight to the node API, without redirects (the node-agent does not follow them); check node_api.wait_path",
			"the ingress redirected tasks/wait (%d) to %q instead of routing it to the node API", s, r.Header.Get("Location"))
	case s == 400 && looksLikeNginxCertError(r.Body):
		return clientAuthFinding(f, chain, "the ingress refused the client certificate with 400: "+bodyLine(r.Body))
	case s == 401 || s == 403:
		return identityFinding(r, f)
	case s == 429:
		return set(TasksWait, API, true, "wait; bootstrap retries within its deadline. If it persists, check the API's rate limits for node polling",
			"the node API is rate limiting (429)")
	case s == 502 || s == 504:
		return set(TasksWait, Ingress, true, "check the ingress's upstream for the node API is up, and that its read/idle timeouts exceed the long-poll duration (node_api.wait_timeout is kept below them)",
			"%d from the ingress: it could not get an answer from the node API in time", s)
	case s >= 500 && s <= 599 && isHTML(r):
		// The node API speaks JSON; an HTML error page is the ingress's own
		// (HAProxy's "No server is available", nginx's default pages).
		return set(TasksWait, Ingress, true, "the ingress answered for the node API with its own error page: check its upstream for the node API is up and healthy; bootstrap retries this within its deadline",
			"the ingress answered %d itself with an HTML error page (%s): the node API did not answer", s, bodyLine(r.Body))
	case s >= 500 && s <= 599:
		return set(TasksWait, API, true, "check the node API's logs and health; bootstrap retries this within its deadline",
			"the node API failed the tasks/wait request with %d", s)
	}
	return nil // an answer nobody documents: unrecognised, placed by settle
}

// fromNoTask classifies a 200 that is not a task handed over whole (issue
// 24): one too large to read, one whose body did not arrive whole, JSON
// that is no object (each the API's, at tasks-wait: a 200 carries a task,
// so it is never "not the node API"), and a body that is not JSON at all,
// which something other than the node API sent (route).
func fromNoTask(r *probe.Result, f *Finding, unproven map[Layer]string) *Finding {
	switch {
	case r.BodyTruncated:
		// The API dequeued something too large to hand off: its failure,
		// whatever the route did (nothing here says what it did).
		unproveAnswer(unproven, "not proven: the answer was too large to read whole")
		return f.set(TasksWait, API, false, "the node API must hand out tasks far smaller than that (a task is a few KiB of JSON): find this node's task in the API's logs and queue it again, smaller",
			"tasks/wait answered 200 with a body larger than %d bytes: provision did not read it whole, so the task in it was not handed off (the API dequeued it)", probe.MaxTask)
	case r.Err != nil:
		unproveAnswer(unproven, "not proven: the answer's body did not arrive whole")
		if kindOf(r.Err) == errTimeout {
			return f.set(TasksWait, API, true, "a task is a few KiB of JSON: check what the node API hands this node (its logs) and the ingress's buffering of large answers; bootstrap retries this within its deadline",
				"tasks/wait answered 200, but its body did not arrive whole within the request's time (%d bytes so far: %v): the task in it was not handed off", len(r.Body), r.Err)
		}
		return f.set(TasksWait, Ingress, true, remedyCutAnswer, "the answer to tasks/wait was cut mid-body after %d bytes (%v): the task in it was not handed off", len(r.Body), r.Err)
	case isJSON(r.Body):
		unproven[Identity] = "not proven: the answer was not a task, so it does not show the node API accepted the identity"
		return f.set(TasksWait, API, false, "the node API must answer 204 when no task is queued, or 200 with one task as a JSON object; check what it returns for this node",
			"tasks/wait answered 200 with JSON that is not a task (%s): a task is one JSON object, so this is neither a task nor a pass", bodyLine(r.Body))
	}
	// A task is JSON. An HTML or text 200 is an ingress default page, a
	// captive proxy or another service: the route reached the wrong place.
	return f.set(Route, Ingress, false, "check the ingress routes the node API hostname to the node API and not to a default backend or another service",
		"tasks/wait answered 200 with a body that is not a JSON task (%s): something other than the node API answered", bodyLine(r.Body))
}

const remedyRoute = "add an explicit router for the node API hostname on the ingress (Host rule, with the mTLS option and the client-cert forwarding middleware); check node_api.wait_path matches the API"

// unexplained is the finding for a failure the table does not recognise:
// it fails layer l (the lowest without evidence) with every recorded fact.
func unexplained(l Layer, r *probe.Result, facts *Finding, guess string) *Finding {
	f := &Finding{Layer: l, Owner: defaultOwner[l], Remedy: remedyCollect}
	for k, v := range facts.Evidence {
		f.add(k, v)
	}
	f.add("classifier_guess", guess)
	what := "no error"
	switch {
	case r.Err != nil:
		what = r.Err.Error()
	case r.Status != 0:
		what = fmt.Sprintf("HTTP %d", r.Status)
	}
	f.Summary = fmt.Sprintf("unrecognised failure: nothing proves %s; the exchange stopped after stage %s with: %s", l, r.Stage, what)
	return f
}

// defaultOwner is who owns a layer when nothing more specific is known.
var defaultOwner = map[Layer]Owner{TCP: Network, TLSServer: Ingress, TLSClientAuth: Ingress, Route: Ingress, Identity: API, TasksWait: API}

func alertText(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "remote error: "); i >= 0 {
		msg = msg[i:]
	}
	return msg
}

func alertSummary(err error, when string) string {
	return fmt.Sprintf("the ingress rejected the node's client certificate %s: %s", when, alertText(err))
}

// clientAuthFinding decides who owns a client-certificate rejection: the
// ingress when the node's certificate chains to the CA's current root (the
// ingress trusts the wrong CA), the node when it does not (stale cert).
func clientAuthFinding(f *Finding, chain ChainState, summary string) *Finding {
	f.Layer = TLSClientAuth
	f.Summary = summary
	switch chain {
	case ChainStale:
		f.Owner = Node
		f.Remedy = "re-enroll the node: its certificate was issued by a CA the control plane no longer uses (provision bootstrap with a fresh token)"
	default:
		f.Owner = Ingress
		f.Remedy = "the node's certificate chains to the CA's current root, so the ingress trusts the wrong CA for client auth: put the step-ca root (the ca.fingerprint one) in the ingress's client-auth CA secret and reload it"
		if chain == ChainUnknown {
			f.Remedy = "the CA could not confirm the node's certificate; if it chains to the current root, the ingress's client-auth CA secret holds the wrong certificate, otherwise re-enroll the node"
		}
	}
	return f
}

func identityFinding(r *probe.Result, f *Finding) *Finding {
	f.Layer = Identity
	var body struct {
		Error       string `json:"error"`
		Message     string `json:"message"`
		MTLSPresent *bool  `json:"mtls_present"`
		Reason      string `json:"reason"`
	}
	_ = json.Unmarshal(r.Body, &body)
	present := body.MTLSPresent
	if present == nil {
		if h := r.Header.Get("X-Mtls-Present"); h == "true" || h == "false" {
			v := h == "true"
			present = &v
		}
	}
	what := strings.TrimSpace(body.Error + " " + body.Message)
	if what == "" {
		what = bodyLine(r.Body)
	}
	if body.Reason != "" {
		f.add("api_reason", body.Reason)
	}
	switch {
	case present != nil && !*present:
		f.add("mtls_present", "false")
		f.Owner = Ingress
		f.Summary = fmt.Sprintf("the API answered %d %q and says no client certificate reached it (mtls_present=false)", r.Status, what)
		f.Remedy = "the ingress terminates mTLS but does not forward the client certificate: attach the client-cert forwarding middleware (Traefik passTLSClientCert pem=true, nginx $ssl_client_escaped_cert) to the node API route"
	case present != nil && *present:
		f.add("mtls_present", "true")
		f.Owner = API
		f.Summary = fmt.Sprintf("the API answered %d %q although a client certificate reached it (mtls_present=true, reason %q)", r.Status, what, body.Reason)
		f.Remedy = "the API received the forwarded certificate but could not use it: teach the API the ingress's forwarded-certificate format, and check it trusts the same CA; the reason says which"
	default:
		f.Owner = API
		f.Summary = fmt.Sprintf("the API answered %d %q and does not say whether a client certificate reached it", r.Status, what)
		f.Remedy = "check the API's rejection log for the caller's mTLS fields: if no certificate arrived, the ingress is not forwarding it; if one did, the API cannot parse the ingress's format"
	}
	return f
}

func looksLikeNginxCertError(body []byte) bool {
	b := string(body)
	return strings.Contains(b, "No required SSL certificate was sent") || strings.Contains(b, "The SSL certificate error")
}

func subjectOf(r *probe.Result) string {
	if len(r.ServerChain) == 0 {
		return "no certificate"
	}
	c := r.ServerChain[0]
	return fmt.Sprintf("subject %q, DNS names %v", c.Subject.String(), c.DNSNames)
}

// maxBodyLine bounds a peer's body quoted in a summary.
const maxBodyLine = 100

var (
	htmlTitle = regexp.MustCompile(`(?is)<title[^>]*>(.*?)</title>`)
	htmlTag   = regexp.MustCompile(`(?s)<[^>]*>`)
)

// bodyLine is a peer's body as a summary quotes it: one line, short. An
// HTML page is its title, or its text without the markup: nginx's error
// page for a refused certificate is "400 No required SSL certificate was
// sent". The whole excerpt stays in the evidence (body).
func bodyLine(b []byte) string {
	s := string(bytes.TrimSpace(b))
	if m := htmlTitle.FindStringSubmatch(s); m != nil && strings.TrimSpace(m[1]) != "" {
		s = "HTML page: " + m[1]
	} else if strings.HasPrefix(s, "<") {
		s = "HTML page: " + htmlTag.ReplaceAllString(s, " ")
	}
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > maxBodyLine {
		s = string(r[:maxBodyLine]) + "..."
	}
	return s
}

func bodyExcerpt(b []byte) string {
	s := strings.TrimSpace(string(b))
	s = strings.Map(func(r rune) rune {
		if r < 0x20 && r != ' ' {
			return ' '
		}
		return r
	}, s)
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// layerStages bounds each probe layer's own time in the exchange: it starts
// where the layer before it ended and ends when its own evidence was
// recorded. route and identity are judged from the answer whose request and
// long poll tasks-wait is given, so when they pass they have no time of
// their own (0 to 0 past the handshake).
var layerStages = map[Layer][2]probe.Stage{
	TCP:           {probe.StageNone, probe.StageConnected},
	TLSServer:     {probe.StageConnected, probe.StageServerVerified},
	TLSClientAuth: {probe.StageServerVerified, probe.StageHandshake},
	Route:         {probe.StageHandshake, probe.StageHandshake},
	Identity:      {probe.StageHandshake, probe.StageHandshake},
	TasksWait:     {probe.StageHandshake, probe.StageBody},
}

// LayerTime is the time the exchange spent in layer l's own stage, so that
// each probe check reports its own time instead of the first one reporting
// the whole exchange (tcp 1006 ms, tasks-wait 0 ms). stopped says the
// exchange stopped at l (its check reports the failure): l then gets
// everything from its start to the end of the exchange, where the time
// went; tasks-wait gets the request, the long poll and the answer.
func LayerTime(r *probe.Result, l Layer, stopped bool) time.Duration {
	span, ok := layerStages[l]
	if r == nil || !ok {
		return 0
	}
	from := r.At(span[0])
	to := r.At(span[1])
	if stopped || l == TasksWait {
		to = r.Duration
	}
	if to < from {
		return 0
	}
	return to - from
}
