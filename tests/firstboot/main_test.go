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
// TestRunbookCertificateExpiring, TestRunbookCannotRenew and TestRunbookHook
// do the same for the renewal sections, which quote what verify and renew
// print: short-lived certificates from the real step-ca, expired, stale and
// revoked ones planted through tests/controlplane, and a failing post_hook.
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
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"runtime"
	"testing"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// moduleRoot is the directory holding go.mod.
var moduleRoot string

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
	// step-ca logs through the standard logger; keep test output readable.
	log.SetOutput(io.Discard)
	return testenv.RunWithBinary(m, "firstboot", "", func(bin string) { nodetest.Binary = bin })
}

// node is one node's --root (tests/nodetest) with the runbook's way of
// reading a report.
type node struct{ *nodetest.Node }

// newNode prepares root for nodeID on cp with a fresh token, a short
// bootstrap deadline, and, when machineID is not empty, /etc/machine-id.
func newNode(t *testing.T, cp *controlplane.ControlPlane, root, nodeID, machineID string) *node {
	t.Helper()
	return &node{nodetest.New(t, cp, root, nodeID, nodetest.Deadline("8s", "3s"), nodetest.MachineID(machineID))}
}

// verify runs `provision verify --format json` and decodes the report.
func (n *node) verify() (nodetest.Result, nodetest.Report) {
	n.T.Helper()
	r := n.RunJSON("verify")
	return r, *r.Report
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
