package nodekey

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Kind says what went wrong with the TPM, and so what to do about it.
type Kind string

// The kinds of TPM failure.
const (
	// NoDevice: no TPM where one was named (no device node, no socket
	// listening). On a node: the machine has no TPM 2.0, it is disabled
	// in the firmware, or a systemd unit with PrivateDevices=yes hides it.
	NoDevice Kind = "tpm-missing"
	// NoAccess: the TPM is there but this process may not open it (the
	// device is tss:tss 0660 and an uncapable root needs the tss group;
	// a unit needs DeviceAllow=/dev/tpmrm0 rw).
	NoAccess Kind = "tpm-access"
	// Lockout: the TPM is in dictionary-attack lockout and refuses a key
	// that is subject to it (the keys provision makes are not).
	Lockout Kind = "tpm-lockout"
	// OwnerAuth: the storage key could not be derived because the owner
	// hierarchy has a password that was not given, or was wrong.
	OwnerAuth Kind = "tpm-owner-auth"
	// KeyLost: the TPM does not accept key.pem's wrapped key: the TPM was
	// cleared since the key was made (its owner seed changed), or key.pem
	// was made by another TPM. The key is gone for good.
	KeyLost Kind = "key-lost"
	// BadKeyFile: key.pem is not a key this package can use.
	BadKeyFile Kind = "key-file"
	// Failed: anything else the TPM answered or the way to it did.
	Failed Kind = "tpm-failed"
)

// Error is a failure to make or use a TPM key.
type Error struct {
	Kind Kind
	Op   string // what was being done: "open", "storage key", "load", "sign", "create"
	TPM  string // the TPM, as named (a device path or a swtpm: socket)
	Err  error
}

func (e *Error) Error() string {
	where := ""
	if e.TPM != "" {
		where = " (" + e.TPM + ")"
	}
	return fmt.Sprintf("TPM%s: %s: %s: %v", where, e.Op, e.Kind.describe(), e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

func (k Kind) describe() string {
	switch k {
	case NoDevice:
		return "no TPM there"
	case NoAccess:
		return "no access to the TPM"
	case Lockout:
		return "the TPM is in dictionary-attack lockout"
	case OwnerAuth:
		return "the TPM's owner password is needed or wrong"
	case KeyLost:
		return "the TPM does not accept the key (cleared since the key was made, or another TPM made it)"
	case BadKeyFile:
		return "not a usable key file"
	}
	return "the TPM failed"
}

// KindOf returns the Kind of a failure this package returned ("" when err
// is not one).
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return ""
}

// classify wraps what the TPM answered to op into an *Error.
func classify(op string, s Spec, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	kind := Failed
	switch {
	case errors.Is(err, tpm2.TPMRCLockout):
		kind = Lockout
	case op == opSRK && (errors.Is(err, tpm2.TPMRCBadAuth) || errors.Is(err, tpm2.TPMRCAuthFail)):
		kind = OwnerAuth
	case op == opLoad && (errors.Is(err, tpm2.TPMRCIntegrity) || errors.Is(err, tpm2.TPMRCSize) ||
		errors.Is(err, tpm2.TPMRCValue) || errors.Is(err, tpm2.TPMRCAsymmetric) || errors.Is(err, tpm2.TPMRCHandle)):
		// The wrapped key's integrity is checked with a key derived from
		// the parent, whose seed a TPM clear changes; another TPM has
		// another seed altogether.
		kind = KeyLost
	}
	return &Error{Kind: kind, Op: op, TPM: s.String(), Err: err}
}

// The operations, as errors name them.
const (
	opOpen   = "open"
	opSRK    = "storage key"
	opLoad   = "load"
	opSign   = "sign"
	opCreate = "create"
	opStatus = "status"
)
