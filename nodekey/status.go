package nodekey

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Status is what a TPM says about itself: who made it, whether its owner
// hierarchy has a password, and its dictionary-attack state.
type Status struct {
	TPM          string // as named
	Manufacturer string // the vendor's four-letter code ("IBM", "INTC", "STM", "NTC"...)
	OwnerAuthSet bool   // the owner hierarchy has a password
	InLockout    bool   // dictionary-attack lockout: keys without noDA are refused
	// LockoutCounter counts failed authorizations toward MaxAuthFail;
	// LockoutInterval is how many seconds forgive one.
	LockoutCounter, MaxAuthFail, LockoutInterval uint32
}

func (s Status) String() string {
	lock := "not in dictionary-attack lockout"
	if s.InLockout {
		lock = fmt.Sprintf("IN dictionary-attack lockout (%d of %d failures, one forgiven every %ds)", s.LockoutCounter, s.MaxAuthFail, s.LockoutInterval)
	}
	owner := "no owner password"
	if s.OwnerAuthSet {
		owner = "an owner password set"
	}
	return fmt.Sprintf("TPM 2.0 by %s at %s, %s, %s", s.Manufacturer, s.TPM, owner, lock)
}

// Probe opens the TPM and reads its status. It changes nothing in it.
func Probe(opts ...Option) (Status, error) {
	o, err := newOptions(opts)
	if err != nil {
		return Status{}, err
	}
	signMu.Lock()
	defer signMu.Unlock()
	t, err := open(o.spec)
	if err != nil {
		return Status{}, err
	}
	defer t.Close()
	st := Status{TPM: o.spec.String()}
	props, err := properties(t, tpm2.TPMPTManufacturer, 1)
	if err != nil {
		return st, classify(opStatus, o.spec, err)
	}
	if v, ok := props[tpm2.TPMPTManufacturer]; ok {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], v)
		st.Manufacturer = strings.TrimRight(string(b[:]), "\x00 ")
	}
	props, err = properties(t, tpm2.TPMPTPermanent, 0x11)
	if err != nil {
		return st, classify(opStatus, o.spec, err)
	}
	perm := props[tpm2.TPMPTPermanent]
	st.OwnerAuthSet = perm&1 != 0
	st.InLockout = perm&(1<<9) != 0
	st.LockoutCounter, st.MaxAuthFail, st.LockoutInterval = props[tpm2.TPMPTLockoutCounter], props[tpm2.TPMPTMaxAuthFail], props[tpm2.TPMPTLockoutInterval]
	return st, nil
}

// CheckStorageKey derives the storage key once and flushes it: proof that
// keys can be made and loaded (the TPM answers, and the owner password,
// if one is set, is the one given).
func CheckStorageKey(opts ...Option) error {
	o, err := newOptions(opts)
	if err != nil {
		return err
	}
	signMu.Lock()
	defer signMu.Unlock()
	t, err := open(o.spec)
	if err != nil {
		return err
	}
	defer t.Close()
	srk, _, err := o.storageKey(t)
	if err != nil {
		return err
	}
	flush(t, srk.Handle)
	return nil
}

func properties(t transport.TPM, first tpm2.TPMPT, n uint32) (map[tpm2.TPMPT]uint32, error) {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(first), PropertyCount: n}.Execute(t)
	if err != nil {
		return nil, err
	}
	l, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return nil, err
	}
	m := map[tpm2.TPMPT]uint32{}
	for _, p := range l.TPMProperty {
		m[p.Property] = p.Value
	}
	return m, nil
}
