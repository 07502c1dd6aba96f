package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/internal/tasks"
	"github.com/gpuaas/provision/tests/controlplane"
)

// TestClaimDirKnowsEveryName: system.ClaimDir keeps its own list of the
// names provision writes; every writer's constant must be in it, or a run
// would refuse the directory the run before it left. A state_dir holding
// every record, lock and directory, with a pki_dir inside it as
// credstore.Save leaves it, is provision's own.
func TestClaimDirKnowsEveryName(t *testing.T) {
	stateDir := filepath.Join(t.TempDir(), "provision")
	os.MkdirAll(stateDir, 0o700)
	for _, f := range []string{LockFile, state.ReceiptFile, state.PendingFile, state.ExposedFile, state.RenewalFile, state.FailureFile, state.RevokeFile} {
		if err := os.WriteFile(filepath.Join(stateDir, f), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{state.DoneDir, tasks.Dir} {
		os.Mkdir(filepath.Join(stateDir, d), 0o700)
	}
	p, err := controlplane.NewPKI(t.TempDir(), controlplane.CAName)
	if err != nil {
		t.Fatal(err)
	}
	pki := filepath.Join(stateDir, "pki")
	for range 3 { // three generations: current, previous, and links between
		l, err := p.IssueClientCert("gpu-0042")
		if err != nil {
			t.Fatal(err)
		}
		set := &credstore.Set{Key: l.Key, Chain: []*x509.Certificate{l.Cert, l.Intermediate}, Roots: []*x509.Certificate{p.Root}}
		if _, err := credstore.Save(pki, set, time.Now(), nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{stateDir, pki} {
		if _, err := system.ClaimDir(d, false); err != nil {
			t.Errorf("ClaimDir(%s) refused a directory provision wrote: %v", d, err)
		}
	}
}

// tree digest: every path, mode, link and content under root.
func treeDigest(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, _ := os.Lstat(p)
		fmt.Fprintf(&b, "%s %v", strings.TrimPrefix(p, root), st.Mode())
		if st.Mode().IsRegular() {
			c, _ := os.ReadFile(p)
			fmt.Fprintf(&b, " %x", sha256.Sum256(c))
		}
		b.WriteString("\n")
		return nil
	})
	return b.String()
}

// TestCommandsRefuseForeignDirs is issue 24 item 1 through the commands:
// pki_dir = "/etc/pki", an existing 0755 directory holding ca.pem and
// cert.pem, was taken over by bootstrap (exit 0, the directory made 0700,
// ca.pem replaced by a link). Every command that writes or judges the
// directories refuses one that is not provision's own with a config error
// (exit 3) naming the key, the directory and what is foreign, and changes
// nothing; one of provision's names that is a FIFO is the state layer's.
func TestCommandsRefuseForeignDirs(t *testing.T) {
	withPaths := func(paths string) func(t *testing.T, root string) {
		return func(t *testing.T, root string) {
			cfg := jsonTestConfig + "[paths]\n" + paths
			if err := os.WriteFile(filepath.Join(root, "etc/provision/provision.toml"), []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	files := func(dir string, mode os.FileMode, names ...string) func(t *testing.T, root string) {
		return func(t *testing.T, root string) {
			d := filepath.Join(root, dir)
			os.MkdirAll(d, mode)
			os.Chmod(d, mode)
			for _, n := range names {
				os.WriteFile(filepath.Join(d, n), []byte("somebody's "+n+"\n"), 0o644)
			}
		}
	}
	tests := []struct {
		name  string
		setup []func(t *testing.T, root string)
		code  int
		layer string
		says  []string
	}{
		{"pki_dir a shared /etc/pki (the repro)", []func(*testing.T, string){withPaths(`pki_dir = "/etc/pki"` + "\n"), files("etc/pki", 0o755, "ca.pem", "cert.pem")},
			3, "config", []string{`paths.pki_dir = "/etc/pki"`, "ca.pem (a regular file: another program's credential", "not provision's own directory"}},
		{"pki_dir nginx's key and certificate (issue 31)", []func(*testing.T, string){withPaths(`pki_dir = "/etc/nginx/ssl"` + "\n"), files("etc/nginx/ssl", 0o755, "key.pem", "cert.pem")},
			3, "config", []string{`paths.pki_dir = "/etc/nginx/ssl"`, "key.pem (a regular file: another program's credential", "not provision's own directory"}},
		{"state_dir under a directory another user owns (issue 31)", []func(*testing.T, string){withPaths(`state_dir = "/srv/alice/provision"` + "\n"), files("srv/alice", 0o755), func(t *testing.T, root string) {
			os.Chown(filepath.Join(root, "srv/alice"), 1001, 1001)
		}}, 21, "state", []string{`paths.state_dir = "/srv/alice/provision"`, "/srv/alice/provision is in /srv/alice, which uid 1001 can write"}},
		{"pki_dir /etc/ssl", []func(*testing.T, string){withPaths(`pki_dir = "/etc/ssl"` + "\n"), files("etc/ssl", 0o755, "openssl.cnf"), files("etc/ssl/certs", 0o755, "ca-certificates.crt")},
			3, "config", []string{`paths.pki_dir = "/etc/ssl"`, "openssl.cnf", "certs (a directory holding ca-certificates.crt"}},
		{"state_dir a data directory", []func(*testing.T, string){withPaths(`state_dir = "/srv/data"` + "\n"), files("srv/data", 0o755, "db.sqlite")},
			3, "config", []string{`paths.state_dir = "/srv/data"`, "db.sqlite"}},
		{"the default state_dir with a stray file", []func(*testing.T, string){files("var/lib/provision", 0o700, "notes.txt")},
			3, "config", []string{`paths.state_dir = "/var/lib/provision"`, "notes.txt"}},
		{"a FIFO at renew.json", []func(*testing.T, string){files("var/lib/provision", 0o700), func(t *testing.T, root string) {
			if err := syscall.Mkfifo(filepath.Join(root, "var/lib/provision", state.RenewalFile), 0o600); err != nil {
				t.Fatal(err)
			}
		}}, 21, "state", []string{"renew.json is a FIFO"}},
	}
	for _, tt := range tests {
		for _, cmd := range [][]string{{"bootstrap"}, {"renew"}, {"renew", "--check"}, {"verify"}} {
			t.Run(tt.name+"/"+strings.Join(cmd, " "), func(t *testing.T) {
				root := jsonRoot(t)
				for _, s := range tt.setup {
					s(t, root)
				}
				// node_exporter's directory, outside the digest: a refused
				// run still leaves its metrics, but renew --check never does.
				prom := filepath.Join(root, "var/lib/prometheus/node-exporter")
				os.MkdirAll(prom, 0o755)
				before := treeDigest(t, filepath.Join(root, "etc")) + treeDigest(t, filepath.Join(root, "srv")) + treeDigest(t, filepath.Join(root, "var/lib/provision"))
				var out, errb bytes.Buffer
				args := append(append([]string{}, cmd...), "--format", "json", "--root", root)
				done := make(chan int, 1)
				go func() { done <- Run(context.Background(), args, &out, &errb) }()
				var code int
				select {
				case code = <-done:
				case <-time.After(60 * time.Second):
					t.Fatal("the command did not return")
				}
				if code != tt.code {
					t.Fatalf("exit %d, want %d\n%s%s", code, tt.code, out.String(), errb.String())
				}
				m := oneJSONReport(t, out.String(), code)
				if m["failed_layer"] != tt.layer {
					t.Errorf("failed_layer %v, want %s", m["failed_layer"], tt.layer)
				}
				for _, s := range tt.says {
					if !strings.Contains(m["summary"].(string), s) {
						t.Errorf("summary %q does not say %q", m["summary"], s)
					}
				}
				if after := treeDigest(t, filepath.Join(root, "etc")) + treeDigest(t, filepath.Join(root, "srv")) + treeDigest(t, filepath.Join(root, "var/lib/provision")); after != before {
					t.Errorf("the refused run changed the root:\n--- before\n%s--- after\n%s", before, after)
				}
				_, err := os.Stat(filepath.Join(prom, "provision_"+cmd[0]+".prom"))
				if check := len(cmd) > 1; check != os.IsNotExist(err) {
					t.Errorf("metrics after a refused %s: %v (renew --check writes none, the others always do)", strings.Join(cmd, " "), err)
				}
			})
		}
	}
}
