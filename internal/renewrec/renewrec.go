// Package renewrec is the renew record, state_dir/renew.json: what the last
// renewal attempt found and did. renew writes it on every run that got as
// far as judging the credentials; verify reads it to say when the node last
// renewed and how that went, and the credential verdict reads the serial
// the CA refused as revoked.
package renewrec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gpuaas/provision/internal/system"
)

// File is the record's name under state_dir.
const File = "renew.json"

// Results of an attempt. They are an interface: runbooks and scripts key
// on them.
const (
	NotDue     = "not-due"     // nothing to do: before the renewal point (plus splay)
	Renewed    = "renewed"     // a new certificate was proven and published
	Refreshed  = "refreshed"   // only ca.pem changed (the CA's roots moved), proven and published
	Failed     = "failed"      // the attempt failed; the old set stays current
	Reenroll   = "re-enroll"   // the certificate cannot be renewed: a fresh token is needed
	RevokedRes = "revoked"     // the CA refused the certificate as revoked
	HookFailed = "hook-failed" // renewed and published, but renew.post_hook failed
)

// Record is state_dir/renew.json. Field names are an interface.
type Record struct {
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
	// RevokedSerial is a serial the CA refused to renew as revoked.
	RevokedSerial string `json:"revoked_serial,omitempty"`
	Rekeyed       bool   `json:"rekeyed,omitempty"`
	Generation    string `json:"generation,omitempty"` // the generation directory proven (or kept aside)
	Hook          string `json:"hook,omitempty"`       // the post_hook's outcome
	Version       string `json:"version,omitempty"`
}

// MaxSize bounds the record: a real one is well under 2 KiB (its longest
// field is a one-line error).
const MaxSize = 256 << 10

// Load reads the record: nil and no error when there is none. It is opened
// as a regular file, without following a link or blocking on a FIFO, and
// read within MaxSize; anything else at its path is refused with an error
// naming it (a *system.UnsafeFileError for a link, FIFO, device or
// directory).
func Load(stateDir string) (*Record, error) {
	path := filepath.Join(stateDir, File)
	b, err := system.ReadRegular(context.Background(), path, MaxSize)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: not a renew record: %w", path, err)
	}
	return &r, nil
}

// Read is Load for callers that only want the record: nil when there is
// none, or it is refused or does not parse.
func Read(stateDir string) *Record {
	r, err := Load(stateDir)
	if err != nil {
		return nil
	}
	return r
}

// Write replaces the record atomically (0644: it holds no secret).
func Write(stateDir string, r *Record) error {
	if _, err := system.ClaimDir(stateDir, true); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return system.WriteFileAtomic(filepath.Join(stateDir, File), append(b, '\n'), system.WriteOptions{Mode: 0o644})
}
