package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/hosts"
	"github.com/gpuaas/provision/internal/probe"
)

// Thresholds.
const (
	// MaxSkew fails the clock check: step-ca gives tokens one minute of
	// leeway, and TLS has none.
	MaxSkew = time.Minute
	// WarnSkew warns before it matters.
	WarnSkew = 10 * time.Second
)

// Checks returns the ladder in order. Check names are an interface.
func Checks() []Check {
	return []Check{
		{Name: "config", Layer: diag.Config, Owner: diag.Node, Run: checkConfig},
		{Name: "hosts-block", Layer: diag.Hosts, Owner: diag.Node, Run: checkHostsBlock},
		{Name: "hosts-resolve", Layer: diag.Hosts, Owner: diag.Node, DependsOn: []string{"hosts-block"}, Run: checkHostsResolve},
		{Name: "hosts-persist", Layer: diag.Hosts, Owner: diag.Node, Run: checkHostsPersist},
		// ca-root depends on hosts-resolve: the CA is reached by a hostname
		// the override maps, so a missing block is not also "CA unreachable".
		{Name: "ca-root", Layer: diag.CA, Owner: diag.CAOwner, DependsOn: []string{"hosts-resolve"}, Run: checkCARoot},
		// Every check that judges a certificate by the node's clock depends
		// on clock, so a skewed clock is one root cause, not four failures.
		{Name: "clock", Layer: diag.Clock, Owner: diag.Node, Run: checkClock},
		{Name: "credentials", Layer: diag.Credentials, Owner: diag.Node, DependsOn: []string{"clock"}, Run: checkCredentials},
		{Name: "ca-chain", Layer: diag.CA, Owner: diag.Node, DependsOn: []string{"ca-root", "credentials"}, Run: checkCAChain},
		{Name: "tcp", Layer: diag.TCP, Owner: diag.Network, DependsOn: []string{"hosts-resolve"}, Run: probeCheck(diag.TCP)},
		{Name: "tls-server", Layer: diag.TLSServer, Owner: diag.Ingress, DependsOn: []string{"tcp", "clock"}, Run: probeCheck(diag.TLSServer)},
		{Name: "tls-client-auth", Layer: diag.TLSClientAuth, Owner: diag.Ingress, DependsOn: []string{"tls-server", "credentials"}, Run: probeCheck(diag.TLSClientAuth)},
		{Name: "route", Layer: diag.Route, Owner: diag.Ingress, DependsOn: []string{"tls-client-auth"}, Run: probeCheck(diag.Route)},
		{Name: "identity", Layer: diag.Identity, Owner: diag.API, DependsOn: []string{"route"}, Run: probeCheck(diag.Identity)},
		{Name: "tasks-wait", Layer: diag.TasksWait, Owner: diag.API, DependsOn: []string{"identity"}, Run: probeCheck(diag.TasksWait)},
	}
}

func pass(format string, a ...any) Outcome {
	return Outcome{Status: Pass, Message: fmt.Sprintf(format, a...)}
}

func fail(remedy, format string, a ...any) Outcome {
	return Outcome{Status: Fail, Message: fmt.Sprintf(format, a...), Remedy: remedy}
}

func fromFinding(f *diag.Finding) Outcome {
	return Outcome{Status: Fail, Message: f.Summary, Remedy: f.Remedy, Evidence: f.Evidence, Owner: f.Owner, Layer: f.Layer, Transient: f.Transient}
}

func checkConfig(_ context.Context, e *Env) Outcome {
	return pass("config is valid; the node API is reached by hostname at %s", e.Cfg.NodeAPI.URL)
}

func wantEntries(e *Env) map[string]netip.Addr { return e.Cfg.HostMap() }

func checkHostsBlock(_ context.Context, e *Env) Outcome {
	path := e.Cfg.Paths.HostsFile
	b, err := os.ReadFile(e.Host.ResolvedPath(path)) // through a symlink, inside --root
	if err != nil {
		return fail("restore the hosts file, then run provision hosts apply", "cannot read %s: %v", path, err)
	}
	blk, err := hosts.Find(b)
	if err != nil {
		return fail(fmt.Sprintf("repair the managed block in %s by hand (keep one BEGIN and one END marker), then run provision hosts apply", path), "%s: %v", path, err)
	}
	if !blk.Present {
		return fail("write the override: provision hosts apply (cloud-init's manage_etc_hosts may have rewritten the file)", "%s has no provision managed block", path)
	}
	got := map[string]netip.Addr{}
	for _, en := range blk.Entries {
		got[en.Name] = en.IP
	}
	want := wantEntries(e)
	var diffs []string
	for n, ip := range want {
		if g, ok := got[n]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s missing", n))
		} else if g != ip {
			diffs = append(diffs, fmt.Sprintf("%s -> %s, want %s", n, g, ip))
		}
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s is not in the config", n))
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		return fail("rewrite the override from the config: provision hosts apply", "the managed block in %s differs from the config: %s", path, strings.Join(diffs, "; "))
	}
	return pass("managed block in %s maps %s", path, describe(want))
}

func describe(m map[string]netip.Addr) string {
	var parts []string
	for n, ip := range m {
		parts = append(parts, n+" -> "+ip.String())
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func checkHostsResolve(ctx context.Context, e *Env) Outcome {
	want := wantEntries(e)
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	ev := map[string]string{}
	for _, n := range names {
		ip := want[n]
		addrs, err := e.Host.LookupHost(ctx, n)
		if err != nil {
			return Outcome{Status: Fail, Message: fmt.Sprintf("%s does not resolve: %v", n, err), Remedy: "check /etc/nsswitch.conf lists files before dns, and that no cache (nscd) holds an old answer", Evidence: ev}
		}
		ev["resolver:"+n] = joinAddrs(addrs)
		if len(addrs) != 1 || addrs[0] != ip {
			return Outcome{Status: Fail, Message: fmt.Sprintf("%s resolves to %s, want only %s", n, joinAddrs(addrs), ip), Remedy: "remove other entries for this name (hosts file lines outside the block, DNS answers winning over files in nsswitch.conf)", Evidence: ev}
		}
		g, ok, err := e.Host.Getent(ctx, n)
		if ok {
			if err != nil || len(g) == 0 || g[0] != ip {
				return Outcome{Status: Fail, Message: fmt.Sprintf("getent ahosts %s gives %s (err %v), want %s: glibc programs resolve it differently from Go", n, joinAddrs(g), err, ip), Remedy: "check /etc/nsswitch.conf (files before dns) and flush nscd or systemd-resolved caches", Evidence: ev}
			}
			ev["getent:"+n] = joinAddrs(g)
		}
	}
	return Outcome{Status: Pass, Message: fmt.Sprintf("%s resolve to the configured addresses", strings.Join(names, ", ")), Evidence: ev}
}

func joinAddrs(a []netip.Addr) string {
	s := make([]string, len(a))
	for i, x := range a {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

var manageEtcHosts = regexp.MustCompile(`(?m)^\s*manage_etc_hosts\s*:\s*(true|True|TRUE|template)\s*$`)

// checkHostsPersist warns when cloud-init will rewrite /etc/hosts on the next
// boot and wipe the override.
func checkHostsPersist(_ context.Context, e *Env) Outcome {
	files := []string{"/etc/cloud/cloud.cfg"}
	if m, _ := filepath.Glob(e.Host.Path("/etc/cloud/cloud.cfg.d/*.cfg")); len(m) > 0 {
		for _, p := range m {
			files = append(files, "/etc/cloud/cloud.cfg.d/"+filepath.Base(p))
		}
	}
	files = append(files, "/var/lib/cloud/instance/user-data.txt")
	var hits []string
	for _, f := range files {
		b, err := os.ReadFile(e.Host.Path(f))
		if err == nil && manageEtcHosts.Match(b) {
			hits = append(hits, f)
		}
	}
	if b, err := os.ReadFile(e.Host.Path("/run/cloud-init/combined-cloud-config.json")); err == nil {
		var m struct {
			Manage any `json:"manage_etc_hosts"`
		}
		if json.Unmarshal(b, &m) == nil && (m.Manage == true || m.Manage == "template") {
			hits = append(hits, "/run/cloud-init/combined-cloud-config.json")
		}
	}
	if len(hits) > 0 {
		return Outcome{Status: Warn, Message: fmt.Sprintf("cloud-init's manage_etc_hosts is on (%s): it rewrites /etc/hosts on every boot and will drop the override", strings.Join(hits, ", ")),
			Remedy: "set manage_etc_hosts: false (the shipped cloud-config does), or enable provision-verify.timer so the override is re-checked"}
	}
	return pass("cloud-init will not rewrite /etc/hosts on the next boot")
}

func checkCARoot(ctx context.Context, e *Env) Outcome {
	roots, err := e.Roots(ctx)
	if err != nil {
		// The CA's Date comes from the unverified pinned-root fetch, so it is
		// known even when a skewed node clock makes the CA's certificate look
		// expired or not yet valid: that is the clock's failure, not the CA's.
		if skew, ok := clockSkew(e, roots); ok && abs(skew) > MaxSkew {
			return Outcome{Status: Skip, Message: fmt.Sprintf("skipped: depends on clock, which did not pass (the node clock is %s off the CA's, so the CA's certificate cannot be judged: %v)", skew.Round(time.Second), err)}
		}
		return fromFinding(diag.FromEnroll(err, diag.CA, e.Cfg.CA.TokenFile))
	}
	return pass("the CA serves the pinned root %s and lists %d current root(s)", short(e.Cfg.CA.Fingerprint), len(roots.Current))
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16] + "..."
	}
	return fp
}

// clockSkew is the node clock minus the CA's Date header, if the CA sent one.
func clockSkew(e *Env, roots *enroll.Roots) (time.Duration, bool) {
	if roots == nil || roots.ServerDate.IsZero() {
		return 0, false
	}
	return e.Host.Time().Sub(roots.ServerDate), true
}

func abs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func checkClock(ctx context.Context, e *Env) Outcome {
	roots, _ := e.Roots(ctx)
	if roots == nil || roots.ServerDate.IsZero() {
		return Outcome{Status: Warn, Message: "not checked: the CA sent no Date header"}
	}
	now := e.Host.Time()
	// Date has one-second resolution and the request took some time.
	skew := now.Sub(roots.ServerDate)
	ev := map[string]string{"node_time": now.UTC().Format(time.RFC3339), "ca_time": roots.ServerDate.UTC().Format(time.RFC3339), "skew": skew.Round(time.Second).String()}
	switch abs := abs(skew); {
	case abs > MaxSkew:
		return Outcome{Status: Fail, Evidence: ev,
			Message: fmt.Sprintf("the node clock is %s off the CA's: certificates and tokens will look expired or not yet valid", skew.Round(time.Second)),
			Remedy:  "synchronise the node clock (chrony or systemd-timesyncd, and order provision after time-sync.target), then run again"}
	case abs > WarnSkew+time.Second:
		return Outcome{Status: Warn, Evidence: ev, Message: fmt.Sprintf("the node clock is %s off the CA's", skew.Round(time.Second))}
	}
	return Outcome{Status: Pass, Evidence: ev, Message: "the node clock agrees with the CA's"}
}

func checkCredentials(_ context.Context, e *Env) Outcome {
	dir := e.Cfg.Paths.PKIDir
	s, err := e.Creds()
	if errors.Is(err, credstore.ErrNotFound) {
		return fail("enroll: run provision bootstrap with a one-time token in "+e.Cfg.CA.TokenFile, "no credentials in %s: the node has not enrolled", dir)
	}
	if err != nil {
		return fail("re-enroll to replace the broken set: provision bootstrap with a fresh token", "the credentials in %s cannot be read: %v", dir, err)
	}
	leaf := s.Leaf()
	now := e.Host.Time()
	ev := map[string]string{
		"subject": leaf.Subject.String(), "issuer": leaf.Issuer.String(), "serial": leaf.SerialNumber.String(),
		"not_before": leaf.NotBefore.UTC().Format(time.RFC3339), "not_after": leaf.NotAfter.UTC().Format(time.RFC3339),
	}
	o := func(status Status, remedy, format string, a ...any) Outcome {
		return Outcome{Status: status, Remedy: remedy, Evidence: ev, Message: fmt.Sprintf(format, a...)}
	}
	switch {
	case s.KeyMode&0o077 != 0:
		return o(Fail, "run provision bootstrap: it restricts the key to 0600 at once, and rotates it if a fresh one-time token is in "+e.Cfg.CA.TokenFile+"; treat the key as exposed if other users had access", "%s/key.pem is mode %04o; a private key must be 0600", dir, s.KeyMode)
	case s.DirMode&0o077 != 0:
		return o(Fail, "run provision bootstrap (it restricts the directory to 0700)", "%s is mode %04o; it holds a private key and must be 0700", dir, s.DirMode)
	case !s.KeyMatches():
		return o(Fail, "re-enroll: provision bootstrap with a fresh token", "%s/key.pem does not match cert.pem", dir)
	case leaf.Subject.CommonName != e.Cfg.NodeID:
		return o(Fail, "re-enroll with a token for this node_id", "the certificate is for %q, but node_id is %q", leaf.Subject.CommonName, e.Cfg.NodeID)
	case now.Before(leaf.NotBefore):
		return o(Fail, "check the node clock first; if it is right, re-enroll", "the certificate is not valid until %s (node clock %s)", leaf.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case now.After(leaf.NotAfter):
		return o(Fail, "re-enroll: provision bootstrap with a fresh token", "the certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	left := leaf.NotAfter.Sub(now)
	ev["expires_in"] = left.Round(time.Second).String()
	if NearExpiry(leaf.NotBefore, leaf.NotAfter, now) {
		return o(Warn, "re-enroll before it expires: provision bootstrap with a fresh token", "the certificate expires in %s (less than a third of its lifetime left)", left.Round(time.Minute))
	}
	return o(Pass, "", "key 0600 matches the certificate for %s, valid for %s more", leaf.Subject.CommonName, left.Round(time.Minute))
}

// NearExpiry reports whether less than a third of the lifetime is left, the
// point at which step renews.
func NearExpiry(notBefore, notAfter, now time.Time) bool {
	life := notAfter.Sub(notBefore)
	return notAfter.Sub(now) < life/3
}

func checkCAChain(ctx context.Context, e *Env) Outcome {
	state, err := e.Chain(ctx)
	s, _ := e.Creds()
	roots, _ := e.Roots(ctx)
	if state == diag.ChainStale {
		return Outcome{Status: Fail, Owner: diag.Node,
			Message:  fmt.Sprintf("the node certificate (issuer %s) does not chain to any of the CA's current roots: it is stale (%v)", s.Leaf().Issuer, err),
			Remedy:   "re-enroll the node: its certificate was issued by a CA the control plane no longer uses (provision bootstrap with a fresh token replaces it)",
			Evidence: map[string]string{"issuer": s.Leaf().Issuer.String()}}
	}
	if err != nil {
		return Outcome{Status: Fail, Owner: diag.CAOwner, Message: "cannot judge the certificate against the CA: " + err.Error()}
	}
	missing := 0
	for _, r := range roots.Current {
		found := false
		for _, b := range s.Roots {
			if bytes.Equal(b.Raw, r.Raw) {
				found = true
			}
		}
		if !found {
			missing++
		}
	}
	if missing > 0 {
		return Outcome{Status: Warn, Message: fmt.Sprintf("the certificate chains to a current root, but ca.pem lacks %d of the CA's current roots", missing),
			Remedy: "run provision bootstrap to refresh ca.pem"}
	}
	return pass("the node certificate chains to the CA's current root")
}

// probeCheck interprets the one probe for one layer. The layer fails if the
// probe's finding sits in it (or below it, if an earlier check did not catch
// it), passes only on the evidence diag recorded for it, and warns when the
// exchange crossed it without proof for a reason diag names. diag.Classify
// guarantees one of the three; the last branch fails closed all the same.
func probeCheck(layer diag.Layer) func(context.Context, *Env) Outcome {
	return func(ctx context.Context, e *Env) Outcome {
		p := e.Proof(ctx)
		if f := p.Finding; f != nil && f.Layer.Index() <= layer.Index() {
			return fromFinding(f)
		}
		if msg, ok := p.Proven[layer]; ok {
			if layer == diag.TasksWait {
				return tasksWaitPass(msg, e.Probe(ctx), e)
			}
			return pass("%s", msg)
		}
		if why, ok := p.Unproven[layer]; ok {
			return Outcome{Status: Warn, Message: why}
		}
		return Outcome{Status: Fail, Message: fmt.Sprintf("nothing recorded proves %s and no failure was classified: refusing to pass it", layer),
			Remedy: "this is a bug in provision's classifier: report it with this output (--format json)"}
	}
}

func tasksWaitPass(msg string, r *probe.Result, e *Env) Outcome {
	o := pass("%s", msg)
	if r.Status == 200 {
		t := probe.TaskFrom(r.Body)
		o.Evidence = map[string]string{"task_id": t.ID, "task": string(t.Raw)}
		o.Message += "; the API handed out a task (in the evidence; handed off under state_dir/tasks/ like bootstrap's)"
	}
	// The clock check compared with the CA; the API's Date is a second
	// witness. A skew here does not stop the proof, so it only warns.
	if !r.Date.IsZero() {
		skew := e.Host.Time().Sub(r.Date)
		if skew > MaxSkew || skew < -MaxSkew {
			o.Status = Warn
			o.Message += fmt.Sprintf("; the node clock is %s off the API's Date header", skew.Round(time.Second))
			o.Remedy = "synchronise the node clock, or the API's if the CA agreed with the node"
		}
	}
	return o
}
