package pipeline

import (
	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/observe"
)

// KeyStoreStep checks the node's key store before anything is spent.
var KeyStoreStep = Step{Name: diag.KeyStoreCheck, Do: KeyStore, Reads: []Stage{StageJudged}}

// KeyStore names a key store that cannot do what the plan needs, before
// the one-time token is sent or a renewal requested: the TPM that must
// make the new key (key.store = "tpm", for an enrollment or a rekeying
// renewal, an exposed key's included: makesKey) must be reachable and
// derive its storage key, and the installed
// key, when the plan uses it (to renew, or to be proven and kept), must
// sign. A key its TPM no longer accepts (cleared, or another TPM's) is not
// this step's: the verdict says re-enroll (key-lost), and the plan follows.
// Nothing is checked when no TPM is involved: a software key is checked by
// the verdict (it matches its certificate) and signs in memory.
func KeyStore(r *Run) *diag.Finding {
	if !r.Env.UsesTPM() {
		return nil
	}
	j := r.Judged()
	k := r.Env.Key()
	notDone := "nothing was sent to the CA"
	if r.Command == "bootstrap" {
		notDone = "nothing was sent to the CA and the one-time token is unspent"
	}
	makes := makesKey(r.Cfg, j)
	uses := j.Current != nil && j.Plan != Enroll && !k.KeyLost()
	switch {
	case k.TPMErr != nil && (makes || uses):
		return diag.FromKeyStore(k.TPMErr, notDone)
	case uses && !k.Signed:
		return diag.FromKeyStore(k.SignErr, notDone)
	}
	r.Log.Info("step", "step", diag.KeyStoreCheck, "layer", "credentials", "status", "ok", "store", k.Store, "installed", k.Installed, "tpm", tpmStatus(k))
	return nil
}

// makesKey reports whether j's plan makes a new key in the TPM: an
// enrollment, a renewal with renew.rekey, or any renewal of an exposed key
// (rekeyed whatever renew.rekey says; after expiry, renewed then rekeyed
// at once), so the TPM is found unusable before the CA is asked.
func makesKey(cfg *config.Config, j *Judged) bool {
	if cfg.Key.Store != config.KeyStoreTPM {
		return false
	}
	renews := j.Plan == Renew || j.Plan == RenewExpired
	return j.Plan == Enroll || (j.Plan == Renew && cfg.Renew.Rekey) || (renews && j.KeyExposed())
}

// tpmStatus is the TPM's status for a log line ("" without one).
func tpmStatus(k observe.KeyState) string {
	if k.TPM == nil {
		return ""
	}
	return k.TPM.String()
}
