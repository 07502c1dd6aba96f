package state

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"time"

	"github.com/gpuaas/provision/internal/system"
)

// FailureFile records the last bootstrap run that failed, until one
// succeeds.
const FailureFile = "last-failure.json"

// Failure is a failed bootstrap run: when it ended, in which boot, and
// where it failed. The next run reads it to tell a restart (systemd's
// Restart=on-failure, moments later in the same boot) from a first start,
// and spreads a restart's network work (bootstrap.restart_splay).
type Failure struct {
	EndedAt time.Time `json:"ended_at"` // the host clock
	// BootID is the kernel's boot ID when the run could read it ("" under
	// provision.service, whose ProcSubset=pid hides /proc/sys).
	BootID string `json:"boot_id,omitempty"`
	// SinceBootNS is CLOCK_BOOTTIME when the run ended, in nanoseconds:
	// the time since that boot.
	SinceBootNS int64  `json:"since_boot_ns"`
	Layer       string `json:"layer"`
	Owner       string `json:"owner"`
	Check       string `json:"check,omitempty"`
}

// Boot is the moment the run ended, as system.Boot.
func (f *Failure) Boot() system.Boot {
	return system.Boot{ID: f.BootID, Since: time.Duration(f.SinceBootNS), Wall: f.EndedAt}
}

// WriteFailure records a failed run (atomically, 0600).
func WriteFailure(stateDir string, f *Failure, hook system.Hook) error {
	return writeJSON(hook, stateDir, FailureFile, f, 0o600, true)
}

// ReadFailure reads the record of the last failed run; nil when there is
// none or it does not parse (then no run is taken for a restart).
func ReadFailure(stateDir string) *Failure {
	b, err := system.ReadRegular(context.Background(), filepath.Join(stateDir, FailureFile), maxRecord)
	if err != nil {
		return nil
	}
	f := &Failure{}
	if json.Unmarshal(b, f) != nil {
		return nil
	}
	return f
}

// RemoveFailure forgets the last failed run (a run succeeded). Not
// fsynced: a record a power cut brings back is from an earlier boot, which
// no run takes for a restart.
func RemoveFailure(stateDir string) {
	os.Remove(filepath.Join(stateDir, FailureFile))
}
