package firstboot

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

const (
	machineA = "0123456789abcdef0123456789abcdef" // the first install
	machineB = "fedcba9876543210fedcba9876543210" // the reinstall
)

// TestUnitConditionKeysOnDoneMarker ties TestReinstall's done-marker checks
// to the shipped unit: the unit skips exactly when
// state_dir/done/<machine-id> exists, with state_dir at its default.
func TestUnitConditionKeysOnDoneMarker(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(moduleRoot, "deploy", "systemd", "provision.service"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ConditionPathExists=!(.*)$`).FindStringSubmatch(string(b))
	if m == nil {
		t.Fatal("provision.service has no ConditionPathExists=! line")
	}
	if want := controlplane.DefaultStateDir + "/done/%m"; m[1] != want {
		t.Fatalf("provision.service skips on %s, but bootstrap writes the marker at %s", m[1], want)
	}
}

// TestReinstall: a reinstalled node (same node_id, fresh token) enrolls
// again, with a fresh disk or with the old disk kept; with the old disk it
// re-proves instead of trusting the old receipt, and replaces credentials a
// rotated CA made stale, without manual cleanup. The done marker for the
// new machine id, which the unit's condition tests, appears only after the
// proof.
func TestReinstall(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		keepDisk bool
		rotateCA bool // the control plane's CA is re-created between installs
		// apiDown: the node API rejects the reinstall's proof at first.
		apiDown bool
		newCert bool
	}{
		{name: "fresh disk", newCert: true},
		{name: "fresh disk after a CA rotation", rotateCA: true, newCert: true},
		{name: "kept disk, same CA: re-proves and keeps the certificate", keepDisk: true},
		{name: "kept disk, CA rotated: replaces the stale credentials", keepDisk: true, rotateCA: true, newCert: true},
		{name: "kept disk, proof fails: no done marker despite the old receipt", keepDisk: true, apiDown: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cp := controlplane.Start(t, controlplane.Options{})
			first := newNode(t, cp, t.TempDir(), "gpu-0042", machineA)
			nodetest.WantExit(t, first.Run("bootstrap"), 0)
			old := first.Receipt()
			if old.MachineID != machineA || !exists(first.DonePath(machineA)) {
				t.Fatalf("first install: receipt machine_id %q, done/%s exists: %v", old.MachineID, machineA, exists(first.DonePath(machineA)))
			}
			if tc.rotateCA {
				if err := cp.RotateCA(); err != nil {
					t.Fatal(err)
				}
			}

			// The reinstall: a new /etc/machine-id, new user-data (same
			// node_id, the CA's current fingerprint, a fresh token).
			var n *node
			if tc.keepDisk {
				n = first
				n.setMachineIDReplacing(machineB)
				n.Cfg.CA.Fingerprint = cp.CA.Fingerprint()
				n.RewriteConfig()
				n.GiveToken()
			} else {
				n = newNode(t, cp, t.TempDir(), "gpu-0042", machineB)
			}
			if exists(n.DonePath(machineB)) {
				t.Fatalf("done/%s exists before bootstrap: the unit would skip the reinstall", machineB)
			}
			if tc.apiDown {
				cp.API.FailAlways(controlplane.IdentityFault(false, "missing"))
			}
			probesBefore := len(waitRequests(cp))

			r := n.Run("bootstrap")
			if got := len(waitRequests(cp)); got <= probesBefore {
				t.Errorf("bootstrap did not reach tasks/wait (%d requests before, %d after): it trusted the old receipt", probesBefore, got)
			}
			if tc.apiDown {
				nodetest.WantExit(t, r, 18)
				if exists(n.DonePath(machineB)) {
					t.Fatalf("done/%s was written although the proof failed: the unit would never retry", machineB)
				}
				if rc := n.Receipt(); rc.MachineID != machineA {
					t.Errorf("the old receipt was rewritten (machine_id %q) although the proof failed", rc.MachineID)
				}
				// The API is fixed; the unit's next attempt succeeds.
				cp.API.ClearFaults()
				r = n.Run("bootstrap")
			}
			nodetest.WantExit(t, r, 0)

			rc := n.Receipt()
			if rc.NodeID != "gpu-0042" || rc.MachineID != machineB || !rc.ProvedAt.After(old.ProvedAt) {
				t.Errorf("receipt after reinstall: node_id %q machine_id %q proved_at %s (first install %s)", rc.NodeID, rc.MachineID, rc.ProvedAt, old.ProvedAt)
			}
			if (rc.Serial != old.Serial) != tc.newCert {
				t.Errorf("serial %s -> %s; want a new certificate: %v", old.Serial, rc.Serial, tc.newCert)
			}
			if !exists(n.DonePath(machineB)) {
				t.Fatalf("done/%s does not exist after a successful bootstrap: the unit would run again on every boot", machineB)
			}
			if tc.newCert && exists(n.Files.TokenPath) {
				t.Error("the used token is still on disk after enrollment")
			}
			if vr, rep := n.verify(); vr.Code != 0 || !rep.OK {
				t.Fatalf("verify after the reinstall:\n%s", vr)
			}
		})
	}
}

// setMachineIDReplacing writes a new /etc/machine-id over the old one (a
// reinstall that kept the data disk but not the root filesystem).
func (n *node) setMachineIDReplacing(id string) {
	n.T.Helper()
	p := controlplane.InRoot(n.Root, "/etc/machine-id")
	if err := os.Remove(p); err != nil {
		n.T.Fatal(err)
	}
	n.SetMachineID(id)
}

// waitRequests are the tasks/wait requests the node API answered.
func waitRequests(cp *controlplane.ControlPlane) []controlplane.Request {
	var out []controlplane.Request
	for _, r := range cp.API.Requests() {
		if strings.HasSuffix(r.Path, "/tasks/wait") {
			out = append(out, r)
		}
	}
	return out
}
