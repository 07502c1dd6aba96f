package diag

import (
	"errors"

	"github.com/gpuaas/provision/deploy/systemd"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/nodekey"
)

// KeyStoreCheck is the check (and step) name of the node's key store.
const KeyStoreCheck = "key-store"

// RemedyKeyElsewhere is the remedy of an installed key that is not where
// key.store keeps keys.
const RemedyKeyElsewhere = "the next new key is made in key.store: run provision renew --force (with renew.rekey, the default), or provision bootstrap with a fresh one-time token"

// TPMDropIn is where the units' TPM access is documented.
const TPMDropIn = "the TPM drop-in of docs/configuration.md (PrivateDevices=no, DevicePolicy=closed, DeviceAllow=/dev/tpmrm0 rw, SupplementaryGroups=tss), which provision userdata writes when key.store = \"tpm\""

// TPMGroup is the group provision's units reach the TPM's device as (the
// TPM drop-in's SupplementaryGroups=): Debian's tpm-udev package creates it
// and makes /dev/tpmrm0 tss:tss 0660.
const TPMGroup = systemd.TPMGroup

// ErrNoTPMGroup: key.tpm names a device, and the node has no TPMGroup, so
// provision's units, members of it by the TPM drop-in, would not start.
var ErrNoTPMGroup = errors.New("the " + TPMGroup + " group does not exist on this node, and provision's units reach the TPM as a member of it")

// FromKeyStore words a failure of the node's key store (its TPM), in the
// credentials layer, the node's to fix. notDone says what the run did not
// do because of it ("the one-time token was not sent").
func FromKeyStore(err error, notDone string) *Finding {
	var ee *enroll.Error
	if errors.As(err, &ee) && ee.Kind == enroll.KeyFailed {
		err = ee.Err
	}
	f := &Finding{Layer: Credentials, Owner: Node, Check: KeyStoreCheck, Summary: "the node's key store failed: " + err.Error()}
	if notDone != "" {
		f.Summary += "; " + notDone
	}
	f.add("key_store_error", string(nodekey.KindOf(err)))
	if errors.Is(err, ErrNoTPMGroup) {
		f.Summary = "no " + TPMGroup + " group: " + f.Summary
		f.add("key_store_error", "tpm-group")
		f.Remedy = "install Debian's tpm-udev package (provision's package recommends it): it creates the " + TPMGroup + " group and makes /dev/tpmrm0 tss:tss 0660; without the group the units, members of it by " + TPMDropIn + ", fail to start (status 216/GROUP); then systemctl daemon-reload and run again"
		return f
	}
	switch nodekey.KindOf(err) {
	case nodekey.NoDevice:
		f.Summary = "no TPM: " + f.Summary
		f.Remedy = "check the machine has a TPM 2.0 enabled in its firmware (ls -l /dev/tpmrm0) and that key.tpm names it; provision's units see it only with " + TPMDropIn + "; a machine without a TPM keeps key.store = \"file\""
	case nodekey.NoAccess:
		f.Summary = "no access to the TPM: " + f.Summary
		f.Remedy = "/dev/tpmrm0 is tss:tss 0660 (Debian's tpm-udev rules) and provision's units run without capabilities: install " + TPMDropIn + ", then systemctl daemon-reload and run again"
	case nodekey.Lockout:
		f.Summary = "the TPM is in dictionary-attack lockout: " + f.Summary
		f.Remedy = "this key.pem is subject to lockout (the keys provision makes are not: it was made elsewhere); wait out the lockout (tpm2_getcap properties-variable: TPM2_PT_LOCKOUT_INTERVAL per forgiven failure) or clear it with the lockout password (tpm2_dictionarylockout --clear-lockout), find what is trying wrong TPM passwords, then run again"
	case nodekey.OwnerAuth:
		f.Summary = "the TPM's owner password is needed: " + f.Summary
		f.Remedy = "the TPM's owner hierarchy has a password (tpm2_getcap properties-variable: ownerAuthSet 1): write it to a root-only file and name that file in key.owner_auth_file (or correct the one there), then run again"
	case nodekey.BadKeyFile:
		f.Remedy = "key.pem is not a key provision can use; re-enroll: write a fresh one-time token for this node_id and run provision bootstrap"
	default:
		f.Remedy = "check the TPM (tpm2_getcap properties-variable, and the kernel log for TPM errors), then run again; with a TPM that keeps failing, set key.store = \"file\" and re-enroll"
	}
	return f
}
