package system

import (
	"os"
	"path/filepath"
	"testing"
)

// TestUnitEnablement: the renew timer's state as systemctl is-enabled
// would give it, from the files alone: the wants link (in /etc, as
// deb-systemd-helper and systemctl enable make it), a mask, an installed
// but unwanted unit, a package removed with its link left behind.
func TestUnitEnablement(t *testing.T) {
	const unit, target = "provision-renew.timer", "timers.target"
	file := "/usr/lib/systemd/system/" + unit
	wants := "/etc/systemd/system/timers.target.wants/" + unit
	tests := []struct {
		name  string
		files []string          // regular files
		links map[string]string // link -> target
		want  UnitState
		at    string
	}{
		{"enabled", []string{file}, map[string]string{wants: file}, UnitEnabled, wants},
		{"enabled by a relative link", []string{file}, map[string]string{wants: "../../../../usr/lib/systemd/system/" + unit}, UnitEnabled, wants},
		{"disabled", []string{file}, nil, UnitDisabled, file},
		{"masked", []string{file}, map[string]string{"/etc/systemd/system/" + unit: "/dev/null", wants: file}, UnitMasked, "/etc/systemd/system/" + unit},
		{"not installed", nil, nil, UnitNotInstalled, ""},
		{"removed, its link left", nil, map[string]string{wants: file}, UnitNotInstalled, ""},
		{"a unit of the admin's own in /etc", []string{"/etc/systemd/system/" + unit}, nil, UnitDisabled, "/etc/systemd/system/" + unit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			h := &Host{Root: root}
			for _, f := range tt.files {
				os.MkdirAll(filepath.Dir(h.Path(f)), 0o755)
				if err := os.WriteFile(h.Path(f), []byte("[Timer]\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for l, target := range tt.links {
				os.MkdirAll(filepath.Dir(h.Path(l)), 0o755)
				if err := os.Symlink(target, h.Path(l)); err != nil {
					t.Fatal(err)
				}
			}
			if got, at := h.UnitEnablement(unit, target); got != tt.want || at != tt.at {
				t.Errorf("UnitEnablement = %s %q, want %s %q", got, at, tt.want, tt.at)
			}
		})
	}
}
