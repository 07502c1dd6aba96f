// Package ingress starts real ingresses (nginx, HAProxy, Caddy) and a
// Traefik-behaviour emulation on loopback, each terminating mTLS in front of
// a plain-HTTP upstream, for the integration suite.
//
// Why: every failure of the node-API incident (404 from raw-IP routing, TLS
// EOF, unknown certificate authority, 401 with mtls_present=false) happened
// in the ingress, between the node and the API. provision's classifier and
// the clientcert parsers are only trustworthy if they are exercised against
// what the real programs do, including the ways operators misconfigure them,
// so this package runs the real Debian binaries as unprivileged child
// processes with generated configurations in a temporary directory (no
// system service, no systemd) and records exactly how each one forwards the
// client certificate (see the Forwarding values and header constants).
//
// Traefik's binary cannot be built in this project's environment, so Kind
// Traefik is an in-process emulation of Traefik v3.x behaviour written from
// the documented facts; see traefik.go.
//
// A test that needs a program that is not installed must call Require: it
// skips loudly on a developer machine and fails when CI=true.
package ingress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
)

// Kind names an ingress implementation.
type Kind string

// The ingresses this package can start.
const (
	Nginx   Kind = "nginx"
	HAProxy Kind = "haproxy"
	Caddy   Kind = "caddy"
	// Traefik is the in-process emulation of Traefik v3.x (see traefik.go);
	// it needs no program.
	Traefik Kind = "traefik-emulation"
)

// Kinds lists every ingress, real programs first.
var Kinds = []Kind{Nginx, HAProxy, Caddy, Traefik}

// Program returns the executable a Kind needs, or "" for the emulation.
func (k Kind) Program() string {
	switch k {
	case Nginx, HAProxy, Caddy:
		return string(k)
	}
	return ""
}

// DebianPackages are the packages CI must install for the real ingresses.
var DebianPackages = []string{"nginx", "haproxy", "caddy"}

// Options configure an ingress. The zero value of every knob is the healthy,
// conventional configuration; the knobs reproduce the incident's
// misconfigurations where the program supports them.
type Options struct {
	// Hostname is the node API hostname the ingress routes (server_name,
	// Host rule, SNI match). Required.
	Hostname string
	// ServerCertFile and ServerKeyFile are the ingress's serving certificate
	// (PEM, leaf first, intermediates after) and key for Hostname. Required.
	ServerCertFile, ServerKeyFile string
	// ClientCAFile is the PEM bundle the ingress trusts for client
	// authentication. Pass another CA's file to reproduce "wrong CA
	// material"; pass a file that is not PEM (or a path that does not exist)
	// to reproduce a broken CA option: the real programs then refuse to
	// start, the Traefik emulation closes the connection after ClientHello.
	ClientCAFile string
	// Upstream is the plain-HTTP backend, "http://127.0.0.1:port". Required.
	Upstream string

	// NoForwardCert omits the forwarding directive entirely, as the
	// incident's operator did: the upstream receives no certificate header
	// (and, as in a real configuration without it, a header of the same
	// name sent by the client is not removed by nginx, HAProxy or Caddy).
	NoForwardCert bool
	// UpstreamTimeout, when non-zero, bounds how long the ingress waits for
	// the upstream's response headers (nginx proxy_read_timeout, HAProxy
	// timeout server, Caddy response_header_timeout, Traefik
	// forwardingTimeouts.responseHeaderTimeout), so a long poll that
	// outlives it gets a 504/502 from the ingress.
	UpstreamTimeout time.Duration
	// Default404 adds a default server/route answering 404 for any Host
	// other than Hostname (nginx default_server with "return 404"; an
	// HAProxy "http-request return status 404"; a Caddy catch-all route).
	// The Traefik emulation always behaves this way (no router: 404).
	Default404 bool
	// TraefikInfo adds the X-Forwarded-Tls-Client-Cert-Info header with
	// every info field enabled (Traefik only).
	TraefikInfo bool

	// The knobs below reproduce operator misconfigurations found in the
	// programs' documentation and issue trackers (the integration suite's
	// misconfig_test.go). They apply to the real programs only; the Traefik
	// emulation rejects them. Their zero values change nothing.

	// RejectHandshake makes the ingress refuse the TLS handshake for
	// Hostname before sending any certificate: nginx "ssl_reject_handshake
	// on" in the Hostname server block; HAProxy "strict-sni" on the bind
	// line (so give it a ServerCertFile for another name: no certificate
	// matches the SNI); Caddy a single TLS connection policy matching only
	// another SNI, i.e. no site for Hostname.
	RejectHandshake bool
	// MinTLS and MaxTLS pin the protocol versions the ingress accepts:
	// "1.0", "1.1", "1.2" or "1.3" ("" keeps the program's default). nginx
	// ssl_protocols, HAProxy ssl-min-ver/ssl-max-ver, Caddy
	// protocol_min/protocol_max.
	MinTLS, MaxTLS string
	// ClientAuth is how the ingress asks for the client certificate; the
	// zero value requires and verifies it.
	ClientAuth ClientAuthMode
	// VerifyDepth, when set, is nginx's ssl_verify_depth (nil keeps 3;
	// leaf -> intermediate -> root needs 1). nginx only.
	VerifyDepth *int
	// PlainHTTP serves plain HTTP on the ingress's port: the listener
	// without TLS (nginx "listen" without "ssl", HAProxy "bind" without
	// "ssl", Caddy a server without TLS connection policies).
	PlainHTTP bool
	// StripPrefix makes the ingress remove this path prefix before
	// proxying: nginx "location <prefix>/ { proxy_pass http://up/; }" (a
	// proxy_pass with a URI replaces the matched location), HAProxy
	// "http-request replace-path", Caddy handle_path (strip_path_prefix).
	StripPrefix string
	// RedirectTo makes the ingress answer every request for Hostname with a
	// 301 to this path instead of proxying it.
	RedirectTo string

	// WorkerConnections is nginx's events.worker_connections (0 keeps 64).
	// A boot storm of many nodes needs more: each proxied request holds two.
	WorkerConnections int

	// Dir holds the generated configuration, logs and runtime files. If
	// empty, a temporary directory is created and removed by Stop.
	Dir string
}

// ClientAuthMode is how an ingress asks for the client certificate.
type ClientAuthMode string

// The client-auth modes.
const (
	// ClientAuthRequired requires a certificate and verifies it against
	// ClientCAFile (nginx "ssl_verify_client on", HAProxy "verify required",
	// Caddy "require_and_verify"): the default.
	ClientAuthRequired ClientAuthMode = ""
	// ClientAuthOptional asks for a certificate and verifies one that is
	// sent, but lets the request through without one (nginx "optional",
	// HAProxy "verify optional", Caddy "verify_if_given").
	ClientAuthOptional ClientAuthMode = "optional"
	// ClientAuthRequest asks for a certificate and does not verify it
	// (nginx "optional_no_ca", HAProxy "verify optional" with
	// "ca-ignore-err all crt-ignore-err all", Caddy "request").
	ClientAuthRequest ClientAuthMode = "request"
	// ClientAuthOff never asks for a certificate (nginx "ssl_verify_client
	// off", HAProxy "verify none", Caddy no client_authentication).
	ClientAuthOff ClientAuthMode = "off"
)

// misconfigured reports whether o sets any knob the emulation lacks.
func (o Options) misconfigured() bool {
	return o.RejectHandshake || o.MinTLS != "" || o.MaxTLS != "" || o.ClientAuth != ClientAuthRequired ||
		o.VerifyDepth != nil || o.PlainHTTP || o.StripPrefix != "" || o.RedirectTo != ""
}

func (o Options) validate() error {
	var missing []string
	if o.Hostname == "" {
		missing = append(missing, "Hostname")
	}
	if o.ServerCertFile == "" || o.ServerKeyFile == "" {
		missing = append(missing, "ServerCertFile/ServerKeyFile")
	}
	if o.ClientCAFile == "" {
		missing = append(missing, "ClientCAFile")
	}
	if o.Upstream == "" {
		missing = append(missing, "Upstream")
	}
	if len(missing) > 0 {
		return fmt.Errorf("ingress options: missing %v", missing)
	}
	u, err := url.Parse(o.Upstream)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return fmt.Errorf("ingress options: upstream %q is not http://host:port", o.Upstream)
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return fmt.Errorf("ingress options: upstream %q has no port", o.Upstream)
	}
	return nil
}

// upstreamHostPort returns "127.0.0.1:port" from Options.Upstream.
func (o Options) upstreamHostPort() string {
	u, _ := url.Parse(o.Upstream)
	return u.Host
}

// Ingress is a running ingress.
type Ingress struct {
	Kind Kind
	// Addr is the loopback address it listens on, "127.0.0.1:port".
	Addr string
	// Port is Addr's port.
	Port int
	// URL is "https://<Hostname>:<Port>"; dial it through DialContext.
	URL string
	// Forwarding describes exactly how this ingress forwards the client
	// certificate to the upstream (zero Header when NoForwardCert is set).
	Forwarding Forwarding
	// Dir holds the generated configuration and log files.
	Dir string

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	log     *testenv.SyncBuffer
	stop    func() error // emulation
	rmDir   bool
	stopped sync.Once
	stopErr error
}

// DialContext dials the ingress whatever address it is asked for, so an
// http.Transport can use URL (with the real hostname, for SNI, Host and the
// certificate name check) without touching name resolution.
func (in *Ingress) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, in.Addr)
}

// Log returns what the program wrote to stderr/stdout (and its log files)
// so far, for test failure messages.
func (in *Ingress) Log() string {
	s := in.log.String()
	for _, name := range []string{"error.log", "access.log"} {
		if b, err := os.ReadFile(in.Dir + "/" + name); err == nil && len(b) > 0 {
			s += "\n--- " + name + " ---\n" + string(b)
		}
	}
	return s
}

// Stop stops the ingress and waits for it to exit. It is safe to call more
// than once.
func (in *Ingress) Stop() error {
	in.stopped.Do(func() {
		if in.stop != nil {
			in.stopErr = in.stop()
		} else if in.cmd != nil {
			in.stopErr = stopProcess(in.cmd, in.exited)
		}
		if in.rmDir {
			os.RemoveAll(in.Dir)
		}
	})
	return in.stopErr
}

// Reload makes a running nginx read its configuration and the files it
// names again (the client-auth CA file, the certificates), the way an
// operator applies a fix: SIGHUP to the master, which starts a new worker
// with the new configuration and lets the old one finish. It returns once
// the new worker has started and the old one stopped accepting; a
// configuration nginx refuses leaves the old one running and is an error
// with nginx's log. Only nginx is supported.
func (in *Ingress) Reload(ctx context.Context) error {
	if in.Kind != Nginx || in.cmd == nil {
		return fmt.Errorf("reload: not supported for %s", in.Kind)
	}
	// nginx logs "reconfiguring" on SIGHUP, then "start worker process"
	// for the new worker, then the old worker's "gracefully shutting down"
	// once it stopped accepting: only then does every new connection get
	// the new configuration.
	reloads := func() (n int, done bool) {
		l := in.Log()
		i := strings.LastIndex(l, "reconfiguring")
		return strings.Count(l, "reconfiguring"), i >= 0 && strings.Contains(l[i:], "start worker process") && strings.Contains(l[i:], "gracefully shutting down")
	}
	before, _ := reloads()
	if err := in.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload: signalling nginx: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for n, done := reloads(); n <= before || !done; n, done = reloads() {
		select {
		case <-in.exited:
			return fmt.Errorf("reload: nginx exited: %v\n%s", in.waitErr, in.Log())
		case <-ctx.Done():
			return fmt.Errorf("reload: nginx started no new worker: %w\n%s", ctx.Err(), in.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// Start starts an ingress of the given kind and returns once it accepts
// connections. The caller must Stop it. A program that fails to start
// (including because of a broken CA file) is reported with its log.
func Start(ctx context.Context, kind Kind, opts Options) (*Ingress, error) {
	for attempt := 1; ; attempt++ {
		in, err := start(ctx, kind, opts)
		if !errors.Is(err, errPortTaken) || attempt == 3 {
			return in, err
		}
	}
}

func start(ctx context.Context, kind Kind, opts Options) (*Ingress, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	in := &Ingress{Kind: kind, log: &testenv.SyncBuffer{}}
	if opts.Dir == "" {
		d, err := os.MkdirTemp("", "ingress-"+string(kind)+"-")
		if err != nil {
			return nil, fmt.Errorf("creating ingress dir: %w", err)
		}
		opts.Dir, in.rmDir = d, true
	}
	in.Dir = opts.Dir
	fail := func(err error) (*Ingress, error) {
		in.Stop()
		return nil, err
	}
	if kind == Traefik {
		if opts.misconfigured() {
			return fail(errors.New("ingress options: the Traefik emulation does not implement the misconfiguration knobs"))
		}
		if err := startTraefik(in, opts); err != nil {
			return fail(err)
		}
		return in, nil
	}
	port, err := freePort()
	if err != nil {
		return fail(err)
	}
	in.Port = port
	in.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	in.URL = "https://" + net.JoinHostPort(opts.Hostname, strconv.Itoa(port))

	var args []string
	env := os.Environ()
	switch kind {
	case Nginx:
		args, err = writeNginx(in, opts)
	case HAProxy:
		args, err = writeHAProxy(in, opts)
	case Caddy:
		args, err = writeCaddy(in, opts)
		env = append(env, "HOME="+in.Dir, "XDG_DATA_HOME="+in.Dir+"/xdg-data", "XDG_CONFIG_HOME="+in.Dir+"/xdg-config")
	default:
		return fail(fmt.Errorf("unknown ingress kind %q", kind))
	}
	if err != nil {
		return fail(err)
	}
	bin, err := testenv.LookProgram(kind.Program())
	if err != nil {
		return fail(fmt.Errorf("%s is not installed (Debian package %q): %w", kind, kind.Program(), err))
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = in.Dir
	cmd.Env = env
	cmd.Stdout = in.log
	cmd.Stderr = in.log
	// Own process group, so nginx's worker dies with its master.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("starting %s: %w", kind, err))
	}
	in.cmd = cmd
	in.exited = make(chan struct{})
	go func() {
		in.waitErr = cmd.Wait()
		close(in.exited)
	}()
	if err := waitReady(ctx, in.Addr, in.exited, 15*time.Second, cmd.Process.Pid); err != nil {
		in.Stop()
		return nil, fmt.Errorf("%s did not become ready: %w (exit: %v)\n%s", kind, err, in.waitErr, in.Log())
	}
	return in, nil
}

// Require skips (developer machine) or fails (CI=true) the test when the
// program kind needs is not installed, and returns its path.
func Require(tb testing.TB, kind Kind) string {
	tb.Helper()
	prog := kind.Program()
	if prog == "" {
		return ""
	}
	p, err := testenv.LookProgram(prog)
	if err == nil {
		return p
	}
	testenv.SkipOrFail(tb, "!!! %s NOT INSTALLED: this integration test needs the real program; install it with `apt-get install -y %s` (CI installs %v) !!!", prog, prog, DebianPackages)
	return ""
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitReady waits until the program (process group pgid) listens on addr.
// A dial that succeeds is not enough: freePort's port is free only until
// it returns, and under parallel tests another listener (a backend of
// another test) can take it before the program binds it; the program then
// exits, and a dial reaches the other listener (TestIncidentReplay once
// met plain HTTP where haproxy should have been). So the listening socket
// must be one of the program's (/proc).
func waitReady(ctx context.Context, addr string, exited <-chan struct{}, limit time.Duration, pgid int) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	_, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	port, _ := strconv.Atoi(portStr)
	other := false // something not the program's answered on addr
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			if groupListens(pgid, port) {
				return nil
			}
			other = true
		}
		select {
		case <-exited:
			if other {
				return fmt.Errorf("%w: %s", errPortTaken, addr)
			}
			return errors.New("program exited")
		case <-ctx.Done():
			return fmt.Errorf("nothing of the program's listening on %s: %w", addr, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// errPortTaken: the program exited while another process listened on the
// port freePort had found free; Start tries again with another port.
var errPortTaken = errors.New("program exited while another process listened on its port")

// groupListens reports whether a process of process group pgid holds a
// socket listening on TCP port (IPv4 or IPv6), from /proc.
func groupListens(pgid, port int) bool {
	inodes := map[string]bool{}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(f[1], ":")
			if p, err := strconv.ParseInt(hexPort, 16, 32); ok && err == nil && int(p) == port {
				inodes["socket:["+f[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return false
	}
	procs, _ := os.ReadDir("/proc")
	for _, pe := range procs {
		pid, err := strconv.Atoi(pe.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err != nil || g != pgid {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", pe.Name(), "fd"))
		for _, fd := range fds {
			if t, err := os.Readlink(filepath.Join("/proc", pe.Name(), "fd", fd.Name())); err == nil && inodes[t] {
				return true
			}
		}
	}
	return false
}

func stopProcess(cmd *exec.Cmd, exited <-chan struct{}) error {
	pgid := -cmd.Process.Pid
	select {
	case <-exited:
		return nil
	default:
	}
	syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		syscall.Kill(pgid, syscall.SIGKILL)
		<-exited
		return fmt.Errorf("%s did not stop on SIGTERM; killed", cmd.Path)
	}
	// nginx's master waits for its workers before exiting, so the group is
	// empty now.
	return nil
}
