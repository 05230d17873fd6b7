package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Client errors. Server error replies are *Error instead.
var (
	// ErrClientClosed is returned for requests on a closed client.
	ErrClientClosed = errors.New("nbd: client closed")
	// ErrConnLost wraps the transport error that ended the connection; every
	// request waiting for a reply at that moment fails with it.
	ErrConnLost = errors.New("nbd: connection lost")
	// ErrUnsupported is returned, before anything is sent, for a command or
	// flag the server did not advertise in its transmission flags.
	ErrUnsupported = errors.New("nbd: not supported by the server")
	// ErrProtocol is a malformed or unexpected message from the server.
	ErrProtocol = errors.New("nbd: protocol error")
	// ErrOptionRefused is an option the server answered with an error reply.
	ErrOptionRefused = errors.New("nbd: option refused")
)

// clientDefaultMaxPayload is what a client may send when the server gave no
// NBD_INFO_BLOCK_SIZE (proto.md: 32 MiB is safe with every server).
const clientDefaultMaxPayload = 32 << 20

// clientMaxLengthChunk bounds one TRIM / WRITE_ZEROES request (the length field is
// 32 bits); kept aligned to any sane minimum block size.
const clientMaxLengthChunk = 1 << 30

// Error is an error reply from the server to one command. errors.Is(err,
// syscall.EIO) works through Unwrap.
type Error struct {
	Errno uint32 // NBD (Linux) errno
	Cmd   uint16 // the command that failed (CmdRead, CmdWrite, ...)
}

func (e *Error) Error() string {
	return fmt.Sprintf("nbd: %s: server error %s (%s)", CmdName(e.Cmd), ErrnoName(e.Errno), syscall.Errno(e.Errno).Error())
}

// Unwrap returns the errno as a syscall.Errno.
func (e *Error) Unwrap() error { return syscall.Errno(e.Errno) }

// ErrnoName is the symbolic name of an NBD errno ("EIO"), or "errno N".
func ErrnoName(errno uint32) string {
	switch errno {
	case EPERM:
		return "EPERM"
	case EIO:
		return "EIO"
	case ENOMEM:
		return "ENOMEM"
	case EINVAL:
		return "EINVAL"
	case ENOSPC:
		return "ENOSPC"
	case EOVERFLOW:
		return "EOVERFLOW"
	case ENOTSUP:
		return "ENOTSUP"
	case ESHUTDOWN:
		return "ESHUTDOWN"
	}
	return fmt.Sprintf("errno %d", errno)
}

// CmdName is the spec name of a command ("WRITE").
func CmdName(cmd uint16) string {
	switch cmd {
	case CmdRead:
		return "READ"
	case CmdWrite:
		return "WRITE"
	case CmdDisc:
		return "DISC"
	case CmdFlush:
		return "FLUSH"
	case CmdTrim:
		return "TRIM"
	case CmdCache:
		return "CACHE"
	case CmdWriteZeroes:
		return "WRITE_ZEROES"
	case CmdBlockStatus:
		return "BLOCK_STATUS"
	case CmdResize:
		return "RESIZE"
	}
	return fmt.Sprintf("CMD(%d)", cmd)
}

// ClientOptions configure Dial.
type ClientOptions struct {
	// ExportName selects the export ("" is the server's default export).
	ExportName string
	// Timeout bounds dial plus handshake (and the wait for the server to
	// close after NBD_CMD_DISC in Close). Zero means 10 s.
	Timeout time.Duration
	// TLS, when non-nil, upgrades the connection with NBD_OPT_STARTTLS
	// before anything else is negotiated (an nbds:// URI); a server that
	// refuses it is an error. ServerName or RootCAs as for any TLS client.
	TLS *tls.Config
}

// Client is a userspace NBD client over one connection. All methods may be
// called from many goroutines at once: requests are pipelined on the
// connection and replies, which may come in any order, are matched to their
// caller by cookie.
//
// Structure: callers write header+payload under writeMu (the last writer in
// a burst flushes the buffer, so concurrent small requests share syscalls);
// one reader goroutine reads replies and completes the waiting request,
// reading READ payloads straight into the caller's buffer.
type Client struct {
	conn    net.Conn
	timeout time.Duration

	size      int64
	flags     uint16
	minBlock  uint32
	prefBlock uint32
	maxBlock  uint32

	nextCookie atomic.Uint64

	// writeMu guards w and hdr (the outgoing byte stream). Held across the
	// socket write of one request: that is what keeps header and payload
	// together on the wire.
	writeMu sync.Mutex
	w       *bufio.Writer
	hdr     [RequestHeaderSize]byte
	writers atomic.Int32 // callers between "want to write" and "written"

	// mu guards pending, free, broken, closed and drained: the requests
	// waiting for a reply, the recycled ones, the error that ended the
	// connection (set once; no request is added after it).
	mu      sync.Mutex
	pending map[uint64]*clientRequest
	free    []*clientRequest // a plain free list: sync.Pool drops items under -race
	broken  error
	closed  bool          // Close has started: no new requests
	drained chan struct{} // Close waits on it for pending to empty

	closeOnce  sync.Once
	readerDone chan struct{}
}

// clientRequest is one command waiting for its reply. Pooled: steady-state
// requests allocate nothing.
type clientRequest struct {
	cmd  uint16
	buf  []byte     // READ: reply payload lands here
	done chan error // buffered(1): the reader sends exactly one result
}

// Dial connects to an NBD server and negotiates fixed newstyle with
// NBD_OPT_GO (falling back to NBD_OPT_EXPORT_NAME when the server answers
// GO with NBD_REP_ERR_UNSUP). network is "tcp" or "unix".
func Dial(ctx context.Context, network, addr string, opts ClientOptions) (*Client, error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s %s: %w", network, addr, err)
	}
	deadline, _ := dctx.Deadline()
	_ = conn.SetDeadline(deadline)
	// Cancellation of ctx during the handshake unblocks the I/O.
	stop := context.AfterFunc(dctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	c, err := newClientConn(conn, opts.ExportName, timeout, opts.TLS)
	if !stop() && err == nil {
		// ctx ended just as the handshake finished: the deadline may
		// already be in the past, so the connection is not usable.
		err = dctx.Err()
	}
	if err != nil {
		conn.Close()
		if ctxErr := dctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("nbd: handshake with %s: %w (%w)", addr, err, ctxErr)
		}
		return nil, fmt.Errorf("nbd: handshake with %s: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	c.readerDone = make(chan struct{})
	go c.readLoop()
	return c, nil
}

// NewClient runs the handshake on an already connected conn (net.Pipe in
// tests, a socket pair) and starts the client. The caller sets deadlines.
func NewClient(conn net.Conn, opts ClientOptions) (*Client, error) {
	c, err := newClientConn(conn, opts.ExportName, opts.Timeout, opts.TLS)
	if err != nil {
		return nil, fmt.Errorf("nbd: handshake: %w", err)
	}
	c.readerDone = make(chan struct{})
	go c.readLoop()
	return c, nil
}

func newClientConn(conn net.Conn, exportName string, timeout time.Duration, tc *tls.Config) (*Client, error) {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	c := &Client{
		conn:    conn,
		timeout: timeout,
		w:       bufio.NewWriterSize(conn, 256<<10),
		pending: make(map[uint64]*clientRequest, 64),
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	hs, err := clientGreet(r, c.w)
	if err != nil {
		return nil, err
	}
	if tc != nil {
		tconn, err := clientStartTLS(conn, r, c.w, tc)
		if err != nil {
			return nil, err
		}
		conn = tconn
		r.Reset(conn)
		c.w.Reset(conn)
	}
	if err := c.negotiate(r, hs, exportName); err != nil {
		return nil, err
	}
	if c.maxBlock == 0 {
		c.maxBlock = clientDefaultMaxPayload
	}
	if c.minBlock == 0 {
		c.minBlock = 1
	}
	if c.prefBlock == 0 {
		c.prefBlock = 4096
	}
	c.conn = &clientReaderConn{Conn: conn, r: r}
	return c, nil
}

// clientReaderConn keeps the handshake's buffered reader (it may already hold the
// first bytes of transmission) as the connection's read side.
type clientReaderConn struct {
	net.Conn
	r *bufio.Reader
}

func (rc *clientReaderConn) Read(p []byte) (int, error) { return rc.r.Read(p) }

// clientGreet reads the server greeting and sends the client flags. It returns
// the server's handshake flags.
func clientGreet(r *bufio.Reader, w *bufio.Writer) (uint16, error) {
	var b [18]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, fmt.Errorf("read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(b[0:]) != MagicNBD {
		return 0, fmt.Errorf("%w: bad magic %#x", ErrProtocol, binary.BigEndian.Uint64(b[0:]))
	}
	if binary.BigEndian.Uint64(b[8:]) != MagicOption {
		return 0, fmt.Errorf("%w: oldstyle servers are not supported", ErrProtocol)
	}
	hs := binary.BigEndian.Uint16(b[16:])
	if hs&FlagFixedNewstyle == 0 {
		return 0, fmt.Errorf("%w: server does not speak fixed newstyle", ErrProtocol)
	}
	cf := ClientFlagFixedNewstyle
	if hs&FlagNoZeroes != 0 {
		cf |= ClientFlagNoZeroes
	}
	var out [4]byte
	binary.BigEndian.PutUint32(out[:], cf)
	w.Write(out[:])
	return hs, nil
}

// clientStartTLS sends NBD_OPT_STARTTLS and, on ACK, runs the TLS
// handshake over conn.
func clientStartTLS(conn net.Conn, r *bufio.Reader, w *bufio.Writer, tc *tls.Config) (*tls.Conn, error) {
	if err := clientSendOption(w, OptStartTLS, nil); err != nil {
		return nil, err
	}
	rep, err := clientReadOptionReply(r, OptStartTLS)
	if err != nil {
		return nil, err
	}
	if rep.typ != RepAck {
		return nil, fmt.Errorf("server refused TLS: %w", clientOptionError(OptStartTLS, rep))
	}
	if r.Buffered() > 0 {
		return nil, fmt.Errorf("%w: data after the STARTTLS reply", ErrProtocol)
	}
	tconn := tls.Client(conn, tc)
	if err := tconn.Handshake(); err != nil {
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	return tconn, nil
}

// clientSendOption writes one option request and flushes.
func clientSendOption(w *bufio.Writer, opt uint32, data []byte) error {
	var h [16]byte
	binary.BigEndian.PutUint64(h[0:], MagicOption)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], uint32(len(data)))
	w.Write(h[:])
	w.Write(data)
	return w.Flush()
}

// clientOptionReply is one server reply to an option.
type clientOptionReply struct {
	typ  uint32
	data []byte
}

// clientMaxOptionReply bounds what we accept as one option reply payload.
const clientMaxOptionReply = 64 << 10

func clientReadOptionReply(r *bufio.Reader, opt uint32) (clientOptionReply, error) {
	var h [20]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return clientOptionReply{}, fmt.Errorf("read option reply: %w", err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != MagicOptionReply {
		return clientOptionReply{}, fmt.Errorf("%w: bad option reply magic %#x", ErrProtocol, m)
	}
	if got := binary.BigEndian.Uint32(h[8:]); got != opt {
		return clientOptionReply{}, fmt.Errorf("%w: reply for option %d, want %d", ErrProtocol, got, opt)
	}
	rep := clientOptionReply{typ: binary.BigEndian.Uint32(h[12:])}
	n := binary.BigEndian.Uint32(h[16:])
	if n > clientMaxOptionReply {
		return clientOptionReply{}, fmt.Errorf("%w: option reply of %d bytes", ErrProtocol, n)
	}
	rep.data = make([]byte, n)
	if _, err := io.ReadFull(r, rep.data); err != nil {
		return clientOptionReply{}, fmt.Errorf("read option reply: %w", err)
	}
	return rep, nil
}

// clientOptionError turns an NBD_REP_ERR_* reply into an error.
func clientOptionError(opt uint32, rep clientOptionReply) error {
	name := map[uint32]string{
		RepErrUnsup: "ERR_UNSUP", RepErrPolicy: "ERR_POLICY", RepErrInvalid: "ERR_INVALID",
		RepErrPlatform: "ERR_PLATFORM", RepErrTLSReqd: "ERR_TLS_REQD", RepErrUnknown: "ERR_UNKNOWN",
		RepErrShutdown: "ERR_SHUTDOWN", RepErrBlockSizeReqd: "ERR_BLOCK_SIZE_REQD", RepErrTooBig: "ERR_TOO_BIG",
	}[rep.typ]
	if name == "" {
		name = fmt.Sprintf("reply type %#x", rep.typ)
	}
	if len(rep.data) > 0 {
		return fmt.Errorf("%w: option %d: %s: %q", ErrOptionRefused, opt, name, rep.data)
	}
	return fmt.Errorf("%w: option %d: %s", ErrOptionRefused, opt, name)
}

func (c *Client) negotiate(r *bufio.Reader, hs uint16, name string) error {
	// NBD_OPT_GO: name, and one information request (BLOCK_SIZE: we honour
	// the server's constraints, so we say so).
	data := make([]byte, 4+len(name)+2+2)
	binary.BigEndian.PutUint32(data[0:], uint32(len(name)))
	copy(data[4:], name)
	binary.BigEndian.PutUint16(data[4+len(name):], 1)
	binary.BigEndian.PutUint16(data[6+len(name):], InfoBlockSize)
	if err := clientSendOption(c.w, OptGo, data); err != nil {
		return err
	}
	gotExport := false
	for {
		rep, err := clientReadOptionReply(r, OptGo)
		if err != nil {
			return err
		}
		switch {
		case rep.typ == RepAck:
			if !gotExport {
				return fmt.Errorf("%w: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT", ErrProtocol)
			}
			return nil
		case rep.typ == RepInfo:
			if err := c.parseInfo(rep.data, &gotExport); err != nil {
				return err
			}
		case rep.typ == RepErrUnsup:
			return c.exportName(r, hs, name)
		case rep.typ&(1<<31) != 0:
			return clientOptionError(OptGo, rep)
		default:
			// Unknown non-error replies are to be ignored (proto.md).
		}
	}
}

func (c *Client) parseInfo(d []byte, gotExport *bool) error {
	if len(d) < 2 {
		return fmt.Errorf("%w: short NBD_REP_INFO", ErrProtocol)
	}
	switch binary.BigEndian.Uint16(d) {
	case InfoExport:
		if len(d) != 12 {
			return fmt.Errorf("%w: NBD_INFO_EXPORT of %d bytes", ErrProtocol, len(d))
		}
		c.size = int64(binary.BigEndian.Uint64(d[2:]))
		c.flags = binary.BigEndian.Uint16(d[10:])
		*gotExport = true
	case InfoBlockSize:
		if len(d) != 14 {
			return fmt.Errorf("%w: NBD_INFO_BLOCK_SIZE of %d bytes", ErrProtocol, len(d))
		}
		c.minBlock = binary.BigEndian.Uint32(d[2:])
		c.prefBlock = binary.BigEndian.Uint32(d[6:])
		c.maxBlock = binary.BigEndian.Uint32(d[10:])
	}
	return nil
}

// exportName is the pre-GO way in: NBD_OPT_EXPORT_NAME has no error reply,
// the server just closes on an unknown name.
func (c *Client) exportName(r *bufio.Reader, hs uint16, name string) error {
	var h [16]byte
	binary.BigEndian.PutUint64(h[0:], MagicOption)
	binary.BigEndian.PutUint32(h[8:], OptExportName)
	binary.BigEndian.PutUint32(h[12:], uint32(len(name)))
	c.w.Write(h[:])
	c.w.WriteString(name)
	if err := c.w.Flush(); err != nil {
		return err
	}
	n := 10
	if hs&FlagNoZeroes == 0 {
		n += 124
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("export %q: %w (unknown export?)", name, err)
	}
	c.size = int64(binary.BigEndian.Uint64(b[0:]))
	c.flags = binary.BigEndian.Uint16(b[8:])
	return nil
}

// Size is the export size in bytes.
func (c *Client) Size() int64 { return c.size }

// Flags are the transmission flags (TFlag*).
func (c *Client) Flags() uint16 { return c.flags }

// BlockSize is the server's block size constraints (defaults 1, 4096,
// 32 MiB when it sent none).
func (c *Client) BlockSize() (min, pref, max uint32) { return c.minBlock, c.prefBlock, c.maxBlock }

// ReadAt reads len(p) bytes at off. Like io.ReaderAt it returns io.EOF when
// the read reaches past the end of the export.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("nbd: read at %d: negative offset", off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= c.size {
		return 0, io.EOF
	}
	want := p
	if rest := c.size - off; int64(len(p)) > rest {
		want = p[:rest]
	}
	if err := c.split(CmdRead, 0, want, off); err != nil {
		return 0, err
	}
	if len(want) < len(p) {
		return len(want), io.EOF
	}
	return len(p), nil
}

// WriteAt writes p at off (io.WriterAt).
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	if err := c.WriteAtFlags(p, off, 0); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAtFlags writes p at off with command flags (CmdFlagFUA: the reply
// comes only once the data is durable).
func (c *Client) WriteAtFlags(p []byte, off int64, flags uint16) error {
	if flags&CmdFlagFUA != 0 && c.flags&TFlagSendFUA == 0 {
		return fmt.Errorf("nbd: write with FUA: %w", ErrUnsupported)
	}
	if c.flags&TFlagReadOnly != 0 {
		return fmt.Errorf("nbd: write: %w (export is read-only)", ErrUnsupported)
	}
	if off < 0 {
		return fmt.Errorf("nbd: write at %d: negative offset", off)
	}
	if len(p) == 0 {
		return nil // proto.md: clients SHOULD NOT send zero-length requests
	}
	return c.split(CmdWrite, flags, p, off)
}

// Flush asks the server to make every completed write durable.
func (c *Client) Flush() error {
	if c.flags&TFlagSendFlush == 0 {
		return fmt.Errorf("nbd: flush: %w", ErrUnsupported)
	}
	return c.do(CmdFlush, 0, nil, 0, 0)
}

// Trim discards [off, off+length).
func (c *Client) Trim(off, length int64) error {
	if c.flags&TFlagSendTrim == 0 {
		return fmt.Errorf("nbd: trim: %w", ErrUnsupported)
	}
	return c.lengthOnly(CmdTrim, 0, off, length)
}

// WriteZeroes zeroes [off, off+length); flags may hold CmdFlagFUA,
// CmdFlagNoHole, CmdFlagFastZero.
func (c *Client) WriteZeroes(off, length int64, flags uint16) error {
	if c.flags&TFlagSendWriteZeroes == 0 {
		return fmt.Errorf("nbd: write zeroes: %w", ErrUnsupported)
	}
	if flags&CmdFlagFUA != 0 && c.flags&TFlagSendFUA == 0 {
		return fmt.Errorf("nbd: write zeroes with FUA: %w", ErrUnsupported)
	}
	return c.lengthOnly(CmdWriteZeroes, flags, off, length)
}

// lengthOnly issues a command without payload, in chunks the 32-bit length
// field can carry, pipelined.
func (c *Client) lengthOnly(cmd, flags uint16, off, length int64) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("nbd: %s %d+%d: negative range", CmdName(cmd), off, length)
	}
	if length == 0 {
		return nil
	}
	if length <= clientMaxLengthChunk {
		return c.do(cmd, flags, nil, off, uint32(length))
	}
	var reqs []*clientRequest
	var err error
	for length > 0 {
		n := min(length, clientMaxLengthChunk)
		req, serr := c.start(cmd, flags, nil, off, uint32(n))
		if serr != nil {
			err = serr
			break
		}
		reqs = append(reqs, req)
		off += n
		length -= n
	}
	for _, req := range reqs {
		if werr := c.wait(req); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// split issues a READ or WRITE, cut into pieces no larger than the server's
// maximum payload; the pieces are pipelined and all awaited.
func (c *Client) split(cmd, flags uint16, p []byte, off int64) error {
	max := int(c.maxBlock)
	if len(p) <= max {
		return c.do(cmd, flags, p, off, uint32(len(p)))
	}
	reqs := make([]*clientRequest, 0, (len(p)+max-1)/max)
	var err error
	for len(p) > 0 {
		n := min(len(p), max)
		req, serr := c.start(cmd, flags, p[:n], off, uint32(n))
		if serr != nil {
			err = serr
			break
		}
		reqs = append(reqs, req)
		p = p[n:]
		off += int64(n)
	}
	for _, req := range reqs {
		if werr := c.wait(req); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// do sends one request and waits for its reply.
func (c *Client) do(cmd, flags uint16, p []byte, off int64, length uint32) error {
	req, err := c.start(cmd, flags, p, off, length)
	if err != nil {
		return err
	}
	return c.wait(req)
}

// start registers a request and sends it. On success the caller must wait.
func (c *Client) start(cmd, flags uint16, p []byte, off int64, length uint32) (*clientRequest, error) {
	cookie := c.nextCookie.Add(1)

	// Register before sending: the reply may arrive before Write returns.
	c.mu.Lock()
	if c.broken != nil || c.closed {
		err := c.broken
		if err == nil {
			err = ErrClientClosed
		}
		c.mu.Unlock()
		return nil, err
	}
	var req *clientRequest
	if n := len(c.free); n > 0 {
		req = c.free[n-1]
		c.free = c.free[:n-1]
	} else {
		req = &clientRequest{done: make(chan error, 1)}
	}
	req.cmd = cmd
	if cmd == CmdRead {
		req.buf = p
	}
	c.pending[cookie] = req
	c.mu.Unlock()

	c.writers.Add(1)
	c.writeMu.Lock()
	h := c.hdr[:]
	binary.BigEndian.PutUint32(h[0:], MagicRequest)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], cmd)
	binary.BigEndian.PutUint64(h[8:], cookie)
	binary.BigEndian.PutUint64(h[16:], uint64(off))
	binary.BigEndian.PutUint32(h[24:], length)
	_, err := c.w.Write(h)
	if err == nil && cmd == CmdWrite {
		_, err = c.w.Write(p)
	}
	// The last of a burst of concurrent writers flushes: the others'
	// requests are in the buffer already and go out with it.
	if c.writers.Add(-1) == 0 && err == nil {
		err = c.w.Flush()
	}
	c.writeMu.Unlock()

	if err != nil {
		// The connection is unusable: fail everything (including req).
		c.fail(fmt.Errorf("%w: write: %w", ErrConnLost, err))
		c.conn.Close()
	}
	return req, nil
}

// wait blocks until the reply for req arrives (or the connection fails)
// and recycles req.
func (c *Client) wait(req *clientRequest) error {
	err := <-req.done
	c.putRequest(req)
	return err
}

func (c *Client) putRequest(req *clientRequest) {
	req.buf = nil
	c.mu.Lock()
	c.free = append(c.free, req)
	c.mu.Unlock()
}

// fail marks the connection broken with err and fails every waiter. Only
// the first error is kept.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.broken == nil {
		c.broken = err
	}
	err = c.broken
	pending := c.pending
	c.pending = make(map[uint64]*clientRequest)
	c.signalDrainedLocked()
	c.mu.Unlock()
	for _, req := range pending {
		req.done <- err
	}
}

// readLoop is the one reader: it reads simple replies and completes the
// request named by the cookie.
func (c *Client) readLoop() {
	defer close(c.readerDone)
	var h [SimpleReplyHeaderSize]byte
	for {
		if _, err := io.ReadFull(c.conn, h[:]); err != nil {
			c.fail(c.lostErr(err))
			return
		}
		if m := binary.BigEndian.Uint32(h[0:]); m != MagicSimpleReply {
			c.fail(fmt.Errorf("%w: %w: reply magic %#x", ErrConnLost, ErrProtocol, m))
			c.conn.Close()
			return
		}
		errno := binary.BigEndian.Uint32(h[4:])
		cookie := binary.BigEndian.Uint64(h[8:])
		c.mu.Lock()
		req, ok := c.pending[cookie]
		delete(c.pending, cookie)
		c.signalDrainedLocked()
		c.mu.Unlock()
		if !ok {
			c.fail(fmt.Errorf("%w: %w: reply for unknown cookie %d", ErrConnLost, ErrProtocol, cookie))
			c.conn.Close()
			return
		}
		if errno != 0 {
			// Simple replies carry no payload on error.
			req.done <- &Error{Errno: errno, Cmd: req.cmd}
			continue
		}
		if req.cmd == CmdRead && len(req.buf) > 0 {
			if _, err := io.ReadFull(c.conn, req.buf); err != nil {
				err = c.lostErr(err)
				req.done <- err
				c.fail(err)
				return
			}
		}
		req.done <- nil
	}
}

// signalDrainedLocked wakes Close once no request waits for a reply.
func (c *Client) signalDrainedLocked() {
	if c.drained != nil && len(c.pending) == 0 {
		close(c.drained)
		c.drained = nil
	}
}

func (c *Client) lostErr(err error) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return ErrClientClosed
	}
	return fmt.Errorf("%w: read: %w", ErrConnLost, err)
}

// Close refuses new requests, waits for the replies to those in flight,
// sends NBD_CMD_DISC and waits for the server to close its side (each wait
// bounded by the client's Timeout), then closes the connection. If the
// requests in flight do not finish in time, Close skips DISC, closes the
// connection and they fail with ErrClientClosed. Close is idempotent.
func (c *Client) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		drained := make(chan struct{})
		c.drained = drained
		c.signalDrainedLocked()
		c.mu.Unlock()
		t := time.NewTimer(c.timeout)
		defer t.Stop()
		idle := false
		select {
		case <-drained:
			idle = true
		case <-t.C:
			// A request is stuck (perhaps a writer blocked holding
			// writeMu): no DISC, just close.
		}
		c.mu.Lock()
		broken := c.broken
		c.mu.Unlock()
		if idle && broken == nil {
			c.writeMu.Lock()
			_ = c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
			var h [RequestHeaderSize]byte
			binary.BigEndian.PutUint32(h[0:], MagicRequest)
			binary.BigEndian.PutUint16(h[6:], CmdDisc)
			binary.BigEndian.PutUint64(h[8:], c.nextCookie.Add(1))
			_, werr := c.w.Write(h[:])
			if werr == nil {
				werr = c.w.Flush()
			}
			c.writeMu.Unlock()
			if werr == nil {
				if cw, ok := c.rawConn().(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
				}
				// The server closes after DISC.
				t2 := time.NewTimer(c.timeout)
				select {
				case <-c.readerDone:
				case <-t2.C:
				}
				t2.Stop()
			}
		}
		err = c.conn.Close()
		<-c.readerDone
		c.fail(ErrClientClosed)
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
	})
	return err
}

func (c *Client) rawConn() net.Conn {
	if rc, ok := c.conn.(*clientReaderConn); ok {
		return rc.Conn
	}
	return c.conn
}

// List returns the export names the server offers (NBD_OPT_LIST), then
// ends the session with NBD_OPT_ABORT.
func List(ctx context.Context, network, addr string) ([]string, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s %s: %w", network, addr, err)
	}
	defer conn.Close()
	deadline, _ := dctx.Deadline()
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(dctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	r := bufio.NewReader(conn)
	w := bufio.NewWriter(conn)
	if _, err := clientGreet(r, w); err != nil {
		return nil, fmt.Errorf("nbd: list %s: %w", addr, err)
	}
	if err := clientSendOption(w, OptList, nil); err != nil {
		return nil, fmt.Errorf("nbd: list %s: %w", addr, err)
	}
	names := []string{}
	for {
		rep, err := clientReadOptionReply(r, OptList)
		if err != nil {
			return nil, fmt.Errorf("nbd: list %s: %w", addr, err)
		}
		switch {
		case rep.typ == RepAck:
			_ = clientSendOption(w, OptAbort, nil)
			return names, nil
		case rep.typ == RepServer:
			if len(rep.data) < 4 {
				return nil, fmt.Errorf("nbd: list %s: %w: short NBD_REP_SERVER", addr, ErrProtocol)
			}
			n := binary.BigEndian.Uint32(rep.data)
			if uint64(n) > uint64(len(rep.data)-4) {
				return nil, fmt.Errorf("nbd: list %s: %w: bad name length %d", addr, ErrProtocol, n)
			}
			names = append(names, string(rep.data[4:4+n]))
		case rep.typ&(1<<31) != 0:
			return nil, fmt.Errorf("nbd: list %s: %w", addr, clientOptionError(OptList, rep))
		}
	}
}
