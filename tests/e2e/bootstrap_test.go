package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/hosts"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// loadPair loads the node's credentials through the stable paths, as the
// node-agent will, and fails unless the key matches the certificate.
func (n *node) loadPair() (*x509.Certificate, []*x509.Certificate) {
	n.T.Helper()
	pair, err := tls.LoadX509KeyPair(n.CertPath(), n.KeyPath())
	if err != nil {
		n.T.Fatalf("key and certificate through the stable paths: %v", err)
	}
	var chain []*x509.Certificate
	for _, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			n.T.Fatal(err)
		}
		chain = append(chain, c)
	}
	return chain[0], chain
}

// chainsTo reports whether chain's leaf verifies as a client certificate
// against the roots in rootPEM.
func chainsTo(chain []*x509.Certificate, rootPEM []byte) error {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

// withoutManagedBlock removes the BEGIN..END lines, what a user's hosts file
// must be byte for byte.
func withoutManagedBlock(t testing.TB, b []byte) []byte {
	t.Helper()
	lines := strings.SplitAfter(string(b), "\n")
	var out strings.Builder
	in, seen := false, false
	for _, l := range lines {
		trim := strings.TrimRight(l, "\r\n")
		switch {
		case trim == hosts.BeginMarker:
			in, seen = true, true
		case trim == hosts.EndMarker:
			in = false
		case !in:
			out.WriteString(l)
		}
	}
	if !seen || in {
		t.Fatalf("hosts file has no complete managed block:\n%s", b)
	}
	return []byte(out.String())
}

// TestFreshNode: a node with a token and nothing else ends enrolled, proven
// and with every file where and how the node-agent expects it. It keeps the
// default 1s long poll: the proof is exactly what the node-agent will do.
func TestFreshNode(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, true)
	userHosts := readFile(t, n.Files.HostsPath)
	// A hosts file with a non-default mode: the block is added, the mode kept.
	if err := os.Chmod(n.Files.HostsPath, 0o640); err != nil {
		t.Fatal(err)
	}
	const machineID = "0123456789abcdef0123456789abcdef"
	if err := os.WriteFile(n.Path("/etc/machine-id"), []byte(machineID+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}

	r := n.Run("bootstrap")
	nodetest.WantExit(t, r, 0)
	if last := r.LastLine(); !strings.HasPrefix(last, "provision bootstrap: done: "+n.ID) {
		t.Errorf("last line %q does not say done for %s", last, n.ID)
	}

	// The receipt, with every contract field, describing the cert on disk.
	rc := n.Receipt()
	leaf, chain := n.loadPair()
	if rc.NodeID != n.ID || rc.Serial != leaf.SerialNumber.String() || rc.Issuer != leaf.Issuer.String() ||
		rc.RootFingerprint != cp.CA.Fingerprint() || !rc.NotAfter.Equal(leaf.NotAfter) ||
		rc.ProvedAt.IsZero() || rc.Endpoint != n.Cfg.NodeAPI.URL {
		t.Errorf("receipt %+v does not describe the installed certificate (serial %s, issuer %s, not_after %s) and fingerprint %s",
			rc, leaf.SerialNumber, leaf.Issuer, leaf.NotAfter, cp.CA.Fingerprint())
	}
	if time.Since(rc.ProvedAt) > time.Minute || rc.ProvedAt.After(time.Now().Add(time.Second)) {
		t.Errorf("proved_at %s is not the time of this run", rc.ProvedAt)
	}
	if leaf.Subject.CommonName != n.ID {
		t.Errorf("certificate subject %q, want %q", leaf.Subject.CommonName, n.ID)
	}
	if err := chainsTo(chain, cp.CA.RootPEM()); err != nil {
		t.Errorf("certificate does not chain to the CA's root: %v", err)
	}
	if ca := readFile(t, filepath.Join(n.Files.PKIDir, "ca.pem")); !bytes.Contains(ca, cp.CA.RootPEM()) {
		t.Errorf("ca.pem does not hold the CA's root")
	}

	// Modes: the key 0600 and the directory 0700.
	if m := perm(t, n.KeyPath()); m != 0o600 {
		t.Errorf("key.pem mode %04o, want 0600", m)
	}
	if m := perm(t, n.Files.PKIDir); m != 0o700 {
		t.Errorf("pki dir mode %04o, want 0700", m)
	}

	// The token is spent and removed, and was never copied anywhere.
	if fileExists(n.Files.TokenPath) {
		t.Errorf("token file %s still exists after enrollment", n.Files.TokenPath)
	}
	n.wantTokensNowhereBut()

	// The per-install done marker, named by the machine id.
	if !fileExists(filepath.Join(n.Files.StateDir, "done", machineID)) {
		t.Errorf("no done marker state_dir/done/%s", machineID)
	}

	// The hosts file: user lines byte for byte, the managed block mapping the names.
	got := readFile(t, n.Files.HostsPath)
	if kept := withoutManagedBlock(t, got); !bytes.Equal(kept, userHosts) {
		t.Errorf("user lines of the hosts file changed:\nbefore:\n%q\nafter (block removed):\n%q", userHosts, kept)
	}
	for _, h := range n.Cfg.Hosts {
		if !bytes.Contains(got, []byte(h.IP)) || !bytes.Contains(got, []byte(h.Name)) {
			t.Errorf("managed block lacks %s %s:\n%s", h.IP, h.Name, got)
		}
	}
	if m := perm(t, n.Files.HostsPath); m != 0o640 {
		t.Errorf("hosts file mode %04o, want its original 0640", m)
	}
	if !bytes.Contains([]byte(r.Stderr), []byte("step=receipt")) {
		t.Errorf("the log has no receipt step line:\n%s", r.Stderr)
	}
}

// TestRerunChangesNothing: a second bootstrap re-proves without a token and
// touches neither the credentials nor the hosts file.
func TestRerunChangesNothing(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, true)
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	first := n.Receipt()
	if fileExists(n.Files.TokenPath) {
		t.Fatal("the token is still there; this test needs a re-run without one")
	}
	pkiBefore := snapshot(t, n.Files.PKIDir)
	gensBefore := generations(t, n.Files.PKIDir)
	hostsBytes := readFile(t, n.Files.HostsPath)
	hostsStat, err := os.Stat(n.Files.HostsPath)
	if err != nil {
		t.Fatal(err)
	}

	r := n.RunJSON("bootstrap")
	nodetest.WantExit(t, r, 0)
	if !r.Report.OK {
		t.Fatalf("re-run report not ok:\n%s", r)
	}
	second := n.Receipt()
	if second.Serial != first.Serial {
		t.Errorf("re-run re-enrolled: serial %s -> %s", first.Serial, second.Serial)
	}
	if !second.ProvedAt.After(first.ProvedAt) && !second.ProvedAt.Equal(first.ProvedAt) {
		t.Errorf("re-run proved_at %s before the first %s", second.ProvedAt, first.ProvedAt)
	}
	if g := generations(t, n.Files.PKIDir); strings.Join(g, ",") != strings.Join(gensBefore, ",") {
		t.Errorf("generation directories changed: %v -> %v", gensBefore, g)
	}
	if d := diffSnapshots(pkiBefore, snapshot(t, n.Files.PKIDir)); len(d) > 0 {
		t.Errorf("re-run changed pki_dir:\n%s", strings.Join(d, "\n"))
	}
	if b := readFile(t, n.Files.HostsPath); !bytes.Equal(b, hostsBytes) {
		t.Errorf("re-run changed the hosts file bytes")
	}
	if st, err := os.Stat(n.Files.HostsPath); err != nil || !st.ModTime().Equal(hostsStat.ModTime()) {
		t.Errorf("re-run rewrote the hosts file (mtime %v -> %v, err %v)", hostsStat.ModTime(), st.ModTime(), err)
	}
}

// TestConcurrentBootstrapsEnrollOnce: cloud-init and the systemd unit may
// start bootstrap at the same moment. The lock serialises them: both exit
// 0, the token is presented once, one certificate is installed.
func TestConcurrentBootstrapsEnrollOnce(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, true)
	results := make(chan nodetest.Result, 2)
	for range 2 {
		go func() { results <- nodetest.RunBinary(t, "bootstrap", "--root", n.Root) }()
	}
	for range 2 {
		r := <-results
		nodetest.WantExit(t, r, 0)
		for _, tok := range n.Tokens() {
			if strings.Contains(r.Stdout+r.Stderr, tok) {
				t.Fatal("a token appears in the output")
			}
		}
	}
	if g := generations(t, n.Files.PKIDir); len(g) != 1 {
		t.Errorf("generation directories %v: want exactly one enrollment", g)
	}
	leaf, _ := n.loadPair()
	if rc := n.Receipt(); rc.Serial != leaf.SerialNumber.String() {
		t.Errorf("receipt serial %s, installed %s", rc.Serial, leaf.SerialNumber)
	}
}

// TestStaleCertFromAnotherCA: credentials issued by a CA that is not the
// current step-ca (the incident's stale certificates) are replaced by the
// tool itself when a token is there; without one it stops at enroll and
// says re-enrollment is needed.
func TestStaleCertFromAnotherCA(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		withToken bool
		wantCode  int
	}{
		{"with a token: replaced", true, 0},
		{"without a token: exit 20, re-enrollment needed", false, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cp := controlplane.Start(t, controlplane.Options{})
			n := newNode(t, cp, tc.withToken)
			stale, err := cp.IssueStaleCert(n.ID)
			if err != nil {
				t.Fatal(err)
			}
			if err := controlplane.WriteNodeCredentials(n.Root, n.Cfg.Paths.PKIDir, stale, cp.Unrelated.RootPEM()); err != nil {
				t.Fatal(err)
			}
			r := n.RunJSON("bootstrap")
			if tc.wantCode != 0 {
				nodetest.WantFailure(t, r, tc.wantCode, "enroll", "")
				if !strings.Contains(r.Report.Summary, "re-enrollment needed") {
					t.Errorf("summary %q does not say re-enrollment is needed", r.Report.Summary)
				}
				if !strings.Contains(r.Report.Remedy, "token") {
					t.Errorf("remedy %q does not say to provide a token", r.Report.Remedy)
				}
				n.WantNoReceipt()
				if leaf, _ := n.loadPair(); leaf.SerialNumber.Cmp(stale.Cert.SerialNumber) != 0 {
					t.Errorf("a failed run replaced the installed certificate")
				}
				return
			}
			nodetest.WantExit(t, r, 0)
			leaf, chain := n.loadPair()
			if leaf.SerialNumber.Cmp(stale.Cert.SerialNumber) == 0 {
				t.Fatal("the stale certificate is still installed")
			}
			if err := chainsTo(chain, cp.CA.RootPEM()); err != nil {
				t.Errorf("the new certificate does not chain to the current CA: %v", err)
			}
			if leaf.Issuer.String() != cp.CA.PKI().Intermediate.Subject.String() {
				t.Errorf("issuer %s, want the current intermediate %s", leaf.Issuer, cp.CA.PKI().Intermediate.Subject)
			}
			rc := n.Receipt()
			if rc.Serial != leaf.SerialNumber.String() || rc.Issuer != leaf.Issuer.String() {
				t.Errorf("receipt %+v does not name the new certificate", rc)
			}
		})
	}
}

// TestCARotationReplacesCert: after the CA is re-initialised (new root, new
// fingerprint distributed in the config), a node bootstrapped earlier holds
// a stale certificate; without a token it says so (exit 20), with one it
// re-enrolls against the new root.
func TestCARotationReplacesCert(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, true)
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	before := n.Receipt()

	if err := cp.RotateCA(); err != nil {
		t.Fatal(err)
	}
	n.Cfg.CA.Fingerprint = cp.CA.Fingerprint()
	n.RewriteConfig()

	r := n.RunJSON("bootstrap")
	nodetest.WantFailure(t, r, 20, "enroll", "")
	if !strings.Contains(r.Report.Summary, "re-enrollment needed") || !strings.Contains(r.Report.Summary, "stale") {
		t.Errorf("summary %q does not say the stale certificate needs re-enrollment", r.Report.Summary)
	}
	// The old receipt stays (it records the last proof), but no new one was written.
	if rc := n.Receipt(); rc.Serial != before.Serial || !rc.ProvedAt.Equal(before.ProvedAt) {
		t.Errorf("a failed run rewrote the receipt: %+v", rc)
	}

	n.GiveToken()
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	after := n.Receipt()
	leaf, chain := n.loadPair()
	if after.Serial == before.Serial || after.Serial != leaf.SerialNumber.String() {
		t.Errorf("serial %s -> %s (installed %s): want a new certificate", before.Serial, after.Serial, leaf.SerialNumber)
	}
	if after.RootFingerprint != cp.CA.Fingerprint() || after.RootFingerprint == before.RootFingerprint {
		t.Errorf("receipt root_fingerprint %s, want the new root %s", after.RootFingerprint, cp.CA.Fingerprint())
	}
	if err := chainsTo(chain, cp.CA.RootPEM()); err != nil {
		t.Errorf("the new certificate does not chain to the rotated root: %v", err)
	}
}

// TestWrongFingerprint: a pinned fingerprint that is not the CA's stops at
// layer ca before the token is presented, so the token stays usable.
func TestWrongFingerprint(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		fp   func(*controlplane.ControlPlane) string
	}{
		{"another CA's root", func(cp *controlplane.ControlPlane) string { return cp.Unrelated.Fingerprint() }},
		{"a typo in the last digit", func(cp *controlplane.ControlPlane) string {
			fp := []byte(cp.CA.Fingerprint())
			if fp[len(fp)-1] == '0' {
				fp[len(fp)-1] = '1'
			} else {
				fp[len(fp)-1] = '0'
			}
			return string(fp)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cp := controlplane.Start(t, controlplane.Options{})
			n := newNode(t, cp, true, func(c *controlplane.NodeConfig) { c.CA.Fingerprint = tc.fp(cp) })
			tokenBefore := readFile(t, n.Files.TokenPath)

			r := n.RunJSON("bootstrap")
			nodetest.WantFailure(t, r, 13, "ca", "ca")
			if strings.Contains(r.Stderr, "status=retry") {
				t.Errorf("a fingerprint mismatch was retried:\n%s", r.Stderr)
			}
			if !strings.Contains(r.Report.Remedy, "fingerprint") {
				t.Errorf("remedy %q does not mention the fingerprint", r.Report.Remedy)
			}
			n.WantNoReceipt()
			if fileExists(n.KeyPath()) || fileExists(n.CertPath()) {
				t.Error("credentials were written although the CA was not trusted")
			}
			if b, err := os.ReadFile(n.Files.TokenPath); err != nil || !bytes.Equal(b, tokenBefore) {
				t.Fatalf("the token file changed or vanished (err %v)", err)
			}

			// The CA never saw the token: the same token works once the pin is right.
			n.Cfg.CA.Fingerprint = cp.CA.Fingerprint()
			n.RewriteConfig()
			r = n.Run("bootstrap")
			nodetest.WantExit(t, r, 0)
			n.Receipt()
		})
	}
}

// TestUsedToken: a token the CA has already accepted once is refused with a
// plain message and a remedy, never retried, never printed.
func TestUsedToken(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	a := newNode(t, cp, true)
	tok := strings.TrimSpace(string(readFile(t, a.Files.TokenPath)))
	nodetest.WantExit(t, a.Run("bootstrap"), 0)

	// The same node reinstalled on a fresh root, handed the same (now used) token.
	b := &node{nodetest.New(t, cp, t.TempDir(), a.ID,
		nodetest.Configure(func(c *controlplane.NodeConfig) { *c = a.Cfg }), nodetest.Token(tok))}

	r := b.RunJSON("bootstrap")
	nodetest.WantFailure(t, r, 20, "enroll", "ca")
	if s := r.Report.Summary; !strings.Contains(s, "rejected the enrollment token") || !strings.Contains(s, "used") || !strings.Contains(s, "expired") {
		t.Errorf("summary %q does not say the CA rejected the token as used/expired", s)
	}
	if !strings.Contains(r.Report.Remedy, "fresh") {
		t.Errorf("remedy %q does not say to issue a fresh token", r.Report.Remedy)
	}
	if r.Report.Transient {
		t.Error("a used token is reported as transient")
	}
	if strings.Contains(r.Stderr, "status=retry") {
		t.Errorf("a used token was retried:\n%s", r.Stderr)
	}
	b.WantNoReceipt()
	b.wantTokensNowhereBut(b.Files.TokenPath)
	if fileExists(b.KeyPath()) {
		t.Error("a key was installed although enrollment failed")
	}

	// The text report ends with one actionable line naming the layer and exit code.
	r = b.Run("bootstrap")
	nodetest.WantExit(t, r, 20)
	if last := r.LastLine(); !strings.Contains(last, "FAILED at layer enroll (owner: ca)") || !strings.Contains(last, "(exit 20)") {
		t.Errorf("last line %q does not name layer enroll, owner ca and exit 20", last)
	}
}

// TestAPIUnavailableThenOK: a 503 with Retry-After is transient; bootstrap
// waits, retries, and succeeds.
func TestAPIUnavailableThenOK(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, true)
	cp.API.FailNext(controlplane.RetryAfterFault(503, 1))

	r := n.Run("bootstrap")
	nodetest.WantExit(t, r, 0)
	if !strings.Contains(r.Stderr, "status=retry") {
		t.Errorf("the log shows no retry:\n%s", r.Stderr)
	}
	n.Receipt()
	var statuses []int
	for _, q := range cp.API.Requests() {
		if strings.Contains(q.Path, "/"+n.ID+"/") {
			statuses = append(statuses, q.Status)
		}
	}
	if len(statuses) < 2 || statuses[0] != 503 || statuses[len(statuses)-1] != 204 {
		t.Errorf("node API saw statuses %v, want 503 first and 204 last", statuses)
	}
}

// TestAPIUnavailableUntilDeadline: a node API that stays 503 is retried
// only until bootstrap.deadline; then the run fails at tasks-wait, says it
// gave up, and writes no receipt.
func TestAPIUnavailableUntilDeadline(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	// The 1s long poll and each request (2s) fit in the deadline.
	n := newNode(t, cp, true, func(c *controlplane.NodeConfig) { c.Bootstrap.Deadline, c.Bootstrap.RequestTimeout = "3s", "2s" })
	cp.API.FailAlways(controlplane.StatusFault(503))

	r := n.RunJSON("bootstrap")
	nodetest.WantFailure(t, r, 19, "tasks-wait", "")
	if !r.Report.Transient || !strings.Contains(r.Report.Summary, "gave up") {
		t.Errorf("want a transient failure that says it gave up, got transient=%v summary %q", r.Report.Transient, r.Report.Summary)
	}
	if strings.Count(r.Stderr, "status=retry") < 1 {
		t.Errorf("no retry before giving up:\n%s", r.Stderr)
	}
	n.WantNoReceipt()
}

// TestAPIIdentityRejected: a 401 "invalid node identity" is not retried,
// leaves no receipt, exits 18, and the owner follows mtls_present: no
// certificate reached the API -> the ingress; one did -> the API.
func TestAPIIdentityRejected(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	// Sequential: the fault is global to this control plane.
	for _, tc := range []struct {
		name      string
		mtls      bool
		wantOwner string
	}{
		{"mtls_present=false: ingress does not forward the certificate", false, "ingress"},
		{"mtls_present=true: API cannot use the certificate", true, "api"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, cp, true)
			cp.API.FailAlways(controlplane.IdentityFault(tc.mtls, "forwarded certificate header missing"))
			defer cp.API.ClearFaults()

			r := n.RunJSON("bootstrap")
			nodetest.WantFailure(t, r, 18, "identity", tc.wantOwner)
			var idc *nodetest.Check
			for i := range r.Report.Checks {
				if r.Report.Checks[i].Name == "identity" {
					idc = &r.Report.Checks[i]
				}
			}
			if idc == nil || idc.Status != "fail" || idc.Evidence["mtls_present"] != map[bool]string{true: "true", false: "false"}[tc.mtls] {
				t.Errorf("identity check %+v does not carry mtls_present=%v", idc, tc.mtls)
			}
			if strings.Contains(r.Stderr, "status=retry") {
				t.Errorf("a 401 was retried:\n%s", r.Stderr)
			}
			n.WantNoReceipt()
			if n := len(cp.API.Rejections()); n == 0 {
				t.Error("the node API logged no rejection")
			}
		})
	}
}

// TestOpenKeyModeEndsPrivate: credentials left by an older tool with a 0644
// key (and a 0755 directory) end 0600/0700. A key that was world-readable
// is re-issued, not trusted; a 0600 key in a 0755 directory is kept and only
// the directory tightened.
func TestOpenKeyModeEndsPrivate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		keyMode      fs.FileMode
		dirMode      fs.FileMode
		withToken    bool
		wantReissued bool
	}{
		{"old layout: key 0644, dir 0755", 0o644, 0o755, true, true},
		{"key 0600 in a 0755 dir, no token needed", 0o600, 0o755, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cp := controlplane.Start(t, controlplane.Options{})
			n := newNode(t, cp, tc.withToken)
			old, err := cp.IssueNodeCert(n.ID)
			if err != nil {
				t.Fatal(err)
			}
			if err := controlplane.WriteNodeCredentials(n.Root, n.Cfg.Paths.PKIDir, old, cp.CA.RootPEM()); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(n.KeyPath(), tc.keyMode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(n.Files.PKIDir, tc.dirMode); err != nil {
				t.Fatal(err)
			}

			r := n.Run("bootstrap")
			nodetest.WantExit(t, r, 0)
			leaf, _ := n.loadPair()
			if reissued := leaf.SerialNumber.Cmp(old.Cert.SerialNumber) != 0; reissued != tc.wantReissued {
				t.Errorf("certificate re-issued = %v, want %v", reissued, tc.wantReissued)
			}
			if m := perm(t, n.KeyPath()); m != 0o600 {
				t.Errorf("key.pem mode %04o, want 0600", m)
			}
			if m := perm(t, n.Files.PKIDir); m != 0o700 {
				t.Errorf("pki dir mode %04o, want 0700", m)
			}
			// No private key anywhere under pki_dir is readable by others.
			filepath.WalkDir(n.Files.PKIDir, func(p string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() || d.Type()&fs.ModeSymlink != 0 {
					return err
				}
				if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("PRIVATE KEY")) {
					if m := perm(t, p); m&0o077 != 0 {
						t.Errorf("%s holds a private key with mode %04o", p, m)
					}
				}
				return nil
			})
			n.Receipt()
		})
	}
}

// TestTaskDuringProofIsKept: a task handed out by the proof's tasks/wait is
// the node-agent's work; it is saved under state_dir/tasks and reported. An
// id that looks like a path must not steer the write out of that directory.
func TestTaskDuringProofIsKept(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		id       string
		wantFile bool // saved as <id>.json (else under a generated name)
	}{
		{"plain id", "reimage-42", true},
		{"id that is a path", "../../../etc/cron.d/evil", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cp := controlplane.Start(t, controlplane.Options{})
			n := newNode(t, cp, true)
			task := cp.API.QueueTask(n.ID, controlplane.Task{ID: tc.id, Kind: "reimage", Payload: json.RawMessage(`{"image":"ubuntu-24.04"}`)})

			r := n.RunJSON("bootstrap")
			nodetest.WantExit(t, r, 0)
			if cp.API.Pending(n.ID) != 0 {
				t.Fatal("the task was not delivered to the proof")
			}
			var reported controlplane.Task
			if err := json.Unmarshal(r.Report.Task, &reported); err != nil || reported.ID != task.ID {
				t.Errorf("report task %s (err %v), want id %s", r.Report.Task, err, task.ID)
			}
			tasksDir := filepath.Join(n.Files.StateDir, "tasks")
			ents, err := os.ReadDir(tasksDir)
			if err != nil || len(ents) != 1 || !strings.HasSuffix(ents[0].Name(), ".json") {
				t.Fatalf("state_dir/tasks holds %v (err %v), want one .json file", ents, err)
			}
			saved := filepath.Join(tasksDir, ents[0].Name())
			if tc.wantFile && ents[0].Name() != tc.id+".json" {
				t.Errorf("task saved as %s, want %s.json", ents[0].Name(), tc.id)
			}
			if fileExists(n.Path("/etc/cron.d")) {
				t.Error("a task id steered a write out of state_dir/tasks")
			}
			var onDisk controlplane.Task
			if err := json.Unmarshal(readFile(t, saved), &onDisk); err != nil {
				t.Fatalf("saved task: %v", err)
			}
			var compact bytes.Buffer
			if err := json.Compact(&compact, onDisk.Payload); err != nil {
				t.Fatalf("saved payload: %v", err)
			}
			if onDisk.ID != task.ID || onDisk.Kind != task.Kind || compact.String() != string(task.Payload) {
				t.Errorf("saved task %+v, want %+v", onDisk, task)
			}
			if m := perm(t, saved); m&0o077 != 0 {
				t.Errorf("saved task mode %04o: tasks may carry secrets, want no group/other access", m)
			}
			n.Receipt()

			// A re-run (no task this time) keeps it.
			nodetest.WantExit(t, n.Run("bootstrap"), 0)
			if !fileExists(saved) {
				t.Error("a re-run lost the saved task")
			}
		})
	}
}

// TestRawIPNodeAPIURLRefused: the incident's raw-IP URL (routed by no Host
// rule, verified by no hostname) is a config error, caught before anything
// is written or any connection is made.
func TestRawIPNodeAPIURLRefused(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	// A tripwire stands in for the CA: any connection to it is a failure.
	trip, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer trip.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := trip.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	n := newNode(t, cp, true, func(c *controlplane.NodeConfig) {
		c.NodeAPI.URL = "https://" + cp.API.Addr()
		c.CA.URL = "https://" + cp.CA.Hostname() + ":" + portOf(t, trip.Addr())
	})
	before := snapshot(t, n.Root)

	for _, cmd := range []string{"bootstrap", "verify"} {
		r := n.RunJSON(cmd)
		nodetest.WantFailure(t, r, 3, "config", "node")
		if !strings.Contains(r.Report.Summary, "node_api.url") {
			t.Errorf("%s: summary %q does not name node_api.url", cmd, r.Report.Summary)
		}
	}
	if q := cp.API.Requests(); len(q) != 0 {
		t.Errorf("the node API was called: %+v", q)
	}
	select {
	case <-accepted:
		t.Error("the CA address was dialled")
	default:
	}
	if d := diffSnapshots(before, snapshot(t, n.Root)); len(d) > 0 {
		t.Errorf("a config error changed the root:\n%s", strings.Join(d, "\n"))
	}
}

func portOf(t testing.TB, a net.Addr) string {
	t.Helper()
	_, p, err := net.SplitHostPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return p
}
