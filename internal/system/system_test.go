package system

import (
	"context"
	"errors"
	"github.com/gpuaas/provision/internal/testenv"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestNew(t *testing.T) {
	h, err := New("")
	if err != nil || h.Root != "/" || !h.IsLive() || h.HostsFile != "/etc/hosts" {
		t.Fatalf("New(\"\") = %+v, %v", h, err)
	}
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.Mkdir("sub", 0o755); err != nil {
		t.Fatal(err)
	}
	h, err = New("sub/../sub/")
	if err != nil || h.Root != filepath.Join(dir, "sub") || h.IsLive() {
		t.Fatalf("New(relative) = %+v, %v", h, err)
	}
	if err := os.WriteFile("file", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct{ root, msg string }{{"file", "not a directory"}, {"missing", "no such file"}} {
		if _, err := New(bad.root); err == nil || !strings.Contains(err.Error(), bad.msg) || !strings.Contains(err.Error(), "--root") {
			t.Fatalf("New(%q) = %v, want an error about --root containing %q", bad.root, err, bad.msg)
		}
	}
}

func TestPath(t *testing.T) {
	rooted := &Host{Root: "/srv/root"}
	live := &Host{Root: "/"}
	tests := []struct {
		h    *Host
		in   string
		want string
	}{
		{rooted, "/etc/hosts", "/srv/root/etc/hosts"},
		{rooted, "etc/hosts", "/srv/root/etc/hosts"},
		{rooted, "../../etc/passwd", "/srv/root/etc/passwd"},
		{rooted, "/../../../etc/shadow", "/srv/root/etc/shadow"},
		{rooted, "/var/lib/../../../../x", "/srv/root/x"},
		{rooted, "/a/./b/../c/", "/srv/root/a/c"},
		{rooted, "/", "/srv/root"},
		{rooted, "", "/srv/root"},
		{rooted, "..", "/srv/root"},
		{live, "/etc/../etc/hosts", "/etc/hosts"},
		{live, "/var/lib/provision/pki/", "/var/lib/provision/pki"},
		{&Host{}, "/etc/hosts", "/etc/hosts"},
	}
	for _, tt := range tests {
		if got := tt.h.Path(tt.in); got != tt.want {
			t.Errorf("Root %q Path(%q) = %q, want %q", tt.h.Root, tt.in, got, tt.want)
		}
	}
	// Whatever the input, a rooted path stays under the root.
	for _, in := range []string{"../..", "/..", "a/../../..", "//..//..//x", "./../x/../../y", "/...", "..a/../.."} {
		if got := rooted.Path(in); got != "/srv/root" && !strings.HasPrefix(got, "/srv/root/") {
			t.Errorf("Path(%q) = %q escapes the root", in, got)
		}
	}
}

func TestTime(t *testing.T) {
	fixed := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := (&Host{Now: func() time.Time { return fixed }}).Time(); !got.Equal(fixed) {
		t.Fatalf("Time = %v", got)
	}
	before := time.Now()
	if got := (&Host{}).Time(); got.Before(before) {
		t.Fatalf("default clock went backwards: %v < %v", got, before)
	}
}

func TestMachineID(t *testing.T) {
	tests := []struct {
		name    string
		content *string
		want    string
	}{
		{"valid with newline", ptr("0123456789abcdef0123456789abcdef\n"), "0123456789abcdef0123456789abcdef"},
		{"valid with spaces", ptr("  0123456789abcdef0123456789abcdef  \n\n"), "0123456789abcdef0123456789abcdef"},
		{"absent", nil, ""},
		{"empty (first boot, not yet set)", ptr(""), ""},
		{"uninitialized", ptr("uninitialized\n"), ""},
		{"upper case", ptr("0123456789ABCDEF0123456789ABCDEF\n"), ""},
		{"31 characters", ptr("0123456789abcdef0123456789abcde\n"), ""},
		{"33 characters", ptr("0123456789abcdef0123456789abcdef0\n"), ""},
		{"not hex", ptr("0123456789abcdef0123456789abcdeg\n"), ""},
		{"a path traversal", ptr("../../../../../../../../etc/pass\n"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.content != nil {
				if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(root, "etc", "machine-id"), []byte(*tt.content), 0o444); err != nil {
					t.Fatal(err)
				}
			}
			h, err := New(root)
			if err != nil {
				t.Fatal(err)
			}
			if got := h.MachineID(); got != tt.want {
				t.Fatalf("MachineID = %q, want %q", got, tt.want)
			}
		})
	}
}

func ptr(s string) *string { return &s }

const rootHosts = "# /etc/hosts of a test root\r\n" +
	"127.0.0.1\tlocalhost\r\n" +
	"::1 localhost ip6-localhost # trailing comment\n" +
	"10.40.0.10   Node-API.cp.internal   api   # the override\n" +
	"#10.9.9.9 commented.example\n" +
	"10.9.9.9#no-space-comment.example\n" +
	"fd00::10 node-api.cp.internal\n" +
	"::ffff:10.0.0.7 mapped.example\n" +
	"not-an-ip broken.example\n" +
	"10.0.0.8\n" +
	"10.0.0.9 \tmulti.example\tMULTI2.example\n"

func rootWithHosts(t *testing.T, content string) *Host {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "hosts"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestLookupHostUnderRoot(t *testing.T) {
	h := rootWithHosts(t, rootHosts)
	tests := []struct {
		name string
		want []netip.Addr // nil: not found
	}{
		{"localhost", addrs("127.0.0.1", "::1")},
		{"node-api.cp.internal", addrs("10.40.0.10", "fd00::10")},
		{"NODE-API.CP.INTERNAL", addrs("10.40.0.10", "fd00::10")},
		{"api", addrs("10.40.0.10")},
		{"ip6-localhost", addrs("::1")},
		{"multi2.example", addrs("10.0.0.9")},
		{"Multi.Example", addrs("10.0.0.9")},
		{"mapped.example", addrs("10.0.0.7")},
		{"commented.example", nil},
		{"no-space-comment.example", nil},
		{"broken.example", nil},
		{"the", nil}, // a word from a comment
		{"override", nil},
		{"missing.example", nil},
		{"10.1.2.3", addrs("10.1.2.3")}, // literals are not looked up
		{"fd00::99", addrs("fd00::99")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := h.LookupHost(context.Background(), tt.name)
			if tt.want == nil {
				if !errors.Is(err, ErrNotFound) || got != nil {
					t.Fatalf("LookupHost = %v, %v; want ErrNotFound", got, err)
				}
				if !strings.Contains(err.Error(), "/etc/hosts") {
					t.Fatalf("error %q does not name the hosts file", err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("LookupHost = %v, %v; want %v", got, err, tt.want)
			}
		})
	}

	// A root without a hosts file is an error, not "not found".
	empty, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := empty.LookupHost(context.Background(), "node-api.cp.internal"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("missing hosts file: %v", err)
	}
	// HostsFile is honoured and re-rooted.
	alt := rootWithHosts(t, "")
	if err := os.WriteFile(alt.Path("/alt-hosts"), []byte("10.1.1.1 alt.example\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	alt.HostsFile = "/alt-hosts"
	if got, err := alt.LookupHost(context.Background(), "alt.example"); err != nil || !slices.Equal(got, addrs("10.1.1.1")) {
		t.Fatalf("custom HostsFile: %v %v", got, err)
	}
}

func TestParseHosts(t *testing.T) {
	got := ParseHosts([]byte(rootHosts))
	want := map[string][]netip.Addr{
		"localhost":            addrs("127.0.0.1", "::1"),
		"ip6-localhost":        addrs("::1"),
		"node-api.cp.internal": addrs("10.40.0.10", "fd00::10"),
		"api":                  addrs("10.40.0.10"),
		"mapped.example":       addrs("10.0.0.7"),
		"multi.example":        addrs("10.0.0.9"),
		"multi2.example":       addrs("10.0.0.9"),
	}
	if len(got) != len(want) {
		t.Fatalf("ParseHosts = %v, want %v", got, want)
	}
	for k, v := range want {
		if !slices.Equal(got[k], v) {
			t.Fatalf("ParseHosts[%q] = %v, want %v", k, got[k], v)
		}
	}
	if m := ParseHosts(nil); len(m) != 0 {
		t.Fatalf("ParseHosts(nil) = %v", m)
	}
}

func TestGetent(t *testing.T) {
	rooted := rootWithHosts(t, rootHosts)
	if a, ok, err := rooted.Getent(context.Background(), "node-api.cp.internal"); ok || err != nil || a != nil {
		t.Fatalf("Getent under a root = %v %v %v; want ok=false (NSS cannot see the root)", a, ok, err)
	}
	if _, err := exec.LookPath("getent"); err != nil {
		testenv.SkipOrFail(t, "getent(1) not installed (libc-bin)")
	}
	live := &Host{Root: "/"}
	// An address literal: getent answers without consulting DNS, so the
	// test stays on loopback whatever nsswitch.conf says.
	a, ok, err := live.Getent(context.Background(), "127.0.0.1")
	if !ok || err != nil || !slices.Equal(a, addrs("127.0.0.1")) {
		t.Fatalf("Getent(127.0.0.1) = %v %v %v", a, ok, err)
	}
}

func TestDialContextByNameFromRootHostsFile(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(io.LimitReader(c, 5))
		got <- string(b)
	}()
	port := ln.Addr().(*net.TCPAddr).Port

	// 127.0.0.3 refuses (nothing listens there on that port), so this also
	// checks that DialContext moves on to the next address.
	h := rootWithHosts(t, "127.0.0.3 node-api.test\n127.0.0.1 NODE-API.test\n127.0.0.3 refused.test\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp", net.JoinHostPort("node-api.test", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("DialContext: %v", err)
	}
	if ra := c.RemoteAddr().(*net.TCPAddr); !ra.IP.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Fatalf("connected to %v", ra)
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if s := <-got; s != "hello" {
		t.Fatalf("server got %q", s)
	}

	_, err = h.DialContext(ctx, "tcp", net.JoinHostPort("refused.test", strconv.Itoa(port)))
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial to a refusing address: %v", err)
	}

	_, err = h.DialContext(ctx, "tcp", "unknown.test:443")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound || dnsErr.Name != "unknown.test" {
		t.Fatalf("unknown name: %v, want a not-found *net.DNSError", err)
	}
	if _, err := h.DialContext(ctx, "tcp", "no-port"); err == nil {
		t.Fatal("address without a port accepted")
	}
}

// TestGetentDeadline: getent under a context that has ended (the run's
// deadline, or a cancel) is not an answer of the resolver: the error wraps
// the context's and says getent was stopped before it answered, so no
// check reads it as glibc resolving otherwise.
func TestGetentDeadline(t *testing.T) {
	testenv.RequireProgram(t, "getent", "libc-bin")
	ended, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	cancelled, stop := context.WithCancel(context.Background())
	stop()
	for _, ctx := range []context.Context{ended, cancelled} {
		_, ok, err := (&Host{Root: "/"}).Getent(ctx, "localhost")
		if !ok || !errors.Is(err, ctx.Err()) || !strings.Contains(err.Error(), "stopped before it answered") {
			t.Fatalf("Getent under an ended context = ok %v, %v; want the context's error, said so", ok, err)
		}
	}
	if _, ok, err := (&Host{Root: "/"}).Getent(context.Background(), "localhost"); !ok || err != nil {
		t.Fatalf("Getent localhost = ok %v, %v", ok, err)
	}
}
