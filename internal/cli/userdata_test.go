package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testToken = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJncHUtMDA0MiJ9.c2lnbmF0dXJlLW5vdC1yZWFs"

// TestUserdataOut: --out holds the token, so it ends 0600 whatever was
// there (an existing 0644 file included: it is replaced, not rewritten in
// place), and a symbolic link at --out is refused, naming it, with neither
// the link nor its target changed.
func TestUserdataOut(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(t *testing.T, out, outside string)
		code   int
		errHas string
	}{
		{"new file", func(t *testing.T, out, outside string) {}, 0, ""},
		{"existing 0644 file", func(t *testing.T, out, outside string) {
			os.WriteFile(out, []byte("old user-data\n"), 0o644)
			os.Chmod(out, 0o644)
		}, 0, ""},
		{"existing 0666 file", func(t *testing.T, out, outside string) {
			os.WriteFile(out, []byte("old\n"), 0o666)
			os.Chmod(out, 0o666)
		}, 0, ""},
		{"symlink to a file", func(t *testing.T, out, outside string) {
			if err := os.Symlink(outside, out); err != nil {
				t.Fatal(err)
			}
		}, 2, "not a regular file"},
		{"dangling symlink", func(t *testing.T, out, outside string) {
			if err := os.Symlink(outside+".new", out); err != nil {
				t.Fatal(err)
			}
		}, 2, "not a regular file"},
		{"directory", func(t *testing.T, out, outside string) { os.Mkdir(out, 0o755) }, 2, "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := filepath.Join(dir, "node.toml")
			tok := filepath.Join(dir, "token.jwt")
			os.WriteFile(cfg, []byte(hostsTestConfig), 0o644)
			os.WriteFile(tok, []byte(testToken+"\n"), 0o600)
			outsideDir := t.TempDir()
			outside := filepath.Join(outsideDir, "their-file")
			os.WriteFile(outside, []byte("theirs\n"), 0o644)
			out := filepath.Join(dir, "user-data.yaml")
			tt.setup(t, out, outside)
			before, _ := os.Lstat(out)

			var stdout, stderr bytes.Buffer
			code := Run(context.Background(), []string{"userdata", "--config", cfg, "--token-file", tok, "--out", out}, &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("exit %d, want %d: %s", code, tt.code, stderr.String())
			}
			if b, _ := os.ReadFile(outside); string(b) != "theirs\n" {
				t.Fatalf("a file outside was written: %q", b)
			}
			if _, err := os.Lstat(outside + ".new"); err == nil {
				t.Fatal("the dangling link's target was created")
			}
			if strings.Contains(stdout.String()+stderr.String(), testToken) {
				t.Fatal("the token was printed")
			}
			st, err := os.Lstat(out)
			if tt.code != 0 {
				if !strings.Contains(stderr.String(), tt.errHas) || !strings.Contains(stderr.String(), out) {
					t.Errorf("stderr does not name %s and say why: %s", out, stderr.String())
				}
				if err != nil || st.Mode() != before.Mode() {
					t.Errorf("%s changed from %v to %v (%v)", out, before.Mode(), st.Mode(), err)
				}
				return
			}
			if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
				t.Fatalf("--out is %v (%v), want a regular 0600 file", st.Mode(), err)
			}
			if b, _ := os.ReadFile(out); !strings.Contains(string(b), testToken) || !strings.HasPrefix(string(b), "#cloud-config") {
				t.Fatalf("--out holds %q", b)
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 3 {
				t.Errorf("temp files left next to --out: %v", ents)
			}
		})
	}
}
