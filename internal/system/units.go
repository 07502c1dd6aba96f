package system

import (
	"os"
	"path"
)

// UnitState is whether a systemd unit is enabled, read from the node's files
// alone (offline, under --root), as `systemctl is-enabled` would answer for
// a unit installed by a package. The names are an interface (status JSON).
type UnitState string

// The states.
const (
	// UnitEnabled: a <target>.wants/<unit> link exists: systemd starts
	// the unit with its target at every boot.
	UnitEnabled UnitState = "enabled"
	// UnitDisabled: the unit file is installed, but nothing wants it.
	UnitDisabled UnitState = "disabled"
	// UnitMasked: /etc (or /run) links the unit to /dev/null: it cannot
	// start at all.
	UnitMasked UnitState = "masked"
	// UnitNotInstalled: no unit file of that name in systemd's unit
	// directories (the package is not installed).
	UnitNotInstalled UnitState = "not-installed"
)

// unitDirs are systemd's system unit directories, most local first
// (systemd.unit(5), "System Unit Search Path").
var unitDirs = []string{"/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"}

// UnitEnablement says whether unit, installed WantedBy=target, is enabled
// on the node, and the path that says so (the wants link, the mask, or the
// unit file; "" when not installed). It reads links and names only, never
// a unit's contents, and never asks the running systemd: status and verify
// answer the same under --root as on the live node.
func (h *Host) UnitEnablement(unit, target string) (UnitState, string) {
	for _, d := range unitDirs[:2] { // a mask lives in /etc or /run
		p := path.Join(d, unit)
		if t, err := os.Readlink(h.Path(p)); err == nil && t == "/dev/null" {
			return UnitMasked, p
		}
	}
	file := ""
	for _, d := range unitDirs {
		if p := path.Join(d, unit); file == "" && h.isFile(p) {
			file = p
		}
	}
	if file == "" {
		// A wants link a removed package left names nothing systemd
		// could start.
		return UnitNotInstalled, ""
	}
	for _, d := range unitDirs {
		p := path.Join(d, target+".wants", unit)
		if _, err := os.Lstat(h.Path(p)); err == nil {
			return UnitEnabled, p
		}
	}
	return UnitDisabled, file
}

// isFile reports whether the node path p is a regular file (through links,
// resolved inside Root).
func (h *Host) isFile(p string) bool {
	st, err := os.Stat(h.ResolvedPath(p))
	return err == nil && st.Mode().IsRegular()
}
