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

// RevokeFile is the revoke record's name under state_dir: what provision
// revoke did when the node was decommissioned or re-imaged. It stays when
// the node's other records go, so status can say what happened.
const RevokeFile = "revoke.json"

// The results of one certificate in the revoke record. They are an
// interface.
const (
	RevokedNow     = "revoked"         // the CA accepted this run's revocation
	RevokedBefore  = "already-revoked" // the CA's signed CRL lists it, or an earlier provision revoke did it
	NotRevocable   = "not-revocable"   // expired, not yet valid, another CA's, or its key is not there: no identity this CA could revoke
	RevokeFailed   = "failed"          // the CA did not revoke it (the run stopped; nothing was removed)
	RevokeNotTried = "not-tried"       // a certificate before it could not be revoked, so the run stopped
)

// Revocation is the revoke record. Field names are an interface.
type Revocation struct {
	SchemaVersion int       `json:"schema_version"`
	NodeID        string    `json:"node_id"`
	At            time.Time `json:"revoked_at"`
	CAURL         string    `json:"ca_url"`
	MachineID     string    `json:"machine_id,omitempty"`
	Version       string    `json:"version,omitempty"`
	// Certificates are every certificate found in pki_dir (the current
	// one, the rollback target and sets left aside), each with its result.
	Certificates []RevokedCert `json:"certificates"`
	// Removed are the node paths removed after every certificate was
	// revoked (or could not be an identity any more); empty until then.
	Removed []string `json:"removed"`
	// Complete: the credentials and the node's records are gone.
	Complete bool `json:"complete"`
}

// RevokedCert is one certificate in the revoke record.
type RevokedCert struct {
	Serial     string    `json:"serial"`
	Subject    string    `json:"subject"`
	NotAfter   time.Time `json:"not_after"`
	Generation string    `json:"generation"`
	Result     string    `json:"result"`
	Detail     string    `json:"detail"` // the CA's answer, the CRL's evidence, or why it is not revocable
}

// WriteRevocation replaces the revoke record atomically (0644: no secret).
func WriteRevocation(stateDir string, r *Revocation, hook system.Hook) error {
	r.SchemaVersion = SchemaVersion
	return writeJSON(hook, stateDir, RevokeFile, r, 0o644, true)
}

// ReadRevocation reads the revoke record; nil when there is none or it
// does not parse.
func ReadRevocation(stateDir string) *Revocation {
	b, err := system.ReadRegular(context.Background(), filepath.Join(stateDir, RevokeFile), maxRecord)
	if err != nil {
		return nil
	}
	var r Revocation
	if json.Unmarshal(b, &r) != nil {
		return nil
	}
	return &r
}

// Forget removes the records of the node's identity from stateDir, as
// provision revoke does once the certificates are revoked: the receipt
// and the done markers (so provision.service bootstraps the next install),
// the renew record, the exposure record, the enrollment marker and the
// last failure. The revoke record, the lock and the tasks handed off to
// the node-agent stay. It returns the names removed.
func Forget(stateDir string) ([]string, error) {
	var removed []string
	for _, name := range []string{ReceiptFile, RenewalFile, ExposedFile, PendingFile, FailureFile} {
		err := os.Remove(filepath.Join(stateDir, name))
		switch {
		case err == nil:
			removed = append(removed, name)
		case !errors.Is(err, os.ErrNotExist):
			return removed, err
		}
	}
	done := filepath.Join(stateDir, DoneDir)
	if st, err := os.Lstat(done); err == nil && st.IsDir() {
		if err := os.RemoveAll(done); err != nil {
			return removed, err
		}
		removed = append(removed, DoneDir+"/")
	}
	return removed, system.SyncDir(stateDir)
}
