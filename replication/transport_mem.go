// In-memory peer-link transport for simulation tests.
//
// A MemNetwork connects any number of named nodes in one process. Each
// connection is a pair of buffered, bounded pipes (writes block when
// memPipeCapacity bytes are unread, as a full TCP window would) with
// working deadlines. Faults are set per directed link, from -> to:
//
//   - Partition(a, b): the link dies. Live connections between a and b break
//     (reads and writes on both ends fail with an error wrapping
//     syscall.ECONNRESET and ErrPartitioned, buffered bytes are lost, as with
//     a reset), and new dials between them fail at once with a timeout
//     net.Error wrapping ErrPartitioned, until Heal(a, b).
//   - PartitionOneWay(from, to): bytes from -> to stop arriving. They are
//     held, not lost (a byte stream cannot skip bytes), so writers fill the
//     buffer and block while readers on "to" starve, the way a ping timeout
//     sees a silent peer; to -> from still flows. New dials in either
//     direction fail (a TCP handshake needs both ways). Heal releases the
//     held bytes.
//   - SetDelay(from, to, d): each later write becomes readable d after it
//     was written, in order.
//   - SetLoss(from, to, p): TCP retransmits, so a byte stream never loses
//     bytes silently; loss is modelled as the connection breaking. Each
//     Write from -> to breaks the connection (both ends get an error
//     wrapping syscall.ECONNRESET and ErrInjectedLoss, nothing of that write
//     is delivered) with probability p, drawn from the network's seeded RNG.
//     Only 0 < p < 1 draws from the RNG, so p = 0 and p = 1 are exact, and a
//     given order of writes gives the same breaks for the same seed (writes
//     from several goroutines draw in whatever order they run).
//
// Reordering is not modelled inside a connection (TCP never shows it); the
// two channels of a link are separate connections, so a delayed data channel
// against an undelayed meta channel reorders messages across them.
//
// Lock order: MemNetwork.mu before memPipe.mu. No lock is held while blocked.

package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

var (
	ErrPartitioned  = errors.New("replication: mem network: partitioned")
	ErrInjectedLoss = errors.New("replication: mem network: injected connection loss")
)

const (
	memPipeCapacity = 1 << 20 // unread bytes a pipe holds before Write blocks
	memBacklog      = 16      // dialed connections waiting for Accept
)

type memLink struct{ from, to string }

type memLinkState struct {
	cut     bool // Partition: connections break, dials fail
	stalled bool // PartitionOneWay: bytes held, dials fail
	delay   time.Duration
	loss    float64
}

// MemNetwork is an in-memory network of named nodes with fault injection.
type MemNetwork struct {
	mu        sync.Mutex // guards everything below
	rng       *rand.Rand
	closed    bool
	links     map[memLink]*memLinkState
	listeners map[string]*memListener
	conns     map[*memConnPair]struct{}
}

// NewMemNetwork returns an empty network whose random faults come from seed.
func NewMemNetwork(seed int64) *MemNetwork {
	return &MemNetwork{
		rng:       rand.New(rand.NewPCG(uint64(seed), 0x74776e6264)),
		links:     make(map[memLink]*memLinkState),
		listeners: make(map[string]*memListener),
		conns:     make(map[*memConnPair]struct{}),
	}
}

// link returns from->to's state, creating it; n.mu must be held.
func (n *MemNetwork) link(from, to string) *memLinkState {
	k := memLink{from, to}
	s := n.links[k]
	if s == nil {
		s = &memLinkState{}
		n.links[k] = s
	}
	return s
}

// Partition cuts a <-> b: live connections between them break and new dials
// fail until Heal.
func (n *MemNetwork) Partition(a, b string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.link(a, b).cut = true
	n.link(b, a).cut = true
	err := fmt.Errorf("%w (%w)", syscall.ECONNRESET, ErrPartitioned)
	for p := range n.conns {
		if p.between(a, b) {
			n.breakLocked(p, err)
		}
	}
}

// PartitionOneWay stops bytes from -> to (held, not lost) and fails new dials
// between them until Heal.
func (n *MemNetwork) PartitionOneWay(from, to string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.link(from, to).stalled = true
	n.setStalledLocked(from, to, true)
}

// Heal undoes Partition and PartitionOneWay between a and b, both ways.
// Connections that broke stay broken; held bytes are released.
func (n *MemNetwork) Heal(a, b string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, l := range [][2]string{{a, b}, {b, a}} {
		s := n.link(l[0], l[1])
		s.cut, s.stalled = false, false
		n.setStalledLocked(l[0], l[1], false)
	}
}

func (n *MemNetwork) setStalledLocked(from, to string, stalled bool) {
	for p := range n.conns {
		for _, pp := range [2]*memPipe{p.ab, p.ba} {
			if pp.from == from && pp.to == to {
				pp.setStalled(stalled)
			}
		}
	}
}

// SetDelay makes each later write from -> to readable only d after it.
func (n *MemNetwork) SetDelay(from, to string, d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.link(from, to).delay = d
}

// SetLoss makes each later write from -> to break its connection with
// probability p (see the file comment: loss on a byte stream is a break).
func (n *MemNetwork) SetLoss(from, to string, p float64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.link(from, to).loss = p
}

// CloseAll closes every listener and connection; later Listen and Dial fail
// with ErrTransportClosed. Idempotent.
func (n *MemNetwork) CloseAll() {
	n.mu.Lock()
	n.closed = true
	ls := make([]*memListener, 0, len(n.listeners))
	for _, l := range n.listeners {
		ls = append(ls, l)
	}
	ps := make([]*memConnPair, 0, len(n.conns))
	for p := range n.conns {
		ps = append(ps, p)
	}
	n.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	for _, p := range ps {
		p.a.Close()
		p.b.Close()
	}
}

// breakLocked resets both ends of p with err; n.mu must be held.
func (n *MemNetwork) breakLocked(p *memConnPair, err error) {
	p.ab.breakWith(err)
	p.ba.breakWith(err)
	delete(n.conns, p)
}

// Transport returns the transport of node local, whose peer is node peer.
func (n *MemNetwork) Transport(local, peer string) Transport {
	return &memTransport{n: n, local: local, peer: peer, done: make(chan struct{}),
		listeners: make(map[*memListener]struct{})}
}

type memTransport struct {
	n           *MemNetwork
	local, peer string

	done chan struct{} // closed by Close: fails dials waiting on a backlog

	mu        sync.Mutex // guards closed, listeners
	closed    bool
	listeners map[*memListener]struct{}
}

func (t *memTransport) Listen(ctx context.Context) (Listener, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("replication: listen %s: %w", t.local, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if t.closed || n.closed {
		return nil, fmt.Errorf("replication: listen %s: %w", t.local, ErrTransportClosed)
	}
	if n.listeners[t.local] != nil {
		return nil, fmt.Errorf("replication: listen %s: %w", t.local, syscall.EADDRINUSE)
	}
	l := &memListener{t: t, queue: make(chan acceptedConn, memBacklog), done: make(chan struct{})}
	n.listeners[t.local] = l
	t.listeners[l] = struct{}{}
	return l, nil
}

func (t *memTransport) Dial(ctx context.Context, ch Channel) (net.Conn, error) {
	if !ch.Valid() {
		return nil, fmt.Errorf("replication: dial %s: %w: %d", t.peer, ErrBadChannel, uint8(ch))
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("replication: dial %s %v: %w", t.peer, ch, err)
	}
	n := t.n
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	n.mu.Lock()
	if closed || n.closed {
		n.mu.Unlock()
		return nil, fmt.Errorf("replication: dial %s %v: %w", t.peer, ch, ErrTransportClosed)
	}
	fwd, back := n.link(t.local, t.peer), n.link(t.peer, t.local)
	if fwd.cut || fwd.stalled || back.cut || back.stalled {
		n.mu.Unlock()
		return nil, &net.OpError{Op: "dial", Net: "mem", Addr: memAddr(t.peer), Err: memTimeoutError{ErrPartitioned}}
	}
	l := n.listeners[t.peer]
	if l == nil {
		n.mu.Unlock()
		return nil, &net.OpError{Op: "dial", Net: "mem", Addr: memAddr(t.peer), Err: syscall.ECONNREFUSED}
	}
	p := newMemConnPair(n, t.local, t.peer)
	n.conns[p] = struct{}{}
	n.mu.Unlock()

	refused := func() (net.Conn, error) {
		err := &net.OpError{Op: "dial", Net: "mem", Addr: memAddr(t.peer), Err: syscall.ECONNREFUSED}
		n.mu.Lock()
		n.breakLocked(p, err)
		n.mu.Unlock()
		return nil, err
	}
	select {
	case l.queue <- acceptedConn{p.b, ch}:
		// Like TCP, the dial completes before (and without) Accept.
		if isClosedChan(l.done) { // lost a race with Close, which may not have drained us
			return refused()
		}
		return p.a, nil
	case <-l.done:
		return refused()
	case <-ctx.Done():
		n.mu.Lock()
		n.breakLocked(p, ctx.Err())
		n.mu.Unlock()
		return nil, fmt.Errorf("replication: dial %s %v: %w", t.peer, ch, ctx.Err())
	case <-t.done:
		n.mu.Lock()
		n.breakLocked(p, ErrTransportClosed)
		n.mu.Unlock()
		return nil, fmt.Errorf("replication: dial %s %v: %w", t.peer, ch, ErrTransportClosed)
	}
}

func (t *memTransport) Close() error {
	t.mu.Lock()
	if !t.closed {
		close(t.done)
	}
	t.closed = true
	ls := make([]*memListener, 0, len(t.listeners))
	for l := range t.listeners {
		ls = append(ls, l)
	}
	t.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	return nil
}

type memListener struct {
	t         *memTransport
	queue     chan acceptedConn
	done      chan struct{}
	closeOnce sync.Once
}

func (l *memListener) Addr() string { return l.t.local }

func (l *memListener) Accept(ctx context.Context) (net.Conn, Channel, error) {
	select {
	case <-l.done: // checked first: a closed listener hands out nothing
		return nil, 0, fmt.Errorf("replication: accept on %s: %w", l.t.local, ErrTransportClosed)
	default:
	}
	select {
	case a := <-l.queue:
		return a.c, a.ch, nil
	case <-ctx.Done():
		return nil, 0, fmt.Errorf("replication: accept on %s: %w", l.t.local, ctx.Err())
	case <-l.done:
		return nil, 0, fmt.Errorf("replication: accept on %s: %w", l.t.local, ErrTransportClosed)
	}
}

func (l *memListener) Close() error {
	l.closeOnce.Do(func() {
		n := l.t.n
		n.mu.Lock()
		if n.listeners[l.t.local] == l {
			delete(n.listeners, l.t.local)
		}
		close(l.done)
		n.mu.Unlock()
		l.t.mu.Lock()
		delete(l.t.listeners, l)
		l.t.mu.Unlock()
		for {
			select {
			case a := <-l.queue:
				a.c.Close()
			default:
				return
			}
		}
	})
	return nil
}

type memAddr string

func (a memAddr) Network() string { return "mem" }
func (a memAddr) String() string  { return string(a) }

// memTimeoutError is a net.Error that times out, like a dial into a black hole.
type memTimeoutError struct{ err error }

func (e memTimeoutError) Error() string   { return "i/o timeout: " + e.err.Error() }
func (e memTimeoutError) Unwrap() error   { return e.err }
func (e memTimeoutError) Timeout() bool   { return true }
func (e memTimeoutError) Temporary() bool { return true }

// memConnPair is one connection: a is the dialer's end, b the acceptor's;
// ab carries a -> b.
type memConnPair struct {
	n      *MemNetwork
	a, b   *memConn
	ab, ba *memPipe
}

func newMemConnPair(n *MemNetwork, dialer, acceptor string) *memConnPair {
	p := &memConnPair{n: n, ab: newMemPipe(dialer, acceptor), ba: newMemPipe(acceptor, dialer)}
	p.a = &memConn{pair: p, local: memAddr(dialer), remote: memAddr(acceptor), rd: p.ba, wr: p.ab}
	p.b = &memConn{pair: p, local: memAddr(acceptor), remote: memAddr(dialer), rd: p.ab, wr: p.ba}
	for _, c := range [2]*memConn{p.a, p.b} {
		c.readDL.init()
		c.writeDL.init()
	}
	return p
}

func (p *memConnPair) between(x, y string) bool {
	return p.ab.from == x && p.ab.to == y || p.ab.from == y && p.ab.to == x
}

// memConn is one end of a memConnPair.
type memConn struct {
	pair          *memConnPair
	local, remote memAddr
	rd, wr        *memPipe // rd brings bytes in, wr takes them out
	readDL        memDeadline
	writeDL       memDeadline
	closeOnce     sync.Once
}

var _ net.Conn = (*memConn)(nil)

func (c *memConn) LocalAddr() net.Addr  { return c.local }
func (c *memConn) RemoteAddr() net.Addr { return c.remote }

func (c *memConn) SetDeadline(t time.Time) error {
	c.readDL.set(t)
	c.writeDL.set(t)
	return nil
}
func (c *memConn) SetReadDeadline(t time.Time) error  { c.readDL.set(t); return nil }
func (c *memConn) SetWriteDeadline(t time.Time) error { c.writeDL.set(t); return nil }

func (c *memConn) Read(b []byte) (int, error) {
	n, err := c.rd.read(b, &c.readDL)
	if err != nil && err != io.EOF {
		err = &net.OpError{Op: "read", Net: "mem", Source: c.local, Addr: c.remote, Err: err}
	}
	return n, err
}

func (c *memConn) Write(b []byte) (int, error) {
	n, err := c.write(b)
	if err != nil {
		err = &net.OpError{Op: "write", Net: "mem", Source: c.local, Addr: c.remote, Err: err}
	}
	return n, err
}

func (c *memConn) write(b []byte) (int, error) {
	n := c.pair.n
	n.mu.Lock()
	s := n.link(c.wr.from, c.wr.to)
	delay, loss := s.delay, s.loss
	if loss >= 1 || loss > 0 && n.rng.Float64() < loss {
		n.breakLocked(c.pair, fmt.Errorf("%w (%w)", syscall.ECONNRESET, ErrInjectedLoss))
	}
	n.mu.Unlock()
	return c.wr.write(b, delay, &c.writeDL)
}

// Close closes this end: its reads and writes fail with net.ErrClosed, the
// other end reads what was sent, then io.EOF, and its writes fail with EPIPE.
func (c *memConn) Close() error {
	c.closeOnce.Do(func() {
		c.rd.closeReader()
		c.wr.closeWriter()
		n := c.pair.n
		n.mu.Lock()
		if c.pair.a.rd.isClosedReader() && c.pair.b.rd.isClosedReader() {
			delete(n.conns, c.pair)
		}
		n.mu.Unlock()
	})
	return nil
}

type memSegment struct {
	data    []byte
	readyAt time.Time
}

// memPipe carries bytes one way, from node from to node to.
type memPipe struct {
	from, to string

	mu           sync.Mutex // guards everything below
	segs         []memSegment
	buffered     int           // bytes in segs
	lastReadyAt  time.Time     // segments become ready in order
	changed      chan struct{} // closed and replaced on every change
	stalled      bool
	broken       error // reset: both ends fail with it, buffered bytes are gone
	readerClosed bool
	writerClosed bool
}

func newMemPipe(from, to string) *memPipe {
	return &memPipe{from: from, to: to, changed: make(chan struct{})}
}

// notifyLocked wakes every waiter; p.mu must be held.
func (p *memPipe) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *memPipe) breakWith(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.broken == nil {
		p.broken = err
		p.segs, p.buffered = nil, 0
		p.notifyLocked()
	}
}

func (p *memPipe) setStalled(s bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = s
	p.notifyLocked()
}

func (p *memPipe) closeReader() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.readerClosed = true
	p.segs, p.buffered = nil, 0
	p.notifyLocked()
}

func (p *memPipe) closeWriter() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.writerClosed = true
	p.notifyLocked()
}

func (p *memPipe) isClosedReader() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.readerClosed
}

func (p *memPipe) read(b []byte, dl *memDeadline) (int, error) {
	for {
		p.mu.Lock()
		switch {
		case p.readerClosed:
			p.mu.Unlock()
			return 0, net.ErrClosed
		case p.broken != nil:
			err := p.broken
			p.mu.Unlock()
			return 0, err
		case dl.expired():
			p.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		case len(b) == 0:
			p.mu.Unlock()
			return 0, nil
		}
		now := time.Now()
		var wake time.Time // when the head segment becomes readable
		if len(p.segs) > 0 && !p.stalled {
			head := &p.segs[0]
			if !head.readyAt.After(now) {
				n := copy(b, head.data)
				head.data = head.data[n:]
				if len(head.data) == 0 {
					p.segs[0] = memSegment{}
					p.segs = p.segs[1:]
				}
				p.buffered -= n
				p.notifyLocked()
				p.mu.Unlock()
				return n, nil
			}
			wake = head.readyAt
		}
		if len(p.segs) == 0 && p.writerClosed {
			p.mu.Unlock()
			return 0, io.EOF
		}
		changed := p.changed
		p.mu.Unlock()
		if err := waitFor(changed, dl, wake); err != nil {
			return 0, err
		}
	}
}

func (p *memPipe) write(b []byte, delay time.Duration, dl *memDeadline) (int, error) {
	written := 0
	for {
		p.mu.Lock()
		switch {
		case p.writerClosed:
			p.mu.Unlock()
			return written, net.ErrClosed
		case p.broken != nil:
			err := p.broken
			p.mu.Unlock()
			return written, err
		case p.readerClosed:
			p.mu.Unlock()
			return written, syscall.EPIPE
		case dl.expired():
			p.mu.Unlock()
			return written, os.ErrDeadlineExceeded
		case written == len(b):
			p.mu.Unlock()
			return written, nil
		}
		if space := memPipeCapacity - p.buffered; space > 0 {
			chunk := b[written:min(len(b), written+space)]
			readyAt := time.Now().Add(delay)
			if readyAt.Before(p.lastReadyAt) {
				readyAt = p.lastReadyAt
			}
			p.lastReadyAt = readyAt
			p.segs = append(p.segs, memSegment{data: append([]byte(nil), chunk...), readyAt: readyAt})
			p.buffered += len(chunk)
			written += len(chunk)
			p.notifyLocked()
			p.mu.Unlock()
			continue
		}
		changed := p.changed
		p.mu.Unlock()
		if err := waitFor(changed, dl, time.Time{}); err != nil {
			return written, err
		}
	}
}

// waitFor blocks until changed is closed, wake passes (if not zero) or the
// deadline expires.
func waitFor(changed <-chan struct{}, dl *memDeadline, wake time.Time) error {
	var timer <-chan time.Time
	if !wake.IsZero() {
		t := time.NewTimer(time.Until(wake))
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-changed:
	case <-timer:
	case <-dl.wait():
		return os.ErrDeadlineExceeded
	}
	return nil
}

// memDeadline is net.Pipe's pipeDeadline: a channel closed when the
// deadline passes.
type memDeadline struct {
	mu     sync.Mutex // guards timer and cancel
	timer  *time.Timer
	cancel chan struct{}
}

func (d *memDeadline) init() { d.cancel = make(chan struct{}) }

// set arms the deadline; the zero time disarms it.
func (d *memDeadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait for it to close cancel
	}
	d.timer = nil
	closed := isClosedChan(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(cancel) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

func (d *memDeadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func (d *memDeadline) expired() bool { return isClosedChan(d.wait()) }

func isClosedChan(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
