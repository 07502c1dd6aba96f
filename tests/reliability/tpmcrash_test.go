package reliability

import (
	"crypto/ecdsa"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/renew"
	"github.com/gpuaas/provision/nodekey"
	"github.com/gpuaas/provision/nodekey/swtpm"
	"github.com/gpuaas/provision/tests/controlplane"
)

// tpmCreds checks the node's credentials when the key lives in the TPM:
// through "current" and through the stable links the node-agent opens
// (with nodekey, as an agent would), the key is the certificate's, and it
// signs in the TPM now. It returns the serial, or "" with no credentials.
func tpmCreds(t *testing.T, pki string, tp *swtpm.TPM) (serial, problem string) {
	t.Helper()
	set, err := credstore.Load(pki, nodekey.WithTPM(tp.Spec()))
	switch {
	case err != nil && strings.Contains(err.Error(), credstore.ErrNotFound.Error()):
		if _, err := os.Lstat(filepath.Join(pki, credstore.KeyFile)); err == nil {
			return "", "key.pem resolves without a current set"
		}
		return "", ""
	case err != nil:
		return "", "current set unreadable: " + err.Error()
	case !set.KeyMatches() || set.KeyStore() != credstore.StoreTPM:
		return "", "the current key is not the certificate's TPM key"
	}
	if err := nodekey.CheckSigns(set.Key); err != nil {
		return "", "the current key does not sign in the TPM: " + err.Error()
	}
	pair, err := nodekey.LoadX509KeyPair(filepath.Join(pki, credstore.CertFile), filepath.Join(pki, credstore.KeyFile), nodekey.WithTPM(tp.Spec()))
	switch {
	case err != nil && os.IsNotExist(err):
		return set.Leaf().SerialNumber.String(), "" // first install: current switched, stable links not yet made
	case err != nil:
		return "", "the stable key.pem and cert.pem do not load as a pair: " + err.Error()
	case pair.Leaf.SerialNumber.Cmp(set.Leaf().SerialNumber) != 0:
		return "", "the stable links name another set than current"
	}
	if !pair.PrivateKey.(*nodekey.TPMKey).Public().(*ecdsa.PublicKey).Equal(set.Key.Public()) {
		return "", "the stable key.pem is not current's"
	}
	return set.Leaf().SerialNumber.String(), ""
}

// TestTPMCrashConsistency SIGKILLs bootstrap and renew with the key in a
// software TPM at every step of making the key (the storage key derived,
// the key created, the key loaded to sign) and of writing and publishing
// the set. After each kill: the TPM's transient objects are flushed (what
// /dev/tpmrm0 does when a killed process's file closes; swtpm has no
// resource manager), the credentials are whole (none, or a TPM key that is
// its certificate's and signs), and until "published" a renewal leaves the
// old serial current; then the next run completes (a burnt token replaced,
// as named), and nothing is left in the TPM's persistent memory.
func TestTPMCrashConsistency(t *testing.T) {
	tp := swtpm.New(t)
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, "gpu-tpm-crash", func(c *controlplane.NodeConfig) {
		c.NodeAPI.WaitTimeout = "0s"
		c.Key = controlplane.TPMKey(tp.Spec())
	})
	pki := n.Files.PKIDir
	kills, violations := 0, 0
	fail := func(format string, a ...any) {
		t.Helper()
		violations++
		t.Errorf(format, a...)
	}
	afterKill := func(label, before string, mustBeOld bool) {
		t.Helper()
		tp.FlushTransient()
		serial, problem := tpmCreds(t, pki, tp)
		switch {
		case problem != "":
			fail("%s: %s", label, problem)
		case mustBeOld && serial != before:
			fail("%s: serial %q current before the new set was published (old %q)", label, serial, before)
		}
	}
	complete := func(label, cmd string) {
		t.Helper()
		r := n.run(nil, cmd)
		if r.Code == 20 && strings.Contains(r.Stdout, "burnt") {
			n.GiveToken()
			r = n.run(nil, cmd)
		}
		if r.Code != 0 {
			fail("%s: the next %s did not complete: exit %d\n%s", label, cmd, r.Code, r.LastOutputLine())
			return
		}
		if serial, problem := tpmCreds(t, pki, tp); serial == "" || problem != "" {
			fail("%s: after the completed %s: serial %q, %s", label, cmd, serial, problem)
		}
	}

	// Enrollment on a fresh node: the key is made in the TPM before the
	// CSR is signed and the token sent.
	enrollPoints := []string{"tpm storage key", "tpm key created", "before sign", "after sign",
		"wrote key.pem", "wrote cert.pem", "wrote ca.pem", "generation ready", "current switched"}
	for _, p := range enrollPoints {
		os.RemoveAll(pki)
		os.Remove(filepath.Join(n.Files.StateDir, "receipt.json"))
		n.GiveToken()
		if r := n.run([]string{"PROVISION_CRASH_AT=" + p}, "bootstrap"); !r.Killed {
			fail("bootstrap: not killed at %q (exit %d): %s", p, r.Code, r.LastOutputLine())
			continue
		}
		kills++
		afterKill("bootstrap, step "+p, "", false)
		complete("bootstrap, step "+p, "bootstrap")
	}

	// A rekeying renewal: the current key signs the handshake in the TPM,
	// a new key is made there, the new set written aside and published.
	renewPoints := append([]string{"tpm storage key", "tpm key loaded", "tpm key created",
		"wrote key.pem", "wrote cert.pem", "wrote ca.pem", "generation ready", "current switched"}, renew.CrashPoints...)
	published := map[string]bool{"current switched": true, "published": true, "hook pending": true, "recorded": true}
	for _, p := range renewPoints {
		if p == "hook pending" {
			continue // no renew.post_hook here: TestRenewCrashConsistency kills there
		}
		before, _ := tpmCreds(t, pki, tp)
		if r := n.run([]string{"PROVISION_CRASH_AT=" + p}, "renew", "--force"); !r.Killed {
			fail("renew: not killed at %q (exit %d): %s", p, r.Code, r.LastOutputLine())
			continue
		}
		kills++
		afterKill("renew, step "+p, before, !published[p])
		if r := n.run(nil, "verify"); r.Code != 0 {
			fail("renew, step %s: verify after the kill: exit %d\n%s", p, r.Code, r.LastOutputLine())
		}
		complete("renew, step "+p, "renew")
	}
	if out := tp.Tool("tpm2_getcap", "handles-persistent"); strings.Contains(out, "0x81000") {
		fail("a persistent storage key was left in the TPM: %s", out)
	}
	t.Logf("tpm-crash: %d kills at the steps of making, using and publishing a TPM key, %d violations", kills, violations)
}
