package nodekey

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

// DefaultTPM is the TPM a key is made in and signs with when no other is
// named: the kernel's resource manager, which gives each open file its own
// handles and flushes them when it is closed.
const DefaultTPM = "/dev/tpmrm0"

// SwtpmPrefix starts a software TPM's socket in tpm2-tss's TCTI syntax.
const SwtpmPrefix = "swtpm:"

// Spec is a parsed TPM name: a device path, or a software TPM's socket
// (a unix socket path, or a loopback host and port).
type Spec struct {
	Device string // an absolute device path ("/dev/tpmrm0")
	Socket string // a unix socket path (swtpm:path=...)
	Addr   string // host:port (swtpm:host=...,port=...)
}

func (s Spec) String() string {
	switch {
	case s.Socket != "":
		return SwtpmPrefix + "path=" + s.Socket
	case s.Addr != "":
		h, p, _ := net.SplitHostPort(s.Addr)
		return SwtpmPrefix + "host=" + h + ",port=" + p
	}
	return s.Device
}

// IsDevice reports whether the spec names a device (not a socket).
func (s Spec) IsDevice() bool { return s.Device != "" }

// ParseSpec reads a TPM name: an absolute, clean device path, or
// "swtpm:path=<absolute socket path>", or "swtpm:host=<host>,port=<1-65535>"
// (host defaults to localhost, port to 2321, swtpm's defaults).
func ParseSpec(s string) (Spec, error) {
	if !strings.HasPrefix(s, SwtpmPrefix) {
		if !strings.HasPrefix(s, "/") || filepath.Clean(s) != s || s == "/" {
			return Spec{}, fmt.Errorf("%q is neither an absolute, clean device path (such as %s) nor a software TPM socket (swtpm:path=<socket> or swtpm:host=<host>,port=<port>)", s, DefaultTPM)
		}
		return Spec{Device: s}, nil
	}
	host, port, path := "", "", ""
	for _, kv := range strings.Split(strings.TrimPrefix(s, SwtpmPrefix), ",") {
		k, v, ok := strings.Cut(kv, "=")
		switch {
		case !ok || v == "":
			return Spec{}, fmt.Errorf("%q: %q is not key=value (path=, host=, port=)", s, kv)
		case k == "path":
			path = v
		case k == "host":
			host = v
		case k == "port":
			port = v
		default:
			return Spec{}, fmt.Errorf("%q: unknown swtpm option %q (path=, host=, port=)", s, k)
		}
	}
	if path != "" {
		if host != "" || port != "" {
			return Spec{}, fmt.Errorf("%q: path= and host=/port= exclude each other", s)
		}
		if !strings.HasPrefix(path, "/") || filepath.Clean(path) != path {
			return Spec{}, fmt.Errorf("%q: the socket path must be absolute and clean", s)
		}
		return Spec{Socket: path}, nil
	}
	if host == "" {
		host = "localhost"
	}
	if port == "" {
		port = "2321"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return Spec{}, fmt.Errorf("%q: port %q is not 1-65535", s, port)
	}
	return Spec{Addr: net.JoinHostPort(host, port)}, nil
}

// open connects to the TPM spec names. A device is opened read-write for
// the whole operation (the kernel's resource manager flushes what this
// process leaves loaded when the file closes); a software TPM's socket is
// dialled once per command, since swtpm serves one connection at a time and
// another process (provision and the node-agent) must get its turn.
func open(s Spec) (transport.TPMCloser, error) {
	if s.Device != "" {
		return openDevice(s.Device)
	}
	network, addr := "unix", s.Socket
	if s.Addr != "" {
		network, addr = "tcp", s.Addr
	}
	if network == "unix" {
		st, err := os.Stat(addr)
		if err != nil {
			return nil, deviceError(s, err)
		}
		if st.Mode()&os.ModeSocket == 0 {
			return nil, &Error{Kind: NoDevice, Op: "open", TPM: s.String(), Err: fmt.Errorf("%s is not a socket", addr)}
		}
	}
	t := &socketTPM{spec: s, network: network, addr: addr}
	// One command proves the socket answers before anything else is tried.
	if _, err := t.Send(getRandomCmd); err != nil {
		return nil, err
	}
	return t, nil
}

func openDevice(path string) (transport.TPMCloser, error) {
	s := Spec{Device: path}
	st, err := os.Stat(path)
	if err != nil {
		return nil, deviceError(s, err)
	}
	if st.Mode()&os.ModeCharDevice == 0 {
		return nil, &Error{Kind: NoDevice, Op: "open", TPM: path, Err: fmt.Errorf("%s is not a character device (mode %s)", path, st.Mode())}
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, deviceError(s, err)
	}
	return &deviceTPM{f: f}, nil
}

// deviceError names a TPM that cannot be opened: absent, or present and
// not open to this process (its permissions, or a unit without
// DeviceAllow=).
func deviceError(s Spec, err error) error {
	kind := NoDevice
	if errors.Is(err, os.ErrPermission) {
		kind = NoAccess
	}
	return &Error{Kind: kind, Op: "open", TPM: s.String(), Err: err}
}

// maxResponse bounds a TPM response: the largest is a few KiB.
const maxResponse = 64 << 10

// ioTimeout bounds one command on a socket: a software TPM answers in
// milliseconds, and a wedged one must not hang a run.
const ioTimeout = 30 * time.Second

// socketTPM sends each command on a connection of its own.
type socketTPM struct {
	spec          Spec
	network, addr string
}

func (t *socketTPM) Send(cmd []byte) ([]byte, error) {
	for try := 0; ; try++ {
		rsp, err := t.sendOnce(cmd)
		if err != nil || try >= 10 || !retryable(rsp) {
			return rsp, err
		}
		time.Sleep(time.Duration(try+1) * 5 * time.Millisecond)
	}
}

func (t *socketTPM) sendOnce(cmd []byte) ([]byte, error) {
	c, err := net.DialTimeout(t.network, t.addr, ioTimeout)
	if err != nil {
		kind := NoDevice
		if errors.Is(err, os.ErrPermission) {
			kind = NoAccess
		}
		return nil, &Error{Kind: kind, Op: "connect", TPM: t.spec.String(), Err: err}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write(cmd); err != nil {
		return nil, &Error{Kind: Failed, Op: "send", TPM: t.spec.String(), Err: err}
	}
	return readResponse(c, t.spec)
}

// readResponse reads one whole response: a 10-byte header (tag, size,
// code), then the rest of size, however the bytes arrive.
func readResponse(r io.Reader, s Spec) ([]byte, error) {
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, &Error{Kind: Failed, Op: "receive", TPM: s.String(), Err: err}
	}
	n := binary.BigEndian.Uint32(hdr[2:6])
	if n < 10 || n > maxResponse {
		return nil, &Error{Kind: Failed, Op: "receive", TPM: s.String(), Err: notResponse(int(n))}
	}
	rsp := make([]byte, n)
	copy(rsp, hdr)
	if _, err := io.ReadFull(r, rsp[10:]); err != nil {
		return nil, &Error{Kind: Failed, Op: "receive", TPM: s.String(), Err: err}
	}
	return rsp, nil
}

func (t *socketTPM) Close() error { return nil }

// notResponse is a TPM's answer of n bytes that cannot be one.
func notResponse(n int) error { return fmt.Errorf("a response of %d bytes is not a TPM response", n) }

// deviceTPM is an open TPM character device: one write, one read per
// command, as the kernel driver wants.
type deviceTPM struct {
	mu sync.Mutex
	f  *os.File
}

func (t *deviceTPM) Send(cmd []byte) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for try := 0; ; try++ {
		if _, err := t.f.Write(cmd); err != nil {
			return nil, &Error{Kind: Failed, Op: "send", TPM: t.f.Name(), Err: err}
		}
		buf := make([]byte, maxResponse)
		n, err := t.f.Read(buf)
		if err != nil {
			return nil, &Error{Kind: Failed, Op: "receive", TPM: t.f.Name(), Err: err}
		}
		if n < 10 || int(binary.BigEndian.Uint32(buf[2:6])) != n {
			return nil, &Error{Kind: Failed, Op: "receive", TPM: t.f.Name(), Err: notResponse(n)}
		}
		if try >= 10 || !retryable(buf[:n]) {
			return buf[:n], nil
		}
		time.Sleep(time.Duration(try+1) * 5 * time.Millisecond)
	}
}

func (t *deviceTPM) Close() error { return t.f.Close() }

// Response codes a TPM asks to be retried with: TPM_RC_RETRY,
// TPM_RC_YIELDED, TPM_RC_TESTING (a software TPM answers TPM_RC_RETRY to
// its first TPM2_Sign after it starts).
const (
	rcYielded = 0x908
	rcTesting = 0x90A
	rcRetry   = 0x922
)

func retryable(rsp []byte) bool {
	if len(rsp) < 10 {
		return false
	}
	switch binary.BigEndian.Uint32(rsp[6:10]) {
	case rcRetry, rcYielded, rcTesting:
		return true
	}
	return false
}

// getRandomCmd is TPM2_GetRandom(8): the cheapest command that proves a
// TPM answers.
var getRandomCmd = []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8}
