// Package config is the TOML contract between provision and the templates,
// runbooks and scripts that write its configuration.
//
// Decoding is strict: an unknown key is an error naming the key and its line,
// because a misspelt key silently falling back to a default is how a node ends
// up talking to the wrong place. Validation reports every problem at once, each
// naming its key, so an operator fixes a template in one round trip. Nothing in
// this package touches files other than the config itself.
package config

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/BurntSushi/toml"

	"github.com/gpuaas/provision/nodekey"
)

// DefaultPath is where provision looks for its configuration.
const DefaultPath = "/etc/provision/provision.toml"

// maxConfigBytes caps the config file; a real one is well under 4 KiB.
const maxConfigBytes = 1 << 20

// Config is the validated configuration. Durations and paths carry their
// defaults after Load.
type Config struct {
	NodeID    string    `toml:"node_id"`
	Hosts     []Host    `toml:"hosts"`
	CA        CA        `toml:"ca"`
	NodeAPI   NodeAPI   `toml:"node_api"`
	Paths     Paths     `toml:"paths"`
	Key       NodeKey   `toml:"key"`
	Bootstrap Bootstrap `toml:"bootstrap"`
	Metrics   Metrics   `toml:"metrics"`
	Renew     Renew     `toml:"renew"`

	written map[string]bool // the table's keys the file sets (Written)
}

// Written reports whether the config file sets key (a dotted name of the key
// table, such as "metrics.textfile_dir") rather than leaving it to its
// default. A path the operator wrote deserves a warning where the default
// path stays silent.
func (c *Config) Written(key string) bool { return c.written[key] }

// Host is one name -> IP pair of the /etc/hosts override.
type Host struct {
	Name string `toml:"name"`
	IP   string `toml:"ip"`
}

// CA says where step-ca is and how to trust it.
type CA struct {
	URL         string `toml:"url"`
	Fingerprint string `toml:"fingerprint"`
	TokenFile   string `toml:"token_file"`
}

// NodeAPI is the endpoint the node-agent polls, reached through the ingress.
type NodeAPI struct {
	URL         string   `toml:"url"`
	WaitPath    string   `toml:"wait_path"`
	WaitTimeout Duration `toml:"wait_timeout"`
}

// Paths are host paths; all of them are re-rooted under --root.
type Paths struct {
	HostsFile string `toml:"hosts_file"`
	PKIDir    string `toml:"pki_dir"`
	StateDir  string `toml:"state_dir"`
	// KeyGroup, when set, is the group that may read the private key (a
	// node-agent that does not run as root): the key is then 0640 and
	// pki_dir and its generations 0750, owned by that group.
	KeyGroup string `toml:"key_group,omitempty"`
}

// NodeKey ([key]) says where the node's private key is made and kept.
type NodeKey struct {
	// Store is KeyStoreFile (a software key in key.pem) or KeyStoreTPM
	// (a key made inside the TPM; key.pem holds its wrapped form).
	Store string `toml:"store"`
	// TPM names the TPM: a device path, or a software TPM's socket
	// ("swtpm:path=...") for tests. It is the running machine's, not
	// re-rooted under --root.
	TPM string `toml:"tpm"`
	// OwnerAuthFile holds the TPM owner hierarchy's password, when one is
	// set; "" for none.
	OwnerAuthFile string `toml:"owner_auth_file,omitempty"`
}

// The key stores.
const (
	KeyStoreFile = "file"
	KeyStoreTPM  = "tpm"
)

// Bootstrap holds the time budgets of a bootstrap run.
type Bootstrap struct {
	Deadline       Duration `toml:"deadline"`
	RequestTimeout Duration `toml:"request_timeout"`
	// RestartSplay is the most a restarted run (systemd's Restart=, after
	// a failed run in the same boot) waits, at random, before its network
	// work, so a fleet that failed together does not return together; 0
	// turns it off.
	RestartSplay Duration `toml:"restart_splay"`
}

// Metrics says where provision leaves its node_exporter textfile metrics.
type Metrics struct {
	// Enabled is on by default: a node without node_exporter has no
	// TextfileDir, and provision then writes nothing (it never creates the
	// directory, which belongs to node_exporter's package).
	Enabled bool `toml:"enabled"`
	// TextfileDir is the directory node_exporter's textfile collector
	// reads; re-rooted under --root like every path.
	TextfileDir string `toml:"textfile_dir"`
}

// Renew tunes provision renew: when a certificate is due, whether the key
// changes, and what runs after a renewal is published.
type Renew struct {
	// Fraction of the certificate's lifetime after which it is due.
	Fraction float64 `toml:"fraction"`
	// Splay is the most a node waits past the renewal point, chosen per
	// node and certificate, so a fleet enrolled together does not renew in
	// one second. It is capped to half the time left after the renewal point.
	Splay Duration `toml:"splay"`
	// Rekey: a new key with each renewal (step-ca's /rekey); false keeps the
	// key (/renew).
	Rekey bool `toml:"rekey"`
	// PostHook is a command (argv, no shell) run after a renewal is
	// published, e.g. ["systemctl", "reload", "node-agent"].
	PostHook        []string `toml:"post_hook"`
	PostHookTimeout Duration `toml:"post_hook_timeout"`
}

// Defaults for the optional keys.
const (
	DefaultTokenFile      = "/run/provision/token"
	DefaultWaitPath       = "/v1/nodes/{node_id}/tasks/wait"
	DefaultWaitTimeout    = time.Second
	DefaultHostsFile      = "/etc/hosts"
	DefaultPKIDir         = "/var/lib/provision/pki"
	DefaultStateDir       = "/var/lib/provision"
	DefaultDeadline       = 10 * time.Minute
	DefaultRequestTimeout = 5 * time.Second
	DefaultRestartSplay   = 30 * time.Second // the unit's RestartSec=30s
	// DefaultTextfileDir is where Debian's prometheus-node-exporter package
	// points its textfile collector (its README.textfile, and the directory
	// the package ships).
	DefaultTextfileDir    = "/var/lib/prometheus/node-exporter"
	DefaultRenewFraction  = 2.0 / 3.0
	DefaultRenewSplay     = time.Hour
	DefaultRenewRekey     = true
	DefaultPostHookTimout = 30 * time.Second
	DefaultKeyStore       = KeyStoreFile
	DefaultTPM            = nodekey.DefaultTPM
)

// Duration is a time.Duration written as a Go duration string ("5s", "10m").
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("not a duration like \"5s\" or \"10m\": %q", b)
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler: the duration as an
// operator writes it ("10m", "1h30m", "0s", not "10m0s"), which
// UnmarshalText reads back exactly. provision userdata encodes the whole
// config with it.
func (d Duration) MarshalText() ([]byte, error) { return []byte(fmtDuration(d.Duration)), nil }

// Problem is one thing wrong with the config, tied to its key.
type Problem struct {
	Key  string // dotted key, e.g. "node_api.url" or "hosts[1].ip"
	Line int    // 1-based line when known, else 0
	Msg  string
}

func (p Problem) String() string {
	if p.Line > 0 {
		return fmt.Sprintf("%s (line %d): %s", p.Key, p.Line, p.Msg)
	}
	return fmt.Sprintf("%s: %s", p.Key, p.Msg)
}

// Error lists every problem found in one config file.
type Error struct {
	Path     string
	Problems []Problem
}

// MaxShownProblems caps the problems Error lists; the rest are counted. A
// template that is wrong everywhere (or a file that is not a provision config
// at all) must still give one readable line, not megabytes.
const MaxShownProblems = 20

// maxProblemLen caps one problem's text in Error: a value or key can be as
// long as the file.
const maxProblemLen = 400

func (e *Error) Error() string {
	shown := e.Problems
	if len(shown) > MaxShownProblems {
		shown = shown[:MaxShownProblems]
	}
	parts := make([]string, len(shown), len(shown)+1)
	for i, p := range shown {
		parts[i] = clip(p.String(), maxProblemLen)
	}
	if n := len(e.Problems) - len(shown); n > 0 {
		parts = append(parts, fmt.Sprintf("and %d more problems", n))
	}
	return fmt.Sprintf("config %s: %s", e.Path, strings.Join(parts, "; "))
}

// clip shortens s to at most n bytes, on a rune boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// Load reads and validates the config at path. The path is the real path to
// open (the caller applies --root). Any problem returns *Error.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		msg := err.Error()
		if errors.Is(err, os.ErrNotExist) {
			msg = "file does not exist"
		} else if errors.Is(err, os.ErrPermission) {
			msg = "permission denied"
		}
		return nil, &Error{Path: path, Problems: []Problem{{Key: "--config", Msg: msg}}}
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, maxConfigBytes+1)); err != nil {
		return nil, &Error{Path: path, Problems: []Problem{{Key: "--config", Msg: "reading: " + err.Error()}}}
	}
	if buf.Len() > maxConfigBytes {
		return nil, &Error{Path: path, Problems: []Problem{{Key: "--config", Msg: "larger than 1 MiB; this is not a provision config"}}}
	}
	return Parse(path, buf.Bytes())
}

// Parse decodes and validates config text; name is used in messages only.
func Parse(name string, data []byte) (*Config, error) {
	if !utf8.Valid(data) || bytes.IndexByte(data, 0) >= 0 {
		return nil, &Error{Path: name, Problems: []Problem{{Key: "--config", Msg: "not UTF-8 text; this is not a provision config"}}}
	}
	var c Config
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&c)
	if err != nil {
		return nil, &Error{Path: name, Problems: []Problem{decodeProblem(err)}}
	}
	lines := newLineIndex(data)
	var probs []Problem
	for _, k := range md.Undecoded() {
		probs = append(probs, Problem{Key: k.String(), Line: lines.line(k.String()), Msg: "unknown key" + suggest(k.String())})
	}
	c.written = map[string]bool{}
	for _, k := range Keys {
		if !strings.Contains(k.Name, "[]") && md.IsDefined(strings.Split(k.Name, ".")...) {
			c.written[k.Name] = true
		}
	}
	c.applyDefaults()
	probs = append(probs, c.validate(lines)...)
	if len(probs) > 0 {
		sort.SliceStable(probs, func(i, j int) bool {
			if probs[i].Line == 0 || probs[j].Line == 0 {
				return probs[i].Line != 0 && probs[j].Line == 0
			}
			return probs[i].Line < probs[j].Line
		})
		return nil, &Error{Path: name, Problems: probs}
	}
	return &c, nil
}

func decodeProblem(err error) Problem {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		msg := pe.Message
		if msg == "" {
			msg = pe.Error()
		}
		key := pe.LastKey
		if key == "" {
			key = "syntax"
		}
		return Problem{Key: key, Line: pe.Position.Line, Msg: "TOML syntax: " + msg}
	}
	// Type errors ("incompatible types") name the key, and often the line,
	// in their text: "toml: line 3 (last key "ca"): ...".
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "toml: ")
	key, line := "syntax", 0
	if m := lineInErr().FindStringSubmatch(msg); m != nil {
		fmt.Sscanf(m[1], "%d", &line)
		key, msg = m[2], m[3]
	} else if m := keyInErr().FindStringSubmatch(msg); m != nil {
		key = m[1]
	}
	return Problem{Key: key, Line: line, Msg: msg}
}

// The patterns of this package are compiled when first used, not before
// main: most runs never need most of them (a node's every run pays what its
// packages' variables cost to build).
var (
	keyInErr  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?:key|field) "?([A-Za-z0-9_.\[\]]+)"?`) })
	lineInErr = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^line (\d+) \(last key "([^"]*)"\): (.*)$`) })
)

// suggest offers the closest known key for a typo.
func suggest(key string) string {
	best, bestD := "", 4
	for _, k := range knownKeys() {
		// The distance is at least the difference in length: skip the
		// quadratic computation for keys that cannot be close.
		if l := len(key) - len(k); l >= bestD || -l >= bestD {
			continue
		}
		if d := editDistance(key, k); d < bestD {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev, cur := make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// applyDefaults gives every key the file leaves out its default from the
// key table. A key that is written is kept as written, even "" or "0s", and
// validated: an explicit value never silently becomes the default.
func (c *Config) applyDefaults() {
	for _, k := range Keys {
		if !c.written[k.Name] {
			k.setDefault(c)
		}
	}
}

// Ranges of the duration keys, inclusive. They are the contract documented
// in docs/configuration.md; cloud-init's generator enforces the same.
const (
	// MaxWaitTimeout is the documented ceiling (10m, the contract since the
	// first release). A poll longer than the ingress read timeout in front of
	// the node API (60s by default in Traefik and nginx) ends in a 504 on
	// every node, which tasks-wait then names; the default stays 1s. 0s is
	// allowed and means no long poll (?timeout=0).
	MaxWaitTimeout = 10 * time.Minute
	// MinDeadline and MaxDeadline bound the whole bootstrap. Beyond a day
	// is a typo (10h for 10m), not a plan: the unit gives it 15 minutes.
	MinDeadline = time.Second
	MaxDeadline = 24 * time.Hour
	// Request timeouts: one network request.
	MinRequestTimeout = 100 * time.Millisecond
	MaxRequestTimeout = 5 * time.Minute
	// MaxRestartSplay bounds a restart's random wait: the unit gives a run
	// 15 minutes, and the wait is taken from bootstrap.deadline.
	MaxRestartSplay = 10 * time.Minute
	// Renewal: the fraction is a share of the lifetime strictly between 0
	// and 1 (below 0.1 renews all the time, 0.95 and above leaves no room
	// for a failed attempt); the splay and the hook's timeout are bounded
	// so a typo (10h for 10m) is caught.
	MinRenewFraction   = 0.1
	MaxRenewFraction   = 0.95
	MaxRenewSplay      = 24 * time.Hour
	MinPostHookTimeout = time.Second
	MaxPostHookTimeout = 10 * time.Minute
)

// fmtDuration prints a duration without zero units: 24h, 5m, 1m30s, 100ms.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// ValidNodeID reports whether id is what a node_id may look like, the
// pattern ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$: it becomes a certificate
// subject, a URL path segment and a file name. provision userdata uses the
// same rule. (Written out: that regular expression takes a tenth of a
// millisecond to compile, before every command.)
func ValidNodeID(id string) bool {
	if id == "" || len(id) > 63 || !isAlnum(id[0]) {
		return false
	}
	for i := 1; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// waitPathPattern is an RFC 3986 path of pchars and valid %XX escapes, plus
// the braces of {node_id}: anything else would make WaitURL unparsable.
var waitPathPattern = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^(/([A-Za-z0-9\-._~!$&'()*+,;=:@{}]|%[0-9A-Fa-f]{2})*)+$`)
})

// ValidHostname reports whether name is a hostname the config accepts in
// [[hosts]] (hosts(5): letters, digits, '-' and '.', at most 253
// characters, each label at most 63). provision userdata uses the same rule.
func ValidHostname(name string) bool {
	if len(name) > 253 || !hostnamePattern().MatchString(name) {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if utf8.RuneCountInString(label) > 63 {
			return false
		}
	}
	return true
}

// hostnamePattern follows hosts(5): letters, digits, '-' and '.'; the
// length of a label (at most 63) is checked apart, which keeps the
// expression quick to compile.
var hostnamePattern = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^(?i)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)
})

// adder records one problem with a key: its line is looked up once.
type adder func(key, format string, args ...any)

// validate checks every key against its rules and returns every problem,
// each naming its key and line. One function per section of the file.
func (c *Config) validate(lines *lineIndex) []Problem {
	var probs []Problem
	add := func(key, format string, args ...any) {
		probs = append(probs, Problem{Key: key, Line: lines.line(key), Msg: fmt.Sprintf(format, args...)})
	}
	c.validateNode(add)
	c.validateCA(add)
	c.validateNodeAPI(add)
	c.validateTable(add)
	if g := c.Paths.KeyGroup; c.written["paths.key_group"] && !GroupPattern().MatchString(g) {
		add("paths.key_group", "%q is not a group name (lower-case letters, digits, '_' and '-', starting with a letter or '_', at most 32) nor a numeric group id", g)
	}
	c.validateRenew(add)
	c.validateKey(add)
	c.validateBudget(add)
	return probs
}

// validateTable checks what the key table says of every key: an optional
// string written as "" (it does not mean the default), the path rules of a
// path key, the range of a duration or number.
func (c *Config) validateTable(add adder) {
	for _, k := range Keys {
		if k.field == nil {
			continue
		}
		for _, msg := range []string{k.emptyString(c), k.checkPathKey(c), k.checkRange(c)} {
			if msg != "" {
				add(k.Name, "%s", msg)
				break
			}
		}
	}
}

// validateNode: node_id and [[hosts]].
func (c *Config) validateNode(add adder) {
	switch {
	case c.NodeID == "":
		add("node_id", "required: the node's identity, used as the certificate subject")
	case !ValidNodeID(c.NodeID):
		add("node_id", "%q is not a valid node id (letters, digits, '.', '_', '-'; at most 63 characters)", c.NodeID)
	}

	if len(c.Hosts) == 0 {
		add("hosts", "required: at least one [[hosts]] entry mapping the node API hostname to the control-plane IP")
	}
	seen := map[string]int{}
	for i, h := range c.Hosts {
		k := fmt.Sprintf("hosts[%d]", i)
		if h.Name == "" {
			add(k+".name", "required")
		} else if !ValidHostname(h.Name) {
			add(k+".name", "%q is not a valid hostname", h.Name)
		} else if j, dup := seen[strings.ToLower(h.Name)]; dup {
			add(k+".name", "%q is already mapped by hosts[%d]; one name, one IP", h.Name, j)
		} else {
			seen[strings.ToLower(h.Name)] = i
		}
		if h.IP == "" {
			add(k+".ip", "required")
		} else if a, err := netip.ParseAddr(h.IP); err != nil {
			add(k+".ip", "%q is not an IP address", h.IP)
		} else if a.Zone() != "" {
			add(k+".ip", "%q is not an IP address for /etc/hosts: it carries the zone %q, which hosts(5) has no place for", h.IP, a.Zone())
		} else if a.Is4In6() {
			// Refused rather than normalised: resolvers and /etc/hosts
			// lookups return the unmapped IPv4 form, so the hosts check
			// comparing them with this value could never pass; and
			// silently writing a different address than the config says
			// would hide the mistake from whoever wrote the template.
			add(k+".ip", "%q is an IPv4-mapped IPv6 address; write the IPv4 address %q", h.IP, a.Unmap().String())
		}
	}
}

// validateCA: [ca].
func (c *Config) validateCA(add adder) {
	if _, msg := checkURL(c.CA.URL); msg != "" {
		add("ca.url", "%s", msg)
	}
	fp := strings.ToLower(strings.ReplaceAll(c.CA.Fingerprint, ":", ""))
	switch {
	case c.CA.Fingerprint == "":
		add("ca.fingerprint", "required: the hex SHA-256 of the CA root certificate (step certificate fingerprint root_ca.crt)")
	case len(fp) != 64 || !isHex(fp):
		add("ca.fingerprint", "must be 64 hex characters (SHA-256 of the root certificate's DER), got %d characters", len(c.CA.Fingerprint))
	default:
		c.CA.Fingerprint = fp
	}
}

// validateNodeAPI: [node_api].
func (c *Config) validateNodeAPI(add adder) {
	if u, msg := checkURL(c.NodeAPI.URL); msg != "" {
		add("node_api.url", "%s", msg)
	} else if ip, isIP := hostIsIP(u); isIP {
		add("node_api.url", "uses the IP address %s; use the node API hostname so the ingress can route by Host and verify SNI (add a [[hosts]] entry mapping the name to %s)", ip, ip)
	} else if !c.mapsHost(u.Hostname()) {
		add("node_api.url", "hostname %q has no [[hosts]] entry; add one mapping it to the private control-plane IP", u.Hostname())
	} else if u.Path != "" && u.Path != "/" {
		add("node_api.url", "must not carry a path (%q); put the path in node_api.wait_path", u.Path)
	}
	switch {
	case c.NodeAPI.WaitPath == "": // the key table's rule
	case !strings.HasPrefix(c.NodeAPI.WaitPath, "/"):
		add("node_api.wait_path", "must start with '/', got %q", c.NodeAPI.WaitPath)
	case !strings.Contains(c.NodeAPI.WaitPath, "{node_id}"):
		add("node_api.wait_path", "must contain {node_id}, got %q", c.NodeAPI.WaitPath)
	case strings.ContainsAny(c.NodeAPI.WaitPath, "?# \t"):
		add("node_api.wait_path", "must be a plain path without query, fragment or spaces, got %q", c.NodeAPI.WaitPath)
	case !waitPathPattern().MatchString(c.NodeAPI.WaitPath):
		add("node_api.wait_path", "must be a URL path (letters, digits, -._~!$&'()*+,;=:@/ and %%XX escapes), got %q", c.NodeAPI.WaitPath)
	}
	// Its range is the key table's; here, what it must be against the deadline.
	switch d, dl := c.NodeAPI.WaitTimeout.Duration, c.Bootstrap.Deadline.Duration; {
	case d < 0 || d > MaxWaitTimeout:
	case d >= dl && dl >= MinDeadline:
		add("node_api.wait_timeout", "must be shorter than bootstrap.deadline (%s): with no task queued the proof's long poll holds that long, so bootstrap could never finish", dl)
	}
}

// validateRenew: [renew]'s hook (its numbers are the key table's).
func (c *Config) validateRenew(add adder) {
	if len(c.Renew.PostHook) > 0 {
		switch h := c.Renew.PostHook[0]; {
		case !strings.HasPrefix(h, "/"):
			add("renew.post_hook", "the command must be an absolute path (it runs without a shell and without PATH lookup), got %q", h)
		case filepath.Clean(h) != h:
			add("renew.post_hook", "the command must be a clean path, got %q", h)
		}
	}
}

// validateKey: [key]'s store and TPM name (owner_auth_file is a path of
// the key table).
func (c *Config) validateKey(add adder) {
	switch c.Key.Store {
	case KeyStoreFile, KeyStoreTPM, "": // "" is the key table's rule
	default:
		add("key.store", "must be %q (a key file, the default) or %q (a key made inside the TPM), got %q", KeyStoreFile, KeyStoreTPM, c.Key.Store)
	}
	if c.Key.TPM != "" {
		if _, err := nodekey.ParseSpec(c.Key.TPM); err != nil {
			add("key.tpm", "%v", err)
		}
	}
}

// validateBudget: the rules between keys. Every network timeout, and the
// post-hook's, must fit in bootstrap.deadline, the budget bootstrap and
// renew run in (and verify's is built from the same timeouts): a timeout
// longer than the deadline is never the one that fires, so the config
// would say something the run cannot do. A key out of its own range has
// its own problem already and is not judged here again. Each problem names
// both keys, on the line of the one that does not fit.
func (c *Config) validateBudget(add adder) {
	dl, req, wait := c.Bootstrap.Deadline.Duration, c.Bootstrap.RequestTimeout.Duration, c.NodeAPI.WaitTimeout.Duration
	if dl < MinDeadline || dl > MaxDeadline || req < MinRequestTimeout || req > MaxRequestTimeout {
		return
	}
	// value prints a key's duration, saying when the file left it out.
	value := func(key string, d time.Duration) string {
		if !c.written[key] {
			return fmtDuration(d) + ", the default"
		}
		return fmtDuration(d)
	}
	const shorten = "shorten %s or lengthen bootstrap.deadline"
	switch {
	case req > dl:
		add("bootstrap.request_timeout", "bootstrap.request_timeout (%s) is longer than bootstrap.deadline (%s): every network request must fit in the run's deadline; "+shorten,
			value("bootstrap.request_timeout", req), fmtDuration(dl), "bootstrap.request_timeout")
	case wait >= 0 && wait < dl && wait+req > dl:
		// wait >= dl has its own problem (validateNodeAPI).
		add("node_api.wait_timeout", "node_api.wait_timeout (%s) plus bootstrap.request_timeout (%s) is %s, longer than bootstrap.deadline (%s): the proof's long poll and the request around it must fit in the run's deadline; "+shorten,
			value("node_api.wait_timeout", wait), value("bootstrap.request_timeout", req), fmtDuration(wait+req), fmtDuration(dl), "one of them")
	}
	hook := c.Renew.PostHookTimeout.Duration
	if len(c.Renew.PostHook) > 0 && hook >= MinPostHookTimeout && hook <= MaxPostHookTimeout && hook > dl {
		add("renew.post_hook_timeout", "renew.post_hook_timeout (%s) is longer than bootstrap.deadline (%s), inside which renew runs renew.post_hook: the deadline would kill the hook first; "+shorten,
			value("renew.post_hook_timeout", hook), fmtDuration(dl), "renew.post_hook_timeout")
	}
}

// checkTextfileDir says what is wrong with metrics.textfile_dir, or "". It
// is a path like the others, but a directory provision neither owns nor
// chmods: node_exporter's.
func checkTextfileDir(p string) string {
	switch {
	case systemDirs[p]:
		return fmt.Sprintf("must not be the shared system directory %s itself: node_exporter would read every *.prom file anyone leaves there; use the directory its textfile collector reads, such as %q", p, DefaultTextfileDir)
	}
	return checkPath(p, true)
}

// systemDirs are directories shared with the rest of the system. provision
// creates the directories it owns 0700 and fills them with its own links, so
// pki_dir or state_dir set to one of these themselves would lock everyone
// else out of it (pki_dir = "/etc" leaves /etc 0700). A file key naming one
// of them can never work either.
var systemDirs = map[string]bool{
	"/etc": true, "/var": true, "/usr": true, "/bin": true, "/sbin": true, "/lib": true, "/lib64": true,
	"/run": true, "/tmp": true, "/var/lib": true, "/boot": true, "/home": true, "/root": true,
	"/dev": true, "/proc": true, "/sys": true,
}

// checkPath says what is wrong with a path key's value, or "". Paths must be
// absolute and clean: "/var/lib/provision/../../../etc" is /etc, and a
// value that means something other than it says is refused rather than
// cleaned. dir is true for the directories provision owns and chmods.
func checkPath(p string, dir bool) string {
	switch {
	case !strings.HasPrefix(p, "/"):
		return fmt.Sprintf("must be an absolute path, got %q", p)
	case slices.Contains(strings.Split(p, "/"), ".."):
		return fmt.Sprintf("must not contain '..' (it resolves to %q), got %q", filepath.Clean(p), p)
	case filepath.Clean(p) != p:
		return fmt.Sprintf("must be a clean path (no '.', '//' or trailing '/'): write %q, got %q", filepath.Clean(p), p)
	case p == "/":
		return "must not be the root directory /"
	case systemDirs[p] && dir:
		return fmt.Sprintf("must not be the shared system directory %s itself: provision makes its directories 0700; use a directory of its own such as %q", p, filepath.Join(p, "provision"))
	case systemDirs[p]:
		return fmt.Sprintf("is the system directory %s, not a file", p)
	}
	return ""
}

func (c *Config) mapsHost(name string) bool {
	for _, h := range c.Hosts {
		if strings.EqualFold(h.Name, name) {
			return true
		}
	}
	return false
}

func checkURL(s string) (*url.URL, string) {
	if s == "" {
		return nil, "required"
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Sprintf("not a URL: %q", s)
	}
	if u.Scheme != "https" {
		return nil, fmt.Sprintf("must be an https:// URL, got %q", s)
	}
	if u.Hostname() == "" {
		return nil, fmt.Sprintf("has no host: %q", s)
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || strings.Contains(s, "#") {
		return nil, fmt.Sprintf("must not carry credentials, a query or a fragment: %q", u.Redacted())
	}
	// url.Parse takes any run of digits as a port; 99999 was then retried
	// as a TCP fault until the deadline. An empty port ("host:") means 443.
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Sprintf("port %s is out of range 1-65535: %q", p, u.Redacted())
		}
	}
	return u, ""
}

func hostIsIP(u *url.URL) (string, bool) {
	h := u.Hostname()
	if _, err := netip.ParseAddr(h); err == nil {
		return h, true
	}
	return "", false
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// WaitURL is node_api.url + wait_path with {node_id} filled in, plus the
// timeout query that keeps the proof's long poll short.
func (c *Config) WaitURL() string {
	p := strings.ReplaceAll(c.NodeAPI.WaitPath, "{node_id}", url.PathEscape(c.NodeID))
	u := strings.TrimRight(c.NodeAPI.URL, "/") + p
	// The API takes whole seconds; round up so "500ms" still asks it to hold.
	secs := int(math.Ceil(c.NodeAPI.WaitTimeout.Seconds()))
	return fmt.Sprintf("%s?timeout=%d", u, secs)
}

// HostMap returns the override entries as name -> IP.
func (c *Config) HostMap() map[string]netip.Addr {
	m := make(map[string]netip.Addr, len(c.Hosts))
	for _, h := range c.Hosts {
		a, _ := netip.ParseAddr(h.IP)
		m[strings.ToLower(h.Name)] = a
	}
	return m
}

// lineIndex finds the line that sets a dotted key ("node_api.url",
// "hosts[1].ip"). The TOML library reports positions only for syntax errors,
// and an operator editing a template wants the line for every problem. The
// file is scanned once, when the index is built, so a config with tens of
// thousands of unknown keys costs one pass, not one pass per key.
//
// The scan is line-based, not a TOML parser: a "[...]" line is a table
// header, a "k = v" line sets k in the current table; the first match wins.
type lineIndex struct {
	headers  map[string][]int // table name -> lines of its headers, "[t]" and "[[t]]", in order
	keys     map[tableKey]int // (table, key) -> first line setting key in table; table "" is the top level
	arrayKey map[arrayKey]int // (table, key, n) -> first line setting key in the n-th (0-based) "[[table]]"
}

type tableKey struct{ table, key string }

type arrayKey struct {
	table, key string
	n          int
}

func newLineIndex(data []byte) *lineIndex {
	ix := &lineIndex{headers: map[string][]int{}, keys: map[tableKey]int{}, arrayKey: map[arrayKey]int{}}
	arrays := map[string]int{} // "[[t]]" headers seen so far, per table
	cur := ""
	for n, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		if strings.HasPrefix(line, "[") {
			cur = strings.Trim(strings.SplitN(line, "#", 2)[0], "[] \t")
			ix.headers[cur] = append(ix.headers[cur], n+1)
			if strings.HasPrefix(line, "[[") {
				arrays[cur]++
			}
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k = strings.Trim(strings.TrimSpace(k), `"'`)
		if _, dup := ix.keys[tableKey{cur, k}]; !dup {
			ix.keys[tableKey{cur, k}] = n + 1
		}
		ak := arrayKey{cur, k, arrays[cur] - 1}
		if _, dup := ix.arrayKey[ak]; !dup {
			ix.arrayKey[ak] = n + 1
		}
	}
	return ix
}

// line is the line of key, or 0. A key inside a table that is not written
// out (missing, or set by an inline table) is reported at its table's header
// ("[ca]", or the index-th "[[hosts]]"), falling back to a top-level
// "table = ..." line.
func (ix *lineIndex) line(key string) int {
	table, leaf, index := "", key, -1
	if i := strings.LastIndex(key, "."); i >= 0 {
		table, leaf = key[:i], key[i+1:]
	}
	if i := strings.Index(table, "["); i >= 0 {
		fmt.Sscanf(table[i:], "[%d]", &index)
		table = table[:i]
	}
	best := 0
	first := func(n int) {
		if n > 0 && (best == 0 || n < best) {
			best = n
		}
	}
	if hs := ix.headers[key]; len(hs) > 0 {
		first(hs[0]) // the key is itself a table ("[extra]")
	}
	if index < 0 {
		first(ix.keys[tableKey{table, leaf}])
	} else {
		first(ix.arrayKey[arrayKey{table, leaf, index}])
	}
	if table != "" {
		first(ix.keys[tableKey{"", key}]) // dotted key at top level
	}
	if best > 0 || table == "" {
		return best
	}
	hs := ix.headers[table]
	switch {
	case index < 0 && len(hs) > 0:
		return hs[0]
	case index >= 0 && index < len(hs):
		return hs[index]
	}
	return ix.line(table)
}

// GroupPattern is a group name as useradd(8) accepts it, or a numeric gid.
var GroupPattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})$`) })

// Equal reports whether two configs hold the same settings, whichever keys
// their files spelled out (a rendered config writes every default).
func Equal(a, b *Config) bool {
	if a == nil || b == nil {
		return a == b
	}
	ac, bc := *a, *b
	ac.written, bc.written = nil, nil
	return reflect.DeepEqual(ac, bc)
}
