package reliability

import (
	"bytes"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpuaas/provision/tests/controlplane"
)

// tokenParts are the pieces of a JWT that must never be written anywhere:
// the whole token, its payload and its signature.
func tokenParts(tok string) []string {
	p := strings.Split(tok, ".")
	return []string{tok, p[1], p[2]}
}

// leaks lists where any of secrets appears: in the outputs or in any file
// under root.
func leaks(t *testing.T, root string, secrets []string, outputs map[string]string) []string {
	var found []string
	for name, out := range outputs {
		for _, s := range secrets {
			if strings.Contains(out, s) {
				found = append(found, name)
			}
		}
	}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				found = append(found, p)
			}
		}
		return nil
	})
	return found
}

// TestSecretsTokenNeverWritten runs whole bootstraps, succeeding and failing
// (a token the CA refuses after seeing it, and one refused locally), with
// debug logs in text and JSON, plus verify, and asserts that the token (or
// its payload or signature) appears in no stdout, stderr or log line, and in
// no file left under the root: receipt, enrollment marker, state, temp files.
// The token file itself is excluded only while provision has not removed it.
func TestSecretsTokenNeverWritten(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	checked := 0
	for _, tc := range []struct {
		name string
		opts []controlplane.TokenOption
		exit int
	}{
		{"success", nil, 0},
		{"refused by the CA", []controlplane.TokenOption{controlplane.TokenUnknownKey()}, 20},
		{"refused locally", []controlplane.TokenOption{controlplane.TokenExpired()}, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, cp, "gpu-secret-"+strings.ReplaceAll(tc.name, " ", "-"), nil)
			tok := n.GiveToken(tc.opts...)
			cp.API.QueueTask(n.ID, controlplane.Task{Kind: "noop"})
			outs := map[string]string{}
			r := n.run(nil, "bootstrap", "--log-level", "debug")
			if r.Code != tc.exit {
				t.Fatalf("exit %d, want %d\n%s", r.Code, tc.exit, r)
			}
			outs["bootstrap stdout"], outs["bootstrap stderr"] = r.Stdout, r.Stderr
			rj := n.run(nil, "bootstrap", "--format", "json", "--log-format", "json", "--log-level", "debug")
			outs["json stdout"], outs["json stderr"] = rj.Stdout, rj.Stderr
			rv := n.run(nil, "verify", "--format", "json", "--log-level", "debug")
			outs["verify stdout"], outs["verify stderr"] = rv.Stdout, rv.Stderr
			// The token file is the one place the token may be (the
			// operator put it there); move it out of the way to scan the rest.
			if fileExists(n.Files.TokenPath) {
				if tc.exit == 0 {
					t.Error("the token file is still there after a successful enrollment")
				}
				os.Remove(n.Files.TokenPath)
			}
			if l := leaks(t, n.Files.Root, tokenParts(tok), outs); len(l) > 0 {
				t.Errorf("the token leaked into: %v", l)
			}
			checked += len(outs)
		})
	}
	t.Logf("secrets: 3 bootstraps (1 ok, 2 failing), %d outputs and every file under each root scanned, 0 leaks", checked)
}

// TestSecretsKeyModes: whatever modes existed before (a 0777 pki_dir, a
// umask of 0), the key ends 0600 and its directories 0700.
func TestSecretsKeyModes(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, "gpu-modes", nil)
	if err := os.MkdirAll(n.Files.PKIDir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(n.Files.PKIDir, 0o777)
	cp.API.QueueTask(n.ID, controlplane.Task{Kind: "noop"})
	r := n.bootstrap()
	wantExit(t, r, 0)
	checkKeyModes(t, n.Files.PKIDir)
	t.Logf("key modes: pki_dir 0777 before -> key 0600, directories 0700")
}

// TestSecretsInsecureSkipVerifyOnlyForPinnedRoot greps the module's non-test
// Go files: InsecureSkipVerify may appear only in internal/enroll, on the
// pinned root fetch, with its comment saying so.
func TestSecretsInsecureSkipVerifyOnlyForPinnedRoot(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	files, hits := 0, 0
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "vendor" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		files++
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if !strings.Contains(line, "InsecureSkipVerify") {
				continue
			}
			hits++
			rel, _ := filepath.Rel(root, p)
			// The product's one pinned root fetch, and the bench's floor
			// program doing the same step (tests/bench/floor: a measuring
			// tool that never ships).
			pinned := rel == filepath.Join("internal", "enroll", "enroll.go") || rel == filepath.Join("tests", "bench", "floor", "main.go")
			if !pinned || !strings.Contains(line, "pinned root fetch") {
				t.Errorf("%s:%d: InsecureSkipVerify outside the pinned root fetch: %s", rel, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if files < 20 {
		t.Fatalf("scanned only %d Go files from %s", files, root)
	}
	t.Logf("insecure-skip-verify: %d non-test Go files scanned, %d use(s), all on the pinned root fetch", files, hits)
}

// TestSecretsServerCertVerified: the node API's certificate is verified
// against ca.pem and the hostname. A certificate for another name from the
// right CA, and one for the right name from an unrelated CA, both fail at
// tls-server (exit 15) without a proof or a receipt.
func TestSecretsServerCertVerified(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	good, err := cp.CA.PKI().IssueServerCert(cp.API.Hostname(), net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	otherName, err := cp.CA.PKI().IssueServerCert("other.CP.internal", net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := cp.Unrelated.IssueServerCert(cp.API.Hostname(), net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer cp.API.SetServerCert(good.TLSCertificate())
	for name, leaf := range map[string]*controlplane.Leaf{"another hostname": otherName, "an unrelated CA": otherCA} {
		t.Run(name, func(t *testing.T) {
			n := newNode(t, cp, "gpu-tls-"+strings.Fields(name)[1], nil)
			cp.API.SetServerCert(leaf.TLSCertificate())
			r := n.bootstrap()
			wantExit(t, r, 15, "layer tls-server")
			if fileExists(filepath.Join(n.Files.StateDir, "receipt.json")) {
				t.Error("receipt written although the server certificate did not verify")
			}
		})
	}
	t.Logf("server-cert: 2 wrong server certificates, both refused at tls-server")
}
