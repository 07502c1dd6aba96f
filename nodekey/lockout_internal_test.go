package nodekey

import (
	"testing"

	keyfile "github.com/foxboron/go-tpm-keyfiles"
	"github.com/google/go-tpm/tpm2"

	"github.com/gpuaas/provision/nodekey/swtpm"
)

// TestLockoutRefusesKeyWithoutNoDA: a key.pem made elsewhere without noDA
// (go-tpm-keyfiles' and go.step.sm's default templates lack it) is refused
// by a TPM in dictionary-attack lockout, and the failure is Lockout, which
// provision names with its remedy; the node key (noDA) signs on.
func TestLockoutRefusesKeyWithoutNoDA(t *testing.T) {
	tp := swtpm.New(t)
	o, err := newOptions([]Option{WithTPM(tp.Spec())})
	if err != nil {
		t.Fatal(err)
	}
	dev, err := open(o.spec)
	if err != nil {
		t.Fatal(err)
	}
	srk, _, err := o.storageKey(dev)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := keyTemplate
	tmpl.ObjectAttributes.NoDA = false
	rsp, err := tpm2.Create{ParentHandle: *srk, InPublic: tpm2.New2B(tmpl)}.Execute(dev)
	flush(dev, srk.Handle)
	dev.Close()
	if err != nil {
		t.Fatal(err)
	}
	daKey, err := fromKeyFile(keyfile.NewTPMKey(keyfile.OIDLoadableKey, rsp.OutPublic, rsp.OutPrivate), o)
	if err != nil {
		t.Fatal(err)
	}
	node, err := CreateTPMKey(WithTPM(tp.Spec()))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckSigns(daKey); err != nil {
		t.Fatalf("before the lockout the key without noDA did not sign: %v", err)
	}
	tp.Lockout()
	if err := CheckSigns(daKey); KindOf(err) != Lockout {
		t.Fatalf("in lockout, the key without noDA: %v (kind %q), want %s", err, KindOf(err), Lockout)
	}
	if err := CheckSigns(node); err != nil {
		t.Fatalf("in lockout, the node key (noDA): %v", err)
	}
}
