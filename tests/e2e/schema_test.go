package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// TestJSONMatchesSchemas: every JSON document the real binary prints or
// writes, taken from real runs against the real step-ca and node API, is
// valid against the JSON Schema the package ships for it
// (packaging/schemas): the reports of bootstrap, verify, renew, renew
// --check and revoke, passing and failing, the dry runs, a usage error,
// status (enrolled, and after revoke), version, config check (valid and
// not), the receipt, renew.json and revoke.json. And the schemas can
// fail: a report with a field added, one with a field taken away, and one
// with a layer that does not exist are each refused.
func TestJSONMatchesSchemas(t *testing.T) {
	t.Parallel()
	schemas := testenv.LoadSchemas(t, filepath.Join(moduleRoot, "packaging", "schemas"))
	cp := controlplane.Start(t, controlplane.Options{CACRL: true})
	n := newNode(t, cp, true)
	seen := map[string]int{}
	doc := func(schema string, r nodetest.Result) []byte {
		t.Helper()
		schemas.Validate(t, schema, "provision "+strings.Join(r.Args, " "), []byte(r.Stdout))
		seen[schema]++
		return []byte(r.Stdout)
	}
	file := func(schema, path string) {
		t.Helper()
		schemas.ValidateFile(t, schema, path)
		seen[schema]++
	}

	doc("report", n.Run("bootstrap", "--dry-run", "--format", "json"))
	boot := doc("report", n.Run("bootstrap", "--format", "json"))
	file("receipt", n.ReceiptPath())
	receipt := readFile(t, n.ReceiptPath())
	file("renew-record", filepath.Join(n.Files.StateDir, "renew.json"))
	doc("report", n.Run("bootstrap", "--dry-run", "--format", "json"))
	doc("report", n.Run("verify", "--format", "json"))
	doc("report", n.Run("renew", "--format", "json"))
	doc("report", n.Run("renew", "--dry-run", "--force", "--format", "json"))
	doc("report", n.Run("renew", "--force", "--format", "json"))
	file("renew-record", filepath.Join(n.Files.StateDir, "renew.json"))
	file("receipt", n.ReceiptPath())
	doc("report", n.Run("renew", "--check", "--format", "json"))
	doc("report", n.Run("verify", "--bogus", "--format", "json"))
	doc("report", n.Run("revoke", "--format", "json"))
	doc("status", n.Run("status", "--format", "json"))
	doc("version", nodetest.RunBinary(t, "version", "--format", "json")) // version takes no --root
	doc("config-check", n.Run("config", "check", "--format", "json"))
	cp.SetClientCAMode(controlplane.ClientCAUnrelated)
	doc("report", n.Run("verify", "--format", "json"))
	cp.SetClientCAMode(controlplane.ClientCAStep)
	doc("report", n.Run("revoke", "--yes", "--format", "json"))
	file("revoke-record", filepath.Join(n.Files.StateDir, "revoke.json"))
	doc("status", n.Run("status", "--format", "json"))
	doc("report", n.Run("bootstrap", "--dry-run", "--format", "json")) // no token now: stops at enroll
	if err := os.WriteFile(n.Files.ConfigPath, []byte("node_id = 7\nbogus = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	doc("config-check", n.Run("config", "check", "--format", "json"))
	doc("report", n.Run("verify", "--format", "json"))

	for _, name := range schemas.Names() {
		if seen[name] == 0 {
			t.Errorf("%s.schema.json: no real document was validated against it", name)
		}
	}

	// The schemas can fail.
	var m map[string]any
	if err := json.Unmarshal(boot, &m); err != nil {
		t.Fatal(err)
	}
	for what, change := range map[string]func(map[string]any){
		"a field added":    func(m map[string]any) { m["surprise"] = true },
		"a field taken":    func(m map[string]any) { delete(m, "failed_layer") },
		"an unknown layer": func(m map[string]any) { m["failed_layer"] = "dns" },
		"another version":  func(m map[string]any) { m["schema_version"] = 2 },
		"a check's status": func(m map[string]any) { m["checks"].([]any)[0].(map[string]any)["status"] = "ok" },
	} {
		c := map[string]any{}
		b, _ := json.Marshal(m)
		json.Unmarshal(b, &c)
		change(c)
		b, _ = json.Marshal(c)
		if schemas.Check("report", b) == nil {
			t.Errorf("report.schema.json accepted a report with %s", what)
		}
	}
	// Formats are asserted: a receipt whose proved_at is not a time.
	var rc map[string]any
	json.Unmarshal(receipt, &rc)
	rc["proved_at"] = "yesterday"
	if b, _ := json.Marshal(rc); schemas.Check("receipt", b) == nil {
		t.Error("receipt.schema.json accepted proved_at \"yesterday\"")
	}
}
