// Package system is the host seam: every path provision reads or writes, the
// name resolution the node-agent will use, and the clock go through here.
// So do the careful ways to touch the host as root: ReadRegular (the one
// way to read a file: never a FIFO, never unbounded), WriteFileAtomic, and
// ClaimDir, the one rule for which directories are provision's own (it
// never takes over one holding somebody else's files).
//
// Keeping them in one place is what makes --root work everywhere (an installer
// writing into a chroot, and every test) without special cases elsewhere, and
// what lets tests skew the clock or point name resolution at a hosts file they
// own.
package system

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Clock tells the time. Tests inject a skewed one.
type Clock func() time.Time

// Host is the machine provision acts on, possibly under a root directory.
type Host struct {
	// Root is the filesystem root; "/" on a live system.
	Root string
	// Now is the clock; nil means time.Now.
	Now Clock
	// HostsFile is the hosts file path (as seen from inside Root) that
	// name resolution consults when Root is not "/".
	HostsFile string
	// claimed maps each directory ClaimDir claimed, as a node path, to the
	// node path it resolved to (Path).
	claimed map[string]string
	// Hook is called at named points of every write provision makes on
	// this host (crash points); nil in production. The crash tests' build
	// of the binary sets it to kill the process there, and unit tests set
	// it on their own Host: it is passed in, never a package variable.
	Hook Hook
	// Overlay maps lower-case names to addresses, consulted by LookupHost
	// before anything else: the hosts block a dry run decided but did not
	// write (bootstrap writes it before its first connection, so its dry
	// run resolves as the run will). nil in every run that writes.
	Overlay map[string][]netip.Addr
}

// Hook marks a named point of a run: "hosts written", "before sign",
// "before rename receipt.json"... A nil Hook does nothing.
type Hook func(step string)

// At calls h with step, if h is set.
func (h Hook) At(step string) {
	if h != nil {
		h(step)
	}
}

type hookKey struct{}

// WithHook returns ctx carrying h, for main to hand the crash points of a
// test build to the CLI, which sets them on the Host it builds.
func WithHook(ctx context.Context, h Hook) context.Context {
	return context.WithValue(ctx, hookKey{}, h)
}

// HookFrom returns the Hook ctx carries, or nil.
func HookFrom(ctx context.Context) Hook {
	h, _ := ctx.Value(hookKey{}).(Hook)
	return h
}

// New returns a Host rooted at root ("" means "/").
func New(root string) (*Host, error) {
	if root == "" {
		root = "/"
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("--root %q: %w", root, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("--root %q: %w", root, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("--root %q: not a directory", root)
	}
	return &Host{Root: abs, HostsFile: "/etc/hosts"}, nil
}

// Path maps an absolute path as seen on the node to the real path under Root.
// A path under a directory ClaimDir claimed (state_dir, pki_dir) is mapped
// to where that directory resolved under the path rule, so every later
// step reaches the directory that was judged: the kernel, resolving the
// configured name again, would take an absolute link target outside Root.
func (h *Host) Path(p string) string {
	if to, ok := h.claimedPath(p); ok {
		p = to
	}
	return h.rawPath(p)
}

// rawPath is Path without the claimed directories' mapping: for a node
// path with every link already resolved.
func (h *Host) rawPath(p string) string {
	if h.Root == "/" || h.Root == "" {
		return filepath.Clean(p)
	}
	return filepath.Join(h.Root, filepath.Clean("/"+p))
}

// isClaimed says whether the resolved node path p is a directory ClaimDir
// claimed.
func (h *Host) isClaimed(p string) bool {
	for _, to := range h.claimed {
		if to == p {
			return true
		}
	}
	return false
}

// claimedPath maps the node path p under a claimed directory (the longest
// that holds it) to the same path under where that directory resolved.
func (h *Host) claimedPath(p string) (string, bool) {
	p = filepath.Clean("/" + p)
	best := ""
	for dir := range h.claimed {
		if (p == dir || strings.HasPrefix(p, dir+"/")) && len(dir) > len(best) {
			best = dir
		}
	}
	if best == "" {
		return "", false
	}
	return filepath.Join(h.claimed[best], strings.TrimPrefix(p, best)), true
}

// Time returns the current time from the host's clock.
func (h *Host) Time() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

// IsLive reports whether the host is the running system (Root is "/"), in
// which case the system resolver and getent speak for the node-agent.
func (h *Host) IsLive() bool { return h.Root == "/" || h.Root == "" }

// MachineID returns /etc/machine-id under Root, or "" when absent or not a
// regular file (a link is followed inside Root: images link it to
// /var/lib/dbus/machine-id or the other way round). It tells one
// installation from the next: a reinstall gets a new one.
func (h *Host) MachineID() string {
	b, err := ReadRegular(context.Background(), h.ResolvedPath("/etc/machine-id"), 4096)
	if err != nil {
		return ""
	}
	id := strings.TrimSpace(string(b))
	if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
		return ""
	}
	return id
}

// ErrNotFound is returned when a name has no address.
var ErrNotFound = errors.New("no address for name")

// LookupHost resolves name the way the node-agent would. On a live system
// that is Go's resolver (which honours nsswitch.conf and /etc/hosts). Under
// --root, the only source a process in that root would share with us is the
// root's hosts file, so that file is parsed with the same rules Go uses.
func (h *Host) LookupHost(ctx context.Context, name string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(name); err == nil {
		return []netip.Addr{ip}, nil
	}
	if a := h.Overlay[strings.ToLower(name)]; len(a) > 0 {
		return a, nil
	}
	if !h.IsLive() {
		return h.lookupHostsFile(ctx, name)
	}
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return nil, fmt.Errorf("%s: %w", name, ErrNotFound)
		}
		return nil, err
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if ip, err := netip.ParseAddr(a); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// MaxHostsFile caps the hosts file provision reads or edits; a real one is
// a few KiB.
const MaxHostsFile = 4 << 20

func (h *Host) lookupHostsFile(ctx context.Context, name string) ([]netip.Addr, error) {
	// A symlinked hosts file is read at its target, as the node sees it; a
	// FIFO or device there is refused rather than read.
	b, err := ReadRegular(ctx, h.ResolvedPath(h.HostsFile), MaxHostsFile)
	if err != nil {
		return nil, fmt.Errorf("reading hosts file: %w", err)
	}
	addrs := ParseHosts(b)[strings.ToLower(name)]
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%s: %w in %s", name, ErrNotFound, h.HostsFile)
	}
	return addrs, nil
}

// ParseHosts parses hosts(5) text into name -> addresses in file order, the
// way Go's resolver does (every line counts, comments stripped).
func ParseHosts(b []byte) map[string][]netip.Addr {
	m := map[string][]netip.Addr{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		ip, names, ok := HostsLine(sc.Text())
		if !ok {
			continue
		}
		for _, n := range names {
			n = strings.ToLower(n)
			m[n] = append(m[n], ip.Unmap())
		}
	}
	return m
}

// HostsLine reads one hosts(5) line: its address and names, the comment
// stripped; ok is false for a line that maps nothing. It is the one line
// parser, for resolution here and for the managed block's conflicts.
func HostsLine(line string) (ip netip.Addr, names []string, ok bool) {
	if i := strings.IndexByte(line, '#'); i >= 0 {
		line = line[:i]
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return netip.Addr{}, nil, false
	}
	ip, err := netip.ParseAddr(f[0])
	if err != nil {
		return netip.Addr{}, nil, false
	}
	return ip, f[1:], true
}

// Getent resolves name through NSS with getent(1), the path glibc programs
// take. It returns ok=false when getent is not available or Root is not "/",
// since NSS cannot be pointed at another root.
func (h *Host) Getent(ctx context.Context, name string) (addrs []netip.Addr, ok bool, err error) {
	if !h.IsLive() {
		return nil, false, nil
	}
	path, lerr := exec.LookPath("getent")
	if lerr != nil {
		return nil, false, nil
	}
	out, err := exec.CommandContext(ctx, path, "ahosts", name).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 2 {
			return nil, true, fmt.Errorf("%s: %w (getent)", name, ErrNotFound)
		}
		if cerr := ctx.Err(); cerr != nil {
			// Killed, or never started, because the run's context ended:
			// not an answer of the resolver.
			return nil, true, fmt.Errorf("getent ahosts %s: stopped before it answered: %w", name, cerr)
		}
		return nil, true, fmt.Errorf("getent ahosts %s: %w", name, err)
	}
	seen := map[netip.Addr]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if ip, err := netip.ParseAddr(f[0]); err == nil && !seen[ip.Unmap()] {
			seen[ip.Unmap()] = true
			addrs = append(addrs, ip.Unmap())
		}
	}
	return addrs, true, nil
}

// DialContext dials host:port, resolving host through LookupHost. Every
// connection provision makes goes through here, so the proof takes the same
// name-resolution path as the node-agent.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	addrs, err := h.LookupHost(ctx, host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: err.Error(), Name: host, IsNotFound: errors.Is(err, ErrNotFound)}}
	}
	var d net.Dialer
	var firstErr error
	for _, a := range addrs {
		c, err := d.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}
