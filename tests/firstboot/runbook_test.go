package firstboot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/nodetest"
)

// section is one layer's section of docs/runbook.md: the text of each of
// its bullets (Symptom, Owner, Confirm, Fix, Prove).
type section struct {
	name    string
	bullets map[string]string
}

var bulletRe = regexp.MustCompile(`^- \*\*([A-Za-z]+)\.\*\*`)

// readRunbook parses docs/runbook.md into its "## name" sections.
func readRunbook(t *testing.T) map[string]section {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot, "docs", "runbook.md"))
	if err != nil {
		t.Fatal(err)
	}
	secs := map[string]section{}
	var cur *section
	bullet := ""
	for _, line := range strings.Split(string(b), "\n") {
		if name, ok := strings.CutPrefix(line, "## "); ok {
			s := section{name: strings.TrimSpace(name), bullets: map[string]string{}}
			secs[s.name] = s
			cur, bullet = &s, ""
			continue
		}
		if cur == nil {
			continue
		}
		if line == "---" {
			cur, bullet = nil, ""
			continue
		}
		if m := bulletRe.FindStringSubmatch(line); m != nil {
			bullet = m[1]
			line = strings.TrimPrefix(line, m[0])
		} else if strings.HasPrefix(line, "- ") && !strings.HasPrefix(line, "  ") {
			bullet = ""
		}
		if bullet != "" {
			cur.bullets[bullet] += line + "\n"
		}
	}
	return secs
}

// bullet returns a bullet's text or fails: a section without it is a
// runbook that no longer has the shape on-call relies on.
func (s section) bullet(t *testing.T, name string) string {
	t.Helper()
	b, ok := s.bullets[name]
	if !ok || strings.TrimSpace(b) == "" {
		t.Fatalf("runbook section %q has no **%s.** bullet", s.name, name)
	}
	return b
}

// codeSpans returns the inline `code` spans and the lines of ``` blocks of
// markdown text, in order. As in Markdown, an inline span may run over a
// line break (which reads as one space); escaped backticks (\`) are literal.
func codeSpans(md string) []string {
	var spans []string
	var prose []string
	flush := func() {
		text := strings.Join(prose, " ")
		prose = nil
		var cur strings.Builder
		in := false
		for i := 0; i < len(text); i++ {
			c := text[i]
			if c == '\\' && i+1 < len(text) && text[i+1] == '`' {
				if in {
					cur.WriteByte('`')
				}
				i++
				continue
			}
			if c == '`' {
				if in {
					spans = append(spans, cur.String())
					cur.Reset()
				}
				in = !in
				continue
			}
			if in {
				cur.WriteByte(c)
			}
		}
	}
	inBlock := false
	for _, line := range strings.Split(md, "\n") {
		trim := strings.TrimSpace(line)
		if strings.HasPrefix(trim, "```") {
			flush()
			inBlock = !inBlock
			continue
		}
		switch {
		case inBlock && trim != "":
			spans = append(spans, trim)
		case !inBlock:
			prose = append(prose, trim)
		}
	}
	flush()
	return spans
}

// commands are the code spans of md that a node-side shell can run here:
// provision, jq and curl command lines (comments after # dropped). Others
// (openssl against the live host, getent, timedatectl, systemctl) need the
// real system and are left to the operator.
func commands(md string) []string {
	var cmds []string
	for _, s := range codeSpans(md) {
		s = strings.TrimSpace(s)
		if i := strings.Index(s, "  #"); i >= 0 {
			s = strings.TrimSpace(s[:i])
		}
		f := strings.Fields(s)
		if len(f) < 3 && f[0] == "provision" {
			// "`provision verify` passes `x`", "`provision bootstrap`
			// exits 0": prose, checked by parseProofs; a fix names the
			// command itself (walk.fixCommand).
			continue
		}
		switch f[0] {
		case "provision", "jq", "curl":
			cmds = append(cmds, s)
		}
	}
	return cmds
}

// proofs are the runbook's prose proofs: "`provision verify` passes `x`"
// (the layers named) and "`provision verify` exits 0".
type proofs struct {
	passes      []string
	verifyOK    bool
	bootstrapOK bool
}

var passesRe = regexp.MustCompile("`provision verify` passes ((?:`[a-z-]+`(?:,? and |, )?)+)")

func parseProofs(md string) proofs {
	md = strings.Join(strings.Fields(md), " ")
	var p proofs
	for _, m := range passesRe.FindAllStringSubmatch(md, -1) {
		p.passes = append(p.passes, codeSpans(m[1])...)
	}
	p.verifyOK = strings.Contains(md, "`provision verify` exits 0")
	p.bootstrapOK = strings.Contains(md, "`provision bootstrap` exits 0")
	return p
}

// symptomIn reports whether the runbook's quoted symptom appears in text.
// "..." in the quote stands for text the tool fills in (an address, a
// reason); "(line N)" matches any line number.
func symptomIn(quote, text string) bool {
	norm := func(s string) string { return lineNoRe.ReplaceAllString(s, "(line N)") }
	quote, text = norm(quote), norm(text)
	for _, part := range strings.Split(quote, "...") {
		i := strings.Index(text, part)
		if i < 0 {
			return false
		}
		text = text[i+len(part):]
	}
	return true
}

var lineNoRe = regexp.MustCompile(`\(line [0-9N]+\)`)

// shell runs runbook command lines the way an operator would, with sh, on a
// node whose root is n.Root: `provision` is a wrapper adding --root, `curl`
// one that connects node-api.cp.internal:8443 (the runbook's port) to the
// test API's loopback port, and node paths in other commands are rebased
// under the root.
type shell struct {
	n    *node
	dir  string
	path string
}

func newShell(n *node, needCurl bool) *shell {
	n.T.Helper()
	jq := testenv.RequireProgram(n.T, "jq", "jq") // the runbook's checks are jq filters over the JSON report
	sh := &shell{n: n, dir: n.T.TempDir()}
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(sh.dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			n.T.Fatal(err)
		}
	}
	write("provision", fmt.Sprintf("exec %q \"$@\" --root %q", nodetest.Binary, n.Root))
	write("jq", fmt.Sprintf("exec %q \"$@\"", jq))
	if needCurl {
		curl := testenv.RequireProgram(n.T, "curl", "curl") // the runbook proves tls-client-auth with curl
		write("curl", fmt.Sprintf("exec %q --connect-to %s:8443:127.0.0.1:%d \"$@\"", curl, n.CP.API.Hostname(), n.CP.API.Port()))
	}
	sh.path = sh.dir + string(os.PathListSeparator) + os.Getenv("PATH")
	return sh
}

// rebase rewrites the node paths of a non-provision command line.
func (sh *shell) rebase(line string) string {
	if strings.HasPrefix(line, "provision ") {
		return line // provision re-roots its own paths
	}
	for _, p := range []string{"/var/lib/provision", "/run/provision", "/etc/provision"} {
		line = strings.ReplaceAll(line, p, filepath.Join(sh.n.Root, p))
	}
	return line
}

// run runs one runbook command line with sh and returns its exit status and
// stdout. A token in the output fails the test.
func (sh *shell) run(line string) (int, string) {
	t := sh.n.T
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", sh.rebase(line))
	cmd.Dir = sh.dir
	cmd.Env = append(os.Environ(), "PATH="+sh.path)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	sh.n.NoTokenIn(out.String()+errb.String(), "sh -c "+strconv.Quote(line))
	code := 0
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		code = ee.ExitCode()
	default:
		t.Fatalf("sh -c %q: %v\n%s", line, err, errb.String())
	}
	t.Logf("$ %s\n-> exit %d\n%s", line, code, out.String())
	return code, out.String()
}

// jsonText flattens a stream of JSON values (jq's output) into the strings
// they hold, unescaped, one a line; text that is not JSON is returned as is.
func jsonText(out string) string {
	dec := json.NewDecoder(strings.NewReader(out))
	var b strings.Builder
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			b.WriteString(v + "\n")
		case map[string]any:
			for k, x := range v {
				b.WriteString(k + ": ")
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		default:
			fmt.Fprintf(&b, "%v\n", v)
		}
	}
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			return b.String()
		}
		if err != nil {
			return out
		}
		walk(v)
	}
}
