package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/hosts"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/system"
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
		// key-store proves the installed key signs now (in the TPM, for a
		// TPM key) and that new keys can be made where key.store says; a
		// key that cannot sign (a TPM missing, closed, or that lost the
		// key) is the one root cause, not also a credentials failure.
		{Name: diag.KeyStoreCheck, Layer: diag.Credentials, Owner: diag.Node, Run: checkKeyStore},
		{Name: "credentials", Layer: diag.Credentials, Owner: diag.Node, DependsOn: []string{"clock", diag.KeyStoreCheck}, Run: checkCredentials},
		// Whether anything will renew them: a warning, never a failure.
		{Name: "renew-timer", Layer: diag.Credentials, Owner: diag.Node, Run: checkRenewTimer},
		{Name: "ca-chain", Layer: diag.CA, Owner: diag.Node, DependsOn: []string{"ca-root", "credentials"}, Run: checkCAChain},
		{Name: "tcp", Layer: diag.TCP, Owner: diag.Network, DependsOn: []string{"hosts-resolve"}, Run: probeCheck(diag.TCP), Observe: makeProbe},
		{Name: "tls-server", Layer: diag.TLSServer, Owner: diag.Ingress, DependsOn: []string{"tcp", "clock"}, Run: probeCheck(diag.TLSServer), Observe: makeProbe},
		{Name: "tls-client-auth", Layer: diag.TLSClientAuth, Owner: diag.Ingress, DependsOn: []string{"tls-server", "credentials"}, Run: probeCheck(diag.TLSClientAuth), Observe: makeProbe},
		{Name: "route", Layer: diag.Route, Owner: diag.Ingress, DependsOn: []string{"tls-client-auth"}, Run: probeCheck(diag.Route), Observe: makeProbe},
		{Name: "identity", Layer: diag.Identity, Owner: diag.API, DependsOn: []string{"route"}, Run: probeCheck(diag.Identity), Observe: makeProbe},
		{Name: "tasks-wait", Layer: diag.TasksWait, Owner: diag.API, DependsOn: []string{"identity"}, Run: probeCheck(diag.TasksWait), Observe: makeProbe},
	}
}

func pass(format string, a ...any) Answer {
	return Answer{Status: report.Pass, Message: fmt.Sprintf(format, a...)}
}

func fail(remedy, format string, a ...any) Answer {
	return Answer{Status: report.Fail, Message: fmt.Sprintf(format, a...), Remedy: remedy}
}

func fromFinding(f *diag.Finding) Answer {
	return Answer{Status: report.Fail, Message: f.Summary, Remedy: f.Remedy, Evidence: f.Evidence, Owner: f.Owner, Layer: f.Layer, Transient: f.Transient}
}

func checkConfig(_ context.Context, e *observe.Env) Answer {
	return pass("config is valid; the node API is reached by hostname at %s", e.Cfg.NodeAPI.URL)
}

func wantEntries(e *observe.Env) map[string]netip.Addr { return e.Cfg.HostMap() }

func checkHostsBlock(_ context.Context, e *observe.Env) Answer {
	path := e.Cfg.Paths.HostsFile
	b, err := readHosts(e.Host, path)
	if err != nil {
		return fail("restore the hosts file, then run provision hosts apply", "cannot read %s: %v", path, err)
	}
	want := wantEntries(e)
	if err := hosts.Check(b, hosts.EntriesOf(want)); err != nil {
		msg, remedy := hosts.Describe(path, err)
		return fail(remedy, "%s", msg)
	}
	return pass("managed block in %s maps %s", path, describe(want))
}

// readHosts reads the hosts file as 'provision hosts apply' edits it:
// through a symlink under the path rule, inside --root; never a FIFO.
func readHosts(host *system.Host, path string) ([]byte, error) {
	f, err := hosts.Open(host, path, false)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Read()
}

func describe(m map[string]netip.Addr) string {
	var parts []string
	for n, ip := range m {
		parts = append(parts, n+" -> "+ip.String())
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func checkHostsResolve(ctx context.Context, e *observe.Env) Answer {
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
		// The same address twice (a matching line left outside the block by
		// a manual workaround) is one answer, not a conflict: hosts.Check,
		// and so 'hosts apply', accept it too.
		addrs = uniqAddrs(addrs)
		if err != nil {
			return Answer{Status: report.Fail, Message: fmt.Sprintf("%s does not resolve: %v", n, err), Remedy: "check /etc/nsswitch.conf lists files before dns, and that no cache (nscd) holds an old answer", Evidence: ev}
		}
		ev["resolver:"+n] = joinAddrs(addrs)
		if len(addrs) != 1 || addrs[0] != ip {
			return Answer{Status: report.Fail, Message: fmt.Sprintf("%s resolves to %s, want only %s", n, joinAddrs(addrs), ip), Remedy: "remove other entries for this name (hosts file lines outside the block, DNS answers winning over files in nsswitch.conf)", Evidence: ev}
		}
		g, ok, err := e.Host.Getent(ctx, n)
		g = uniqAddrs(g)
		if ok {
			if err != nil || len(g) == 0 || g[0] != ip {
				return Answer{Status: report.Fail, Message: fmt.Sprintf("getent ahosts %s gives %s (err %v), want %s: glibc programs resolve it differently from Go", n, joinAddrs(g), err, ip), Remedy: "check /etc/nsswitch.conf (files before dns) and flush nscd or systemd-resolved caches", Evidence: ev}
			}
			ev["getent:"+n] = joinAddrs(g)
		}
	}
	return Answer{Status: report.Pass, Message: fmt.Sprintf("%s resolve to the configured addresses", strings.Join(names, ", ")), Evidence: ev}
}

func uniqAddrs(a []netip.Addr) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, x := range a {
		if !seen[x.Unmap()] {
			seen[x.Unmap()] = true
			out = append(out, x)
		}
	}
	return out
}

func joinAddrs(a []netip.Addr) string {
	s := make([]string, len(a))
	for i, x := range a {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

// checkHostsPersist warns when cloud-init will rewrite /etc/hosts on the next
// boot and wipe the override. cloud-init merges its config in this order,
// the last setting winning: /etc/cloud/cloud.cfg, /etc/cloud/cloud.cfg.d/*.cfg
// (sorted), then the instance's user-data; its own merged result, when it
// wrote one, is authoritative. Values are YAML 1.1, as cloud-init reads
// them: yes, on, true and template (or localhost) turn it on.
// cloudInitCombined is cloud-init's merged config of this boot.
const cloudInitCombined = "/run/cloud-init/combined-cloud-config.json"

func checkHostsPersist(ctx context.Context, e *observe.Env) Answer {
	files := []string{"/etc/cloud/cloud.cfg"}
	if m, _ := filepath.Glob(e.Host.Path("/etc/cloud/cloud.cfg.d/*.cfg")); len(m) > 0 {
		sort.Strings(m)
		for _, p := range m {
			files = append(files, "/etc/cloud/cloud.cfg.d/"+filepath.Base(p))
		}
	}
	files = append(files, "/var/lib/cloud/instance/user-data.txt")
	on, decidedBy := false, ""
	for _, f := range files {
		b, err := system.ReadRegular(ctx, e.Host.ResolvedPath(f), hosts.MaxSize) // never a FIFO
		if err != nil {
			continue
		}
		if v, set := ManageEtcHosts(b); set {
			on, decidedBy = v, f
		}
	}
	if b, err := system.ReadRegular(ctx, e.Host.ResolvedPath(cloudInitCombined), hosts.MaxSize); err == nil {
		var m map[string]any
		if json.Unmarshal(b, &m) == nil {
			if v, ok := m["manage_etc_hosts"]; ok {
				on, decidedBy = manageValue(v), cloudInitCombined
			}
		}
	}
	if ctx.Err() != nil {
		// A file not read because the run's context ended says nothing.
		return Answer{Status: report.Warn, Message: "not checked: the run's deadline ended before cloud-init's config was read"}
	}
	if on {
		return Answer{Status: report.Warn, Evidence: map[string]string{"decided_by": decidedBy},
			Message: fmt.Sprintf("cloud-init's manage_etc_hosts is on (%s): it rewrites /etc/hosts on every boot and will drop the override", decidedBy),
			Remedy:  "set manage_etc_hosts: false (the shipped cloud-config does), or enable provision-verify.timer so the override is re-checked"}
	}
	o := pass("cloud-init will not rewrite /etc/hosts on the next boot")
	if decidedBy != "" {
		o.Evidence = map[string]string{"decided_by": decidedBy}
	}
	return o
}

// ManageEtcHosts reads cloud-init's manage_etc_hosts from one YAML
// document (a cloud.cfg or #cloud-config user-data): whether it is on, and
// whether the document sets it at all. A document that is not YAML (a
// multipart user-data, a script) sets nothing.
func ManageEtcHosts(doc []byte) (on, set bool) {
	var m map[string]any
	if yaml.Unmarshal(doc, &m) != nil {
		return false, false
	}
	v, ok := m["manage_etc_hosts"]
	if !ok {
		return false, false
	}
	return manageValue(v), true
}

func manageValue(v any) bool {
	switch x := v.(type) {
	case bool:
		return x
	case string:
		switch strings.ToLower(strings.TrimSpace(x)) {
		case "true", "yes", "on", "y", "template", "localhost":
			return true
		}
	}
	return false
}

func checkCARoot(ctx context.Context, e *observe.Env) Answer {
	roots, err := e.Roots(ctx)
	if err != nil {
		// The CA's Date is read over a connection verified at an instant
		// inside its certificate's validity when the node clock makes that
		// certificate look expired or not yet valid: a skew it shows is the
		// clock's failure, not the CA's.
		if roots == nil {
			return fromFinding(diag.FromEnroll(err, diag.CA, e.Cfg.CA.TokenFile))
		}
		if skew, bad := lifecycle.Skew(roots.DateAt, roots.ServerDate); bad {
			return Answer{Status: report.Skip, Message: fmt.Sprintf("skipped: depends on clock, which did not pass (the node clock is %s off the CA's, so the CA's certificate cannot be judged: %v)", skew.Round(time.Second), err)}
		}
		return fromFinding(diag.FromEnroll(err, diag.CA, e.Cfg.CA.TokenFile))
	}
	if roots.PinRetired {
		fp := ""
		if n := roots.Newest(); n != nil {
			fp = enroll.Fingerprint(n)
		}
		return Answer{Status: report.Warn, Evidence: map[string]string{"newest_root": fp},
			Message: fmt.Sprintf("the CA no longer lists the pinned root %s among its current or federated roots (asked over a connection verified by ca.pem's roots): a completed root rotation, or a wrong ca.fingerprint; the pin anchors first trust only, so this node follows ca.pem, and the CA lists %d current root(s)", short(e.Cfg.CA.Fingerprint), len(roots.Current)),
			Remedy:  "set ca.fingerprint to the newest root " + fp + " in the fleet's config template (user-data), so that a node enrolling from scratch pins a root the CA serves"}
	}
	return pass("the CA serves the pinned root %s and lists %d current root(s) and %d federated", short(e.Cfg.CA.Fingerprint), len(roots.Current), len(roots.Federated))
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16] + "..."
	}
	return fp
}

func checkClock(ctx context.Context, e *observe.Env) Answer {
	roots, err := e.Roots(ctx)
	if roots == nil || roots.ServerDate.IsZero() {
		return Answer{Status: report.Warn, Message: clockUnchecked(err)}
	}
	// Judged at the instant the CA's answer arrived, however long ago.
	now := roots.DateAt
	skew, bad := lifecycle.Skew(now, roots.ServerDate)
	ev := map[string]string{"node_time": now.UTC().Format(time.RFC3339), "ca_time": roots.ServerDate.UTC().Format(time.RFC3339), "skew": skew.Round(time.Second).String()}
	switch {
	case bad:
		return Answer{Status: report.Fail, Evidence: ev,
			Message: fmt.Sprintf("the node clock is %s off the CA's: certificates and tokens will look expired or not yet valid", skew.Round(time.Second)),
			Remedy:  lifecycle.Remedy(lifecycle.ClockSkewed, e.Cfg)}
	// Date has one-second resolution and the request took some time.
	case skew > lifecycle.WarnSkew+time.Second || skew < -lifecycle.WarnSkew-time.Second:
		return Answer{Status: report.Warn, Evidence: ev, Message: fmt.Sprintf("the node clock is %s off the CA's", skew.Round(time.Second))}
	}
	return Answer{Status: report.Pass, Evidence: ev, Message: "the node clock agrees with the CA's"}
}

// clockUnchecked says why the clock could not be compared with the CA's,
// given what fetching the CA's roots returned: only an answer can lack a
// Date header; a CA that was never reached (its name does not resolve
// because the hosts block is missing, nothing listens) sent nothing.
func clockUnchecked(err error) string {
	var ee *enroll.Error
	switch {
	case err == nil:
		return "not checked: the CA answered without a Date header, so there is no CA time to compare with"
	case errors.As(err, &ee) && ee.Status > 0:
		return fmt.Sprintf("not checked: the CA answered %d without a Date header, so there is no CA time to compare with", ee.Status)
	}
	return fmt.Sprintf("not checked: the CA could not be reached, so there is no CA time to compare with (%v)", err)
}

// checkCredentials renders the credential verdict's facts about the key
// and certificate (the chain is ca-chain's). Its remedy is, by
// construction, what bootstrap does with the same verdict.
func checkCredentials(ctx context.Context, e *observe.Env) Answer {
	v := e.Verdict(ctx)
	ev := verdictEvidence(v, e.Host.Time())
	worst, status := Reason(""), report.Pass
	for _, r := range v.Reasons {
		st := credentialStatus(r)
		if st == "" || (status == report.Fail) || (status == report.Warn && st != report.Fail) {
			continue
		}
		worst, status = r, st
	}
	if status != report.Pass {
		msg := fmt.Sprintf("%s: %s", e.Cfg.Paths.PKIDir, v.Detail[worst])
		if worst == lifecycle.PastRenewal || worst == lifecycle.Expired || worst == lifecycle.Revoked {
			msg += "; " + lastRenew(e, ev)
		}
		return Answer{Status: status, Evidence: ev, Message: msg, Remedy: lifecycle.Remedy(worst, e.Cfg)}
	}
	left := v.Leaf.NotAfter.Sub(e.Host.Time())
	mode := "0600"
	if set, err := e.Creds(); err == nil {
		mode = fmt.Sprintf("%04o", set.KeyMode)
	}
	return Answer{Status: report.Pass, Evidence: ev, Message: fmt.Sprintf("key %s matches the certificate for %s, valid for %s more, renewal due %s",
		mode, v.Leaf.Subject.CommonName, left.Round(time.Minute), v.Schedule.RenewAfter.UTC().Format(time.RFC3339))}
}

// checkRenewTimer warns when nothing will renew the certificate:
// provision-renew.timer is not enabled (read from its timers.target.wants
// link, under --root too). A warning and not a failure: the node polls
// today, and a fleet alert (ProvisionRenewNotRun) pages on the same fact.
func checkRenewTimer(_ context.Context, e *observe.Env) Answer {
	st, at := observe.RenewTimer(e.Host)
	ev := map[string]string{"unit": lifecycle.RenewTimer, "state": string(st)}
	if at != "" {
		ev["path"] = at
	}
	if st == system.UnitEnabled {
		return Answer{Status: report.Pass, Evidence: ev, Message: fmt.Sprintf("%s is enabled (%s): renewal is scheduled", lifecycle.RenewTimer, at)}
	}
	return Answer{Status: report.Warn, Evidence: ev, Remedy: lifecycle.Remedy(lifecycle.RenewUnscheduled, e.Cfg),
		Message: fmt.Sprintf("renewal is not scheduled: %s is %s; the certificate will expire unrenewed", lifecycle.RenewTimer, st)}
}

// lastRenew says how the last renewal attempt went, from state_dir's renew
// record, and adds it to the evidence.
func lastRenew(e *observe.Env, ev map[string]string) string {
	rec := e.RenewRecord()
	if rec == nil {
		return "no renewal was attempted yet (is " + lifecycle.RenewTimer + " enabled?)"
	}
	ev["last_renew_attempt"] = rec.LastAttempt.UTC().Format(time.RFC3339)
	ev["last_renew_result"] = rec.LastResult
	s := fmt.Sprintf("last renewal attempt %s: %s", rec.LastAttempt.UTC().Format(time.RFC3339), rec.LastResult)
	if rec.LastError != "" {
		ev["last_renew_error"] = rec.LastError
		s += " (" + rec.LastError + ")"
	}
	return s
}

// Reason is the verdict's reason type, named here for the checks' tables.
type Reason = lifecycle.Reason

// credentialStatus is how the credentials check shows a reason; "" means
// another check (ca-chain) owns it.
func credentialStatus(r Reason) report.Status {
	switch r {
	case lifecycle.OtherCA, lifecycle.BundleStale, lifecycle.RootsUnknown:
		return ""
	case lifecycle.PastRenewal, lifecycle.KeyWasExposed:
		return report.Warn
	}
	return report.Fail
}

func verdictEvidence(v lifecycle.Verdict, now time.Time) map[string]string {
	ev := map[string]string{"verdict": v.Action.String()}
	var rs []string
	for _, r := range v.Reasons {
		rs = append(rs, string(r))
	}
	if len(rs) > 0 {
		ev["reasons"] = strings.Join(rs, ",")
	}
	if l := v.Leaf; l != nil {
		ev["subject"], ev["issuer"], ev["serial"] = l.Subject.String(), l.Issuer.String(), l.SerialNumber.String()
		ev["not_before"], ev["not_after"] = l.NotBefore.UTC().Format(time.RFC3339), l.NotAfter.UTC().Format(time.RFC3339)
		ev["renew_after"] = v.Schedule.RenewAfter.UTC().Format(time.RFC3339)
		ev["expires_in"] = l.NotAfter.Sub(now).Round(time.Second).String()
	}
	return ev
}

// checkCAChain renders the verdict's facts about the chain and ca.pem.
func checkCAChain(ctx context.Context, e *observe.Env) Answer {
	v := e.Verdict(ctx)
	ev := verdictEvidence(v, e.Host.Time())
	switch {
	case v.Has(lifecycle.OtherCA):
		return Answer{Status: report.Fail, Owner: diag.Node, Evidence: ev, Message: v.Detail[lifecycle.OtherCA], Remedy: lifecycle.Remedy(lifecycle.OtherCA, e.Cfg)}
	case v.Has(lifecycle.RootsUnknown):
		_, err := e.Roots(ctx)
		return Answer{Status: report.Fail, Owner: diag.CAOwner, Evidence: ev, Message: fmt.Sprintf("cannot judge the certificate against the CA: %v", err),
			Remedy: "check the CA (the ca-root check) and run verify again"}
	case v.BundleUseless:
		return Answer{Status: report.Fail, Owner: diag.Node, Evidence: ev, Message: v.Detail[lifecycle.BundleStale] + ": the node cannot verify any server of the control plane with it",
			Remedy: lifecycle.Remedy(lifecycle.BundleStale, e.Cfg)}
	case v.Has(lifecycle.BundleStale):
		return Answer{Status: report.Warn, Evidence: ev, Message: "the certificate chains to a current root, but " + v.Detail[lifecycle.BundleStale], Remedy: lifecycle.Remedy(lifecycle.BundleStale, e.Cfg)}
	}
	msg := "the node certificate chains to the CA's current root"
	if root := v.ChainRoot; root != nil {
		roots, _ := e.Roots(ctx)
		newest := roots != nil && roots.Newest() != nil && roots.Newest().Equal(root)
		ev["chains_to"] = enroll.Fingerprint(root)
		ev["chains_to_subject"] = root.Subject.String()
		ev["chains_to_newest"] = fmt.Sprint(newest)
		msg = fmt.Sprintf("the node certificate chains to the CA's current root %s", short(enroll.Fingerprint(root)))
		if roots != nil && len(roots.Current) > 1 {
			if newest {
				msg += fmt.Sprintf(", the newest of its %d current roots", len(roots.Current))
			} else {
				msg += fmt.Sprintf(", not the newest of its %d current roots (a rotation is under way: the next renewal moves it)", len(roots.Current))
			}
		}
	}
	return Answer{Status: report.Pass, Evidence: ev, Message: msg}
}

// probeCheck interprets the one probe for one layer. The layer fails if the
// probe's finding sits in it (or below it, if an earlier check did not catch
// it), passes only on the evidence diag recorded for it, and warns when the
// exchange crossed it without proof for a reason diag names. diag.Classify
// guarantees one of the three; the last branch fails closed all the same.
// makeProbe makes the one tasks/wait exchange the probe checks judge
// (Check.Observe): the first of them, tcp, may start it as soon as the
// hostname resolves as the override says, while the local checks run.
func makeProbe(ctx context.Context, e *observe.Env) { e.Probe(ctx) }

func probeCheck(layer diag.Layer) func(context.Context, *observe.Env) Answer {
	return func(ctx context.Context, e *observe.Env) Answer {
		a := judgeProbe(ctx, e, layer)
		f := e.Proof(ctx).Finding
		stopped := f != nil && f.Layer.Index() <= layer.Index() // this check reports where the exchange stopped
		a.Timed, a.Duration = true, diag.LayerTime(e.Probe(ctx), layer, stopped)
		return a
	}
}

func judgeProbe(ctx context.Context, e *observe.Env, layer diag.Layer) Answer {
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
		return Answer{Status: report.Warn, Message: why}
	}
	return Answer{Status: report.Fail, Message: fmt.Sprintf("nothing recorded proves %s and no failure was classified: refusing to pass it", layer),
		Remedy: "this is a bug in provision's classifier: report it with this output (--format json)"}
}

func tasksWaitPass(msg string, r *probe.Result, e *observe.Env) Answer {
	o := pass("%s", msg)
	if r.Status == 200 {
		t := probe.TaskFrom(r.Body)
		o.Evidence = map[string]string{"task_id": t.ID, "task": string(t.Raw)}
		o.Message += "; the API handed out a task (in the evidence; handed off under state_dir/tasks/ like bootstrap's)"
	}
	// The clock check compared with the CA; the API's Date is a second
	// witness. A skew here does not stop the proof, so it only warns.
	if skew, bad := lifecycle.Skew(r.DateAt, r.Date); bad {
		o.Status = report.Warn
		o.Message += fmt.Sprintf("; the node clock is %s off the API's Date header", skew.Round(time.Second))
		o.Remedy = "synchronise the node clock, or the API's if the CA agreed with the node"
	}
	return o
}
