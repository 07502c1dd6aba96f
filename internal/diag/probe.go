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
	"strings"
	"syscall"

	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/retry"
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

// traefikNotFound is the body of Traefik's default router and of Go's
// http.NotFound: the request never reached a route.
const traefikNotFound = "404 page not found"

// FromProbe classifies a probe result. It returns nil when the node API
// answered 200 or 204: the node is done.
func FromProbe(r *probe.Result, chain ChainState) *Finding {
	f := &Finding{}
	f.add("url", r.URL)
	f.add("remote_addr", r.RemoteAddr)
	if len(r.ServerChain) > 0 {
		f.add("server_subject", r.ServerChain[0].Subject.String())
		f.add("server_issuer", r.ServerChain[0].Issuer.String())
		f.add("server_dns_names", strings.Join(r.ServerChain[0].DNSNames, ","))
	}
	if r.ClientCertAsked {
		f.add("client_cert_requested", "true")
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
		if s := r.Header.Get("Server"); s != "" {
			f.add("server_header", s)
		}
	}

	if r.Err != nil && r.Stage < probe.StageResponse {
		return fromTransport(r, f, chain)
	}
	switch s := r.Status; {
	case s == 200 && !json.Valid(bytes.TrimSpace(r.Body)):
		// A task is JSON. An HTML or text 200 is an ingress default page, a
		// captive proxy or another service: not proof the node API answered.
		f.Layer, f.Owner = TasksWait, Ingress
		f.Summary = fmt.Sprintf("tasks/wait answered 200 with a body that is not a JSON task (%s): something other than the node API answered", bodyExcerpt(r.Body))
		f.Remedy = "check the ingress routes the node API hostname to the node API and not to a default backend or another service"
	case s == 200 || s == 204:
		return nil
	case s == 404:
		f.Layer, f.Owner = Route, Ingress
		if strings.TrimSpace(string(r.Body)) == traefikNotFound {
			f.Summary = fmt.Sprintf("the ingress has no route for Host %s: 404 %q came from the router, not the API", r.Host, traefikNotFound)
		} else {
			f.Summary = fmt.Sprintf("404 for %s: the ingress routed nowhere, or the API does not serve this path", r.URL)
		}
		f.Remedy = "add an explicit router for the node API hostname on the ingress (Host rule, with the mTLS option and the client-cert forwarding middleware); check node_api.wait_path matches the API"
	case s == 421:
		f.Layer, f.Owner = Route, Ingress
		f.Summary = "421 Misdirected Request: the ingress chose a TLS configuration by SNI that does not match the Host's router"
		f.Remedy = "make the router for the node API hostname and its TLS option use the same host name; connect by hostname, never by IP"
	case s == 400 && looksLikeNginxCertError(r.Body):
		return clientAuthFinding(f, chain, "the ingress refused the client certificate with 400: "+bodyExcerpt(r.Body))
	case s == 401 || s == 403:
		return identityFinding(r, f)
	case s == 429:
		f.Layer, f.Owner, f.Transient = TasksWait, API, true
		f.Summary = "the node API is rate limiting (429)"
		f.Remedy = "wait; bootstrap retries within its deadline. If it persists, check the API's rate limits for node polling"
	case s == 502 || s == 504:
		f.Layer, f.Owner, f.Transient = TasksWait, Ingress, true
		f.Summary = fmt.Sprintf("%d from the ingress: it could not get an answer from the node API in time", s)
		f.Remedy = "check the ingress's upstream for the node API is up, and that its read/idle timeouts exceed the long-poll duration (node_api.wait_timeout is kept below them)"
	case s >= 500:
		f.Layer, f.Owner, f.Transient = TasksWait, API, true
		f.Summary = fmt.Sprintf("the node API failed the tasks/wait request with %d", s)
		f.Remedy = "check the node API's logs and health; bootstrap retries this within its deadline"
	default:
		f.Layer, f.Owner = TasksWait, API
		f.Summary = fmt.Sprintf("unexpected %d answer to tasks/wait", s)
		f.Remedy = "tasks/wait must answer 200 with a task or 204; check the API version and node_api.wait_path"
	}
	return f
}

func fromTransport(r *probe.Result, f *Finding, chain ChainState) *Finding {
	err := r.Err
	var dnsErr *net.DNSError
	var hs *probe.HandshakeError
	var cve *tls.CertificateVerificationError
	switch {
	case errors.As(err, &dnsErr) || errors.Is(err, system.ErrNotFound):
		f.Layer, f.Owner = Hosts, Node
		f.Summary = fmt.Sprintf("the node API hostname %s does not resolve", r.Host)
		f.Remedy = "restore the /etc/hosts override mapping the node API hostname to the private control-plane IP: provision hosts apply"
		return f
	case r.Stage == probe.StageNone:
		f.Layer, f.Owner, f.Transient = TCP, Network, true
		f.Summary = fmt.Sprintf("cannot connect to %s: %v", r.Host, err)
		if errors.Is(err, syscall.ECONNREFUSED) {
			f.Summary = fmt.Sprintf("connection to %s refused: nothing listens on the node API port", r.Host)
		}
		f.Remedy = "check that the ingress listens on the node API port at the IP the hosts override names, and that no firewall blocks the node"
		return f
	case errors.As(err, &cve):
		f.Layer, f.Owner = TLSServer, Ingress
		var hostErr x509.HostnameError
		var uae x509.UnknownAuthorityError
		var inv x509.CertificateInvalidError
		switch {
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
		case errors.As(err, &inv) && (inv.Reason == x509.Expired):
			f.Summary = fmt.Sprintf("the ingress's certificate is expired or not yet valid by the node's clock: %v", inv)
			f.Remedy = "renew the ingress certificate; if it looks valid, check the node clock (the clock layer)"
		default:
			f.Summary = fmt.Sprintf("the ingress's certificate failed verification: %v", cve.Err)
			f.Remedy = "fix the ingress's server certificate for the node API hostname"
		}
		return f
	case errors.As(err, &hs) && isTimeout(err):
		// The ingress accepted the connection and then held the handshake:
		// it did not close it, so this is not a broken TLS option.
		f.Layer, f.Owner, f.Transient = TLSServer, Ingress, true
		f.Summary = fmt.Sprintf("the TLS handshake with the ingress timed out (%v)", hs.Err)
		f.Remedy = "the ingress accepted the connection but did not complete the TLS handshake: check it is up and not overloaded, and that the port is the TLS entry point"
		return f
	case errors.As(err, &hs) && retry.IsTLSAlert(err):
		return clientAuthFinding(f, chain, alertSummary(err, r, "during the handshake"))
	case errors.As(err, &hs) && !r.ServerCertSeen:
		f.Layer, f.Owner = TLSServer, Ingress
		f.Summary = fmt.Sprintf("the ingress closed the connection before presenting a server certificate (%v)", hs.Err)
		f.Remedy = "the ingress's TLS option for this hostname is broken (for example a client-auth CA file it cannot load, or a secret of the wrong shape); fix the TLS option and its CA secret"
		return f
	case errors.As(err, &hs):
		f.Layer, f.Owner = TLSClientAuth, Ingress
		f.Summary = fmt.Sprintf("the TLS handshake failed after the server certificate: %v", hs.Err)
		f.Remedy = "check the ingress's client-auth settings for the node API hostname"
		return f
	case retry.IsTLSAlert(err):
		// TLS 1.3: the server rejects the client certificate after the
		// handshake; the alert arrives on the first read.
		return clientAuthFinding(f, chain, alertSummary(err, r, "on the first read after the handshake (TLS 1.3)"))
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "connection reset"):
		if r.ClientCertAsked && r.TLSVersion == tls.VersionTLS13 {
			// Some servers drop the connection instead of alerting.
			f.Transient = true
			f.Layer, f.Owner = TasksWait, Ingress
			f.Summary = fmt.Sprintf("the ingress dropped the connection after the handshake without an answer (%v)", err)
			f.Remedy = "check the ingress logs: it may reject the client certificate silently, or its upstream for the node API is failing"
			return f
		}
		f.Layer, f.Owner, f.Transient = TasksWait, Ingress, true
		f.Summary = fmt.Sprintf("the ingress dropped the connection without an answer (%v)", err)
		f.Remedy = "check the ingress logs and its upstream for the node API; bootstrap retries this within its deadline"
		return f
	default:
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			f.Layer, f.Owner, f.Transient = TasksWait, Ingress, true
			if r.Stage < probe.StageHandshake {
				f.Layer, f.Owner = TLSServer, Ingress
				f.Summary = "the TLS handshake with the ingress timed out"
			} else {
				f.Summary = "no answer to tasks/wait before the timeout: the ingress or the API holds the request"
			}
			f.Remedy = "check the ingress and node API are responsive; node_api.wait_timeout must stay below the ingress's response timeout"
			return f
		}
		f.Layer, f.Owner, f.Transient = TCP, Network, true
		f.Summary = fmt.Sprintf("the request to %s failed: %v", r.Host, err)
		f.Remedy = "check the network path to the node API"
		return f
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func alertSummary(err error, r *probe.Result, when string) string {
	msg := err.Error()
	if i := strings.Index(msg, "remote error: "); i >= 0 {
		msg = msg[i:]
	}
	return fmt.Sprintf("the ingress rejected the node's client certificate %s: %s", when, msg)
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
		what = bodyExcerpt(r.Body)
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
	if !r.ClientCertAsked {
		f.add("note", "the ingress never asked for a client certificate: mTLS is not enabled on this route")
		if f.Owner == API && present == nil {
			f.Owner = Ingress
			f.Remedy = "enable client-certificate authentication (the mTLS TLS option) on the node API route and forward the certificate to the API"
		}
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
