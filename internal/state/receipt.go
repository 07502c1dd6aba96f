package state

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/gpuaas/provision/internal/system"
)

// File names under state_dir.
const (
	ReceiptFile = "receipt.json"
	PendingFile = "enroll-pending.json"
	ExposedFile = "key-exposed.json"
	DoneDir     = "done"
)

// SchemaVersion is the version of every record provision writes under
// state_dir (the receipt, renew.json, revoke.json), carried as their
// schema_version and described by the JSON Schemas the package ships
// (packaging/schemas). Like the log schema it changes only if a field is
// renamed or removed or changes meaning, which the contract forbids; a
// field added does not change it.
const SchemaVersion = 1

// Receipt is the done receipt. Field names are an interface.
type Receipt struct {
	// SchemaVersion is SchemaVersion when written.
	SchemaVersion int `json:"schema_version"`

	NodeID          string    `json:"node_id"`
	Serial          string    `json:"serial"`
	Issuer          string    `json:"issuer"`
	Subject         string    `json:"subject"`
	RootFingerprint string    `json:"root_fingerprint"`
	NotAfter        time.Time `json:"not_after"`
	Endpoint        string    `json:"endpoint"`
	ResolvedAddr    string    `json:"resolved_addr"`
	ProbeStatus     int       `json:"probe_status"`
	Enrolled        bool      `json:"enrolled"` // this run obtained a new certificate with a token
	ProvedAt        time.Time `json:"proved_at"`
	MachineID       string    `json:"machine_id,omitempty"`
	Version         string    `json:"version"`
	// Warnings are what the run fixed or left for a person, such as a
	// private key found readable by others and kept for want of a token.
	Warnings []string `json:"warnings,omitempty"`
	// Command is the command that wrote the receipt last (bootstrap, or
	// renew after it published a renewed set); Unproven says why the
	// certificate named here was published without a passing proof (the
	// liveness rule), "" when it polled.
	Command  string `json:"command,omitempty"`
	Unproven string `json:"unproven,omitempty"`
}

// WriteReceipt writes the done receipt and the per-install done marker.
func WriteReceipt(stateDir string, r *Receipt, hook system.Hook) error {
	r.SchemaVersion = SchemaVersion
	if err := writeJSON(hook, stateDir, ReceiptFile, r, 0o644, true); err != nil {
		return err
	}
	return afterReceipt(stateDir, r, hook)
}

// WriteDone writes the receipt and, when rec is not nil, the renew record,
// as a run that is done ends: both at once (system.Dir.WriteAtomicAll: one
// wait for the disk for their contents and one for their renames, where
// writing them one after the other waited four times), then the per-install
// done marker, as WriteReceipt does. A crash leaves each old or new, whole;
// the done marker is written only once both are durable.
func WriteDone(stateDir string, rc *Receipt, rec *Renewal, hook system.Hook) error {
	if _, err := system.ClaimDir(stateDir, true); err != nil {
		return err
	}
	rc.SchemaVersion = SchemaVersion
	records := map[string]any{ReceiptFile: rc}
	names := []string{ReceiptFile}
	if rec != nil {
		rec.SchemaVersion = SchemaVersion
		records[RenewalFile] = rec
		names = append(names, RenewalFile)
	}
	files := make([]system.Named, 0, len(names))
	for _, name := range names {
		b, err := json.MarshalIndent(records[name], "", "  ")
		if err != nil {
			return err
		}
		files = append(files, system.Named{Name: name, Data: append(b, '\n'), Mode: 0o644})
	}
	d, err := system.OpenDir(stateDir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.WriteAtomicAll(files, hook); err != nil {
		return err
	}
	return afterReceipt(stateDir, rc, hook)
}

// afterReceipt makes what a written receipt brings: the hand-off directory
// and the per-install done marker.
func afterReceipt(stateDir string, r *Receipt, hook system.Hook) error {
	// The hand-off directory exists on every done node, so verify, whose
	// unit may write nowhere else, can leave a task there.
	if err := os.MkdirAll(filepath.Join(stateDir, "tasks"), 0o700); err != nil {
		return err
	}
	if r.MachineID != "" {
		// done/ is provision's own: a link there would send the marker anywhere.
		marker := map[string]string{"serial": r.Serial, "proved_at": r.ProvedAt.Format(time.RFC3339)}
		if err := writeJSON(hook, filepath.Join(stateDir, DoneDir), r.MachineID, marker, 0o644, false); err != nil {
			return err
		}
	}
	return nil
}

// ReadReceipt reads the receipt, if any; one that does not parse is a
// *DamagedError.
func ReadReceipt(stateDir string) (*Receipt, error) {
	path := filepath.Join(stateDir, ReceiptFile)
	b, err := system.ReadRegular(context.Background(), path, maxRecord)
	if err != nil {
		return nil, err
	}
	var r Receipt
	if err := decodeRecord(path, b, &r); err != nil {
		return nil, err // a *DamagedError: see KeepDamaged
	}
	return &r, nil
}

// maxRecord bounds what is read of a record: each is a few hundred bytes.
const maxRecord = 1 << 20

// Pending records that a token is about to be presented to the CA. If the
// process dies after the CA accepted the token but before the certificate
// was saved, the token is burnt; the marker lets the next run say so plainly
// instead of reporting a bare 401.
type Pending struct {
	TokenSHA256 string    `json:"token_sha256"`
	Started     time.Time `json:"started"`
}

// WritePending records a token about to be presented. A first marker is
// created in place, its file and state_dir fsynced at once
// (system.CreateDurable): torn only until it returns, and the token is sent
// only after that, so a marker a power cut left torn stands for a token
// never sent, which is what ReadPending makes of it (none). A marker that
// exists may hold an earlier run's evidence: it is replaced atomically.
func WritePending(stateDir string, p Pending, hook system.Hook) error {
	if _, err := system.ClaimDir(stateDir, true); err != nil {
		return err
	}
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	err = system.CreateDurable(filepath.Join(stateDir, PendingFile), append(b, '\n'), 0o600, hook)
	if errors.Is(err, fs.ErrExist) {
		return writeJSON(hook, stateDir, PendingFile, p, 0o600, true)
	}
	return err
}

// ReadPending reads the enrollment marker; ok is false when there is none
// or it does not parse.
func ReadPending(ctx context.Context, stateDir string) (Pending, bool) {
	var p Pending
	b, err := system.ReadRegular(ctx, filepath.Join(stateDir, PendingFile), maxRecord)
	if err != nil || json.Unmarshal(b, &p) != nil {
		return Pending{}, false
	}
	return p, true
}

// Exposure records that the installed private key was found readable by
// others. It stays in state_dir until a new key replaces the exposed one.
type Exposure struct {
	Found   time.Time `json:"found"`
	Changes []string  `json:"changes"`
}

// ReadExposure reads the exposure record, nil when there is none; a
// record that does not parse still says the key was exposed.
func ReadExposure(stateDir string) *Exposure {
	b, err := system.ReadRegular(context.Background(), filepath.Join(stateDir, ExposedFile), maxRecord)
	if err != nil {
		return nil
	}
	x := &Exposure{}
	if json.Unmarshal(b, x) != nil {
		x = &Exposure{Changes: []string{"(unreadable record)"}}
	}
	return x
}

// WriteExposure records an exposed key (before anything changes it, so a
// crash cannot lose the fact).
func WriteExposure(stateDir string, x *Exposure, hook system.Hook) error {
	return writeJSON(hook, stateDir, ExposedFile, x, 0o600, true)
}

// writeJSON writes v as indented JSON to dir/name atomically. followLink
// allows dir itself to be a symbolic link (state_dir may live on another
// volume); provision's own subdirectories may not be one.
func writeJSON(hook system.Hook, dir, name string, v any, mode os.FileMode, followLink bool) error {
	if followLink {
		// state_dir: provision's own only if it is (system.ClaimDir).
		if _, err := system.ClaimDir(dir, true); err != nil {
			return err
		}
	} else if _, err := system.EnsurePrivateDir(dir, false); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return system.WriteFileAtomic(filepath.Join(dir, name), append(b, '\n'), system.WriteOptions{Mode: mode, Hook: hook})
}
