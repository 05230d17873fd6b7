// Peer-link transport.
//
// A peer link is two byte-stream connections, as in DRBD: ChannelData carries
// bulk data (writes, resync), ChannelMeta carries acks, pings and state, so an
// acknowledgement never waits behind megabytes of data. Framing is wire.go's
// job; a Transport only dials, accepts and says which channel a connection is.
//
// The dialer declares the channel in an 8-byte preamble, the first bytes on a
// TCP connection, before any frame:
//
//	 0       4   5   6       8
//	 +-------+---+---+-------+
//	 | magic |ver|ch | rsvd  |
//	 +-------+---+---+-------+
//
//	 magic     "TWBC"
//	 ver       PreambleVersion
//	 ch        Channel (1 data, 2 meta)
//	 rsvd      must be 0
//
// The acceptor reads it under TCPOptions.PreambleTimeout. A connection with a
// bad, short or late preamble is closed and skipped (Accept keeps waiting for a
// good one); it is counted in BadPreambles and reported to
// TCPOptions.OnBadPreamble with an error wrapping ErrBadPreamble.
//
// Two implementations: TCPTransport (transport.go) and the in-memory
// MemNetwork for simulation tests (transport_mem.go).
//
// Concurrency: Transport and Listener methods are safe for concurrent use and
// Close is idempotent. Closing a Transport closes its listeners and fails
// dials in progress; connections already returned belong to the caller.

package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Channel names which of the two peer connections: bulk data, or meta (acks,
// pings, state).
type Channel uint8

const (
	ChannelData Channel = 1
	ChannelMeta Channel = 2
)

// Valid reports whether c is ChannelData or ChannelMeta.
func (c Channel) Valid() bool { return c == ChannelData || c == ChannelMeta }

func (c Channel) String() string {
	switch c {
	case ChannelData:
		return "data"
	case ChannelMeta:
		return "meta"
	}
	return fmt.Sprintf("Channel(%d)", uint8(c))
}

// Transport dials and accepts the peer's connections.
type Transport interface {
	// Listen starts accepting on the local address.
	Listen(ctx context.Context) (Listener, error)
	// Dial connects to the peer for one channel.
	Dial(ctx context.Context, ch Channel) (net.Conn, error)
	// Close closes the transport's listeners and fails dials in progress.
	Close() error
}

// Listener hands out inbound peer connections.
type Listener interface {
	// Accept returns the next inbound connection with the channel the
	// dialer declared. It returns ctx's error when ctx ends, and
	// ErrTransportClosed (wrapped) once the listener is closed.
	Accept(ctx context.Context) (net.Conn, Channel, error)
	Close() error
	// Addr is the address actually listened on (a ":0" port resolved).
	Addr() string
}

var (
	ErrTransportClosed = errors.New("replication: transport closed")
	ErrBadChannel      = errors.New("replication: invalid channel")
	ErrBadPreamble     = errors.New("replication: bad connection preamble")
)

// Preamble layout; see the diagram at the top of this file.
const (
	PreambleSize    = 8
	PreambleVersion = 1
	preambleMagic   = "TWBC"
)

func appendPreamble(b []byte, ch Channel) []byte {
	b = append(b, preambleMagic...)
	return append(b, PreambleVersion, byte(ch), 0, 0)
}

func parsePreamble(p [PreambleSize]byte) (Channel, error) {
	switch {
	case string(p[:4]) != preambleMagic:
		return 0, fmt.Errorf("%w: magic %q", ErrBadPreamble, p[:4])
	case p[4] != PreambleVersion:
		return 0, fmt.Errorf("%w: version %d", ErrBadPreamble, p[4])
	case !Channel(p[5]).Valid():
		return 0, fmt.Errorf("%w: channel %d", ErrBadPreamble, p[5])
	case p[6] != 0 || p[7] != 0:
		return 0, fmt.Errorf("%w: reserved bytes %#x %#x", ErrBadPreamble, p[6], p[7])
	}
	return Channel(p[5]), nil
}

// TCPOptions tune a TCPTransport; the zero value is usable.
type TCPOptions struct {
	// DialTimeout bounds one Dial, preamble included (default 10s, DRBD's
	// connect-int).
	DialTimeout time.Duration
	// KeepAlive is the TCP keep-alive period (0: Go's default of 15s;
	// negative: off).
	KeepAlive time.Duration
	// PreambleTimeout bounds how long an accepted connection may take to
	// send its preamble (default 5s).
	PreambleTimeout time.Duration
	// SndBuf and RcvBuf set SO_SNDBUF / SO_RCVBUF before connecting
	// (0: the kernel's autotuning). Like DRBD's sndbuf-size/rcvbuf-size.
	SndBuf, RcvBuf int
	// DataNagle turns Nagle's algorithm on for the data channel. The meta
	// channel always has TCP_NODELAY, and so does the data channel by
	// default: a frame is written as header+payload, and Nagle would hold
	// the payload behind the peer's delayed ACK.
	DataNagle bool
	// OnBadPreamble, if set, is called (from an accept goroutine) for each
	// inbound connection dropped for a bad preamble; err wraps
	// ErrBadPreamble.
	OnBadPreamble func(remote net.Addr, err error)
}

func (o TCPOptions) withDefaults() TCPOptions {
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.PreambleTimeout <= 0 {
		o.PreambleTimeout = 5 * time.Second
	}
	return o
}

// TCPTransport is the real peer link: it listens on local and dials peer.
type TCPTransport struct {
	local, peer string
	opts        TCPOptions

	ctx    context.Context // cancelled by Close; fails dials in progress
	cancel context.CancelFunc

	badPreambles atomic.Int64

	mu        sync.Mutex // guards closed, listeners
	closed    bool
	listeners map[*tcpListener]struct{}
}

var _ Transport = (*TCPTransport)(nil)

// NewTCPTransport returns a transport that listens on local and dials peer
// (both "host:port").
func NewTCPTransport(local, peer string, opts TCPOptions) *TCPTransport {
	ctx, cancel := context.WithCancel(context.Background())
	return &TCPTransport{
		local: local, peer: peer, opts: opts.withDefaults(),
		ctx: ctx, cancel: cancel,
		listeners: make(map[*tcpListener]struct{}),
	}
}

// BadPreambles counts inbound connections dropped for a bad preamble.
func (t *TCPTransport) BadPreambles() int64 { return t.badPreambles.Load() }

// control sets the socket buffer sizes before connect/listen, so the TCP
// window scale is negotiated with them (accepted sockets inherit the
// listener's).
func (t *TCPTransport) control(_, _ string, c syscall.RawConn) error {
	if t.opts.SndBuf <= 0 && t.opts.RcvBuf <= 0 {
		return nil
	}
	var err error
	cerr := c.Control(func(fd uintptr) {
		if t.opts.SndBuf > 0 {
			err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, t.opts.SndBuf)
		}
		if err == nil && t.opts.RcvBuf > 0 {
			err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, t.opts.RcvBuf)
		}
	})
	return errors.Join(cerr, err)
}

func (t *TCPTransport) setNoDelay(c net.Conn, ch Channel) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(ch == ChannelMeta || !t.opts.DataNagle)
	}
}

// Listen starts accepting on the local address.
func (t *TCPTransport) Listen(ctx context.Context) (Listener, error) {
	t.mu.Lock()
	defer t.mu.Unlock() // held across bind: Listen is rare and must not race Close
	if t.closed {
		return nil, fmt.Errorf("replication: listen %s: %w", t.local, ErrTransportClosed)
	}
	lc := net.ListenConfig{KeepAlive: t.opts.KeepAlive, Control: t.control}
	ln, err := lc.Listen(ctx, "tcp", t.local)
	if err != nil {
		return nil, fmt.Errorf("replication: listen %s: %w", t.local, err)
	}
	l := &tcpListener{t: t, ln: ln, ready: make(chan acceptedConn), loopDone: make(chan struct{})}
	l.ctx, l.cancel = context.WithCancel(t.ctx)
	t.listeners[l] = struct{}{}
	l.wg.Go(l.acceptLoop)
	return l, nil
}

// Dial connects to the peer and declares ch.
func (t *TCPTransport) Dial(ctx context.Context, ch Channel) (net.Conn, error) {
	if !ch.Valid() {
		return nil, fmt.Errorf("replication: dial %s: %w: %d", t.peer, ErrBadChannel, uint8(ch))
	}
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("replication: dial %s: %w", t.peer, ErrTransportClosed)
	}
	ctx, cancel := context.WithTimeout(ctx, t.opts.DialTimeout)
	defer cancel()
	stop := context.AfterFunc(t.ctx, cancel)
	defer stop()

	d := net.Dialer{KeepAlive: t.opts.KeepAlive, Control: t.control}
	c, err := d.DialContext(ctx, "tcp", t.peer)
	if err != nil {
		if t.ctx.Err() != nil {
			err = ErrTransportClosed
		}
		return nil, fmt.Errorf("replication: dial %s %v: %w", t.peer, ch, err)
	}
	t.setNoDelay(c, ch)
	if err := writePreamble(ctx, c, ch); err != nil {
		c.Close()
		if t.ctx.Err() != nil {
			err = ErrTransportClosed
		}
		return nil, fmt.Errorf("replication: dial %s %v: preamble: %w", t.peer, ch, err)
	}
	return c, nil
}

// writePreamble writes ch's preamble under ctx, then clears the deadline.
func writePreamble(ctx context.Context, c net.Conn, ch Channel) error {
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetWriteDeadline(dl); err != nil {
			return err
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetWriteDeadline(time.Unix(1, 0)) })
	_, err := c.Write(appendPreamble(make([]byte, 0, PreambleSize), ch))
	if !stop() {
		// ctx ended and the deadline is being set: the conn is unusable.
		return errors.Join(err, ctx.Err())
	}
	if err != nil {
		return err
	}
	return c.SetWriteDeadline(time.Time{})
}

// Close closes every listener of t and fails dials in progress. Idempotent.
func (t *TCPTransport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	ls := make([]*tcpListener, 0, len(t.listeners))
	for l := range t.listeners {
		ls = append(ls, l)
	}
	t.mu.Unlock()
	t.cancel()
	var errs []error
	for _, l := range ls {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

type acceptedConn struct {
	c  net.Conn
	ch Channel
}

// tcpListener runs an accept loop; each new connection gets its own
// goroutine to read the preamble, so one slow or silent client cannot hold
// up the others. Good connections are handed to Accept over ready.
type tcpListener struct {
	t      *TCPTransport
	ln     net.Listener
	ready  chan acceptedConn // unbuffered: a conn is either taken or closed
	ctx    context.Context   // cancelled by Close (or the transport's Close)
	cancel context.CancelFunc
	wg     sync.WaitGroup // accept loop and preamble readers

	loopDone chan struct{} // closed when acceptLoop fails for good
	loopErr  error         // why; written before loopDone is closed

	closeOnce sync.Once
	closeErr  error
}

var _ Listener = (*tcpListener)(nil)

func (l *tcpListener) Addr() string { return l.ln.Addr().String() }

func (l *tcpListener) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) ||
				errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) {
				// Transient, as in net/http: back off and retry.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
					continue
				case <-l.ctx.Done():
					return
				}
			}
			l.loopErr = err
			close(l.loopDone)
			return
		}
		backoff = 0
		l.wg.Go(func() { l.handshake(c) })
	}
}

func (l *tcpListener) handshake(c net.Conn) {
	ch, err := l.readPreamble(c)
	if err != nil {
		c.Close()
		if l.ctx.Err() != nil || !errors.Is(err, ErrBadPreamble) {
			return // shutting down, not the peer's fault
		}
		l.t.badPreambles.Add(1)
		if f := l.t.opts.OnBadPreamble; f != nil {
			f(c.RemoteAddr(), fmt.Errorf("replication: accept from %s: %w", c.RemoteAddr(), err))
		}
		return
	}
	l.t.setNoDelay(c, ch)
	select {
	case l.ready <- acceptedConn{c, ch}:
	case <-l.ctx.Done():
		c.Close()
	}
}

func (l *tcpListener) readPreamble(c net.Conn) (Channel, error) {
	if err := c.SetReadDeadline(time.Now().Add(l.t.opts.PreambleTimeout)); err != nil {
		return 0, err
	}
	stop := context.AfterFunc(l.ctx, func() { _ = c.SetReadDeadline(time.Unix(1, 0)) })
	var p [PreambleSize]byte
	_, err := io.ReadFull(c, p[:])
	if !stop() {
		return 0, l.ctx.Err()
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrBadPreamble, err)
	}
	ch, err := parsePreamble(p)
	if err != nil {
		return 0, err
	}
	return ch, c.SetReadDeadline(time.Time{})
}

func (l *tcpListener) Accept(ctx context.Context) (net.Conn, Channel, error) {
	select {
	case a := <-l.ready:
		return a.c, a.ch, nil
	case <-ctx.Done():
		return nil, 0, fmt.Errorf("replication: accept on %s: %w", l.Addr(), ctx.Err())
	case <-l.ctx.Done():
		return nil, 0, fmt.Errorf("replication: accept on %s: %w", l.Addr(), ErrTransportClosed)
	case <-l.loopDone:
		return nil, 0, fmt.Errorf("replication: accept on %s: %w", l.Addr(), l.loopErr)
	}
}

// Close stops accepting, closes connections not yet handed out and waits
// for the listener's goroutines. Idempotent.
func (l *tcpListener) Close() error {
	l.closeOnce.Do(func() {
		l.cancel()
		if err := l.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			l.closeErr = err
		}
		l.t.mu.Lock()
		delete(l.t.listeners, l)
		l.t.mu.Unlock()
		l.wg.Wait()
	})
	return l.closeErr
}
