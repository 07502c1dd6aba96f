package controlplane

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/system"
)

// HostEntry is one [[hosts]] line of provision.toml.
type HostEntry struct {
	Name string `toml:"name"`
	IP   string `toml:"ip"`
}

// NodeConfig is provision.toml as the product contract defines it. Paths are
// as the node sees them; provision re-roots them under --root.
type NodeConfig struct {
	NodeID string      `toml:"node_id"`
	Hosts  []HostEntry `toml:"hosts"`
	CA     struct {
		URL         string `toml:"url"`
		Fingerprint string `toml:"fingerprint"`
		TokenFile   string `toml:"token_file"`
	} `toml:"ca"`
	NodeAPI struct {
		URL         string `toml:"url"`
		WaitPath    string `toml:"wait_path"`
		WaitTimeout string `toml:"wait_timeout,omitempty"`
	} `toml:"node_api"`
	Paths struct {
		HostsFile string `toml:"hosts_file"`
		PKIDir    string `toml:"pki_dir"`
		StateDir  string `toml:"state_dir"`
		KeyGroup  string `toml:"key_group,omitempty"`
	} `toml:"paths"`
	Bootstrap struct {
		Deadline       string `toml:"deadline,omitempty"`
		RequestTimeout string `toml:"request_timeout,omitempty"`
	} `toml:"bootstrap"`
	// Renew is [renew]; nil leaves the table out (provision's defaults).
	Renew *RenewConfig `toml:"renew,omitempty"`
	// Key is [key]; nil leaves the table out (a key file).
	Key *KeyConfig `toml:"key,omitempty"`
}

// KeyConfig is [key]; a field left empty is left out.
type KeyConfig struct {
	Store         string `toml:"store,omitempty"`
	TPM           string `toml:"tpm,omitempty"`
	OwnerAuthFile string `toml:"owner_auth_file,omitempty"`
}

// TPMKey is [key] for a key made in the TPM named spec (a software TPM's
// "swtpm:path=..." in tests).
func TPMKey(spec string) *KeyConfig { return &KeyConfig{Store: "tpm", TPM: spec} }

// RenewConfig is [renew]; a field left at its zero value is left out.
type RenewConfig struct {
	Fraction        float64  `toml:"fraction,omitzero"`
	Splay           string   `toml:"splay,omitempty"`
	Rekey           *bool    `toml:"rekey,omitempty"`
	PostHook        []string `toml:"post_hook,omitempty"`
	PostHookTimeout string   `toml:"post_hook_timeout,omitempty"`
}

// Default node-side paths of the contract.
const (
	DefaultConfigPath = "/etc/provision/provision.toml"
	DefaultTokenFile  = "/run/provision/token"
	DefaultHostsFile  = "/etc/hosts"
	DefaultPKIDir     = "/var/lib/provision/pki"
	DefaultStateDir   = "/var/lib/provision"
)

// NodeConfig returns a ready configuration for nodeID against this control
// plane: hosts entries mapping both hostnames to 127.0.0.1, the CA by
// hostname with the current fingerprint, the node API by hostname, a 1s
// proof long poll, a 30s bootstrap deadline, default paths.
func (cp *ControlPlane) NodeConfig(nodeID string) NodeConfig {
	var c NodeConfig
	c.NodeID = nodeID
	c.Hosts = []HostEntry{{Name: cp.API.Hostname(), IP: "127.0.0.1"}, {Name: cp.CA.Hostname(), IP: "127.0.0.1"}}
	c.CA.URL = cp.CA.URL()
	c.CA.Fingerprint = cp.CA.Fingerprint()
	c.CA.TokenFile = DefaultTokenFile
	c.NodeAPI.URL = cp.API.URL()
	c.NodeAPI.WaitPath = WaitPath
	c.NodeAPI.WaitTimeout = "1s"
	c.Paths.HostsFile = DefaultHostsFile
	c.Paths.PKIDir = DefaultPKIDir
	c.Paths.StateDir = DefaultStateDir
	c.Bootstrap.Deadline = "30s"
	c.Bootstrap.RequestTimeout = "5s"
	return c
}

// TOML renders the configuration.
func (c NodeConfig) TOML() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# provision.toml written by tests/controlplane\n")
	if err := toml.NewEncoder(&b).Encode(c); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// NodeFiles are the host-side paths of a prepared node root.
type NodeFiles struct {
	Root       string // the --root directory
	ConfigPath string // host path of the config: Root + DefaultConfigPath
	// ConfigArg is the value for provision's --config: the node-side path
	// (DefaultConfigPath), which provision reads under --root.
	ConfigArg string
	TokenPath string // host path of the token file (0600)
	HostsPath string // host path of the node's hosts file
	PKIDir    string // host path of pki_dir
	StateDir  string // host path of state_dir
}

// WriteConfig writes c as the node's config file again (a test changed
// it, as re-rendered user-data would).
func WriteConfig(nf NodeFiles, c NodeConfig) error {
	b, err := c.TOML()
	if err != nil {
		return err
	}
	return os.WriteFile(nf.ConfigPath, b, 0o644)
}

// InRoot joins a node-side absolute path onto root.
func InRoot(root, nodePath string) string {
	return filepath.Join(root, filepath.FromSlash(strings.TrimPrefix(nodePath, "/")))
}

// WriteNode writes cfg to root/etc/provision/provision.toml, a hosts file
// with ordinary user lines (kept if one exists), provision-renew.timer
// installed and enabled as the package leaves it (a stand-in unit file and
// its timers.target.wants link: renewal is scheduled, which status and
// verify judge) and, unless token is empty, the token file (0600,
// directory 0700). Nothing outside root is touched.
func WriteNode(root string, cfg NodeConfig, token string) (NodeFiles, error) {
	if root == "" || !filepath.IsAbs(root) {
		return NodeFiles{}, fmt.Errorf("node root %q must be an absolute directory", root)
	}
	f := NodeFiles{
		Root:       root,
		ConfigPath: InRoot(root, DefaultConfigPath),
		ConfigArg:  DefaultConfigPath,
		TokenPath:  InRoot(root, cfg.CA.TokenFile),
		HostsPath:  InRoot(root, cfg.Paths.HostsFile),
		PKIDir:     InRoot(root, cfg.Paths.PKIDir),
		StateDir:   InRoot(root, cfg.Paths.StateDir),
	}
	data, err := cfg.TOML()
	if err != nil {
		return f, err
	}
	if err := writeFile(f.ConfigPath, data, 0o644, 0o755); err != nil {
		return f, err
	}
	if _, err := os.Stat(f.HostsPath); errors.Is(err, os.ErrNotExist) {
		hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n# a user line that must survive\n10.1.2.3\tbuild-cache.example.internal\n"
		if err := writeFile(f.HostsPath, []byte(hosts), 0o644, 0o755); err != nil {
			return f, err
		}
	}
	if err := EnableRenewTimer(root); err != nil {
		return f, err
	}
	if token != "" {
		if err := WriteToken(root, cfg.CA.TokenFile, token); err != nil {
			return f, err
		}
	}
	return f, nil
}

// RenewTimerLink is where the package's postinst (deb-systemd-helper
// enable) links provision-renew.timer: the link status and verify read.
const RenewTimerLink = "/etc/systemd/system/timers.target.wants/provision-renew.timer"

// EnableRenewTimer installs a stand-in provision-renew.timer under root,
// unless a unit file is already there, and enables it as the package does.
func EnableRenewTimer(root string) error {
	unit := "/usr/lib/systemd/system/provision-renew.timer"
	if _, err := os.Lstat(InRoot(root, unit)); errors.Is(err, os.ErrNotExist) {
		if err := writeFile(InRoot(root, unit), []byte("# tests/controlplane: stands in for the packaged unit.\n[Timer]\nOnUnitActiveSec=15min\n"), 0o644, 0o755); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Dir(InRoot(root, RenewTimerLink)), 0o755); err != nil {
		return err
	}
	if err := os.Symlink(unit, InRoot(root, RenewTimerLink)); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

// WriteToken (re)writes the token file at root+nodePath with mode 0600.
func WriteToken(root, nodePath, token string) error {
	p := InRoot(root, nodePath)
	if err := writeFile(p, []byte(token+"\n"), 0o600, 0o700); err != nil {
		return err
	}
	return os.Chmod(p, 0o600) // an existing file keeps its mode in WriteFile
}

// PrepareNode writes the default NodeConfig for nodeID and a fresh token into
// root.
func (cp *ControlPlane) PrepareNode(root, nodeID string) (NodeFiles, error) {
	tok, err := cp.Token(nodeID)
	if err != nil {
		return NodeFiles{}, err
	}
	return WriteNode(root, cp.NodeConfig(nodeID), tok)
}

// WriteNodeCredentials plants a key, certificate chain and CA bundle where
// provision keeps them (pki_dir/key.pem 0600, cert.pem, ca.pem under root),
// for example a stale certificate from IssueStaleCert: as plain files in a
// pki_dir provision marked as its own (system.OwnMark), which it then
// treats as the installed set. Another program's plain files, without the
// mark, it would refuse to take over.
func WriteNodeCredentials(root, pkiDir string, leaf *Leaf, caPEM []byte) error {
	return WriteNodeFiles(root, pkiDir, leaf.KeyPEM(), leaf.ChainPEM(), caPEM)
}

// WriteNodeFiles is WriteNodeCredentials for a key given as its key.pem
// (a TPM's key file: the key itself is in the TPM).
func WriteNodeFiles(root, pkiDir string, keyPEM, chainPEM, caPEM []byte) error {
	dir := InRoot(root, pkiDir)
	if err := writeFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600, 0o700); err != nil {
		return err
	}
	if err := system.MarkOwn(dir); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "cert.pem"), chainPEM, 0o644, 0o700); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, "ca.pem"), caPEM, 0o644, 0o700)
}

func writeFile(path string, data []byte, mode, dirMode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), dirMode); err != nil {
		return err
	}
	return os.WriteFile(path, data, mode)
}

// LoadNode reads back a prepared node's config with provision's own
// loader and returns it with the node's Host (its root, and the hosts file
// name resolution reads there): what an in-process bootstrap, renew or
// verify runs with.
func LoadNode(t testing.TB, nf NodeFiles) (*config.Config, *system.Host) {
	t.Helper()
	cfg, err := config.Load(nf.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	host, err := system.New(nf.Root)
	if err != nil {
		t.Fatal(err)
	}
	host.HostsFile = cfg.Paths.HostsFile
	return cfg, host
}
