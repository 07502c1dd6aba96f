package hook_test

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/gpuaas/provision/internal/hook"
)

// FuzzSanitize: whatever a hook prints, what reaches the report is valid
// UTF-8 on one line with no control or format character left.
func FuzzSanitize(f *testing.F) {
	for _, s := range []string{"ok", "a\nb\r\nc", "\x1b[2J\x1b]0;title\a", "\u202e\u200b\ufeff", "\xff\xfe", "\x00\x7f\u0085"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := hook.Sanitize(in)
		if !utf8.ValidString(out) || strings.ContainsAny(out, "\n\r") {
			t.Fatalf("Sanitize(%q) = %q: not valid UTF-8 on one line", in, out)
		}
		for _, r := range out {
			if r != ' ' && r != utf8.RuneError && !unicode.IsPrint(r) {
				t.Fatalf("Sanitize(%q) = %q keeps %U", in, out, r)
			}
		}
	})
}
