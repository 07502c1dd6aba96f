// Package cloudinit renders the #cloud-config user-data that first-boots a GPU
// node with provision.
//
// Why a renderer and not a hand-edited file: the user-data carries a TOML
// document inside a YAML document, and a single stray quote or newline in a
// node id, URL or token silently changes the meaning of one of them (or makes
// cloud-init skip the whole file). The config is therefore encoded, not
// templated: RenderConfig writes the whole validated config (every section,
// [renew] and [metrics] included) with the TOML library provision reads it
// with, escaped to printable ASCII, and reads the result back with
// provision's own loader, which must give the same config. What goes into
// the YAML itself (the token, the token file's path, the paths in the
// drop-ins) is refused when it cannot be embedded verbatim, instead of
// escaped. (An earlier template of known keys silently dropped [renew] and
// [metrics].)
//
// The rendered user-data is deliberately thin (see docs/first-boot.md):
//   - it writes /etc/provision/provision.toml (0644) and the one-time token to
//     a tmpfs path under /run (0600), never inline in a command, so the token is
//     not copied into the runcmd script or cloud-init-output.log;
//   - it sets manage_etc_hosts: false, because cloud-init's update_etc_hosts
//     module rewrites /etc/hosts on every boot and would drop provision's block;
//   - it installs and downloads nothing: the image carries the provision package;
//   - it has exactly one runcmd entry (Runcmd), which enables and starts the
//     renew and verify timers and then runs `systemctl start
//     provision.service`, because cloud-init reports only the last runcmd
//     command's status and the packaged unit carries the deadline, restart
//     policy and hardening;
//   - when the config moves a path a unit writes (state_dir, pki_dir,
//     hosts_file, the token file, metrics.textfile_dir), it writes a drop-in
//     for every packaged unit that writes there, whose ReadWritePaths= open
//     exactly that path and whose conditions follow it (the done marker of
//     provision.service, pki_dir/current of provision-renew.service), and
//     reloads systemd before the start (dropins.go).
//
// The ordering that makes the blocking start safe lives in
// deploy/systemd/provision.service; the tests in this package check both ends.
package cloudinit

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"path"
	"regexp"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/BurntSushi/toml"
	"go.yaml.in/yaml/v3"

	"github.com/gpuaas/provision/deploy/systemd"
	"github.com/gpuaas/provision/internal/config"
)

// Template is the Go text/template source of the user-data. It is shipped in
// the package under /usr/share/provision/cloud-init/ so that image builders can
// see exactly what Render produces.
//
//go:embed user-data.yaml.tmpl
var Template string

// tmpl is parsed the first time it is used (provision userdata), not
// before main: every other command would pay for it.
var tmpl = sync.OnceValue(parseTemplate)

func parseTemplate() *template.Template {
	return template.Must(template.New("user-data").Option("missingkey=error").Funcs(template.FuncMap{
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
}

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
// the Default* values. Params has no fields for [metrics] and [renew]: Render
// gives them provision's defaults. To render a whole config as provision
// loads it, use RenderConfig (provision userdata does).
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

// data is what the template sees: a validated config, encoded, the
// drop-ins its paths need, and the one runcmd entry.
type data struct {
	NodeID     string
	ConfigPath string
	ConfigTOML string
	TokenFile  string
	Token      string
	DropIns    []DropIn
	Runcmd     []string
}

// Timers are the packaged timers the user-data enables and starts: the
// package's postinst enables them already, but an image may have been
// built with them off, and a node nothing renews expires within its
// certificate's lifetime (a day with step-ca's default).
var Timers = []string{"provision-renew.timer", "provision-verify.timer"}

// Runcmd is the user-data's one runcmd entry: reload systemd when drop-ins
// were written, enable and start the timers, then start provision.service
// and wait for it. The timers come first and do not stop the bootstrap; the
// entry exits with the bootstrap's failure, else with the timers', so either
// shows in `cloud-init status`. groups are those the drop-ins make the
// units members of (DropInGroups): each is checked first, since a unit
// whose SupplementaryGroups= names a missing group does not start at all
// (status 216/GROUP, which says nothing of why); a missing one is named,
// with what provides it, and nothing is started.
func Runcmd(dropIns bool, groups ...string) []string {
	script := "systemctl enable --now " + strings.Join(Timers, " ") + "; timers=$?; systemctl start provision.service && exit $timers"
	if dropIns {
		// systemd loaded the units before cloud-init wrote the drop-ins.
		script = "systemctl daemon-reload || exit; " + script
	}
	if len(groups) > 0 {
		script = "for g in '" + strings.Join(groups, "' '") + "'; do getent group \"$g\" >/dev/null || { echo \"provision: group $g does not exist on this node, and the drop-ins above make provision's units members of it: they would not start (status 216/GROUP); " +
			"for " + systemd.TPMGroup + " (key.store = tpm) install Debian's tpm-udev package, for paths.key_group create the node-agent's group; nothing was started and the one-time token is unused\" >&2; exit 1; }; done; " + script
	}
	return []string{"sh", "-c", script}
}

// DropIns returns the drop-ins the units need for p's paths (DropInsFor
// the config p describes): none with the default paths.
func (p Params) DropIns() ([]DropIn, error) {
	cfg, err := p.withDefaults().Config()
	if err != nil {
		return nil, err
	}
	return DropInsFor(cfg)
}

// Render validates p and writes the #cloud-config user-data to w: the
// config p describes (Params.Config, with provision's defaults for every
// key Params has no field for), through RenderConfig. Nothing is written
// when validation fails.
func Render(w io.Writer, p Params) error {
	p = p.withDefaults()
	if err := p.Validate(); err != nil {
		return err
	}
	cfg, err := p.Config()
	if err != nil {
		return err
	}
	return RenderConfig(w, cfg, p.Token)
}

// RenderConfig writes the #cloud-config user-data for cfg, a config as
// provision's loader returns it (config.Load, config.Parse), and the node's
// one-time token. The whole config is written, every section and key with
// its value ([renew], [metrics], moved paths...), encoded from cfg rather
// than from a template of known keys, so a key the template did not know
// cannot be dropped on the way to the node; the result is parsed back with
// provision's own loader and must equal cfg. Nothing is written on error,
// and no error repeats the token.
func RenderConfig(w io.Writer, cfg *config.Config, token string) error {
	if err := checkEmbeddable(cfg, token); err != nil {
		return err
	}
	body, err := EncodeConfig(cfg)
	if err != nil {
		return err
	}
	dropIns, err := DropInsFor(cfg)
	if err != nil {
		return err
	}
	var b strings.Builder
	d := data{NodeID: cfg.NodeID, ConfigPath: ConfigPath, ConfigTOML: body, TokenFile: cfg.CA.TokenFile, Token: token, DropIns: dropIns, Runcmd: Runcmd(len(dropIns) > 0, DropInGroups(cfg)...)}
	if err := tmpl().Execute(&b, d); err != nil {
		// The template only reads validated fields; an error here is a bug,
		// and text/template errors never include field values.
		return fmt.Errorf("cloudinit: render template: %w", err)
	}
	if err := readBack(b.String(), cfg, token); err != nil {
		return err
	}
	_, err = io.WriteString(w, b.String())
	return err
}

// checkEmbeddable refuses what cannot go into the user-data verbatim: the
// token (a JWT's characters only), the token file (a tmpfs path under
// /run) and the node id in the header comment. The paths the drop-ins
// carry are checked by DropInsFor.
func checkEmbeddable(cfg *config.Config, token string) error {
	if !config.ValidNodeID(cfg.NodeID) {
		return fmt.Errorf("cloudinit: node_id %q: want 1-63 characters of [A-Za-z0-9._-], starting with a letter or digit", cfg.NodeID)
	}
	if err := checkToken(token); err != nil {
		return err
	}
	if err := validAbsPath(cfg.CA.TokenFile); err != nil {
		return fmt.Errorf("cloudinit: ca.token_file: %w", err)
	}
	if !strings.HasPrefix(cfg.CA.TokenFile, "/run/") {
		return fmt.Errorf("cloudinit: ca.token_file %q: must be under /run (a tmpfs), so the token does not persist across reboots", cfg.CA.TokenFile)
	}
	return nil
}

// EncodeConfig is the provision.toml the user-data writes: cfg encoded with
// the TOML library provision decodes it with, every key written out
// (defaults included, so the node runs exactly this config whatever a later
// provision's defaults are), in printable ASCII: characters beyond it are
// written as TOML \u escapes, so the text goes into a YAML block scalar
// verbatim (YAML 1.1 parsers take U+0085, U+2028 and U+2029 as line
// breaks).
func EncodeConfig(cfg *config.Config) (string, error) {
	var b strings.Builder
	b.WriteString("# Written by cloud-init for node " + cfg.NodeID + "; read by provision.\n")
	enc := toml.NewEncoder(&b)
	enc.Indent = ""
	if err := enc.Encode(cfg); err != nil {
		return "", fmt.Errorf("cloudinit: encoding the config: %w", err)
	}
	return asciiEscape(b.String()), nil
}

// asciiEscape replaces every rune outside printable ASCII by its TOML
// escape. The encoder escapes control characters itself and writes other
// characters only inside basic strings (keys are the config's ASCII
// names), where \uXXXX and \UXXXXXXXX mean the same rune.
func asciiEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\n' || (r >= 0x20 && r < 0x7f):
			b.WriteRune(r)
		case r <= 0xffff:
			fmt.Fprintf(&b, "\\u%04X", r)
		default:
			fmt.Fprintf(&b, "\\U%08X", r)
		}
	}
	return b.String()
}

// readBack parses the user-data back: the provision.toml it writes,
// read with provision's own config loader, must be cfg exactly (one rule
// set, and nothing lost or changed on the way), and the token entry must
// hold the token.
func readBack(userData string, cfg *config.Config, token string) error {
	var doc struct {
		WriteFiles []struct {
			Path    string `yaml:"path"`
			Content string `yaml:"content"`
		} `yaml:"write_files"`
	}
	if err := yaml.Unmarshal([]byte(userData), &doc); err != nil {
		return fmt.Errorf("cloudinit: the rendered user-data is not YAML: %w", err)
	}
	var gotConfig, gotToken bool
	for _, f := range doc.WriteFiles {
		switch f.Path {
		case ConfigPath:
			back, err := config.Parse(ConfigPath, []byte(f.Content))
			if err != nil {
				return refusedConfig(err)
			}
			if !config.Equal(back, cfg) {
				return errors.New("cloudinit: the config this user-data writes does not read back as the config given (a bug in the renderer; nothing was written)")
			}
			gotConfig = true
		case cfg.CA.TokenFile:
			gotToken = f.Content == token
		}
	}
	if !gotConfig || !gotToken {
		return fmt.Errorf("cloudinit: the rendered user-data lacks the %s or token entry (a bug in the renderer; nothing was written)", ConfigPath)
	}
	return nil
}

// Config is the provision config p describes, as provision's loader reads
// it: the keys Params has fields for, and provision's defaults for the
// rest ([metrics], [renew]). An error names the key provision refuses.
func (p Params) Config() (*config.Config, error) {
	type host struct {
		Name string `toml:"name"`
		IP   string `toml:"ip"`
	}
	var doc struct {
		NodeID string `toml:"node_id"`
		Hosts  []host `toml:"hosts"`
		CA     struct {
			URL         string `toml:"url"`
			Fingerprint string `toml:"fingerprint"`
			TokenFile   string `toml:"token_file"`
		} `toml:"ca"`
		NodeAPI struct {
			URL         string `toml:"url"`
			WaitPath    string `toml:"wait_path"`
			WaitTimeout string `toml:"wait_timeout"`
		} `toml:"node_api"`
		Paths struct {
			HostsFile string `toml:"hosts_file"`
			PKIDir    string `toml:"pki_dir"`
			StateDir  string `toml:"state_dir"`
		} `toml:"paths"`
		Bootstrap struct {
			Deadline       string `toml:"deadline"`
			RequestTimeout string `toml:"request_timeout"`
		} `toml:"bootstrap"`
	}
	p = p.withDefaults()
	doc.NodeID = p.NodeID
	for _, h := range p.Hosts {
		doc.Hosts = append(doc.Hosts, host(h))
	}
	doc.CA.URL, doc.CA.Fingerprint, doc.CA.TokenFile = p.CAURL, p.CAFingerprint, p.TokenFile
	doc.NodeAPI.URL, doc.NodeAPI.WaitPath, doc.NodeAPI.WaitTimeout = p.NodeAPIURL, p.WaitPath, p.WaitTimeout
	doc.Paths.HostsFile, doc.Paths.PKIDir, doc.Paths.StateDir = p.HostsFile, p.PKIDir, p.StateDir
	doc.Bootstrap.Deadline, doc.Bootstrap.RequestTimeout = p.Deadline, p.RequestTimeout
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(doc); err != nil {
		return nil, fmt.Errorf("cloudinit: encoding the parameters: %w", err)
	}
	cfg, err := config.Parse(ConfigPath, b.Bytes())
	if err != nil {
		return nil, refusedConfig(err)
	}
	return cfg, nil
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

// The patterns are compiled when first used, as tmpl is parsed. A node_id
// is config.ValidNodeID: a DNS-label-like id, safe in TOML strings, YAML
// comments, URL paths and file names.
var (
	// fingerprintRe: lowercase or uppercase hex SHA-256.
	fingerprintRe = lazyRegexp(`^[0-9A-Fa-f]{64}$`)
	// tokenRe: a JWT (base64url segments joined by dots). Anything else
	// would need escaping in YAML and is not a step-ca token.
	tokenRe = lazyRegexp(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]*){0,4}$`)
	// pathSafeRe: characters allowed in paths and the wait path template;
	// no quotes, backslashes, spaces, '#' or control characters.
	pathSafeRe = lazyRegexp(`^[A-Za-z0-9/._{}+-]+$`)
	// urlSafeRe: characters allowed in the CA and node API URLs.
	urlSafeRe = lazyRegexp(`^[A-Za-z0-9:/._\[\]+-]+$`)
)

func lazyRegexp(pattern string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(pattern) })
}

// Validate reports the first parameter that is missing or that cannot be
// embedded verbatim in both YAML and TOML. Errors name the parameter but never
// repeat the token.
func (p Params) Validate() error {
	if !config.ValidNodeID(p.NodeID) {
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
	if !fingerprintRe().MatchString(p.CAFingerprint) {
		return errors.New("cloudinit: CAFingerprint: want 64 hex digits (SHA-256 of the root certificate's DER)")
	}
	if err := checkToken(p.Token); err != nil {
		return err
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
	if !strings.HasPrefix(p.WaitPath, "/") || !pathSafeRe().MatchString(p.WaitPath) || !strings.Contains(p.WaitPath, "{node_id}") {
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
	if !urlSafeRe().MatchString(raw) {
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
	if !pathSafeRe().MatchString(p) || strings.ContainsAny(p, "{}") {
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

// checkToken refuses an empty token or one that is not a JWT, without
// quoting it: it is a credential even when malformed.
func checkToken(token string) error {
	if token == "" {
		return errors.New("cloudinit: Token: required")
	}
	if !tokenRe().MatchString(token) {
		return errors.New("cloudinit: Token: not a JWT (only base64url segments separated by dots are accepted; whitespace, quotes and newlines are refused)")
	}
	return nil
}

// refusedConfig is a config the renderer wrote that provision would not
// load.
func refusedConfig(err error) error {
	return fmt.Errorf("cloudinit: provision would refuse the config this user-data writes: %w", err)
}
