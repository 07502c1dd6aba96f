package bootstrap

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/verify"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/fleet"
)

// proxiedNode is a node root whose CA is the real step-ca behind the
// counting fault proxy (the balancer a CA sits behind), with the node API
// reached directly.
func proxiedNode(t *testing.T, requestTimeout string) (*node, *fleet.CAProxy) {
	t.Helper()
	t.Setenv("STEPPATH", t.TempDir())
	cp := controlplane.Start(t, controlplane.Options{})
	proxy, err := fleet.StartCAProxy(cp.CA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	c := cp.NodeConfig(nodeID)
	c.CA.URL = "https://" + net.JoinHostPort(cp.CA.Hostname(), strconv.Itoa(proxy.Port()))
	if requestTimeout != "" {
		c.Bootstrap.RequestTimeout = requestTimeout
	}
	tok, err := cp.Token(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	nf, err := controlplane.WriteNode(t.TempDir(), c, tok)
	if err != nil {
		t.Fatal(err)
	}
	cfg, host := controlplane.LoadNode(t, nf)
	return &node{cp: cp, files: nf, cfg: cfg, host: host}, proxy
}

// signCount is what the proxy saw of the node's signs.
type signCount struct {
	front, atCA, issued int
	// tokenAtCA counts how often the node's one token reached step-ca,
	// tokenIssued how often step-ca accepted it.
	tokenAtCA, tokenIssued int
}

func countSigns(events []fleet.Event) signCount {
	var c signCount
	for _, e := range events {
		if !e.Sign {
			continue
		}
		c.front++
		if e.Forwarded {
			c.atCA++
			c.tokenAtCA++
			if e.Status == 201 {
				c.issued++
				c.tokenIssued++
			}
		}
	}
	return c
}

// TestSignRetriedWithinRun: a sign that meets a transient failure (a 503,
// 429 or 5xx from the balancer in front of step-ca, with or without
// Retry-After, or a TLS handshake that times out) is presented again with
// the same token inside the run, honouring the CA's Retry-After, until the
// CA signs: the run is done, step-ca signed exactly once and the token
// reached step-ca once. An answer lost after step-ca saw the token makes
// the retry meet 401 "already used": the run stops at once with this
// run's earlier attempt named, having signed once. A permanent answer is
// not retried.
func TestSignRetriedWithinRun(t *testing.T) {
	const html502 = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
	tests := []struct {
		name    string
		fault   fleet.Fault
		timeout string // bootstrap.request_timeout
		ok      bool
		front   int             // sign requests at the proxy
		waits   []time.Duration // the Retry-After waits the run must have asked for, in order
		issued  int
		atCA    int
		summary string // in a failed run's summary
	}{
		{"503 without Retry-After", fleet.Fault{Status: 503, FirstSigns: 1}, "", true, 2, nil, 1, 1, ""},
		{"503 with Retry-After, twice", fleet.Fault{Status: 503, RetryAfter: 2, FirstSigns: 2}, "", true, 3, []time.Duration{2 * time.Second, 2 * time.Second}, 1, 1, ""},
		{"429 with Retry-After", fleet.Fault{Status: 429, RetryAfter: 1, FirstSigns: 1}, "", true, 2, []time.Duration{time.Second}, 1, 1, ""},
		{"500 JSON", fleet.Fault{Status: 500, FirstSigns: 1}, "", true, 2, nil, 1, 1, ""},
		{"502 page from the balancer, three times", fleet.Fault{Status: 502, HTML: html502, FirstSigns: 3}, "", true, 4, nil, 1, 1, ""},
		{"TLS handshake timeout", fleet.Fault{StallHandshakes: 1, StallFor: 3 * time.Second}, "1s", true, 1, nil, 1, 1, ""},
		{"answer lost after step-ca signed", fleet.Fault{Status: 503, FirstSigns: 1, LoseAnswer: true}, "", false, 2, nil, 1, 2, "this run's earlier attempt presented this same token"},
		{"403 is not retried", fleet.Fault{Status: 403, FirstSigns: 1}, "", false, 1, nil, 0, 0, "403"},
		{"balancer's 404 page is not retried", fleet.Fault{Status: 404, HTML: "<html>404 Not Found</html>", FirstSigns: 1}, "", false, 1, nil, 0, 0, "not a step-ca JSON error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, proxy := proxiedNode(t, tt.timeout)
			fault := tt.fault
			fault.For = time.Hour
			armed := false
			n.host.Hook = func(step string) {
				if step == "before sign" && !armed { // the fault meets the sign, not the roots fetch
					armed = true
					proxy.SetFault(&fault)
				}
			}
			var mu sync.Mutex
			var waits []time.Duration
			sleep := func(ctx context.Context, d time.Duration) error {
				mu.Lock()
				waits = append(waits, d)
				mu.Unlock()
				return ctx.Err() // the waits are recorded, not slept
			}
			out := Run(context.Background(), n.cfg, n.host, pipeline.Options{Ladder: verify.Ladder, Policy: retry.Default, Sleep: sleep})
			c := countSigns(proxy.Events())
			if out.Report.OK != tt.ok || out.Enrolled != tt.ok {
				t.Fatalf("ok=%v enrolled=%v, want %v: %s", out.Report.OK, out.Enrolled, tt.ok, out.Report.Summary)
			}
			if c.front != tt.front || c.issued != tt.issued || c.atCA != tt.atCA {
				t.Errorf("signs at the proxy %d, at step-ca %d, issued %d; want %d, %d, %d", c.front, c.atCA, c.issued, tt.front, tt.atCA, tt.issued)
			}
			if c.tokenIssued > 1 || (tt.ok && c.tokenAtCA != 1) {
				t.Errorf("the token reached step-ca %d times and was accepted %d times: want accepted at most once, and reaching it once when the run is done", c.tokenAtCA, c.tokenIssued)
			}
			for i, w := range tt.waits {
				if i >= len(waits) || waits[i] != w {
					t.Fatalf("waits %v: want the CA's Retry-After %v first", waits, tt.waits)
				}
			}
			if tt.ok {
				if _, ok := n.pending(t); ok {
					t.Error("the enroll-pending marker survived the enrollment")
				}
				return
			}
			if out.Report.FailedLayer != diag.Enroll || out.Report.Transient || !strings.Contains(out.Report.Summary, tt.summary) {
				t.Errorf("layer %s transient=%v summary %q; want enroll, permanent, naming %q", out.Report.FailedLayer, out.Report.Transient, out.Report.Summary, tt.summary)
			}
			if p, ok := n.pending(t); !ok || p.TokenSHA256 == "" {
				t.Error("no enroll-pending marker, though the token reached the CA (or may have)")
			}
		})
	}
}

// TestSignRetryMarkerBeforeEveryAttempt: the enroll-pending marker names
// the token before every attempt that may reach the CA, the retries
// included (TestPendingMarkerCAUnreachableAtSign: a run whose attempts
// never connected leaves none).
func TestSignRetryMarkerBeforeEveryAttempt(t *testing.T) {
	n, proxy := proxiedNode(t, "")
	raw := readTokenFile(t, n)
	var seen []bool
	n.host.Hook = func(step string) {
		if step == "before sign" {
			p, ok := n.pending(t)
			seen = append(seen, ok && p.TokenSHA256 == sha(raw))
			if len(seen) == 1 {
				proxy.SetFault(&fleet.Fault{Status: 503, FirstSigns: 2, For: time.Hour})
			}
		}
	}
	out := n.run(t)
	if !out.Report.OK || len(seen) != 3 {
		t.Fatalf("ok=%v after %d attempts, want done after 3: %s", out.Report.OK, len(seen), out.Report.Summary)
	}
	for i, ok := range seen {
		if !ok {
			t.Errorf("attempt %d: no marker naming the token before it", i+1)
		}
	}

}

func readTokenFile(t *testing.T, n *node) string {
	t.Helper()
	tok, err := readToken(context.Background(), n.host, n.cfg.CA.TokenFile)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(tok))
}
