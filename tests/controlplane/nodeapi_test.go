package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/certificates/ca"
)

// nodeClient is an mTLS client for the node API: it presents leaf (if any),
// trusts only roots, and dials loopback for the API's hostname. Keep-alives
// are off so every request is a new handshake under the current TLS mode.
func nodeClient(cp *ControlPlane, leaf *Leaf, roots *x509.CertPool) *http.Client {
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if leaf != nil {
		cfg.Certificates = []tls.Certificate{leaf.TLSCertificate()}
	}
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DialContext: cp.API.DialContext, TLSClientConfig: cfg, DisableKeepAlives: true},
	}
}

type apiResult struct {
	status int
	header http.Header
	body   string
	err    error
}

func doGet(c *http.Client, url, host string) apiResult {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return apiResult{err: err}
	}
	if host != "" {
		req.Host = host
	}
	resp, err := c.Do(req)
	if err != nil {
		return apiResult{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return apiResult{status: resp.StatusCode, header: resp.Header, body: string(b), err: err}
}

func waitURL(base, node string) string {
	return base + strings.Replace(WaitPath, "{node_id}", node, 1) + "?timeout=0.2"
}

func TestNodeAPIOverMTLS(t *testing.T) {
	t.Parallel()
	const node = "gpu-0100"
	type setup func(t *testing.T, cp *ControlPlane)
	tests := []struct {
		name       string
		setup      setup
		cert       func(cp *ControlPlane) (*Leaf, error) // nil: no client certificate
		ipURL      bool                                  // dial https://127.0.0.1:port (no SNI)
		host       string                                // Host header override
		wantStatus int
		wantErr    []string // any of these substrings in the transport error
		check      func(t *testing.T, cp *ControlPlane, r apiResult)
	}{
		{
			name: "no task before timeout: 204", cert: nodeCert(node), wantStatus: http.StatusNoContent,
		},
		{
			name: "queued task: 200 with id",
			setup: func(t *testing.T, cp *ControlPlane) {
				cp.API.QueueTask(node, Task{ID: "task-42", Kind: "reboot"})
			},
			cert: nodeCert(node), wantStatus: http.StatusOK,
			check: func(t *testing.T, cp *ControlPlane, r apiResult) {
				var task Task
				if err := json.Unmarshal([]byte(r.body), &task); err != nil || task.ID != "task-42" {
					t.Errorf("task %q: %v", r.body, err)
				}
				if cp.API.Pending(node) != 0 {
					t.Error("task still pending after delivery")
				}
			},
		},
		{
			name: "certificate of another node: 401 mtls_present=true",
			cert: nodeCert("gpu-0999"), wantStatus: http.StatusUnauthorized,
			check: func(t *testing.T, cp *ControlPlane, r apiResult) {
				wantRejection(t, cp, r, true)
			},
		},
		{
			name: "raw IP URL: plain 404 like Traefik's default router", cert: nodeCert(node), ipURL: true,
			wantStatus: http.StatusNotFound,
			check: func(t *testing.T, cp *ControlPlane, r apiResult) {
				if r.body != "404 page not found\n" || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
					t.Errorf("404 body %q type %q", r.body, r.header.Get("Content-Type"))
				}
			},
		},
		{
			name: "unknown Host over the hostname SNI: 404", cert: nodeCert(node), host: "other.cp.internal",
			wantStatus: http.StatusNotFound,
		},
		{
			name: "IP dial (no SNI) with the hostname as Host: 421", cert: nodeCert(node), ipURL: true,
			host: DefaultAPIHostname, wantStatus: http.StatusMisdirectedRequest,
		},
		{
			name:    "no client certificate: handshake refused",
			wantErr: []string{"certificate required", "handshake failure"},
		},
		{
			name:    "stale certificate from an unrelated CA: unknown certificate authority",
			cert:    func(cp *ControlPlane) (*Leaf, error) { return cp.IssueStaleCert(node) },
			wantErr: []string{"unknown certificate authority", "bad certificate"},
		},
		{
			name:    "ingress trusts the wrong CA: unknown certificate authority",
			setup:   func(t *testing.T, cp *ControlPlane) { cp.SetClientCAMode(ClientCAUnrelated) },
			cert:    nodeCert(node),
			wantErr: []string{"unknown certificate authority", "bad certificate"},
		},
		{
			name:    "broken TLS option: EOF before a server certificate",
			setup:   func(t *testing.T, cp *ControlPlane) { cp.SetClientCAMode(ClientCABroken) },
			cert:    nodeCert(node),
			wantErr: []string{"EOF", "connection reset"},
		},
		{
			name: "restored after wrong CA: 204",
			setup: func(t *testing.T, cp *ControlPlane) {
				cp.SetClientCAMode(ClientCAUnrelated)
				cp.SetClientCAMode(ClientCAStep)
			},
			cert: nodeCert(node), wantStatus: http.StatusNoContent,
		},
		{
			name: "injected 503 with Retry-After",
			setup: func(t *testing.T, cp *ControlPlane) {
				cp.API.FailNext(RetryAfterFault(http.StatusServiceUnavailable, 1))
			},
			cert: nodeCert(node), wantStatus: http.StatusServiceUnavailable,
			check: func(t *testing.T, cp *ControlPlane, r apiResult) {
				if r.header.Get("Retry-After") != "1" {
					t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
				}
				if next := doGet(nodeClient(cp, mustLeaf(t, cp, node), cp.CA.PKI().RootPool()), waitURL(cp.API.URL(), node), ""); next.status != http.StatusNoContent {
					t.Errorf("request after the injected fault: %d %v", next.status, next.err)
				}
			},
		},
		{
			name: "injected 401 without forwarded certificate: mtls_present=false",
			setup: func(t *testing.T, cp *ControlPlane) {
				cp.API.FailAlways(IdentityFault(false, "no forwarded client certificate"))
			},
			cert: nodeCert(node), wantStatus: http.StatusUnauthorized,
			check: func(t *testing.T, cp *ControlPlane, r apiResult) {
				wantRejection(t, cp, r, false)
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cp := Start(t, Options{})
			if tc.setup != nil {
				tc.setup(t, cp)
			}
			var leaf *Leaf
			if tc.cert != nil {
				var err error
				if leaf, err = tc.cert(cp); err != nil {
					t.Fatal(err)
				}
			}
			base := cp.API.URL()
			if tc.ipURL {
				base = "https://" + cp.API.Addr()
			}
			r := doGet(nodeClient(cp, leaf, cp.CA.PKI().RootPool()), waitURL(base, node), tc.host)
			if len(tc.wantErr) > 0 {
				if r.err == nil {
					t.Fatalf("got %d %q, want an error containing one of %q", r.status, r.body, tc.wantErr)
				}
				if !containsAny(r.err.Error(), tc.wantErr) {
					t.Fatalf("error %q, want one of %q", r.err, tc.wantErr)
				}
				return
			}
			if r.err != nil || r.status != tc.wantStatus {
				t.Fatalf("got %d %q err=%v, want %d", r.status, r.body, r.err, tc.wantStatus)
			}
			if tc.check != nil {
				tc.check(t, cp, r)
			}
		})
	}
}

// TestNodeAPIAcceptsCertificateFromRealCA proves the whole healthy path: a
// certificate signed by step-ca through a minted token authenticates at the
// node API, whose server certificate the node verifies against the pinned
// root.
func TestNodeAPIAcceptsCertificateFromRealCA(t *testing.T) {
	t.Parallel()
	cp := Start(t, Options{})
	const node = "gpu-0200"
	client := caClient(t, cp.CA, cp.CA.Fingerprint())
	tok, err := cp.Token(node)
	if err != nil {
		t.Fatal(err)
	}
	req, pk, err := ca.CreateSignRequest(tok)
	if err != nil {
		t.Fatal(err)
	}
	sign, err := client.Sign(req)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.TLSCertificate(sign, pk)
	if err != nil {
		t.Fatal(err)
	}
	task := cp.API.QueueTask(node, Task{})
	hc := &http.Client{Transport: &http.Transport{
		DialContext:     cp.API.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: client.GetRootCAs(), Certificates: []tls.Certificate{*cert}},
	}}
	r := doGet(hc, waitURL(cp.API.URL(), node), "")
	if r.err != nil || r.status != http.StatusOK || !strings.Contains(r.body, task.ID) {
		t.Fatalf("got %d %q %v, want 200 with %s", r.status, r.body, r.err, task.ID)
	}
	reqs := cp.API.Requests()
	if len(reqs) != 1 || reqs[0].PeerCN != node || reqs[0].SNI != DefaultAPIHostname {
		t.Errorf("request log %+v", reqs)
	}
}

func TestNodeAPIFollowsRotation(t *testing.T) {
	t.Parallel()
	cp := Start(t, Options{})
	const node = "gpu-0300"
	stale := mustLeaf(t, cp, node)
	oldRoots := cp.CA.PKI().RootPool()
	if err := cp.RotateCA(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		leaf    *Leaf
		roots   *x509.CertPool
		want    int
		wantErr string
	}{
		{"fresh cert, new root", mustLeaf(t, cp, node), cp.CA.PKI().RootPool(), http.StatusNoContent, ""},
		{"stale cert from the old CA", stale, cp.CA.PKI().RootPool(), 0, "unknown certificate authority"},
		{"node still trusting the old root", mustLeaf(t, cp, node), oldRoots, 0, "certificate signed by unknown authority"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := doGet(nodeClient(cp, tc.leaf, tc.roots), waitURL(cp.API.URL(), node), "")
			if tc.wantErr != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr) {
					t.Fatalf("got %d err=%v, want %q", r.status, r.err, tc.wantErr)
				}
				return
			}
			if r.err != nil || r.status != tc.want {
				t.Fatalf("got %d err=%v, want %d", r.status, r.err, tc.want)
			}
		})
	}
}

// TestNodeAPIHoldOutlastsClientTimeout: a held long poll is still pending
// when a client with a shorter deadline gives up.
func TestNodeAPIHoldOutlastsClientTimeout(t *testing.T) {
	t.Parallel()
	cp := Start(t, Options{})
	const node = "gpu-0400"
	cp.API.HoldFor(time.Minute)
	c := nodeClient(cp, mustLeaf(t, cp, node), cp.CA.PKI().RootPool())
	c.Timeout = 300 * time.Millisecond
	r := doGet(c, waitURL(cp.API.URL(), node), "")
	var ne interface{ Timeout() bool }
	if r.err == nil || !errors.As(r.err, &ne) || !ne.Timeout() {
		t.Fatalf("got %d err=%v, want a client timeout", r.status, r.err)
	}
	cp.API.ClearFaults()
	c.Timeout = 10 * time.Second
	if r := doGet(c, waitURL(cp.API.URL(), node), ""); r.status != http.StatusNoContent {
		t.Fatalf("after ClearFaults: %d %v", r.status, r.err)
	}
}

// TestNodeAPIPlainHTTPIdentityIsPluggable runs the same handler as plain
// HTTP (behind an ingress): with the default TLS-peer identity there is no
// client certificate (mtls_present=false), and a plugged-in source decides.
func TestNodeAPIPlainHTTPIdentityIsPluggable(t *testing.T) {
	t.Parallel()
	const node = "gpu-0500"
	fromHeader := func(r *http.Request) (Caller, error) {
		cn := r.Header.Get("X-Test-Client-CN")
		if cn == "" {
			return Caller{}, errors.New("no forwarded client certificate")
		}
		return Caller{MTLSPresent: true, CommonName: cn}, nil
	}
	tests := []struct {
		name     string
		identity IdentitySource
		header   string
		want     int
		wantMTLS bool
	}{
		{"default identity, no TLS: 401 mtls_present=false", nil, "", http.StatusUnauthorized, false},
		{"plugged identity, header absent", fromHeader, "", http.StatusUnauthorized, false},
		{"plugged identity, other node", fromHeader, "gpu-0001", http.StatusUnauthorized, true},
		{"plugged identity, right node: 204", fromHeader, node, http.StatusNoContent, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			api, err := NewNodeAPI(NodeAPIOptions{PlainHTTP: true, AnyHost: true, Identity: tc.identity})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { api.Close() })
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, waitURL(api.URL(), node), nil)
			if tc.header != "" {
				req.Header.Set("X-Test-Client-CN", tc.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d %q, want %d", resp.StatusCode, body, tc.want)
			}
			if tc.want == http.StatusUnauthorized {
				var b struct {
					Error       string `json:"error"`
					MTLSPresent bool   `json:"mtls_present"`
				}
				if err := json.Unmarshal(body, &b); err != nil || b.Error != "invalid node identity" || b.MTLSPresent != tc.wantMTLS {
					t.Errorf("body %q: %v", body, err)
				}
				if rej := api.Rejections(); len(rej) != 1 || rej[0].MTLSPresent != tc.wantMTLS {
					t.Errorf("rejection log %+v", rej)
				}
			}
		})
	}
}

func wantRejection(t *testing.T, cp *ControlPlane, r apiResult, mtls bool) {
	t.Helper()
	var b struct {
		Error       string `json:"error"`
		MTLSPresent *bool  `json:"mtls_present"`
		Reason      string `json:"reason"`
	}
	if err := json.Unmarshal([]byte(r.body), &b); err != nil {
		t.Fatalf("401 body %q: %v", r.body, err)
	}
	if b.Error != "invalid node identity" || b.MTLSPresent == nil || *b.MTLSPresent != mtls || b.Reason == "" {
		t.Errorf("401 body %q, want invalid node identity with mtls_present=%v and a reason", r.body, mtls)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("401 content type %q", ct)
	}
	rej := cp.API.Rejections()
	if len(rej) != 1 || rej[0].MTLSPresent != mtls || rej[0].Reason != b.Reason {
		t.Errorf("rejection log %+v, want one with mtls_present=%v reason %q", rej, mtls, b.Reason)
	}
}

func nodeCert(node string) func(cp *ControlPlane) (*Leaf, error) {
	return func(cp *ControlPlane) (*Leaf, error) { return cp.IssueNodeCert(node) }
}

func mustLeaf(t *testing.T, cp *ControlPlane, node string) *Leaf {
	t.Helper()
	l, err := cp.IssueNodeCert(node)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
