package probe_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/gpuaas/provision/internal/probe"
)

// FuzzTaskFrom: whatever a 200 carries, reading a task from it never
// panics; only a JSON object is a task, its Raw is the body as received,
// and a numeric id is the number exactly as written.
func FuzzTaskFrom(f *testing.F) {
	for _, s := range []string{`{"id":"t-1"}`, `{"id":12345678901234567891}`, `{"id":1e3}`, `null`, `[1]`, `"x"`, ``, `{"id":`, `{"id":"\u00e9"}`, "{\"id\":\"a\x00b\"}", `{"id":-0}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		task := probe.TaskFrom(body)
		if !bytes.Equal(task.Raw, bytes.TrimSpace(body)) {
			t.Fatalf("Raw %q is not the body %q", task.Raw, body)
		}
		if !probe.IsTask(body) {
			if task.ID != "" {
				t.Fatalf("an id %q from a body that is no task: %q", task.ID, body)
			}
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("IsTask accepted %q, which is no JSON object: %v", body, err)
		}
		if raw := m["id"]; len(raw) > 0 && (raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9') && task.ID != string(raw) {
			t.Fatalf("numeric id %s read as %q", raw, task.ID)
		}
	})
}
