package config

import (
	"bytes"
	"flag"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

var update = flag.Bool("update", false, "rewrite docs/configuration.md's generated key table")

// decoderKeys walks the struct the decoder fills and returns each key as
// the table names it ("hosts[].name"), with the Go type of its field.
func decoderKeys(t reflect.Type, prefix string, out map[string]reflect.Type) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if !f.IsExported() || tag == "" || tag == "-" {
			continue
		}
		name := prefix + tag
		switch {
		case f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(Duration{}):
			decoderKeys(f.Type, name+".", out)
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
			out[name] = f.Type
			decoderKeys(f.Type.Elem(), name+"[].", out)
		default:
			out[name] = f.Type
		}
	}
}

// kindOf is the Go type each kind decodes into.
var kindOf = map[Kind]reflect.Type{
	KindString: reflect.TypeOf(""), KindPath: reflect.TypeOf(""), KindDir: reflect.TypeOf(""),
	KindDuration: reflect.TypeOf(Duration{}), KindBool: reflect.TypeOf(false), KindFloat: reflect.TypeOf(0.0),
	KindArgv: reflect.TypeOf([]string{}), KindTables: reflect.TypeOf([]Host{}),
}

// TestKeyTableMatchesTheDecoder: every key the decoder accepts is in the
// table with the kind of its field, and every key of the table decodes; a
// key whose field the table names points at that very field.
func TestKeyTableMatchesTheDecoder(t *testing.T) {
	dec := map[string]reflect.Type{}
	decoderKeys(reflect.TypeOf(Config{}), "", dec)
	var c Config
	for _, k := range Keys {
		typ, ok := dec[k.Name]
		if !ok {
			t.Errorf("the key table has %s, which the config does not decode", k.Name)
			continue
		}
		delete(dec, k.Name)
		if kindOf[k.Kind] != typ {
			t.Errorf("%s: kind %q, but the field is a %s", k.Name, k.Kind, typ)
		}
		if k.field == nil && !strings.Contains(k.Name, "[]") {
			t.Errorf("%s: no field: defaults and ranges could not reach it", k.Name)
		}
		if k.field != nil && reflect.TypeOf(k.field(&c)).Elem() != typ {
			t.Errorf("%s: field points at a %T", k.Name, k.field(&c))
		}
	}
	for name := range dec {
		t.Errorf("the config decodes %s, which the key table lacks (validation, docs/configuration.md and provision.toml(5) would not know it)", name)
	}
}

// TestKeyTableParses: every default, example and bound of the table is a
// value of its key's kind, and a bound pair is ordered around the default.
func TestKeyTableParses(t *testing.T) {
	for _, k := range Keys {
		for what, v := range map[string]string{"default": k.Default, "min": k.Min, "max": k.Max} {
			if v == "" {
				continue
			}
			var m map[string]any
			if _, err := toml.Decode("v = "+v, &m); err != nil {
				t.Errorf("%s: %s %s is not TOML: %v", k.Name, what, v, err)
				continue
			}
			switch k.Kind {
			case KindDuration:
				if _, ok := durationBound(v); !ok {
					t.Errorf("%s: %s %s is not a duration", k.Name, what, v)
				}
			case KindFloat:
				if _, ok := floatBound(v); !ok {
					t.Errorf("%s: %s %s is not a number", k.Name, what, v)
				}
			}
		}
		if (k.Min == "") != (k.Max == "") {
			t.Errorf("%s: a range needs both ends", k.Name)
		}
		if k.Required && k.Default != "" {
			t.Errorf("%s: required with a default", k.Name)
		}
	}
}

// minimal is the smallest valid config, as a TOML document of tables.
const minimal = `node_id = "gpu-0042"
[[hosts]]
name = "node-api.cp.internal"
ip = "10.40.0.10"
[ca]
url = "https://ca.cp.internal:9000"
fingerprint = "` + fp + `"
[node_api]
url = "https://node-api.cp.internal:8443"
`

// withKey returns minimal with the dotted key set to a TOML value ("" removes
// the key instead), re-encoded so the key sits in its table; more pairs of
// key and value may follow.
func withKey(t *testing.T, key, value string, more ...string) []byte {
	t.Helper()
	var doc map[string]any
	if _, err := toml.Decode(minimal, &doc); err != nil {
		t.Fatal(err)
	}
	setKey(t, doc, key, value)
	for i := 0; i+1 < len(more); i += 2 {
		setKey(t, doc, more[i], more[i+1])
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(doc); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func setKey(t *testing.T, doc map[string]any, key, value string) {
	t.Helper()
	parts := strings.Split(key, ".")
	tbl := doc
	for _, p := range parts[:len(parts)-1] {
		sub, ok := tbl[p].(map[string]any)
		if !ok {
			sub = map[string]any{}
			tbl[p] = sub
		}
		tbl = sub
	}
	leaf := parts[len(parts)-1]
	if value == "" {
		delete(tbl, leaf)
	} else {
		var v map[string]any
		if _, err := toml.Decode("v = "+value, &v); err != nil {
			t.Fatalf("%s = %s: %v", key, value, err)
		}
		tbl[leaf] = v["v"]
	}
}

// companions are what the code checks beyond the table (config.go): the
// wait_timeout must stay shorter than the deadline, and every network
// timeout and the hook's must fit in it, so testing one end of a range
// moves the other keys out of the way.
var companions = map[string][]string{
	"node_api.wait_timeout":     {"bootstrap.deadline", `"24h"`},
	"bootstrap.deadline":        {"node_api.wait_timeout", `"0s"`, "bootstrap.request_timeout", `"100ms"`},
	"bootstrap.request_timeout": {"bootstrap.deadline", `"24h"`},
	"renew.post_hook_timeout":   {"bootstrap.deadline", `"24h"`},
}

// TestKeyTableDefaults: a key left out takes exactly the table's default
// (the value docs/configuration.md and the man page show), and the file
// writing that default gives the same config.
func TestKeyTableDefaults(t *testing.T) {
	left, err := Parse("minimal", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Keys {
		if k.Default == "" || k.field == nil {
			continue
		}
		written, err := Parse("written", withKey(t, k.Name, k.Default))
		if err != nil {
			t.Errorf("%s = %s (the table's default) is refused: %v", k.Name, k.Default, err)
			continue
		}
		got, want := reflect.ValueOf(k.field(left)).Elem().Interface(), reflect.ValueOf(k.field(written)).Elem().Interface()
		if f, ok := k.exact.(float64); ok {
			want = f
			if d := written.Renew.Fraction - f; d > 0.0001 || d < -0.0001 {
				t.Errorf("%s: the table shows %s for %v", k.Name, k.Default, f)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s left out is %v, the table's default %s gives %v", k.Name, got, k.Default, want)
		}
		if left.Written(k.Name) || !written.Written(k.Name) {
			t.Errorf("%s: Written says %v left out, %v written", k.Name, left.Written(k.Name), written.Written(k.Name))
		}
	}
}

// TestKeyTableRanges: each end of a key's range is accepted, and a value
// just beyond it is one problem on that key naming the range.
func TestKeyTableRanges(t *testing.T) {
	for _, k := range Keys {
		if k.Min == "" {
			continue
		}
		var inside, outside []string
		switch k.Kind {
		case KindDuration:
			lo, _ := durationBound(k.Min)
			hi, _ := durationBound(k.Max)
			inside = []string{k.Min, k.Max}
			outside = []string{`"` + (lo - time.Nanosecond).String() + `"`, `"` + (hi + time.Millisecond).String() + `"`}
		case KindFloat:
			inside = []string{k.Min, k.Max}
			outside = []string{k.Min + "e-1", k.Max + "1"}
		default:
			t.Fatalf("%s: a range on a %s", k.Name, k.Kind)
		}
		for _, v := range inside {
			if _, err := Parse("inside", withKey(t, k.Name, v, companions[k.Name]...)); err != nil {
				t.Errorf("%s = %s (an end of its range) is refused: %v", k.Name, v, err)
			}
		}
		for _, v := range outside {
			probs := parseProblems(t, string(withKey(t, k.Name, v, companions[k.Name]...)))
			want := "must be between " + unquote(k.Min) + " and " + unquote(k.Max)
			if len(probs) != 1 || probs[0].Key != k.Name || !strings.Contains(probs[0].Msg, want) {
				t.Errorf("%s = %s: %v, want one problem saying %q", k.Name, v, probs, want)
			}
		}
	}
}

// TestKeyTableRequired: leaving out a required key is a problem naming it;
// an optional one left out is none.
func TestKeyTableRequired(t *testing.T) {
	for _, k := range Keys {
		if strings.Contains(k.Name, "[]") {
			continue // inside [[hosts]]: TestHostIPs and TestParseBad
		}
		src := withKey(t, k.Name, "")
		c, err := Parse("without", src)
		switch {
		case k.Required && err == nil:
			t.Errorf("%s is required, but a config without it is accepted", k.Name)
		case k.Required:
			if probs := err.(*Error).Problems; !slices.ContainsFunc(probs, func(p Problem) bool { return p.Key == k.Name }) {
				t.Errorf("without %s: %v, none names it", k.Name, probs)
			}
		case err != nil || c == nil:
			t.Errorf("%s is optional, but a config without it is refused: %v", k.Name, err)
		}
	}
}

// TestKeyTableEmptyStrings: an optional string key written as "" is refused
// naming the default it does not mean.
func TestKeyTableEmptyStrings(t *testing.T) {
	for _, k := range Keys {
		if k.Default == "" || kindOf[k.Kind] != reflect.TypeOf("") {
			continue
		}
		probs := parseProblems(t, string(withKey(t, k.Name, `""`)))
		if len(probs) != 1 || probs[0].Key != k.Name || !strings.Contains(probs[0].Msg, "leave the key out for the default "+k.Default) {
			t.Errorf("%s = \"\": %v", k.Name, probs)
		}
	}
}

// TestConfigurationDocIsGenerated: the key table in docs/configuration.md is
// Markdown() of the table, byte for byte. -update rewrites it.
func TestConfigurationDocIsGenerated(t *testing.T) {
	const path = "../../docs/configuration.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	start, end := strings.Index(doc, MarkdownStart), strings.Index(doc, MarkdownEnd)
	if start < 0 || end < start {
		t.Fatalf("%s lacks the generated block (%q ... %q)", path, MarkdownStart, MarkdownEnd)
	}
	want := doc[:start] + MarkdownStart + "\n" + Markdown() + doc[end:]
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if doc != want {
		t.Errorf("%s's key table is not the key table's (internal/config/keys.go): run go test ./internal/config -run TestConfigurationDocIsGenerated -update", path)
	}
}

// TestConfigurationDocCatchesDrift proves the check above can fail.
func TestConfigurationDocCatchesDrift(t *testing.T) {
	md := Markdown()
	saved := Keys[9].Default
	Keys[9].Default = `"2s"`
	defer func() { Keys[9].Default = saved }()
	if Markdown() == md {
		t.Fatal("a changed default does not change the generated table")
	}
}
