package controlplane

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
)

// StartTCPBalancer runs a real HAProxy in TCP mode on a free loopback port
// in front of backends, as a load balancer stands in front of a CA's
// replicas: TLS passes through untouched (each replica serves its own
// certificate and sees the node's), connections go round robin, and one a
// backend refuses is dispatched to another (retries, redispatch), with
// health checks every 200ms. It returns the balancer's address; HAProxy
// is stopped when the test ends. Without haproxy it skips, or fails under
// CI.
func StartTCPBalancer(t testing.TB, backends ...string) string {
	t.Helper()
	bin := testenv.RequireProgram(t, "haproxy", "haproxy")
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var servers strings.Builder
	for i, b := range backends {
		fmt.Fprintf(&servers, "  server replica%d %s check inter 200ms fall 1 rise 1\n", i+1, b)
	}
	cfg := fmt.Sprintf(`global
  maxconn 256
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  retries 3
  option redispatch
frontend ca
  bind %s
  default_backend replicas
backend replicas
  balance roundrobin
%s`, addr, servers.String())
	dir := t.TempDir()
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-f", path, "-db")
	log := &testenv.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting haproxy: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("haproxy log:\n%s", log.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy did not listen on %s: %v\n%s", addr, err, log.String())
		}
	}
}
