// Package nodetest is the one harness the binary-level suites (tests/e2e,
// tests/firstboot, tests/reliability) use to run the real provision binary
// as a node would: a throwaway --root prepared by tests/controlplane, the
// one-time tokens the node was handed, the process's exit code, stdout and
// stderr, and the JSON report decoded as a script decodes it.
//
// Why one harness: each suite used to carry its own copy, and the copies had
// drifted (one timed out after 60s, one after 90s; one checked for a leaked
// token and one did not). A run must mean the same thing in every suite, and
// the check that no token (nor its signature part alone) ever appears in
// provision's output must not be something a suite can forget: every
// Node.Run and Node.RunEnv makes it, for every token the node was ever
// handed.
//
// Why Report and Check are declared here and not taken from the product:
// they are the JSON report as cloud-init scripts and runbooks read it. Decoded
// independently of internal/verify and internal/cli, a renamed or dropped
// field fails the suites instead of moving silently with the code.
//
// Each suite's TestMain builds the binary (internal/testenv.BuildProvision)
// and sets Binary before m.Run.
package nodetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
)

// Binary is the provision executable every run executes; each suite's
// TestMain sets it once.
var Binary string

// RunTimeout bounds one run of the binary. It is far above any configured
// bootstrap deadline in the suites: a run that reaches it is a hang, and
// is killed so the test fails instead of the whole package timing out.
const RunTimeout = 90 * time.Second

// Node is one node's --root with its config, its files and every token it
// was handed.
type Node struct {
	T     testing.TB
	CP    *controlplane.ControlPlane
	ID    string
	Root  string
	Cfg   controlplane.NodeConfig
	Files controlplane.NodeFiles

	// tokens are every token this node was handed; none may ever appear in
	// the tool's output.
	tokens []string
}

// Option changes how New prepares a node.
type Option func(*options)

type options struct {
	configure []func(*controlplane.NodeConfig)
	machineID string
	noToken   bool
	token     *string
}

// Configure changes the node's config before it is written. Several apply
// in order.
func Configure(f ...func(*controlplane.NodeConfig)) Option {
	return func(o *options) { o.configure = append(o.configure, f...) }
}

// Deadline sets bootstrap.deadline and bootstrap.request_timeout, so a
// failing case cannot wait the default ten minutes.
func Deadline(deadline, requestTimeout string) Option {
	return Configure(func(c *controlplane.NodeConfig) {
		c.Bootstrap.Deadline = deadline
		c.Bootstrap.RequestTimeout = requestTimeout
	})
}

// MachineID writes /etc/machine-id under the root.
func MachineID(id string) Option { return func(o *options) { o.machineID = id } }

// NoToken writes no token file.
func NoToken() Option { return func(o *options) { o.noToken = true } }

// Token writes tok as the node's token instead of minting a fresh one (a
// token handed to another node before, say). It counts as handed to this
// node: it may not appear in this node's output either.
func Token(tok string) Option { return func(o *options) { o.token = &tok } }

// New prepares root for nodeID on cp: cp's config for the node changed by
// the options, the default hosts file with user lines, and a fresh one-time
// token unless NoToken or Token says otherwise.
func New(t testing.TB, cp *controlplane.ControlPlane, root, nodeID string, opts ...Option) *Node {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	n := &Node{T: t, CP: cp, ID: nodeID, Root: root, Cfg: cp.NodeConfig(nodeID)}
	for _, f := range o.configure {
		f(&n.Cfg)
	}
	tok := ""
	switch {
	case o.token != nil:
		tok = *o.token
		n.tokens = append(n.tokens, tok)
	case !o.noToken:
		tok = n.MintToken()
	}
	files, err := controlplane.WriteNode(root, n.Cfg, tok)
	if err != nil {
		t.Fatalf("writing node root: %v", err)
	}
	n.Files = files
	if o.machineID != "" {
		n.SetMachineID(o.machineID)
	}
	return n
}

// Tokens are every token the node was handed, oldest first.
func (n *Node) Tokens() []string { return append([]string(nil), n.tokens...) }

// MintToken mints a fresh token for the node and remembers it, without
// writing it anywhere.
func (n *Node) MintToken(opts ...controlplane.TokenOption) string {
	n.T.Helper()
	tok, err := n.CP.Token(n.ID, opts...)
	if err != nil {
		n.T.Fatalf("minting token: %v", err)
	}
	n.tokens = append(n.tokens, tok)
	return tok
}

// GiveToken mints a fresh token and writes it into the node's token file,
// as the control plane delivers one.
func (n *Node) GiveToken(opts ...controlplane.TokenOption) string {
	n.T.Helper()
	tok := n.MintToken(opts...)
	n.WriteToken(tok)
	return tok
}

// WriteToken writes tok into the node's token file. A token the test wants
// checked against the output must come from MintToken or Token.
func (n *Node) WriteToken(tok string) {
	n.T.Helper()
	if err := controlplane.WriteToken(n.Root, n.Cfg.CA.TokenFile, tok); err != nil {
		n.T.Fatal(err)
	}
}

// RewriteConfig writes n.Cfg again after the test changed it, as
// re-rendered user-data would.
func (n *Node) RewriteConfig() {
	n.T.Helper()
	if err := controlplane.WriteConfig(n.Files, n.Cfg); err != nil {
		n.T.Fatal(err)
	}
}

// SetMachineID writes /etc/machine-id under the root.
func (n *Node) SetMachineID(id string) {
	n.T.Helper()
	p := n.Path("/etc/machine-id")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		n.T.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(id+"\n"), 0o444); err != nil {
		n.T.Fatal(err)
	}
}

// Path is the host path of nodePath under the node's root.
func (n *Node) Path(nodePath string) string { return controlplane.InRoot(n.Root, nodePath) }

// KeyPath is pki_dir/key.pem on the host.
func (n *Node) KeyPath() string { return filepath.Join(n.Files.PKIDir, "key.pem") }

// CertPath is pki_dir/cert.pem on the host.
func (n *Node) CertPath() string { return filepath.Join(n.Files.PKIDir, "cert.pem") }

// ReceiptPath is state_dir/receipt.json on the host.
func (n *Node) ReceiptPath() string { return filepath.Join(n.Files.StateDir, "receipt.json") }

// DonePath is the host path of state_dir/done/<machineID>, the file the
// unit's ConditionPathExists=!/var/lib/provision/done/%m tests.
func (n *Node) DonePath(machineID string) string {
	return filepath.Join(n.Files.StateDir, "done", machineID)
}

// Run runs the binary with args plus --root. It fails the test if the
// process cannot be run or dies of a signal, and if a token the node was
// ever handed, or its signature part, appears in stdout or stderr.
func (n *Node) Run(args ...string) Result {
	n.T.Helper()
	r := RunBinary(n.T, append(args, "--root", n.Root)...)
	n.NoTokenIn(r.Stdout+r.Stderr, "provision "+strings.Join(r.Args, " "))
	return r
}

// RunEnv is Run with extra environment (KEY=value) for a run that may be
// killed on purpose: a process that dies of a signal is returned (Killed
// set for SIGKILL) instead of failing the test. The token check still
// applies.
func (n *Node) RunEnv(env []string, args ...string) Result {
	n.T.Helper()
	r := run(n.T, env, true, append(args, "--root", n.Root)...)
	n.NoTokenIn(r.Stdout+r.Stderr, "provision "+strings.Join(r.Args, " "))
	return r
}

// RunVia is Run through a wrapper program that execs the binary (setpriv
// --bounding-set=-chown, say: the binary under a sandbox as a unit would
// run it): wrapper[0] is run with wrapper[1:], the binary and args.
func (n *Node) RunVia(wrapper []string, args ...string) Result {
	n.T.Helper()
	r := runVia(n.T, wrapper, nil, false, append(args, "--root", n.Root)...)
	n.NoTokenIn(r.Stdout+r.Stderr, "provision "+strings.Join(r.Args, " "))
	return r
}

// RunJSON runs cmd with --format json (and extra) and requires stdout to be
// one decodable report whose exit_code matches the process's.
func (n *Node) RunJSON(cmd string, extra ...string) Result {
	n.T.Helper()
	r := n.Run(append([]string{cmd, "--format", "json"}, extra...)...)
	var rep Report
	if err := json.Unmarshal([]byte(r.Stdout), &rep); err != nil {
		n.T.Fatalf("stdout of --format json is not one JSON report: %v\n%s", err, r)
	}
	if rep.ExitCode == nil || *rep.ExitCode != r.Code {
		n.T.Fatalf("report exit_code %v, process exit %d\n%s", rep.ExitCode, r.Code, r)
	}
	r.Report = &rep
	return r
}

// NoTokenIn fails the test if out, the output of source (a command line),
// holds a token the node was handed or a token's signature part: the
// signature alone is just as secret.
func (n *Node) NoTokenIn(out, source string) {
	n.T.Helper()
	for _, tok := range n.tokens {
		if tok != "" && strings.Contains(out, tok) {
			n.T.Fatalf("a one-time token appears in the output of %s", source)
		}
		if parts := strings.Split(tok, "."); len(parts) == 3 && parts[2] != "" && strings.Contains(out, parts[2]) {
			n.T.Fatalf("a token signature appears in the output of %s", source)
		}
	}
}

// Result is one run of the binary.
type Result struct {
	Args           []string
	Code           int
	Killed         bool // died of SIGKILL (only RunEnv returns such a run)
	Stdout, Stderr string
	Took           time.Duration
	Report         *Report // set by RunJSON
}

// LastLine is the last line of stdout, where the text report puts the
// line a script or an operator acts on.
func (r Result) LastLine() string {
	lines := strings.Split(strings.TrimRight(r.Stdout, "\n"), "\n")
	return lines[len(lines)-1]
}

// LastOutputLine is the last non-blank line of stdout, or of stderr when
// stdout has none: the line a person reading the console acts on, whichever
// stream it came on.
func (r Result) LastOutputLine() string {
	for _, s := range []string{r.Stdout, r.Stderr} {
		ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
		for i := len(ls) - 1; i >= 0; i-- {
			if strings.TrimSpace(ls[i]) != "" {
				return ls[i]
			}
		}
	}
	return ""
}

func (r Result) String() string {
	killed := ""
	if r.Killed {
		killed = " (killed by SIGKILL)"
	}
	return fmt.Sprintf("provision %s: exit %d%s\n--- stdout\n%s--- stderr\n%s", strings.Join(r.Args, " "), r.Code, killed, r.Stdout, r.Stderr)
}

// RunBinary runs the binary with args as given (no --root added, no token
// check: callers without a node, or that run it concurrently and check the
// output themselves). It fails the test if the process cannot be run or
// dies of a signal.
func RunBinary(t testing.TB, args ...string) Result {
	t.Helper()
	return run(t, nil, false, args...)
}

func run(t testing.TB, env []string, signalOK bool, args ...string) Result {
	t.Helper()
	return runVia(t, nil, env, signalOK, args...)
}

func runVia(t testing.TB, wrapper, env []string, signalOK bool, args ...string) Result {
	t.Helper()
	if Binary == "" {
		t.Fatal("nodetest.Binary is not set: the suite's TestMain must build provision and set it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), RunTimeout)
	defer cancel()
	argv := append(append(append([]string(nil), wrapper...), Binary), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := Result{Args: args, Stdout: out.String(), Stderr: errb.String(), Took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.Code = ee.ExitCode()
	case errors.As(err, &ee) && signalOK:
		r.Code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			r.Killed = true
		}
	default:
		t.Fatalf("running provision %s: %v\n%s", strings.Join(args, " "), err, r)
	}
	return r
}

// WantExit fails the test unless r exited with code.
func WantExit(t testing.TB, r Result, code int) {
	t.Helper()
	if r.Code != code {
		t.Fatalf("want exit %d, got\n%s", code, r)
	}
}

// WantFailure checks a RunJSON report's failed layer, owner (unless owner
// is empty) and exit code, and that it says what happened and what to do.
func WantFailure(t testing.TB, r Result, code int, layer, owner string) {
	t.Helper()
	WantExit(t, r, code)
	rep := r.Report
	if rep == nil {
		t.Fatal("WantFailure needs a RunJSON run")
	}
	if rep.OK || rep.FailedLayer != layer || (owner != "" && rep.Owner != owner) {
		t.Fatalf("want ok=false layer %s owner %s, got ok=%v layer %q owner %q\n%s", layer, owner, rep.OK, rep.FailedLayer, rep.Owner, r)
	}
	if rep.Summary == "" || rep.Remedy == "" {
		t.Fatalf("a failure must say what happened and what to do: summary %q remedy %q", rep.Summary, rep.Remedy)
	}
}

// Report is the JSON report as a script reads it: decoded independently of
// the product's types, so a renamed field fails the tests.
type Report struct {
	OK          bool            `json:"ok"`
	Command     string          `json:"command"`
	NodeID      string          `json:"node_id"`
	FailedLayer string          `json:"failed_layer"`
	Owner       string          `json:"owner"`
	FailedCheck string          `json:"failed_check"`
	Summary     string          `json:"summary"`
	Remedy      string          `json:"remedy"`
	Transient   bool            `json:"transient"`
	Checks      []Check         `json:"checks"`
	Task        json.RawMessage `json:"task"`
	ExitCode    *int            `json:"exit_code"`
}

// Check is one entry of a report's checks.
type Check struct {
	Name     string            `json:"name"`
	Layer    string            `json:"layer"`
	Owner    string            `json:"owner"`
	Status   string            `json:"status"`
	Message  string            `json:"message"`
	Remedy   string            `json:"remedy"`
	Evidence map[string]string `json:"evidence"`
}

// Check is the report's check named name, nil when it has none.
func (rep Report) Check(name string) *Check {
	for i := range rep.Checks {
		if rep.Checks[i].Name == name {
			return &rep.Checks[i]
		}
	}
	return nil
}

// LayerChecks returns the report's checks in layer.
func (rep Report) LayerChecks(layer string) []Check {
	var cs []Check
	for _, c := range rep.Checks {
		if c.Layer == layer {
			cs = append(cs, c)
		}
	}
	return cs
}

// LayerText is everything an operator reads about a layer: the messages
// and evidence values of its checks.
func (rep Report) LayerText(layer string) string {
	var b strings.Builder
	for _, c := range rep.LayerChecks(layer) {
		b.WriteString(c.Message + "\n")
		for k, v := range c.Evidence {
			b.WriteString(k + ": " + v + "\n")
		}
	}
	return b.String()
}

// Receipt is state_dir/receipt.json as the contract names its fields,
// decoded independently of internal/bootstrap.
type Receipt struct {
	NodeID          string    `json:"node_id"`
	Serial          string    `json:"serial"`
	Issuer          string    `json:"issuer"`
	RootFingerprint string    `json:"root_fingerprint"`
	NotAfter        time.Time `json:"not_after"`
	Endpoint        string    `json:"endpoint"`
	ProvedAt        time.Time `json:"proved_at"`
	MachineID       string    `json:"machine_id"`
}

// Receipt reads and decodes the node's receipt, failing the test if there
// is none or it does not decode.
func (n *Node) Receipt() Receipt {
	n.T.Helper()
	b, err := os.ReadFile(n.ReceiptPath())
	if err != nil {
		n.T.Fatalf("receipt: %v", err)
	}
	var rc Receipt
	if err := json.Unmarshal(b, &rc); err != nil {
		n.T.Fatalf("receipt.json: %v\n%s", err, b)
	}
	return rc
}

// WantNoReceipt fails the test if the node has a receipt.
func (n *Node) WantNoReceipt() {
	n.T.Helper()
	if _, err := os.Stat(n.ReceiptPath()); !errors.Is(err, fs.ErrNotExist) {
		n.T.Fatalf("receipt.json must not exist (stat: %v)", err)
	}
}
