package cloudinit

import (
	"fmt"
	"path"
	"strings"

	"github.com/gpuaas/provision/deploy/systemd"
	"github.com/gpuaas/provision/internal/config"
)

// DropIn is a systemd drop-in the user-data writes so that a unit's sandbox
// lets provision write where the config says.
type DropIn struct {
	Path    string // /etc/systemd/system/<unit>.d/provision-paths.conf
	Content string
	// Why is the user-data's comment above the entry, one line each.
	Why []string
}

// The user-data's comments on the drop-ins.
var (
	pathsWhy = []string{"The config moves a path provision writes away from what the packaged unit",
		"may write: this drop-in opens exactly that path in the unit's sandbox."}
	tpmWhy = []string{"key.store = \"tpm\": the unit reaches the TPM's resource manager (and no other",
		"device), as the tss group (deploy/systemd/tpm.conf)."}
	keyGroupWhy = []string{"paths.key_group: the unit is a member of the node-agent's group, so provision",
		"can give it the key and the tasks (deploy/systemd/key-group.conf)."}
)

const dropInName = "provision-paths.conf"

// metricsDir is what each packaged unit's metrics.conf drop-in opens
// (deploy/systemd/*.service.d/metrics.conf).
const metricsDir = config.DefaultTextfileDir

// unit is one packaged unit: what it may write as shipped (ReadWritePaths=,
// StateDirectory= and its metrics.conf drop-in), and what the config asks
// it to write.
type unit struct {
	name     string
	writable []string
	needs    func(c *config.Config) []need
	// conditions are the [Unit] lines that must follow moved paths (the
	// packaged ones name the default paths).
	conditions func(c *config.Config) []string
}

// need is one path a unit writes.
type need struct {
	key  string // the config key it comes from, for messages
	path string // the directory that must be writable
	// create: provision owns the directory and creates it 0700; the unit
	// creates it before it starts (ExecStartPre=+mkdir), because
	// ProtectSystem=strict would stop provision making it. Every path is
	// opened with '-' (a missing one is left out of the sandbox instead of
	// failing it): systemd 252 sets up the mount namespace for a '+'
	// command too, so without '-' a directory that does not exist yet
	// fails the mkdir meant to create it (status 226/NAMESPACE; found by
	// tests/boot).
	create bool
}

// units are the three packaged services (deploy/systemd). The timers need
// nothing: they only start the services.
var units = []unit{
	{
		name:     "provision.service",
		writable: []string{"/etc", "/var/lib/provision", "/run/provision", metricsDir},
		needs: func(c *config.Config) []need {
			return append([]need{
				{"paths.hosts_file", path.Dir(c.Paths.HostsFile), false}, // a temp file there is renamed over it
				{"paths.state_dir", c.Paths.StateDir, true},
				{"paths.pki_dir", c.Paths.PKIDir, true},
				{"ca.token_file", path.Dir(c.CA.TokenFile), false}, // deleted after use
			}, metricsNeed(c)...)
		},
		conditions: func(c *config.Config) []string {
			if c.Paths.StateDir == config.DefaultStateDir {
				return nil
			}
			// The done marker lives in state_dir.
			return []string{"ConditionPathExists=", "ConditionPathExists=!" + c.Paths.StateDir + "/done/%m"}
		},
	},
	{
		name:     "provision-verify.service",
		writable: []string{"/var/lib/provision/tasks", metricsDir},
		needs: func(c *config.Config) []need {
			// A task its proof receives is handed off to state_dir/tasks.
			return append([]need{{"paths.state_dir", c.Paths.StateDir + "/tasks", false}}, metricsNeed(c)...)
		},
		conditions: func(*config.Config) []string { return nil },
	},
	{
		name:     "provision-renew.service",
		writable: []string{"/var/lib/provision", metricsDir},
		needs: func(c *config.Config) []need {
			// A new generation in pki_dir; renew.json, the lock and a task
			// the proof receives in state_dir. Both exist once bootstrap
			// is done, which the condition below waits for.
			return append([]need{
				{"paths.state_dir", c.Paths.StateDir, false},
				{"paths.pki_dir", c.Paths.PKIDir, false},
			}, metricsNeed(c)...)
		},
		conditions: func(c *config.Config) []string {
			if c.Paths.PKIDir == config.DefaultPKIDir {
				return nil
			}
			// Packaged: ConditionPathExists=/var/lib/provision/pki/current.
			// Left as it is, a node with a moved pki_dir would skip
			// renewal forever.
			return []string{"ConditionPathExists=", "ConditionPathExists=" + c.Paths.PKIDir + "/current"}
		},
	},
}

// metricsNeed is the textfile directory, when metrics are on. provision
// never creates it (it is node_exporter's): '-'.
func metricsNeed(c *config.Config) []need {
	if !c.Metrics.Enabled {
		return nil
	}
	return []need{{"metrics.textfile_dir", c.Metrics.TextfileDir, false}}
}

// sandboxed are paths a drop-in cannot or must not open up: the OS itself,
// kernel interfaces, and what the units hide (ProtectHome=, PrivateTmp=).
var sandboxed = []string{"/usr", "/boot", "/efi", "/proc", "/sys", "/dev", "/home", "/root", "/run/user", "/tmp", "/var/tmp"}

func under(p string, dirs []string) (string, bool) {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return d, true
		}
	}
	return "", false
}

// checkNeed refuses a path the units' sandbox must keep out of reach, and
// one that a drop-in cannot carry verbatim, naming the config key.
func checkNeed(n need, value string) error {
	d, bad := under(n.path, sandboxed)
	if !bad && n.path != "/" {
		if err := validAbsPath(n.path); err != nil {
			return fmt.Errorf("cloudinit: %s: %w (it goes into a systemd drop-in)", n.key, err)
		}
		return nil
	}
	what := "under " + d + ", which the provision units keep read-only or hidden (ProtectSystem=strict, ProtectHome=, PrivateTmp=, PrivateDevices=)"
	if n.path == "/" {
		what = "the filesystem root: making it writable would undo the units' whole sandbox"
	}
	return fmt.Errorf("cloudinit: %s %q: provision must write in %s, which is %s; choose a path under /var/lib, /srv, /opt or /etc", n.key, value, n.path, what)
}

// needValue is the config value behind a need, for messages.
func needValue(c *config.Config, key string) string {
	switch key {
	case "paths.hosts_file":
		return c.Paths.HostsFile
	case "paths.state_dir":
		return c.Paths.StateDir
	case "paths.pki_dir":
		return c.Paths.PKIDir
	case "ca.token_file":
		return c.CA.TokenFile
	}
	return c.Metrics.TextfileDir
}

// DropInsFor returns the drop-ins the packaged units need for cfg's paths
// (none with the default paths), its TPM and its key group. Every unit that writes a moved path gets
// one (provision.service, provision-verify.service, provision-renew.service),
// and a condition that names a default path is pointed at the moved one. A
// path the units' sandbox must keep out of reach is an error naming its
// config key.
func DropInsFor(cfg *config.Config) ([]DropIn, error) {
	var out []DropIn
	for _, u := range units {
		var rw, pre []string
		for _, n := range u.needs(cfg) {
			if err := checkNeed(n, needValue(cfg, n.key)); err != nil {
				return nil, err
			}
			if _, ok := under(n.path, u.writable); ok {
				continue
			}
			rw = append(rw, "ReadWritePaths=-"+n.path)
			if n.create {
				pre = append(pre, "ExecStartPre=+/bin/mkdir -p -m 0700 "+n.path)
			}
		}
		if d, ok := dropIn(u, u.conditions(cfg), append(dedupe(rw), dedupe(pre)...)); ok {
			out = append(out, d)
		}
		if d, ok := tpmDropIn(u, cfg); ok {
			out = append(out, d)
		}
		if g := cfg.Paths.KeyGroup; g != "" {
			out = append(out, DropIn{Path: "/etc/systemd/system/" + u.name + ".d/" + keyGroupDropInName, Content: systemd.KeyGroupDropIn(g), Why: keyGroupWhy})
		}
	}
	return out, nil
}

// DropInGroups are the groups cfg's drop-ins make the units members of:
// the TPM's (tpm.conf) and paths.key_group. Each must exist on the node, or
// the units do not start (Runcmd checks them first).
func DropInGroups(cfg *config.Config) []string {
	var out []string
	if _, ok := tpmDropIn(units[0], cfg); ok {
		out = append(out, systemd.TPMGroup)
	}
	if g := cfg.Paths.KeyGroup; g != "" {
		out = append(out, g)
	}
	return out
}

// keyGroupDropInName is the drop-in that makes a unit a member of
// paths.key_group's group (deploy/systemd/key-group.conf): written only
// with a key group, so no other node's units are in any group but root's.
const keyGroupDropInName = "provision-key-group.conf"

// tpmDropIn is the unit's access to the TPM (deploy/systemd/tpm.conf,
// naming key.tpm's device), written only when key.store = "tpm": no other
// node's units reach a hardware device. A software TPM's socket (a test
// config) needs none.
func tpmDropIn(u unit, cfg *config.Config) (DropIn, bool) {
	if cfg.Key.Store != config.KeyStoreTPM || !strings.HasPrefix(cfg.Key.TPM, "/") {
		return DropIn{}, false
	}
	return DropIn{Path: "/etc/systemd/system/" + u.name + ".d/" + tpmDropInName, Content: systemd.TPMDropIn(cfg.Key.TPM), Why: tpmWhy}, true
}

const tpmDropInName = "provision-tpm.conf"

// dropIn writes one unit's drop-in; none when there is nothing to say.
func dropIn(u unit, unitLines, serviceLines []string) (DropIn, bool) {
	if len(unitLines) == 0 && len(serviceLines) == 0 {
		return DropIn{}, false
	}
	var b strings.Builder
	b.WriteString("# Written by cloud-init from `provision userdata`: the config moves paths\n# provision writes, and this lets the unit's sandbox write there.\n")
	if len(unitLines) > 0 {
		b.WriteString("[Unit]\n" + strings.Join(unitLines, "\n") + "\n")
		if len(serviceLines) > 0 {
			b.WriteString("\n")
		}
	}
	if len(serviceLines) > 0 {
		b.WriteString("[Service]\n" + strings.Join(serviceLines, "\n") + "\n")
	}
	return DropIn{Path: "/etc/systemd/system/" + u.name + ".d/" + dropInName, Content: b.String(), Why: pathsWhy}, true
}

// dedupe keeps the first of equal lines (pki_dir under a moved state_dir
// is still its own line: ReadWritePaths= of both is harmless, twice the
// same is noise).
func dedupe(lines []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range lines {
		if !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	return out
}
