package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/system"
)

// A record that does not parse (truncated by a full disk, emptied, or
// overwritten with something else) used to be read as no record at all:
// status said "last renew: never" and a post hook the record held pending
// was forgotten. Now such a record is kept and named: a run that holds the
// lock (bootstrap, renew) moves it aside under a timestamped name, which
// status, verify and the metrics report as a warning until a person has
// looked at it and removed it, and the hook it may have held is treated
// as pending, so the node-agent is told once more rather than never.

// damageable are the records kept aside when they do not parse.
var damageable = []string{RenewalFile, ReceiptFile}

// DamagedError says a record exists but does not parse.
type DamagedError struct {
	Path string
	Err  error
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("%s does not parse as provision's record: %v", e.Path, e.Err)
}

func (e *DamagedError) Unwrap() error { return e.Err }

// decodeRecord parses b, read from path, as a record: one JSON object.
func decodeRecord(path string, b []byte, v any) error {
	if t := bytes.TrimSpace(b); len(t) == 0 || t[0] != '{' {
		return &DamagedError{Path: path, Err: errors.New("not a JSON object")}
	}
	if err := json.Unmarshal(b, v); err != nil {
		return &DamagedError{Path: path, Err: err}
	}
	return nil
}

// Damage is one damaged record of state_dir: still in place (Aside "") or
// kept aside.
type Damage struct {
	File  string // the record's name: renew.json, receipt.json
	Aside string // the name it was kept aside under; "" while in place
	Why   string // why it does not parse, when known
}

// String says what is wrong, in one line.
func (d Damage) String() string {
	if d.Aside == "" {
		return fmt.Sprintf("%s does not parse (%s): the next bootstrap or renew keeps it aside and treats a post hook it may have held as pending", d.File, d.Why)
	}
	return fmt.Sprintf("a damaged %s was kept aside as %s", d.File, d.Aside)
}

// Remedy says what a person does about it.
func (d Damage) Remedy() string {
	if d.Aside == "" {
		return "run provision renew (or bootstrap) to keep it aside and write a new one; look at it to see what damaged it"
	}
	return "look at it to see what damaged it (a full disk, another program), then remove it; the record was written anew"
}

// FindDamage lists the damaged records of stateDir: those in place that do
// not parse, and those kept aside, oldest first. It changes nothing.
func FindDamage(stateDir string) []Damage {
	var out []Damage
	for _, name := range damageable {
		if why := damagedWhy(filepath.Join(stateDir, name)); why != "" {
			out = append(out, Damage{File: name, Why: why})
		}
	}
	ents, _ := os.ReadDir(stateDir)
	var aside []Damage
	for _, e := range ents {
		base, _, ok := strings.Cut(e.Name(), system.AsideMark)
		if ok && e.Type().IsRegular() && slices.Contains(damageable, base) {
			aside = append(aside, Damage{File: base, Aside: e.Name()})
		}
	}
	sort.Slice(aside, func(i, j int) bool { return aside[i].Aside < aside[j].Aside })
	return append(out, aside...)
}

// damagedWhy says why the record at path does not parse; "" when it does,
// is absent or cannot be read (a FIFO there is ClaimDir's to refuse).
func damagedWhy(path string) string {
	b, err := system.ReadRegular(context.Background(), path, MaxRenewalSize)
	if err != nil {
		return ""
	}
	var m map[string]any
	var de *DamagedError
	if errors.As(decodeRecord(path, b, &m), &de) {
		return de.Err.Error()
	}
	return ""
}

// KeepDamaged moves each damaged record of stateDir aside, as
// "<name>.damaged-<UTC time>", and returns what it moved. Only a run that
// holds the lock calls it (bootstrap and renew), before it writes records.
func KeepDamaged(stateDir string, now time.Time) ([]Damage, error) {
	var moved []Damage
	var errs []error
	for _, d := range FindDamage(stateDir) {
		if d.Aside != "" {
			continue
		}
		d.Aside = d.File + system.AsideMark + now.UTC().Format("20060102T150405Z")
		for i := 2; fileExists(filepath.Join(stateDir, d.Aside)); i++ {
			d.Aside = fmt.Sprintf("%s%s%s-%d", d.File, system.AsideMark, now.UTC().Format("20060102T150405Z"), i)
		}
		if err := os.Rename(filepath.Join(stateDir, d.File), filepath.Join(stateDir, d.Aside)); err != nil {
			errs = append(errs, fmt.Errorf("keeping the damaged %s aside: %w", d.File, err))
			continue
		}
		moved = append(moved, d)
	}
	if len(moved) > 0 {
		system.SyncDir(stateDir)
	}
	return moved, errors.Join(errs...)
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
