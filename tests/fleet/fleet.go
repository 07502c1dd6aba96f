// Package fleet is the control plane the bench and the boot storm run
// against: the lab's real step-ca (in-process), a real nginx terminating
// mTLS in front of the node API (plain HTTP behind it, reading the
// forwarded client certificate), and, for the storm, a counting fault
// proxy in front of step-ca. Everything listens on 127.0.0.1.
//
// Why a package of its own: go run ./tests/bench, go run ./tests/storm and
// the CI storm test must measure the same thing, so they share one setup.
//
// The storm (Storm) also measures itself, because its speed is only
// meaningful against what the machine allows: the CPU time of every
// process it ran (cpu.go), so that time to done can be put against the
// CPU floor, and when each restarted run starts its network work, seen by
// the kernel under the CA proxy (herd.go), so that a fleet that comes back
// together is a number, not a shape in a plot.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/smallstep/certificates/db"

	"github.com/gpuaas/provision/clientcert"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/ingress"
)

// Options configure Start.
type Options struct {
	// Dir holds everything; default a temporary directory removed by Close.
	Dir string
	// CADB is step-ca's database; nil is its in-memory default.
	CADB *db.Config
	// Proxy puts the counting fault proxy in front of step-ca; nodes
	// prepared with Node then reach the CA through it.
	Proxy bool
	// Connections is nginx's worker_connections (0: 64).
	Connections int
}

// Fleet is a running control plane.
type Fleet struct {
	Dir     string
	CP      *controlplane.ControlPlane
	API     *controlplane.NodeAPI // plain HTTP behind nginx
	Ingress *ingress.Ingress
	Proxy   *CAProxy // nil unless Options.Proxy
	ownDir  bool
}

// Start starts the control plane. nginx must be installed.
func Start(opts Options) (f *Fleet, err error) {
	f = &Fleet{Dir: opts.Dir}
	if f.Dir == "" {
		if f.Dir, err = os.MkdirTemp("", "fleet-"); err != nil {
			return nil, err
		}
		f.ownDir = true
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if f.CP, err = controlplane.New(controlplane.Options{Dir: filepath.Join(f.Dir, "cp"), CADB: opts.CADB}); err != nil {
		return f, err
	}
	p := f.CP.CA.PKI()
	leaf, err := p.IssueServerCert(controlplane.DefaultAPIHostname, net.IPv4(127, 0, 0, 1))
	if err != nil {
		return f, err
	}
	cert, key := filepath.Join(f.Dir, "api.crt"), filepath.Join(f.Dir, "api.key")
	if err := os.WriteFile(cert, leaf.ChainPEM(), 0o600); err != nil {
		return f, err
	}
	if err := os.WriteFile(key, leaf.KeyPEM(), 0o600); err != nil {
		return f, err
	}
	ident, err := controlplane.NewForwardedIdentity(clientcert.Config{Roots: controlplane.ForwardedRoots(p)}, nil)
	if err != nil {
		return f, err
	}
	if f.API, err = controlplane.NewNodeAPI(controlplane.NodeAPIOptions{
		Hostname: controlplane.DefaultAPIHostname, PlainHTTP: true, Identity: ident.Identity,
	}); err != nil {
		return f, err
	}
	f.API.HoldFor(0)
	inDir := filepath.Join(f.Dir, "nginx")
	if err := os.MkdirAll(inDir, 0o755); err != nil {
		return f, err
	}
	if f.Ingress, err = ingress.Start(context.Background(), ingress.Nginx, ingress.Options{
		Hostname: controlplane.DefaultAPIHostname, ServerCertFile: cert, ServerKeyFile: key,
		ClientCAFile: p.RootPath, Upstream: f.API.URL(), Dir: inDir, WorkerConnections: opts.Connections,
	}); err != nil {
		return f, fmt.Errorf("nginx: %w", err)
	}
	if opts.Proxy {
		if f.Proxy, err = StartCAProxy(f.CP.CA); err != nil {
			return f, fmt.Errorf("CA proxy: %w", err)
		}
	}
	return f, nil
}

// Close stops everything Start started.
func (f *Fleet) Close() error {
	var errs []error
	if f.Proxy != nil {
		errs = append(errs, f.Proxy.Close())
	}
	if f.Ingress != nil {
		errs = append(errs, f.Ingress.Stop())
	}
	if f.API != nil {
		errs = append(errs, f.API.Close())
	}
	if f.CP != nil {
		errs = append(errs, f.CP.Close())
	}
	if f.ownDir {
		errs = append(errs, os.RemoveAll(f.Dir))
	}
	return errors.Join(errs...)
}

// NodeConfig is the config of a node of this fleet: the node API through
// nginx with a zero long poll (the proof is one round trip), the CA
// directly or through the proxy, and the given deadline.
func (f *Fleet) NodeConfig(nodeID, deadline string) controlplane.NodeConfig {
	c := f.CP.NodeConfig(nodeID)
	c.NodeAPI.URL = "https://" + net.JoinHostPort(controlplane.DefaultAPIHostname, strconv.Itoa(f.Ingress.Port))
	c.NodeAPI.WaitTimeout = "0s"
	if f.Proxy != nil {
		c.CA.URL = "https://" + net.JoinHostPort(f.CP.CA.Hostname(), strconv.Itoa(f.Proxy.Port()))
	}
	if deadline != "" {
		c.Bootstrap.Deadline = deadline
	}
	return c
}

// Node writes a fresh node root for nodeID (config, hosts file, a fresh
// one-time token) and returns its files and the token.
func (f *Fleet) Node(root, nodeID, deadline string) (controlplane.NodeFiles, string, error) {
	tok, err := f.CP.Token(nodeID)
	if err != nil {
		return controlplane.NodeFiles{}, "", err
	}
	files, err := controlplane.WriteNode(root, f.NodeConfig(nodeID, deadline), tok)
	return files, tok, err
}
