// Package renewrec is the renew record, state_dir/renew.json: what the last
// renewal attempt found and did. renew writes it on every run that got as
// far as judging the credentials; verify reads it to say when the node last
// renewed and how that went, and the credential verdict reads the serial
// the CA refused as revoked.
package renewrec

import (
	"encoding/json"
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

// Read reads the record; nil when there is none or it does not parse.
func Read(stateDir string) *Record {
	b, err := os.ReadFile(filepath.Join(stateDir, File))
	if err != nil {
		return nil
	}
	var r Record
	if json.Unmarshal(b, &r) != nil {
		return nil
	}
	return &r
}

// Write replaces the record atomically (0644: it holds no secret).
func Write(stateDir string, r *Record) error {
	if _, err := system.EnsurePrivateDir(stateDir, true); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return system.WriteFileAtomic(filepath.Join(stateDir, File), append(b, '\n'), system.WriteOptions{Mode: 0o644})
}
