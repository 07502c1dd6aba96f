// Package e2e runs the real provision binary against a real step-ca and a
// real mTLS node API (tests/controlplane), all on loopback, each node in its
// own throwaway --root.
//
// Why a built binary and not only cli.Run: cloud-init templates, systemd
// units and runbooks script against the process, so its exit codes, its
// stdout report and its stderr logs are the interface. A bug that only shows
// in the process (a flag default, a stray print, an exit code lost on the
// way out, a global set in a test binary but not in main) would pass an
// in-process test and fail on a node. TestMain builds ./cmd/provision once;
// every core case runs it as a subprocess with --root t.TempDir(), so
// nothing outside the temporary directories is read or written and no
// privileges are needed.
//
// Why a real CA: the failures this tool exists for (a token the CA burns on
// first use, a root that rotated under the nodes, a pinned fingerprint that
// no longer matches) only happen with step-ca's own behaviour. No case here
// replaces it.
//
// One control plane per test (per parallel subtest): starting one costs tens
// of milliseconds, faults and rotations stay local to their test, and no two
// enrollments ever reach the same step-ca at once. That last point matters
// under -race: step-ca v0.30.2's provisioner.Audiences.All appends to the
// shared Sign slice, a data race between concurrent token-authorised
// requests when the CA has more than one DNS name (as tests/controlplane's
// has). Within a test, concurrency on one CA is serialised by provision's
// own lock (see TestConcurrentBootstrapsEnrollOnce). Configs use a short
// bootstrap.deadline so a failing case cannot wait ten minutes. Every proof
// is a real long poll of at least one second (wait_timeout is whole
// seconds), so the cases spend most of their time waiting, not computing:
// unless -test.parallel is given, TestMain lets more of them wait at once
// than the machine has CPUs.
package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
)

var (
	// binary is the provision executable built by TestMain.
	binary string
	// moduleRoot is the directory holding go.mod.
	moduleRoot string
	// nodeSeq numbers node ids, so logs of parallel tests are told apart.
	nodeSeq atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	testenv.DefaultParallel(max(8, runtime.GOMAXPROCS(0)))
	var err error
	if moduleRoot, err = testenv.ModuleRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "provision-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if binary, err = testenv.BuildProvision(dir); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	// step-ca announces itself through the standard logger; the tests'
	// output is provision's.
	log.SetOutput(io.Discard)
	return m.Run()
}

// node is one node's --root with its config and token.
type node struct {
	t     testing.TB
	cp    *controlplane.ControlPlane
	id    string
	root  string
	cfg   controlplane.NodeConfig
	files controlplane.NodeFiles
	// tokens are every token this node was handed; none may ever appear in
	// the tool's output.
	tokens []string
}

// nodeOpt changes a node's config before it is written.
type nodeOpt func(*controlplane.NodeConfig)

// newNode prepares a fresh root for a unique node id on cp: config with a
// 15s bootstrap deadline, the default hosts file with user lines, and (if
// withToken) a fresh one-time token.
func newNode(t testing.TB, cp *controlplane.ControlPlane, withToken bool, opts ...nodeOpt) *node {
	t.Helper()
	n := &node{t: t, cp: cp, root: t.TempDir()}
	n.id = fmt.Sprintf("gpu-%04d", nodeSeq.Add(1))
	n.cfg = cp.NodeConfig(n.id)
	n.cfg.Bootstrap.Deadline = "15s"
	n.cfg.Bootstrap.RequestTimeout = "3s"
	for _, o := range opts {
		o(&n.cfg)
	}
	tok := ""
	if withToken {
		tok = n.mintToken()
	}
	files, err := controlplane.WriteNode(n.root, n.cfg, tok)
	if err != nil {
		t.Fatalf("writing node root: %v", err)
	}
	n.files = files
	return n
}

// mintToken mints a fresh token for the node and remembers it.
func (n *node) mintToken() string {
	n.t.Helper()
	tok, err := n.cp.Token(n.id)
	if err != nil {
		n.t.Fatalf("minting token: %v", err)
	}
	n.tokens = append(n.tokens, tok)
	return tok
}

// giveToken writes a fresh token into the node's token file.
func (n *node) giveToken() string {
	n.t.Helper()
	tok := n.mintToken()
	n.writeToken(tok)
	return tok
}

func (n *node) writeToken(tok string) {
	n.t.Helper()
	if err := controlplane.WriteToken(n.root, n.cfg.CA.TokenFile, tok); err != nil {
		n.t.Fatal(err)
	}
}

// rewriteConfig writes n.cfg again after the test changed it.
func (n *node) rewriteConfig() {
	n.t.Helper()
	b, err := n.cfg.TOML()
	if err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(n.files.ConfigPath, b, 0o644); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) path(nodePath string) string { return controlplane.InRoot(n.root, nodePath) }

func (n *node) keyPath() string  { return filepath.Join(n.files.PKIDir, "key.pem") }
func (n *node) certPath() string { return filepath.Join(n.files.PKIDir, "cert.pem") }
func (n *node) receiptPath() string {
	return filepath.Join(n.files.StateDir, "receipt.json")
}

// result is one run of the binary.
type result struct {
	args           []string
	code           int
	stdout, stderr string
	report         *report // set when run with --format json
}

// lastLine is the last non-empty line of stdout.
func (r result) lastLine() string {
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	return lines[len(lines)-1]
}

func (r result) String() string {
	return fmt.Sprintf("provision %s: exit %d\n--- stdout\n%s--- stderr\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// report is the JSON report as a script reads it: decoded independently of
// the product's types, so a renamed field fails here.
type report struct {
	OK          bool            `json:"ok"`
	Command     string          `json:"command"`
	NodeID      string          `json:"node_id"`
	FailedLayer string          `json:"failed_layer"`
	Owner       string          `json:"owner"`
	FailedCheck string          `json:"failed_check"`
	Summary     string          `json:"summary"`
	Remedy      string          `json:"remedy"`
	Transient   bool            `json:"transient"`
	Checks      []check         `json:"checks"`
	Task        json.RawMessage `json:"task"`
	ExitCode    *int            `json:"exit_code"`
}

type check struct {
	Name     string            `json:"name"`
	Layer    string            `json:"layer"`
	Owner    string            `json:"owner"`
	Status   string            `json:"status"`
	Message  string            `json:"message"`
	Remedy   string            `json:"remedy"`
	Evidence map[string]string `json:"evidence"`
}

// run runs the binary with args plus --root; it fails the test if a token
// this node was ever handed shows up in stdout or stderr, and decodes the
// JSON report when --format json is among args.
func (n *node) run(args ...string) result {
	n.t.Helper()
	args = append(args, "--root", n.root)
	r := runBinary(n.t, args...)
	for _, tok := range n.tokens {
		if strings.Contains(r.stdout, tok) || strings.Contains(r.stderr, tok) {
			n.t.Fatalf("a one-time token appears in the output of provision %s", strings.Join(args, " "))
		}
		// A token's signature part alone is just as secret.
		if parts := strings.Split(tok, "."); len(parts) == 3 && (strings.Contains(r.stdout, parts[2]) || strings.Contains(r.stderr, parts[2])) {
			n.t.Fatalf("a token signature appears in the output of provision %s", strings.Join(args, " "))
		}
	}
	return r
}

// runJSON runs cmd with --format json and requires a decodable report whose
// exit_code matches the process's.
func (n *node) runJSON(cmd string, extra ...string) result {
	n.t.Helper()
	r := n.run(append([]string{cmd, "--format", "json"}, extra...)...)
	var rep report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		n.t.Fatalf("stdout of --format json is not one JSON report: %v\n%s", err, r)
	}
	if rep.ExitCode == nil || *rep.ExitCode != r.code {
		n.t.Fatalf("report exit_code %v, process exit %d\n%s", rep.ExitCode, r.code, r)
	}
	r.report = &rep
	return r
}

func runBinary(t testing.TB, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{args: args, stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("running provision %s: %v\n%s", strings.Join(args, " "), err, r)
	}
	return r
}

// wantExit fails unless r exited with code.
func wantExit(t testing.TB, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit %d, got\n%s", code, r)
	}
}

// wantFailure checks a JSON report's failed layer, owner and exit code.
func wantFailure(t testing.TB, r result, code int, layer, owner string) {
	t.Helper()
	wantExit(t, r, code)
	rep := r.report
	if rep == nil {
		t.Fatal("wantFailure needs a --format json run")
	}
	if rep.OK || rep.FailedLayer != layer || (owner != "" && rep.Owner != owner) {
		t.Fatalf("want ok=false layer %s owner %s, got ok=%v layer %q owner %q\n%s", layer, owner, rep.OK, rep.FailedLayer, rep.Owner, r)
	}
	if rep.Summary == "" || rep.Remedy == "" {
		t.Fatalf("a failure must say what happened and what to do: summary %q remedy %q", rep.Summary, rep.Remedy)
	}
}

// receiptJSON is state_dir/receipt.json as the contract names its fields.
type receiptJSON struct {
	NodeID          string    `json:"node_id"`
	Serial          string    `json:"serial"`
	Issuer          string    `json:"issuer"`
	RootFingerprint string    `json:"root_fingerprint"`
	NotAfter        time.Time `json:"not_after"`
	Endpoint        string    `json:"endpoint"`
	ProvedAt        time.Time `json:"proved_at"`
}

func (n *node) receipt() receiptJSON {
	n.t.Helper()
	b, err := os.ReadFile(n.receiptPath())
	if err != nil {
		n.t.Fatalf("receipt: %v", err)
	}
	var rc receiptJSON
	if err := json.Unmarshal(b, &rc); err != nil {
		n.t.Fatalf("receipt.json: %v\n%s", err, b)
	}
	return rc
}

func (n *node) wantNoReceipt() {
	n.t.Helper()
	if _, err := os.Stat(n.receiptPath()); !errors.Is(err, fs.ErrNotExist) {
		n.t.Fatalf("receipt.json must not exist (stat: %v)", err)
	}
}

// entry is one file's observable state.
type entry struct {
	Mode    fs.FileMode
	Size    int64
	ModTime time.Time
	Link    string
}

// snapshot records every path under dir with its mode, size, mtime and
// symlink target.
func snapshot(t testing.TB, dir string) map[string]entry {
	t.Helper()
	m := map[string]entry{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := entry{Mode: fi.Mode(), ModTime: fi.ModTime()}
		if !fi.IsDir() {
			e.Size = fi.Size()
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			e.Link, _ = os.Readlink(p)
		}
		rel, _ := filepath.Rel(dir, p)
		m[rel] = e
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	return m
}

// diffSnapshots describes every difference between two snapshots.
func diffSnapshots(before, after map[string]entry) []string {
	var d []string
	for p, b := range before {
		a, ok := after[p]
		switch {
		case !ok:
			d = append(d, "removed "+p)
		case a != b:
			d = append(d, fmt.Sprintf("changed %s: %+v -> %+v", p, b, a))
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			d = append(d, "added "+p)
		}
	}
	return d
}

func perm(t testing.TB, p string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(p) // follows the stable symlinks, as the node-agent does
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// wantTokensNowhereBut fails if any file under the root other than allowed
// (host paths) holds one of the node's tokens or a token's signature: the
// token is never written anywhere but its own file.
func (n *node) wantTokensNowhereBut(allowed ...string) {
	n.t.Helper()
	ok := map[string]bool{}
	for _, a := range allowed {
		ok[a] = true
	}
	err := filepath.WalkDir(n.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&fs.ModeSymlink != 0 || ok[p] {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, tok := range n.tokens {
			sig := tok[strings.LastIndex(tok, ".")+1:]
			if strings.Contains(string(b), tok) || strings.Contains(string(b), sig) {
				n.t.Errorf("%s holds a one-time token", p)
			}
		}
		return nil
	})
	if err != nil {
		n.t.Fatal(err)
	}
}

// generations lists pki_dir's generation directories.
func generations(t testing.TB, pki string) []string {
	t.Helper()
	ents, err := os.ReadDir(pki)
	if err != nil {
		t.Fatal(err)
	}
	var g []string
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), "gen-") {
			g = append(g, e.Name())
		}
	}
	return g
}
