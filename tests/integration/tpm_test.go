package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/nodekey"
	"github.com/gpuaas/provision/nodekey/swtpm"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/ingress"
)

// The node key inside a TPM (issue 32): key.store = "tpm" against a
// software TPM (swtpm in socket mode, one per test), the real binary, a
// real step-ca and real nginx in front of the node API.

// tpmEnv is a node whose key lives in tp, behind nginx; edit changes its
// config further. It does not bootstrap.
func tpmEnv(t *testing.T, tp *swtpm.TPM, eo envOptions, edit func(c *controlplane.NodeConfig)) *env {
	t.Helper()
	eo.node = func(_ *env, c *controlplane.NodeConfig) {
		c.Bootstrap.Deadline, c.Bootstrap.RequestTimeout = "15s", "2s"
		c.Key = controlplane.TPMKey(tp.Spec())
		if edit != nil {
			edit(c)
		}
	}
	return newEnv(t, ingress.Nginx, eo)
}

// mustBootstrap runs bootstrap, which must succeed.
func (e *env) mustBootstrap() {
	e.t.Helper()
	if r := e.bootstrap(); r.code != 0 {
		e.t.Fatalf("bootstrap: exit %d %s: %s\n%s", r.code, r.rep.FailedLayer, r.rep.Summary, r.stderr)
	}
}

// tpmKey reads the published key.pem: it must be a TPM key file, and
// the key it names must be the certificate's.
func tpmKey(t *testing.T, e *env, tp *swtpm.TPM) (*nodekey.TPMKey, *x509.Certificate) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.files.PKIDir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "-----BEGIN TSS2 PRIVATE KEY-----\n") {
		t.Fatalf("key.pem is not a TPM key file:\n%.60s", b)
	}
	pair, err := nodekey.LoadX509KeyPair(filepath.Join(e.files.PKIDir, "cert.pem"), filepath.Join(e.files.PKIDir, "key.pem"), nodekey.WithTPM(tp.Spec()))
	if err != nil {
		t.Fatalf("the published pair: %v", err)
	}
	k := pair.PrivateKey.(*nodekey.TPMKey)
	if a := k.Attributes(); !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.NoDA || !a.SignOnly {
		t.Errorf("the node key's attributes %+v: want fixedTPM, fixedParent, made in the TPM, noDA, sign-only", a)
	}
	if fi, err := os.Stat(filepath.Join(e.files.PKIDir, "key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode: %v %v", fi.Mode(), err)
	}
	return k, pair.Leaf
}

func findCheck(r run, name string) (status, message string, ev map[string]string) {
	for _, c := range r.rep.Checks {
		if c.Name == name {
			return c.Status, c.Message, c.Evidence
		}
	}
	return "", "", nil
}

// noPrivateKey fails if a software private key appears in any file under
// the node's root or in any output: with key.store = "tpm" the only key
// material on the node is the TPM's wrapped blob, and the private key
// itself exists only inside the TPM (its value is known to no one, so it
// cannot be searched for; what can be is that nothing that could hold it
// was ever written).
func noPrivateKey(t *testing.T, root string, outputs ...string) {
	t.Helper()
	bad := func(b []byte) bool {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "PRIVATE KEY-----") && !strings.Contains(l, "TSS2 PRIVATE KEY-----") {
				return true
			}
		}
		return false
	}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && bad(b) {
			t.Errorf("%s holds a software private key", p)
		}
		return nil
	})
	for i, o := range outputs {
		if bad([]byte(o)) {
			t.Errorf("output %d holds a private key:\n%s", i, o)
		}
	}
}

// TestTPMBootstrapVerifyRenew: bootstrap makes the key inside the TPM
// (key.pem a TSS2 key file, 0600, the key fixedTPM/noDA/sign-only), signs
// the CSR there, and proves it through nginx; verify's key-store check and
// status prove it signs; renew --force rekeys to a new TPM key (/rekey),
// and with renew.rekey = false renews keeping it (/renew). No software
// private key is ever written or printed.
func TestTPMBootstrapVerifyRenew(t *testing.T) {
	t.Parallel()
	tp := swtpm.New(t)
	e := tpmEnv(t, tp, envOptions{}, nil)
	var outs []string
	r := e.bootstrap()
	outs = append(outs, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("bootstrap with the key in the TPM: exit %d %s: %s\n%s", r.code, r.rep.FailedLayer, r.rep.Summary, r.stderr)
	}
	k1, leaf1 := tpmKey(t, e, tp)

	v := e.verify()
	outs = append(outs, v.stdout, v.stderr)
	st, msg, ev := findCheck(v, "key-store")
	if v.code != 0 || st != "pass" || ev["installed"] != "tpm" || !strings.Contains(msg, "inside the TPM") || !strings.Contains(msg, "signed a test digest") {
		t.Fatalf("verify: exit %d, key-store %s %q %v", v.code, st, msg, ev)
	}
	s := e.provision("status")
	outs = append(outs, s.stdout)
	var sj struct {
		Key struct {
			Store, Installed string
			Signs            bool
		} `json:"key"`
	}
	if err := json.Unmarshal([]byte(s.stdout), &sj); err != nil || sj.Key.Store != "tpm" || sj.Key.Installed != "tpm" || !sj.Key.Signs {
		t.Fatalf("status key: %+v %v\n%s", sj.Key, err, s.stdout)
	}

	r = e.provision("renew", "--force")
	outs = append(outs, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("renew --force (rekey): exit %d %s: %s\n%s", r.code, r.rep.FailedLayer, r.rep.Summary, r.stderr)
	}
	k2, leaf2 := tpmKey(t, e, tp)
	if k2.Public().(*ecdsa.PublicKey).Equal(k1.Public()) || leaf2.SerialNumber.Cmp(leaf1.SerialNumber) == 0 {
		t.Fatal("renew.rekey did not give a new TPM key and certificate")
	}

	no := false
	e.rewriteConfig(func(c *controlplane.NodeConfig) { c.Renew = &controlplane.RenewConfig{Rekey: &no} })
	r = e.provision("renew", "--force")
	outs = append(outs, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("renew --force (keep the key): exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
	k3, leaf3 := tpmKey(t, e, tp)
	if !k3.Public().(*ecdsa.PublicKey).Equal(k2.Public()) || leaf3.SerialNumber.Cmp(leaf2.SerialNumber) == 0 {
		t.Fatal("renew without rekey did not keep the TPM key with a new certificate")
	}
	if v := e.verify(); v.code != 0 {
		t.Fatalf("verify after the renewals: exit %d: %s", v.code, v.rep.Summary)
	}
	// Nothing of the node's keys stays in the TPM's memory.
	if out := tp.Tool("tpm2_getcap", "handles-persistent"); strings.Contains(out, "0x81000") {
		t.Errorf("a persistent storage key was left in the TPM: %s", out)
	}
	noPrivateKey(t, e.root, outs...)
	t.Logf("tpm: bootstrap, verify, rekey and renew with the key inside the TPM; serials %s, %s, %s", leaf1.SerialNumber, leaf2.SerialNumber, leaf3.SerialNumber)
}

// TestTPMRenewAfterExpiry: a node whose certificate (for its TPM key)
// ended days ago renews without a token through step-ca's renewal after
// expiry, the renew token signed inside the TPM; the key is kept.
func TestTPMRenewAfterExpiry(t *testing.T) {
	t.Parallel()
	tp := swtpm.New(t)
	cp := controlplane.Start(t, controlplane.Options{CAAllowRenewalAfterExpiry: true, CAAge: 7 * 24 * time.Hour})
	e := tpmEnv(t, tp, envOptions{cp: cp}, nil)
	e.mustBootstrap()
	// Powered off for days: the certificate for its TPM key ended two days ago.
	k, err := nodekey.CreateTPMKey(nodekey.WithTPM(tp.Spec()))
	if err != nil {
		t.Fatal(err)
	}
	l, err := cp.CA.IssueNodeCertForKeyAt(nodeID, k.Public().(*ecdsa.PublicKey), time.Now().Add(-72*time.Hour), time.Now().Add(-48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := k.MarshalPEM()
	os.RemoveAll(e.files.PKIDir)
	if err := controlplane.WriteNodeFiles(e.root, e.cfg.Paths.PKIDir, keyPEM, l.ChainPEM(), cp.CA.RootPEM()); err != nil {
		t.Fatal(err)
	}
	r := e.provision("renew")
	if r.code != 0 {
		t.Fatalf("renew after expiry with the TPM key: exit %d %s: %s\n%s", r.code, r.rep.FailedLayer, r.rep.Summary, r.stderr)
	}
	k2, leaf := tpmKey(t, e, tp)
	if !k2.Public().(*ecdsa.PublicKey).Equal(k.Public()) || !time.Now().Before(leaf.NotAfter) || leaf.SerialNumber.Cmp(l.Cert.SerialNumber) == 0 {
		t.Fatalf("not renewed after expiry with the same TPM key: serial %s until %s", leaf.SerialNumber, leaf.NotAfter)
	}
}

// TestTPMLivenessRejectsRenewed is the liveness comparison with both sets'
// keys in the TPM: the CA moves to a root nginx does not trust yet, the
// renewed set (a new TPM key) is rejected where the installed one is
// accepted, so it is kept aside, never published; once nginx trusts the
// new root the set aside is proven again and published.
func TestTPMLivenessRejectsRenewed(t *testing.T) {
	t.Parallel()
	tp := swtpm.New(t)
	e := tpmEnv(t, tp, envOptions{viaService: true}, func(c *controlplane.NodeConfig) {
		c.Renew = &controlplane.RenewConfig{Fraction: 0.5, Splay: "0s"}
	})
	e.mustBootstrap()
	_, first := tpmKey(t, e, tp)
	e.renewRejectedByIngress()
	if _, leaf := tpmKey(t, e, tp); leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatal("the rejected certificate was published")
	}
	aside := e.record().Aside
	if aside == "" {
		t.Fatal("renew.json names no set kept aside")
	}
	e.trustCurrentRoots()
	if r := e.provision("renew"); r.code != 0 {
		t.Fatalf("renew once nginx trusts the new root: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
	if got := e.record().Generation; got != aside {
		t.Fatalf("published %s, want the set kept aside %s", got, aside)
	}
	tpmKey(t, e, tp)
}

// TestTPMClearedBetweenBootstrapAndRenew: the TPM is cleared after
// enrollment (firmware setup, an installer): the key is gone. renew says
// so (key-lost, re-enroll) and changes nothing; verify and status agree;
// with a fresh token, bootstrap enrolls a new key made in the cleared TPM.
func TestTPMClearedBetweenBootstrapAndRenew(t *testing.T) {
	t.Parallel()
	tp := swtpm.New(t)
	e := tpmEnv(t, tp, envOptions{}, nil)
	e.mustBootstrap()
	_, first := tpmKey(t, e, tp)
	tp.Clear()

	r := e.provision("renew", "--force")
	if r.code != layerExit["credentials"] || !strings.Contains(r.rep.Summary+r.rep.Remedy, "key-lost") && !strings.Contains(r.rep.Summary, "TPM was cleared") {
		t.Fatalf("renew with the TPM cleared: exit %d %s: %s / %s", r.code, r.rep.FailedLayer, r.rep.Summary, r.rep.Remedy)
	}
	if !strings.Contains(r.rep.Remedy, "fresh one-time token") {
		t.Errorf("renew's remedy does not name the way out: %s", r.rep.Remedy)
	}
	wantKeyStoreFail(t, e, "cleared")
	if s := e.provision("status"); s.code != 31 || !strings.Contains(s.stdout, "key-lost") {
		t.Fatalf("status with the TPM cleared: exit %d\n%s", s.code, s.stdout)
	}
	tok, err := e.cp.Token(nodeID)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.files.TokenPath, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := e.bootstrap(); r.code != 0 {
		t.Fatalf("bootstrap with a fresh token after the clear: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
	if _, leaf := tpmKey(t, e, tp); leaf.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("no new certificate after re-enrollment")
	}
	if v := e.verify(); v.code != 0 {
		t.Fatalf("verify after re-enrollment: exit %d: %s", v.code, v.rep.Summary)
	}
}

// TestTPMAnotherTPM: key.pem made by another machine's TPM (a disk moved,
// a copied image) does not load here: key-lost, named as such.
func TestTPMAnotherTPM(t *testing.T) {
	t.Parallel()
	tp := swtpm.New(t)
	e := tpmEnv(t, tp, envOptions{}, nil)
	e.mustBootstrap()
	other := swtpm.New(t, swtpm.Fresh())
	e.rewriteConfig(func(c *controlplane.NodeConfig) { c.Key = controlplane.TPMKey(other.Spec()) })
	wantKeyStoreFail(t, e, "another TPM")
}

// wantKeyStoreFail runs verify: it must fail in the credentials layer,
// its key-store check saying want.
func wantKeyStoreFail(t *testing.T, e *env, want string) {
	t.Helper()
	v := e.verify()
	st, msg, _ := findCheck(v, "key-store")
	if v.code != layerExit["credentials"] || st != "fail" || !strings.Contains(msg, want) {
		t.Fatalf("verify: exit %d, key-store %s %q, want a failure saying %q", v.code, st, msg, want)
	}
}

// TestTPMFailuresBeforeTheToken: no TPM where key.tpm points, a TPM device
// on a node without the tss group the units reach it as, a TPM this
// process may not open (root without capabilities, as in the units, and a
// device not in its group), and a TPM whose owner password is not given:
// each stops bootstrap at key-store, in the credentials layer, the node's,
// with the token unspent (the same token then enrolls). In dictionary-
// attack lockout the node key (noDA) works: bootstrap succeeds and verify
// shows the lockout.
func TestTPMFailuresBeforeTheToken(t *testing.T) {
	t.Parallel()
	tp := swtpm.New(t)
	e := tpmEnv(t, tp, envOptions{}, nil)
	tokenBefore, err := os.ReadFile(e.files.TokenPath)
	if err != nil {
		t.Fatal(err)
	}
	unspent := func(what string, r run, want string) {
		t.Helper()
		if r.code != layerExit["credentials"] || r.rep.FailedCheck != "key-store" || r.rep.Owner != "node" ||
			!strings.Contains(r.rep.Summary, want) || !strings.Contains(r.rep.Summary, "the one-time token is unspent") {
			t.Fatalf("%s: exit %d %s/%s owner %s: %s", what, r.code, r.rep.FailedLayer, r.rep.FailedCheck, r.rep.Owner, r.rep.Summary)
		}
		if b, err := os.ReadFile(e.files.TokenPath); err != nil || !bytes.Equal(b, tokenBefore) {
			t.Fatalf("%s: the token file changed: %v", what, err)
		}
		if _, err := os.Stat(filepath.Join(e.files.StateDir, "enroll-pending.json")); err == nil {
			t.Fatalf("%s: an enrollment marker was written", what)
		}
		t.Logf("%s: %s", what, r.rep.Summary)
	}

	e.rewriteConfig(func(c *controlplane.NodeConfig) { c.Key = controlplane.TPMKey("/nonexistent/tpmrm0") })
	unspent("no TPM", e.bootstrap(), "no TPM")

	dev := filepath.Join(t.TempDir(), "tpmrm0")
	if err := syscall.Mknod(dev, syscall.S_IFCHR|0o600, int(unixDev(1, 3))); err != nil {
		t.Fatalf("mknod: %v", err)
	}
	os.Chown(dev, 65534, 65534)
	e.rewriteConfig(func(c *controlplane.NodeConfig) { c.Key = controlplane.TPMKey(dev) })
	// The device is there, but no tss group (Debian's tpm-udev not
	// installed): the units, members of tss by the TPM drop-in, would not
	// even start (216/GROUP). Named before anything is spent.
	unspent("no tss group", e.bootstrap(), "no tss group")
	if err := os.MkdirAll(filepath.Join(e.root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.root, "etc", "group"), []byte("root:x:0:\ntss:x:109:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	unspent("no access", e.provisionUncapped("bootstrap"), "no access to the TPM")

	// Another program's wrong TPM passwords lock the TPM out (it does not
	// count a wrong owner password, so the lockout comes first here).
	tp.Lockout()
	tp.SetOwnerPassword("ownerpw")
	e.rewriteConfig(func(c *controlplane.NodeConfig) { c.Key = controlplane.TPMKey(tp.Spec()) })
	unspent("owner password not given", e.bootstrap(), "owner password")

	pw := filepath.Join(e.root, "etc", "provision", "tpm-owner")
	if err := os.WriteFile(pw, []byte("ownerpw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.rewriteConfig(func(c *controlplane.NodeConfig) { c.Key.OwnerAuthFile = "/etc/provision/tpm-owner" })
	r := e.bootstrap()
	if r.code != 0 {
		t.Fatalf("bootstrap in lockout with the owner password: exit %d %s: %s", r.code, r.rep.FailedLayer, r.rep.Summary)
	}
	tpmKey(t, e, tp)
	v := e.verify()
	if st, _, ev := findCheck(v, "key-store"); v.code != 0 || st != "pass" || ev["tpm_in_lockout"] != "true" || ev["tpm_owner_auth_set"] != "true" {
		t.Fatalf("verify in lockout: exit %d key-store %s %v", v.code, st, ev)
	}
	noPrivateKey(t, e.root, r.stdout, r.stderr, v.stdout)
}

func unixDev(major, minor uint32) uint64 {
	return uint64(major)<<8 | uint64(minor)
}

// provisionUncapped runs the binary as root without any capability, as
// provision's units run it (CapabilityBoundingSet=).
func (e *env) provisionUncapped(args ...string) run {
	e.t.Helper()
	setpriv := testenv.RequireProgram(e.t, "setpriv", "util-linux")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args = append([]string{"--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", provisionBin}, append(args, "--root", e.root, "--format", "json")...)
	cmd := exec.CommandContext(ctx, setpriv, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := run{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatal(err)
	}
	if err := json.Unmarshal(out.Bytes(), &r.rep); err != nil {
		e.t.Fatalf("provision (uncapped) %v: exit %d: %v\n%s\n%s", args, r.code, err, r.stdout, r.stderr)
	}
	return r
}

// TestTPMAgentPollsThroughNginx: a node-agent in another process
// (nodekey/examples/pollagent, built from the nodekey module) loads the
// TPM key.pem provision published and polls tasks/wait through nginx; a
// second connection resumes the session instead of asking the TPM for
// another signature. nginx is pinned to TLS 1.2, then to TLS 1.3 (nginx
// 1.22's default is 1.2 at most), so both handshakes sign in the TPM.
func TestTPMAgentPollsThroughNginx(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"1.2", "1.3"} {
		t.Run("TLS "+v, func(t *testing.T) {
			t.Parallel()
			agentPolls(t, v)
		})
	}
}

func agentPolls(t *testing.T, tlsVersion string) {
	tp := swtpm.New(t)
	e := tpmEnv(t, tp, envOptions{ingress: func(_ *env, o *ingress.Options) { o.MinTLS, o.MaxTLS = tlsVersion, tlsVersion }}, nil)
	e.mustBootstrap()
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "pollagent")
	build := exec.Command(testenv.GoTool(), "build", "-o", bin, ".")
	build.Dir = filepath.Join(root, "nodekey", "examples", "pollagent")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the agent: %v\n%s", err, out)
	}
	u, _ := url.Parse(e.cfg.NodeAPI.URL)
	wait := e.cfg.NodeAPI.URL + strings.Replace(controlplane.WaitPath, "{node_id}", nodeID, 1) + "?timeout=0"
	cmd := exec.Command(bin, "-cert", filepath.Join(e.files.PKIDir, "cert.pem"), "-key", filepath.Join(e.files.PKIDir, "key.pem"),
		"-ca", filepath.Join(e.files.PKIDir, "ca.pem"), "-tpm", tp.Spec(), "-url", wait, "-connect", "127.0.0.1:"+u.Port(), "-n", "4")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the agent: %v\n%s", err, out)
	}
	var polls []struct {
		Status     int    `json:"status"`
		TLS        string `json:"tls"`
		Resumed    bool   `json:"resumed"`
		Signatures int    `json:"signatures"`
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var p struct {
			Status     int    `json:"status"`
			TLS        string `json:"tls"`
			Resumed    bool   `json:"resumed"`
			Signatures int    `json:"signatures"`
		}
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("agent line %q: %v", l, err)
		}
		polls = append(polls, p)
	}
	if len(polls) != 4 {
		t.Fatalf("%d polls, want 4:\n%s", len(polls), out)
	}
	for i, p := range polls {
		if (p.Status != 200 && p.Status != 204) || p.TLS != "TLS "+tlsVersion {
			t.Errorf("poll %d: %+v", i+1, p)
		}
	}
	if !polls[2].Resumed || polls[3].Signatures != polls[0].Signatures {
		t.Errorf("a new connection did not resume the session (it cost another TPM signature): %+v", polls)
	}
	if polls[0].Signatures < 1 {
		t.Errorf("the first handshake made no signature with the TPM key: %+v", polls[0])
	}
	t.Logf("agent: %s", fmt.Sprint(polls))
}

// TestTPMKeyFileOpenSSL: the key.pem provision writes for a TPM key is the
// file the OpenSSL 3 tpm2 provider reads (what a non-Go node-agent uses):
// its public key is the certificate's, it signs a digest that verifies
// with the certificate, and it signs a CSR; all straight against the
// software TPM (TPM2OPENSSL_TCTI, the same swtpm: string). TLS through
// the provider needs a resource manager (docs/configuration.md).
func TestTPMKeyFileOpenSSL(t *testing.T) {
	t.Parallel()
	openssl := testenv.RequireProgram(t, "openssl", "openssl")
	tp := swtpm.New(t)
	list := exec.Command(openssl, "list", "-providers", "-provider", "tpm2")
	list.Env = append(os.Environ(), "TPM2OPENSSL_TCTI="+tp.TCTI())
	if out, err := list.CombinedOutput(); err != nil || !strings.Contains(string(out), "tpm2") {
		testenv.SkipOrFail(t, "!!! the OpenSSL tpm2 provider does not load (apt-get install -y tpm2-openssl; .ci/run does): %v %s !!!", err, out)
	}
	e := tpmEnv(t, tp, envOptions{}, nil)
	e.mustBootstrap()
	_, leaf := tpmKey(t, e, tp)
	dir := t.TempDir()
	key := filepath.Join(e.files.PKIDir, "key.pem")
	ossl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(openssl, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "TPM2OPENSSL_TCTI="+tp.TCTI())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	pub := ossl("pkey", "-provider", "tpm2", "-provider", "default", "-in", key, "-pubout")
	der, _ := x509.MarshalPKIXPublicKey(leaf.PublicKey)
	if want := string(pemBlock("PUBLIC KEY", der)); pub != want {
		t.Fatalf("openssl reads another public key from key.pem:\n%s\nwant\n%s", pub, want)
	}
	os.WriteFile(filepath.Join(dir, "dg.bin"), bytes.Repeat([]byte{7}, 32), 0o600)
	os.WriteFile(filepath.Join(dir, "cert.pem"), pemBlock("CERTIFICATE", leaf.Raw), 0o600)
	ossl("pkeyutl", "-provider", "tpm2", "-provider", "default", "-sign", "-inkey", key, "-in", "dg.bin", "-out", "sig.bin")
	if out := ossl("pkeyutl", "-verify", "-certin", "-inkey", "cert.pem", "-in", "dg.bin", "-sigfile", "sig.bin"); !strings.Contains(out, "Signature Verified Successfully") {
		t.Fatalf("the provider's signature does not verify with the certificate: %s", out)
	}
	ossl("req", "-new", "-provider", "tpm2", "-provider", "default", "-key", key, "-subj", "/CN="+nodeID, "-out", "node.csr")
	if out := ossl("req", "-in", "node.csr", "-noout", "-verify"); !strings.Contains(out, "verify OK") {
		t.Fatalf("the CSR the provider signed does not verify: %s", out)
	}
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
