package tasks

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/internal/testenv"
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
		{"hidden", ".x", fallback},
		{"a temp file's name", ".t.json123", fallback},
		{"newline", "a\nb", fallback},
		{"escape", "a\x1b[2Jb", fallback},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			state := filepath.Join(root, "var", "lib", "provision")
			raw := json.RawMessage(`{"id":` + string(mustJSON(t, tt.id)) + `,"kind":"reimage","args":["a","b"]}`)
			if _, err := Save(state, probe.Task{ID: tt.id, Raw: raw}, now, nil, credstore.RootOnly); err != nil {
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
			if a.String() != w.String() || string(b) != string(raw)+"\n" {
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

// TestSaveRefusesNonTask: a body that is not a JSON object is not a task
// (issue 24 item 3: a 200 "null" was saved as a task file); Save refuses it
// rather than leave the node-agent a file that is no task.
func TestSaveRefusesNonTask(t *testing.T) {
	for _, body := range []string{"null", "[1]", `"reboot"`, "42", "reboot now\n", ""} {
		t.Run(body, func(t *testing.T) {
			state := t.TempDir()
			if _, err := Save(state, probe.TaskFrom([]byte(body)), time.Now(), nil, credstore.RootOnly); err == nil || !strings.Contains(err.Error(), "not a task") {
				t.Fatalf("Save(%q) = %v, want a refusal", body, err)
			}
			if got := files(t, state); len(got) != 0 {
				t.Fatalf("files written: %v", got)
			}
		})
	}
}

// TestSaveExactIDs is issue 24 item 3: numeric IDs went through a float,
// so 12345678901234567891 and 12345678901234567892 were both saved as
// 1.2345678901234567e+19.json and the first task was lost. The file is
// named by the ID's exact bytes.
func TestSaveExactIDs(t *testing.T) {
	state := t.TempDir()
	bodies := []string{
		`{"id":12345678901234567891,"kind":"reimage"}`,
		`{"id":12345678901234567892,"kind":"drain"}`,
		`{"id":1e3,"kind":"a"}`,
		`{"id":1000,"kind":"b"}`,
		`{"id":"task-\u00e9","kind":"c"}`,
	}
	want := map[string]string{
		"12345678901234567891.json": bodies[0], "12345678901234567892.json": bodies[1],
		"1e3.json": bodies[2], "1000.json": bodies[3], "task-é.json": bodies[4],
	}
	for _, b := range bodies {
		if _, err := Save(state, probe.TaskFrom([]byte(b)), time.Now(), nil, credstore.RootOnly); err != nil {
			t.Fatal(err)
		}
	}
	checkTasks(t, state, want)
}

// TestSaveNeverOverwrites is issue 24 item 3: the same task ID delivered
// twice with different payloads kept only the second. A redelivery of the
// same task (same bytes) is saved once; a different payload under the same
// ID is kept beside it, named as a redelivery, and the first stays as it
// was.
func TestSaveNeverOverwrites(t *testing.T) {
	state := t.TempDir()
	first := `{"id":"t-7","kind":"reimage","image":"a"}`
	second := `{"id":"t-7","kind":"reimage","image":"b"}`
	third := `{"id":"t-7","kind":"drain"}`
	var paths []string
	for _, b := range []string{first, first, second, second, third} {
		p, err := Save(state, probe.TaskFrom([]byte(b)), time.Now(), nil, credstore.RootOnly)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, filepath.Base(p))
	}
	if paths[0] != "t-7.json" || paths[1] != "t-7.json" || paths[2] != paths[3] || paths[2] == paths[0] || paths[4] == paths[2] {
		t.Fatalf("saved as %v: want t-7.json twice, then one redelivery name twice, then another", paths)
	}
	for _, p := range paths[2:] {
		if !strings.HasPrefix(p, "t-7.redelivered-") || !strings.HasSuffix(p, ".json") {
			t.Errorf("a redelivery with another payload saved as %s, want t-7.redelivered-<digest>.json", p)
		}
	}
	checkTasks(t, state, map[string]string{"t-7.json": first, paths[2]: second, paths[4]: third})
}

// TestSaveLarge: a task of several MiB is written whole, byte for byte.
func TestSaveLarge(t *testing.T) {
	state := t.TempDir()
	body := `{"id":"big","pad":"` + strings.Repeat("x", 5<<20) + `"}`
	if _, err := Save(state, probe.TaskFrom([]byte(body)), time.Now(), nil, credstore.RootOnly); err != nil {
		t.Fatal(err)
	}
	checkTasks(t, state, map[string]string{"big.json": body})
}

// checkTasks fails unless the hand-off directory holds exactly want (file
// name -> the body as received), each 0600.
func checkTasks(t *testing.T, state string, want map[string]string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(state, Dir))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, e := range ents {
		got[e.Name()] = true
		p := filepath.Join(state, Dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		w, ok := want[e.Name()]
		if !ok {
			t.Errorf("unexpected file %s", e.Name())
			continue
		}
		if string(b) != w+"\n" {
			t.Errorf("%s holds %.80q, want the task as received", e.Name(), b)
		}
		if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
			t.Errorf("%s is %04o, want 0600", e.Name(), st.Mode().Perm())
		}
	}
	for n := range want {
		if !got[n] {
			t.Errorf("%s missing; files %v", n, got)
		}
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
		if !d.IsDir() && d.Name() != system.OwnMark { // state_dir's mark, written when Save created it
			rel, _ := filepath.Rel(root, p)
			out[rel] = true
		}
		return nil
	})
	return out
}

// BenchmarkSave: a typical task, and one of 3 MiB, each saved under a new
// id (a temp file, fsync, a hard link, fsync of the directory).
func BenchmarkSave(b *testing.B) {
	for _, size := range []int{1 << 10, 3 << 20} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			state := b.TempDir()
			pad := strings.Repeat("x", size)
			b.SetBytes(int64(size))
			i := 0
			for b.Loop() {
				i++
				body := fmt.Sprintf(`{"id":"t-%d","pad":%q}`, i, pad)
				if _, err := Save(state, probe.TaskFrom([]byte(body)), time.Now(), nil, credstore.RootOnly); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestSaveForKeyGroup: with paths.key_group a task is the group's, as the
// key is (0640 in a tasks/ of 0750, both that group's), so a node-agent
// that reads its key reads its tasks; without one it is root's alone.
func TestSaveForKeyGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "giving files to a group needs root (CI runs as root)")
	}
	for _, tc := range []struct {
		name      string
		a         credstore.Access
		file, dir os.FileMode
		gid       uint32
	}{
		{"root only", credstore.RootOnly, 0o600, 0o700, 0},
		{"key group", credstore.Access{Group: true, GID: 4242, Name: "node-agent"}, 0o640, 0o750, 4242},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			p, err := Save(state, probe.TaskFrom([]byte(`{"id":"t-1"}`)), time.Now(), nil, tc.a)
			if err != nil {
				t.Fatal(err)
			}
			for path, want := range map[string]os.FileMode{p: tc.file, filepath.Dir(p): tc.dir} {
				st, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if gid := st.Sys().(*syscall.Stat_t).Gid; st.Mode().Perm() != want || gid != tc.gid {
					t.Errorf("%s: %04o group %d, want %04o group %d", path, st.Mode().Perm(), gid, want, tc.gid)
				}
			}
		})
	}
}
