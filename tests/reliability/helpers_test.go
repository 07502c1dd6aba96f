package reliability

import (
	"bytes"
	"context"
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
)

// provisionBin is the crashpoints build of cmd/provision.
var provisionBin string

func TestMain(m *testing.M) {
	provisionBin = os.Getenv("RELIABILITY_PROVISION_BIN")
	var tmp string
	if provisionBin == "" {
		var err error
		tmp, err = os.MkdirTemp("", "reliability-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if provisionBin, err = testenv.BuildProvision(tmp, "crashpoints"); err != nil {
			fmt.Fprintln(os.Stderr, "reliability: building provision with -tags crashpoints:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if tmp != "" {
		os.RemoveAll(tmp)
	}
	os.Exit(code)
}

// needUnshare checks that `unshare -m` and mount work here.
func needUnshare(t testing.TB) {
	t.Helper()
	testenv.RequireProgram(t, "unshare", "util-linux")
	testenv.RequireProgram(t, "mount", "mount")
	out, err := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs tmpfs /mnt 2>&1 || mount -t tmpfs tmpfs /tmp 2>&1").CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("unshare -m with mount does not work here (%v: %s)", err, out)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED LOUDLY: " + msg)
	}
}

// node is one --root directory configured against a control plane.
type node struct {
	t     testing.TB
	cp    *controlplane.ControlPlane
	id    string
	cfg   controlplane.NodeConfig
	files controlplane.NodeFiles
}

const machineID = "0123456789abcdef0123456789abcdef"

// fastConfig is the control plane's config with a proof long poll that
// answers at once (wait_timeout below 1s is sent as ?timeout=0).
func fastConfig(cp *controlplane.ControlPlane, id string) controlplane.NodeConfig {
	c := cp.NodeConfig(id)
	c.NodeAPI.WaitTimeout = "500ms"
	c.Bootstrap.Deadline = "20s"
	c.Bootstrap.RequestTimeout = "3s"
	return c
}

// newNode prepares a root for id with a fresh token and an /etc/machine-id.
func newNode(t testing.TB, cp *controlplane.ControlPlane, id string, mutate func(*controlplane.NodeConfig)) *node {
	t.Helper()
	cfg := fastConfig(cp, id)
	if mutate != nil {
		mutate(&cfg)
	}
	root := t.TempDir()
	tok, err := cp.Token(id)
	if err != nil {
		t.Fatal(err)
	}
	files, err := controlplane.WriteNode(root, cfg, tok)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/machine-id"), []byte(machineID+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	return &node{t: t, cp: cp, id: id, cfg: cfg, files: files}
}

// writeConfig rewrites the config file from n.cfg.
func (n *node) writeConfig() {
	n.t.Helper()
	b, err := n.cfg.TOML()
	if err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(n.files.ConfigPath, b, 0o644); err != nil {
		n.t.Fatal(err)
	}
}

// freshToken mints a token and writes it to the token file.
func (n *node) freshToken(opts ...controlplane.TokenOption) string {
	n.t.Helper()
	tok, err := n.cp.Token(n.id, opts...)
	if err != nil {
		n.t.Fatal(err)
	}
	if err := controlplane.WriteToken(n.files.Root, n.cfg.CA.TokenFile, tok); err != nil {
		n.t.Fatal(err)
	}
	return tok
}

type result struct {
	code           int
	killed         bool // died of SIGKILL
	stdout, stderr string
	took           time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("exit %d (killed %v)\n--- stdout\n%s--- stderr\n%s", r.code, r.killed, r.stdout, r.stderr)
}

// lastLine is the last non-empty line of stdout, or of stderr when stdout
// has none: the line a person acts on.
func (r result) lastLine() string {
	for _, s := range []string{r.stdout, r.stderr} {
		ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
		for i := len(ls) - 1; i >= 0; i-- {
			if strings.TrimSpace(ls[i]) != "" {
				return ls[i]
			}
		}
	}
	return ""
}

// runBin runs the provision binary with args and extra environment.
func runBin(ctx context.Context, env []string, args ...string) result {
	cmd := exec.CommandContext(ctx, provisionBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			r.killed = true
		}
	} else if err != nil {
		r.code = -1
		r.stderr += err.Error()
	}
	return r
}

// run runs `provision <cmd> --root <root> [args]`; cmd may hold a
// subcommand ("hosts apply").
func (n *node) run(env []string, cmd string, args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	return runBin(ctx, env, append(append(strings.Fields(cmd), "--root", n.files.Root), args...)...)
}

func (n *node) bootstrap(env ...string) result { return n.run(env, "bootstrap") }

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
