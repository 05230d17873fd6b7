// Package netfault holds a TCP proxy for tests that cut a link: every
// connection through it breaks, and new ones are closed at once, until it
// heals. (The chaos harness has a richer proxy with one-way partitions,
// delay and loss: chaos/proxy.go.)
package netfault

import (
	"io"
	"net"
	"sync"
)

// CutProxy forwards TCP connections to a target until Cut.
type CutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]bool
}

// NewCutProxy listens on a loopback port and forwards to target. Close
// stops it.
func NewCutProxy(target string) (*CutProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &CutProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	go p.serve()
	return p, nil
}

// Addr is where the proxy listens.
func (p *CutProxy) Addr() string { return p.ln.Addr().String() }

func (p *CutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[u] = true, true
		p.mu.Unlock()
		go func() { io.Copy(u, c); u.Close(); c.Close() }()
		go func() { io.Copy(c, u); u.Close(); c.Close() }()
	}
}

// Cut breaks every connection through the proxy and refuses new ones.
func (p *CutProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
}

// Heal lets new connections through again.
func (p *CutProxy) Heal() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// Close stops listening and breaks every connection.
func (p *CutProxy) Close() {
	p.ln.Close()
	p.Cut()
}
