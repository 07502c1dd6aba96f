package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// The key table.
//
// Keys is the one list of what a config may say: every key with its type,
// whether it is required, its default, its range and what it means. Three
// things read it, so they cannot drift apart:
//
//   - validation: a key that is not in the table is unknown (and the table
//     suggests the nearest one), a key left out takes the table's default, a
//     key written as "" is refused naming that default, a duration or number
//     outside the table's range is refused naming the range, and a path key
//     is checked by the path rules its kind names;
//   - docs/configuration.md: its key table is Markdown() of this table
//     (TestConfigurationDocIsGenerated fails when the file differs);
//   - provision.toml(5): internal/cli renders the man page from this table.
//
// What a table cannot say (a node_id's pattern, a URL's shape, the hosts
// entries, a fingerprint, wait_timeout against the deadline, the hook's
// argv) is checked by code in config.go, and the table's Doc says it in
// words; TestKeyTable* tie the two together.

// Kind is how a key's value is written in TOML.
type Kind string

// The kinds of keys.
const (
	KindString   Kind = "string"
	KindPath     Kind = "string (path)"           // a file: the path rules apply
	KindDir      Kind = "string (directory path)" // a directory: the path rules, and no shared system directory
	KindDuration Kind = "duration"                // a Go duration string: "500ms", "5s", "1h30m"
	KindBool     Kind = "bool"
	KindFloat    Kind = "float"
	KindArgv     Kind = "array of strings"
	KindTables   Kind = "array of tables"
)

// Key is one entry of the key table.
type Key struct {
	// Name is the dotted key ("node_api.wait_timeout"); a key of each
	// [[hosts]] entry is written "hosts[].name".
	Name     string
	Kind     Kind
	Required bool
	// Default is the value a key left out takes, as TOML would write it
	// ("\"/etc/hosts\"", "\"10m\"", "true"); "" for none.
	Default string
	Example string // a value as TOML would write it; "" for none
	// Min and Max bound a duration or float key, inclusive, as written
	// ("0s", "10m", "0.1"); "" for an unbounded key.
	Min, Max string
	// Doc says what the key is for and its rules, in one paragraph. Inline
	// markup: `code`, **strong** and [text](link), rendered by Markdown and
	// by the man page.
	Doc string
	// Why is appended to a range error: why the range is what it is.
	Why string

	field func(c *Config) any   // a pointer to the field the key decodes into
	exact any                   // the default itself, when Default shows it rounded
	path  func(p string) string // the path rule of a path key, if not its kind's
}

// Keys is the key table, in the order the documentation lists the keys.
var Keys = []Key{
	{Name: "node_id", Kind: KindString, Required: true, Example: `"gpu-0042"`,
		Doc:   "1-63 of `[A-Za-z0-9._-]`, starting with a letter or digit. The certificate subject and `{node_id}` in `wait_path`; keep it across reinstalls",
		field: func(c *Config) any { return &c.NodeID }},
	{Name: "hosts", Kind: KindTables, Required: true,
		Doc:   "at least one: the `/etc/hosts` override, kept in a managed block of `paths.hosts_file`",
		field: func(c *Config) any { return &c.Hosts }},
	{Name: "hosts[].name", Kind: KindString, Required: true, Example: `"node-api.cp.internal"`,
		Doc: "a hostname (hosts(5)); each name once. The host of `node_api.url` must be one of them"},
	{Name: "hosts[].ip", Kind: KindString, Required: true, Example: `"10.40.0.10"`,
		Doc: "IPv4 or IPv6 address, no zone (`%eth0`); the private control-plane IP. An IPv4-mapped IPv6 address (`::ffff:10.40.0.10`) is refused: write the IPv4 form, which is what lookups return, or the hosts check could never pass"},
	{Name: "ca.url", Kind: KindString, Required: true, Example: `"https://ca.cp.internal:9000"`,
		Doc:   "`https://`, no credentials, query or fragment; a port, if given, is 1-65535",
		field: func(c *Config) any { return &c.CA.URL }},
	{Name: "ca.fingerprint", Kind: KindString, Required: true, Example: `"<64 hex digits>"`,
		Doc:   "SHA-256 of the root certificate's DER (`step certificate fingerprint root_ca.crt`); colons allowed. The pin is only as trustworthy as the channel that delivered the config",
		field: func(c *Config) any { return &c.CA.Fingerprint }},
	{Name: "ca.token_file", Kind: KindPath, Default: `"` + DefaultTokenFile + `"`,
		Doc:   "the one-time enrollment token (a JWK provisioner's one-time token); keep it on tmpfs, mode 0600. Deleted after use",
		field: func(c *Config) any { return &c.CA.TokenFile }},
	{Name: "node_api.url", Kind: KindString, Required: true, Example: `"https://node-api.cp.internal:8443"`,
		Doc:   "`https://`, **hostname only**: an IP literal is a config error (no SNI, so the ingress's mTLS route is bypassed: the incident's `404`). No path: put it in `wait_path`. A port, if given, is 1-65535",
		field: func(c *Config) any { return &c.NodeAPI.URL }},
	{Name: "node_api.wait_path", Kind: KindString, Default: `"` + DefaultWaitPath + `"`,
		Doc:   "must start with `/` and contain `{node_id}`; no query, fragment or spaces",
		field: func(c *Config) any { return &c.NodeAPI.WaitPath }},
	{Name: "node_api.wait_timeout", Kind: KindDuration, Default: dur(DefaultWaitTimeout), Example: `"2s"`, Min: dur(0), Max: dur(MaxWaitTimeout),
		Doc:   "sent as `?timeout=<seconds>` (rounded up); it plus `bootstrap.request_timeout` must fit in `bootstrap.deadline`. `\"0s\"` means no long poll (`?timeout=0`: the API answers at once). Keeps the proof's long poll well inside the ingress's read timeout (60s by default in Traefik and nginx)",
		Why:   "the proof's long poll must end inside the ingress's read timeout, 60s by default",
		field: func(c *Config) any { return &c.NodeAPI.WaitTimeout }},
	{Name: "paths.hosts_file", Kind: KindPath, Default: `"` + DefaultHostsFile + `"`,
		Doc:   "the hosts file that gets the managed block; a symbolic link is edited at its target, resolved inside `--root`, when root owns it in a directory only root can write",
		field: func(c *Config) any { return &c.Paths.HostsFile }},
	{Name: "paths.pki_dir", Kind: KindDir, Default: `"` + DefaultPKIDir + `"`,
		Doc:   "`key.pem` (0600), `cert.pem` (leaf + intermediates), `ca.pem` (roots), through the `current` link into a generation directory",
		field: func(c *Config) any { return &c.Paths.PKIDir }},
	{Name: "paths.state_dir", Kind: KindDir, Default: `"` + DefaultStateDir + `"`,
		Doc:   "`receipt.json`, `renew.json`, `.lock`, `done/<machine-id>`, `tasks/<id>.json`",
		field: func(c *Config) any { return &c.Paths.StateDir }},
	{Name: "paths.key_group", Kind: KindString, Example: `"node-agent"`,
		Doc:   "the group that may read the private key, for a node-agent that does not run as root (a name in `/etc/group`, or a numeric gid): `key.pem` is then 0640, `pki_dir` and its generation directories 0750, `state_dir` 0710 (the group passes through, cannot list it) and `tasks/` 0750 with each task 0640, all owned by that group; verify and status fail when the group cannot walk the path to the key. Left out, the key and tasks are 0600 and the directories 0700, root's alone",
		field: func(c *Config) any { return &c.Paths.KeyGroup }},
	{Name: "key.store", Kind: KindString, Default: `"` + DefaultKeyStore + `"`, Example: `"tpm"`,
		Doc:   "where the node's private key is made and kept. `\"file\"`: a software P-256 key in `key.pem`. `\"tpm\"`: a P-256 key made inside the node's TPM 2.0, which never leaves it (not exportable, sign-only, immune to dictionary-attack lockout); `key.pem` then holds the TPM's wrapped key (`-----BEGIN TSS2 PRIVATE KEY-----`), useless on any other machine, and every signature is the TPM's. A change applies from the next new key: an enrollment, or a renewal with `renew.rekey` ([configuration.md](configuration.md#the-node-key-in-the-tpm))",
		field: func(c *Config) any { return &c.Key.Store }},
	{Name: "key.tpm", Kind: KindString, Default: `"` + DefaultTPM + `"`, Example: `"swtpm:path=/run/swtpm/tpm.sock"`,
		Doc:   "the TPM every TPM key is made in and signs with: a device path (the kernel's resource manager, the running machine's own: not re-rooted under `--root`) or, for tests, a software TPM's socket in tpm2-tss's TCTI syntax, `swtpm:path=<socket>` or `swtpm:host=<host>,port=<port>`. The units reach `/dev/tpmrm0` only with the drop-in `key.store = \"tpm\"` needs ([configuration.md](configuration.md#the-node-key-in-the-tpm))",
		field: func(c *Config) any { return &c.Key.TPM }},
	{Name: "key.owner_auth_file", Kind: KindPath, Example: `"/etc/provision/tpm-owner"`,
		Doc:   "a file holding the TPM owner hierarchy's password, for a TPM whose owner password is set (`tpm2_getcap properties-variable` shows `ownerAuthSet: 1`): the storage key is derived under the owner hierarchy for each signature, so the node-agent needs it too. At most 64 bytes and a newline; never logged. Left out, the owner password is empty, as on most machines",
		field: func(c *Config) any { return &c.Key.OwnerAuthFile }},
	{Name: "bootstrap.deadline", Kind: KindDuration, Default: dur(DefaultDeadline), Example: `"30m"`, Min: dur(MinDeadline), Max: dur(MaxDeadline),
		Doc:   "the whole bootstrap, retries included (and renew's budget). Keep it below the unit's `TimeoutStartSec=15min` (or raise that in a drop-in)",
		field: func(c *Config) any { return &c.Bootstrap.Deadline }},
	{Name: "bootstrap.request_timeout", Kind: KindDuration, Default: dur(DefaultRequestTimeout), Example: `"10s"`, Min: dur(MinRequestTimeout), Max: dur(MaxRequestTimeout),
		Doc:   "each network request; no longer than `bootstrap.deadline`. One exception: a sign, once connected, is waited for until `bootstrap.deadline`, since the CA burns the token when it sees the request and a sign given up on costs the node its token (found by the boot storm, [performance.md](performance.md))",
		field: func(c *Config) any { return &c.Bootstrap.RequestTimeout }},
	{Name: "bootstrap.restart_splay", Kind: KindDuration, Default: dur(DefaultRestartSplay), Example: `"1m"`, Min: dur(0), Max: dur(MaxRestartSplay),
		Doc:   "the most a **restarted** run waits, at random (full jitter), before its network work, so a fleet that failed together does not come back together: systemd's `RestartSec=` has no jitter. A run is a restart when it is the unit's own process (`INVOCATION_ID`) and a bootstrap failed in the same boot less than 5 minutes before; a run by hand never waits. At most half of `bootstrap.deadline`; `\"0s\"` turns it off ([configuration.md](configuration.md#restarts-are-spread))",
		field: func(c *Config) any { return &c.Bootstrap.RestartSplay }},
	{Name: "metrics.enabled", Kind: KindBool, Default: "true", Example: "false",
		Doc:   "write node_exporter textfile metrics after `bootstrap`, `verify` and `renew` ([metrics.md](metrics.md))",
		field: func(c *Config) any { return &c.Metrics.Enabled }},
	{Name: "metrics.textfile_dir", Kind: KindDir, Default: `"` + DefaultTextfileDir + `"`, Example: `"/var/lib/node_exporter/textfile"`,
		path:  checkTextfileDir,
		Doc:   "the directory node_exporter's textfile collector reads; the default is the one Debian's `prometheus-node-exporter` package ships. provision never creates or chmods it: when it does not exist, no metrics are written (a warning in the log when the config names it, silence for the default)",
		field: func(c *Config) any { return &c.Metrics.TextfileDir }},
	{Name: "renew.fraction", Kind: KindFloat, Default: strconv.FormatFloat(DefaultRenewFraction, 'f', 4, 64), Example: "0.75", Min: num(MinRenewFraction), Max: num(MaxRenewFraction), exact: DefaultRenewFraction,
		Doc:   "share of the certificate's lifetime after which `provision renew` renews it (the default is 2/3)",
		Why:   "the share of the certificate's lifetime after which it is renewed; default 2/3",
		field: func(c *Config) any { return &c.Renew.Fraction }},
	{Name: "renew.splay", Kind: KindDuration, Default: dur(DefaultRenewSplay), Example: `"10m"`, Min: dur(0), Max: dur(MaxRenewSplay),
		Doc:   "most a node waits past the renewal point, fixed per certificate (from its serial) so a fleet spreads out; capped to half the time from the renewal point to expiry",
		field: func(c *Config) any { return &c.Renew.Splay }},
	{Name: "renew.rekey", Kind: KindBool, Default: strconv.FormatBool(DefaultRenewRekey), Example: "false",
		Doc:   "a new key with each renewal (step-ca `/rekey`); `false` keeps the key (`/renew`), except a key found readable by others, which a renewal always replaces",
		field: func(c *Config) any { return &c.Renew.Rekey }},
	{Name: "renew.post_hook", Kind: KindArgv, Example: `["/usr/bin/systemctl", "reload", "node-agent"]`,
		Doc:   "a command run after new credentials are published (a renewal, proven or published without a passing proof, or a re-enrollment; not a first enrollment), until it succeeds, as an argv without a shell, its first element an absolute clean path; it gets `PROVISION_NODE_ID`, `PROVISION_SERIAL`, `PROVISION_NOT_AFTER`, `PROVISION_CERT`, `PROVISION_KEY`. A failure is exit 22 (layer `hook`) and does not undo the renewal",
		field: func(c *Config) any { return &c.Renew.PostHook }},
	{Name: "renew.post_hook_timeout", Kind: KindDuration, Default: dur(DefaultPostHookTimout), Example: `"2m"`, Min: dur(MinPostHookTimeout), Max: dur(MaxPostHookTimeout),
		Doc:   "the hook's whole process group is killed after this; when `renew.post_hook` is set, no longer than `bootstrap.deadline` (the hook runs inside it; a pending hook whose run's deadline a failing proof used up still runs, bounded by this alone)",
		field: func(c *Config) any { return &c.Renew.PostHookTimeout }},
}

// dur writes a duration as the table (and TOML) writes it: "10m", "100ms".
func dur(d time.Duration) string { return strconv.Quote(fmtDuration(d)) }

// num writes a float bound as the table writes it.
func num(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// Table is the TOML table a key sits in ("" for the top level); "hosts"
// for a key of each [[hosts]] entry.
func (k Key) Table() string {
	name := strings.ReplaceAll(k.Name, "[]", "")
	if i := strings.LastIndex(name, "."); i >= 0 {
		return name[:i]
	}
	return ""
}

// tomlKey is the key as the decoder names it: "hosts.name" for "hosts[].name".
func (k Key) tomlKey() string { return strings.ReplaceAll(k.Name, "[]", "") }

// knownKeys lists every key and table the decoder may meet, for the
// suggestion an unknown key gets.
func knownKeys() []string {
	var out []string
	seen := map[string]bool{}
	for _, k := range Keys {
		for _, n := range []string{k.Table(), k.tomlKey()} {
			if n != "" && !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// unquote turns a table value as TOML writes it into the value: a quoted
// string loses its quotes, anything else stays.
func unquote(s string) string {
	if u, err := strconv.Unquote(s); err == nil {
		return u
	}
	return s
}

// durationBound parses a duration of the table (a bound or a default); ok
// is false when there is none or it does not parse (TestKeyTableParses
// keeps every one parsable).
func durationBound(s string) (time.Duration, bool) {
	d, err := time.ParseDuration(unquote(s))
	return d, s != "" && err == nil
}

// floatBound is durationBound for a float key.
func floatBound(s string) (float64, bool) {
	f, err := strconv.ParseFloat(s, 64)
	return f, s != "" && err == nil
}

// setDefault gives the field of k its table default. It reports false when
// k has no default or no field.
func (k Key) setDefault(c *Config) bool {
	if k.Default == "" || k.field == nil {
		return false
	}
	switch p := k.field(c).(type) {
	case *string:
		*p = unquote(k.Default)
	case *Duration:
		p.Duration, _ = durationBound(k.Default)
	case *bool:
		*p = k.Default == "true"
	case *float64:
		*p, _ = floatBound(k.Default)
		if f, ok := k.exact.(float64); ok {
			*p = f // the table shows 2/3 rounded; the default is 2/3 itself
		}
	default:
		return false
	}
	return true
}

// checkRange says what is wrong with a duration or float key's value
// against the table's range, or "".
func (k Key) checkRange(c *Config) string {
	if k.field == nil {
		return ""
	}
	why := ""
	if k.Why != "" {
		why = " (" + k.Why + ")"
	}
	switch p := k.field(c).(type) {
	case *Duration:
		lo, hasLo := durationBound(k.Min)
		hi, hasHi := durationBound(k.Max)
		if d := p.Duration; (hasLo && d < lo) || (hasHi && d > hi) {
			def, _ := durationBound(k.Default)
			hint := ""
			if d == 0 && k.Default != "" {
				hint = "; 0s is not the default: leave the key out for " + fmtDuration(def)
			}
			return fmt.Sprintf("must be between %s and %s, got %s%s%s", fmtDuration(lo), fmtDuration(hi), d, why, hint)
		}
	case *float64:
		lo, hasLo := floatBound(k.Min)
		hi, hasHi := floatBound(k.Max)
		if f := *p; math.IsNaN(f) || (hasLo && f < lo) || (hasHi && f > hi) {
			return fmt.Sprintf("must be between %g and %g%s, got %g", lo, hi, why, f)
		}
	}
	return ""
}

// emptyString says what is wrong with an optional string key written as "",
// or "": like "0s", it would otherwise silently mean the default.
func (k Key) emptyString(c *Config) string {
	p, ok := k.field(c).(*string)
	if !ok || *p != "" || k.Default == "" {
		return ""
	}
	msg := fmt.Sprintf("is set to \"\"; leave the key out for the default %s", k.Default)
	if k.Name == "metrics.textfile_dir" {
		msg += ", or set metrics.enabled = false to write no metrics"
	}
	return msg
}

// checkPathKey says what is wrong with a path key's value by the path rules
// of its kind, or "".
func (k Key) checkPathKey(c *Config) string {
	p, ok := k.field(c).(*string)
	switch {
	case !ok || *p == "" || (k.Kind != KindPath && k.Kind != KindDir):
		return ""
	case k.path != nil:
		return k.path(*p)
	}
	return checkPath(*p, k.Kind == KindDir)
}

// DocName is how the documentation names a key: "[[hosts]]" for the array
// of tables, the dotted key for the rest.
func (k Key) DocName() string {
	if k.Kind == KindTables {
		return "[[" + k.Name + "]]"
	}
	return k.Name
}

// Range is the key's range in words ("0s to 10m"), or "".
func (k Key) Range() string {
	if k.Min == "" && k.Max == "" {
		return ""
	}
	return unquote(k.Min) + " to " + unquote(k.Max)
}

// MarkdownStart and MarkdownEnd enclose the generated key table in
// docs/configuration.md.
const (
	MarkdownStart = "<!-- BEGIN generated from the key table in internal/config (keys.go); edit it there, then run: go test ./internal/config -run TestConfigurationDocIsGenerated -update -->"
	MarkdownEnd   = "<!-- END generated key table -->"
)

// Markdown renders the key table as docs/configuration.md shows it.
func Markdown() string {
	var b strings.Builder
	b.WriteString("| key | type | required | default | range | example | notes |\n|---|---|---|---|---|---|---|\n")
	code := func(s string) string {
		if s == "" {
			return ""
		}
		return "`" + s + "`"
	}
	for _, k := range Keys {
		req := "no"
		if k.Required {
			req = "yes"
		}
		rng := ""
		if k.Min != "" || k.Max != "" {
			rng = code(unquote(k.Min)) + " to " + code(unquote(k.Max))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", code(k.DocName()), k.Kind, req, code(k.Default), rng, code(k.Example), strings.ReplaceAll(k.Doc, "|", `\|`))
	}
	return b.String()
}
