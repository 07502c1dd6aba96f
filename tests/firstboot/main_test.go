// Package firstboot proves the first-boot and recovery paths an operator
// follows, with the real provision binary against a real step-ca and a real
// mTLS node API (tests/controlplane) on loopback, each node in its own
// throwaway --root.
//
// Why these tests exist apart from tests/e2e: e2e proves that the tool
// behaves; this package proves that what we TELL people to do works.
// docs/runbook.md quotes error texts and commands; a runbook whose quoted
// symptom no longer appears, or whose "check to confirm" no longer selects
// anything, fails the on-call engineer exactly when it matters (the 2026-03
// incident lost hours to error texts that did not mean what they seemed to).
// So TestRunbookWalk reads the runbook itself, breaks the control plane the
// way a section describes, runs that section's own commands (the jq filters
// are executed by the real jq, as on a node), checks the quoted symptom is
// in the report, applies the section's fix and runs its proof.
//
// TestReinstall covers the reinstall workflow of the runbook and of
// docs/first-boot.md: same node_id, fresh token, with a fresh disk or with
// the old disk kept under a new /etc/machine-id, and the done marker that
// the unit's ConditionPathExists=!/var/lib/provision/done/%m keys on.
//
// TestUserdataCommand checks `provision userdata` output with the real
// `cloud-init schema` and the product's own config parser.
//
// TestMain builds ./cmd/provision once (with -race when the tests have it).
// Programs a user would have (jq, cloud-init) are required: missing, a test
// skips loudly on a developer machine and fails when CI=true.
package firstboot

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
)

var (
	binary     string // the provision executable built by TestMain
	moduleRoot string // the directory holding go.mod
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	flag.Parse()
	// The cases spend their time in real one-second long polls, not on the
	// CPU: unless -test.parallel is given, let more of them wait at once
	// than the machine has CPUs.
	testenv.DefaultParallel(max(16, runtime.GOMAXPROCS(0)))
	var err error
	if moduleRoot, err = testenv.ModuleRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "firstboot:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "provision-firstboot-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "firstboot:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if binary, err = testenv.BuildProvision(dir); err != nil {
		fmt.Fprintf(os.Stderr, "firstboot: %v\n", err)
		return 1
	}
	// step-ca logs through the standard logger; keep test output readable.
	log.SetOutput(io.Discard)
	return m.Run()
}

// node is one node's --root with its config; tokens are every token it was
// handed (none may ever appear in the tool's output).
type node struct {
	t      *testing.T
	cp     *controlplane.ControlPlane
	id     string
	root   string
	cfg    controlplane.NodeConfig
	files  controlplane.NodeFiles
	tokens []string
}

// newNode prepares root for nodeID on cp with a fresh token, a short
// bootstrap deadline, and, when machineID is not empty, /etc/machine-id.
func newNode(t *testing.T, cp *controlplane.ControlPlane, root, nodeID, machineID string) *node {
	t.Helper()
	n := &node{t: t, cp: cp, id: nodeID, root: root}
	n.cfg = cp.NodeConfig(nodeID)
	n.cfg.Bootstrap.Deadline = "8s"
	n.cfg.Bootstrap.RequestTimeout = "3s"
	files, err := controlplane.WriteNode(root, n.cfg, n.mintToken())
	if err != nil {
		t.Fatalf("writing node root: %v", err)
	}
	n.files = files
	if machineID != "" {
		n.setMachineID(machineID)
	}
	return n
}

func (n *node) mintToken() string {
	n.t.Helper()
	tok, err := n.cp.Token(n.id)
	if err != nil {
		n.t.Fatalf("minting token: %v", err)
	}
	n.tokens = append(n.tokens, tok)
	return tok
}

// giveToken delivers a fresh one-time token to the node's token file.
func (n *node) giveToken() {
	n.t.Helper()
	if err := controlplane.WriteToken(n.root, n.cfg.CA.TokenFile, n.mintToken()); err != nil {
		n.t.Fatal(err)
	}
}

// rewriteConfig writes n.cfg again, as re-rendered user-data would.
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

func (n *node) setMachineID(id string) {
	n.t.Helper()
	p := controlplane.InRoot(n.root, "/etc/machine-id")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(id+"\n"), 0o444); err != nil {
		n.t.Fatal(err)
	}
}

// donePath is the host path of state_dir/done/<machineID>, the file the
// unit's ConditionPathExists=!/var/lib/provision/done/%m tests.
func (n *node) donePath(machineID string) string {
	return filepath.Join(n.files.StateDir, "done", machineID)
}

// result is one run of the binary.
type result struct {
	args           []string
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("provision %s: exit %d\n--- stdout\n%s--- stderr\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// run runs provision with args and --root; a token in the output fails the
// test.
func (n *node) run(args ...string) result {
	n.t.Helper()
	r := runBinary(n.t, nil, append(args, "--root", n.root)...)
	n.noTokenIn(r.stdout + r.stderr)
	return r
}

func (n *node) noTokenIn(s string) {
	n.t.Helper()
	for _, tok := range n.tokens {
		sig := tok[strings.LastIndex(tok, ".")+1:]
		if strings.Contains(s, tok) || strings.Contains(s, sig) {
			n.t.Fatal("a one-time token appears in provision's output")
		}
	}
}

// verify runs `provision verify --format json` and decodes the report.
func (n *node) verify() (result, report) {
	n.t.Helper()
	r := n.run("verify", "--format", "json")
	return r, decodeReport(n.t, r)
}

func runBinary(t *testing.T, stdin io.Reader, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	var out, errb strings.Builder
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
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

func wantExit(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit %d, got\n%s", code, r)
	}
}

// report is the JSON report decoded independently of the product's types,
// with the field names the runbook tells operators to use.
type report struct {
	OK          bool    `json:"ok"`
	Command     string  `json:"command"`
	FailedLayer string  `json:"failed_layer"`
	Owner       string  `json:"owner"`
	Summary     string  `json:"summary"`
	Checks      []check `json:"checks"`
	ExitCode    *int    `json:"exit_code"`
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

func decodeReport(t *testing.T, r result) report {
	t.Helper()
	var rep report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("stdout of --format json is not one JSON report: %v\n%s", err, r)
	}
	if rep.ExitCode == nil || *rep.ExitCode != r.code {
		t.Fatalf("report exit_code %v, process exit %d\n%s", rep.ExitCode, r.code, r)
	}
	return rep
}

// layerChecks returns the report's checks in layer.
func (rep report) layerChecks(layer string) []check {
	var cs []check
	for _, c := range rep.Checks {
		if c.Layer == layer {
			cs = append(cs, c)
		}
	}
	return cs
}

// text is everything an operator reads about a layer: messages and
// evidence values of its checks.
func (rep report) text(layer string) string {
	var b strings.Builder
	for _, c := range rep.layerChecks(layer) {
		b.WriteString(c.Message + "\n")
		for k, v := range c.Evidence {
			b.WriteString(k + ": " + v + "\n")
		}
	}
	return b.String()
}

type receiptJSON struct {
	NodeID    string    `json:"node_id"`
	Serial    string    `json:"serial"`
	Issuer    string    `json:"issuer"`
	ProvedAt  time.Time `json:"proved_at"`
	MachineID string    `json:"machine_id"`
}

func (n *node) receipt() receiptJSON {
	n.t.Helper()
	b, err := os.ReadFile(filepath.Join(n.files.StateDir, "receipt.json"))
	if err != nil {
		n.t.Fatalf("receipt: %v", err)
	}
	var rc receiptJSON
	if err := json.Unmarshal(b, &rc); err != nil {
		n.t.Fatalf("receipt.json: %v\n%s", err, b)
	}
	return rc
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
