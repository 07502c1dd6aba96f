package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDo(t *testing.T) {
	errT, errP := errors.New("transient"), errors.New("permanent")
	noSleep := func(ctx context.Context, _ time.Duration) error { return ctx.Err() }
	tests := []struct {
		name     string
		results  []error // per attempt; retryable unless errP
		cancelAt int     // cancel ctx before this attempt (0: never)
		attempts int
		err      error
	}{
		{"first try", []error{nil}, 0, 1, nil},
		{"transient then ok", []error{errT, errT, nil}, 0, 3, nil},
		{"permanent stops at once", []error{errT, errP, nil}, 0, 2, errP},
		{"deadline returns the last real error", []error{errT, errT, errT, nil}, 2, 2, errT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			n, err := Do(ctx, Policy{Base: time.Millisecond, Cap: time.Millisecond}, noSleep, func(a int) (bool, error) {
				if tt.cancelAt > 0 && a+1 == tt.cancelAt {
					cancel()
				}
				e := tt.results[a]
				return e != errP, e
			})
			if n != tt.attempts || !errors.Is(err, tt.err) && !(err == nil && tt.err == nil) {
				t.Fatalf("Do = %d, %v; want %d, %v", n, err, tt.attempts, tt.err)
			}
		})
	}
}
