// Package probe makes the one request that proves a node is done: an mTLS
// GET of the node API's tasks/wait, by hostname, through the ingress, with
// the credentials read back from disk, exactly as the node-agent will poll.
//
// It records how far the exchange got (resolved, connected, server
// certificate seen and verified, client certificate requested, response) so
// that diag can name the failing layer. Under TLS 1.3 a client certificate
// the server rejects does not fail the handshake: the alert arrives on the
// first read. A bare handshake would report success, so the probe always
// sends a real request and reads the answer.
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
	"strings"
	"sync"
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

// Stage is how far the exchange got.
type Stage int

// The stages, in order.
const (
	StageNone      Stage = iota
	StageConnected       // TCP connection established
	StageHandshake       // TLS handshake completed
	StageResponse        // HTTP response headers received
)

// Result is everything the probe observed.
type Result struct {
	URL        string
	Host       string
	RemoteAddr string
	Stage      Stage
	Err        error // the error that stopped the exchange, if any

	ServerCertSeen  bool
	ServerChain     []*x509.Certificate // as presented, leaf first
	ClientCertAsked bool
	AcceptableCAs   []string // subjects the server said it accepts for client auth
	ClientCertSent  bool
	TLSVersion      uint16

	Status   int
	Header   http.Header
	Body     []byte // at most MaxBody
	Date     time.Time
	Duration time.Duration
}

// MaxBody caps what the probe keeps of a response body.
const MaxBody = 64 << 10

// Do performs the probe. It never retries; the caller decides.
func Do(ctx context.Context, r Request) *Result {
	res := &Result{URL: r.URL}
	start := time.Now()
	defer func() { res.Duration = time.Since(start) }()
	u, err := url.Parse(r.URL)
	if err != nil {
		res.Err = err
		return res
	}
	res.Host = u.Hostname()
	var mu sync.Mutex
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    r.Roots,
		ServerName: u.Hostname(),
		Time:       r.Now,
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			mu.Lock()
			defer mu.Unlock()
			res.ClientCertAsked = true
			for _, raw := range cri.AcceptableCAs {
				res.AcceptableCAs = append(res.AcceptableCAs, subjectString(raw))
			}
			if r.Cert == nil {
				return &tls.Certificate{}, nil
			}
			res.ClientCertSent = true
			return r.Cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			mu.Lock()
			defer mu.Unlock()
			res.ServerCertSeen = len(cs.PeerCertificates) > 0
			res.ServerChain = cs.PeerCertificates
			return nil
		},
	}
	tr := &http.Transport{
		Proxy:                 nil,
		DisableKeepAlives:     true,
		ForceAttemptHTTP2:     false,
		ResponseHeaderTimeout: r.Timeout + r.Wait,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dctx, cancel := context.WithTimeout(ctx, r.Timeout)
			defer cancel()
			raw, err := r.Dial(dctx, network, addr)
			if err != nil {
				return nil, err
			}
			mu.Lock()
			res.Stage = StageConnected
			res.RemoteAddr = raw.RemoteAddr().String()
			mu.Unlock()
			c := tls.Client(raw, tlsConf)
			if err := c.HandshakeContext(dctx); err != nil {
				raw.Close()
				var cve *tls.CertificateVerificationError
				if errors.As(err, &cve) {
					mu.Lock()
					res.ServerCertSeen = len(cve.UnverifiedCertificates) > 0
					res.ServerChain = cve.UnverifiedCertificates
					mu.Unlock()
				}
				return nil, &HandshakeError{Err: err}
			}
			mu.Lock()
			res.Stage = StageHandshake
			res.TLSVersion = c.ConnectionState().Version
			mu.Unlock()
			return c, nil
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	rctx, cancel := context.WithTimeout(ctx, 2*r.Timeout+r.Wait)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, r.URL, nil)
	if err != nil {
		res.Err = err
		return res
	}
	req.Header.Set("User-Agent", "provision")
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		res.Err = unwrapURL(err)
		return res
	}
	defer resp.Body.Close()
	mu.Lock()
	res.Stage = StageResponse
	mu.Unlock()
	res.Status = resp.StatusCode
	res.Header = resp.Header
	res.Date, _ = http.ParseTime(resp.Header.Get("Date"))
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
	res.Body = body
	if err != nil {
		res.Err = err
	}
	return res
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

// Task is a task the API handed out in answer to the proof.
type Task struct {
	ID  string
	Raw json.RawMessage
}

// TaskFrom extracts a task from a 200 answer. A body that is not a JSON
// object with an "id" still counts as a task: it must not be lost.
func TaskFrom(body []byte) Task {
	var m struct {
		ID any `json:"id"`
	}
	t := Task{Raw: json.RawMessage(bytes.TrimSpace(body))}
	if json.Unmarshal(body, &m) == nil && m.ID != nil {
		t.ID = strings.TrimSpace(fmt.Sprint(m.ID))
	}
	if !json.Valid(t.Raw) {
		b, _ := json.Marshal(string(body))
		t.Raw = b
	}
	return t
}
