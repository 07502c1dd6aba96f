// Package tasks hands off a task the proof received. The proof's tasks/wait
// is the node-agent's own request, so a task the API hands to it has been
// dequeued there: bootstrap, renew and verify each leave it in
// state_dir/tasks/<id>.json (0600), the one place the node-agent picks it up.
// A task must never be lost, so this package is the only writer of that
// directory and the only reader of its names.
package tasks

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/system"
)

// Dir is the hand-off directory under state_dir.
const Dir = "tasks"

// Save writes t to stateDir/tasks/<id>.json (0600) and returns the file's
// path. An ID that is not a safe file name is replaced by the time.
func Save(stateDir string, t probe.Task, now time.Time, hook system.Hook) (string, error) {
	id := t.ID
	if id == "" || strings.ContainsAny(id, "/\\\x00") || id == "." || id == ".." || len(id) > 128 {
		id = "task-" + now.UTC().Format("20060102T150405.000000000Z")
	}
	dir := filepath.Join(stateDir, Dir)
	// state_dir may be a link to another volume; tasks/ is provision's own
	// and may not (a link there would send a task anywhere).
	if _, err := system.EnsurePrivateDir(dir, false); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(t.Raw, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, id+".json")
	return path, system.WriteFileAtomic(path, append(b, '\n'), system.WriteOptions{Mode: 0o600, Hook: hook})
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
func HandOff(stateDir string, res *probe.Result, now time.Time, hook system.Hook) (*probe.Task, string, error) {
	t, ok := res.HandedTask()
	if !ok {
		return nil, "", nil
	}
	path, err := Save(stateDir, t, now, hook)
	return &t, path, err
}
