package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// manyUnknownKeys is the repro of issue 12 item 9: a valid config followed by
// n unknown top-level keys (45,000 of them make about 485 KB, under the
// 1 MiB cap). Before the line index, every key rescanned the whole file:
// 47 s of CPU and a 4 MB error line.
func manyUnknownKeys(n int) []byte {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "k%05d = 1\n", i)
	}
	return []byte(b.String() + with(nil))
}

func TestParseManyUnknownKeys(t *testing.T) {
	const n = 45000
	data := manyUnknownKeys(n)
	if len(data) < 400<<10 || len(data) > maxConfigBytes {
		t.Fatalf("repro is %d bytes, want about 485 KB and under the 1 MiB cap", len(data))
	}
	path := filepath.Join(t.TempDir(), "provision.toml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("Load = %v, want *config.Error", err)
	}
	if len(ce.Problems) != n {
		t.Fatalf("%d problems, want every one of the %d unknown keys", len(ce.Problems), n)
	}
	for i, p := range ce.Problems[:3] {
		if want := fmt.Sprintf("k%05d", i); p.Key != want || p.Line != i+1 || p.Msg != "unknown key" {
			t.Fatalf("problem %d = %+v, want %s on line %d", i, p, want, i+1)
		}
	}
	if last := ce.Problems[n-1]; last.Line != n {
		t.Fatalf("last problem %+v, want line %d", last, n)
	}
	msg := err.Error()
	if len(msg) > 2048 {
		t.Fatalf("error is %d bytes, want a short line: %.300s...", len(msg), msg)
	}
	if got := strings.Count(msg, "unknown key"); got != MaxShownProblems {
		t.Fatalf("error lists %d problems, want the first %d", got, MaxShownProblems)
	}
	if want := fmt.Sprintf("; and %d more problems", n-MaxShownProblems); !strings.HasSuffix(msg, want) {
		t.Fatalf("error does not end with %q: %s", want, msg)
	}
	if strings.Contains(msg, "\n") {
		t.Fatalf("error spans lines")
	}
}

// BenchmarkLoadManyUnknownKeys times the 45,000-unknown-key repro: with the
// line index this is tens of milliseconds; it was 47 s.
func BenchmarkLoadManyUnknownKeys(b *testing.B) {
	path := filepath.Join(b.TempDir(), "provision.toml")
	if err := os.WriteFile(path, manyUnknownKeys(45000), 0o600); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(path); err == nil {
			b.Fatal("accepted")
		}
	}
}

func TestErrorCapsProblems(t *testing.T) {
	long := strings.Repeat("é", 1000)
	tests := []struct {
		name     string
		problems []Problem
		want     string
	}{
		{"one", []Problem{{Key: "a", Line: 1, Msg: "x"}}, "config p: a (line 1): x"},
		{"exactly the cap", repeatProblems(MaxShownProblems), "config p: " + strings.TrimSuffix(strings.Repeat("k (line 1): x; ", MaxShownProblems), "; ")},
		{"one over the cap", repeatProblems(MaxShownProblems + 1), "config p: " + strings.Repeat("k (line 1): x; ", MaxShownProblems) + "and 1 more problems"},
		{"a problem as long as the file is clipped on a rune boundary", []Problem{{Key: "node_id", Line: 1, Msg: long}},
			"config p: " + clip("node_id (line 1): "+long, maxProblemLen)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := (&Error{Path: "p", Problems: tt.problems}).Error()
			if got != tt.want {
				t.Fatalf("Error() =\n%q\nwant\n%q", got, tt.want)
			}
			if len(got) > 10+MaxShownProblems*(maxProblemLen+len("…; "))+len("and 999999 more problems") {
				t.Fatalf("error is %d bytes", len(got))
			}
		})
	}
	c := clip("node_id (line 1): "+long, maxProblemLen)
	if len(c) > maxProblemLen+len("…") || !strings.HasSuffix(c, "é…") {
		t.Fatalf("clip = %q (%d bytes)", c, len(c))
	}
}

func repeatProblems(n int) []Problem {
	ps := make([]Problem, n)
	for i := range ps {
		ps[i] = Problem{Key: "k", Line: 1, Msg: "x"}
	}
	return ps
}

// scanKeyLine is the line search as it was before the index: one scan of the
// file per key. It is kept as the reference the index must agree with.
func scanKeyLine(data []byte, key string) int {
	table, leaf, index := "", key, -1
	if i := strings.LastIndex(key, "."); i >= 0 {
		table, leaf = key[:i], key[i+1:]
	}
	if i := strings.Index(table, "["); i >= 0 {
		fmt.Sscanf(table[i:], "[%d]", &index)
		table = table[:i]
	}
	cur, count := "", -1
	for n, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		if strings.HasPrefix(line, "[") {
			name := strings.Trim(strings.SplitN(line, "#", 2)[0], "[] \t")
			cur = name
			if name == table && strings.HasPrefix(line, "[[") {
				count++
			}
			if name == key {
				return n + 1
			}
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k = strings.Trim(strings.TrimSpace(k), `"'`)
		if cur == table && k == leaf && (index < 0 || count == index) {
			return n + 1
		}
		if table != "" && cur == "" && k == key {
			return n + 1
		}
	}
	if table != "" {
		count := -1
		for n, raw := range strings.Split(string(data), "\n") {
			line := strings.TrimSpace(raw)
			if !strings.HasPrefix(line, "[") || strings.Trim(strings.SplitN(line, "#", 2)[0], "[] \t") != table {
				continue
			}
			count++
			if index < 0 || index == count {
				return n + 1
			}
		}
		return scanKeyLine(data, table)
	}
	return 0
}

func TestLineIndexMatchesScan(t *testing.T) {
	inputs := []string{
		with(nil),
		"",
		with(map[int]string{6: "[[hosts]]\nname = \"b\"\n[hosts]\nip = \"x\"\n[[hosts]]\nip = \"y\"", 17: "", 18: "", 19: "", 20: ""}),
		with(map[int]string{2: `paths = { state_dir = "s", hosts_file = "h" }`, 17: ``, 18: ``, 19: ``, 20: ``}),
		with(map[int]string{2: `paths.pki_dir = "p"`, 22: `[bootstrp]  # typo`}),
		"node_id = \"a\"\n[extra]\nx = 1\n[extra.sub]\n'x' = 2\n\"ca.url\" = 3\n[[hosts]]\n[[hosts]]\nname = \"n\"\n",
		"[ca]\nurl = [\n  [1, 2],\n]\nfingerprint = 1\n[[hosts]]\nip = 1\n",
		string(manyUnknownKeys(50)),
	}
	keys := append([]string(nil), knownKeys()...)
	keys = append(keys, "extra", "extra.x", "extra.sub", "extra.sub.x", "ca.url", "bootstrp", "bootstrp.deadline",
		"k00001", "k00049", "paths", "nope", "nope.deeper.key")
	for i := range 4 {
		keys = append(keys, fmt.Sprintf("hosts[%d]", i), fmt.Sprintf("hosts[%d].name", i), fmt.Sprintf("hosts[%d].ip", i))
	}
	for n, in := range inputs {
		ix := newLineIndex([]byte(in))
		for _, k := range keys {
			if got, want := ix.line(k), scanKeyLine([]byte(in), k); got != want {
				t.Errorf("input %d, key %q: index says line %d, scan says %d", n, k, got, want)
			}
		}
	}
}
