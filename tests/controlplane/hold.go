package controlplane

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// HoldServer accepts TCP connections on loopback and never answers: a CA
// too slow for request_timeout, or an ingress whose TLS handshake never
// completes. It counts the connections; they are closed when the test
// ends.
type HoldServer struct {
	ln    net.Listener
	conns atomic.Int64
	mu    sync.Mutex
	held  []net.Conn
}

// StartHoldServer listens on a free loopback port until the test ends.
func StartHoldServer(t testing.TB) *HoldServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &HoldServer{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.conns.Add(1)
			h.mu.Lock()
			h.held = append(h.held, c)
			h.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		h.mu.Lock()
		for _, c := range h.held {
			c.Close()
		}
		h.mu.Unlock()
	})
	return h
}

// Addr is the server's loopback host:port.
func (h *HoldServer) Addr() string { return h.ln.Addr().String() }

// Port is the server's port.
func (h *HoldServer) Port() int { return h.ln.Addr().(*net.TCPAddr).Port }

// Conns is how many connections it accepted.
func (h *HoldServer) Conns() int64 { return h.conns.Load() }
