package retry

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// TestUntil: attempts until done; each wait comes from the policy, or the
// peer's Retry-After capped; a context ended during a wait stops the loop.
func TestUntil(t *testing.T) {
	p := Policy{Base: 100 * time.Millisecond, Cap: time.Second, Rand: func(n int64) int64 { return n - 1 }}
	var waits []time.Duration
	sleep := func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }
	n := Until(context.Background(), p, sleep, func(n int) (bool, time.Duration) {
		switch n {
		case 1:
			return false, 5 * time.Second // Retry-After beyond the cap
		case 3:
			return true, 0
		}
		return false, 0
	})
	if n != 4 || len(waits) != 3 || waits[1] != time.Second {
		t.Fatalf("attempts %d waits %v, want 4 attempts, 3 waits, the second capped at 1s", n, waits)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n = Until(ctx, p, func(context.Context, time.Duration) error { cancel(); return context.Canceled }, func(int) (bool, time.Duration) { return false, 0 })
	if n != 1 {
		t.Fatalf("a cancelled wait must stop the loop after 1 attempt, got %d", n)
	}
}

func TestRetryAfterHeader(t *testing.T) {
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		status int
		v      string
		want   time.Duration
	}{
		{503, "7", 7 * time.Second},
		{429, "2", 2 * time.Second},
		{500, "7", 0},
		{503, "-1", 0},
		{503, now.Add(3 * time.Second).Format(http.TimeFormat), 3 * time.Second},
		{503, "soon", 0},
	} {
		h := http.Header{"Retry-After": {tt.v}}
		if got := RetryAfterHeader(tt.status, h, now); got != tt.want {
			t.Errorf("RetryAfterHeader(%d, %q) = %s, want %s", tt.status, tt.v, got, tt.want)
		}
	}
}
