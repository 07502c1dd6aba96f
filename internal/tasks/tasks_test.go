package tasks

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/probe"
)

func TestSaveNames(t *testing.T) {
	now := time.Date(2026, 3, 10, 12, 0, 0, 123456789, time.UTC)
	fallback := "task-20260310T120000.123456789Z.json"
	tests := []struct {
		name string
		id   string
		want string
	}{
		{"plain id", "task-17", "task-17.json"},
		{"uuid", "0b7e6c1e-2f0a-4f43-9d1a-6f1d2b3c4d5e", "0b7e6c1e-2f0a-4f43-9d1a-6f1d2b3c4d5e.json"},
		{"parent traversal", "../../etc/cron.d/evil", fallback},
		{"parent only", "..", fallback},
		{"dot", ".", fallback},
		{"absolute", "/etc/passwd", fallback},
		{"slash inside", "a/b", fallback},
		{"backslash", `..\..\x`, fallback},
		{"nul", "a\x00b", fallback},
		{"empty", "", fallback},
		{"long", strings.Repeat("x", 300), fallback},
		{"128 bytes kept", strings.Repeat("y", 128), strings.Repeat("y", 128) + ".json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			state := filepath.Join(root, "var", "lib", "provision")
			raw := json.RawMessage(`{"id":` + string(mustJSON(t, tt.id)) + `,"kind":"reimage","args":["a","b"]}`)
			if _, err := Save(state, probe.Task{ID: tt.id, Raw: raw}, now, nil); err != nil {
				t.Fatalf("SaveTask: %v", err)
			}
			got := files(t, root)
			want := filepath.Join("var", "lib", "provision", Dir, tt.want)
			if len(got) != 1 || !got[want] {
				t.Fatalf("files written = %v, want exactly %s", got, want)
			}
			p := filepath.Join(root, want)
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("task file mode %04o, want 0600", st.Mode().Perm())
			}
			b, _ := os.ReadFile(p)
			var a, w bytes.Buffer
			json.Compact(&a, b)
			json.Compact(&w, raw)
			if a.String() != w.String() {
				t.Errorf("task content %s, want %s", a.String(), w.String())
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSaveNonJSONBody: a 200 body that is not JSON is still a task and
// is kept (as a JSON string).
func TestSaveNonJSONBody(t *testing.T) {
	state := t.TempDir()
	task := probe.TaskFrom([]byte("reboot now\n"))
	if _, err := Save(state, task, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Join(state, Dir))
	if err != nil || len(ents) != 1 {
		t.Fatalf("tasks dir: %v %v", ents, err)
	}
	b, _ := os.ReadFile(filepath.Join(state, Dir, ents[0].Name()))
	var s string
	if err := json.Unmarshal(b, &s); err != nil || s != "reboot now\n" {
		t.Fatalf("saved %q (%v), want the body as a JSON string", b, err)
	}
}

// files lists every regular file under root, relative to it.
func files(t *testing.T, root string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			out[rel] = true
		}
		return nil
	})
	return out
}
