package testenv

import (
	"net"
	"sync"
)

// ChanListener is a net.Listener fed by hand: a test's TLS-terminating
// front accepts raw connections itself and pushes the ones an HTTP server
// must serve (a Traefik emulation after SNI routing, a CA front while
// armed).
type ChanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

// NewChanListener returns a listener that reports addr as its address.
func NewChanListener(addr net.Addr) *ChanListener {
	return &ChanListener{ch: make(chan net.Conn), done: make(chan struct{}), addr: addr}
}

// Push hands c to the server's Accept, or closes it once the listener is
// closed.
func (l *ChanListener) Push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

// Accept returns the next pushed connection.
func (l *ChanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close ends Accept and Push.
func (l *ChanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr is the address given to NewChanListener.
func (l *ChanListener) Addr() net.Addr { return l.addr }
