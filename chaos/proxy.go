package chaos

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"
)

// Direction is one way through a Proxy: Up is from the dialing side (the
// client) to the target, Down the answers.
type Direction int

// The directions, and both.
const (
	Up Direction = 1 << iota
	Down
	Both = Up | Down
)

func (d Direction) String() string {
	switch d {
	case Up:
		return "up"
	case Down:
		return "down"
	case Both:
		return "both"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// Proxy forwards TCP connections to a target and injects network faults
// into them: a direction that stops forwarding (a one-way partition: the
// bytes are held, not lost, and flow again on Heal, as TCP would
// retransmit them), a cut (every connection closed, new ones refused), a
// delay per chunk, and loss (TCP cannot lose bytes, so a "lost" chunk
// drops the whole connection).
//
// With a Classifier, the proxy names each connection by the first bytes
// its client sends (read before it dials the target), and a partition can
// hit only the connections of one class (BlockClass, CutClass): the peer
// link's data or meta channel, told apart by the replication preamble.
type Proxy struct {
	Name     string
	ln       net.Listener
	target   string
	classify Classifier

	mu         sync.Mutex
	cond       *sync.Cond
	closed     bool
	cut        bool
	block      [2]bool
	delay      [2]time.Duration
	loss       [2]float64
	classCut   map[string]bool
	classBlock map[string][2]bool
	rng        *rand.Rand
	conns      map[*proxyConn]bool
	stats      ProxyStats
}

// Classifier names a connection from the first N bytes its client sends
// ("" if they do not say). The bytes are forwarded as usual.
type Classifier struct {
	N    int
	Name func(first []byte) string
	// Timeout bounds the wait for the N bytes (0: 5 s); a client that
	// sends fewer in time is forwarded unclassified.
	Timeout time.Duration
}

// ProxyStats counts what a Proxy did.
type ProxyStats struct {
	Accepted int64 `json:"accepted"`
	Refused  int64 `json:"refused"`
	Dropped  int64 `json:"dropped"` // connections dropped for loss
	Chunks   int64 `json:"chunks"`
	// Classes counts the connections accepted per class (with a Classifier).
	Classes map[string]int64 `json:"classes,omitempty"`
}

type proxyConn struct {
	a, b   net.Conn
	class  string
	closed bool
}

// NewProxy listens on a free loopback port and forwards to target. seed
// drives the loss decisions.
func NewProxy(name, target string, seed uint64) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Name: name, ln: ln, target: target, rng: rand.New(rand.NewPCG(seed, 0x70726f7879)), conns: map[*proxyConn]bool{},
		classCut: map[string]bool{}, classBlock: map[string][2]bool{}}
	p.cond = sync.NewCond(&p.mu)
	go p.serve()
	return p, nil
}

// NewClassifyingProxy is NewProxy with a Classifier.
func NewClassifyingProxy(name, target string, seed uint64, c Classifier) (*Proxy, error) {
	if c.N <= 0 || c.Name == nil {
		return nil, fmt.Errorf("chaos: proxy %s: classifier needs N > 0 and Name", name)
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Name: name, ln: ln, target: target, classify: c, rng: rand.New(rand.NewPCG(seed, 0x70726f7879)), conns: map[*proxyConn]bool{},
		classCut: map[string]bool{}, classBlock: map[string][2]bool{}}
	p.cond = sync.NewCond(&p.mu)
	go p.serve()
	return p, nil
}

// Addr is where the proxy listens.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target is where it forwards to.
func (p *Proxy) Target() string { return p.target }

func idx(d Direction) []int {
	var out []int
	if d&Up != 0 {
		out = append(out, 0)
	}
	if d&Down != 0 {
		out = append(out, 1)
	}
	return out
}

// Block stops forwarding in d (existing and new connections) until Heal.
func (p *Proxy) Block(d Direction) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, i := range idx(d) {
		p.block[i] = true
	}
}

// Cut closes every connection and refuses new ones until Heal.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	p.dropAllLocked()
}

// Drop closes every connection now (new ones are accepted).
func (p *Proxy) Drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropAllLocked()
}

func (p *Proxy) dropAllLocked() {
	for c := range p.conns {
		c.closeLocked()
	}
	clear(p.conns)
	p.cond.Broadcast()
}

// BlockClass stops forwarding in d on the connections of one class
// (existing and new) until Heal.
func (p *Proxy) BlockClass(class string, d Direction) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.classBlock[class]
	for _, i := range idx(d) {
		b[i] = true
	}
	p.classBlock[class] = b
}

// CutClass closes the connections of one class and refuses new ones of it
// (closed once their first bytes name the class, before the target is
// dialed) until Heal.
func (p *Proxy) CutClass(class string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.classCut[class] = true
	for c := range p.conns {
		if c.class == class {
			c.closeLocked()
			delete(p.conns, c)
		}
	}
	p.cond.Broadcast()
}

// Delay holds every chunk in d for dur before forwarding it.
func (p *Proxy) Delay(d Direction, dur time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, i := range idx(d) {
		p.delay[i] = dur
	}
}

// Loss drops a connection with probability prob for every chunk in d.
func (p *Proxy) Loss(d Direction, prob float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, i := range idx(d) {
		p.loss[i] = prob
	}
}

// Heal ends every fault: forwarding resumes (held bytes flow), new
// connections are accepted, no delay, no loss.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	p.block = [2]bool{}
	p.delay = [2]time.Duration{}
	p.loss = [2]float64{}
	clear(p.classCut)
	clear(p.classBlock)
	p.cond.Broadcast()
}

// Stats returns the counters so far.
func (p *Proxy) Stats() ProxyStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.stats
	if p.stats.Classes != nil {
		st.Classes = maps.Clone(p.stats.Classes)
	}
	return st
}

// Close stops listening and drops every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.dropAllLocked()
	p.mu.Unlock()
	return p.ln.Close()
}

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.cut || p.closed
		if refuse {
			p.stats.Refused++
		}
		p.mu.Unlock()
		if refuse {
			_ = c.Close()
			continue
		}
		go p.connect(c)
	}
}

func (p *Proxy) connect(c net.Conn) {
	var first []byte
	class := ""
	if p.classify.N > 0 {
		first = make([]byte, p.classify.N)
		_ = c.SetReadDeadline(time.Now().Add(p.classify.Timeout))
		n, err := io.ReadFull(c, first)
		first = first[:n]
		_ = c.SetReadDeadline(time.Time{})
		if err == nil {
			class = p.classify.Name(first)
		} else if n == 0 && !errors.Is(err, os.ErrDeadlineExceeded) {
			_ = c.Close() // gone before saying anything
			return
		}
		p.mu.Lock()
		refuse := p.classCut[class] || p.cut || p.closed
		if refuse {
			p.stats.Refused++
		}
		p.mu.Unlock()
		if refuse {
			_ = c.Close()
			return
		}
	}
	u, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		_ = c.Close()
		return
	}
	pc := &proxyConn{a: c, b: u, class: class}
	p.mu.Lock()
	if p.cut || p.closed || p.classCut[class] {
		p.stats.Refused++
		pc.closeLocked()
		p.mu.Unlock()
		return
	}
	p.stats.Accepted++
	if p.classify.N > 0 {
		if p.stats.Classes == nil {
			p.stats.Classes = map[string]int64{}
		}
		p.stats.Classes[class]++
	}
	p.conns[pc] = true
	p.mu.Unlock()
	go p.pump(pc, 0, c, u, first)
	go p.pump(pc, 1, u, c, nil)
}

func (c *proxyConn) closeLocked() {
	if !c.closed {
		c.closed = true
		_ = c.a.Close()
		_ = c.b.Close()
	}
}

func (p *Proxy) drop(pc *proxyConn) {
	p.mu.Lock()
	pc.closeLocked()
	delete(p.conns, pc)
	p.cond.Broadcast()
	p.mu.Unlock()
}

// pump forwards first, then src, to dst (direction index d) chunk by chunk.
func (p *Proxy) pump(pc *proxyConn, d int, src, dst net.Conn, first []byte) {
	defer p.drop(pc)
	if len(first) > 0 {
		if !p.pass(pc, d) {
			return
		}
		if _, err := dst.Write(first); err != nil {
			return
		}
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.pass(pc, d) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// pass waits while direction d is blocked, then applies loss and delay;
// false: drop the connection.
func (p *Proxy) pass(pc *proxyConn, d int) bool {
	p.mu.Lock()
	for (p.block[d] || p.classBlock[pc.class][d]) && !pc.closed {
		p.cond.Wait()
	}
	if pc.closed {
		p.mu.Unlock()
		return false
	}
	p.stats.Chunks++
	delay := p.delay[d]
	lost := p.loss[d] > 0 && p.rng.Float64() < p.loss[d]
	if lost {
		p.stats.Dropped++
	}
	p.mu.Unlock()
	if lost {
		return false
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	return true
}
