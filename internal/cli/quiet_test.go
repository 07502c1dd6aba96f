package cli

import (
	"bytes"
	"strings"
	"testing"
)

// TestQuietFinalLineOnly: with -q or --quiet every command prints its
// final line only (the one naming the outcome, and for a failure the
// layer, owner, next step and exit code), with the same exit code as
// without; errors still reach stderr.
func TestQuietFinalLineOnly(t *testing.T) {
	hroot, _ := hostsRoot(t)
	missing := t.TempDir() // no config: layer config, exit 3
	tests := []struct {
		name     string
		args     []string
		code     int
		wantLine string // the quiet output's one line starts with it
	}{
		{"verify without config", []string{"verify", "--root", missing}, 3, "provision verify: FAILED at layer config (owner: node): "},
		{"status not enrolled", []string{"status", "--root", hroot}, 31, "provision status: unusable: not enrolled"},
		{"renew --check not enrolled", []string{"renew", "--check", "--root", hroot}, 31, "provision renew --check: "},
		{"hosts show without block", []string{"hosts", "show", "--root", hroot}, 10, "provision hosts show: FAILED at layer hosts (owner: node): "},
		{"version", []string{"version"}, 0, "provision " + Version()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			loud, _, code := run(tc.args...)
			if code != tc.code {
				t.Fatalf("without -q: exit %d, want %d\n%s", code, tc.code, loud)
			}
			for _, q := range []string{"-q", "--quiet"} {
				out, _, code := run(append(tc.args, q)...)
				if code != tc.code {
					t.Errorf("%s: exit %d, want %d", q, code, tc.code)
				}
				lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
				if len(lines) != 1 || !strings.HasPrefix(lines[0], tc.wantLine) || !strings.HasSuffix(out, "\n") {
					t.Errorf("%s: want one line starting %q, got:\n%s", q, tc.wantLine, out)
				}
				// The line is the loud output's last line (version's
				// outcome, the version, is its first).
				if !strings.HasSuffix(loud, lines[0]+"\n") && (tc.args[0] != "version" || !strings.HasPrefix(loud, lines[0]+"\n")) {
					t.Errorf("%s: %q is not the last line of the full output:\n%s", q, lines[0], loud)
				}
			}
		})
	}
	// The one-line JSON report is the same with -q.
	out, _, code := run("verify", "--root", missing, "--format", "json", "-q")
	oneJSONReport(t, out, code)
	if loud, _, _ := run("verify", "--root", missing, "--format", "json"); len(loud) != len(out) {
		t.Errorf("-q changed the JSON report:\n%s\n%s", loud, out)
	}
}

// TestQuietLogsErrorsOnly: -q keeps the error lines of the log and drops
// the rest, unless --log-level says otherwise.
func TestQuietLogsErrorsOnly(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		warn, err bool
	}{
		{nil, true, true},
		{[]string{"-q"}, false, true},
		{[]string{"--quiet"}, false, true},
		{[]string{"-q", "--log-level", "warn"}, true, true},
		{[]string{"--log-level", "warn", "--quiet"}, true, true},
	} {
		f := newFlags(verifyCmd, &runEnv{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}})
		if _, ok := f.parse(&runEnv{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}, tc.args); !ok {
			t.Fatalf("%v: did not parse", tc.args)
		}
		var b bytes.Buffer
		log := f.logger(&b, "gpu-0042")
		log.Warn("a warning")
		log.Error("an error")
		if got := strings.Contains(b.String(), "a warning"); got != tc.warn {
			t.Errorf("%v: warning logged %v, want %v:\n%s", tc.args, got, tc.warn, b.String())
		}
		if got := strings.Contains(b.String(), "an error"); got != tc.err {
			t.Errorf("%v: error logged %v, want %v:\n%s", tc.args, got, tc.err, b.String())
		}
	}
}

// TestQuietUsageErrorNamesTheFlag: a bad value for -q names -q, and for
// --quiet names --quiet (the help shows both); exit 2.
func TestQuietUsageErrorNamesTheFlag(t *testing.T) {
	for flag, want := range map[string]string{"-q=maybe": `invalid boolean value "maybe" for -q`, "--quiet=maybe": `invalid boolean value "maybe" for --quiet`, "-bogus": "flag provided but not defined: --bogus"} {
		_, errs, code := run("status", flag)
		if code != ExitUsage || !strings.Contains(errs, want) {
			t.Errorf("%s: exit %d, stderr %q, want %q", flag, code, errs, want)
		}
	}
}
