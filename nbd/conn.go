package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// readBufferSize batches small requests: one read syscall brings in
	// many 4 KiB WRITEs. Larger payloads bypass it (bufio reads directly
	// into the request buffer when its own buffer is empty).
	readBufferSize = 128 << 10
	// replyBatch caps how many replies one writev carries.
	replyBatch = 64
	// inlineAfter is how many requests in a row must find the connection
	// idle (the client waits for each reply) before the reader serves
	// requests itself; see serveInline.
	inlineAfter = 16
)

var errBadMagic = errors.New("nbd: bad request magic")

// conn is one client connection. Stages (see doc.go):
//
//	reader (this goroutine) ─► handler goroutines (≤ MaxInflight) ─► writer ─► socket
//
// The semaphore slot a request takes in the reader is released by the writer
// once its reply is on the socket, so at most MaxInflight requests (and
// their buffers) exist per connection at any time.
type conn struct {
	srv      *Server
	nc       net.Conn // the socket: deadlines and Close (from any goroutine)
	rw       net.Conn // the byte stream: nc, or the TLS session over it
	tls      bool     // STARTTLS done
	br       *bufio.Reader
	stopping atomic.Bool // set by Shutdown: read no further requests

	// Transmission phase; set before the writer and handlers start.
	exp      Export
	size     uint64
	readOnly bool
	sem      chan struct{}
	replies  chan *request
	inflight sync.WaitGroup // dispatched handlers
	running  atomic.Int32   // handlers that have not queued their reply yet
	pending  atomic.Int32   // replies queued for the writer and not yet written

	// Reader-only state for serving queue-depth-1 clients inline.
	idleStreak int             // requests in a row that found the connection idle
	raw        syscall.RawConn // for SIOCINQ; nil if the conn has none
	inlineIov  [2][]byte
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{srv: s, nc: nc, rw: nc}
}

// stopReading makes the reader stop before its next request; a read in
// progress is interrupted by the deadline.
func (c *conn) stopReading() {
	c.stopping.Store(true)
	c.nc.SetReadDeadline(time.Now())
}

func (c *conn) serve() {
	defer c.srv.untrack(c)
	defer c.nc.Close()
	log := c.srv.log.With("remote", c.nc.RemoteAddr().String())
	c.br = bufio.NewReaderSize(c.rw, readBufferSize)
	exp, err := c.handshake()
	if err != nil {
		if !errors.Is(err, errAbort) {
			log.Debug("nbd: handshake ended", "err", err)
		}
		return
	}
	// Clear the handshake deadline, then look at stopping: stopReading sets
	// the flag before the deadline, so a shutdown racing this is not lost.
	if err := c.nc.SetDeadline(time.Time{}); err != nil || c.stopping.Load() {
		return
	}
	log.Debug("nbd: transmission started", "size", exp.Size(), "readonly", exp.ReadOnly(), "tls", c.tls)
	err = c.transmit(exp)
	log.Debug("nbd: connection closed", "err", err)
}

// transmit runs the transmission phase: read until DISC, error or shutdown,
// then drain — every request read is served and answered — and return.
func (c *conn) transmit(exp Export) error {
	c.exp = exp
	c.size = uint64(exp.Size())
	c.readOnly = exp.ReadOnly()
	c.sem = make(chan struct{}, c.srv.cfg.MaxInflight)
	// SIOCINQ counts TLS records, not requests: only for plain sockets.
	if sc, ok := c.rw.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	// Never blocks: a reply exists only for a request holding a slot.
	c.replies = make(chan *request, c.srv.cfg.MaxInflight)

	c.srv.active.Add(1)
	defer c.srv.active.Add(-1)
	var writer sync.WaitGroup
	writer.Go(c.writeLoop)

	err := c.readLoop()
	c.inflight.Wait()
	close(c.replies)
	writer.Wait()
	return err
}

func (c *conn) readLoop() error {
	var h [RequestHeaderSize]byte
	maxReq := uint64(c.srv.cfg.MaxRequest)
	for {
		if c.stopping.Load() {
			return errStopping
		}
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint32(h[0:]) != MagicRequest {
			// Without a valid header the payload length is unknown: the
			// stream cannot be resynchronized.
			return fmt.Errorf("%w %#x", errBadMagic, binary.BigEndian.Uint32(h[0:]))
		}
		typ := binary.BigEndian.Uint16(h[6:])
		if typ == CmdDisc {
			return nil
		}
		c.sem <- struct{}{} // backpressure: wait for a free slot
		r := requestPool.Get().(*request)
		*r = request{
			flags:  binary.BigEndian.Uint16(h[4:]),
			typ:    typ,
			cookie: binary.BigEndian.Uint64(h[8:]),
			off:    binary.BigEndian.Uint64(h[16:]),
			length: binary.BigEndian.Uint32(h[24:]),
		}
		r.errno = c.validate(r, maxReq)
		if typ == CmdWrite {
			if r.errno != 0 {
				// The payload is on the wire whatever we think of it.
				_, err := c.br.Discard(int(r.length))
				if err != nil {
					c.drop(r)
					return err
				}
			} else {
				r.alloc()
				if _, err := io.ReadFull(c.br, r.data); err != nil {
					c.drop(r)
					return err
				}
			}
		}
		if r.errno != 0 || (r.length == 0 && typ != CmdFlush) {
			// Answered without touching the export: errors, and
			// zero-length READ/WRITE/TRIM/WRITE_ZEROES (a no-op).
			c.queue(r)
			continue
		}
		// The client waited for every earlier reply if nothing is running
		// and nothing more is buffered. After inlineAfter such requests in
		// a row serve inline, provided the writer has finished too.
		if c.running.Add(1) == 1 && c.br.Buffered() == 0 {
			c.idleStreak++
		} else {
			c.idleStreak = 0
		}
		if c.idleStreak > inlineAfter && c.pending.Load() == 0 {
			c.serveInline(r)
			continue
		}
		c.inflight.Go(func() { c.handle(r) })
	}
}

// validate checks a request before any allocation or I/O and returns the
// errno to answer with, or 0. The choices are listed in doc.go.
func (c *conn) validate(r *request, maxReq uint64) uint32 {
	inRange := r.off <= c.size && uint64(r.length) <= c.size-r.off
	switch r.typ {
	case CmdRead:
		switch {
		case r.flags&^CmdFlagFUA != 0:
			return EINVAL
		case uint64(r.length) > maxReq:
			return EOVERFLOW
		case !inRange:
			return EINVAL
		}
	case CmdWrite:
		switch {
		case r.flags&^CmdFlagFUA != 0:
			return EINVAL
		case uint64(r.length) > maxReq:
			return EOVERFLOW
		case c.readOnly:
			return EPERM
		case !inRange:
			return ENOSPC
		}
	case CmdFlush:
		// Offset and length "MUST be zero"; be liberal: ignore them.
		if r.flags&^CmdFlagFUA != 0 {
			return EINVAL
		}
	case CmdTrim, CmdWriteZeroes:
		allowed := CmdFlagFUA
		if r.typ == CmdWriteZeroes {
			allowed |= CmdFlagNoHole
		}
		switch {
		case r.flags&^allowed != 0:
			return EINVAL
		case c.readOnly:
			return EPERM
		case !inRange:
			return ENOSPC
		}
	default:
		// Not advertised (CACHE, BLOCK_STATUS, RESIZE) or unknown. Such
		// a request carries no payload, so the stream stays in step.
		return EINVAL
	}
	return 0
}

// drop gives back a request that will never be answered (the connection is
// going away mid-payload).
func (c *conn) drop(r *request) {
	r.release()
	<-c.sem
}

// handle serves one request against the export and queues its reply.
func (c *conn) handle(r *request) {
	// Queue before leaving "running": the reader's idle test relies on a
	// handler never being counted in neither.
	defer func() {
		c.queue(r)
		c.running.Add(-1)
	}()
	c.exec(r)
}

// queue hands r's reply to the writer goroutine.
func (c *conn) queue(r *request) {
	c.pending.Add(1)
	c.replies <- r // never blocks: a reply exists only for a request holding a slot
}

// serveInline serves r on the reader goroutine and writes its reply itself,
// for clients that wait for each reply (queue depth 1): read, execute and
// answer then cost no goroutine wake-up, as on a threaded C server. It is
// called only when no handler is running and no reply is pending, so the
// writer goroutine is idle and nothing else can queue a reply: the reader
// is briefly the only writer. If the client sent anything while r was being
// served it is pipelining, and the connection goes back to concurrent
// dispatch, so a slow request delays at most one other.
func (c *conn) serveInline(r *request) {
	c.srv.inlined.Add(1)
	c.exec(r)
	if c.br.Buffered() > 0 || c.socketHasData() {
		c.idleStreak = 0
	}
	c.running.Add(-1)
	r.encodeReply()
	iov := append(c.inlineIov[:0], r.hdr[:])
	if r.typ == CmdRead && r.errno == 0 && len(r.data) > 0 {
		iov = append(iov, r.data)
	}
	bufs := net.Buffers(iov)
	if _, err := bufs.WriteTo(c.rw); err != nil {
		c.srv.log.Debug("nbd: write reply", "err", err)
		c.nc.Close() // the next read fails and ends the connection
	}
	clear(c.inlineIov[:])
	r.release()
	<-c.sem
}

// socketHasData reports whether client bytes wait in the socket's receive
// queue (SIOCINQ), without reading them.
func (c *conn) socketHasData() bool {
	if c.raw == nil {
		return false
	}
	n := 0
	c.raw.Control(func(fd uintptr) {
		n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	return n > 0
}

// exec runs r against the export and records its errno.
func (c *conn) exec(r *request) {
	defer func() {
		if p := recover(); p != nil {
			c.srv.log.Error("nbd: export panicked", "cmd", r.typ, "offset", r.off, "length", r.length, "panic", p)
			r.errno = EIO
		}
	}()
	var err error
	off, n := int64(r.off), int64(r.length)
	fua := r.flags&CmdFlagFUA != 0
	switch r.typ {
	case CmdRead:
		r.alloc()
		err = c.exp.ReadAt(r.data, off)
	case CmdWrite:
		err = c.exp.WriteAt(r.data, off, fua)
	case CmdFlush:
		// Every write answered before this FLUSH was read had returned
		// from the export before its reply was queued, so Export.Flush
		// covers it (on every connection: Export's contract).
		err = c.exp.Flush()
	case CmdTrim:
		err = c.exp.Trim(off, n, fua)
	case CmdWriteZeroes:
		err = c.exp.WriteZeroes(off, n, fua, r.flags&CmdFlagNoHole != 0)
	}
	if err != nil {
		r.errno = errnoFor(r.typ, err)
		c.srv.log.Debug("nbd: request failed", "cmd", r.typ, "offset", off, "length", n, "errno", r.errno, "err", err)
	}
}

// writeLoop is the connection's only writer. It gathers whatever replies are
// queued into one writev, so under load many replies share a syscall, and
// with one request in flight each reply goes out at once.
func (c *conn) writeLoop() {
	batch := make([]*request, 0, replyBatch)
	iov := make([][]byte, 0, 2*replyBatch)
	failed := false
	for r := range c.replies {
		batch = append(batch[:0], r)
		yielded := false
	gather:
		for len(batch) < replyBatch {
			select {
			case r, ok := <-c.replies:
				if !ok {
					break gather
				}
				batch = append(batch, r)
			default:
				// Handlers still running are about to queue replies:
				// let them, once, so their replies share this writev.
				if !yielded && c.running.Load() > 0 {
					yielded = true
					runtime.Gosched()
					continue
				}
				break gather
			}
		}
		if !failed {
			iov = iov[:0]
			for _, r := range batch {
				r.encodeReply()
				iov = append(iov, r.hdr[:])
				// A READ's data follows its header only when the read
				// succeeded; the header is built after the read ended.
				if r.typ == CmdRead && r.errno == 0 && len(r.data) > 0 {
					iov = append(iov, r.data)
				}
			}
			bufs := net.Buffers(iov)
			if _, err := bufs.WriteTo(c.rw); err != nil {
				failed = true
				c.srv.log.Debug("nbd: write reply", "err", err)
				// Stop the reader too: nobody hears us any more.
				c.nc.Close()
			}
		}
		for _, r := range batch {
			r.release()
			<-c.sem
		}
		// Only now, with the batch on the socket, may the reader see
		// pending == 0 and write a reply itself.
		c.pending.Add(-int32(len(batch)))
		clear(batch)
	}
}

// request is one NBD request from header to reply. Pooled.
type request struct {
	hdr    [SimpleReplyHeaderSize]byte
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
	errno  uint32
	buf    *[]byte // pooled payload buffer
	data   []byte  // (*buf)[:length]
}

var requestPool = sync.Pool{New: func() any { return new(request) }}

func (r *request) alloc() {
	r.buf = getBuffer(int(r.length))
	r.data = *r.buf
}

func (r *request) release() {
	if r.buf != nil {
		putBuffer(r.buf)
	}
	*r = request{}
	requestPool.Put(r)
}

func (r *request) encodeReply() {
	binary.BigEndian.PutUint32(r.hdr[0:], MagicSimpleReply)
	binary.BigEndian.PutUint32(r.hdr[4:], r.errno)
	binary.BigEndian.PutUint64(r.hdr[8:], r.cookie)
}

// Payload buffers come in power-of-two size classes from 4 KiB up, one
// sync.Pool each, so steady-state requests do not allocate.
const (
	minBufferShift = 12
	bufferClasses  = 20 // 4 KiB … 2 GiB
)

var bufferPools [bufferClasses]sync.Pool

func bufferClass(n int) int {
	if n <= 1<<minBufferShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufferShift
}

func getBuffer(n int) *[]byte {
	c := bufferClass(n)
	if c >= bufferClasses {
		b := make([]byte, n)
		return &b
	}
	if v := bufferPools[c].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minBufferShift))
	return &b
}

func putBuffer(b *[]byte) {
	n := cap(*b)
	c := bufferClass(n)
	if c >= bufferClasses || n != 1<<(c+minBufferShift) {
		return
	}
	bufferPools[c].Put(b)
}

// errnoFor maps an Export error to an NBD errno (export.go's contract).
func errnoFor(typ uint16, err error) uint32 {
	switch {
	case errors.Is(err, ErrReadOnly):
		return EPERM
	case errors.Is(err, ErrOutOfRange):
		if typ == CmdRead {
			return EINVAL // as for a READ the server rejects itself
		}
		return ENOSPC
	case errors.Is(err, ErrNoSpace):
		return ENOSPC
	case errors.Is(err, ErrShutdown):
		return ESHUTDOWN
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		switch en {
		case syscall.EPERM, syscall.EACCES, syscall.EROFS:
			return EPERM
		case syscall.ENOMEM:
			return ENOMEM
		case syscall.EINVAL:
			return EINVAL
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return ENOSPC
		case syscall.EOVERFLOW:
			return EOVERFLOW
		case syscall.ENOTSUP:
			return ENOTSUP
		case syscall.ESHUTDOWN:
			return ESHUTDOWN
		}
	}
	return EIO
}
