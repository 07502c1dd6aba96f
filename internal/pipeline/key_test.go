package pipeline

import (
	"testing"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/lifecycle"
)

// TestMakesKey: the key-store step must find the TPM usable before any
// plan that makes a new key there: an enrollment, a renewal with
// renew.rekey, and a renewal of an exposed key, which rekeys whatever
// renew.rekey says (after expiry too: renewed, then rekeyed at once), so
// an exposed, expired file key is not renewed at the CA first and only
// then found unable to rekey. A file store makes no key in a TPM.
func TestMakesKey(t *testing.T) {
	for _, tc := range []struct {
		store   string
		plan    Plan
		rekey   bool
		exposed lifecycle.Reason
		want    bool
	}{
		{config.KeyStoreTPM, Enroll, false, "", true},
		{config.KeyStoreTPM, Renew, true, "", true},
		{config.KeyStoreTPM, Renew, false, "", false},
		{config.KeyStoreTPM, Renew, false, lifecycle.KeyExposed, true},
		{config.KeyStoreTPM, Renew, false, lifecycle.KeyWasExposed, true},
		{config.KeyStoreTPM, RenewExpired, false, "", false},
		{config.KeyStoreTPM, RenewExpired, true, "", false},
		{config.KeyStoreTPM, RenewExpired, false, lifecycle.KeyExposed, true},
		{config.KeyStoreTPM, Keep, false, lifecycle.KeyExposed, false},
		{config.KeyStoreTPM, Refresh, true, "", false},
		{config.KeyStoreTPM, Adopt, true, lifecycle.KeyExposed, false},
		{config.KeyStoreFile, Enroll, true, lifecycle.KeyExposed, false},
		{config.KeyStoreFile, RenewExpired, false, lifecycle.KeyExposed, false},
	} {
		cfg := &config.Config{}
		cfg.Key.Store, cfg.Renew.Rekey = tc.store, tc.rekey
		j := &Judged{Plan: tc.plan}
		if tc.exposed != "" {
			j.Verdict.Reasons = []lifecycle.Reason{tc.exposed}
		}
		if got := makesKey(cfg, j); got != tc.want {
			t.Errorf("store %s, plan %s, rekey %v, %q: makesKey = %v, want %v", tc.store, tc.plan, tc.rekey, tc.exposed, got, tc.want)
		}
	}
}
