package credstore_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/tests/controlplane"
)

// TestLoadRefusesNonRegular is issue 24 item 4 for the credentials: Load
// read key.pem, cert.pem and ca.pem with os.ReadFile, so a FIFO in the
// current generation (or in a legacy pki_dir) hung verify, renew and
// bootstrap, and a device was read without bound. Each file is opened as a
// regular file without blocking and within credstore.MaxFile, and a refusal
// names the file.
func TestLoadRefusesNonRegular(t *testing.T) {
	f := newFixture(t)
	for _, layout := range []string{"generation", "legacy"} {
		for _, name := range []string{credstore.KeyFile, credstore.CertFile, credstore.CAFile} {
			for _, kind := range []string{"FIFO", "huge", "symlink"} {
				t.Run(layout+"/"+name+"/"+kind, func(t *testing.T) {
					dir := filepath.Join(t.TempDir(), "pki")
					var at string
					if layout == "generation" {
						gen, err := credstore.Save(dir, f.set(), time.Now(), nil)
						if err != nil {
							t.Fatal(err)
						}
						at = filepath.Join(gen, name)
					} else {
						l, err := f.pki.IssueClientCert(nodeID)
						if err != nil {
							t.Fatal(err)
						}
						if err := controlplane.WriteNodeCredentials("/", dir, l, f.pki.RootPEM()); err != nil {
							t.Fatal(err)
						}
						at = filepath.Join(dir, name)
					}
					os.Remove(at)
					var err error
					switch kind {
					case "FIFO":
						err = syscall.Mkfifo(at, 0o600)
					case "huge":
						err = os.WriteFile(at, []byte(strings.Repeat("A", credstore.MaxFile+1)), 0o600)
					case "symlink":
						other := filepath.Join(t.TempDir(), "elsewhere.pem")
						os.WriteFile(other, []byte("x"), 0o600)
						err = os.Symlink(other, at)
					}
					if err != nil {
						t.Fatal(err)
					}
					done := make(chan error, 1)
					go func() { _, err := credstore.Load(dir); done <- err }()
					select {
					case err = <-done:
					case <-time.After(30 * time.Second):
						t.Fatal("Load did not return: it blocks on what is in pki_dir")
					}
					if err == nil || !strings.Contains(err.Error(), name) {
						t.Fatalf("Load = %v, want a refusal naming %s", err, name)
					}
					if kind != "huge" && !errors.Is(err, system.ErrUnsafeFile) {
						t.Errorf("Load error %v is not a system.ErrUnsafeFile", err)
					}
					if kind == "huge" && !strings.Contains(err.Error(), "larger than") {
						t.Errorf("Load error %v does not say the file is too large", err)
					}
				})
			}
		}
	}
}
