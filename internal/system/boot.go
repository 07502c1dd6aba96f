package system

import (
	"context"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Boot says which boot of the machine a moment belongs to, so that a record
// written by one run can be placed by the next: in this boot or an earlier
// one, and how long ago on a clock no time sync can step.
//
// The kernel's boot ID is exact, but provision.service cannot read it: its
// ProcSubset=pid hides /proc/sys. CLOCK_BOOTTIME (time since this boot,
// suspend included) needs no file and is what a run measures with; the
// boot's start by the wall clock (Start) tells two boots apart when the
// ID is unknown, since a reboot moves it by at least the earlier boot's
// uptime.
type Boot struct {
	// ID is /proc/sys/kernel/random/boot_id under the host's root, "" when
	// it cannot be read.
	ID string
	// Since is CLOCK_BOOTTIME at Wall: the time since this boot; 0 when the
	// clock cannot be read.
	Since time.Duration
	// Wall is the host's clock (Host.Time) when Since was read.
	Wall time.Time
}

// BootIDFile is where the kernel publishes the boot ID.
const BootIDFile = "/proc/sys/kernel/random/boot_id"

// Boot reads this boot's ID (under Root, like every path: a test root may
// hold one, an installer's chroot usually holds none) and the boot clock.
func (h *Host) Boot() Boot {
	b := Boot{Wall: h.Time(), Since: SinceBoot()}
	raw, err := ReadRegular(context.Background(), h.Path(BootIDFile), 64)
	if id := strings.TrimSpace(string(raw)); err == nil && validBootID(id) {
		b.ID = id
	}
	return b
}

// Start is when the boot began by the wall clock; zero when Since is
// unknown.
func (b Boot) Start() time.Time {
	if b.Since <= 0 {
		return time.Time{}
	}
	return b.Wall.Add(-b.Since)
}

// SinceBoot is CLOCK_BOOTTIME: the time since the machine booted, suspend
// included, unaffected by steps of the wall clock; 0 if it cannot be read.
func SinceBoot() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// validBootID accepts the kernel's form: a UUID in lowercase hex.
func validBootID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if r != '-' {
				return false
			}
		case !strings.ContainsRune("0123456789abcdef", r):
			return false
		}
	}
	return true
}
