package testenv

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Schemas are the JSON Schemas provision ships (packaging/schemas,
// installed under /usr/share/provision/schemas/), compiled, by name
// ("report" for report.schema.json). Formats (date-time) are asserted, not
// only annotated. The validator is a test dependency only: nothing in the
// binary imports it.
type Schemas struct {
	dir string
	m   map[string]*jsonschema.Schema
}

// LoadSchemas compiles every *.schema.json in dir; a schema that does not
// compile fails tb.
func LoadSchemas(tb testing.TB, dir string) *Schemas {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.schema.json"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no JSON Schemas in %s (%v)", dir, err)
	}
	s := &Schemas{dir: dir, m: map[string]*jsonschema.Schema{}}
	for _, f := range files {
		c := jsonschema.NewCompiler()
		c.AssertFormat()
		sch, err := c.Compile(f)
		if err != nil {
			tb.Fatalf("%s: %v", f, err)
		}
		s.m[strings.TrimSuffix(filepath.Base(f), ".schema.json")] = sch
	}
	return s
}

// Names are the schemas' names.
func (s *Schemas) Names() []string {
	var n []string
	for k := range s.m {
		n = append(n, k)
	}
	return n
}

// Check validates doc (one JSON document) against the schema name.
func (s *Schemas) Check(name string, doc []byte) error {
	sch, ok := s.m[name]
	if !ok {
		return fmt.Errorf("no schema %q in %s", name, s.dir)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return fmt.Errorf("not one JSON document: %w", err)
	}
	return sch.Validate(inst)
}

// Validate fails tb unless doc is valid against the schema name; what
// says what doc is (a command line, a file).
func (s *Schemas) Validate(tb testing.TB, name, what string, doc []byte) {
	tb.Helper()
	if err := s.Check(name, doc); err != nil {
		tb.Errorf("%s is not valid against %s.schema.json: %v\n%s", what, name, err, doc)
	}
}

// ValidateFile is Validate for a file's contents.
func (s *Schemas) ValidateFile(tb testing.TB, name, path string) {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	s.Validate(tb, name, path, b)
}
