// Package tasks hands off a task the proof received. The proof's tasks/wait
// is the node-agent's own request, so a task the API hands to it has been
// dequeued there: bootstrap, renew and verify each leave it in
// state_dir/tasks/<id>.json (0600, or 0640 in paths.key_group), the one
// place the node-agent picks it up.
// A task must never be lost, so this package is the only writer of that
// directory and the only reader of its names.
//
// Never lost means three things (issue 24): the file is named by the ID's
// exact bytes (a numeric ID through a float made two tasks one name); a
// file is never replaced (the same ID with another payload is kept beside
// the first, named as a redelivery; the same bytes again are the same task,
// saved once); and the task is written as received, whole, however large
// the probe let it be (probe.MaxTask).
package tasks

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/system"
)

// Dir is the hand-off directory under state_dir.
const Dir = "tasks"

// Save writes t to stateDir/tasks/<id>.json, exactly as received, and
// returns the file's path. An ID that is not a safe file name is replaced
// by the time. An existing file is never replaced: if it holds the same
// bytes the task is already handed off; if it holds another task, t goes
// to <id>.redelivered-<digest>.json beside it. A body that is not a JSON
// object is not a task and is refused.
//
// The file is a's (0600, or 0640 in paths.key_group, as the key is, in a
// tasks/ of 0750 in that group), so a node-agent that reads its key reads
// its tasks. A task that cannot be given to the group is still saved, root's
// alone, and the error says so: a task is never lost.
func Save(stateDir string, t probe.Task, now time.Time, hook system.Hook, a credstore.Access) (string, error) {
	if !probe.IsTask(t.Raw) {
		return "", fmt.Errorf("not a task (a task is one JSON object): %.80q", t.Raw)
	}
	id := t.ID
	if !safeName(id) {
		id = "task-" + now.UTC().Format("20060102T150405.000000000Z")
	}
	// state_dir must be provision's own (system.ClaimDir) and may be a link
	// to another volume; tasks/ is provision's own and may not (a link
	// there would send a task anywhere). state_dir is created and marked
	// when missing, but need not be writable: provision-verify.service may
	// write tasks/ alone, state_dir read-only to it (found by tests/boot,
	// handing a task off through that unit).
	if _, err := system.ClaimDir(stateDir, true); errors.Is(err, syscall.EROFS) {
		if _, err := system.ClaimDir(stateDir, false); err != nil { // judged only
			return "", err
		}
	} else if err != nil {
		return "", err
	}
	dir := filepath.Join(stateDir, Dir)
	if _, err := system.EnsurePrivateDir(dir, false); err != nil {
		return "", err
	}
	if err := a.Give(dir, a.DirMode(), false); err != nil {
		return "", err
	}
	data := append(bytes.TrimSpace(t.Raw), '\n')
	sum := sha256.Sum256(data)
	for _, name := range []string{id + ".json", id + ".redelivered-" + hex.EncodeToString(sum[:8]) + ".json"} {
		path := filepath.Join(dir, name)
		saved, err := saveNew(path, data, hook, a)
		if err != nil || saved {
			return path, err
		}
		same, err := holds(path, data)
		if err != nil {
			return "", err
		}
		if same {
			return path, nil // this very task was handed off before
		}
	}
	return "", fmt.Errorf("%s and its redelivery name hold other tasks; not replacing either", filepath.Join(dir, id+".json"))
}

// safeName reports whether a task ID can be a file name in the hand-off
// directory as it is: no path separators, NUL or control characters, not
// hidden (a leading dot is also a temp file's), at most 128 bytes.
func safeName(id string) bool {
	if id == "" || len(id) > 128 || strings.HasPrefix(id, ".") || strings.ContainsAny(id, "/\\") {
		return false
	}
	for _, r := range id {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return false
		}
	}
	return true
}

// saveNew writes data to path only if nothing is there: a temp file in the
// same directory (".<name><digits>", swept by Sweep after a crash),
// fsynced, then hard-linked to path, which fails rather than replace an
// existing file. It reports whether it wrote path.
func saveNew(path string, data []byte, hook system.Hook, a credstore.Access) (bool, error) {
	dir, name := filepath.Split(path)
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(dir, fmt.Sprintf(".%s%d", name, binary.BigEndian.Uint64(rnd[:])))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false, fmt.Errorf("creating a temp file for %s: %w", path, err)
	}
	defer os.Remove(tmp)
	// Given to the key group before it has a name the node-agent reads; if
	// that fails the task is still saved, root's alone (groupErr).
	groupErr := a.GiveFile(f, path)
	if groupErr != nil {
		if err := f.Chmod(0o600); err != nil {
			f.Close()
			return false, err
		}
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return false, fmt.Errorf("syncing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return false, err
	}
	hook.At("before rename " + name)
	if err := os.Link(tmp, path); errors.Is(err, os.ErrExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("saving %s: %w", path, err)
	}
	os.Remove(tmp)
	if err := system.SyncDir(dir); err != nil {
		return true, err
	}
	if groupErr != nil {
		return true, fmt.Errorf("saved %s, but only root can read it: %w", path, groupErr)
	}
	return true, nil
}

// holds reports whether the file at path holds exactly data. What is there
// is read the careful way (a link or a FIFO planted there is refused).
func holds(path string, data []byte) (bool, error) {
	b, err := system.ReadRegular(context.Background(), path, int64(len(data)))
	var big *system.TooLargeError
	if errors.As(err, &big) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return bytes.Equal(b, data), nil
}

// Sweep removes temp files a killed run left in the hand-off directory
// (".<id>.json<digits>"); task IDs are not known in advance.
func Sweep(stateDir string) {
	dir := filepath.Join(stateDir, Dir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		n := e.Name()
		trimmed := strings.TrimRight(n, "0123456789")
		if strings.HasPrefix(n, ".") && len(trimmed) < len(n) && strings.HasSuffix(trimmed, ".json") {
			os.Remove(filepath.Join(dir, n))
		}
	}
}

// HandOff saves the task the probe res received, if any: the API has
// dequeued it, whatever the proof's verdict (a route without mTLS can hand
// one out and fail). It returns the task (nil when there was none) and the
// file's path.
func HandOff(stateDir string, res *probe.Result, now time.Time, hook system.Hook, a credstore.Access) (*probe.Task, string, error) {
	t, ok := res.HandedTask()
	if !ok {
		return nil, "", nil
	}
	path, err := Save(stateDir, t, now, hook, a)
	return &t, path, err
}
