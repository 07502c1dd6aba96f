package pipeline

import (
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// TestIsRestart: the decision a run takes at its start, restart or not,
// for every way the record and this boot can relate. Every time is built
// from one fixed instant, so the table means the same on any day.
func TestIsRestart(t *testing.T) {
	const inv = "2c9f2f1d8a1b4b1e9f0e6c7d5a4b3c2d"
	const bootA, bootB = "6f1c2a84-1d7e-4f0b-9a55-3c8e2b7d9f10", "0b7e3f2a-5c4d-4e6f-8a9b-1c2d3e4f5a6b"
	t0 := time.Date(2026, 12, 6, 4, 44, 31, 0, time.UTC)
	up := 90 * time.Second // the failed run ended 90 s after its boot
	failed := func(id string) *state.Failure {
		return &state.Failure{EndedAt: t0, BootID: id, SinceBootNS: int64(up), Layer: "ca", Owner: "ca"}
	}
	// now is this run's start: after elapsed on both clocks, in the
	// failed run's boot unless bootShift moves this boot's start.
	now := func(id string, elapsed, bootShift time.Duration) system.Boot {
		return system.Boot{ID: id, Since: up + elapsed - bootShift, Wall: t0.Add(elapsed)}
	}
	tests := []struct {
		name       string
		invocation string
		rec        *state.Failure
		now        system.Boot
		restart    bool
		why        string
	}{
		{"systemd's restart 30 s later, no boot ID (the unit's sandbox)", inv, failed(""), now("", 30*time.Second, 0), true, "a restart"},
		{"the same with the boot ID", inv, failed(bootA), now(bootA, 30*time.Second, 0), true, "a restart"},
		{"by hand, moments later", "", failed(""), now("", 30*time.Second, 0), false, "by hand never waits"},
		{"first start: nothing recorded", inv, nil, now("", 30*time.Second, 0), false, "no failed run"},
		{"another boot, by boot ID", inv, failed(bootA), now(bootB, 30*time.Second, 0), false, "another boot (boot ID)"},
		{"another boot, by its start (a quick reboot)", inv, failed(""), now("", 40*time.Second, 35*time.Second), false, "another boot"},
		{"a boot ID known only now", inv, failed(""), now(bootA, 30*time.Second, 0), true, "a restart"},
		{"the wall clock stepped 10 min by time sync, same boot ID", inv, failed(bootA),
			system.Boot{ID: bootA, Since: up + 30*time.Second, Wall: t0.Add(10*time.Minute + 30*time.Second)}, true, "a restart"},
		{"the wall clock stepped, no boot ID: taken for another boot", inv, failed(""),
			system.Boot{Since: up + 30*time.Second, Wall: t0.Add(10*time.Minute + 30*time.Second)}, false, "another boot"},
		{"slewed by 1 s, no boot ID", inv, failed(""), system.Boot{Since: up + 30*time.Second, Wall: t0.Add(31 * time.Second)}, true, "a restart"},
		{"the failure is 6 minutes old", inv, failed(""), now("", 6*time.Minute, 0), false, "outside the 5m0s"},
		{"just inside the window", inv, failed(""), now("", RestartWindow, 0), true, "a restart"},
		{"no boot clock either side", inv, &state.Failure{EndedAt: t0, Layer: "ca"}, system.Boot{Wall: t0.Add(30 * time.Second)}, false, "cannot be told"},
		{"a record from the future (the boot clock went back: another boot)", inv, failed(bootA), system.Boot{ID: bootA, Since: up - 10*time.Second, Wall: t0}, false, "ago, outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			restart, why := IsRestart(tt.invocation, tt.rec, tt.now)
			if restart != tt.restart || !strings.Contains(why, tt.why) {
				t.Fatalf("restart=%v (%s), want %v (%q)", restart, why, tt.restart, tt.why)
			}
		})
	}
}
