package controlplane

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/ca"
	"github.com/smallstep/certificates/db"
)

// ReplicaEnv, set in a test binary's environment, makes it a step-ca
// replica (RunReplicaIfAsked): the path of the configuration to serve.
const ReplicaEnv = "PROVISION_TEST_STEPCA_REPLICA"

// signedLine is what a replica prints when it has stored a certificate it
// signed, before holding its answer.
const signedLine = "signed "

// RunReplicaIfAsked makes this process a step-ca replica when
// StartReplica started it (ReplicaEnv is set), and never returns then.
// Call it first in the TestMain of a package whose tests start replicas.
func RunReplicaIfAsked() {
	path := os.Getenv(ReplicaEnv)
	if path == "" {
		return
	}
	if err := runReplica(path); err != nil {
		fmt.Fprintln(os.Stderr, "step-ca replica:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runReplica serves step-ca from the configuration at path, on its
// database, holding every signature once stored (holdingDB).
func runReplica(path string) error {
	ca.DisableIdentity = true
	cfg, err := config.LoadConfiguration(path)
	if err != nil {
		return err
	}
	adb, err := db.New(cfg.DB)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	inner, ok := adb.(*db.DB)
	if !ok {
		return fmt.Errorf("database %q is not a persistent one a replica can share", cfg.DB.Type)
	}
	srv, err := ca.New(cfg, ca.WithDatabase(&holdingDB{DB: inner}), ca.WithQuiet(true))
	if err != nil {
		return err
	}
	return srv.Run()
}

// holdingDB is step-ca's own database, except that once a signed
// certificate is stored (with its token already recorded as used) the
// replica says so on stdout and never answers: the moment a replica can
// die with the signature in the shared database and its answer not sent.
type holdingDB struct{ *db.DB }

// StoreCertificateChain is the authority's store of a signed chain.
func (h *holdingDB) StoreCertificateChain(p provisioner.Interface, chain ...*x509.Certificate) error {
	if err := h.DB.StoreCertificateChain(p, chain...); err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "%s%s\n", signedLine, chain[0].SerialNumber)
	select {}
}

// Replica is one step-ca replica in a process of its own (the test binary
// run again, RunReplicaIfAsked): the same PKI and provisioner as the
// StepCA it was started from, on a shared persistent database, as a CA
// runs at scale. It holds every certificate it signs once stored, never
// answering; Signed reports it, and the test kills the process there.
type Replica struct {
	Addr   string
	cmd    *exec.Cmd
	signed chan string
	exited chan struct{}
	once   sync.Once
}

// StartReplica starts a replica of s on a free loopback port, with d as
// its database (a persistent one, shared with the other replicas). The
// current binary must call RunReplicaIfAsked in its TestMain.
func (s *StepCA) StartReplica(d *db.Config) (*Replica, error) {
	if d == nil {
		return nil, errors.New("a replica needs a shared persistent database")
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	cfg := s.configLocked()
	pool := s.pki.RootPool()
	s.mu.Unlock()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cfg.Address, cfg.DB = addr, d
	path := filepath.Join(s.dir, "replica-"+strconv.Itoa(port)+".json")
	if err := cfg.Save(path); err != nil {
		return nil, err
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), ReplicaEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &Replica{Addr: addr, cmd: cmd, signed: make(chan string, 4), exited: make(chan struct{})}
	go r.watch(bufio.NewScanner(out))
	if err := r.waitHealthy(s.hostname, pool); err != nil {
		r.Kill()
		return nil, err
	}
	return r, nil
}

func (r *Replica) watch(sc *bufio.Scanner) {
	for sc.Scan() {
		if serial, ok := strings.CutPrefix(sc.Text(), signedLine); ok {
			r.signed <- serial
		}
	}
	r.cmd.Wait()
	close(r.exited)
}

func (r *Replica) waitHealthy(hostname string, pool *x509.CertPool) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: hostname, MinVersion: tls.VersionTLS12}}}
	var last error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case <-r.exited:
			return fmt.Errorf("step-ca replica on %s exited while starting", r.Addr)
		default:
		}
		resp, err := client.Get("https://" + r.Addr + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("health: %s", resp.Status)
		}
		last = err
	}
	return fmt.Errorf("step-ca replica on %s did not become healthy: %w", r.Addr, last)
}

// Signed delivers the serial of each certificate the replica signed and
// stored, whose answer it holds.
func (r *Replica) Signed() <-chan string { return r.signed }

// Kill sends the replica SIGKILL and waits for it to exit: its held
// answers are never sent, and its connections close.
func (r *Replica) Kill() {
	r.once.Do(func() {
		r.cmd.Process.Signal(syscall.SIGKILL)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		select {
		case <-r.exited:
		case <-ctx.Done():
		}
	})
}
