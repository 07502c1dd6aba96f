package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/jose"
)

// testToken is a one-time token for hostsTestConfig's node and CA, shaped
// as step-ca mints them (userdata cannot check the signature, so any key
// signs it), valid from now for 5 minutes.
var testToken = mintToken(tokenClaims{sub: "gpu-0042", aud: "https://ca.cp.internal:9000/1.0/sign", exp: time.Now().Add(5 * time.Minute)})

// tokenClaims are the claims of a minted test token; a zero exp leaves it
// out.
type tokenClaims struct {
	sub, aud, sha string
	exp, nbf      time.Time
}

// mintToken signs c as a JWK provisioner's one-time token would be.
func mintToken(c tokenClaims) string {
	key, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		panic(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key.Key}, new(jose.SignerOptions).WithType("JWT"))
	if err != nil {
		panic(err)
	}
	claims := struct {
		jose.Claims
		SHA  string   `json:"sha,omitempty"`
		SANs []string `json:"sans"`
	}{Claims: jose.Claims{Subject: c.sub, Issuer: "provision-tests", ID: "test-" + c.sub, Audience: jose.Audience{c.aud}}, SHA: c.sha, SANs: []string{c.sub}}
	if !c.exp.IsZero() {
		claims.Expiry = jose.NewNumericDate(c.exp)
	}
	if !c.nbf.IsZero() {
		claims.NotBefore = jose.NewNumericDate(c.nbf)
	}
	tok, err := jose.Signed(signer).Claims(claims).CompactSerialize()
	if err != nil {
		panic(err)
	}
	return tok
}

// TestUserdataToken: userdata embeds only a token that can enroll this
// node at this CA; any other is refused with exit 20 and one line naming
// the token file and what is wrong, never the token, and --out is not
// written.
func TestUserdataToken(t *testing.T) {
	const aud = "https://ca.cp.internal:9000/1.0/sign"
	now := time.Now()
	soon := now.Add(5 * time.Minute)
	fp := "8a273a9a13a3e237d8558b8cefadee4a752b94a957e6b2a63cb2fd2ba70bb504"
	for _, tc := range []struct {
		name   string
		token  string
		code   int
		errHas string
	}{
		{"good", mintToken(tokenClaims{sub: "gpu-0042", aud: aud, exp: soon}), 0, ""},
		{"good, sha claim is the fingerprint", mintToken(tokenClaims{sub: "gpu-0042", aud: aud, exp: soon, sha: fp}), 0, ""},
		{"good, audience on another port and /sign", mintToken(tokenClaims{sub: "gpu-0042", aud: "https://CA.cp.internal/sign", exp: soon}), 0, ""},
		{"garbage", "not-a-token", 20, "not a one-time token"},
		{"three parts, not a JWT", "aaa.bbb.ccc", 20, "not a one-time token"},
		{"another node's", mintToken(tokenClaims{sub: "gpu-0043", aud: aud, exp: soon}), 20, `the token is for subject "gpu-0043", but node_id is "gpu-0042"`},
		{"expired", mintToken(tokenClaims{sub: "gpu-0042", aud: aud, exp: now.Add(-5 * time.Minute), nbf: now.Add(-10 * time.Minute)}), 20, "the token expired at"},
		{"no expiry", mintToken(tokenClaims{sub: "gpu-0042", aud: aud}), 20, "no expiry"},
		{"another CA's audience", mintToken(tokenClaims{sub: "gpu-0042", aud: "https://ca.other.internal:9000/1.0/sign", exp: soon}), 20, "not for this CA's sign endpoint"},
		{"an audience that is not a sign endpoint", mintToken(tokenClaims{sub: "gpu-0042", aud: "https://ca.cp.internal:9000/1.0/revoke", exp: soon}), 20, "not for this CA's sign endpoint"},
		{"another root pinned", mintToken(tokenClaims{sub: "gpu-0042", aud: aud, exp: soon, sha: strings.Repeat("ab", 32)}), 20, "minted for another CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, tok, out := filepath.Join(dir, "node.toml"), filepath.Join(dir, "token.jwt"), filepath.Join(dir, "user-data.yaml")
			os.WriteFile(cfg, []byte(hostsTestConfig), 0o644)
			os.WriteFile(tok, []byte(tc.token+"\n"), 0o600)
			var stdout, stderr bytes.Buffer
			code := Run(context.Background(), []string{"userdata", "--config", cfg, "--token-file", tok, "--out", out}, &stdout, &stderr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, stderr.String())
			}
			if strings.Contains(stdout.String()+stderr.String(), tc.token) {
				t.Fatal("the token was printed")
			}
			_, statErr := os.Stat(out)
			if tc.code == 0 {
				if statErr != nil {
					t.Fatalf("--out not written: %v", statErr)
				}
				return
			}
			if statErr == nil {
				t.Errorf("a refused token was written to --out")
			}
			// The one error shape: the error's line, then the hint's.
			lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
			if len(lines) != 2 || !strings.HasPrefix(lines[0], "provision: error: ") || !strings.Contains(lines[0], tok) || !strings.Contains(lines[0], tc.errHas) ||
				!strings.HasPrefix(lines[1], "provision: hint: mint a fresh one-time token") {
				t.Errorf("stderr is not an error line naming %s and %q, then the hint:\n%s", tok, tc.errHas, stderr.String())
			}
		})
	}
}

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
