package verify

import (
	"context"
	"fmt"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/report"
)

// checkKeyStore shows where the key is and proves it signs: the
// installed key signs a random digest (in the TPM, for a TPM key) that
// verifies with its public key (the credentials check says whether that
// is the certificate's); with key.store = "tpm" the
// TPM must answer and derive its storage key, so that the next key can be
// made there. A key its TPM no longer accepts is the verdict's key-lost
// (re-enroll), worded the same here.
func checkKeyStore(_ context.Context, e *observe.Env) Answer {
	k := e.Key()
	ev := map[string]string{"store": k.Store, "installed": k.Installed}
	if e.UsesTPM() {
		ev["tpm"] = e.Cfg.Key.TPM
	}
	if k.TPM != nil {
		ev["tpm_status"] = k.TPM.String()
		ev["tpm_manufacturer"] = k.TPM.Manufacturer
		ev["tpm_in_lockout"] = fmt.Sprint(k.TPM.InLockout)
		ev["tpm_owner_auth_set"] = fmt.Sprint(k.TPM.OwnerAuthSet)
	}
	switch {
	case k.KeyLost():
		return Answer{Status: report.Fail, Evidence: ev, Message: fmt.Sprintf("%s: key.pem's key is lost: %v", e.Cfg.Paths.PKIDir, k.SignErr), Remedy: lifecycle.Remedy(lifecycle.KeyLost, e.Cfg)}
	case k.TPMErr != nil && (e.Cfg.Key.Store == config.KeyStoreTPM || k.Installed == config.KeyStoreTPM):
		return keyStoreFail(diag.FromKeyStore(k.TPMErr, ""), ev)
	case k.Installed != "" && !k.Signed:
		return keyStoreFail(diag.FromKeyStore(k.SignErr, ""), ev)
	}
	where := "a software key in key.pem"
	if k.Installed == config.KeyStoreTPM {
		where = "a key inside the TPM (key.pem holds its wrapped form)"
	}
	msg := fmt.Sprintf("key.store %q; the installed key is %s and signed a test digest that verified with its public key", k.Store, where)
	if k.Installed == "" {
		msg = fmt.Sprintf("key.store %q; no key installed yet, so none to prove (the credentials check says why)", k.Store)
	}
	if k.TPM != nil {
		msg += "; " + k.TPM.String()
	}
	if k.Installed != "" && k.Installed != k.Store {
		return Answer{Status: report.Warn, Evidence: ev, Message: msg + fmt.Sprintf("; but key.store is %q, so the key is not where the config keeps keys", k.Store),
			Remedy: diag.RemedyKeyElsewhere}
	}
	return Answer{Status: report.Pass, Evidence: ev, Message: msg}
}

func keyStoreFail(f *diag.Finding, ev map[string]string) Answer {
	a := fromFinding(f)
	for k, v := range ev {
		if a.Evidence == nil {
			a.Evidence = map[string]string{}
		}
		a.Evidence[k] = v
	}
	return a
}
