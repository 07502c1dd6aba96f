// Package enroll talks to step-ca: it fetches the CA's current roots with the
// root pinned by fingerprint, judges whether the node's certificate still
// belongs to that CA, and redeems a one-time token for a new certificate with
// a key generated on the node.
//
// The incident's third defect was node certificates issued by a transient CA
// that the ingress did not trust. A certificate that merely has not expired is
// therefore not good enough: Assess keeps one only if it chains to one of the
// CA's *current* roots, so a CA correction is followed by re-enrollment
// without anyone deleting files by hand.
//
// After enrollment the node's certificate is its credential: Renew renews
// it over mTLS (or rekeys), Revoke revokes it; once it has expired, mTLS
// is impossible and RenewExpired renews it by step-ca's token flow where
// the CA's provisioner allows renewal after expiry (expired.go). A 401 to
// any of them names no cause, so CheckRevocation reads the CA's CRL for
// evidence before anyone calls a certificate revoked (revocation.go).
//
// Nothing here touches files; the caller reads the token and stores results.
package enroll

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/ca"
	"github.com/smallstep/certificates/errs"
	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/x509util"

	"github.com/gpuaas/provision/internal/retry"
)

// newCAClient builds the smallstep client. ca.DisableIdentity is a global
// of that package, set here where the client is built rather than at
// import time: a step identity under $STEPPATH on the node (left by an
// operator's `step ca bootstrap`) must never be presented to the CA instead
// of the credentials provision manages, and the client would otherwise
// load it into every request's TLS config.
func newCAClient(url string, opts ...ca.ClientOption) (*ca.Client, error) {
	disableIdentity.Do(func() { ca.DisableIdentity = true }) // once: concurrent clients must not race on it
	return ca.NewClient(url, opts...)
}

var disableIdentity sync.Once

// Kind says what went wrong talking to the CA, for the classifier.
type Kind string

// The kinds of enrollment failure.
const (
	Unreachable   Kind = "unreachable"    // dial, TLS or timeout: retryable
	TrustMismatch Kind = "trust-mismatch" // the CA's TLS certificate does not chain to the pinned root: permanent
	Unavailable   Kind = "unavailable"    // 429/5xx from the CA: retryable
	NotStepCA     Kind = "not-step-ca"    // a non-JSON answer: something else answered
	PinMismatch   Kind = "pin-mismatch"   // the served root does not match ca.fingerprint
	BadRoot       Kind = "bad-root"       // the pinned root is not a self-signed CA
	TokenMissing  Kind = "token-missing"  // no token file or empty
	TokenInvalid  Kind = "token-invalid"  // not a JWT, or claims unusable
	TokenMismatch Kind = "token-mismatch" // for another node, or another CA
	TokenExpired  Kind = "token-expired"  // exp passed (or nbf ahead) by the node's clock
	TokenRejected Kind = "token-rejected" // the CA answered 401: used, expired or unknown
	Forbidden     Kind = "forbidden"      // the CA answered 403: SAN/policy mismatch
	CARejected    Kind = "ca-rejected"    // any other 4xx
	BadResponse   Kind = "bad-response"   // certificate that does not fit the key or the node
	KeyFailed     Kind = "key-store"      // the node's key store (its TPM) made or signed nothing: nothing was sent
)

// Error is an enrollment failure with its kind and evidence.
type Error struct {
	Kind   Kind
	Op     string // "fetch pinned root", "fetch roots", "sign"
	Status int    // HTTP status when the CA answered
	Err    error
	// RetryAfter is the CA's Retry-After on a 429 or 503, for the caller's
	// one retry loop.
	RetryAfter time.Duration
	// NotSent is set by Sign when no request was written (see NotSent).
	NotSent bool
}

func (e *Error) Error() string {
	if e.Status > 0 {
		return fmt.Sprintf("%s: CA answered %d: %v", e.Op, e.Status, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Op, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Transient reports whether waiting and trying again could help.
func (e *Error) Transient() bool { return e.Kind == Unreachable || e.Kind == Unavailable }

// Client is a step-ca client for one CA URL and pinned fingerprint. Every
// connection goes through Dial, so the CA hostname resolves the way the
// node-agent's would.
type Client struct {
	URL         *url.URL
	Fingerprint string // lowercase hex SHA-256 of the root DER
	Dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	Timeout     time.Duration // per request
	Retries     int           // retries of idempotent GETs
	Policy      retry.Policy
	Now         func() time.Time
	// Known are roots the node already trusts from an earlier authenticated
	// fetch (its ca.pem). They are trusted, beside the pinned root, for the
	// connection that fetches /roots and /federation: after a root rotation
	// the CA's TLS certificate chains to the new root while the pin still
	// names the old one (then federated).
	Known []*x509.Certificate
	// NewKey makes the node's new key for an enrollment or a rekey: in a
	// TPM, when the config keeps the key there. nil makes a software
	// P-256 key.
	NewKey func() (crypto.Signer, error)
}

// newKey makes the node's next key (see NewKey). A failure is KeyFailed
// and NotSent: it happens before any request.
func (c *Client) newKey(op string) (crypto.Signer, error) {
	var k crypto.Signer
	var err error
	if c.NewKey != nil {
		k, err = c.NewKey()
	} else {
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		return nil, &Error{Kind: KeyFailed, Op: op, Err: fmt.Errorf("making the node's new key: %w", err), NotSent: true}
	}
	return k, nil
}

// Roots is what the CA says its trust is right now.
type Roots struct {
	Pinned  *x509.Certificate   // the root ca.fingerprint names
	Current []*x509.Certificate // GET /roots, fetched over a connection trusting only Pinned
	// Federated are the roots GET /federation adds to Current: roots the
	// CA vouches for that it does not issue under (an old root during a
	// rotation, or a peer CA's).
	Federated []*x509.Certificate
	// PinRetired is set when the CA no longer knows the pinned root at all
	// (a rotation that dropped it) and trust followed the rotation through
	// the roots the node already held (Client.Known): Pinned is then nil.
	PinRetired bool
	// ServerDate is the CA's clock (its Date header), and DateAt the node
	// clock at the instant the answer carrying it arrived: the clock check
	// compares the two (lifecycle.Skew), never ServerDate with the clock of
	// a later moment, whose distance would be the observation's age and
	// not skew. Both come only from an answer over a connection
	// authenticated by the pinned root or the roots the node holds (never
	// the unverified pinned-root fetch: anyone answering on the CA's address
	// can write a Date there). Zero when no such answer came.
	ServerDate, DateAt time.Time
}

// observeDate records the Date of an answer that came over an
// authenticated connection, with the node clock now (its arrival).
func (r *Roots) observeDate(resp *http.Response, now time.Time) {
	if resp == nil {
		return
	}
	if d, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
		r.ServerDate, r.DateAt = d, now
	}
}

// Pool returns the current roots as a pool.
func (r *Roots) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range r.Current {
		p.AddCert(c)
	}
	return p
}

// Bundle is what ca.pem holds: the current roots, then the federated ones,
// each once. A node trusts every root the CA vouches for, so a server
// certificate from either side of a rotation verifies.
func (r *Roots) Bundle() []*x509.Certificate {
	out := append([]*x509.Certificate(nil), r.Current...)
	for _, f := range r.Federated {
		dup := false
		for _, c := range out {
			if c.Equal(f) {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, f)
		}
	}
	return out
}

// Newest is the current root issued last (by NotBefore): the one a
// certificate should chain to once a rotation is complete.
func (r *Roots) Newest() *x509.Certificate {
	var n *x509.Certificate
	for _, c := range r.Current {
		if n == nil || c.NotBefore.After(n.NotBefore) {
			n = c
		}
	}
	return n
}

// PEM returns the CA bundle (Bundle) in PEM, as ca.pem holds it.
func (r *Roots) PEM() []byte {
	var b bytes.Buffer
	for _, c := range r.Bundle() {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// Fingerprint is the lowercase hex SHA-256 of a certificate's DER, the form
// step uses.
func Fingerprint(c *x509.Certificate) string {
	return x509util.Fingerprint(c)
}

func (c *Client) transport(tlsConf *tls.Config) *http.Transport {
	return &http.Transport{
		Proxy:               nil, // an HTTPS_PROXY must not carry enrollment traffic
		DialContext:         c.Dial,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: c.Timeout,
		DisableKeepAlives:   true,
	}
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Client) get(ctx context.Context, rt http.RoundTripper, path string) (*http.Response, []byte, error) {
	return c.getLimit(ctx, rt, path, 1<<20)
}

// getLimit is get reading at most limit+1 bytes of the body, so a caller
// can tell a body that exceeds limit from one that fits.
func (c *Client) getLimit(ctx context.Context, rt http.RoundTripper, path string, limit int64) (*http.Response, []byte, error) {
	rc := retry.NewClient(rt, checkGET, c.Retries, c.Policy)
	u := c.URL.ResolveReference(&url.URL{Path: path})
	rctx, cancel := context.WithTimeout(ctx, c.Timeout*time.Duration(c.Retries+1)+c.Policy.Cap*time.Duration(c.Retries))
	defer cancel()
	req, err := retryablehttp.NewRequestWithContext(rctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("User-Agent", "provision")
	// Remember the CA's last answer: when the deadline cuts a retry wait
	// short, retryablehttp returns only the context error, and the report
	// would blame the network for what was a 503 from the CA.
	var mu sync.Mutex
	var last *http.Response
	rc.ResponseLogHook = func(_ retryablehttp.Logger, r *http.Response) {
		mu.Lock()
		last = &http.Response{StatusCode: r.StatusCode, Header: r.Header.Clone()}
		mu.Unlock()
	}
	// A retry dials anew (a kept-alive connection would send it to the
	// same CA instance behind a balancer that just failed it).
	rc.RequestLogHook = func(_ retryablehttp.Logger, _ *http.Request, attempt int) {
		if ci, ok := rt.(interface{ CloseIdleConnections() }); ok && attempt > 0 {
			ci.CloseIdleConnections()
		}
	}
	resp, err := rc.Do(req)
	if err != nil {
		mu.Lock()
		defer mu.Unlock()
		if resp == nil && last != nil {
			resp = last
		}
		return resp, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	return resp, body, err
}

func classifyHTTP(op string, resp *http.Response, body []byte, err error) *Error {
	// A failure after an error status (the deadline cut a retry wait
	// short) is that answer's. After a success status the body could not
	// be read in time (a CA loaded by a boot storm): that is a transport
	// failure to retry, not the CA's verdict.
	if err != nil && resp != nil && resp.StatusCode >= 400 {
		e := &Error{Kind: Unavailable, Op: op, Status: resp.StatusCode,
			Err: fmt.Errorf("gave up at the deadline; the CA's last answer was %d (%v)", resp.StatusCode, err)}
		if resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
			e.Kind = CARejected
		}
		return e
	}
	if err != nil && resp != nil && resp.StatusCode > 0 {
		err = fmt.Errorf("the CA answered %d but its body did not arrive: %w", resp.StatusCode, err)
	}
	if err != nil {
		var cve *tls.CertificateVerificationError
		if errors.As(err, &cve) {
			// Whoever answers for ca.url is not the CA the pin names (a
			// TLS-intercepting proxy, or another endpoint behind the name):
			// waiting cannot change that.
			return &Error{Kind: TrustMismatch, Op: op, Err: notPinned(err)}
		}
		if IsTLSAlert(err) {
			return &Error{Kind: Unreachable, Op: op, Err: fmt.Errorf("TLS to the CA failed: %w", err)}
		}
		return &Error{Kind: Unreachable, Op: op, Err: err}
	}
	if resp.StatusCode < 400 {
		return nil
	}
	e := &Error{Op: op, Status: resp.StatusCode, Err: caMessage(body)}
	switch {
	case resp.StatusCode == 429 || (resp.StatusCode >= 500 && resp.StatusCode != 501):
		e.Kind = Unavailable
	case !json.Valid(body):
		e.Kind = NotStepCA
		e.Err = fmt.Errorf("the answer is not a step-ca JSON error, so something other than step-ca answered: %q", excerpt(body))
	case resp.StatusCode == 401:
		e.Kind = TokenRejected
	case resp.StatusCode == 403:
		e.Kind = Forbidden
	default:
		e.Kind = CARejected
	}
	return e
}

func caMessage(body []byte) error {
	var m struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &m) == nil && m.Message != "" {
		return errors.New(m.Message)
	}
	return errors.New(excerpt(body))
}

func excerpt(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// FetchRoots fetches the CA's current and federated roots, trusted through
// the pinned root (and Known), over one connection when nothing fails.
//
// The first request, /roots, goes over a connection whose handshake does
// not verify the server, and nothing of its answer is trusted until that
// connection is: among the roots it lists, the one with the pinned
// fingerprint (step's own "pinned trust on first use") must be a
// self-signed CA, and the connection's certificate chain is then verified
// against it and the CA's hostname, as a handshake would. Only then are the
// answer's roots and its Date taken (the Date with the node clock of its
// arrival), and /federation is asked over the verified connection; any
// connection dialled after that is verified in its handshake (pinTrust).
// Nothing secret is sent before the server is verified, nothing it said
// is used unverified, and a second TLS handshake (about 1.7 ms of CPU at
// the node and the CA each) and a request of their own for the pinned root
// are saved.
//
// When /roots does not list the pinned root (it was retired into the
// federation, or ca.fingerprint is wrong), the pinned root is fetched by
// itself first, as step does (pinnedFirst), which also tells those apart.
func (c *Client) FetchRoots(ctx context.Context) (*Roots, error) {
	trust := &pinTrust{host: c.URL.Hostname(), now: c.now}
	tr := c.transport(&tls.Config{InsecureSkipVerify: true, VerifyConnection: trust.verify, ServerName: trust.host, MinVersion: tls.VersionTLS12}) //nolint:gosec // pinned root fetch: /roots verified below against the pinned root it lists, then pinTrust
	tr.DisableKeepAlives = false
	defer tr.CloseIdleConnections()
	resp, body, err := c.get(ctx, tr, "/roots")
	at := c.now()
	out := &Roots{} // no Date until the connection that answered is verified
	if e := classifyHTTP("fetch roots", resp, body, err); e != nil {
		e.RetryAfter = retry.RetryAfter(resp, c.now())
		return out, e
	}
	var rs api.RootsResponse
	if err := json.Unmarshal(body, &rs); err != nil {
		return out, notRoots(body)
	}
	root := pinnedAmong(rs.Certificates, c.Fingerprint)
	if root == nil {
		return c.pinnedFirst(ctx, trust, tr)
	}
	out.Pinned = root
	pool := c.trustPool(root)
	if err := trust.pin(pool, resp.TLS); err != nil {
		c.observeClockOutOfTime(ctx, pool, err, out)
		return out, &Error{Kind: TrustMismatch, Op: "fetch roots", Err: notPinned(err)}
	}
	out.observeDate(resp, at) // the answer came over the connection just verified
	current(out, rs.Certificates, nil)
	return c.federation(ctx, out, root, tr, true)
}

// notRoots is a /roots answer that does not parse as step-ca's.
func notRoots(body []byte) *Error {
	return &Error{Kind: NotStepCA, Op: "fetch roots", Err: fmt.Errorf("the answer is not a step-ca roots response: %q", excerpt(body))}
}

// pinnedAmong is the certificate of certs whose fingerprint is fp, when it
// is a self-signed CA certificate; nil otherwise.
func pinnedAmong(certs []api.Certificate, fp string) *x509.Certificate {
	for _, crt := range certs {
		x := crt.Certificate
		if x == nil || Fingerprint(x) != fp {
			continue
		}
		if x.IsCA && x.CheckSignatureFrom(x) == nil {
			return x
		}
	}
	return nil
}

// pinnedFirst fetches the pinned root by itself, checks it, then fetches
// the CA's current roots over the connection verified against it (and
// Known): FetchRoots' way when /roots does not list the pinned root. The
// pinned root is fetched over tr's connection, not yet verified: the
// answer is checked against the pinned fingerprint before anything trusts
// it, then that connection's certificate chain is verified against it.
func (c *Client) pinnedFirst(ctx context.Context, trust *pinTrust, tr *http.Transport) (*Roots, error) {
	resp, body, err := c.get(ctx, tr, "/root/"+c.Fingerprint)
	out := &Roots{} // no Date from this answer: nothing authenticated it yet
	if e := classifyHTTP("fetch pinned root", resp, body, err); e != nil {
		e.RetryAfter = retry.RetryAfter(resp, c.now())
		if e.Status == 404 && e.Kind == CARejected {
			e.Kind = PinMismatch
			e.Err = fmt.Errorf("the CA does not know a root with fingerprint %s (it answered 404): ca.fingerprint is wrong, or the CA was re-initialised with a new root", c.Fingerprint)
			if r, ok := c.followKnown(ctx, out); ok {
				return r, nil
			}
		}
		return out, e
	}
	var rr api.RootResponse
	if err := json.Unmarshal(body, &rr); err != nil || rr.RootPEM.Certificate == nil {
		return out, &Error{Kind: NotStepCA, Op: "fetch pinned root", Err: fmt.Errorf("the answer is not a step-ca root response: %q", excerpt(body))}
	}
	root := rr.RootPEM.Certificate
	sum := sha256.Sum256(root.Raw)
	if got := hex.EncodeToString(sum[:]); got != c.Fingerprint {
		return out, &Error{Kind: PinMismatch, Op: "fetch pinned root", Err: fmt.Errorf("the CA served a root with fingerprint %s, but ca.fingerprint is %s", got, c.Fingerprint)}
	}
	if !root.IsCA || root.CheckSignatureFrom(root) != nil {
		return out, &Error{Kind: BadRoot, Op: "fetch pinned root", Err: fmt.Errorf("the certificate with fingerprint %s (%s) is not a self-signed CA certificate", c.Fingerprint, root.Subject)}
	}
	out.Pinned = root
	pool := c.trustPool(root)
	if err := trust.pin(pool, resp.TLS); err != nil {
		c.observeClockOutOfTime(ctx, pool, err, out)
		return out, &Error{Kind: TrustMismatch, Op: "fetch roots", Err: notPinned(err)}
	}
	return c.fetchCurrent(ctx, out, root, tr, pool)
}

// followKnown handles a 404 to the pinned-root fetch on a node that holds
// roots from an earlier authenticated fetch (its ca.pem): the pin anchors
// first trust only. The 404 came over the one unverified connection, so it
// proves nothing by itself; the CA's roots are asked for again over a
// connection verified by the roots the node holds, and only that answer
// counts. If it still lists the pinned root, nothing was retired (the 404
// was not the CA's); if not, the CA dropped it (PinRetired, a warning for
// the fleet's config). A node without such roots cannot follow anything.
func (c *Client) followKnown(ctx context.Context, out *Roots) (*Roots, bool) {
	if len(c.Known) == 0 {
		return nil, false
	}
	pool := c.trustPool(nil)
	tr := c.verified(pool)
	defer tr.CloseIdleConnections()
	r, err := c.fetchCurrent(ctx, out, nil, tr, pool)
	if err != nil {
		return nil, false
	}
	for _, x := range append(append([]*x509.Certificate(nil), r.Current...), r.Federated...) {
		if Fingerprint(x) == c.Fingerprint {
			r.Pinned = x
			return r, true
		}
	}
	r.PinRetired = true
	return r, true
}

// trustPool is root (the pinned one; nil after it was retired) and Known:
// what the connection fetching /roots and /federation is verified against.
func (c *Client) trustPool(root *x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	if root != nil {
		pool.AddCert(root)
	}
	for _, k := range c.Known {
		pool.AddCert(k)
	}
	return pool
}

// verified is a transport verifying the CA against pool, keeping its
// connection between requests (the caller closes it).
func (c *Client) verified(pool *x509.CertPool) *http.Transport {
	tr := c.transport(&tls.Config{RootCAs: pool, ServerName: c.URL.Hostname(), MinVersion: tls.VersionTLS12, Time: c.now})
	tr.DisableKeepAlives = false
	return tr
}

// fetchCurrent fetches /roots and /federation through pinned, whose
// connections are verified against pool, trustPool(root). With a pinned
// root, it must be among them.
func (c *Client) fetchCurrent(ctx context.Context, out *Roots, root *x509.Certificate, pinned http.RoundTripper, pool *x509.CertPool) (*Roots, error) {
	resp, body, err := c.get(ctx, pinned, "/roots")
	out.observeDate(resp, c.now()) // any answer came over the verified connection
	if e := classifyHTTP("fetch roots", resp, body, err); e != nil {
		e.RetryAfter = retry.RetryAfter(resp, c.now())
		if e.Kind == TrustMismatch {
			c.observeClockOutOfTime(ctx, pool, err, out)
		}
		return out, e
	}
	var rs api.RootsResponse
	if err := json.Unmarshal(body, &rs); err != nil {
		return out, notRoots(body)
	}
	return c.federation(ctx, out, root, pinned, current(out, rs.Certificates, root))
}

// current adds certs, /roots' answer, to out.Current, and says whether root
// is among them (true for no root: after the pinned one was retired).
func current(out *Roots, certs []api.Certificate, root *x509.Certificate) bool {
	found := root == nil
	for _, crt := range certs {
		if crt.Certificate == nil {
			continue
		}
		out.Current = append(out.Current, crt.Certificate)
		if root != nil && crt.Certificate.Equal(root) {
			found = true
		}
	}
	return found
}

// federation fetches /federation through pinned (verified) into
// out.Federated; root, when given, must be among the current roots (found)
// or the federated ones.
func (c *Client) federation(ctx context.Context, out *Roots, root *x509.Certificate, pinned http.RoundTripper, found bool) (*Roots, error) {
	// The federation: every root the CA vouches for (a superset of /roots).
	resp, body, err := c.get(ctx, pinned, "/federation")
	if e := classifyHTTP("fetch federation", resp, body, err); e != nil {
		return out, e
	}
	var fr api.FederationResponse
	if err := json.Unmarshal(body, &fr); err != nil {
		return out, &Error{Kind: NotStepCA, Op: "fetch federation", Err: fmt.Errorf("the answer is not a step-ca federation response: %q", excerpt(body))}
	}
	for _, crt := range fr.Certificates {
		if crt.Certificate == nil {
			continue
		}
		isCurrent := false
		for _, cur := range out.Current {
			isCurrent = isCurrent || cur.Equal(crt.Certificate)
		}
		if !isCurrent {
			out.Federated = append(out.Federated, crt.Certificate)
		}
		if root != nil && crt.Certificate.Equal(root) {
			found = true
		}
	}
	if !found {
		// The pinned root answered the TLS handshake but is no longer among
		// the roots the CA serves or vouches for: the CA was re-initialised.
		return out, &Error{Kind: PinMismatch, Op: "fetch roots", Err: fmt.Errorf("the CA no longer lists the pinned root %s among its current or federated roots; update ca.fingerprint", c.Fingerprint)}
	}
	return out, nil
}

// observeClockOutOfTime reads the CA's Date when its TLS certificate
// verified against pool except for its validity by the node clock (err):
// once more, verified at an instant inside the certificate's validity. The
// server then proved it holds a key pool vouches for, for the CA's name, so
// its Date is the CA's and tells a skewed node clock from a CA whose
// certificate really expired. Nothing of that answer but its Date is used.
func (c *Client) observeClockOutOfTime(ctx context.Context, pool *x509.CertPool, err error, out *Roots) {
	var cve *tls.CertificateVerificationError
	var inv x509.CertificateInvalidError
	if !errors.As(err, &cve) || !errors.As(err, &inv) || inv.Reason != x509.Expired || len(cve.UnverifiedCertificates) == 0 {
		return
	}
	leaf := cve.UnverifiedCertificates[0]
	within := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	tr := c.transport(&tls.Config{RootCAs: pool, ServerName: c.URL.Hostname(), MinVersion: tls.VersionTLS12, Time: func() time.Time { return within }})
	resp, _, _ := c.get(ctx, tr, "/roots")
	out.observeDate(resp, c.now())
}

// Token is what provision reads from an unverified one-time token. The CA
// verifies the signature; the node only checks the claims it can act on.
type Token struct {
	Subject   string
	SANs      []string
	SHA       string // root fingerprint claim
	Audience  []string
	NotBefore time.Time
	Expiry    time.Time
	raw       string
}

// String never shows the token; it exists so that a Token printed by
// accident leaks nothing.
func (t Token) String() string { return "[token redacted]" }

// Format makes every fmt verb (%v, %+v, %#v, %d, %x, ...) print the redacted
// form, for a Token and a *Token alike. Without it %#v and %d print the
// struct's fields, the raw token among them: fmt does not call String for
// those verbs, nor for unexported fields.
func (t Token) Format(f fmt.State, _ rune) { io.WriteString(f, t.String()) }

// ParseToken parses a JWK-provisioner one-time token without verifying it.
func ParseToken(raw string) (*Token, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, &Error{Kind: TokenMissing, Op: "read token", Err: errors.New("the token is empty")}
	}
	if strings.Count(raw, ".") != 2 || strings.ContainsAny(raw, " \t\r\n") {
		return nil, &Error{Kind: TokenInvalid, Op: "read token", Err: errors.New("not a one-time token (expected a compact JWT: three base64url parts separated by dots)")}
	}
	jws, err := jose.ParseSigned(raw)
	if err != nil {
		return nil, &Error{Kind: TokenInvalid, Op: "read token", Err: errors.New("not a one-time token: the JWT does not parse")}
	}
	var claims struct {
		jose.Claims
		SHA  string   `json:"sha"`
		SANs []string `json:"sans"`
	}
	if err := jws.UnsafeClaimsWithoutVerification(&claims); err != nil {
		return nil, &Error{Kind: TokenInvalid, Op: "read token", Err: errors.New("not a one-time token: its claims do not parse")}
	}
	t := &Token{Subject: claims.Subject, SANs: claims.SANs, SHA: strings.ToLower(claims.SHA), Audience: claims.Audience, raw: raw}
	if claims.NotBefore != nil {
		t.NotBefore = claims.NotBefore.Time()
	}
	if claims.Expiry != nil {
		t.Expiry = claims.Expiry.Time()
	}
	return t, nil
}

// Check refuses a token that cannot work for this node before it is sent:
// sending it would burn it. step-ca allows a minute of clock leeway.
func (t *Token) Check(nodeID, fingerprint string, now time.Time) error {
	if t.Subject != nodeID {
		return &Error{Kind: TokenMismatch, Op: "check token", Err: fmt.Errorf("the token is for subject %q, but node_id is %q", t.Subject, nodeID)}
	}
	if t.SHA != "" && t.SHA != fingerprint {
		return &Error{Kind: TokenMismatch, Op: "check token", Err: fmt.Errorf("the token pins root %s, but ca.fingerprint is %s: the token was minted for another CA", t.SHA, fingerprint)}
	}
	const leeway = time.Minute
	if !t.Expiry.IsZero() && now.After(t.Expiry.Add(leeway)) {
		return &Error{Kind: TokenExpired, Op: "check token", Err: fmt.Errorf("the token expired at %s (node clock says %s)", t.Expiry.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))}
	}
	if !t.NotBefore.IsZero() && now.Add(leeway).Before(t.NotBefore) {
		return &Error{Kind: TokenExpired, Op: "check token", Err: fmt.Errorf("the token is not valid before %s (node clock says %s): check the node clock", t.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))}
	}
	return nil
}

// CheckAudience refuses a token minted for another CA. step-ca accepts a
// one-time token only when its audience is its own sign endpoint
// (https://<ca host>[:port]/1.0/sign, or /sign) and compares it without
// the port; so does this check, against ca.url. The signature stays the
// CA's to verify.
func (t *Token) CheckAudience(caURL string) error {
	ca, err := url.Parse(caURL)
	if err != nil || ca.Hostname() == "" {
		return &Error{Kind: TokenMismatch, Op: "check token", Err: fmt.Errorf("ca.url %q has no host to compare the token's audience with", caURL)}
	}
	base := strings.TrimRight(ca.Path, "/")
	for _, a := range t.Audience {
		u, err := url.Parse(a)
		if err != nil || u.Scheme != "https" || !strings.EqualFold(u.Hostname(), ca.Hostname()) {
			continue
		}
		if p := strings.TrimRight(u.Path, "/"); p == base+"/1.0/sign" || p == base+"/sign" {
			return nil
		}
	}
	if len(t.Audience) == 0 {
		return &Error{Kind: TokenMismatch, Op: "check token", Err: errors.New("the token names no CA (no aud claim): it is not a step-ca one-time token")}
	}
	return &Error{Kind: TokenMismatch, Op: "check token", Err: fmt.Errorf("the token was minted for %q, not for this CA's sign endpoint (%s/1.0/sign): mint it against ca.url", t.Audience[0], strings.TrimRight(caURL, "/"))}
}

// Issued is a freshly signed identity.
type Issued struct {
	Key   crypto.Signer
	Chain []*x509.Certificate // leaf first, then intermediates
}

// Sign makes the node's new key (NewKey: in its TPM, or a software P-256
// key), builds a CSR signed by it from exactly the
// token's subject and SANs (the CA demands a 1:1 match), and redeems the
// token. Only a failure to connect is retried here: step-ca burns the
// token as soon as it sees the request, so this client sends it once. An
// answer that says to come back (429, 5xx) is Unavailable with the CA's
// Retry-After, for the caller's one retry loop (signError says why
// presenting the same token again is safe).
func (c *Client) Sign(ctx context.Context, t *Token, roots *Roots) (*Issued, error) {
	key, err := c.newKey("sign")
	if err != nil {
		return nil, err
	}
	sans := t.SANs
	if len(sans) == 0 {
		sans = []string{t.Subject}
	}
	dns, ips, emails, uris := x509util.SplitSANs(sans)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: t.Subject},
		DNSNames:       dns,
		IPAddresses:    ips,
		EmailAddresses: emails,
		URIs:           uris,
	}, key)
	if err != nil {
		return nil, &Error{Kind: KeyFailed, Op: "sign", Err: fmt.Errorf("signing the CSR with the node's key: %w", err), NotSent: true}
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("parsing CSR: %w", err)
	}

	pinned := c.transport(&tls.Config{RootCAs: roots.Pool(), ServerName: c.URL.Hostname(), MinVersion: tls.VersionTLS12, Time: c.now})
	rc := retry.NewClient(pinned, checkSign, c.Retries, c.Policy)
	// The CA's answer as it came: step's client keeps only the body of an
	// error, and the status and Retry-After decide the caller's retry.
	var mu sync.Mutex
	var last *http.Response
	rc.ResponseLogHook = func(_ retryablehttp.Logger, r *http.Response) {
		mu.Lock()
		last = &http.Response{StatusCode: r.StatusCode, Header: r.Header.Clone()}
		mu.Unlock()
	}
	// Once sent, the sign is waited for until the run's deadline, not just
	// request_timeout: the CA burns the token when it sees the request, so
	// a sign abandoned because a CA under a boot storm answered late costs
	// the node its token. Connecting stays bounded by request_timeout.
	wait := c.Timeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) > wait {
		wait = time.Until(dl)
	}
	client, err := newCAClient(c.URL.String(), ca.WithTransport(&retryablehttp.RoundTripper{Client: rc}), ca.WithTimeout(wait))
	if err != nil {
		return nil, &Error{Kind: Unreachable, Op: "sign", Err: err}
	}
	sctx, cancel := context.WithTimeout(ctx, max(wait, c.Timeout*time.Duration(c.Retries+1)+c.Policy.Cap*time.Duration(c.Retries)))
	defer cancel()
	// The token is in the body, written after the headers: until the
	// headers were written on a connection, nothing of it left the node.
	var wrote atomic.Bool
	sctx = httptrace.WithClientTrace(sctx, &httptrace.ClientTrace{WroteHeaders: func() { wrote.Store(true) }})
	resp, err := client.SignWithContext(sctx, &api.SignRequest{CsrPEM: api.NewCertificateRequest(csr), OTT: t.raw})
	if err != nil {
		mu.Lock()
		defer mu.Unlock()
		e := signError(err, last, c.now())
		e.NotSent = !wrote.Load()
		return nil, e
	}
	chain := chainOf(resp)
	if chain[0] == nil || !publicKeyEqual(chain[0].PublicKey, key.Public()) {
		return nil, &Error{Kind: BadResponse, Op: "sign", Err: errors.New("the CA returned a certificate that does not match the key generated for it")}
	}
	return issued("sign", key, chain, t.Subject)
}

// NotSent reports whether a Sign error happened before the token could
// leave the node (no request was written: the dial or the TLS handshake
// failed or timed out), so the token is unspent. Any other failure, a
// timeout waiting for the answer among them, may have reached the CA.
func NotSent(err error) bool {
	var e *Error
	if errors.As(err, &e) && e.NotSent {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	type eq interface{ Equal(crypto.PublicKey) bool }
	k, ok := a.(eq)
	return ok && k.Equal(b)
}

// signError classifies a failed sign. last is the CA's answer, if one
// came. A 429 or 5xx (but 501) is Unavailable, with the CA's Retry-After,
// whoever answered it (step-ca's JSON, or a balancer's page in front of
// it): the caller may present the same token again, since step-ca burns a
// token the moment it sees it, so a second presentation either is the
// first to reach step-ca or is refused 401 "already used", and nothing is
// signed twice. Retrying is the caller's decision (bootstrap, within its
// deadline); Sign itself sends the request once.
func signError(err error, last *http.Response, now time.Time) *Error {
	if last != nil && (last.StatusCode == 429 || (last.StatusCode >= 500 && last.StatusCode != 501)) {
		e := &Error{Kind: Unavailable, Op: "sign", Status: last.StatusCode, RetryAfter: retry.RetryAfter(last, now)}
		var se *errs.Error
		if errors.As(err, &se) {
			e.Err = errors.New(se.Message())
		} else {
			e.Err = fmt.Errorf("the answer is not step-ca's JSON (a balancer or proxy in front of it answered): %v", err)
		}
		return e
	}
	var se *errs.Error
	if errors.As(err, &se) {
		e := &Error{Op: "sign", Status: se.StatusCode(), Err: errors.New(se.Message())}
		switch s := se.StatusCode(); {
		case s == 401:
			e.Kind = TokenRejected
		case s == 403:
			e.Kind = Forbidden
		default:
			e.Kind = CARejected
		}
		return e
	}
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) || strings.Contains(err.Error(), "tls: failed to verify certificate") {
		return &Error{Kind: TrustMismatch, Op: "sign", Err: notCurrentRoots(err)}
	}
	if strings.Contains(err.Error(), "failed decoding CA error response") {
		e := &Error{Kind: NotStepCA, Op: "sign", Err: notStepCA(err)}
		if last != nil {
			e.Status = last.StatusCode
		}
		return e
	}
	return &Error{Kind: Unreachable, Op: "sign", Err: err}
}

// The CA's answers that are not what was asked for, worded once for every
// request that can get them.

var errNotNodeKey = errors.New("the CA returned a certificate that does not match the node's key")

// renewed is a renewal's answer checked: the certificate is for the node's
// key and its name.
func renewed(op string, key crypto.Signer, chain []*x509.Certificate, name string) (*Issued, error) {
	if chain[0] == nil || !publicKeyEqual(chain[0].PublicKey, key.Public()) {
		return nil, &Error{Kind: BadResponse, Op: op, Err: errNotNodeKey}
	}
	return issued(op, key, chain, name)
}

// issued is the issued set, when the certificate names name.
func issued(op string, key crypto.Signer, chain []*x509.Certificate, name string) (*Issued, error) {
	if chain[0].Subject.CommonName != name {
		return nil, &Error{Kind: BadResponse, Op: op, Err: fmt.Errorf("the CA issued a certificate for %q, not %q", chain[0].Subject.CommonName, name)}
	}
	return &Issued{Key: key, Chain: chain}, nil
}

func notPinned(err error) error {
	return fmt.Errorf("the CA's TLS certificate does not verify against the pinned root: %w", err)
}

func notCurrentRoots(err error) error {
	return fmt.Errorf("the CA's TLS certificate does not verify against its current roots: %w", err)
}

func notStepCA(err error) error {
	return fmt.Errorf("the answer is not a step-ca JSON error, so something other than step-ca answered: %v", err)
}
