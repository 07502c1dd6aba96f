package state

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/gpuaas/provision/internal/system"
)

// RenewalFile is the renew record's name under state_dir.
const RenewalFile = "renew.json"

// Results of an attempt. They are an interface: runbooks and scripts key
// on them.
const (
	NotDue     = "not-due"     // nothing to do: before the renewal point (plus splay)
	Renewed    = "renewed"     // a new certificate was proven and published
	Refreshed  = "refreshed"   // only ca.pem changed (the CA's roots moved), proven and published
	Failed     = "failed"      // the attempt failed; the old set stays current
	Reenroll   = "re-enroll"   // the certificate cannot be renewed: a fresh token is needed
	RevokedRes = "revoked"     // the CA's revocation list names the certificate
	HookFailed = "hook-failed" // renewed and published, but renew.post_hook failed
	// Refused: the CA, or something in front of it, answered 401/403 to the
	// renewal, with no evidence of revocation; the next run asks again.
	Refused = "refused"
	// Unproven: a renewed set was published without a passing proof, under
	// the liveness rule (a fault the installed set shares); see Unproven.
	Unproven = "published-unproven"
	// Enrolled: bootstrap enrolled with a one-time token and published the set.
	Enrolled = "enrolled"
)

// Renewal is the renew record, state_dir/renew.json: what the last
// renewal attempt found and did. Field names are an interface.
type Renewal struct {
	// SchemaVersion is state.SchemaVersion when written.
	SchemaVersion int `json:"schema_version"`

	NodeID      string    `json:"node_id"`
	Serial      string    `json:"serial"`       // the current certificate after the attempt
	NotAfter    time.Time `json:"not_after"`    // its expiry
	RenewAfter  time.Time `json:"renew_after"`  // its renewal point (fraction of the lifetime)
	DueAt       time.Time `json:"due_at"`       // renewal point plus this node's splay
	LastAttempt time.Time `json:"last_attempt"` // when renew last ran
	LastResult  string    `json:"last_result"`  // one of the results above
	LastError   string    `json:"last_error,omitempty"`
	FailedLayer string    `json:"failed_layer,omitempty"`
	// LastRenewed is when a renewal was last published, and the serial it
	// replaced.
	LastRenewed    time.Time `json:"last_renewed,omitzero"`
	PreviousSerial string    `json:"previous_serial,omitempty"`
	// RevokedSerial is a serial found revoked with evidence (the CA's
	// signed revocation list), which RevocationEvidence quotes. A refusal
	// without evidence is never recorded here.
	RevokedSerial      string `json:"revoked_serial,omitempty"`
	RevocationEvidence string `json:"revocation_evidence,omitempty"`
	// StaleSerial is a serial the last run found stale against the CA's
	// current roots, fetched over a verified connection: renew --check,
	// offline, says so for the same certificate.
	StaleSerial string `json:"stale_serial,omitempty"`
	Rekeyed     bool   `json:"rekeyed,omitempty"`
	Generation  string `json:"generation,omitempty"` // the generation directory proven (or kept aside)
	Hook        string `json:"hook,omitempty"`       // the post_hook's last outcome
	// HookPending is set while renew.post_hook has not succeeded since the
	// credentials last changed: every later run (renew and bootstrap) runs
	// it again until it does.
	HookPending bool `json:"hook_pending,omitempty"`
	// Failures counts attempts in a row that did not end well (reset by a
	// renewal, a not-due run or a refresh); Refusals counts 401/403 answers
	// in a row without evidence of revocation.
	Failures int `json:"consecutive_failures,omitempty"`
	Refusals int `json:"consecutive_refusals,omitempty"`
	// Unproven says why the current set was published without a passing
	// proof (the liveness rule), "" when it polled.
	Unproven string `json:"unproven,omitempty"`
	// Aside names a generation holding a renewed certificate that was not
	// published (its proof failed where the installed set's did not, or a
	// fault both share); the next run proves it again.
	Aside   string `json:"aside,omitempty"`
	Version string `json:"version,omitempty"`
}

// MaxRenewalSize bounds the record: a real one is well under 2 KiB (its
// longest field is a one-line error).
const MaxRenewalSize = 256 << 10

// LoadRenewal reads the renew record: nil and no error when there is none.
// It is opened as a regular file, without following a link or blocking on
// a FIFO, and read within MaxRenewalSize; anything else at its path is
// refused with an error naming it (a *system.UnsafeFileError for a link,
// FIFO, device or directory); one that does not parse is a *DamagedError.
func LoadRenewal(stateDir string) (*Renewal, error) {
	path := filepath.Join(stateDir, RenewalFile)
	b, err := system.ReadRegular(context.Background(), path, MaxRenewalSize)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r Renewal
	if err := decodeRecord(path, b, &r); err != nil {
		return nil, err // a *DamagedError: see KeepDamaged
	}
	return &r, nil
}

// ReadRenewal is LoadRenewal for callers that only want the record: nil
// when there is none, or it is refused or does not parse.
func ReadRenewal(stateDir string) *Renewal {
	r, err := LoadRenewal(stateDir)
	if err != nil {
		return nil
	}
	return r
}

// WriteRenewal replaces the renew record atomically (0644: it holds no
// secret).
func WriteRenewal(stateDir string, r *Renewal) error {
	r.SchemaVersion = SchemaVersion
	if _, err := system.ClaimDir(stateDir, true); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return system.WriteFileAtomic(filepath.Join(stateDir, RenewalFile), append(b, '\n'), system.WriteOptions{Mode: 0o644})
}
