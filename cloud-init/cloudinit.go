// Package cloudinit renders the #cloud-config user-data that first-boots a GPU
// node with provision.
//
// Why a renderer and not a hand-edited file: the user-data carries a TOML
// document inside a YAML document, and a single stray quote or newline in a
// node id, URL or token silently changes the meaning of one of them (or makes
// cloud-init skip the whole file). Render therefore validates every parameter
// against the same rules the provision config uses and refuses anything it
// cannot embed verbatim, instead of trying to escape it.
//
// The rendered user-data is deliberately thin (see docs/first-boot.md):
//   - it writes /etc/provision/provision.toml (0644) and the one-time token to
//     a tmpfs path under /run (0600), never inline in a command, so the token is
//     not copied into the runcmd script or cloud-init-output.log;
//   - it sets manage_etc_hosts: false, because cloud-init's update_etc_hosts
//     module rewrites /etc/hosts on every boot and would drop provision's block;
//   - it installs and downloads nothing: the image carries the provision package;
//   - it has exactly one runcmd entry, `systemctl start provision.service`,
//     because cloud-init reports only the last runcmd command's status and the
//     packaged unit carries the deadline, restart policy and hardening.
//
// The ordering that makes the blocking start safe lives in
// deploy/systemd/provision.service; the tests in this package check both ends.
package cloudinit

import (
	_ "embed"
	"errors"
	"fmt"
	"github.com/gpuaas/provision/internal/config"
	"go.yaml.in/yaml/v3"
	"io"
	"net/netip"
	"net/url"
	"path"
	"regexp"
	"strings"
	"text/template"
	"time"
)

// Template is the Go text/template source of the user-data. It is shipped in
// the package under /usr/share/provision/cloud-init/ so that image builders can
// see exactly what Render produces.
//
//go:embed user-data.yaml.tmpl
var Template string

var tmpl = template.Must(template.New("user-data").Option("missingkey=error").Funcs(template.FuncMap{
	// indent makes a text the body of a YAML block scalar in write_files.
	"indent": func(s string) string {
		lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
		for i, l := range lines {
			if l != "" {
				lines[i] = "      " + l
			}
		}
		return strings.Join(lines, "\n")
	},
}).Parse(Template))

// ConfigPath is where the user-data writes the provision config. It is fixed
// because provision.service reads exactly this file.
const ConfigPath = "/etc/provision/provision.toml"

// Defaults for the optional parameters; they match the provision config
// contract (docs/configuration.md) and the paths the systemd unit may write.
const (
	DefaultTokenFile      = "/run/provision/token"
	DefaultWaitPath       = "/v1/nodes/{node_id}/tasks/wait"
	DefaultWaitTimeout    = "1s"
	DefaultHostsFile      = "/etc/hosts"
	DefaultPKIDir         = "/var/lib/provision/pki"
	DefaultStateDir       = "/var/lib/provision"
	DefaultDeadline       = "10m"
	DefaultRequestTimeout = "5s"
)

// Host is one /etc/hosts override: a control-plane hostname and the private IP
// it must resolve to on the node.
type Host struct {
	Name string
	IP   string
}

// Params are the per-node inputs of the user-data. NodeID, Hosts, CAURL,
// CAFingerprint, Token and NodeAPIURL are required; empty optional fields take
// the Default* values.
type Params struct {
	NodeID        string
	Hosts         []Host
	CAURL         string // https URL of step-ca
	CAFingerprint string // hex SHA-256 of the root certificate's DER
	// Token is the step-ca one-time token. It is written only to TokenFile and
	// never appears in an error returned by Render.
	Token      string
	NodeAPIURL string // https URL of the node API; a hostname, never an IP literal

	TokenFile      string // must be under /run (tmpfs), default /run/provision/token
	WaitPath       string
	WaitTimeout    string // Go duration
	HostsFile      string
	PKIDir         string
	StateDir       string
	Deadline       string // Go duration
	RequestTimeout string // Go duration
}

// data is what the template sees: validated Params with defaults applied.
type data struct {
	Params
	ConfigPath string
	DropIns    []DropIn
}

// DropIn is a systemd drop-in the user-data writes so that a unit's sandbox
// lets provision write where the config says.
type DropIn struct {
	Path    string // /etc/systemd/system/<unit>.d/provision-paths.conf
	Content string
}

// What the packaged units may write (deploy/systemd: ReadWritePaths= and
// StateDirectory=); each unit is ProtectSystem=strict otherwise.
var (
	serviceWritable = []string{"/etc", "/var/lib/provision", "/run/provision"}
	verifyWritable  = []string{"/var/lib/provision/tasks"}
	// Paths a drop-in cannot or must not open up: the OS itself, kernel
	// interfaces, and what the units hide (ProtectHome=, PrivateTmp=).
	sandboxed = []string{"/usr", "/boot", "/efi", "/proc", "/sys", "/dev", "/home", "/root", "/run/user", "/tmp", "/var/tmp"}
)

const dropInName = "provision-paths.conf"

func under(p string, dirs []string) (string, bool) {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return d, true
		}
	}
	return "", false
}

// DropIns returns the drop-ins the units need for p's paths: none with the
// default paths. A path the units' sandbox must keep out of reach is an
// error naming the parameter.
func (p Params) DropIns() ([]DropIn, error) {
	p = p.withDefaults()
	type need struct {
		name, value, path string
		dir               bool // provision creates it (0700); else it must exist
	}
	needs := []need{
		{"HostsFile", p.HostsFile, path.Dir(p.HostsFile), false}, // a temp file there is renamed over it
		{"StateDir", p.StateDir, p.StateDir, true},
		{"PKIDir", p.PKIDir, p.PKIDir, true},
		{"TokenFile", p.TokenFile, path.Dir(p.TokenFile), false}, // deleted after use
	}
	var unit, extra []string
	for _, n := range needs {
		if d, bad := under(n.path, sandboxed); bad || n.path == "/" {
			what := "under " + d + ", which the provision units keep read-only or hidden (ProtectSystem=strict, ProtectHome=, PrivateTmp=, PrivateDevices=)"
			if n.path == "/" {
				what = "the filesystem root: making it writable would undo the units' whole sandbox"
			}
			return nil, fmt.Errorf("cloudinit: %s %q: provision must write in %s, which is %s; choose a path under /var/lib, /srv, /opt or /etc", n.name, n.value, n.path, what)
		}
		if _, ok := under(n.path, serviceWritable); ok {
			continue
		}
		if n.dir {
			// ReadWritePaths= needs the directory to exist when the unit
			// starts; ProtectSystem=strict would stop provision creating it.
			extra = append(extra, "ExecStartPre=+/bin/mkdir -p -m 0700 "+n.path)
			unit = append(unit, "ReadWritePaths="+n.path)
		} else {
			unit = append(unit, "ReadWritePaths=-"+n.path)
		}
	}
	var out []DropIn
	header := "# Written by cloud-init from `provision userdata`: the config moves paths\n# provision writes, and this lets the unit's sandbox write there.\n"
	if len(unit) > 0 || p.StateDir != DefaultStateDir {
		var b strings.Builder
		b.WriteString(header)
		if p.StateDir != DefaultStateDir {
			// The done marker lives in state_dir: reset the packaged
			// condition and check the marker where it is written.
			fmt.Fprintf(&b, "[Unit]\nConditionPathExists=\nConditionPathExists=!%s/done/%%m\n\n", p.StateDir)
		}
		b.WriteString("[Service]\n")
		for _, l := range append(unit, extra...) {
			b.WriteString(l + "\n")
		}
		out = append(out, DropIn{Path: "/etc/systemd/system/provision.service.d/" + dropInName, Content: b.String()})
	}
	if tasks := p.StateDir + "/tasks"; !func() bool { _, ok := under(tasks, verifyWritable); return ok }() {
		out = append(out, DropIn{Path: "/etc/systemd/system/provision-verify.service.d/" + dropInName,
			Content: header + "[Service]\nReadWritePaths=-" + tasks + "\n"})
	}
	return out, nil
}

// Render validates p and writes the #cloud-config user-data to w. Nothing is
// written when validation fails.
func Render(w io.Writer, p Params) error {
	p = p.withDefaults()
	if err := p.Validate(); err != nil {
		return err
	}
	dropIns, err := p.DropIns()
	if err != nil {
		return err
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, data{Params: p, ConfigPath: ConfigPath, DropIns: dropIns}); err != nil {
		// The template only reads validated fields; an error here is a bug,
		// and text/template errors never include field values.
		return fmt.Errorf("cloudinit: render template: %w", err)
	}
	if err := checkRenderedConfig(b.String()); err != nil {
		return err
	}
	_, err = io.WriteString(w, b.String())
	return err
}

// checkRenderedConfig parses the provision.toml the user-data writes with
// provision's own config loader: one rule set, so user-data never carries a
// config that bootstrap would then refuse.
func checkRenderedConfig(userData string) error {
	var doc struct {
		WriteFiles []struct {
			Path    string `yaml:"path"`
			Content string `yaml:"content"`
		} `yaml:"write_files"`
	}
	if err := yaml.Unmarshal([]byte(userData), &doc); err != nil {
		return fmt.Errorf("cloudinit: the rendered user-data is not YAML: %w", err)
	}
	for _, f := range doc.WriteFiles {
		if f.Path != ConfigPath {
			continue
		}
		if _, err := config.Parse(ConfigPath, []byte(f.Content)); err != nil {
			return fmt.Errorf("cloudinit: provision would refuse the config this user-data writes: %w", err)
		}
		return nil
	}
	return fmt.Errorf("cloudinit: the rendered user-data writes no %s", ConfigPath)
}

func (p Params) withDefaults() Params {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&p.TokenFile, DefaultTokenFile)
	def(&p.WaitPath, DefaultWaitPath)
	def(&p.WaitTimeout, DefaultWaitTimeout)
	def(&p.HostsFile, DefaultHostsFile)
	def(&p.PKIDir, DefaultPKIDir)
	def(&p.StateDir, DefaultStateDir)
	def(&p.Deadline, DefaultDeadline)
	def(&p.RequestTimeout, DefaultRequestTimeout)
	return p
}

var (
	// nodeIDRe: a DNS-label-like id, safe in TOML strings, YAML comments,
	// URL paths and file names.
	nodeIDRe = config.NodeIDPattern
	// hostnameRe: RFC 1123 hostname, at least two labels.
	// fingerprintRe: lowercase or uppercase hex SHA-256.
	fingerprintRe = regexp.MustCompile(`^[0-9A-Fa-f]{64}$`)
	// tokenRe: a JWT (base64url segments joined by dots). Anything else
	// would need escaping in YAML and is not a step-ca token.
	tokenRe = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]*){0,4}$`)
	// pathSafeRe: characters allowed in paths and the wait path template;
	// no quotes, backslashes, spaces, '#' or control characters.
	pathSafeRe = regexp.MustCompile(`^[A-Za-z0-9/._{}+-]+$`)
	// urlSafeRe: characters allowed in the CA and node API URLs.
	urlSafeRe = regexp.MustCompile(`^[A-Za-z0-9:/._\[\]+-]+$`)
)

// Validate reports the first parameter that is missing or that cannot be
// embedded verbatim in both YAML and TOML. Errors name the parameter but never
// repeat the token.
func (p Params) Validate() error {
	if !nodeIDRe.MatchString(p.NodeID) {
		return fmt.Errorf("cloudinit: NodeID %q: want 1-63 characters of [A-Za-z0-9._-], starting with a letter or digit", p.NodeID)
	}
	if len(p.Hosts) == 0 {
		return errors.New("cloudinit: Hosts: at least one hosts entry is required (the node API hostname)")
	}
	seen := map[string]bool{}
	for i, h := range p.Hosts {
		if err := validHostname(h.Name); err != nil {
			return fmt.Errorf("cloudinit: Hosts[%d].Name: %w", i, err)
		}
		key := strings.ToLower(h.Name)
		if seen[key] {
			return fmt.Errorf("cloudinit: Hosts[%d].Name %q: duplicate hostname", i, h.Name)
		}
		seen[key] = true
		ip, err := netip.ParseAddr(h.IP)
		if err != nil || ip.Zone() != "" || ip.String() != h.IP {
			return fmt.Errorf("cloudinit: Hosts[%d].IP %q: want a plain IPv4 or IPv6 address in canonical form", i, h.IP)
		}
	}
	if err := validHTTPSURL(p.CAURL, false); err != nil {
		return fmt.Errorf("cloudinit: CAURL: %w", err)
	}
	if !fingerprintRe.MatchString(p.CAFingerprint) {
		return errors.New("cloudinit: CAFingerprint: want 64 hex digits (SHA-256 of the root certificate's DER)")
	}
	if p.Token == "" {
		return errors.New("cloudinit: Token: required")
	}
	if !tokenRe.MatchString(p.Token) {
		// Never quote the token: it is a credential even when malformed.
		return errors.New("cloudinit: Token: not a JWT (only base64url segments separated by dots are accepted; whitespace, quotes and newlines are refused)")
	}
	if err := validHTTPSURL(p.NodeAPIURL, true); err != nil {
		return fmt.Errorf("cloudinit: NodeAPIURL: %w", err)
	}
	if u, _ := url.Parse(p.NodeAPIURL); u.Path != "" && u.Path != "/" {
		return fmt.Errorf("cloudinit: NodeAPIURL %q: must not carry a path; put it in WaitPath", p.NodeAPIURL)
	} else if !seen[strings.ToLower(u.Hostname())] {
		return fmt.Errorf("cloudinit: NodeAPIURL %q: hostname %q has no Hosts entry; add one mapping it to the private control-plane IP", p.NodeAPIURL, u.Hostname())
	}
	if err := validAbsPath(p.TokenFile); err != nil {
		return fmt.Errorf("cloudinit: TokenFile: %w", err)
	}
	if !strings.HasPrefix(p.TokenFile, "/run/") {
		return fmt.Errorf("cloudinit: TokenFile %q: must be under /run (a tmpfs), so the token does not persist across reboots", p.TokenFile)
	}
	if !strings.HasPrefix(p.WaitPath, "/") || !pathSafeRe.MatchString(p.WaitPath) || !strings.Contains(p.WaitPath, "{node_id}") {
		return fmt.Errorf("cloudinit: WaitPath %q: want an absolute URL path of [A-Za-z0-9/._{}+-] containing {node_id}", p.WaitPath)
	}
	for _, f := range []struct{ name, v string }{
		{"HostsFile", p.HostsFile}, {"PKIDir", p.PKIDir}, {"StateDir", p.StateDir},
	} {
		if err := validAbsPath(f.v); err != nil {
			return fmt.Errorf("cloudinit: %s: %w", f.name, err)
		}
	}
	// The same ranges as the provision config (internal/config).
	for _, f := range []struct {
		name, v  string
		min, max time.Duration
	}{
		{"WaitTimeout", p.WaitTimeout, 0, 10 * time.Minute}, // 0s: no long poll
		{"Deadline", p.Deadline, time.Second, 24 * time.Hour},
		{"RequestTimeout", p.RequestTimeout, 100 * time.Millisecond, 5 * time.Minute},
	} {
		d, err := time.ParseDuration(f.v)
		if err != nil || d < f.min || d > f.max {
			return fmt.Errorf("cloudinit: %s %q: want a Go duration between %s and %s", f.name, f.v, f.min, f.max)
		}
	}
	if w, _ := time.ParseDuration(p.WaitTimeout); w >= mustDuration(p.Deadline) {
		return fmt.Errorf("cloudinit: WaitTimeout %q: must be shorter than Deadline %q, or a node with no task queued never finishes bootstrap", p.WaitTimeout, p.Deadline)
	}
	return nil
}

// mustDuration parses a duration validate has already checked.
func mustDuration(s string) time.Duration {
	d, _ := time.ParseDuration(s)
	return d
}

// validHostname is the config's rule (internal/config), so that a name
// the config accepts is never refused here; an IP address is not a name.
func validHostname(name string) error {
	if _, err := netip.ParseAddr(name); err == nil {
		return fmt.Errorf("%q: an IP address, want a hostname", name)
	}
	if !config.ValidHostname(name) {
		return fmt.Errorf("%q: not a valid hostname (letters, digits, '-' and '.', at most 253 characters)", name)
	}
	return nil
}

// validHTTPSURL accepts https://host[:port][/path] with no user info, query
// or fragment. With hostnameOnly, an IP literal is refused: the node API must
// be reached by name so that SNI selects the mTLS router (incident: a raw-IP
// URL bypassed the Host() router and got 404).
func validHTTPSURL(raw string, hostnameOnly bool) error {
	if raw == "" {
		return errors.New("required")
	}
	if !urlSafeRe.MatchString(raw) {
		return fmt.Errorf("%q: contains characters that are not allowed (quotes, spaces, '#', control characters)", raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q: %v", raw, err)
	}
	if u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return fmt.Errorf("%q: want https://host[:port][/path] without user info, query or fragment", raw)
	}
	host := u.Hostname()
	if _, err := netip.ParseAddr(host); err == nil {
		if hostnameOnly {
			return fmt.Errorf("%q: the host is an IP literal; use the hostname (and a hosts entry) so SNI reaches the mTLS route", raw)
		}
		return nil
	}
	return validHostname(host)
}

func validAbsPath(p string) error {
	if p == "" {
		return errors.New("required")
	}
	if !pathSafeRe.MatchString(p) || strings.ContainsAny(p, "{}") {
		return fmt.Errorf("%q: want an absolute path of [A-Za-z0-9/._+-]", p)
	}
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return fmt.Errorf("%q: want an absolute, clean path other than /", p)
	}
	return nil
}

// ExampleParams returns the parameters of the committed example
// (example-user-data.yaml). The token and fingerprint are placeholders that
// pass validation; replace them per node.
func ExampleParams() Params {
	return Params{
		NodeID: "gpu-0042",
		Hosts: []Host{
			{Name: "node-api.cp.internal", IP: "10.40.0.10"},
			{Name: "ca.cp.internal", IP: "10.40.0.11"},
		},
		CAURL:         "https://ca.cp.internal:9000",
		CAFingerprint: "0000000000000000000000000000000000000000000000000000000000000000",
		Token:         "REPLACE-WITH-ONE-TIME-TOKEN",
		NodeAPIURL:    "https://node-api.cp.internal:8443",
	}
}
