package firstboot

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// reenrollSentence ends every summary of a certificate renew cannot renew;
// the runbook quotes it.
const reenrollSentence = "re-enrollment with a fresh one-time token is needed (provision bootstrap)"

// certSection is the runbook's "Certificate expiring or expired" section,
// which is prose with quoted texts rather than bullets.
func certSection(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot, "docs", "runbook.md"))
	if err != nil {
		t.Fatal(err)
	}
	const head = "## Certificate expiring or expired\n"
	s := string(b)
	i := strings.Index(s, head)
	if i < 0 {
		t.Fatal("docs/runbook.md has no section \"Certificate expiring or expired\"")
	}
	s = s[i+len(head):]
	if j := strings.Index(s, "\n## "); j >= 0 {
		s = s[:j]
	}
	return s
}

// quoted returns the section's code span (inline or a ``` line) that
// starts with prefix, or fails.
func quoted(t *testing.T, md, prefix string) string {
	t.Helper()
	for _, s := range codeSpans(md) {
		if strings.HasPrefix(s, prefix) {
			return s
		}
	}
	t.Fatalf("the runbook section no longer quotes a text starting %q; quoted: %q", prefix, codeSpans(md))
	return ""
}

// renewNode is a bootstrapped node on its own control plane, with [renew]
// as given.
func renewNode(t *testing.T, opts controlplane.Options, rc *controlplane.RenewConfig) *node {
	t.Helper()
	cp := controlplane.Start(t, opts)
	n := &node{nodetest.New(t, cp, t.TempDir(), "gpu-0042", nodetest.Deadline("8s", "3s"),
		nodetest.Configure(func(c *controlplane.NodeConfig) { c.Renew = rc }))}
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	return n
}

// TestRunbookCertificateExpiring walks "Certificate expiring or expired"
// for a certificate past its renewal point whose renewal fails its proof
// (the ingress rejects it): verify's quoted warning, renew's quoted
// "not published" summary, and the fix (the failing layer's own, then
// provision renew) bringing the node back with a new certificate.
func TestRunbookCertificateExpiring(t *testing.T) {
	t.Parallel()
	sec := certSection(t)
	warn := quoted(t, sec, "[WARN] credentials")
	notPublished := quoted(t, sec, "new certificate not published (")

	// Two-minute certificates renewed from a tenth of their life: past the
	// renewal point within seconds, far from expiry.
	n := renewNode(t, controlplane.Options{CALifetime: 2 * time.Minute}, &controlplane.RenewConfig{Fraction: 0.1, Splay: "0s"})
	before := n.Receipt().Serial
	deadline := time.Now().Add(30 * time.Second)
	for n.Run("renew", "--check").Code != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the certificate never became due")
		}
		time.Sleep(500 * time.Millisecond)
	}

	// The ingress rejects the renewed certificate: the renewal fails its
	// proof, and the old certificate stays current.
	n.CP.SetClientCAMode(controlplane.ClientCAUnrelated)
	r := n.RunJSON("renew")
	nodetest.WantFailure(t, r, 16, "tls-client-auth", "")
	if !symptomIn(notPublished, r.Report.Summary) {
		t.Errorf("the runbook's `%s` is not what renew says:\n%s", notPublished, r.Report.Summary)
	}
	if !strings.Contains(r.Report.Summary, "(serial "+before+",") || leafSerial(t, n) != before {
		t.Errorf("renew's summary does not name the old serial %s that stays current: %s", before, r.Report.Summary)
	}

	// verify, as text on a terminal, shows the quoted warning.
	v := n.Run("verify")
	if !symptomIn(warn, v.Stdout) {
		t.Errorf("the runbook's `%s` is not in verify's output:\n%s", warn, v.Stdout)
	}
	// The section's pointers into renew.json hold what it says.
	sh := newShell(n, false)
	code, out := sh.run("jq -r '.last_result, .failed_layer, .last_error' /var/lib/provision/renew.json")
	if code != 0 || !strings.HasPrefix(out, "failed\ntls-client-auth\nnew certificate not published") {
		t.Errorf("renew.json's last_result, failed_layer, last_error: %q", out)
	}
	for _, field := range []string{"last_result", "last_error", "failed_layer"} {
		if !strings.Contains(sec, "`"+field+"`") {
			t.Errorf("the section no longer names renew.json's `%s`", field)
		}
	}

	// Fix the layer (its own section), then `provision renew` renews.
	n.CP.SetClientCAMode(controlplane.ClientCAStep)
	if code, _ := sh.run("provision renew"); code != 0 {
		t.Fatalf("provision renew after the fix exited %d", code)
	}
	if leafSerial(t, n) == before {
		t.Error("provision renew after the fix exited 0 but the certificate is the old one")
	}
	if r, rep := n.verify(); r.Code != 0 || !rep.OK {
		t.Fatalf("verify after the renewal:\n%s", r)
	}
}

// TestRunbookCannotRenew walks the section's table: for each row, the state
// it names (an expired certificate, one revoked by a reinstall that
// replaced it, a stale one from another CA) makes provision renew stop with
// the row's first words and exit code, ending with the quoted sentence; the
// fix, a fresh token and provision bootstrap, brings the node back.
func TestRunbookCannotRenew(t *testing.T) {
	t.Parallel()
	sec := certSection(t)
	if !slices.Contains(codeSpans(sec), reenrollSentence) {
		t.Fatalf("the section no longer quotes `%s`", reenrollSentence)
	}
	rows := map[string]int{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(certificate [a-z]+:)` \\| ([0-9]+) \\|").FindAllStringSubmatch(sec, -1) {
		rows[m[1]], _ = strconv.Atoi(m[2])
	}
	plant := map[string]func(t *testing.T, n *node){
		"certificate expired:": func(t *testing.T, n *node) {
			// The CA's own certificate, ended ten minutes ago; this CA does
			// not allow renewal after expiry.
			l, err := n.CP.CA.IssueNodeCertAt(n.ID, time.Now().Add(-40*time.Minute), time.Now().Add(-10*time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			replaceCreds(t, n, l.KeyPEM(), l.ChainPEM(), n.CP.CA.RootPEM())
		},
		"certificate stale:": func(t *testing.T, n *node) {
			l, err := n.CP.IssueStaleCert(n.ID)
			if err != nil {
				t.Fatal(err)
			}
			replaceCreds(t, n, l.KeyPEM(), l.ChainPEM(), n.CP.CA.RootPEM())
		},
		"certificate revoked:": func(t *testing.T, n *node) {
			// A reinstall on a kept disk replaced the certificate and
			// revoked it; then the old files came back (a restored
			// backup, a second install sharing the disk).
			key, chain, ca := readFileT(t, n.Path("/var/lib/provision/pki/key.pem")), readFileT(t, n.Path("/var/lib/provision/pki/cert.pem")), readFileT(t, n.Path("/var/lib/provision/pki/ca.pem"))
			os.Chmod(n.Path("/var/lib/provision/pki/current/key.pem"), 0o644) // looks exposed: bootstrap rotates it
			n.GiveToken()
			nodetest.WantExit(t, n.RunJSON("bootstrap"), 0)
			replaceCreds(t, n, key, chain, ca)
		},
	}
	if len(rows) != len(plant) {
		t.Fatalf("the section's table has rows %v, want one for each of %d cases", rows, len(plant))
	}
	for words, code := range rows {
		t.Run(words, func(t *testing.T) {
			t.Parallel()
			// Revoked is said only from the CA's signed revocation list.
			n := renewNode(t, controlplane.Options{CARevocation: words == "certificate revoked:", CACRL: words == "certificate revoked:"}, nil)
			f, ok := plant[words]
			if !ok {
				t.Fatalf("the runbook's table names %q, which this test cannot create", words)
			}
			f(t, n)
			r := n.RunJSON("renew", "--force")
			nodetest.WantExit(t, r, code)
			if !strings.HasPrefix(r.Report.Summary, words) || !strings.HasSuffix(r.Report.Summary, reenrollSentence) {
				t.Errorf("renew's summary %q: want it to start with `%s` and end with `%s`", r.Report.Summary, words, reenrollSentence)
			}
			// The fix: a fresh one-time token in ca.token_file, then
			// provision bootstrap.
			n.GiveToken()
			sh := newShell(n, false)
			if code, _ := sh.run("provision bootstrap"); code != 0 {
				t.Fatalf("provision bootstrap with a fresh token exited %d", code)
			}
			if c := n.Run("renew", "--check").Code; c != 30 {
				t.Errorf("renew --check after the re-enrollment: exit %d, want 30 (not due)", c)
			}
		})
	}
}

func readFileT(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// replaceCreds replaces pki_dir with plain files holding the given key,
// chain and CA bundle.
func replaceCreds(t *testing.T, n *node, key, chain, ca []byte) {
	t.Helper()
	dir := n.Files.PKIDir
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// provision's pki_dir as a restored backup of it holds it: marked as
	// provision's own, a directory it made.
	if err := system.MarkOwn(dir); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"key.pem": key, "cert.pem": chain, "ca.pem": ca} {
		mode := os.FileMode(0o644)
		if name == "key.pem" {
			mode = 0o600
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, mode); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRunbookHook walks the "hook" section: a renew.post_hook that fails
// after a published renewal is exit 22, layer hook, owner node; the
// section's Confirm (its journal grep over what provision writes to the
// journal, and its jq over renew.json) shows it; the renewal stands; the
// Fix (a working hook) and the Prove (`provision renew --force` exits 0)
// hold.
func TestRunbookHook(t *testing.T) {
	t.Parallel()
	sec, ok := readRunbook(t)["hook"]
	if !ok {
		t.Fatal("docs/runbook.md has no section \"hook\"")
	}
	symptom := sec.bullet(t, "Symptom")
	for _, w := range []string{"`provision renew` exits 22", "layer `hook`", "owner `node`"} {
		if !strings.Contains(strings.Join(strings.Fields(symptom), " "), w) {
			t.Fatalf("the hook section's Symptom no longer says %s", w)
		}
	}
	hookDir := t.TempDir()
	hook := filepath.Join(hookDir, "reload-node-agent")
	writeHook := func(body string) {
		if err := os.WriteFile(hook, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeHook("echo 'node-agent: reload refused' >&2; exit 1")
	n := renewNode(t, controlplane.Options{}, &controlplane.RenewConfig{PostHook: []string{hook, "reload"}, PostHookTimeout: "5s"})
	before := n.Receipt().Serial

	// What the unit leaves in the journal: the JSON report on stdout and
	// the JSON log on stderr.
	r := n.Run("renew", "--force", "--format", "json", "--log-format", "json")
	nodetest.WantExit(t, r, 22)
	journal := r.Stdout + r.Stderr
	var rep nodetest.Report
	if res := n.RunJSON("renew", "--check"); res.Code != 30 {
		t.Errorf("renew --check after the published renewal: exit %d, want 30", res.Code)
	}
	if err := json.Unmarshal([]byte(r.Stdout), &rep); err != nil || rep.FailedLayer != "hook" || rep.Owner != "node" {
		t.Fatalf("renew's report: layer %q owner %q (%v)\n%s", rep.FailedLayer, rep.Owner, err, r)
	}
	serial := leafSerial(t, n)
	if serial == before {
		t.Fatal("the renewal was not published")
	}

	// Confirm: the journal grep, with the real grep, over the journal's lines.
	var grepped bool
	for _, c := range codeSpans(sec.bullet(t, "Confirm")) {
		if !strings.HasPrefix(c, "journalctl ") {
			continue
		}
		_, g, ok := strings.Cut(c, "| grep ")
		if !ok {
			t.Fatalf("the journal line %q has no grep", c)
		}
		cmd := exec.Command("sh", "-c", "grep "+g)
		cmd.Stdin = strings.NewReader(journal)
		out, err := cmd.Output()
		if err != nil || !strings.Contains(string(out), "renew.post_hook failed") || !strings.Contains(string(out), "node-agent: reload refused") {
			t.Errorf("the runbook's `grep %s` over the journal found (%v):\n%s", g, err, out)
		}
		// Every alternative of the pattern must find something: a dead
		// one (a key provision does not write) misleads on-call.
		pat := strings.Trim(strings.TrimSpace(g), "'")
		for _, alt := range strings.Split(pat, `\|`) {
			c := exec.Command("grep", "-q", "--", alt)
			c.Stdin = strings.NewReader(journal)
			if err := c.Run(); err != nil {
				t.Errorf("the runbook's grep alternative %q matches no line provision writes to the journal", alt)
			}
		}
		grepped = true
	}
	if !grepped {
		t.Error("the hook section's Confirm has no journalctl line")
	}
	sh := newShell(n, false)
	var shown strings.Builder
	for _, c := range commands(sec.bullet(t, "Confirm")) {
		code, out := sh.run(c)
		if code != 0 {
			t.Errorf("runbook confirm `%s` exited %d", c, code)
		}
		shown.WriteString(out)
	}
	if !strings.Contains(shown.String(), serial) || !strings.Contains(shown.String(), "failed: "+hook) {
		t.Errorf("the hook section's Confirm commands do not show the new serial %s and the hook's failure:\n%s", serial, shown.String())
	}

	// Fix the hook; Prove.
	writeHook("exit 0")
	prove := strings.Join(strings.Fields(sec.bullet(t, "Prove")), " ")
	if !strings.Contains(prove, "`provision renew --force` exits 0") {
		t.Fatalf("the hook section's Prove no longer says `provision renew --force` exits 0: %s", prove)
	}
	if code, _ := sh.run("provision renew --force"); code != 0 {
		t.Fatalf("provision renew --force with the hook fixed exited %d", code)
	}
	if code, out := sh.run("jq -r .hook /var/lib/provision/renew.json"); code != 0 || strings.TrimSpace(out) != "ok" {
		t.Errorf("renew.json's hook after the fix: %q", out)
	}
	if r, _ := n.verify(); r.Code != 0 {
		t.Fatalf("verify after the fix:\n%s", r)
	}
}

// leafSerial is the serial of the certificate in pki_dir/cert.pem.
func leafSerial(t *testing.T, n *node) string {
	t.Helper()
	b, _ := pem.Decode(readFileT(t, n.Path("/var/lib/provision/pki/cert.pem")))
	if b == nil {
		t.Fatal("cert.pem holds no PEM block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.String()
}
