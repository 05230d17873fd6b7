package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/twinbd/twinbd/device"
)

// gateExport wraps an Export: calls for which hold returns true block until
// release is closed; it counts concurrent calls and remembers the maximum.
type gateExport struct {
	Export
	hold    func(off int64) bool
	release chan struct{}
	once    sync.Once

	mu      sync.Mutex // guards cur, peak, entered
	cur     int
	peak    int
	entered int
	flushes atomic.Int32
}

func newGateExport(t *testing.T, e Export, hold func(off int64) bool) *gateExport {
	g := &gateExport{Export: e, hold: hold, release: make(chan struct{})}
	// Registered first, so it runs last: a failed test never leaves the
	// server's Shutdown waiting on a held request.
	t.Cleanup(g.open)
	return g
}

func (g *gateExport) open() { g.once.Do(func() { close(g.release) }) }

func (g *gateExport) enter(off int64) {
	g.mu.Lock()
	g.cur++
	g.entered++
	g.peak = max(g.peak, g.cur)
	g.mu.Unlock()
	if g.hold(off) {
		<-g.release
	}
}

func (g *gateExport) leave() {
	g.mu.Lock()
	g.cur--
	g.mu.Unlock()
}

func (g *gateExport) stats() (cur, peak, entered int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cur, g.peak, g.entered
}

func (g *gateExport) ReadAt(p []byte, off int64) error {
	g.enter(off)
	defer g.leave()
	return g.Export.ReadAt(p, off)
}

func (g *gateExport) WriteAt(p []byte, off int64, fua bool) error {
	g.enter(off)
	defer g.leave()
	return g.Export.WriteAt(p, off, fua)
}

func (g *gateExport) Flush() error {
	g.flushes.Add(1)
	return g.Export.Flush()
}

func memExport(t *testing.T) *DeviceExport {
	m := device.NewMemory(rawExportSize)
	_, err := m.WriteAt(rawPattern(0, rawExportSize), 0)
	require.NoError(t, err)
	return NewDeviceExport(m, false)
}

func TestOutOfOrderReplies(t *testing.T) {
	// Reads of the first 64 KiB block until released; the rest go through.
	g := newGateExport(t, memExport(t), func(off int64) bool { return off < 65536 })
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": g}})
	rc := rawGo(t, addr)

	const n = 32
	for i := range n {
		rc.send(CmdRead, 0, uint64(1000+i), uint64(i)*4096, 4096, nil)
	}
	// The 16 unblocked reads (offsets ≥ 64 KiB) are answered first.
	seen := map[uint64]bool{}
	readOne := func() uint64 {
		e, cookie := rc.reply()
		require.Zero(t, e)
		i := int(cookie - 1000)
		require.True(t, i >= 0 && i < n, "unknown cookie %d", cookie)
		require.False(t, seen[cookie], "cookie %d answered twice", cookie)
		seen[cookie] = true
		got := make([]byte, 4096)
		rc.readFull(got)
		requireBytes(t, rawPattern(i*4096, 4096), got)
		return cookie
	}
	for range n - 16 {
		c := readOne()
		require.GreaterOrEqual(t, c, uint64(1016), "a held request was answered before release")
	}
	g.open()
	for range 16 {
		readOne()
	}
	require.Len(t, seen, n)
}

func TestMaxInflightBoundsConcurrency(t *testing.T) {
	const maxInflight = 4
	g := newGateExport(t, memExport(t), func(int64) bool { return true })
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": g}, MaxInflight: maxInflight})
	rc := rawGo(t, addr)

	const n = 40
	payload := make([]byte, 4096)
	go func() {
		// The server stops reading when full: send from another goroutine.
		for i := range n {
			rc.send(CmdWrite, 0, uint64(i), uint64(i)*4096, 4096, payload)
		}
	}()
	require.Eventually(t, func() bool { _, _, e := g.stats(); return e == maxInflight }, 10*time.Second, time.Millisecond)
	// Give the reader every chance to overrun the bound, then check it did not.
	time.Sleep(50 * time.Millisecond)
	cur, peak, entered := g.stats()
	require.Equal(t, maxInflight, cur)
	require.Equal(t, maxInflight, entered)
	require.Equal(t, maxInflight, peak)
	g.open()
	for range n {
		e, _ := rc.reply()
		require.Zero(t, e)
	}
	_, peak, entered = g.stats()
	require.Equal(t, n, entered)
	require.LessOrEqual(t, peak, maxInflight)
}

func TestShutdownDrainsInflight(t *testing.T) {
	g := newGateExport(t, memExport(t), func(int64) bool { return true })
	s := NewServer(ServerConfig{Exports: StaticResolver{"": g}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()

	rc := rawGo(t, ln.Addr().String())
	require.Eventually(t, func() bool { return s.Connections() == 1 }, 5*time.Second, time.Millisecond)
	const n = 8
	for i := range n {
		rc.send(CmdWrite, 0, uint64(i), uint64(i)*4096, 4096, make([]byte, 4096))
	}
	require.Eventually(t, func() bool { c, _, _ := g.stats(); return c == n }, 5*time.Second, time.Millisecond)

	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	require.NoError(t, <-served) // the listener closes at once
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned with requests in flight: %v", err)
	default:
	}
	g.open()
	got := map[uint64]bool{}
	for range n {
		e, c := rc.reply()
		require.Zero(t, e)
		got[c] = true
	}
	require.Len(t, got, n)
	rc.expectClosed()
	require.NoError(t, <-shut)
	require.Zero(t, s.Connections())
	require.NoError(t, s.Shutdown(context.Background()), "idempotent")
	_, err = net.Dial("tcp", ln.Addr().String())
	require.Error(t, err, "still accepting after Shutdown")
}

func TestShutdownDeadlineDropsConnections(t *testing.T) {
	g := newGateExport(t, memExport(t), func(int64) bool { return true })
	s := NewServer(ServerConfig{Exports: StaticResolver{"": g}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go s.Serve(ln)
	rc := rawGo(t, ln.Addr().String())
	rc.send(CmdWrite, 0, 1, 0, 4096, make([]byte, 4096))
	require.Eventually(t, func() bool { c, _, _ := g.stats(); return c == 1 }, 5*time.Second, time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// The request is stuck in the export: Shutdown gives up at the deadline
	// and cuts the client off.
	require.ErrorIs(t, s.Shutdown(ctx), context.Canceled)
	rc.expectClosed()
}

func TestShutdownClosesHandshakingClients(t *testing.T) {
	s, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": memExport(t)}})
	rc := rawDial(t, addr, ClientFlagFixedNewstyle)
	require.NoError(t, s.Shutdown(context.Background()))
	rc.expectClosed()
}

func TestCloseConnections(t *testing.T) {
	s, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": memExport(t)}})
	a, b := rawGo(t, addr), rawGo(t, addr)
	a.checkAlive()
	b.checkAlive()
	require.Equal(t, 2, s.Connections())
	s.CloseConnections()
	a.expectClosed()
	b.expectClosed()
	require.Eventually(t, func() bool { return s.Connections() == 0 }, 5*time.Second, time.Millisecond)
	rawGo(t, addr).checkAlive() // still accepting
}

func TestAllowList(t *testing.T) {
	_, addr := srvStart(t, ServerConfig{
		Exports:   StaticResolver{"": memExport(t)},
		AllowList: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	})
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	n, err := io.Copy(io.Discard, nc)
	require.NoError(t, err)
	require.Zero(t, n, "refused client got a greeting")

	_, addr = srvStart(t, ServerConfig{
		Exports:   StaticResolver{"": memExport(t)},
		AllowList: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	})
	rawGo(t, addr).checkAlive()
}

func TestFlushCallsExportFlush(t *testing.T) {
	g := newGateExport(t, memExport(t), func(int64) bool { return false })
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": g}})
	a, b := rawGo(t, addr), rawGo(t, addr)
	a.send(CmdWrite, 0, 1, 0, 4096, make([]byte, 4096))
	a.expectReply(1, 0)
	// CAN_MULTI_CONN: a FLUSH on another connection covers it.
	b.send(CmdFlush, 0, 2, 0, 0, nil)
	b.expectReply(2, 0)
	require.EqualValues(t, 1, g.flushes.Load())
}

// errExport fails every call with err.
type errExport struct {
	Export
	err error
}

func (e errExport) ReadAt([]byte, int64) error                 { return e.err }
func (e errExport) WriteAt([]byte, int64, bool) error          { return e.err }
func (e errExport) Flush() error                               { return e.err }
func (e errExport) Trim(int64, int64, bool) error              { return e.err }
func (e errExport) WriteZeroes(int64, int64, bool, bool) error { return e.err }

func TestExportErrorsMapToErrno(t *testing.T) {
	tests := []struct {
		err         error
		read, write uint32
	}{
		{ErrReadOnly, EPERM, EPERM},
		{fmt.Errorf("wrapped: %w", ErrOutOfRange), EINVAL, ENOSPC},
		{ErrNoSpace, ENOSPC, ENOSPC},
		{ErrShutdown, ESHUTDOWN, ESHUTDOWN},
		{syscall.EDQUOT, ENOSPC, ENOSPC},
		{fmt.Errorf("x: %w", syscall.EFBIG), ENOSPC, ENOSPC},
		{syscall.EROFS, EPERM, EPERM},
		{syscall.ENOMEM, ENOMEM, ENOMEM},
		{syscall.EOPNOTSUPP, ENOTSUP, ENOTSUP},
		{syscall.EBADF, EIO, EIO},
		{errors.New("anything"), EIO, EIO},
	}
	for _, tt := range tests {
		require.Equal(t, tt.read, errnoFor(CmdRead, tt.err), "%v", tt.err)
		require.Equal(t, tt.write, errnoFor(CmdWrite, tt.err), "%v", tt.err)
	}

	// End to end, and the connection survives every failure.
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{
		"eio":   errExport{memExport(t), syscall.EIO},
		"nospc": errExport{memExport(t), ErrNoSpace},
	}})
	for name, errno := range map[string]uint32{"eio": EIO, "nospc": ENOSPC} {
		rc := rawDial(t, addr, ClientFlagFixedNewstyle|ClientFlagNoZeroes)
		rc.infoGo(OptGo, name)
		rc.send(CmdRead, 0, 1, 0, 4096, nil)
		rc.expectReply(1, errno) // and no payload follows
		rc.send(CmdWrite, CmdFlagFUA, 2, 0, 4096, make([]byte, 4096))
		rc.expectReply(2, errno)
		rc.send(CmdFlush, 0, 3, 0, 0, nil)
		rc.expectReply(3, errno)
		rc.send(CmdTrim, 0, 4, 0, 4096, nil)
		rc.expectReply(4, errno)
		rc.send(CmdWriteZeroes, CmdFlagNoHole, 5, 0, 4096, nil)
		rc.expectReply(5, errno)
	}
}

// panicExport panics on reads.
type panicExport struct{ Export }

func (panicExport) ReadAt([]byte, int64) error { panic("boom") }

func TestExportPanicIsEIO(t *testing.T) {
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": panicExport{memExport(t)}}})
	rc := rawGo(t, addr)
	rc.send(CmdRead, 0, 1, 0, 512, nil)
	rc.expectReply(1, EIO)
	rc.send(CmdWrite, 0, 2, 0, 3, []byte("abc"))
	rc.expectReply(2, 0)
}

func TestPipelinedMixedLoad(t *testing.T) {
	// Many requests of every kind in flight at once on several connections,
	// against a file: every reply matches its request.
	exp := rawFileExport(t, false)
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": exp}, MaxInflight: 16})
	var wg sync.WaitGroup
	for c := range 4 {
		rc := rawGo(t, addr)
		wg.Go(func() {
			base := uint64(c) * 256 << 10
			const n = 200
			go func() {
				for i := range n {
					off := base + uint64(i%64)*4096
					if i%2 == 0 {
						p := make([]byte, 4096)
						binary.BigEndian.PutUint64(p, off)
						rc.send(CmdWrite, uint16(i%3)&CmdFlagFUA, uint64(i), off, 4096, p)
					} else {
						rc.send(CmdFlush, 0, uint64(i), 0, 0, nil)
					}
				}
			}()
			seen := map[uint64]bool{}
			for range n {
				e, cookie := rc.reply()
				if e != 0 || seen[cookie] {
					t.Errorf("cookie %d errno %d dup %v", cookie, e, seen[cookie])
					return
				}
				seen[cookie] = true
			}
		})
	}
	wg.Wait()
}

func TestStaticResolver(t *testing.T) {
	a, b := memExport(t), memExport(t)
	one := StaticResolver{"a": a}
	e, err := one.Lookup("")
	require.NoError(t, err)
	require.Same(t, a, e)
	_, err = one.Lookup("b")
	require.ErrorIs(t, err, ErrUnknownExport)

	two := StaticResolver{"b": b, "a": a}
	_, err = two.Lookup("")
	require.ErrorIs(t, err, ErrUnknownExport)
	require.Equal(t, []string{"a", "b"}, two.Names())
}

func TestDeviceExport(t *testing.T) {
	m := device.NewMemory(1 << 20)
	e := NewDeviceExport(m, false)
	require.NoError(t, e.WriteAt([]byte("durable"), 100, true))
	require.NoError(t, e.WriteAt([]byte("volatile"), 200, false))
	m.Crash()
	p := make([]byte, 8)
	require.NoError(t, e.ReadAt(p, 100))
	require.Equal(t, "durable", string(p[:7]))
	require.NoError(t, e.ReadAt(p, 200))
	require.Equal(t, make([]byte, 8), p, "a write without FUA or FLUSH survived a crash")

	require.NoError(t, e.WriteAt([]byte("xxxxxxxx"), 300, false))
	require.NoError(t, e.WriteZeroes(302, 4, true, true))
	m.Crash()
	require.NoError(t, e.ReadAt(p, 300))
	require.Equal(t, []byte("xx\x00\x00\x00\x00xx"), p, "WriteZeroes with FUA is durable")
	require.NoError(t, e.Trim(300, 8, true))
	require.NoError(t, e.ReadAt(p, 300))
	require.Equal(t, make([]byte, 8), p)
	require.ErrorIs(t, e.ReadAt(p, 1<<20-4), ErrOutOfRange)

	ro := NewDeviceExport(m, true)
	require.True(t, ro.ReadOnly())
	require.ErrorIs(t, ro.WriteAt(p, 0, false), ErrReadOnly)
	require.ErrorIs(t, ro.Trim(0, 1, false), ErrReadOnly)
	require.ErrorIs(t, ro.WriteZeroes(0, 1, false, false), ErrReadOnly)
}

// slowReadExport holds reads at one offset until the current gate closes.
type slowReadExport struct {
	Export
	slowOff int64
	gate    atomic.Pointer[chan struct{}]
	entered chan struct{} // one token per held read that reached the export
}

func (e *slowReadExport) ReadAt(p []byte, off int64) error {
	if off == e.slowOff {
		e.entered <- struct{}{}
		<-*e.gate.Load()
	}
	return e.Export.ReadAt(p, off)
}

func (e *slowReadExport) newGate() chan struct{} {
	g := make(chan struct{})
	e.gate.Store(&g)
	return g
}

// A client that waits for every reply is served inline (no goroutine per
// request); once it pipelines, a slow request delays at most what arrived
// while it ran, and the connection is back to concurrent dispatch.
func TestInlineServingForDepthOneClients(t *testing.T) {
	e := &slowReadExport{Export: memExport(t), slowOff: rawExportSize - 4096, entered: make(chan struct{}, 2)}
	open := e.newGate()
	close(open)
	srv, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": e}})
	rc := rawGo(t, addr)
	readReply := func(wantCookie uint64) {
		t.Helper()
		errno, cookie := rc.reply()
		require.Zero(t, errno)
		require.Equal(t, wantCookie, cookie)
		rc.readFull(make([]byte, 4096))
	}

	// Queue depth 1: after inlineAfter idle requests the reader serves them.
	for i := range 2 * inlineAfter {
		rc.send(CmdRead, 0, uint64(i), uint64(i)*4096, 4096, nil)
		readReply(uint64(i))
	}
	// Requests inlineAfter… of 2*inlineAfter at most; one may still find the
	// writer finishing its bookkeeping for the one before and go concurrent.
	require.LessOrEqual(t, srv.inlined.Load(), int64(inlineAfter))
	// On a loaded machine more requests find the writer busy and go
	// concurrent, which restarts the count (a CI run saw 2 of 16 inlined):
	// keep the client at depth 1 until inline serving shows.
	for i := 2 * inlineAfter; srv.inlined.Load() < inlineAfter/2 && i < 40*inlineAfter; i++ {
		rc.send(CmdRead, 0, uint64(i), uint64(i%64)*4096, 4096, nil)
		readReply(uint64(i))
	}
	require.GreaterOrEqual(t, srv.inlined.Load(), int64(inlineAfter/2))

	// The client starts pipelining behind a slow request: served inline, it
	// holds up the one request sent while it runs (one request's delay).
	// That request waits in the socket, not yet read: only SIOCINQ sees it.
	gate := e.newGate()
	rc.send(CmdRead, 0, 100, uint64(e.slowOff), 4096, nil)
	<-e.entered
	rc.send(CmdRead, 0, 101, 0, 4096, nil)
	close(gate)
	readReply(100)
	readReply(101)
	inlined := srv.inlined.Load()

	// ... and that was noticed: the same burst now runs concurrently, the
	// four fast requests answered while the slow one is still held.
	gate = e.newGate()
	rc.send(CmdRead, 0, 200, uint64(e.slowOff), 4096, nil)
	<-e.entered
	for i := range 4 {
		rc.send(CmdRead, 0, uint64(201+i), uint64(i)*4096, 4096, nil)
	}
	for range 4 {
		errno, cookie := rc.reply()
		require.Zero(t, errno)
		require.NotEqual(t, uint64(200), cookie, "the held request was answered before release")
		rc.readFull(make([]byte, 4096))
	}
	close(gate)
	readReply(200)
	require.Equal(t, inlined, srv.inlined.Load(), "no inline serving right after pipelining was seen")
	rc.checkAlive()
}
