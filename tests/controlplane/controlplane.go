package controlplane

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"
)

// Options configures New. The zero value is a working control plane.
type Options struct {
	// Dir holds the PKIs; default a fresh temporary directory removed by Close.
	Dir string
	// CAHostname defaults to DefaultCAHostname.
	CAHostname string
	// APIHostname defaults to DefaultAPIHostname.
	APIHostname string
	// APIServerIPs are the IP SANs of the node API's certificate, so a client
	// dialling the IP still gets a certificate that verifies; nil means
	// 127.0.0.1. Set NoAPIIPSAN to serve a hostname-only certificate.
	APIServerIPs []net.IP
	NoAPIIPSAN   bool
	// APIIdentity replaces TLSPeerIdentity in the node API.
	APIIdentity IdentitySource
	// Logger receives the node API's rejection log; default discarded.
	Logger *slog.Logger
	// CALifetime and CARevocation are StepCAOptions.Lifetime and
	// StepCAOptions.Revocation: short certificates, and a CA that can revoke.
	CALifetime   time.Duration
	CARevocation bool
	// CADB is step-ca's database (StepCAOptions.DB); nil is in-memory.
	CADB *db.Config
	// CAAllowRenewalAfterExpiry and CACRL are
	// StepCAOptions.AllowRenewalAfterExpiry and StepCAOptions.CRL: a CA
	// that renews expired certificates, and one that publishes its CRL.
	CAAllowRenewalAfterExpiry bool
	CACRL                     bool
	// CAAge is StepCAOptions.Age: how long before now the CA's root and
	// intermediate became valid (a node off for days holds a certificate
	// issued then).
	CAAge time.Duration
	// CADisableIssuedAtCheck is StepCAOptions.DisableIssuedAtCheck.
	CADisableIssuedAtCheck bool
}

// ClientCAMode is what the node API (standing in for the ingress's TLS
// client-auth option) trusts.
type ClientCAMode int

const (
	// ClientCAStep trusts the step-ca root that is current (the healthy setup;
	// it follows RotateCA).
	ClientCAStep ClientCAMode = iota
	// ClientCAUnrelated trusts an unrelated CA: "the ingress trusts the wrong
	// CA". Nodes see remote error: tls: unknown certificate authority.
	ClientCAUnrelated
	// ClientCABroken closes hostname connections right after the ClientHello:
	// a broken TLS option (wrong secret shape). Nodes see EOF.
	ClientCABroken
	// ClientCARetired trusts only the roots a rotation is retiring (see
	// AddCARoot): an ingress whose client-auth secret still holds only the
	// old root rejects every certificate issued under the new one.
	ClientCARetired
)

func (m ClientCAMode) String() string {
	switch m {
	case ClientCAStep:
		return "step"
	case ClientCAUnrelated:
		return "unrelated"
	case ClientCABroken:
		return "broken"
	case ClientCARetired:
		return "retired"
	}
	return fmt.Sprintf("ClientCAMode(%d)", int(m))
}

// ControlPlane is a real step-ca plus a node API whose server certificate
// comes from the step intermediate and whose client CA is the step root, all
// on 127.0.0.1 with free ports, so many can run in parallel.
type ControlPlane struct {
	Dir string
	CA  *StepCA
	API *NodeAPI
	// Unrelated is a CA that has nothing to do with step-ca: the wrong CA for
	// ClientCAUnrelated and the issuer of stale node certificates.
	Unrelated *PKI

	apiHost string
	apiIPs  []net.IP
	ownDir  bool

	mu   sync.Mutex
	mode ClientCAMode
}

// New starts a control plane. Close it when done.
func New(opts Options) (cp *ControlPlane, err error) {
	cp = &ControlPlane{Dir: opts.Dir, apiHost: opts.APIHostname}
	if cp.apiHost == "" {
		cp.apiHost = DefaultAPIHostname
	}
	if cp.Dir == "" {
		if cp.Dir, err = os.MkdirTemp("", "controlplane-"); err != nil {
			return nil, err
		}
		cp.ownDir = true
	}
	defer func() {
		if err != nil {
			_ = cp.Close()
		}
	}()
	switch {
	case opts.NoAPIIPSAN:
	case opts.APIServerIPs != nil:
		cp.apiIPs = opts.APIServerIPs
	default:
		cp.apiIPs = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	if cp.Unrelated, err = NewPKI(filepath.Join(cp.Dir, "unrelated"), CAName); err != nil {
		return nil, err
	}
	if cp.CA, err = StartStepCA(StepCAOptions{
		Dir: cp.Dir, Hostname: opts.CAHostname, Lifetime: opts.CALifetime, Revocation: opts.CARevocation, DB: opts.CADB,
		AllowRenewalAfterExpiry: opts.CAAllowRenewalAfterExpiry, CRL: opts.CACRL, Age: opts.CAAge,
		DisableIssuedAtCheck: opts.CADisableIssuedAtCheck,
	}); err != nil {
		return nil, fmt.Errorf("step-ca: %w", err)
	}
	p := cp.CA.PKI()
	leaf, err := p.IssueServerCert(cp.apiHost, cp.apiIPs...)
	if err != nil {
		return nil, err
	}
	cert := leaf.TLSCertificate()
	if cp.API, err = NewNodeAPI(NodeAPIOptions{
		Hostname: cp.apiHost, ServerCert: &cert, ClientCAs: p.RootPool(),
		Identity: opts.APIIdentity, Logger: opts.Logger,
	}); err != nil {
		return nil, fmt.Errorf("node API: %w", err)
	}
	return cp, nil
}

// Start is New for tests: it fails t on error and closes on cleanup.
func Start(t testing.TB, opts Options) *ControlPlane {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	cp, err := New(opts)
	if err != nil {
		t.Fatalf("control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := cp.Close(); err != nil {
			t.Errorf("closing control plane: %v", err)
		}
	})
	return cp
}

// Close stops the node API and step-ca, and removes Dir if New created it.
func (cp *ControlPlane) Close() error {
	var errs []error
	if cp.API != nil {
		errs = append(errs, cp.API.Close())
	}
	if cp.CA != nil {
		errs = append(errs, cp.CA.Close())
	}
	if cp.ownDir {
		errs = append(errs, os.RemoveAll(cp.Dir))
	}
	return errors.Join(errs...)
}

// Token mints a token for nodeID from the current CA (see StepCA.Token).
func (cp *ControlPlane) Token(nodeID string, opts ...TokenOption) (string, error) {
	return cp.CA.Token(nodeID, opts...)
}

// SetClientCAMode switches what the node API trusts, for new connections.
func (cp *ControlPlane) SetClientCAMode(m ClientCAMode) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.mode = m
	cp.applyModeLocked()
}

// ClientCAMode reports the current mode.
func (cp *ControlPlane) ClientCAMode() ClientCAMode {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.mode
}

func (cp *ControlPlane) applyModeLocked() {
	switch cp.mode {
	case ClientCAUnrelated:
		cp.API.SetClientCAs(cp.Unrelated.RootPool())
		cp.API.SetBrokenTLS(false)
	case ClientCABroken:
		cp.API.SetClientCAs(cp.CA.PKI().RootPool())
		cp.API.SetBrokenTLS(true)
	case ClientCARetired:
		pool := x509.NewCertPool()
		for _, p := range cp.CA.RetiredRoots() {
			pool.AddCert(p.Root)
		}
		cp.API.SetClientCAs(pool)
		cp.API.SetBrokenTLS(false)
	default:
		pool := x509.NewCertPool()
		for _, p := range cp.CA.CurrentRoots() {
			pool.AddCert(p.Root)
		}
		cp.API.SetClientCAs(pool)
		cp.API.SetBrokenTLS(false)
	}
}

// AddCARoot starts a root rotation: step-ca lists a new root beside the
// issuing one (StepCA.AddRoot). In ClientCAStep mode the node API trusts
// client certificates under any listed root.
func (cp *ControlPlane) AddCARoot() error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if err := cp.CA.AddRoot(); err != nil {
		return err
	}
	cp.applyModeLocked()
	return nil
}

// SwitchCARoot makes the new root's intermediate issue (StepCA.SwitchRoot);
// the node API keeps its server certificate from the old intermediate.
func (cp *ControlPlane) SwitchCARoot() error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if err := cp.CA.SwitchRoot(); err != nil {
		return err
	}
	cp.applyModeLocked()
	return nil
}

// DropOldCARoots completes the rotation: /roots lists only the new root
// (with federate the old ones stay federated), the node API serves a
// certificate from the new intermediate and trusts only current roots.
func (cp *ControlPlane) DropOldCARoots(federate bool) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if err := cp.CA.DropOldRoots(federate); err != nil {
		return err
	}
	leaf, err := cp.CA.PKI().IssueServerCert(cp.apiHost, cp.apiIPs...)
	if err != nil {
		return err
	}
	cp.API.SetServerCert(leaf.TLSCertificate())
	cp.applyModeLocked()
	return nil
}

// RotateCA re-initialises step-ca on the same address with a new root (new
// fingerprint) and moves the node API onto it: a server certificate from the
// new intermediate and, in ClientCAStep mode, the new root as client CA.
// Certificates issued before are now the incident's stale certificates.
func (cp *ControlPlane) RotateCA() error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if err := cp.CA.Rotate(); err != nil {
		return err
	}
	leaf, err := cp.CA.PKI().IssueServerCert(cp.apiHost, cp.apiIPs...)
	if err != nil {
		return err
	}
	cp.API.SetServerCert(leaf.TLSCertificate())
	cp.applyModeLocked()
	return nil
}

// IssueStaleCert issues a node certificate directly from the unrelated CA,
// for planting on a node's disk (see WriteNodeCredentials).
func (cp *ControlPlane) IssueStaleCert(nodeID string) (*Leaf, error) {
	return cp.Unrelated.IssueClientCert(nodeID)
}

// IssueNodeCert issues a node certificate directly from the current step
// intermediate, as if enrolled earlier (no token spent).
func (cp *ControlPlane) IssueNodeCert(nodeID string) (*Leaf, error) {
	return cp.CA.PKI().IssueClientCert(nodeID)
}
