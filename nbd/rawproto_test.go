package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	nbdclient "github.com/pojntfx/go-nbd/pkg/client"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/twinbd/twinbd/device"
)

// Raw-protocol tests: bytes on a real TCP loopback socket, no client library.

const (
	rawExportSize = 1 << 20
	rawMaxRequest = 64 << 10
)

// rawPattern is the initial content of test exports: byte i is i*7+i>>9.
func rawPattern(off, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		x := off + i
		p[i] = byte(x*7 + x>>9)
	}
	return p
}

// rawFileExport creates a file export of rawExportSize holding rawPattern.
func rawFileExport(t *testing.T, readOnly bool) *DeviceExport {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	require.NoError(t, os.WriteFile(path, rawPattern(0, rawExportSize), 0o600))
	d, err := device.OpenFile(path)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return NewDeviceExport(d, readOnly)
}

// srvStart serves exports on 127.0.0.1:0 and returns the address. The server
// is shut down at cleanup.
func srvStart(t *testing.T, cfg ServerConfig) (*Server, string) {
	t.Helper()
	if cfg.MaxRequest == 0 {
		cfg.MaxRequest = rawMaxRequest
	}
	s := NewServer(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, s.Shutdown(ctx))
		require.NoError(t, <-done)
	})
	return s, ln.Addr().String()
}

type rawConn struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

// rawDial connects, checks the greeting and sends the client flags.
func rawDial(t *testing.T, addr string, clientFlags uint32) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	require.NoError(t, nc.SetDeadline(time.Now().Add(20*time.Second)))
	rc := &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
	var g [18]byte
	rc.readFull(g[:])
	require.Equal(t, MagicNBD, binary.BigEndian.Uint64(g[0:]))
	require.Equal(t, MagicOption, binary.BigEndian.Uint64(g[8:]))
	require.Equal(t, FlagFixedNewstyle|FlagNoZeroes, binary.BigEndian.Uint16(g[16:]))
	rc.write(binary.BigEndian.AppendUint32(nil, clientFlags))
	return rc
}

func (rc *rawConn) write(b []byte) {
	rc.t.Helper()
	_, err := rc.nc.Write(b)
	require.NoError(rc.t, err)
}

func (rc *rawConn) readFull(b []byte) {
	rc.t.Helper()
	_, err := io.ReadFull(rc.br, b)
	require.NoError(rc.t, err)
}

// expectClosed asserts the server closes the connection without sending more.
func (rc *rawConn) expectClosed() {
	rc.t.Helper()
	n, err := io.Copy(io.Discard, rc.br)
	if err != nil {
		// A close with our bytes still unread is a reset; a timeout is a
		// server that did not close.
		require.ErrorIs(rc.t, err, syscall.ECONNRESET)
	}
	require.Zero(rc.t, n, "server sent data before closing")
}

func (rc *rawConn) sendOpt(opt uint32, data []byte) {
	rc.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, MagicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	rc.write(append(b, data...))
}

func (rc *rawConn) readOptReply(wantOpt uint32) (typ uint32, data []byte) {
	rc.t.Helper()
	var h [20]byte
	rc.readFull(h[:])
	require.Equal(rc.t, MagicOptionReply, binary.BigEndian.Uint64(h[0:]))
	require.Equal(rc.t, wantOpt, binary.BigEndian.Uint32(h[8:]))
	data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	rc.readFull(data)
	return binary.BigEndian.Uint32(h[12:]), data
}

func rawInfoGoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

type rawInfo struct {
	size                     uint64
	flags                    uint16
	name                     *string
	minBlock, pref, maxBlock uint32
}

// infoGo sends INFO or GO and collects the NBD_REP_INFO replies up to ACK.
func (rc *rawConn) infoGo(opt uint32, name string, infos ...uint16) rawInfo {
	rc.t.Helper()
	rc.sendOpt(opt, rawInfoGoData(name, infos...))
	var ri rawInfo
	gotExport, gotBlock := false, false
	for {
		typ, d := rc.readOptReply(opt)
		if typ == RepAck {
			break
		}
		require.Equal(rc.t, RepInfo, typ, "reply type %#x", typ)
		require.GreaterOrEqual(rc.t, len(d), 2)
		switch binary.BigEndian.Uint16(d) {
		case InfoExport:
			require.Len(rc.t, d, 12)
			ri.size = binary.BigEndian.Uint64(d[2:])
			ri.flags = binary.BigEndian.Uint16(d[10:])
			gotExport = true
		case InfoName:
			n := string(d[2:])
			ri.name = &n
		case InfoBlockSize:
			require.Len(rc.t, d, 14)
			ri.minBlock = binary.BigEndian.Uint32(d[2:])
			ri.pref = binary.BigEndian.Uint32(d[6:])
			ri.maxBlock = binary.BigEndian.Uint32(d[10:])
			gotBlock = true
		}
	}
	require.True(rc.t, gotExport, "no NBD_INFO_EXPORT")
	require.True(rc.t, gotBlock, "no NBD_INFO_BLOCK_SIZE")
	return ri
}

// rawGo dials and enters transmission on the default export.
func rawGo(t *testing.T, addr string) *rawConn {
	rc := rawDial(t, addr, ClientFlagFixedNewstyle|ClientFlagNoZeroes)
	rc.infoGo(OptGo, "")
	return rc
}

func (rc *rawConn) send(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	rc.t.Helper()
	b := make([]byte, RequestHeaderSize, RequestHeaderSize+len(payload))
	binary.BigEndian.PutUint32(b[0:], MagicRequest)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], length)
	rc.write(append(b, payload...))
}

func (rc *rawConn) reply() (errno uint32, cookie uint64) {
	rc.t.Helper()
	var h [SimpleReplyHeaderSize]byte
	rc.readFull(h[:])
	require.Equal(rc.t, MagicSimpleReply, binary.BigEndian.Uint32(h[0:]))
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

// expectReply reads one reply and checks its cookie and errno.
func (rc *rawConn) expectReply(cookie uint64, errno uint32) {
	rc.t.Helper()
	e, c := rc.reply()
	require.Equal(rc.t, cookie, c, "cookie")
	require.Equal(rc.t, errno, e, "errno: got %s want %s", ErrnoName(e), ErrnoName(errno))
}

func (rc *rawConn) read(cookie, off uint64, n uint32) []byte {
	rc.t.Helper()
	rc.send(CmdRead, 0, cookie, off, n, nil)
	rc.expectReply(cookie, 0)
	p := make([]byte, n)
	rc.readFull(p)
	return p
}

// checkAlive does a valid READ and checks the data: the connection is in step.
func (rc *rawConn) checkAlive() {
	rc.t.Helper()
	requireBytes(rc.t, rawPattern(8192, 4096), rc.read(0xa11fe, 8192, 4096))
}

func TestRawBadRequests(t *testing.T) {
	rw := rawFileExport(t, false)
	ro := rawFileExport(t, true)
	_, addrRW := srvStart(t, ServerConfig{Exports: StaticResolver{"": rw}})
	_, addrRO := srvStart(t, ServerConfig{Exports: StaticResolver{"": ro}})

	const size = rawExportSize
	huge := uint64(1<<64 - 512)
	tests := []struct {
		name    string
		ro      bool
		typ     uint16
		flags   uint16
		off     uint64
		length  uint32
		payload bool // send length bytes after the header
		errno   uint32
	}{
		{"read past end", false, CmdRead, 0, size - 512, 1024, false, EINVAL},
		{"read at end", false, CmdRead, 0, size, 1, false, EINVAL},
		{"read offset+length overflows", false, CmdRead, 0, huge, 1024, false, EINVAL},
		{"read oversized", false, CmdRead, 0, 0, rawMaxRequest + 1, false, EOVERFLOW},
		{"read 4 GiB-1", false, CmdRead, 0, 0, 1<<32 - 1, false, EOVERFLOW},
		{"read zero length", false, CmdRead, 0, 4096, 0, false, 0},
		{"read zero length at end", false, CmdRead, 0, size, 0, false, 0},
		{"read with DF (not negotiated)", false, CmdRead, CmdFlagDF, 0, 512, false, EINVAL},
		{"read with unknown flag", false, CmdRead, 1 << 9, 0, 512, false, EINVAL},
		{"write past end", false, CmdWrite, 0, size - 512, 1024, true, ENOSPC},
		{"write offset+length overflows", false, CmdWrite, 0, huge, 1024, true, ENOSPC},
		{"write oversized", false, CmdWrite, 0, 0, rawMaxRequest + 1, true, EOVERFLOW},
		{"write oversized 1 MiB", false, CmdWrite, 0, 0, 1 << 20, true, EOVERFLOW},
		{"write zero length", false, CmdWrite, 0, 4096, 0, false, 0},
		{"write with NO_HOLE", false, CmdWrite, CmdFlagNoHole, 0, 512, true, EINVAL},
		{"write with unknown flag", false, CmdWrite, 1 << 12, 0, 512, true, EINVAL},
		{"trim past end", false, CmdTrim, 0, size - 512, 1024, false, ENOSPC},
		{"trim overflow", false, CmdTrim, 0, huge, 1024, false, ENOSPC},
		{"trim with NO_HOLE", false, CmdTrim, CmdFlagNoHole, 0, 512, false, EINVAL},
		{"write zeroes past end", false, CmdWriteZeroes, 0, size, 1, false, ENOSPC},
		{"write zeroes with FAST_ZERO (not advertised)", false, CmdWriteZeroes, CmdFlagFastZero, 0, 512, false, EINVAL},
		{"flush with unknown flag", false, CmdFlush, CmdFlagNoHole, 0, 0, false, EINVAL},
		{"unknown command", false, 99, 0, 0, 512, false, EINVAL},
		{"unknown command with flags", false, 0xffff, 0xffff, huge, 1<<32 - 1, false, EINVAL},
		{"CACHE (not advertised)", false, CmdCache, 0, 0, 512, false, EINVAL},
		{"BLOCK_STATUS (not negotiated)", false, CmdBlockStatus, 0, 0, 512, false, EINVAL},
		{"RESIZE (not advertised)", false, CmdResize, 0, 0, 0, false, EINVAL},
		{"write to read-only export", true, CmdWrite, 0, 0, 4096, true, EPERM},
		{"FUA write to read-only export", true, CmdWrite, CmdFlagFUA, 0, 4096, true, EPERM},
		{"trim on read-only export", true, CmdTrim, 0, 0, 4096, false, EPERM},
		{"write zeroes on read-only export", true, CmdWriteZeroes, 0, 0, 4096, false, EPERM},
		{"read on read-only export", true, CmdRead, 0, 0, 4096, false, 0},
		{"flush on read-only export", true, CmdFlush, 0, 0, 0, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := addrRW
			if tt.ro {
				addr = addrRO
			}
			rc := rawGo(t, addr)
			var payload []byte
			if tt.payload {
				payload = bytes.Repeat([]byte{0xee}, int(tt.length))
			}
			rc.send(tt.typ, tt.flags, 0xc0ffee, tt.off, tt.length, payload)
			rc.expectReply(0xc0ffee, tt.errno)
			if tt.typ == CmdRead && tt.errno == 0 {
				got := make([]byte, tt.length)
				rc.readFull(got)
				requireBytes(t, rawPattern(int(tt.off), int(tt.length)), got)
			}
			rc.checkAlive()
			// A refused request changed nothing.
			requireBytes(t, rawPattern(0, 4096), rc.read(1, 0, 4096))
			requireBytes(t, rawPattern(size-4096, 4096), rc.read(2, size-4096, 4096))
		})
	}
}

func TestRawMisalignedIO(t *testing.T) {
	// The minimum block size is 1: every offset and length is aligned.
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": rawFileExport(t, false)}})
	rc := rawGo(t, addr)
	data := []byte("odd offset, odd length!")
	rc.send(CmdWrite, 0, 7, 4097, uint32(len(data)), data)
	rc.expectReply(7, 0)
	requireBytes(t, data, rc.read(8, 4097, uint32(len(data))))
	want := rawPattern(4090, 40)
	copy(want[7:], data)
	requireBytes(t, want, rc.read(9, 4090, 40))
	rc.send(CmdWriteZeroes, CmdFlagNoHole|CmdFlagFUA, 10, 4099, 3, nil)
	rc.expectReply(10, 0)
	copy(want[9:12], []byte{0, 0, 0})
	requireBytes(t, want, rc.read(11, 4090, 40))
	rc.send(CmdTrim, 0, 12, 3, 5, nil)
	rc.expectReply(12, 0)
	rc.checkAlive()
}

func TestRawCommandsRoundTrip(t *testing.T) {
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": rawFileExport(t, false)}})
	rc := rawGo(t, addr)
	p := bytes.Repeat([]byte{0xab}, 65536)
	rc.send(CmdWrite, 0, 1, 0, 65536, p)
	rc.expectReply(1, 0)
	rc.send(CmdWrite, CmdFlagFUA, 2, 65536, 65536, p)
	rc.expectReply(2, 0)
	rc.send(CmdFlush, 0, 3, 0, 0, nil)
	rc.expectReply(3, 0)
	rc.send(CmdFlush, CmdFlagFUA, 4, 0, 0, nil) // old qemu sets FUA on FLUSH
	rc.expectReply(4, 0)
	requireBytes(t, p, rc.read(5, 0, 65536))
	requireBytes(t, p, rc.read(6, 65536, 65536))
	rc.send(CmdTrim, 0, 7, 0, 65536, nil)
	rc.expectReply(7, 0)
	requireBytes(t, make([]byte, 65536), rc.read(8, 0, 65536))
	rc.send(CmdWriteZeroes, 0, 9, 65536, 65536, nil)
	rc.expectReply(9, 0)
	requireBytes(t, make([]byte, 65536), rc.read(10, 65536, 65536))
	rc.send(CmdRead, CmdFlagFUA, 11, 200000, 4096, nil) // FUA is valid on any command
	rc.expectReply(11, 0)
	got := make([]byte, 4096)
	rc.readFull(got)
	requireBytes(t, rawPattern(200000, 4096), got)
	// DISC: no reply, the server closes.
	rc.send(CmdDisc, 0, 12, 0, 0, nil)
	rc.expectClosed()
}

func TestRawBadMagicClosesConnection(t *testing.T) {
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": rawFileExport(t, false)}})
	rc := rawGo(t, addr)
	rc.checkAlive()
	b := make([]byte, RequestHeaderSize)
	binary.BigEndian.PutUint32(b, MagicExtendedReq) // extended headers were never negotiated
	rc.write(b)
	rc.expectClosed()
	// The server itself is fine.
	rawGo(t, addr).checkAlive()
}

func TestRawHandshakeGreetingAndFlags(t *testing.T) {
	rw := rawFileExport(t, false)
	ro := rawFileExport(t, true)
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"rw": rw, "ro": ro}, MaxRequest: 1 << 20})

	rc := rawDial(t, addr, ClientFlagFixedNewstyle)
	ri := rc.infoGo(OptInfo, "rw", InfoName)
	want := TFlagHasFlags | TFlagSendFlush | TFlagSendFUA | TFlagSendTrim | TFlagSendWriteZeroes | TFlagCanMultiConn
	require.Equal(t, want, ri.flags)
	require.EqualValues(t, rawExportSize, ri.size)
	require.NotNil(t, ri.name)
	require.Equal(t, "rw", *ri.name)
	require.Equal(t, [3]uint32{1, 4096, 1 << 20}, [3]uint32{ri.minBlock, ri.pref, ri.maxBlock})

	ri = rc.infoGo(OptGo, "ro") // INFO did not end the haggling
	require.Equal(t, want|TFlagReadOnly, ri.flags)
	rc.checkAlive()
}

func TestRawHandshakeClientFlags(t *testing.T) {
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": rawFileExport(t, false)}})
	// Unknown client flags: the spec says close.
	for _, flags := range []uint32{ClientFlagFixedNewstyle | 1<<7, 1 << 31} {
		rc := rawDial(t, addr, flags)
		rc.expectClosed()
	}
	// Plain (non-fixed) newstyle is accepted: go-nbd's client sends no
	// flags and then haggles with OPT_GO.
	for _, flags := range []uint32{0, ClientFlagNoZeroes} {
		rc := rawDial(t, addr, flags)
		rc.infoGo(OptGo, "")
		rc.checkAlive()
	}
}

// go-nbd's NBD_OPT_LIST against our server. (Its client.Connect, which
// AttachKernel no longer uses, sends a malformed NBD_OPT_GO: see kernel.go.)
func TestGoNBDClientNegotiates(t *testing.T) {
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"r0": rawFileExport(t, false)}})
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer nc.Close()
	names, err := nbdclient.List(nc)
	require.NoError(t, err)
	require.Equal(t, []string{"r0"}, names)
}

func TestRawOptList(t *testing.T) {
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"b": rawFileExport(t, false), "a": rawFileExport(t, true)}})
	rc := rawDial(t, addr, ClientFlagFixedNewstyle|ClientFlagNoZeroes)
	rc.sendOpt(OptList, nil)
	var names []string
	for {
		typ, d := rc.readOptReply(OptList)
		if typ == RepAck {
			break
		}
		require.Equal(t, RepServer, typ)
		n := binary.BigEndian.Uint32(d)
		require.EqualValues(t, len(d)-4, n)
		names = append(names, string(d[4:]))
	}
	require.Equal(t, []string{"a", "b"}, names)

	rc.sendOpt(OptList, []byte("junk"))
	typ, _ := rc.readOptReply(OptList)
	require.Equal(t, RepErrInvalid, typ)

	// Two exports: the empty name is no default.
	rc.sendOpt(OptGo, rawInfoGoData(""))
	typ, _ = rc.readOptReply(OptGo)
	require.Equal(t, RepErrUnknown, typ)
	rc.infoGo(OptGo, "b")
	rc.checkAlive()
}

func TestRawOptUnsupportedAndUnknown(t *testing.T) {
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"disk": rawFileExport(t, false)}})
	rc := rawDial(t, addr, ClientFlagFixedNewstyle|ClientFlagNoZeroes)
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{
		{42, []byte("some payload the server must skip")},
		{0xffffffff, nil},
		{OptStructuredReply, nil},
		{OptStartTLS, nil},
		{OptListMetaContext, []byte{0, 0, 0, 0, 0, 0, 0, 0}},
		{OptSetMetaContext, []byte{0, 0, 0, 0, 0, 0, 0, 0}},
		{OptExtendedHeaders, nil},
		{OptPeekExport, nil},
	} {
		rc.sendOpt(o.opt, o.data)
		typ, _ := rc.readOptReply(o.opt)
		require.Equal(t, RepErrUnsup, typ, "option %d", o.opt)
	}
	for _, opt := range []uint32{OptInfo, OptGo} {
		rc.sendOpt(opt, rawInfoGoData("nope", InfoName))
		typ, _ := rc.readOptReply(opt)
		require.Equal(t, RepErrUnknown, typ)
	}
	rc.infoGo(OptGo, "disk")
	rc.checkAlive()
}

func TestRawOptBogusLengths(t *testing.T) {
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": rawFileExport(t, false)}})
	rc := rawDial(t, addr, ClientFlagFixedNewstyle|ClientFlagNoZeroes)
	bogus := [][]byte{
		{},                             // shorter than the fixed part
		{0, 0, 0},                      // likewise
		{0, 0, 0, 100, 'a', 0, 0},      // name length beyond the option
		{0xff, 0xff, 0xff, 0xff, 0, 0}, // name length near 2^32
		{0, 0, 0, 0, 0, 2, 0, 1},       // two requests announced, one sent
		{0, 0, 0, 0, 0, 0, 0},          // odd trailing byte
		{0, 0, 0, 0, 0, 1, 0, 1, 0, 3}, // one announced, two sent
	}
	for _, opt := range []uint32{OptInfo, OptGo} {
		for _, b := range bogus {
			rc.sendOpt(opt, b)
			typ, _ := rc.readOptReply(opt)
			require.Equal(t, RepErrInvalid, typ, "%x", b)
		}
	}
	// Too big to read, small enough to skip.
	rc.sendOpt(OptGo, make([]byte, maxOptionLen+1))
	typ, _ := rc.readOptReply(OptGo)
	require.Equal(t, RepErrTooBig, typ)
	rc.infoGo(OptGo, "")
	rc.checkAlive()

	// Absurd: the connection is dropped without reading it all.
	rc = rawDial(t, addr, ClientFlagFixedNewstyle)
	b := binary.BigEndian.AppendUint64(nil, MagicOption)
	b = binary.BigEndian.AppendUint32(b, OptGo)
	b = binary.BigEndian.AppendUint32(b, maxOptionDiscard+1)
	rc.write(b)
	rc.expectClosed()

	// Bad option magic.
	rc = rawDial(t, addr, ClientFlagFixedNewstyle)
	rc.write(make([]byte, 16))
	rc.expectClosed()
}

func TestRawOptGoDefaultExport(t *testing.T) {
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"only": rawFileExport(t, false)}})
	rc := rawDial(t, addr, ClientFlagFixedNewstyle|ClientFlagNoZeroes)
	ri := rc.infoGo(OptGo, "", InfoName, InfoDescription, InfoBlockSize, 77)
	require.EqualValues(t, rawExportSize, ri.size)
	require.Equal(t, "", *ri.name)
	require.Equal(t, [3]uint32{1, 4096, rawMaxRequest}, [3]uint32{ri.minBlock, ri.pref, ri.maxBlock})
	rc.checkAlive()
}

func TestRawExportName(t *testing.T) {
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"disk": rawFileExport(t, false)}})
	wantFlags := TFlagHasFlags | TFlagSendFlush | TFlagSendFUA | TFlagSendTrim | TFlagSendWriteZeroes | TFlagCanMultiConn
	for _, noZeroes := range []bool{true, false} {
		flags := ClientFlagFixedNewstyle
		if noZeroes {
			flags |= ClientFlagNoZeroes
		}
		for _, name := range []string{"disk", ""} {
			rc := rawDial(t, addr, flags)
			rc.sendOpt(OptExportName, []byte(name))
			var b [10]byte
			rc.readFull(b[:])
			require.EqualValues(t, rawExportSize, binary.BigEndian.Uint64(b[:]))
			require.Equal(t, wantFlags, binary.BigEndian.Uint16(b[8:]))
			if !noZeroes {
				z := make([]byte, 124)
				rc.readFull(z)
				requireBytes(t, make([]byte, 124), z)
			}
			rc.checkAlive()
		}
	}
	// Unknown name: no reply is possible, the server closes.
	rc := rawDial(t, addr, ClientFlagFixedNewstyle)
	rc.sendOpt(OptExportName, []byte("nope"))
	rc.expectClosed()
}

func TestRawOptAbort(t *testing.T) {
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": rawFileExport(t, false)}})
	rc := rawDial(t, addr, ClientFlagFixedNewstyle)
	rc.sendOpt(OptAbort, nil)
	typ, d := rc.readOptReply(OptAbort)
	require.Equal(t, RepAck, typ)
	require.Empty(t, d)
	rc.expectClosed()
}

// requireBytes compares byte slices without dumping megabytes on failure.
func requireBytes(t testing.TB, want, got []byte) {
	t.Helper()
	if bytes.Equal(want, got) {
		return
	}
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	t.Fatalf("bytes differ: len want %d got %d, first difference at %d", len(want), len(got), i)
}
