package reliability

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/tests/controlplane"
)

// TestRetryDelayFullJitter samples retry.Policy.Delay: every delay lies in
// [0, ceil) with ceil = min(Cap, Base*2^attempt), the samples spread over the
// whole range (mean near ceil/2, minimum near 0, maximum near ceil), so nodes
// that failed together do not retry together.
func TestRetryDelayFullJitter(t *testing.T) {
	p := retry.Policy{Base: 500 * time.Millisecond, Cap: 30 * time.Second}
	const n = 4000
	samples := 0
	for attempt := 0; attempt < 10; attempt++ {
		ceil := min(p.Cap, p.Base<<attempt)
		var sum, lo, hi time.Duration
		lo = ceil
		for i := 0; i < n; i++ {
			d := p.Delay(attempt, 0)
			if d < 0 || d >= ceil {
				t.Fatalf("attempt %d: delay %s outside [0, %s)", attempt, d, ceil)
			}
			sum += d
			lo, hi = min(lo, d), max(hi, d)
			samples++
		}
		mean := sum / n
		// Uniform: the mean's standard deviation is ceil/sqrt(12n) ~ 0.5%.
		if mean < ceil*45/100 || mean > ceil*55/100 {
			t.Errorf("attempt %d: mean %s, want about %s (full jitter)", attempt, mean, ceil/2)
		}
		if lo > ceil/20 || hi < ceil*19/20 {
			t.Errorf("attempt %d: delays span [%s, %s], want most of [0, %s)", attempt, lo, hi, ceil)
		}
	}
	t.Logf("retry-jitter: %d samples over 10 attempts, all within [0, min(cap, base*2^n))", samples)
}

// TestRetryAfterCapped: Retry-After is honoured up to Cap and never beyond,
// as delta-seconds or an HTTP date, only on 429 and 503.
func TestRetryAfterCapped(t *testing.T) {
	p := retry.Policy{Base: 500 * time.Millisecond, Cap: 30 * time.Second}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		status int
		header string
		want   time.Duration // from Backoff; -1: jittered (no Retry-After used)
	}{
		{503, "3600", 30 * time.Second},
		{429, "3600", 30 * time.Second},
		{503, "2", 2 * time.Second},
		{503, now.Add(10 * time.Second).Format(http.TimeFormat), 10 * time.Second},
		{503, now.Add(48 * time.Hour).Format(http.TimeFormat), 30 * time.Second},
		{503, "-5", -1},
		{503, "soon", -1},
		{500, "3600", -1},
		{502, "10", -1},
	}
	for _, tt := range tests {
		resp := &http.Response{StatusCode: tt.status, Header: http.Header{"Retry-After": {tt.header}}}
		got := p.Delay(0, retry.RetryAfter(resp, now))
		if tt.want >= 0 && got != tt.want {
			t.Errorf("%d Retry-After %q: wait %s, want %s", tt.status, tt.header, got, tt.want)
		}
		if tt.want < 0 && got >= p.Base {
			t.Errorf("%d Retry-After %q: wait %s, want a jittered delay below %s", tt.status, tt.header, got, p.Base)
		}
	}
	resp := &http.Response{StatusCode: 503, Header: http.Header{"Retry-After": {"86400"}}}
	if d := p.Backoff(0, 0, 3, resp); d != p.Cap {
		t.Errorf("go-retryablehttp Backoff with Retry-After 86400: %s, want the cap %s", d, p.Cap)
	}
	t.Logf("retry-after: %d cases, Retry-After capped at %s", len(tests)+1, p.Cap)
}

// TestPermanentErrorsStopAtOnce: a 401 invalid node identity from the API is
// requested exactly once; a TLS alert (the ingress does not trust the
// client's CA) costs exactly one connection.
func TestPermanentErrorsStopAtOnce(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	t.Run("401", func(t *testing.T) {
		n := newNode(t, cp, "gpu-401", nil)
		cp.API.FailAlways(controlplane.IdentityFault(true, "node retired"))
		defer cp.API.ClearFaults()
		r := n.bootstrap()
		wantExit(t, r, 18, "layer identity")
		got := 0
		for _, q := range cp.API.Requests() {
			if strings.Contains(q.Path, "/gpu-401/") {
				got++
			}
		}
		if got != 1 {
			t.Errorf("a 401 was requested %d times, want 1", got)
		}
		t.Logf("401: %d request(s), exit %d", got, r.Code)
	})
	t.Run("tls-alert", func(t *testing.T) {
		n := newNode(t, cp, "gpu-alert", nil)
		p := startTCPProxy(t, cp.API.Addr(), 0)
		n.Cfg.NodeAPI.URL = withPort(n.Cfg.NodeAPI.URL, p.port())
		n.RewriteConfig()
		cp.SetClientCAMode(controlplane.ClientCAUnrelated)
		defer cp.SetClientCAMode(controlplane.ClientCAStep)
		r := n.bootstrap()
		wantExit(t, r, 16, "layer tls-client-auth")
		if c := p.conns.Load(); c != 1 {
			t.Errorf("a TLS alert cost %d connections, want 1", c)
		}
		t.Logf("tls alert: %d connection(s), exit %d", p.conns.Load(), r.Code)
	})
}
