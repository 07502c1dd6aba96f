package diag

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/nodekey"
)

// TestFromKeyStore: each kind of TPM failure is one finding in the
// credentials layer, the node's, whose summary names what failed first
// and says what was not done, and whose remedy names the fix (through an
// enroll.Error of kind KeyFailed too, as a sign or renewal returns it).
func TestFromKeyStore(t *testing.T) {
	for _, tc := range []struct {
		kind           nodekey.Kind
		summary, fixed string
	}{
		{nodekey.NoDevice, "no TPM: ", "DeviceAllow=/dev/tpmrm0 rw"},
		{nodekey.NoAccess, "no access to the TPM: ", "SupplementaryGroups=tss"},
		{nodekey.Lockout, "dictionary-attack lockout: ", "tpm2_dictionarylockout --clear-lockout"},
		{nodekey.OwnerAuth, "owner password is needed: ", "key.owner_auth_file"},
		{nodekey.BadKeyFile, "the node's key store failed", "fresh one-time token"},
		{nodekey.Failed, "the node's key store failed", "tpm2_getcap"},
	} {
		err := &nodekey.Error{Kind: tc.kind, Op: "open", TPM: "/dev/tpmrm0", Err: errors.New("x")}
		for _, e := range []error{err, &enroll.Error{Kind: enroll.KeyFailed, Op: "sign", Err: fmt.Errorf("making the node's new key: %w", err), NotSent: true}} {
			f := FromKeyStore(e, "the one-time token is unspent")
			if f.Layer != Credentials || f.Owner != Node || f.Check != KeyStoreCheck || f.Transient {
				t.Errorf("%s: %+v", tc.kind, f)
			}
			if !strings.Contains(f.Summary, tc.summary) || !strings.HasSuffix(f.Summary, "; the one-time token is unspent") || !strings.Contains(f.Remedy, tc.fixed) {
				t.Errorf("%s: summary %q remedy %q", tc.kind, f.Summary, f.Remedy)
			}
			if f.Evidence["key_store_error"] != string(tc.kind) {
				t.Errorf("%s: evidence %v", tc.kind, f.Evidence)
			}
		}
	}
}

// TestFromKeyStoreNoTPMGroup: a node without the tss group is named as
// such, with the package that creates it and what the units do without
// it, not as a TPM failure of unknown kind.
func TestFromKeyStoreNoTPMGroup(t *testing.T) {
	f := FromKeyStore(fmt.Errorf("%w (no group %q in /etc/group)", ErrNoTPMGroup, TPMGroup), "the one-time token is unspent")
	if f.Layer != Credentials || f.Owner != Node || f.Transient || !strings.HasPrefix(f.Summary, "no tss group: ") ||
		!strings.HasSuffix(f.Summary, "; the one-time token is unspent") || !strings.Contains(f.Remedy, "tpm-udev") ||
		!strings.Contains(f.Remedy, "216/GROUP") || f.Evidence["key_store_error"] != "tpm-group" {
		t.Fatalf("%+v", f)
	}
}
