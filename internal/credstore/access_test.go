package credstore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/testenv"
)

// TestReach: the key group's way to a file is judged as the kernel would
// judge a member of that group who is not the owner: search on every
// directory (by the group bits when the group owns it, else by the others'
// bits), links followed inside the root, read on the file. Needs root to
// give files to a group.
func TestReach(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "giving files to a group needs root (CI runs as root)")
	}
	const gid = 4242
	a := Access{Group: true, GID: gid, Name: "node-agent"}
	type node struct {
		mode   os.FileMode
		gid    int
		link   string // a symbolic link with this target, when set
		isFile bool
	}
	// The layout of a default node; each case changes one entry.
	base := func() map[string]node {
		return map[string]node{
			"var": {mode: 0o755}, "var/lib": {mode: 0o755},
			"var/lib/provision":                   {mode: 0o710, gid: gid},
			"var/lib/provision/pki":               {mode: 0o750, gid: gid},
			"var/lib/provision/pki/gen-1":         {mode: 0o750, gid: gid},
			"var/lib/provision/pki/gen-1/key.pem": {mode: 0o640, gid: gid, isFile: true},
			"var/lib/provision/pki/current":       {link: "gen-1"},
			"var/lib/provision/pki/key.pem":       {link: "current/key.pem"},
		}
	}
	tests := []struct {
		name   string
		change map[string]node
		stop   string // where the walk must stop, "" for none
	}{
		{"the layout provision writes", nil, ""},
		{"state_dir root's alone", map[string]node{"var/lib/provision": {mode: 0o700}}, "/var/lib/provision"},
		{"state_dir searchable by others", map[string]node{"var/lib/provision": {mode: 0o711}}, ""},
		{"state_dir of another group, group bits only", map[string]node{"var/lib/provision": {mode: 0o710, gid: 7}}, "/var/lib/provision"},
		{"the key 0600", map[string]node{"var/lib/provision/pki/gen-1/key.pem": {mode: 0o600, gid: gid, isFile: true}}, "/var/lib/provision/pki/gen-1/key.pem"},
		{"the key of another group", map[string]node{"var/lib/provision/pki/gen-1/key.pem": {mode: 0o640, gid: 7, isFile: true}}, "/var/lib/provision/pki/gen-1/key.pem"},
		{"a generation closed", map[string]node{"var/lib/provision/pki/gen-1": {mode: 0o700, gid: gid}}, "/var/lib/provision/pki/gen-1"},
		{"a parent closed", map[string]node{"var/lib": {mode: 0o700}}, "/var/lib"},
		// state_dir on another volume: the kernel searches the link's
		// directory and then the target's; both must let the group in.
		{"state_dir a link to a closed volume", map[string]node{
			"var/lib/provision": {link: "/srv/state"}, "srv": {mode: 0o700},
			"srv/state": {mode: 0o710, gid: gid}, "srv/state/pki": {mode: 0o750, gid: gid},
			"srv/state/pki/gen-1": {mode: 0o750, gid: gid}, "srv/state/pki/gen-1/key.pem": {mode: 0o640, gid: gid, isFile: true},
			"srv/state/pki/current": {link: "gen-1"}, "srv/state/pki/key.pem": {link: "current/key.pem"},
		}, "/srv"},
		{"a dangling link", map[string]node{"var/lib/provision/pki/current": {link: "gen-9"}}, "/var/lib/provision/pki/gen-9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			layout := base()
			for p, n := range tt.change {
				layout[p] = n
			}
			if _, moved := tt.change["var/lib/provision"]; moved && tt.change["var/lib/provision"].link != "" {
				for p := range layout {
					if strings.HasPrefix(p, "var/lib/provision/") {
						delete(layout, p)
					}
				}
			}
			// Parents first: sorted by depth through the map's keys.
			for depth := 1; depth < 8; depth++ {
				for p, n := range layout {
					if strings.Count(p, "/")+1 != depth {
						continue
					}
					full := filepath.Join(root, p)
					var err error
					switch {
					case n.link != "":
						err = os.Symlink(n.link, full)
					case n.isFile:
						err = os.WriteFile(full, []byte("key"), n.mode)
					default:
						err = os.Mkdir(full, n.mode)
					}
					if err == nil && n.link == "" {
						if err = os.Chown(full, 0, n.gid); err == nil {
							err = os.Chmod(full, n.mode)
						}
					}
					if err != nil {
						t.Fatal(err)
					}
				}
			}
			err := a.Reach(root, "/var/lib/provision/pki/key.pem")
			var re *ReachError
			switch {
			case tt.stop == "" && err != nil:
				t.Fatalf("Reach: %v, want the group through", err)
			case tt.stop != "" && (!errors.As(err, &re) || re.At != tt.stop):
				t.Fatalf("Reach: %v, want it stopped at %s", err, tt.stop)
			}
			if tt.stop != "" && !strings.Contains(err.Error(), "node-agent (4242)") {
				t.Errorf("%v does not name the group", err)
			}
			if err := RootOnly.Reach(root, "/var/lib/provision/pki/key.pem"); err != nil {
				t.Errorf("without a key group Reach must judge nothing: %v", err)
			}
		})
	}
}
