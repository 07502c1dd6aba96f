package testenv

import (
	"bytes"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

var manSpaces = regexp.MustCompile(`\s+`)

// RenderMan renders a man page (roff source) to plain text with the real
// groff, one very long line per paragraph and no hyphenation, so that text
// can be compared with the help it was generated from.
func RenderMan(tb testing.TB, roff []byte) string {
	tb.Helper()
	groff := RequireProgram(tb, "groff", "groff-base")
	cmd := exec.Command(groff, "-man", "-Tascii", "-P-cbou", "-rLL=2000n", "-rHY=0", "-ww")
	cmd.Stdin = bytes.NewReader(roff)
	var out, errs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errs
	if err := cmd.Run(); err != nil {
		tb.Fatalf("groff: %v\n%s", err, errs.String())
	}
	if errs.Len() > 0 {
		tb.Errorf("groff warned about the man page:\n%s", errs.String())
	}
	return out.String()
}

// MissingHelpLines returns the lines of help (a command's --help output)
// that the rendered man page does not contain, whitespace collapsed: the
// "Usage: " prefix and section headings ("Flags:", "Examples:", ...) are
// the page's own section names, everything else must be there word for
// word.
func MissingHelpLines(man, help string) []string {
	text := manSpaces.ReplaceAllString(man, " ")
	var missing []string
	for _, l := range strings.Split(help, "\n") {
		t := strings.TrimSpace(manSpaces.ReplaceAllString(l, " "))
		t = strings.TrimPrefix(t, "Usage: ")
		if t == "" || (!strings.HasPrefix(l, " ") && strings.HasSuffix(t, ":") && !strings.Contains(strings.TrimSuffix(t, ":"), ":")) {
			continue
		}
		if !strings.Contains(text, t) {
			missing = append(missing, t)
		}
	}
	return missing
}
