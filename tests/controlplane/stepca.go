package controlplane

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/ca"
	"github.com/smallstep/certificates/db"
	"go.step.sm/crypto/jose"
)

func init() {
	// The ca package would otherwise load an identity from $STEPPATH and
	// present it as a client certificate; a developer machine that ran the
	// step CLI must not change what these tests do. Set once, before any
	// goroutine reads it.
	ca.DisableIdentity = true
}

// DefaultCAHostname is the CA's name in provision.toml's ca.url.
const DefaultCAHostname = "ca.cp.internal"

// CAName is the subject name of every test CA: step-ca's generations and the
// unrelated CA share it and differ only in keys. A TLS client that picks its
// certificate by the server's acceptable CA names (Go's, with
// tls.Config.Certificates) therefore still sends a stale certificate, and the
// handshake fails with "unknown certificate authority" as in the incident,
// not with "certificate required".
const CAName = "Control Plane Test"

// DefaultProvisioner is the JWK provisioner's name (the tokens' iss).
const DefaultProvisioner = "provision-tests"

// StepCAOptions configures StartStepCA.
type StepCAOptions struct {
	Dir         string // required: PKI generations are written under it
	Hostname    string // default DefaultCAHostname
	Provisioner string // default DefaultProvisioner
	// Lifetime, when set, is the provisioner's default and minimum TLS
	// certificate duration (e.g. 30s-2m), so a test sees certificates reach
	// their renewal point and expire; backdating is cut to one second.
	// Zero keeps step-ca's 24h.
	Lifetime time.Duration
	// Revocation gives the CA a persistent database (bbolt under Dir), which
	// step-ca needs to revoke; the default in-memory DB refuses revocation.
	Revocation bool
	// DB is step-ca's database; nil keeps its in-memory default. The storm
	// runs one against PostgreSQL (Type "postgresql") to show that backend
	// works with provision.
	DB *db.Config
	// AllowRenewalAfterExpiry sets the provisioner's claim of that name:
	// step-ca then renews an expired certificate through POST /renew with
	// an x5c-insecure token signed by the certificate's own key
	// (enroll.Client.RenewExpired). Off, as in step-ca, it refuses with a
	// 401 saying the certificate expired. SetAllowRenewalAfterExpiry
	// changes it on a running CA.
	AllowRenewalAfterExpiry bool
	// Age is how long before the real time the CA's root and intermediate
	// became valid; default an hour. A test planting a certificate from
	// days ago (IssueNodeCertAt) needs a CA at least that old.
	Age time.Duration
	// CRL enables step-ca's certificate revocation list (GET /crl, DER,
	// signed by the intermediate), regenerated on every revocation. It
	// needs a persistent database: without DB, the one Revocation would
	// give (bbolt under Dir) is used.
	CRL bool
	// DisableIssuedAtCheck is step-ca's authority.disableIssuedAtCheck: a
	// token minted before the CA process started is accepted (tokens
	// minted into user-data ahead of a boot need it). Without it a
	// restarted CA refuses every older token as "issued before the
	// bootstrap of certificate authority", whatever its database holds.
	DisableIssuedAtCheck bool
}

// StepCA is a real smallstep step-ca (github.com/smallstep/certificates/ca)
// running in-process on 127.0.0.1, with an in-memory DB (so a reused token is
// refused) and one JWK provisioner whose private key is kept here to mint
// tokens.
type StepCA struct {
	hostname string
	provName string
	dir      string
	jwk      *jose.JSONWebKey
	opts     StepCAOptions

	// retired are roots still listed by /roots beside the current
	// generation's (during a rotation); federated are roots only
	// /federation lists.
	retired, federated []*PKI
	// incoming are roots listed by /roots before they issue (AddRoot).
	incoming []*PKI
	db       *db.Config

	mu     sync.Mutex
	addr   string
	pki    *PKI
	gen    int
	srv    *ca.CA
	runErr chan error
	closed bool
}

// StartStepCA generates a PKI and starts step-ca on a free loopback port.
func StartStepCA(opts StepCAOptions) (*StepCA, error) {
	if opts.Dir == "" {
		return nil, errors.New("StepCAOptions.Dir is required")
	}
	if opts.Hostname == "" {
		opts.Hostname = DefaultCAHostname
	}
	if opts.Provisioner == "" {
		opts.Provisioner = DefaultProvisioner
	}
	jwk, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		return nil, fmt.Errorf("provisioner key: %w", err)
	}
	s := &StepCA{hostname: opts.Hostname, provName: opts.Provisioner, dir: opts.Dir, jwk: jwk, opts: opts, db: opts.DB}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.newGenerationLocked(); err != nil {
		return nil, err
	}
	// The port is chosen before step-ca listens (its Run only takes an
	// address), so another process may take it in between: try again.
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		err = s.startLocked()
		if err == nil {
			return s, nil
		}
		if attempt == 4 {
			return nil, err
		}
	}
}

func (s *StepCA) newGenerationLocked() error {
	s.gen++
	// Every generation has the same subject names, as a CA re-initialised
	// with the same name would: only the keys differ.
	age := s.opts.Age
	if age <= 0 {
		age = time.Hour
	}
	p, err := newPKI(filepath.Join(s.dir, "stepca-"+strconv.Itoa(s.gen)), CAName, time.Now, age)
	if err != nil {
		return err
	}
	s.pki = p
	return nil
}

func (s *StepCA) startLocked() error {
	srv, err := ca.New(s.configLocked(), ca.WithQuiet(true))
	if err != nil {
		return fmt.Errorf("step-ca config: %w", err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run() }()
	if stopped, err := s.waitHealthy(runErr); err != nil {
		if stopped {
			return err // Run returned: the CA stopped itself, and Stop would close it twice
		}
		select {
		case <-runErr: // Run already stopped the CA after its startup error
		default:
			_ = srv.Stop()
			<-runErr
		}
		return err
	}
	s.srv, s.runErr = srv, runErr
	return nil
}

// configLocked is step-ca's configuration for the current generation on
// s.addr: the one StartReplica gives a replica too.
func (s *StepCA) configLocked() *config.Config {
	pub := s.jwk.Public()
	prov := &provisioner.JWK{Type: "JWK", Name: s.provName, Key: &pub}
	roots := []string{s.pki.RootPath}
	for _, r := range append(append([]*PKI(nil), s.retired...), s.incoming...) {
		roots = append(roots, r.RootPath)
	}
	var fed []string
	for _, r := range s.federated {
		fed = append(fed, r.RootPath)
	}
	cfg := &config.Config{
		Root:             roots,
		FederatedRoots:   fed,
		IntermediateCert: s.pki.IntermediatePath,
		IntermediateKey:  s.pki.IntermediateKeyPath,
		Address:          s.addr,
		// One name only: step-ca v0.30.2's Audiences.All appends to the
		// shared Sign slice, which has spare capacity (a data race between
		// concurrent signs under -race) unless there is exactly one name.
		DNSNames: []string{s.hostname},
		DB:       s.db,
		AuthorityConfig: &config.AuthConfig{
			Provisioners: provisioner.List{prov},
		},
	}
	afterExpiry := s.opts.AllowRenewalAfterExpiry
	prov.Claims = &provisioner.Claims{AllowRenewalAfterExpiry: &afterExpiry}
	if d := s.opts.Lifetime; d > 0 {
		prov.Claims.MinTLSDur, prov.Claims.DefaultTLSDur = &provisioner.Duration{Duration: d}, &provisioner.Duration{Duration: d}
		cfg.AuthorityConfig.Backdate = &provisioner.Duration{Duration: time.Second}
	}
	if s.opts.Revocation || (s.opts.CRL && s.db == nil) {
		cfg.DB = &db.Config{Type: "bbolt", DataSource: filepath.Join(s.dir, "stepca.db")}
	}
	if s.opts.CRL {
		// Regenerated on every revocation, so a CRL fetched after a revoke
		// lists it; the hour is its nextUpdate, far beyond any test.
		cfg.CRL = &config.CRLConfig{Enabled: true, GenerateOnRevoke: true, CacheDuration: &provisioner.Duration{Duration: time.Hour}}
	}
	cfg.AuthorityConfig.DisableIssuedAtCheck = s.opts.DisableIssuedAtCheck
	return cfg
}

// waitHealthy polls GET /health over TLS verified against the current root.
// stopped reports that Run returned (its error consumed from runErr).
func (s *StepCA) waitHealthy(runErr <-chan error) (stopped bool, err error) {
	client := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: s.pki.RootPool(), ServerName: s.hostname, MinVersion: tls.VersionTLS12},
			DisableKeepAlives: true,
			Proxy:             nil,
		},
	}
	deadline := time.Now().Add(20 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case err := <-runErr:
			return true, fmt.Errorf("step-ca on %s stopped while starting: %w", s.addr, err)
		default:
		}
		resp, err := client.Get("https://" + s.addr + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return false, nil
			}
			err = fmt.Errorf("health: %s", resp.Status)
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	return false, fmt.Errorf("step-ca on %s did not become healthy: %w", s.addr, last)
}

func (s *StepCA) stopLocked() error {
	if s.srv == nil {
		return nil
	}
	err := s.srv.Stop()
	<-s.runErr
	s.srv, s.runErr = nil, nil
	return err
}

// Rotate stops step-ca and starts it again on the same address with a
// brand-new root and intermediate (a new fingerprint): the CA was
// re-initialised, and certificates issued before are now from a stale CA.
// The provisioner key is kept. The used-token memory starts empty.
func (s *StepCA) Rotate() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	if err := s.stopLocked(); err != nil {
		return fmt.Errorf("stopping step-ca: %w", err)
	}
	if err := s.newGenerationLocked(); err != nil {
		return err
	}
	s.retired, s.federated, s.incoming = nil, nil, nil
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = s.startLocked(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// AddRoot is the first step of a root rotation: /roots lists a new root
// beside the issuing one, which keeps issuing (and serving the CA's TLS
// certificate), so nodes can learn the new root before anything depends
// on it.
func (s *StepCA) AddRoot() error {
	return s.restart(func() error {
		old := s.pki
		if err := s.newGenerationLocked(); err != nil {
			return err
		}
		s.incoming = append(s.incoming, s.pki)
		s.pki = old
		return nil
	})
}

// SwitchRoot is the second step: the newest added root's intermediate
// issues from now on (and serves the CA's TLS); the old root stays listed
// in /roots, so certificates issued under it still renew.
func (s *StepCA) SwitchRoot() error {
	return s.restart(func() error {
		if len(s.incoming) == 0 {
			return errors.New("SwitchRoot without AddRoot")
		}
		s.retired = append(s.retired, s.pki)
		s.pki = s.incoming[len(s.incoming)-1]
		s.incoming = s.incoming[:len(s.incoming)-1]
		return nil
	})
}

// DropOldRoots is the last step: /roots lists only the issuing root; with
// federate the old ones stay in /federation (and /root/<fingerprint>),
// otherwise the CA forgets them.
func (s *StepCA) DropOldRoots(federate bool) error {
	return s.restart(func() error {
		if federate {
			s.federated = append(s.federated, s.retired...)
		}
		s.retired = nil
		return nil
	})
}

func (s *StepCA) restart(change func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	if err := s.stopLocked(); err != nil {
		return fmt.Errorf("stopping step-ca: %w", err)
	}
	if err := change(); err != nil {
		return err
	}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = s.startLocked(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// IssueNodeCertAt issues a node certificate for nodeID from the current
// intermediate with the validity given, as step-ca's JWK provisioner
// issues it: CN and DNS SAN nodeID, client and server auth, and the
// provisioner extension by which step-ca finds the provisioner (and its
// claims) on renewal. It is a certificate that expired days ago while the
// node was powered off, without waiting days: step-ca judges it exactly as
// one it signed itself. (A certificate without the extension would renew
// through step-ca's backward-compatible no-op provisioner, whatever the
// claims.)
func (s *StepCA) IssueNodeCertAt(nodeID string, notBefore, notAfter time.Time) (*Leaf, error) {
	return s.IssueNodeCertForKeyAt(nodeID, nil, notBefore, notAfter)
}

// IssueNodeCertForKeyAt is IssueNodeCertAt for a key the test holds
// elsewhere (a node key inside a TPM): the leaf certifies pub, and its Key
// is nil. A nil pub makes a key, as IssueNodeCertAt does.
func (s *StepCA) IssueNodeCertForKeyAt(nodeID string, pub *ecdsa.PublicKey, notBefore, notAfter time.Time) (*Leaf, error) {
	ext, err := (&provisioner.Extension{Type: provisioner.TypeJWK, Name: s.provName, CredentialID: s.jwk.KeyID}).ToExtension()
	if err != nil {
		return nil, err
	}
	return s.PKI().IssueLeaf(LeafRequest{
		CommonName: nodeID, DNSNames: []string{nodeID}, NotBefore: notBefore, NotAfter: notAfter,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		Extensions:  []pkix.Extension{ext}, PublicKey: pub,
	})
}

// SetAllowRenewalAfterExpiry restarts step-ca on the same address and PKI
// with the provisioner's allowRenewalAfterExpiry claim set to allow: the
// control-plane team changing its provisioner. The used-token memory of
// the in-memory DB starts empty.
func (s *StepCA) SetAllowRenewalAfterExpiry(allow bool) error {
	return s.restart(func() error {
		s.opts.AllowRenewalAfterExpiry = allow
		return nil
	})
}

// Restart stops step-ca and starts it again on the same address, PKI and
// configuration: a deploy, or a crash and its restart. With the in-memory
// database the used-token memory starts empty; a persistent one
// (Revocation, CRL, DB) keeps every token it has seen.
func (s *StepCA) Restart() error { return s.restart(func() error { return nil }) }

// Close stops step-ca.
func (s *StepCA) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.stopLocked()
}

// Hostname is the CA's DNS name (default DefaultCAHostname).
func (s *StepCA) Hostname() string { return s.hostname }

// Addr is the loopback host:port step-ca listens on.
func (s *StepCA) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Port is the TCP port step-ca listens on.
func (s *StepCA) Port() int {
	_, p, _ := net.SplitHostPort(s.Addr())
	n, _ := strconv.Atoi(p)
	return n
}

// URL is the CA URL by hostname, https://ca.cp.internal:<port>; reaching it
// needs the hostname mapped to 127.0.0.1 (hosts file or DialContext).
func (s *StepCA) URL() string {
	return "https://" + net.JoinHostPort(s.hostname, strconv.Itoa(s.Port()))
}

// LoopbackURL is https://127.0.0.1:<port>. The CA's TLS certificate names
// only its hostname, so use this for the unverified pinned-root fetch or as
// a dial address with ServerName set to Hostname().
func (s *StepCA) LoopbackURL() string { return "https://" + s.Addr() }

// PKI is the CA's current generation.
func (s *StepCA) PKI() *PKI {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pki
}

// Fingerprint is the current root's fingerprint (lowercase hex SHA-256 of
// the DER).
func (s *StepCA) Fingerprint() string { return s.PKI().Fingerprint() }

// CurrentRoots are the roots /roots lists: the issuing generation's and
// any kept during a rotation (AddRoot).
func (s *StepCA) CurrentRoots() []*PKI {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append(append([]*PKI{s.pki}, s.retired...), s.incoming...)
}

// RetiredRoots are the roots AddRoot kept beside the issuing one.
func (s *StepCA) RetiredRoots() []*PKI {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*PKI(nil), s.retired...)
}

// RootPEM is the current root certificate in PEM.
func (s *StepCA) RootPEM() []byte { return s.PKI().RootPEM() }

// DialContext dials 127.0.0.1 for the CA's hostname and anything else
// unchanged; use it in an http.Transport to reach URL() without a hosts file.
func (s *StepCA) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return loopbackDialer(map[string]string{s.hostname: "127.0.0.1"})(ctx, network, addr)
}

// loopbackDialer returns a DialContext that rewrites the host part of addr
// through names and refuses any destination that is not loopback, so a test
// can never reach outside the machine by accident.
func loopbackDialer(names map[string]string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if ip, ok := names[host]; ok {
			host = ip
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			if host != "localhost" {
				return nil, fmt.Errorf("controlplane dialer: refusing non-loopback destination %q", addr)
			}
		}
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort(host, port))
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
