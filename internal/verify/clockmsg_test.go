package verify

import (
	"errors"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/enroll"
)

// TestClockUnchecked: only an answer can lack a Date header.
func TestClockUnchecked(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, "the CA answered without a Date header"},
		{&enroll.Error{Op: "fetch pinned root", Status: 503, Err: errors.New("busy")}, "the CA answered 503 without a Date header"},
		{&enroll.Error{Op: "fetch pinned root", Err: errors.New("dial tcp: lookup ca.cp.internal: no such host")}, "the CA could not be reached, so there is no CA time to compare with (fetch pinned root: dial tcp: lookup ca.cp.internal: no such host)"},
	} {
		if got := clockUnchecked(tc.err); !strings.Contains(got, tc.want) {
			t.Errorf("clockUnchecked(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
