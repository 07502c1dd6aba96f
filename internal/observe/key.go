package observe

import (
	"crypto"
	"fmt"
	"os"
	"strings"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/nodekey"
)

// The key store seam: everything that signs with the node's key gets a
// crypto.Signer, from credstore.Load (the installed key, with these
// options) or from NewKey (a new one); only here does the config say
// which TPM, and only nodekey talks to it.

// KeyOptions are how the node's TPM is reached for cfg on host: the TPM
// key.tpm names (the running machine's device, not re-rooted) and the owner
// password file (a path, re-rooted like every path). The host's crash
// points see each step of making or loading a TPM key.
func KeyOptions(cfg *config.Config, host *system.Host) []nodekey.Option {
	o := []nodekey.Option{nodekey.WithStep(host.Hook.At)}
	if cfg.Key.TPM != "" { // "" only in a config not read by config.Load: the default TPM
		o = append(o, nodekey.WithTPM(cfg.Key.TPM))
	}
	if cfg.Key.OwnerAuthFile != "" {
		o = append(o, nodekey.WithOwnerAuthFile(host.Path(cfg.Key.OwnerAuthFile)))
	}
	return o
}

// NewKey makes the node's next key in the store key.store names: inside
// the TPM, or a software key (nil: enroll's default).
func NewKey(cfg *config.Config, host *system.Host) func() (crypto.Signer, error) {
	if cfg.Key.Store != config.KeyStoreTPM {
		return nil
	}
	return func() (crypto.Signer, error) {
		return nodekey.CreateTPMKey(KeyOptions(cfg, host)...)
	}
}

// UsesTPM reports whether the run needs the TPM: the config makes keys
// there, or the installed key lives there.
func (e *Env) UsesTPM() bool {
	if e.Cfg.Key.Store == config.KeyStoreTPM {
		return true
	}
	set, err := e.Creds()
	return err == nil && set.KeyStore() == credstore.StoreTPM
}

// KeyState is what the run saw of the node's key store.
type KeyState struct {
	Store     string          // the config's key.store: where new keys are made
	Installed string          // the installed key's store ("" with no key loaded)
	TPM       *nodekey.Status // the TPM's status, when the run needs the TPM and it answered
	// TPMErr is why the TPM could not be used (reached, read, or its
	// storage key derived): nil when it was not needed or worked.
	TPMErr error
	// Signed is set when the installed key signed a test digest that
	// verified with its public key; SignErr says why it did not. Whether
	// that key is the certificate's is the verdict's (key-mismatch).
	Signed  bool
	SignErr error
}

// KeyLost reports whether the installed key no longer loads in the TPM
// (cleared since, or key.pem from another TPM): it is gone for good.
func (k KeyState) KeyLost() bool { return nodekey.KindOf(k.SignErr) == nodekey.KeyLost }

// Key observes the key store once: the TPM's status when the run needs
// the TPM (and that its storage key can be derived, when new keys are made
// there), and whether the installed key signs now.
func (e *Env) Key() KeyState {
	e.keyOnce.Do(func() {
		k := KeyState{Store: e.Cfg.Key.Store}
		set, err := e.Creds()
		if err == nil {
			k.Installed = set.KeyStore()
		}
		opts := KeyOptions(e.Cfg, e.Host)
		if e.UsesTPM() {
			st, err := nodekey.Status{}, e.tpmGroup()
			if err == nil {
				st, err = nodekey.Probe(opts...)
			}
			if err == nil {
				k.TPM = &st
				if e.Cfg.Key.Store == config.KeyStoreTPM {
					err = nodekey.CheckStorageKey(opts...)
				}
			}
			k.TPMErr = err
		}
		if set != nil {
			k.SignErr = nodekey.CheckSigns(set.Key)
			k.Signed = k.SignErr == nil
		}
		e.key = k
	})
	return e.key
}

// tpmGroup fails when key.store = "tpm" makes keys in a TPM device that is
// there, and the node has no diag.TPMGroup: the units reach the device as
// a member of it (the TPM drop-in) and would not start without it, which
// no run of provision could report. A software TPM's socket needs none.
func (e *Env) tpmGroup() error {
	dev := e.Cfg.Key.TPM
	if e.Cfg.Key.Store != config.KeyStoreTPM || !strings.HasPrefix(dev, "/") {
		return nil
	}
	if _, err := os.Stat(dev); err != nil {
		return nil // no device: the probe names that
	}
	if _, err := e.Host.LookupGroup(diag.TPMGroup); err != nil {
		return fmt.Errorf("%w (%v)", diag.ErrNoTPMGroup, err)
	}
	return nil
}
