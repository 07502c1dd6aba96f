// Package retry is provision's one retry policy: capped exponential backoff
// with full jitter, Retry-After honoured but capped, all inside a deadline.
//
// Thousands of GPU nodes power on together after a rack or PDU event. A
// deterministic backoff (go-retryablehttp's default) makes them retry
// together, and an uncapped Retry-After can park a node for hours. Errors
// that retrying cannot fix (a TLS alert, a 401) must stop at once; which
// errors those are is decided by the caller's classifier, not here.
package retry

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// Policy is the backoff schedule.
type Policy struct {
	Base time.Duration // first ceiling; default 500ms
	Cap  time.Duration // largest ceiling and largest honoured Retry-After; default 30s
	// Rand returns a value in [0, n); tests inject a deterministic one.
	Rand func(n int64) int64
}

// Default is the policy provision uses.
var Default = Policy{Base: 500 * time.Millisecond, Cap: 30 * time.Second}

func (p Policy) base() time.Duration {
	if p.Base <= 0 {
		return 500 * time.Millisecond
	}
	return p.Base
}

func (p Policy) cap() time.Duration {
	if p.Cap <= 0 {
		return 30 * time.Second
	}
	return p.Cap
}

// Delay returns the wait before retry number attempt (0-based): a uniformly
// random duration in [0, min(Cap, Base*2^attempt)), or the server's
// Retry-After clamped to Cap when the server sent one.
func (p Policy) Delay(attempt int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return min(retryAfter, p.cap())
	}
	ceil := p.base()
	for i := 0; i < attempt && ceil < p.cap(); i++ {
		ceil *= 2
	}
	ceil = min(ceil, p.cap())
	rnd := p.Rand
	if rnd == nil {
		rnd = rand.Int64N
	}
	return time.Duration(rnd(int64(ceil)))
}

// RetryAfter parses a Retry-After header from a 429 or 503 response, as
// delta-seconds or an HTTP date; 0 when absent or not applicable.
func RetryAfter(resp *http.Response, now time.Time) time.Duration {
	if resp == nil {
		return 0
	}
	return RetryAfterHeader(resp.StatusCode, resp.Header, now)
}

// RetryAfterHeader is RetryAfter for a status and headers recorded
// elsewhere (the probe's), without building a response.
func RetryAfterHeader(status int, h http.Header, now time.Time) time.Duration {
	if status != http.StatusTooManyRequests && status != http.StatusServiceUnavailable {
		return 0
	}
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s < 0 {
			return 0
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

// Until is the project's one retry loop: it calls attempt (n counts from
// 0) until attempt reports done, sleeping between calls by p (capped full
// jitter, or the peer's Retry-After up to the cap), and stops when ctx
// ends during a wait. It returns how many attempts were made. The caller
// decides inside attempt what is transient: a permanent failure is done.
func Until(ctx context.Context, p Policy, sleep func(context.Context, time.Duration) error, attempt func(n int) (done bool, retryAfter time.Duration)) int {
	if sleep == nil {
		sleep = Sleep
	}
	for n := 0; ; n++ {
		done, ra := attempt(n)
		if done || ctx.Err() != nil {
			return n + 1
		}
		if sleep(ctx, p.Delay(n, ra)) != nil {
			return n + 1
		}
	}
}

// Sleep waits d or until ctx ends, whichever is first.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Backoff adapts Policy to go-retryablehttp.
func (p Policy) Backoff(_, _ time.Duration, attempt int, resp *http.Response) time.Duration {
	return p.Delay(attempt, RetryAfter(resp, time.Now()))
}

// NewClient returns a go-retryablehttp client with provision's policy: the
// given transport and retry check (the caller's: which answers are worth
// another attempt is the client's to know, never this package's), jittered capped backoff, no logger (the
// caller logs outcomes), at most maxRetries retries. The context deadline of
// each request bounds the whole exchange.
func NewClient(rt http.RoundTripper, check retryablehttp.CheckRetry, maxRetries int, p Policy) *retryablehttp.Client {
	c := retryablehttp.NewClient()
	c.HTTPClient = &http.Client{Transport: rt}
	c.Logger = nil
	c.RetryMax = maxRetries
	c.CheckRetry = check
	c.Backoff = p.Backoff
	c.ErrorHandler = retryablehttp.PassthroughErrorHandler
	return c
}

// Do is Until for callers that speak in errors: it calls fn until it
// succeeds, returns an error retrying cannot fix (retryable false), or ctx
// ends. It returns fn's last error (not the context's, so a deadline shows
// the real failure) and the attempts made.
func Do(ctx context.Context, p Policy, sleep func(context.Context, time.Duration) error, fn func(attempt int) (retryable bool, err error)) (int, error) {
	var err error
	n := Until(ctx, p, sleep, func(attempt int) (bool, time.Duration) {
		var retryable bool
		retryable, err = fn(attempt)
		return err == nil || !retryable, 0
	})
	return n, err
}
