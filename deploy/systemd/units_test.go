package systemd

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/testenv"
)

var units = []string{"provision.service", "provision-verify.service", "provision-verify.timer", "provision-renew.service", "provision-renew.timer"}

// stage copies the units into a temp dir with ExecStart pointing at an
// executable in that dir: systemd-analyze verify insists that ExecStart
// binaries exist, and the test must not depend on /usr/bin/provision being
// installed on the machine. Only the path changes; every other byte is the
// shipped unit. The edit function, if given, may change a unit's text.
func stage(t *testing.T, edit func(name, text string) string) (dir string, files []string) {
	t.Helper()
	dir = t.TempDir()
	bin := filepath.Join(dir, "provision")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		if !strings.Contains(text, "/usr/bin/provision") && strings.HasSuffix(u, ".service") {
			t.Fatalf("%s: ExecStart does not use /usr/bin/provision", u)
		}
		text = strings.ReplaceAll(text, "/usr/bin/provision", bin)
		if edit != nil {
			text = edit(u, text)
		}
		f := filepath.Join(dir, u)
		if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	return dir, files
}

// analyze runs systemd-analyze verify and returns the lines that concern our
// units (other lines may come from unrelated units on the machine).
func analyze(t *testing.T, dir string, files []string) (ok bool, ours []string, all string) {
	t.Helper()
	sa := testenv.RequireProgram(t, "systemd-analyze", "systemd")
	cmd := exec.Command(sa, append([]string{"verify", "--man=no"}, files...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, dir) || strings.Contains(line, "provision") {
			ours = append(ours, line)
		}
	}
	return err == nil, ours, string(out)
}

func TestSystemdAnalyzeVerify(t *testing.T) {
	dir, files := stage(t, nil)
	ok, ours, all := analyze(t, dir, files)
	if !ok || len(ours) > 0 {
		t.Fatalf("systemd-analyze verify failed (ok=%v):\n%s", ok, all)
	}
	if all != "" {
		t.Logf("systemd-analyze verify printed lines about other units:\n%s", all)
	}
}

// TestSystemdAnalyzeCatchesMistakes proves the check above can fail: a
// misspelled key, a bad value and a missing binary must each be reported.
func TestSystemdAnalyzeCatchesMistakes(t *testing.T) {
	cases := []struct{ name, from, to string }{
		{"misspelled key", "UMask=0077", "UMaks=0077"},
		{"bad type", "Type=oneshot", "Type=oneshoot"},
		{"missing binary", "ExecStart=", "ExecStart=/nonexistent/provision-missing "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, files := stage(t, func(name, text string) string {
				if name != "provision.service" {
					return text
				}
				i := strings.Index(text, "\n"+c.from)
				if i < 0 {
					t.Fatalf("%q not in provision.service", c.from)
				}
				if c.name == "missing binary" {
					end := strings.Index(text[i+1:], "\n")
					return text[:i+1] + "ExecStart=/nonexistent/provision bootstrap" + text[i+1+end:]
				}
				return strings.Replace(text, "\n"+c.from, "\n"+c.to, 1)
			})
			ok, ours, all := analyze(t, dir, files)
			if ok && len(ours) == 0 {
				t.Fatalf("systemd-analyze verify accepted a broken unit:\n%s", all)
			}
		})
	}
}

// directives parses a unit file into section.key -> values (in order).
func directives(t *testing.T, name string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]string{}
	section := ""
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: malformed line %q", name, line)
			}
			m[section+"."+k] = append(m[section+"."+k], v)
		}
	}
	return m
}

func words(vs []string) map[string]bool {
	w := map[string]bool{}
	for _, v := range vs {
		for _, f := range strings.Fields(v) {
			w[f] = true
		}
	}
	return w
}

// TestProvisionServiceContract checks the properties the first-boot design
// relies on; systemd-analyze accepts units that lack them.
func TestProvisionServiceContract(t *testing.T) {
	d := directives(t, "provision.service")
	want := map[string]string{
		"Unit.ConditionPathExists":   "!/var/lib/provision/done/%m",
		"Service.Type":               "oneshot",
		"Service.RemainAfterExit":    "yes",
		"Service.ExecStart":          "/usr/bin/provision bootstrap --config /etc/provision/provision.toml --log-format json",
		"Service.Restart":            "on-failure",
		"Service.UMask":              "0077",
		"Service.TimeoutStartSec":    "15min",
		"Service.RestartSec":         "30s",
		"Unit.StartLimitIntervalSec": "2h",
		"Unit.StartLimitBurst":       "6",
		"Install.WantedBy":           "multi-user.target",
	}
	for k, v := range want {
		if got := d[k]; len(got) != 1 || got[0] != v {
			t.Errorf("%s = %q, want exactly %q", k, got, v)
		}
	}
	after, wants := words(d["Unit.After"]), words(d["Unit.Wants"])
	for _, u := range []string{"network-online.target", "time-sync.target", "cloud-init.service"} {
		if !after[u] {
			t.Errorf("After= lacks %s", u)
		}
	}
	if !wants["network-online.target"] {
		t.Errorf("Wants= lacks network-online.target (After= alone does not pull it in)")
	}
	// The cloud-init user-data runs `systemctl start provision.service` from
	// runcmd, inside cloud-final.service, which is ordered after
	// multi-user.target. Ordering this unit after any of these would make that
	// blocking start wait for itself.
	for _, u := range []string{"cloud-final.service", "cloud-init.target", "multi-user.target", "default.target", "cloud-config.service"} {
		if after[u] || words(d["Unit.Requires"])[u] || words(d["Unit.BindsTo"])[u] {
			t.Errorf("provision.service must not be ordered after %s (runcmd deadlock)", u)
		}
	}
	if words(d["Unit.DefaultDependencies"])["no"] {
		t.Errorf("DefaultDependencies=no would drop the implicit Before=multi-user.target ordering the deadlock argument needs")
	}
	rw := words(d["Service.ReadWritePaths"])
	for _, p := range []string{"/etc", "-/var/lib/provision", "-/run/provision"} {
		if !rw[p] {
			t.Errorf("ReadWritePaths lacks %s (bootstrap writes there)", p)
		}
	}
	// state_dir is made before the sandbox, and never by StateDirectory=:
	// systemd would set its mode back at every start and chown a state_dir
	// in paths.key_group's group back to root, recursively, key included.
	if got := d["Service.ExecStartPre"]; len(got) != 1 || got[0] != "+/bin/mkdir -p -m 0700 /var/lib/provision" {
		t.Errorf("ExecStartPre = %q, want the one mkdir of /var/lib/provision", got)
	}
	for _, u := range []string{"provision.service", "provision-verify.service", "provision-renew.service"} {
		for k := range directives(t, u) {
			if strings.HasPrefix(k, "Service.StateDirectory") {
				t.Errorf("%s: %s would reset state_dir's mode and group at every start", u, k)
			}
		}
	}
}

// TestUnitsLogForTheJournal: both services log JSON lines (docs/logging.md)
// under one syslog identifier, with a journal field naming the command, so
// a Loki/Alloy journal scrape can label them.
func TestUnitsLogForTheJournal(t *testing.T) {
	for unit, cmd := range map[string]string{"provision.service": "bootstrap", "provision-verify.service": "verify"} {
		d := directives(t, unit)
		if got := d["Service.ExecStart"]; len(got) != 1 || !strings.Contains(got[0], " --log-format json") {
			t.Errorf("%s: ExecStart %q does not log JSON", unit, got)
		}
		if got := d["Service.SyslogIdentifier"]; len(got) != 1 || got[0] != "provision" {
			t.Errorf("%s: SyslogIdentifier = %q, want provision", unit, got)
		}
		if got := d["Service.LogExtraFields"]; len(got) != 1 || got[0] != "PROVISION_COMMAND="+cmd {
			t.Errorf("%s: LogExtraFields = %q, want PROVISION_COMMAND=%s", unit, got, cmd)
		}
	}
}

func TestVerifyUnitsContract(t *testing.T) {
	s := directives(t, "provision-verify.service")
	if got := s["Service.ExecStart"]; len(got) != 1 || !strings.HasPrefix(got[0], "/usr/bin/provision verify ") {
		t.Errorf("provision-verify.service ExecStart = %q, want provision verify", got)
	}
	// Read-only but for the task hand-off directory: a task the proof
	// receives is dequeued at the API and must reach the node-agent.
	if rw := words(s["Service.ReadWritePaths"]); len(rw) != 1 || !rw["-/var/lib/provision/tasks"] || s["Service.ProtectSystem"][0] != "strict" {
		t.Errorf("provision-verify.service must be read-only but for -/var/lib/provision/tasks (ProtectSystem=strict), got ReadWritePaths %v", rw)
	}
	if len(s["Service.Restart"]) != 0 {
		t.Errorf("provision-verify.service must not restart; the timer re-runs it")
	}
	tm := directives(t, "provision-verify.timer")
	if got := tm["Timer.Unit"]; len(got) != 1 || got[0] != "provision-verify.service" {
		t.Errorf("timer Unit= %q", got)
	}
	if got := tm["Timer.OnUnitActiveSec"]; len(got) != 1 || got[0] != "1h" {
		t.Errorf("timer OnUnitActiveSec = %q, want 1h", got)
	}
	if got := tm["Install.WantedBy"]; len(got) != 1 || got[0] != "timers.target" {
		t.Errorf("timer WantedBy = %q", got)
	}
}

// TestMetricsDropIns: both services may write exactly the default
// metrics.textfile_dir, through a drop-in shipped beside the unit (so the
// units' own sandbox stays as it is), and systemd-analyze accepts the units
// with the drop-ins applied.
func TestMetricsDropIns(t *testing.T) {
	for _, unit := range []string{"provision.service", "provision-verify.service", "provision-renew.service"} {
		d := directives(t, filepath.Join(unit+".d", "metrics.conf"))
		if got := d["Service.ReadWritePaths"]; len(got) != 1 || got[0] != "-"+config.DefaultTextfileDir || len(d) != 1 {
			t.Errorf("%s.d/metrics.conf: %v, want only ReadWritePaths=-%s", unit, d, config.DefaultTextfileDir)
		}
	}
	dir, files := stage(t, nil)
	for _, unit := range []string{"provision.service", "provision-verify.service", "provision-renew.service"} {
		b, err := os.ReadFile(filepath.Join(unit+".d", "metrics.conf"))
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Join(dir, unit+".d"), 0o755)
		os.WriteFile(filepath.Join(dir, unit+".d", "metrics.conf"), b, 0o644)
	}
	ok, ours, all := analyze(t, dir, files)
	if !ok || len(ours) > 0 {
		t.Fatalf("systemd-analyze verify with the drop-ins failed (ok=%v):\n%s", ok, all)
	}
}

// maxExposure is the highest `systemd-analyze security` overall exposure a
// service may have (0 is the most locked down, 10 the least). doc.go says
// why each remaining point stays.
const maxExposure = 2.0

var exposureRe = regexp.MustCompile(`Overall exposure level for (\S+): ([0-9.]+)`)

// exposure runs systemd-analyze security --offline on a staged unit and
// returns its score.
func exposure(t *testing.T, dir, file string) (float64, string) {
	t.Helper()
	sa := testenv.RequireProgram(t, "systemd-analyze", "systemd")
	cmd := exec.Command(sa, "security", "--offline=true", "--no-pager", file)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	m := exposureRe.FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("systemd-analyze security --offline=true %s: %v\n%s", file, err, out)
	}
	score, err := strconv.ParseFloat(string(m[2]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return score, string(out)
}

// TestSecurityExposure: every service scores at most maxExposure.
func TestSecurityExposure(t *testing.T) {
	dir, files := stage(t, nil)
	withinExposure(t, dir, files, "")
}

// withinExposure scores every staged service (what: "" or the drop-in
// applied, for the messages), fails the test above maxExposure, and
// returns systemd-analyze's output per unit file.
func withinExposure(t *testing.T, dir string, files []string, what string) map[string]string {
	t.Helper()
	outs := map[string]string{}
	for _, f := range files {
		if !strings.HasSuffix(f, ".service") {
			continue
		}
		score, out := exposure(t, dir, f)
		outs[f] = out
		t.Logf("%s%s: systemd-analyze security exposure %.1f (max %.1f)", filepath.Base(f), what, score, maxExposure)
		if score > maxExposure {
			t.Errorf("%s%s: exposure %.1f is above %.1f:\n%s", filepath.Base(f), what, score, maxExposure, out)
		}
	}
	return outs
}

// TestSecurityExposureCatchesRegression proves the check above can fail:
// without its system-call filter and with capabilities back, a unit scores
// above the maximum.
func TestSecurityExposureCatchesRegression(t *testing.T) {
	dir, files := stage(t, func(name, text string) string {
		text = regexp.MustCompile(`(?m)^SystemCallFilter=.*\n`).ReplaceAllString(text, "")
		return strings.Replace(text, "\nCapabilityBoundingSet=\n", "\nCapabilityBoundingSet=CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER\n", 1)
	})
	for _, f := range files {
		if strings.HasSuffix(f, ".service") {
			if score, out := exposure(t, dir, f); score <= maxExposure {
				t.Errorf("%s without its filter scored %.1f, not above %.1f:\n%s", filepath.Base(f), score, maxExposure, out)
			}
		}
	}
}

// TestSandboxDirectives names the directives doc.go relies on, so that a
// removed one fails with its name even where the score still passes.
func TestSandboxDirectives(t *testing.T) {
	want := map[string]string{
		"Service.CapabilityBoundingSet":   "",
		"Service.ProtectProc":             "invisible",
		"Service.ProcSubset":              "pid",
		"Service.PrivateMounts":           "yes",
		"Service.SystemCallErrorNumber":   "EPERM",
		"Service.SystemCallArchitectures": "native",
		"Service.MemoryDenyWriteExecute":  "yes",
		"Service.LockPersonality":         "yes",
		"Service.NoNewPrivileges":         "yes",
		"Service.ProtectSystem":           "strict",
		"Service.RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
	}
	for _, u := range []string{"provision.service", "provision-verify.service", "provision-renew.service"} {
		d := directives(t, u)
		for k, v := range want {
			if got := d[k]; len(got) != 1 || got[0] != v {
				t.Errorf("%s: %s = %q, want exactly %q", u, k, got, v)
			}
		}
		if got := d["Service.SystemCallFilter"]; len(got) != 3 || got[0] != "@system-service" || got[1] != "~@privileged @resources" || got[2] != "fchown" {
			t.Errorf("%s: SystemCallFilter = %q, want @system-service, ~@privileged @resources, then fchown alone (paths.key_group)", u, got)
		}
	}
}

func TestRenewUnitsContract(t *testing.T) {
	s := directives(t, "provision-renew.service")
	if got := s["Service.ExecStart"]; len(got) != 1 || !strings.Contains(got[0], "/usr/bin/provision renew ") {
		t.Errorf("provision-renew.service ExecStart = %q, want provision renew", got)
	}
	if got := s["Service.Restart"]; len(got) != 0 {
		t.Errorf("provision-renew.service must not restart; the timer re-runs it")
	}
	tm := directives(t, "provision-renew.timer")
	for k, want := range map[string]string{"Timer.Unit": "provision-renew.service", "Timer.OnBootSec": "5min", "Timer.OnUnitActiveSec": "15min"} {
		if got := tm[k]; len(got) != 1 || got[0] != want {
			t.Errorf("provision-renew.timer %s = %q, want %q", k, got, want)
		}
	}
	if got := tm["Timer.RandomizedDelaySec"]; len(got) != 1 || got[0] == "0" {
		t.Errorf("provision-renew.timer needs a RandomizedDelaySec, got %q", got)
	}
}

// timerTriggers are the [Timer] directives that start a run (systemd.timer(5)).
var timerTriggers = []string{"OnActiveSec", "OnBootSec", "OnStartupSec", "OnUnitActiveSec", "OnUnitInactiveSec", "OnCalendar"}

// inertTimerLines returns what is wrong with a timer's text: a line that does
// nothing (Persistent= without OnCalendar=: systemd.timer(5) applies it to
// calendar timers only), or a trigger the header comment does not name, so
// the comment could credit the wrong line for a run.
func inertTimerLines(text string) []string {
	var bad []string
	comment, set := "", map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") {
			comment += line + "\n"
		} else if k, _, ok := strings.Cut(line, "="); ok {
			set[k] = true
		}
	}
	if set["Persistent"] && !set["OnCalendar"] {
		bad = append(bad, "Persistent= does nothing without OnCalendar=")
	}
	for _, k := range timerTriggers {
		if set[k] && !strings.Contains(comment, k+"=") {
			bad = append(bad, "the comment does not say that "+k+"= triggers a run")
		}
	}
	return bad
}

// TestTimersHaveNoInertLines: every line of the shipped timers acts, and
// their comments name what really triggers each run. systemd-analyze verify
// (TestSystemdAnalyzeVerify) accepts a Persistent= that does nothing, so
// this says it; the table proves the check can fail.
func TestTimersHaveNoInertLines(t *testing.T) {
	for _, u := range units {
		if !strings.HasSuffix(u, ".timer") {
			continue
		}
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		if bad := inertTimerLines(string(b)); len(bad) > 0 {
			t.Errorf("%s: %s", u, strings.Join(bad, "; "))
		}
	}
	for _, tc := range []struct {
		name, text string
		bad        int
	}{
		{"persistent without a calendar", "# OnBootSec= runs it\n[Timer]\nOnBootSec=5min\nPersistent=true\n", 1},
		{"persistent with a calendar", "# OnCalendar= runs it\n[Timer]\nOnCalendar=hourly\nPersistent=true\n", 0},
		{"a trigger the comment does not name", "# runs every 15 minutes (Persistent=)\n[Timer]\nOnUnitActiveSec=15min\n", 1},
	} {
		if got := inertTimerLines(tc.text); len(got) != tc.bad {
			t.Errorf("%s: %q, want %d problems", tc.name, got, tc.bad)
		}
	}
}

// TestTPMDropIn: with tpm.conf applied (key.store = "tpm"), every service
// may open exactly the TPM's resource manager and nothing else of the
// hardware, systemd-analyze accepts the units, and each still scores at
// most maxExposure.
func TestTPMDropIn(t *testing.T) {
	d := directives(t, "tpm.conf")
	want := map[string][]string{
		"Service.PrivateDevices": {"no"}, "Service.DevicePolicy": {"closed"}, "Service.DeviceAllow": {"/dev/tpmrm0 rw"},
		"Service.SupplementaryGroups": {TPMGroup}, "Service.SystemCallFilter": {"~@raw-io"},
	}
	if len(d) != len(want) {
		t.Errorf("tpm.conf sets %v, want exactly %v", d, want)
	}
	for k, v := range want {
		if got := d[k]; len(got) != 1 || got[0] != v[0] {
			t.Errorf("tpm.conf %s = %v, want %v", k, got, v)
		}
	}
	if got := TPMDropIn("/dev/tpmrm1"); !strings.Contains(got, "\nDeviceAllow=/dev/tpmrm1 rw\n") || strings.Contains(got, "tpmrm0 rw") {
		t.Errorf("TPMDropIn(/dev/tpmrm1) does not name the device:\n%s", got)
	}
	dir, files := stage(t, nil)
	for _, unit := range []string{"provision.service", "provision-verify.service", "provision-renew.service"} {
		os.MkdirAll(filepath.Join(dir, unit+".d"), 0o755)
		if err := os.WriteFile(filepath.Join(dir, unit+".d", "provision-tpm.conf"), []byte(TPMDropIn(DefaultTPMDevice)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ok, ours, all := analyze(t, dir, files)
	if !ok || len(ours) > 0 {
		t.Fatalf("systemd-analyze verify with the TPM drop-in failed (ok=%v):\n%s", ok, all)
	}
	for f, out := range withinExposure(t, dir, files, " with the TPM drop-in") {
		if !strings.Contains(out, "✗ PrivateDevices=") {
			t.Errorf("%s: the score does not reflect the drop-in (PrivateDevices= still on):\n%s", filepath.Base(f), out)
		}
	}
}

// TestKeyGroupDropIn: paths.key_group's drop-in (key-group.conf, which
// provision userdata writes naming the group) makes the units a member of
// that group and changes nothing else; the units pass systemd-analyze
// verify with it and stay within the exposure ceiling, with the TPM
// drop-in too (a node may have both).
func TestKeyGroupDropIn(t *testing.T) {
	d := directives(t, "key-group.conf")
	if len(d) != 1 || len(d["Service.SupplementaryGroups"]) != 1 || d["Service.SupplementaryGroups"][0] != "node-agent" {
		t.Errorf("key-group.conf sets %v, want SupplementaryGroups=node-agent alone", d)
	}
	if got := KeyGroupDropIn("gpu-agents"); !strings.Contains(got, "\nSupplementaryGroups=gpu-agents\n") || strings.Contains(got, "=node-agent") {
		t.Errorf("KeyGroupDropIn(gpu-agents) does not name the group:\n%s", got)
	}
	for _, withTPM := range []bool{false, true} {
		dir, files := stage(t, nil)
		for _, unit := range []string{"provision.service", "provision-verify.service", "provision-renew.service"} {
			os.MkdirAll(filepath.Join(dir, unit+".d"), 0o755)
			// root's own group: it exists on the machine running the test.
			if err := os.WriteFile(filepath.Join(dir, unit+".d", "provision-key-group.conf"), []byte(KeyGroupDropIn("root")), 0o644); err != nil {
				t.Fatal(err)
			}
			if withTPM {
				if err := os.WriteFile(filepath.Join(dir, unit+".d", "provision-tpm.conf"), []byte(TPMDropIn(DefaultTPMDevice)), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		ok, ours, all := analyze(t, dir, files)
		if !ok || len(ours) > 0 {
			t.Fatalf("systemd-analyze verify with the key-group drop-in (TPM %v) failed (ok=%v):\n%s", withTPM, ok, all)
		}
		what := " with the key-group drop-in"
		if withTPM {
			what += " and the TPM drop-in"
		}
		withinExposure(t, dir, files, what)
	}
}
