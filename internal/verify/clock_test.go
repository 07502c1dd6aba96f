package verify_test

import (
	"os"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/tests/controlplane"
)

// TestClockSaysWhyNotChecked: when the clock cannot be compared with the
// CA's, the check says why, truthfully: a CA that was never reached (the
// hosts block is missing, so its name does not resolve; or it is down) did
// not "send no Date header" (issue 25).
func TestClockSaysWhyNotChecked(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	tests := []struct {
		name  string
		setup func(t *testing.T, n node)
		want  report.Status
		msg   string
	}{
		{"healthy", func(*testing.T, node) {}, report.Pass, "the node clock agrees with the CA's"},
		{"the hosts block is missing", func(t *testing.T, n node) {
			if err := os.WriteFile(controlplane.InRoot(n.root, n.cfg.Paths.HostsFile), []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, report.Warn, "not checked: the CA could not be reached, so there is no CA time to compare with ("},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := healthyNode(t, cp)
			tc.setup(t, n)
			r := n.verify(t, nil)
			for _, c := range r.Checks {
				if c.Name != "clock" {
					continue
				}
				if c.Status != tc.want || !strings.Contains(c.Message, tc.msg) || (tc.want != report.Pass && strings.Contains(c.Message, "Date header")) {
					t.Errorf("clock: %s %q, want %s %q\n%s", c.Status, c.Message, tc.want, tc.msg, dump(r))
				}
				return
			}
			t.Fatalf("no clock check\n%s", dump(r))
		})
	}
}
