package reliability

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

func TestMain(m *testing.M) {
	// This binary, started again by controlplane.StartReplica, is a
	// step-ca replica (TestTokenSingleUseAcrossReplicas).
	controlplane.RunReplicaIfAsked()
	// The crashpoints build: PROVISION_CRASH_AT=<step> makes it SIGKILL
	// itself at that crash point.
	os.Exit(testenv.RunWithBinary(m, "reliability", os.Getenv("RELIABILITY_PROVISION_BIN"),
		func(bin string) { nodetest.Binary = bin }, "crashpoints"))
}

// needUnshare checks that `unshare -m` and mount work here.
func needUnshare(t testing.TB) {
	t.Helper()
	testenv.RequireProgram(t, "unshare", "util-linux")
	testenv.RequireProgram(t, "mount", "mount")
	out, err := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs tmpfs /mnt 2>&1 || mount -t tmpfs tmpfs /tmp 2>&1").CombinedOutput()
	if err != nil {
		testenv.SkipOrFail(t, "unshare -m with mount does not work here (%v: %s)", err, out)
	}
}

// node is one --root directory configured against a control plane
// (tests/nodetest), run the way these tests run it: with extra environment
// (PROVISION_CRASH_AT) and tolerating a SIGKILL.
type node struct{ *nodetest.Node }

const machineID = "0123456789abcdef0123456789abcdef"

// fastConfig makes the proof's long poll answer at once (wait_timeout
// below 1s is sent as ?timeout=0) within a 20s deadline.
func fastConfig(c *controlplane.NodeConfig) {
	c.NodeAPI.WaitTimeout = "500ms"
	c.Bootstrap.Deadline = "20s"
	c.Bootstrap.RequestTimeout = "3s"
}

// newNode prepares a root for id with a fresh token and an /etc/machine-id.
func newNode(t testing.TB, cp *controlplane.ControlPlane, id string, mutate func(*controlplane.NodeConfig)) *node {
	t.Helper()
	cfg := []func(*controlplane.NodeConfig){fastConfig}
	if mutate != nil {
		cfg = append(cfg, mutate)
	}
	return &node{nodetest.New(t, cp, t.TempDir(), id, nodetest.Configure(cfg...), nodetest.MachineID(machineID))}
}

// run runs `provision <cmd> [args] --root <root>` with extra environment;
// cmd may hold a subcommand ("hosts apply").
func (n *node) run(env []string, cmd string, args ...string) nodetest.Result {
	n.T.Helper()
	return n.RunEnv(env, append(strings.Fields(cmd), args...)...)
}

func (n *node) bootstrap(env ...string) nodetest.Result { return n.run(env, "bootstrap") }

// killAfter runs `provision <args> --root <root>` and sends it SIGKILL after
// delay, unless it finished first; it reports whether the kill landed.
func (n *node) killAfter(delay time.Duration, args ...string) (nodetest.Result, bool) {
	cmd := exec.Command(nodetest.Binary, append(args, "--root", n.Files.Root)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		n.T.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-time.After(delay):
			cmd.Process.Signal(syscall.SIGKILL)
		case <-done:
		}
	}()
	cmd.Wait()
	close(done)
	r := nodetest.Result{Stdout: out.String(), Stderr: errb.String(), Code: cmd.ProcessState.ExitCode()}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	r.Killed = ws.Signaled() && ws.Signal() == syscall.SIGKILL
	return r, r.Killed
}

// credsState reads the credentials the way the node-agent would, through the
// stable links, and the way provision does, through "current".
type credsState struct {
	none     bool   // no credentials at all
	partial  string // stable links incomplete (first install interrupted)
	mismatch string // a key that does not match its certificate
	serial   string
}

func readCreds(pkiDir string) credsState {
	var s credsState
	set, err := credstore.Load(pkiDir)
	switch {
	case err != nil && strings.Contains(err.Error(), credstore.ErrNotFound.Error()):
		s.none = true
	case err != nil:
		s.mismatch = "current set unreadable: " + err.Error()
		return s
	case !set.KeyMatches():
		s.mismatch = "key through current does not match cert"
		return s
	default:
		s.serial = set.Leaf().SerialNumber.String()
	}
	// The stable paths the node-agent opens.
	key, kerr := os.ReadFile(filepath.Join(pkiDir, credstore.KeyFile))
	cert, cerr := os.ReadFile(filepath.Join(pkiDir, credstore.CertFile))
	switch {
	case kerr != nil && cerr != nil:
		if !s.none {
			s.partial = "current exists but no stable links yet"
		}
	case kerr != nil || cerr != nil:
		s.partial = fmt.Sprintf("only one of key.pem/cert.pem resolves (key err %v, cert err %v)", kerr, cerr)
		if s.none {
			s.mismatch = "a stable key or cert without any current set"
		}
	default:
		pair, err := tlsPair(cert, key)
		if err != nil {
			s.mismatch = "stable key.pem does not match cert.pem: " + err.Error()
		} else if s.none {
			s.mismatch = "stable links resolve but Load found nothing"
		} else if pair != s.serial {
			s.mismatch = fmt.Sprintf("stable links name serial %s, current names %s", pair, s.serial)
		}
	}
	return s
}

// snapshot is every file under a root: path -> content hash, mode, link.
type snapshot map[string]string

func takeSnapshot(t testing.TB, root string) snapshot {
	t.Helper()
	s := snapshot{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			s[rel] = "link " + l
		case info.IsDir():
			s[rel] = fmt.Sprintf("dir %v", info.Mode().Perm())
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			s[rel] = fmt.Sprintf("file %v %s", info.Mode().Perm(), hex.EncodeToString(sum[:8]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// lost lists entries of before that are missing or changed in after
// (entries only in after are new files, not losses).
func lost(before, after snapshot) []string {
	var out []string
	for k, v := range before {
		if after[k] != v {
			out = append(out, fmt.Sprintf("%s: %q -> %q", k, v, after[k]))
		}
	}
	sort.Strings(out)
	return out
}

// tempLeftovers lists provision temp files under root: its own prefix and
// renameio's ".<name><digits>" files and directories.
func tempLeftovers(root string) []string {
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		name := d.Name()
		if strings.HasPrefix(name, ".provision-tmp-") {
			out = append(out, p)
		}
		if strings.HasPrefix(name, ".") && name != ".lock" && p != root {
			trimmed := strings.TrimRight(name, "0123456789")
			if len(trimmed) < len(name) && len(trimmed) > 1 {
				out = append(out, p)
			}
		}
		return nil
	})
	return out
}

// proofSeen reports whether the node API answered a tasks/wait of node with
// 200 or 204 to a caller presenting node's certificate.
func proofSeen(cp *controlplane.ControlPlane, id string) int {
	n := 0
	for _, r := range cp.API.Requests() {
		if r.PeerCN == id && strings.Contains(r.Path, "/"+id+"/") && (r.Status == 200 || r.Status == 204) {
			n++
		}
	}
	return n
}

// tlsPair loads cert and key as a pair and returns the leaf's serial.
func tlsPair(cert, key []byte) (string, error) {
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		return "", err
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return "", err
	}
	return leaf.SerialNumber.String(), nil
}

func readFile(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
