package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gpuaas/provision/clientcert"
	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/ingress"
	"github.com/gpuaas/provision/tests/nodetest"
)

const nodeID = "gpu-0042"

// layerExit is the product contract's exit code per layer, written out
// here rather than taken from internal/cli so the test checks the contract
// and not the code against itself.
var layerExit = map[string]int{
	"config": 3, "hosts": 10, "clock": 11, "credentials": 12, "ca": 13, "tcp": 14,
	"tls-server": 15, "tls-client-auth": 16, "route": 17, "identity": 18, "tasks-wait": 19,
	"enroll": 20, "state": 21,
}

// run is one execution of the provision binary.
type run struct {
	code           int
	rep            nodetest.Report // decoded independently of the product's types
	stdout, stderr string
	took           time.Duration
}

// envOptions shape one cell's control plane.
type envOptions struct {
	// viaService puts a stable loopback "service address" (a TCP relay, like
	// a load balancer in front of ingress pods) between the node and the
	// ingress, so the ingress can be restarted on a new port while the
	// node's node_api.url stays unchanged. HAProxy's host ACL names the
	// listener's own port, so behind the relay HAProxy runs without it.
	viaService bool
	// ingress adjusts the ingress options before the first start.
	ingress func(e *env, o *ingress.Options)
	// node adjusts the node's provision.toml before it is written.
	node func(e *env, c *controlplane.NodeConfig)
	// noToken writes no token file.
	noToken bool
	// ca shapes the cell's control plane (step-ca's certificate lifetime).
	ca controlplane.Options
	// cp, when set, is the control plane to use instead of a new one.
	cp *controlplane.ControlPlane
}

// env is one (scenario, ingress) cell: its own step-ca, node API, ingress
// and node root, so cells run in parallel.
type env struct {
	t      *testing.T
	kind   ingress.Kind
	cp     *controlplane.ControlPlane
	api    *controlplane.NodeAPI
	ident  *controlplane.ForwardedIdentitySource
	apiLog *testenv.SyncBuffer
	in     *ingress.Ingress
	opts   ingress.Options
	svc    *relay
	root   string
	cfg    controlplane.NodeConfig
	files  controlplane.NodeFiles
	// serverCert/serverKey are the ingress's certificate for the node API
	// hostname (and 127.0.0.1, so a node dialling the IP sees a certificate
	// that verifies and gets the ingress's routing answer, as in the
	// incident's 404); brokenCA is a client-CA file of the wrong shape.
	serverCert, serverKey, brokenCA string
}

// ingressRequire skips (dev machine) or fails (CI=true) when the program a
// kind needs is missing.
func ingressRequire(t *testing.T, kind ingress.Kind) { ingress.Require(t, kind) }

func newEnv(t *testing.T, kind ingress.Kind, eo envOptions) *env {
	t.Helper()
	ingressRequire(t, kind)
	e := &env{t: t, kind: kind, apiLog: &testenv.SyncBuffer{}}
	e.cp = eo.cp
	if e.cp == nil {
		e.cp = controlplane.Start(t, eo.ca)
	}
	dir := t.TempDir()
	p := e.cp.CA.PKI()
	leaf, err := p.IssueServerCert(controlplane.DefaultAPIHostname, net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	e.serverCert, e.serverKey, e.brokenCA = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), filepath.Join(dir, "broken-ca.pem")
	for _, f := range []struct {
		path string
		data []byte
	}{
		{e.serverCert, leaf.ChainPEM()}, {e.serverKey, leaf.KeyPEM()},
		// The wrong secret shape: a key where the CA bundle belongs.
		{e.brokenCA, leaf.KeyPEM()},
	} {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	logger := slog.New(slog.NewTextHandler(e.apiLog, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if e.ident, err = controlplane.NewForwardedIdentity(e.healthyIdentity(), logger); err != nil {
		t.Fatal(err)
	}
	if e.api, err = controlplane.NewNodeAPI(controlplane.NodeAPIOptions{
		Hostname: controlplane.DefaultAPIHostname, PlainHTTP: true, Identity: e.ident.Identity, Logger: logger,
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.api.Close() })

	e.opts = ingress.Options{
		Hostname:       controlplane.DefaultAPIHostname,
		ServerCertFile: e.serverCert,
		ServerKeyFile:  e.serverKey,
		ClientCAFile:   p.RootPath,
		Upstream:       e.api.URL(),
		Default404:     !(eo.viaService && kind == ingress.HAProxy),
	}
	if eo.ingress != nil {
		eo.ingress(e, &e.opts)
	}
	port := 0
	if eo.viaService {
		e.svc = newRelay(t)
		port = e.svc.port()
	}
	if err := e.startIngress(e.opts); err != nil {
		t.Fatalf("starting %s: %v", kind, err)
	}
	if port == 0 {
		port = e.in.Port
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("node API log:\n%s", e.apiLog.String())
		}
	})

	e.root = t.TempDir()
	e.cfg = e.cp.NodeConfig(nodeID)
	e.cfg.NodeAPI.URL = "https://" + net.JoinHostPort(controlplane.DefaultAPIHostname, strconv.Itoa(port))
	e.cfg.Bootstrap.Deadline = "20s"
	if eo.node != nil {
		eo.node(e, &e.cfg)
	}
	tok := ""
	if !eo.noToken {
		if tok, err = e.cp.Token(nodeID); err != nil {
			t.Fatal(err)
		}
	}
	if e.files, err = controlplane.WriteNode(e.root, e.cfg, tok); err != nil {
		t.Fatal(err)
	}
	return e
}

// healthyIdentity is the API's clientcert configuration when it is right:
// every format detected by its default header, roots + intermediate.
func (e *env) healthyIdentity() clientcert.Config {
	return clientcert.Config{Roots: controlplane.ForwardedRoots(e.cp.CA.PKI())}
}

// startIngress starts the ingress with o (stopping a running one first)
// and points the service address at it.
func (e *env) startIngress(o ingress.Options) error {
	if e.in != nil {
		if err := e.in.Stop(); err != nil {
			e.t.Errorf("stopping %s: %v", e.kind, err)
		}
		e.in = nil
	}
	in, err := ingress.Start(context.Background(), e.kind, o)
	if err != nil {
		return err
	}
	e.in, e.opts = in, o
	if e.svc != nil {
		e.svc.setTarget(in.Addr)
	}
	e.t.Cleanup(func() {
		if e.t.Failed() {
			e.t.Logf("%s log:\n%s", e.kind, in.Log())
		}
		in.Stop()
	})
	return nil
}

// restartIngress applies a control-plane fix to the ingress: a restart with
// changed options behind the same service address.
func (e *env) restartIngress(change func(o *ingress.Options)) {
	e.t.Helper()
	if e.svc == nil {
		e.t.Fatal("restartIngress needs envOptions.viaService: the node's URL names the ingress's own port")
	}
	o := e.opts
	change(&o)
	if err := e.startIngress(o); err != nil {
		e.t.Fatalf("restarting %s: %v", e.kind, err)
	}
}

// provision runs the real binary with --root and --format json.
func (e *env) provision(args ...string) run {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args = append(args, "--root", e.root, "--format", "json")
	cmd := exec.CommandContext(ctx, provisionBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := run{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		e.t.Fatalf("running provision %v: %v", args, err)
	}
	if err := json.Unmarshal(out.Bytes(), &r.rep); err != nil {
		e.t.Fatalf("provision %v (exit %d): stdout is not the JSON report: %v\nstdout:\n%s\nstderr:\n%s", args, r.code, err, r.stdout, r.stderr)
	}
	if r.rep.ExitCode == nil || *r.rep.ExitCode != r.code {
		e.t.Errorf("provision %v: report says exit_code %v, process exited %d", args, r.rep.ExitCode, r.code)
	}
	return r
}

func (e *env) bootstrap() run { return e.provision("bootstrap") }
func (e *env) verify() run    { return e.provision("verify") }

func (e *env) receiptPath() string { return filepath.Join(e.files.StateDir, "receipt.json") }

func (e *env) hasReceipt() bool {
	_, err := os.Stat(e.receiptPath())
	return err == nil
}

func (e *env) receipt() map[string]any {
	e.t.Helper()
	b, err := os.ReadFile(e.receiptPath())
	if err != nil {
		e.t.Fatalf("reading the receipt: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		e.t.Fatalf("receipt %s: %v", b, err)
	}
	return m
}

// relay is the node API's stable service address: it accepts on one
// loopback port for the whole test and forwards each TCP connection,
// byte for byte (TLS passes through untouched), to the current ingress.
type relay struct {
	ln     net.Listener
	mu     sync.Mutex
	target string
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
	// cutIn > 0 resets the cutIn-th connection from now right after its
	// ClientHello arrives, without forwarding it (a reload or a reset
	// exactly there); cuts counts the connections so reset.
	cutIn, cuts int
	// acts, when armed, say what happens to the next connections, in
	// order (arm); taken counts the connections an act took.
	acts  []func(net.Conn)
	taken int
}

// arm sets what the relay does with the next connections it accepts, one
// entry each, in order: nil forwards the connection to the ingress, a
// function takes it instead. The last entry stays for every connection
// after; arm() with nothing forwards them all again.
func (r *relay) arm(acts ...func(net.Conn)) {
	r.mu.Lock()
	r.acts = acts
	r.mu.Unlock()
}

// next is the act for the connection just accepted (nil: forward it).
func (r *relay) next() func(net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.acts) == 0 {
		return nil
	}
	a := r.acts[0]
	if len(r.acts) > 1 {
		r.acts = r.acts[1:]
	}
	if a != nil {
		r.taken++
	}
	return a
}

// takenCount is how many connections an armed act took.
func (r *relay) takenCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.taken
}

// alertAfterHello reads the client's first bytes and answers with a
// fatal TLS alert (handshake_failure), as a server refusing the
// handshake does, then closes c.
func alertAfterHello(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	c.Read(make([]byte, 512))
	c.Write([]byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28}) // alert record, TLS 1.2: fatal, handshake_failure
	c.Close()
}

// holdAfterHello reads the client's first bytes and never answers, until
// the client gives up (or the relay closes).
func holdAfterHello(c net.Conn) {
	io.Copy(io.Discard, c)
	c.Close()
}

// cutNth arms the relay to reset the n-th connection accepted from now
// after its first bytes (the ClientHello), before the ingress sees it.
func (r *relay) cutNth(n int) {
	r.mu.Lock()
	r.cutIn = n
	r.mu.Unlock()
}

// cutCount is how many connections the relay reset so.
func (r *relay) cutCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cuts
}

// cutThis reports whether the connection just accepted is the one to cut.
func (r *relay) cutThis() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cutIn == 0 {
		return false
	}
	r.cutIn--
	if r.cutIn > 0 {
		return false
	}
	r.cuts++
	return true
}

// resetAfterHello reads the client's first bytes, then resets c (RST).
func resetAfterHello(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	c.Read(buf)
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

func newRelay(t *testing.T) *relay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(r.close)
	return r
}

func (r *relay) port() int { return r.ln.Addr().(*net.TCPAddr).Port }

func (r *relay) setTarget(addr string) {
	r.mu.Lock()
	r.target = addr
	r.mu.Unlock()
}

func (r *relay) track(c net.Conn, add bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if add {
		r.conns[c] = struct{}{}
	} else {
		delete(r.conns, c)
	}
}

func (r *relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		if act := r.next(); act != nil {
			r.track(c, true)
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				defer r.track(c, false)
				act(c)
			}()
			continue
		}
		if r.cutThis() {
			go resetAfterHello(c)
			continue
		}
		r.mu.Lock()
		target := r.target
		r.mu.Unlock()
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer c.Close()
			up, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				return
			}
			defer up.Close()
			r.track(c, true)
			r.track(up, true)
			defer r.track(c, false)
			defer r.track(up, false)
			done := make(chan struct{}, 2)
			pipe := func(dst, src net.Conn) {
				_, _ = io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				done <- struct{}{}
			}
			go pipe(up, c)
			go pipe(c, up)
			<-done
			<-done
		}()
	}
}

func (r *relay) close() {
	r.ln.Close()
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
