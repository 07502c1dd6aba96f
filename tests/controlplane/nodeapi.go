package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultAPIHostname is the node API's name in provision.toml's node_api.url.
const DefaultAPIHostname = "node-api.cp.internal"

// WaitPath is the node API's long-poll route, as a net/http pattern.
const WaitPath = "/v1/nodes/{node_id}/tasks/wait"

// DefaultWait is the long poll's length when the caller sends no ?timeout=.
const DefaultWait = 30 * time.Second

// Caller is what an IdentitySource learned about who sent a request.
type Caller struct {
	// MTLSPresent says whether a client certificate reached the API at all,
	// as a TLS peer or as a forwarded header. It is logged on every rejection:
	// in the incident, "invalid node identity" hid that it was false.
	MTLSPresent bool
	// CommonName is the subject CN of the caller's verified leaf certificate.
	CommonName string
}

// IdentitySource extracts the caller from a request. A non-nil error rejects
// the request with 401; its text becomes the logged and returned reason, and
// the returned Caller's MTLSPresent is still reported. TLSPeerIdentity is the
// default; an API behind an ingress plugs in one that reads the forwarded
// client certificate.
type IdentitySource func(r *http.Request) (Caller, error)

// TLSPeerIdentity takes the caller from the TLS peer's leaf certificate, which
// crypto/tls has already verified against the client CAs.
func TLSPeerIdentity(r *http.Request) (Caller, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return Caller{}, errors.New("no client certificate")
	}
	return Caller{MTLSPresent: true, CommonName: r.TLS.PeerCertificates[0].Subject.CommonName}, nil
}

// Task is what tasks/wait hands a node. ID is always set.
type Task struct {
	ID      string          `json:"id"`
	Kind    string          `json:"kind,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
	// Raw, when set, is the whole body tasks/wait answers with, as is (a
	// numeric id, JSON that is no object, a body of any size); ID is then
	// only the queue's label.
	Raw []byte `json:"-"`
}

// Fault is an answer injected in place of the real one (after Host/SNI
// routing, before identity). Build common ones with StatusFault,
// RetryAfterFault and IdentityFault.
type Fault struct {
	Status int
	Header http.Header // extra response headers, e.g. Retry-After
	Body   string      // default: the status text
	// Identity, when non-nil, makes the fault an identity rejection: the body
	// is the API's 401 JSON and the rejection is logged like a real one.
	Identity *IdentityFailure
}

// IdentityFailure describes an injected identity rejection.
type IdentityFailure struct {
	MTLSPresent bool
	Reason      string
}

// StatusFault answers status with its status text as body.
func StatusFault(status int) Fault { return Fault{Status: status} }

// RetryAfterFault answers status with a Retry-After header of seconds.
func RetryAfterFault(status, seconds int) Fault {
	return Fault{Status: status, Header: http.Header{"Retry-After": {strconv.Itoa(seconds)}}}
}

// IdentityFault answers 401 invalid node identity with mtls_present and reason.
func IdentityFault(mtlsPresent bool, reason string) Fault {
	return Fault{Status: http.StatusUnauthorized, Identity: &IdentityFailure{MTLSPresent: mtlsPresent, Reason: reason}}
}

// Rejection is one logged 401 of the node API.
type Rejection struct {
	Time        time.Time
	NodeID      string
	Path        string
	RemoteAddr  string
	MTLSPresent bool
	Reason      string
	Injected    bool // came from an IdentityFault
}

// Request is one request the node API answered.
type Request struct {
	Time       time.Time
	Method     string
	Host       string
	SNI        string // TLS server name; "" for plain HTTP or no SNI
	Path       string
	RawQuery   string
	Status     int
	PeerCN     string // CN of the TLS peer leaf, if any
	RemoteAddr string
}

// NodeAPIOptions configures NewNodeAPI.
type NodeAPIOptions struct {
	// Hostname is the only Host (and, over TLS, the SNI) routed to the API,
	// like a Traefik Host() rule. Default DefaultAPIHostname.
	Hostname string
	// AnyHost disables Host routing (for example behind an ingress that
	// rewrites Host).
	AnyHost bool
	// PlainHTTP serves plain HTTP on loopback: the API behind an ingress that
	// terminated TLS. ServerCert and ClientCAs are then unused.
	PlainHTTP bool
	// ServerCert is the API's serving certificate (TLS mode).
	ServerCert *tls.Certificate
	// ClientCAs verify client certificates on connections whose SNI is
	// Hostname (TLS mode); such connections RequireAndVerifyClientCert.
	ClientCAs *x509.CertPool
	// OtherSNIClientAuth is the client-auth policy for connections whose SNI
	// is not Hostname (no SNI: a client dialling the IP). Like Traefik's
	// "default" TLS options, the zero value asks for no client certificate.
	OtherSNIClientAuth tls.ClientAuthType
	// Identity extracts the caller; default TLSPeerIdentity.
	Identity IdentitySource
	// Logger receives one record per rejection (and handshake errors at
	// debug level). Default: discarded; read Rejections() instead.
	Logger *slog.Logger
}

// NodeAPI is a test implementation of the control plane's node API: the
// tasks/wait long poll, identity from the caller's certificate, Host/SNI
// routing that behaves like Traefik's, and knobs for the incident's faults.
type NodeAPI struct {
	hostname  string
	anyHost   bool
	plain     bool
	otherAuth tls.ClientAuthType
	identity  IdentitySource
	log       *slog.Logger

	ln      net.Listener
	srv     *http.Server
	mux     *http.ServeMux
	closing chan struct{}
	once    sync.Once
	served  chan struct{}

	mu         sync.Mutex
	serverCert *tls.Certificate
	clientCAs  *x509.CertPool
	brokenTLS  bool
	failNext   []Fault
	always     *Fault
	hold       time.Duration
	queues     map[string][]Task
	wake       map[string]chan struct{}
	rejections []Rejection
	requests   []Request
	taskSeq    int
}

// NewNodeAPI listens on 127.0.0.1:<free port> and serves the node API.
func NewNodeAPI(opts NodeAPIOptions) (*NodeAPI, error) {
	if opts.Hostname == "" {
		opts.Hostname = DefaultAPIHostname
	}
	if opts.Identity == nil {
		opts.Identity = TLSPeerIdentity
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if !opts.PlainHTTP && (opts.ServerCert == nil || opts.ClientCAs == nil) {
		return nil, errors.New("NodeAPIOptions: ServerCert and ClientCAs are required unless PlainHTTP")
	}
	n := &NodeAPI{
		hostname: strings.ToLower(opts.Hostname), anyHost: opts.AnyHost, plain: opts.PlainHTTP,
		otherAuth: opts.OtherSNIClientAuth, identity: opts.Identity, log: opts.Logger,
		closing: make(chan struct{}), served: make(chan struct{}),
		serverCert: opts.ServerCert, clientCAs: opts.ClientCAs,
		queues: map[string][]Task{}, wake: map[string]chan struct{}{},
	}
	n.mux = http.NewServeMux()
	n.mux.HandleFunc("GET "+WaitPath, n.handleWait)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	n.ln = ln
	n.srv = &http.Server{
		Handler:           n,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(n.served)
		if n.plain {
			_ = n.srv.Serve(ln)
			return
		}
		n.srv.TLSConfig = &tls.Config{GetConfigForClient: n.configForClient, MinVersion: tls.VersionTLS12}
		_ = n.srv.Serve(tls.NewListener(ln, n.srv.TLSConfig))
	}()
	return n, nil
}

var errBrokenTLS = errors.New("node API: broken TLS option, connection closed after ClientHello")

// configForClient picks the TLS options by SNI, as Traefik does.
func (n *NodeAPI) configForClient(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	cfg := &tls.Config{
		Certificates: []tls.Certificate{*n.serverCert},
		MinVersion:   tls.VersionTLS12,
		ClientAuth:   n.otherAuth,
		ClientCAs:    n.clientCAs,
	}
	if strings.EqualFold(hello.ServerName, n.hostname) {
		if n.brokenTLS {
			// Traefik's brokenTLSRouter: read the ClientHello, close, no alert.
			hello.Conn.Close()
			return nil, errBrokenTLS
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ServeHTTP routes like an ingress (Host, then SNI), then serves the API. It
// can be mounted in another server, e.g. behind an emulated ingress.
func (n *NodeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	defer func() { n.record(r, rec.status) }()
	if !n.anyHost && !strings.EqualFold(hostOnly(r.Host), n.hostname) {
		// No router for this Host: Traefik's default, Go's http.NotFound.
		http.NotFound(rec, r)
		return
	}
	if r.TLS != nil && !strings.EqualFold(r.TLS.ServerName, n.hostname) {
		http.Error(rec, http.StatusText(http.StatusMisdirectedRequest), http.StatusMisdirectedRequest)
		return
	}
	n.mux.ServeHTTP(rec, r)
}

func (n *NodeAPI) handleWait(w http.ResponseWriter, r *http.Request) {
	nodeID := r.PathValue("node_id")
	if f, ok := n.takeFault(); ok {
		n.writeFault(w, r, nodeID, f)
		return
	}
	n.mu.Lock()
	identity := n.identity
	n.mu.Unlock()
	caller, err := identity(r)
	switch {
	case err != nil:
		n.reject(w, r, nodeID, caller.MTLSPresent, err.Error(), false)
		return
	case caller.CommonName != nodeID:
		n.reject(w, r, nodeID, caller.MTLSPresent,
			fmt.Sprintf("certificate subject %q does not match node %q", caller.CommonName, nodeID), false)
		return
	}
	wait := DefaultWait
	if q := r.URL.Query().Get("timeout"); q != "" {
		d, err := parseTimeout(q)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid timeout", "reason": err.Error()})
			return
		}
		wait = d
	}
	n.mu.Lock()
	hold := n.hold
	n.mu.Unlock()
	if hold > 0 && !n.sleep(r.Context(), hold) {
		// The client gave up (or the API closes): answer nothing. Returning
		// would send an empty 200, which a client racing its own timeout
		// could read as an answer.
		panic(http.ErrAbortHandler)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		task, wake, ok := n.pop(nodeID)
		if ok && task.Raw != nil {
			w.Header().Set("Content-Type", "application/json")
			w.Write(task.Raw)
			return
		}
		if ok {
			writeJSON(w, http.StatusOK, task)
			return
		}
		select {
		case <-wake:
		case <-timer.C:
			w.WriteHeader(http.StatusNoContent)
			return
		case <-r.Context().Done():
			return
		case <-n.closing:
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
	}
}

func (n *NodeAPI) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-n.closing:
		return false
	}
}

// parseTimeout reads ?timeout= as seconds ("1", "0.5"), or a Go duration.
func parseTimeout(s string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f < 0 || f > 3600 {
			return 0, fmt.Errorf("timeout %q out of range", s)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("timeout %q is not a number of seconds", s)
	}
	return d, nil
}

func (n *NodeAPI) takeFault() (Fault, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.failNext) > 0 {
		f := n.failNext[0]
		n.failNext = n.failNext[1:]
		return f, true
	}
	if n.always != nil {
		return *n.always, true
	}
	return Fault{}, false
}

func (n *NodeAPI) writeFault(w http.ResponseWriter, r *http.Request, nodeID string, f Fault) {
	if f.Identity != nil {
		n.reject(w, r, nodeID, f.Identity.MTLSPresent, f.Identity.Reason, true)
		return
	}
	for k, vs := range f.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	body := f.Body
	if body == "" {
		body = http.StatusText(f.Status)
	}
	http.Error(w, body, f.Status)
}

func (n *NodeAPI) reject(w http.ResponseWriter, r *http.Request, nodeID string, mtls bool, reason string, injected bool) {
	rej := Rejection{
		Time: time.Now(), NodeID: nodeID, Path: r.URL.Path, RemoteAddr: r.RemoteAddr,
		MTLSPresent: mtls, Reason: reason, Injected: injected,
	}
	n.mu.Lock()
	n.rejections = append(n.rejections, rej)
	n.mu.Unlock()
	n.log.Warn("node API rejected caller",
		"error", "invalid node identity", "node_id", nodeID, "path", r.URL.Path,
		"mtls_present", mtls, "reason", reason, "remote_addr", r.RemoteAddr)
	writeJSON(w, http.StatusUnauthorized, map[string]any{
		"error": "invalid node identity", "mtls_present": mtls, "reason": reason,
	})
}

func (n *NodeAPI) pop(nodeID string) (Task, <-chan struct{}, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if q := n.queues[nodeID]; len(q) > 0 {
		n.queues[nodeID] = q[1:]
		return q[0], nil, true
	}
	ch, ok := n.wake[nodeID]
	if !ok {
		ch = make(chan struct{})
		n.wake[nodeID] = ch
	}
	return Task{}, ch, false
}

// QueueTask queues task for nodeID; the next tasks/wait of that node gets it.
// An empty ID is filled in. It returns the task as queued.
func (n *NodeAPI) QueueTask(nodeID string, task Task) Task {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.taskSeq++
	if task.ID == "" {
		task.ID = fmt.Sprintf("task-%d-%s", n.taskSeq, randomHex(4))
	}
	n.queues[nodeID] = append(n.queues[nodeID], task)
	if ch, ok := n.wake[nodeID]; ok {
		close(ch)
		delete(n.wake, nodeID)
	}
	return task
}

// Pending is the number of tasks queued for nodeID and not yet delivered.
func (n *NodeAPI) Pending(nodeID string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.queues[nodeID])
}

// FailNext makes the next len(faults) tasks/wait requests answer the given
// faults, in order, e.g. FailNext(RetryAfterFault(503, 1), StatusFault(502)).
func (n *NodeAPI) FailNext(faults ...Fault) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.failNext = append(n.failNext, faults...)
}

// FailAlways makes every tasks/wait request answer f (after any FailNext).
func (n *NodeAPI) FailAlways(f Fault) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.always = &f
}

// HoldFor delays every long poll by d before it looks for a task, to outlast
// a client's or an ingress's timeout. Zero turns it off.
func (n *NodeAPI) HoldFor(d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.hold = d
}

// ClearFaults removes FailNext, FailAlways and HoldFor.
func (n *NodeAPI) ClearFaults() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.failNext, n.always, n.hold = nil, nil, 0
}

// SetBrokenTLS makes connections whose SNI is the hostname close right after
// the ClientHello (Traefik with a broken TLS option: the client sees EOF).
func (n *NodeAPI) SetBrokenTLS(broken bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.brokenTLS = broken
}

// SetClientCAs replaces the pool that verifies client certificates, for new
// connections.
func (n *NodeAPI) SetClientCAs(pool *x509.CertPool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.clientCAs = pool
}

// SetServerCert replaces the serving certificate, for new connections.
func (n *NodeAPI) SetServerCert(cert tls.Certificate) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.serverCert = &cert
}

// SetIdentity replaces the identity source.
func (n *NodeAPI) SetIdentity(src IdentitySource) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.identity = src
}

// Rejections returns a copy of the rejection log.
func (n *NodeAPI) Rejections() []Rejection {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]Rejection(nil), n.rejections...)
}

// Requests returns a copy of the log of answered requests.
func (n *NodeAPI) Requests() []Request {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]Request(nil), n.requests...)
}

func (n *NodeAPI) record(r *http.Request, status int) {
	req := Request{
		Time: time.Now(), Method: r.Method, Host: r.Host, Path: r.URL.Path, RawQuery: r.URL.RawQuery,
		Status: status, RemoteAddr: r.RemoteAddr,
	}
	if r.TLS != nil {
		req.SNI = r.TLS.ServerName
		if len(r.TLS.PeerCertificates) > 0 {
			req.PeerCN = r.TLS.PeerCertificates[0].Subject.CommonName
		}
	}
	n.mu.Lock()
	n.requests = append(n.requests, req)
	n.mu.Unlock()
}

// Hostname is the API's routed hostname.
func (n *NodeAPI) Hostname() string { return n.hostname }

// Addr is the loopback host:port the API listens on.
func (n *NodeAPI) Addr() string { return n.ln.Addr().String() }

// Port is the API's TCP port.
func (n *NodeAPI) Port() int { return n.ln.Addr().(*net.TCPAddr).Port }

// URL is the API's base URL by hostname (https://node-api.cp.internal:<port>),
// or http://127.0.0.1:<port> in PlainHTTP mode.
func (n *NodeAPI) URL() string {
	if n.plain {
		return "http://" + n.Addr()
	}
	return "https://" + net.JoinHostPort(n.hostname, strconv.Itoa(n.Port()))
}

// DialContext dials 127.0.0.1 for the API's hostname; other loopback
// destinations are dialled unchanged, anything else is refused.
func (n *NodeAPI) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return loopbackDialer(map[string]string{n.hostname: "127.0.0.1"})(ctx, network, addr)
}

// Close stops the server, releasing blocked long polls.
func (n *NodeAPI) Close() error {
	var err error
	n.once.Do(func() {
		close(n.closing)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err = n.srv.Shutdown(ctx); err != nil {
			err = n.srv.Close()
		}
		<-n.served
	})
	return err
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// Flush lets long-poll handlers flush through the recorder.
func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
