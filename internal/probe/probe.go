// Package probe makes the one request that proves a node is done: an mTLS
// GET of the node API's tasks/wait, by hostname, through the ingress, with
// the credentials read back from disk, exactly as the node-agent will poll.
//
// It records what it saw at each stage of the exchange (connected; server
// certificate seen, then verified for the hostname; client certificate
// requested and sent; handshake finished; first byte of the answer; status
// and headers; the whole body) so that diag can pass each layer only on its
// own evidence and place a failure by the stage it happened at. Under TLS
// 1.3 a client certificate the server rejects does not fail the handshake:
// the alert arrives on the first read. A bare handshake would report
// success, so the probe always sends a real request and reads the answer.
package probe

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
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// Request describes the probe.
type Request struct {
	URL     string           // node_api.url + wait_path + ?timeout=
	Cert    *tls.Certificate // client certificate; nil probes without one
	Roots   *x509.CertPool   // the CA bundle the server must chain to
	Dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	Timeout time.Duration // connect + handshake + response headers, on top of the wait
	Wait    time.Duration // how long the server may hold the long poll
	Now     func() time.Time
}

// Stage is how far the exchange got: the last piece of evidence recorded.
// The stages are ordered; a failure happened at the stage after Stage.
type Stage int

// The stages, in the order an exchange crosses them.
const (
	StageNone           Stage = iota
	StageConnected            // TCP connection established
	StageServerCert           // the server presented a certificate (not yet trusted)
	StageServerVerified       // that certificate chains to Roots and is valid for the hostname
	StageClientCert           // the server asked for a client certificate and the probe's answer went out
	StageHandshake            // the TLS handshake completed on the client
	StageFirstByte            // the server sent application data after the handshake
	StageResponse             // HTTP status and headers read
	StageBody                 // the whole body read, within MaxBody
)

var stageNames = [...]string{"none", "connected", "server-cert", "server-verified", "client-cert", "handshake", "first-byte", "response", "body"}

func (s Stage) String() string {
	if s >= 0 && int(s) < len(stageNames) {
		return stageNames[s]
	}
	return fmt.Sprintf("stage(%d)", int(s))
}

// Result is everything the probe observed.
type Result struct {
	URL        string
	Host       string
	RemoteAddr string
	Stage      Stage
	Err        error // the error that stopped the exchange, if any

	ServerCertSeen  bool
	ServerVerified  bool                // the chain verified against Roots for Host
	ServerChain     []*x509.Certificate // as presented, leaf first
	ClientCertAsked bool
	AcceptableCAs   []string // subjects the server said it accepts for client auth
	ClientCertSent  bool
	// TicketAfterHandshake: a TLS 1.3 server sent a session ticket after
	// the handshake. Servers (OpenSSL, Go) send it only after they verified
	// the client's certificate and Finished, so it proves the certificate
	// was accepted even when no HTTP byte follows.
	TicketAfterHandshake bool
	TLSVersion           uint16

	Status        int
	Header        http.Header
	Body          []byte // at most MaxBody
	BodyTruncated bool   // the body was longer than MaxBody
	// Date is the API's Date header and DateAt the node clock when that
	// answer arrived (Request.Now): a skew is judged between the two.
	Date, DateAt time.Time
	Duration     time.Duration
	// StageAt is when each stage was reached, counted from the start of
	// the exchange like Duration; zero for a stage not reached. It lets
	// each layer be given the time of its own stage (At).
	StageAt [StageBody + 1]time.Duration
}

// At is when the exchange had got as far as stage s: when s was reached,
// or else the latest stage before it that was (zero if none was). An
// exchange that never reached s spent no time past that point on it.
func (r *Result) At(s Stage) time.Duration {
	for ; s > StageNone; s-- {
		if int(s) < len(r.StageAt) && r.StageAt[s] > 0 {
			return r.StageAt[s]
		}
	}
	return 0
}

// MaxBody caps what the probe keeps of an answer that is not a 200: an
// error page or an API error is judged by its first bytes.
const MaxBody = 1 << 20

// MaxTask caps a 200 answer, which carries a task the API has dequeued for
// this node and which must be handed off whole. Real tasks are a few KiB
// of JSON; the bound is far above any of them and still keeps a hostile or
// broken API from filling the node's memory. A 200 longer than this is not
// read whole (BodyTruncated) and so not handed off: diag names that as the
// API's failure, never the route's.
const MaxTask = 16 << 20

// BodyLimit is the cap the probe applied to this answer's body.
func (r *Result) BodyLimit() int {
	if r.Status == http.StatusOK {
		return MaxTask
	}
	return MaxBody
}

// recorder collects evidence from the transport's goroutines. Result is
// built from it once Do is done, so a goroutine the transport leaves behind
// cannot race with the caller reading the Result.
type recorder struct {
	mu    sync.Mutex
	r     Result
	start time.Time
}

func (rec *recorder) reach(s Stage) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if s > rec.r.Stage {
		rec.r.Stage = s
	}
	if s > StageNone && int(s) < len(rec.r.StageAt) && rec.r.StageAt[s] == 0 {
		rec.r.StageAt[s] = max(time.Since(rec.start), time.Nanosecond) // reached, even within the clock's resolution
	}
}

func (rec *recorder) update(f func(r *Result)) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	f(&rec.r)
}

func (rec *recorder) result() *Result {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	r := rec.r
	return &r
}

// ticketWitness is a ClientSessionCache that stores nothing: it only notes
// that a session ticket arrived after the handshake.
type ticketWitness struct{ rec *recorder }

func (ticketWitness) Get(string) (*tls.ClientSessionState, bool) { return nil, false }

func (w ticketWitness) Put(_ string, cs *tls.ClientSessionState) {
	w.rec.update(func(r *Result) {
		if cs != nil && r.Stage >= StageHandshake && r.TLSVersion == tls.VersionTLS13 {
			r.TicketAfterHandshake = true
		}
	})
}

// sentConn records that the client's answer to a certificate request left
// the node: the first write after GetClientCertificate carries it (TLS 1.2
// and 1.3 both send it in the client's next flight).
type sentConn struct {
	net.Conn
	rec      *recorder
	withCert bool
	answer   atomic.Bool
	once     sync.Once
}

func (c *sentConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 && c.answer.Load() {
		c.once.Do(func() {
			c.rec.update(func(r *Result) { r.ClientCertSent = c.withCert })
			c.rec.reach(StageClientCert)
		})
	}
	return n, err
}

// firstByteConn marks StageFirstByte when the server's first application
// bytes arrive: under TLS 1.3 that is the evidence that the server accepted
// the client certificate, even if the HTTP answer is then cut short.
type firstByteConn struct {
	*tls.Conn
	rec  *recorder
	once sync.Once
}

func (c *firstByteConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.once.Do(func() { c.rec.reach(StageFirstByte) })
	}
	return n, err
}

// Do performs the probe. It never retries; the caller decides.
func Do(ctx context.Context, r Request) *Result {
	start := time.Now()
	rec := &recorder{r: Result{URL: r.URL}, start: start}
	finish := func(err error) *Result {
		rec.update(func(res *Result) {
			if err != nil && res.Err == nil {
				res.Err = err
			}
			res.Duration = time.Since(start)
		})
		return rec.result()
	}
	u, err := url.Parse(r.URL)
	if err != nil {
		return finish(err)
	}
	rec.update(func(res *Result) { res.Host = u.Hostname() })
	tr := &http.Transport{
		Proxy:                 nil,
		DisableKeepAlives:     true,
		ForceAttemptHTTP2:     false,
		ResponseHeaderTimeout: r.Timeout + r.Wait,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialTLS(ctx, network, addr, r, u.Hostname(), rec)
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	rctx, cancel := context.WithTimeout(ctx, 2*r.Timeout+r.Wait)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, r.URL, nil)
	if err != nil {
		return finish(err)
	}
	req.Header.Set("User-Agent", "provision")
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return finish(unwrapURL(err))
	}
	defer resp.Body.Close()
	rec.update(func(res *Result) {
		res.Status = resp.StatusCode
		res.Header = resp.Header
		res.Date, _ = http.ParseTime(resp.Header.Get("Date"))
		res.DateAt = time.Now()
		if r.Now != nil {
			res.DateAt = r.Now()
		}
	})
	rec.reach(StageResponse)
	limit := MaxBody
	if resp.StatusCode == http.StatusOK {
		limit = MaxTask
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	truncated := len(body) > limit
	if truncated {
		body = body[:limit]
	}
	rec.update(func(res *Result) { res.Body, res.BodyTruncated = body, truncated })
	if err == nil && !truncated {
		rec.reach(StageBody)
	}
	return finish(err)
}

// dialTLS connects and handshakes, recording each stage as it is reached.
func dialTLS(ctx context.Context, network, addr string, r Request, serverName string, rec *recorder) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	raw, err := r.Dial(dctx, network, addr)
	if err != nil {
		return nil, err
	}
	rec.update(func(res *Result) { res.RemoteAddr = raw.RemoteAddr().String() })
	rec.reach(StageConnected)
	sc := &sentConn{Conn: raw, rec: rec, withCert: r.Cert != nil}
	conf := &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    r.Roots,
		ServerName: serverName,
		Time:       r.Now,
		// Never resumes a session (Get finds none): every probe is a full
		// handshake that presents the certificate, as the node-agent's first.
		ClientSessionCache: ticketWitness{rec},
		// Called only after the server's chain verified for ServerName.
		VerifyConnection: func(cs tls.ConnectionState) error {
			rec.update(func(res *Result) {
				res.ServerCertSeen = len(cs.PeerCertificates) > 0
				res.ServerVerified = len(cs.PeerCertificates) > 0 && len(cs.VerifiedChains) > 0
				res.ServerChain = cs.PeerCertificates
				res.TLSVersion = cs.Version
			})
			rec.reach(StageServerVerified)
			return nil
		},
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			rec.update(func(res *Result) {
				res.ClientCertAsked = true
				for _, raw := range cri.AcceptableCAs {
					res.AcceptableCAs = append(res.AcceptableCAs, subjectString(raw))
				}
				res.TLSVersion = cri.Version
			})
			// Chosen, not yet sent: TLS 1.2 asks before ServerHelloDone and
			// sends with the client's next flight. sentConn records the send.
			sc.answer.Store(true)
			if r.Cert == nil {
				return &tls.Certificate{}, nil
			}
			return r.Cert, nil
		},
	}
	c := tls.Client(sc, conf)
	if err := c.HandshakeContext(dctx); err != nil {
		raw.Close()
		var cve *tls.CertificateVerificationError
		if errors.As(err, &cve) {
			rec.update(func(res *Result) {
				res.ServerCertSeen = len(cve.UnverifiedCertificates) > 0
				res.ServerChain = cve.UnverifiedCertificates
			})
			if len(cve.UnverifiedCertificates) > 0 {
				rec.reach(StageServerCert)
			}
		}
		return nil, &HandshakeError{Err: err}
	}
	rec.update(func(res *Result) { res.TLSVersion = c.ConnectionState().Version })
	rec.reach(StageHandshake)
	return &firstByteConn{Conn: c, rec: rec}, nil
}

// HandshakeError marks an error raised during the TLS handshake, as opposed
// to one raised on the first read after it (TLS 1.3 client-auth alerts).
type HandshakeError struct{ Err error }

func (e *HandshakeError) Error() string { return "TLS handshake: " + e.Err.Error() }
func (e *HandshakeError) Unwrap() error { return e.Err }

func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func subjectString(raw []byte) string {
	var seq pkixName
	if _, err := asn1Unmarshal(raw, &seq); err != nil {
		return fmt.Sprintf("%x", raw)
	}
	return seq.String()
}

// HandedTask returns the task the API handed out in this exchange: a 200
// whose whole body was read and is a JSON object (IsTask). The API has
// dequeued it for this node, so whoever made the request must hand it off,
// whatever the verdict on the rest of the exchange. Any other 200 body is
// not a task (and not a pass: diag says whose it is).
func (r *Result) HandedTask() (Task, bool) {
	if r == nil || r.Status != 200 || r.Stage < StageBody || !IsTask(r.Body) {
		return Task{}, false
	}
	return TaskFrom(r.Body), true
}

// Task is a task the API handed out in answer to the proof.
type Task struct {
	// ID is the task's "id" exactly as the API wrote it: a JSON string
	// unquoted, a number as written (never through a float, which made
	// 12345678901234567891 and ...892 one name), "" for none or another
	// type.
	ID string
	// Raw is the body as received, surrounding space trimmed.
	Raw json.RawMessage
}

// IsTask reports whether body is a task: one JSON object and nothing else.
// null, a list, a string or a number is not, whatever the status said.
func IsTask(body []byte) bool {
	b := bytes.TrimSpace(body)
	return len(b) > 0 && b[0] == '{' && json.Valid(b)
}

// TaskFrom reads a task from a 200 answer: its exact ID and its bytes.
// Callers hand off only what IsTask accepts.
func TaskFrom(body []byte) Task {
	t := Task{Raw: json.RawMessage(bytes.TrimSpace(body))}
	if !IsTask(t.Raw) {
		return t
	}
	var m struct {
		ID json.RawMessage `json:"id"`
	}
	if json.Unmarshal(t.Raw, &m) != nil || len(m.ID) == 0 {
		return t
	}
	switch c := m.ID[0]; {
	case c == '"':
		var s string
		if json.Unmarshal(m.ID, &s) == nil {
			t.ID = s
		}
	case c == '-' || c >= '0' && c <= '9':
		t.ID = string(m.ID) // a JSON number, as the API wrote it
	}
	return t
}
