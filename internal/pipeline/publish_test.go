package pipeline

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/state"
)

// TestCannotAuthenticate: an installed set that cannot stand for the node
// at all (a TPM key lost to a cleared TPM among them) is replaced at once,
// without proving it for the comparison; a stale, exposed or due one is
// compared, since the ingress may still accept it.
func TestCannotAuthenticate(t *testing.T) {
	for _, tc := range []struct {
		reason lifecycle.Reason
		want   bool
	}{
		{lifecycle.Missing, true}, {lifecycle.Unreadable, true}, {lifecycle.KeyMismatch, true}, {lifecycle.KeyLost, true},
		{lifecycle.WrongNode, true}, {lifecycle.NotYetValid, true}, {lifecycle.Expired, true},
		{lifecycle.OtherCA, false}, {lifecycle.BundleStale, false}, {lifecycle.PastRenewal, false},
		{lifecycle.KeyExposed, false}, {lifecycle.KeyWasExposed, false}, {lifecycle.Revoked, false}, // no revocation recorded
	} {
		t.Run(string(tc.reason), func(t *testing.T) {
			proven := false
			r := &Run{Ctx: context.Background(), Log: slog.New(slog.DiscardHandler), Found: &state.Renewal{},
				Opts: Options{Ladder: func(context.Context, *observe.Env, *slog.Logger) []report.Result {
					proven = true
					return nil
				}}}
			j := &Judged{Current: &credstore.Set{}, Verdict: lifecycle.Verdict{Reasons: []lifecycle.Reason{tc.reason}}}
			r.st.judged, r.st.proven = j, &Proven{Report: &report.Report{}}
			if got := r.cannotAuthenticate(j); got != tc.want {
				t.Fatalf("cannotAuthenticate with %s = %v, want %v", tc.reason, got, tc.want)
			}
			if !tc.want {
				return
			}
			ok, why, f := r.decide(&Published{})
			if !ok || f != nil || proven || !strings.Contains(why, "cannot authenticate ("+string(tc.reason)+")") {
				t.Fatalf("decide with %s = %v %q (installed set proven: %v), want published at once, unproven", tc.reason, ok, why, proven)
			}
		})
	}
}
