package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// startNbdkit runs `nbdkit -f -U SOCK args...` for the test and returns the
// socket path. The test is skipped when nbdkit is not installed.
func startNbdkit(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("nbdkit")
	if err != nil {
		t.Skip("nbdkit not installed")
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command(bin, append([]string{"-f", "--exit-with-parent", "-U", sock}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	require.Eventually(t, func() bool {
		select {
		case <-exited:
			t.Fatalf("nbdkit exited: %s", stderr.String())
		default:
		}
		c, err := net.Dial("unix", sock)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}, 10*time.Second, 10*time.Millisecond)
	return sock
}

func dialTest(t *testing.T, sock string, opts ClientOptions) *Client {
	t.Helper()
	c, err := Dial(context.Background(), "unix", sock, opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestClientRoundTrip(t *testing.T) {
	sock := startNbdkit(t, "memory", "16M")
	c := dialTest(t, sock, ClientOptions{})
	require.EqualValues(t, 16<<20, c.Size())
	require.NotZero(t, c.Flags()&TFlagHasFlags)
	min, pref, max := c.BlockSize()
	require.NotZero(t, min)
	require.NotZero(t, pref)
	require.GreaterOrEqual(t, max, pref)

	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	n, err := c.WriteAt(data, 4096)
	require.NoError(t, err)
	require.Equal(t, len(data), n)
	got := make([]byte, len(data))
	n, err = c.ReadAt(got, 4096)
	require.NoError(t, err)
	require.Equal(t, len(data), n)
	require.Equal(t, data, got)

	// Reads past the end behave like io.ReaderAt.
	tail := make([]byte, 8192)
	n, err = c.ReadAt(tail, c.Size()-4096)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, 4096, n)
	n, err = c.ReadAt(tail, c.Size())
	require.ErrorIs(t, err, io.EOF)
	require.Zero(t, n)

	require.NoError(t, c.Close())
	require.NoError(t, c.Close(), "Close is idempotent")
	_, err = c.ReadAt(got, 0)
	require.ErrorIs(t, err, ErrClientClosed)
}

func TestClientTCPAndExportName(t *testing.T) {
	if _, err := exec.LookPath("nbdkit"); err != nil {
		t.Skip("nbdkit not installed")
	}
	// nbdkit has no "port 0": find a free port, then hand it over.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	l.Close()
	cmd := exec.Command("nbdkit", "-f", "--exit-with-parent", "-i", "127.0.0.1", "-p", port,
		"--filter=exportname", "memory", "1M", "exportname=alpha", "exportname=beta", "exportname-strict=true", "exportname-list=explicit")
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 10*time.Second, 10*time.Millisecond)

	names, err := List(context.Background(), "tcp", addr)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"alpha", "beta"}, names)

	c, err := Dial(context.Background(), "tcp", addr, ClientOptions{ExportName: "beta"})
	require.NoError(t, err)
	require.EqualValues(t, 1<<20, c.Size())
	require.NoError(t, c.Close())

	_, err = Dial(context.Background(), "tcp", addr, ClientOptions{ExportName: "gamma"})
	require.ErrorIs(t, err, ErrOptionRefused)
}

func TestClientConcurrentPipelined(t *testing.T) {
	sock := startNbdkit(t, "memory", "64M")
	c := dialTest(t, sock, ClientOptions{})
	const workers, perWorker, bs = 32, 100, 4096
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			buf := make([]byte, bs)
			got := make([]byte, bs)
			for i := range perWorker {
				// Each worker owns the blocks ≡ w (mod workers).
				blk := int64(w + workers*rng.IntN(int(c.Size()/bs)/workers))
				binary.BigEndian.PutUint64(buf, uint64(blk))
				binary.BigEndian.PutUint64(buf[8:], uint64(i))
				if _, err := c.WriteAt(buf, blk*bs); err != nil {
					errs <- err
					return
				}
				if _, err := c.ReadAt(got, blk*bs); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf, got) {
					errs <- errors.New("read back differs")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

func TestClientOutOfOrderReplies(t *testing.T) {
	// Reads are delayed, writes are not: a write sent after a read is
	// answered first.
	sock := startNbdkit(t, "--filter=delay", "memory", "1M", "delay-read=300ms")
	c := dialTest(t, sock, ClientOptions{})
	readDone := make(chan error, 1)
	var readAt time.Time
	go func() {
		_, err := c.ReadAt(make([]byte, 4096), 0)
		readAt = time.Now()
		readDone <- err
	}()
	require.Eventually(t, func() bool { // the read is out first
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.pending) == 1
	}, 5*time.Second, time.Millisecond)
	_, err := c.WriteAt(make([]byte, 4096), 8192)
	require.NoError(t, err)
	writeAt := time.Now()
	require.NoError(t, <-readDone)
	require.True(t, writeAt.Before(readAt), "write answered before the earlier read")
}

func TestClientFUAFlushTrimZero(t *testing.T) {
	sock := startNbdkit(t, "memory", "4M")
	c := dialTest(t, sock, ClientOptions{})
	for _, f := range []uint16{TFlagSendFlush, TFlagSendFUA, TFlagSendTrim, TFlagSendWriteZeroes} {
		require.NotZero(t, c.Flags()&f, "flag %#x", f)
	}
	ones := bytes.Repeat([]byte{0xff}, 64<<10)
	require.NoError(t, c.WriteAtFlags(ones, 0, CmdFlagFUA))
	require.NoError(t, c.Flush())

	require.NoError(t, c.WriteZeroes(4096, 8192, 0))
	require.NoError(t, c.WriteZeroes(16384, 4096, CmdFlagFUA|CmdFlagNoHole))
	require.NoError(t, c.Trim(32768, 4096)) // memory plugin: trimmed reads as zero
	got := make([]byte, len(ones))
	_, err := c.ReadAt(got, 0)
	require.NoError(t, err)
	want := bytes.Clone(ones)
	clear(want[4096:12288])
	clear(want[16384:20480])
	clear(want[32768:36864])
	require.Equal(t, want, got)
}

func TestClientSplitsLargeRequests(t *testing.T) {
	sock := startNbdkit(t, "--filter=blocksize-policy", "memory", "8M",
		"blocksize-maximum=64K", "blocksize-preferred=4K", "blocksize-minimum=1", "blocksize-error-policy=error")
	c := dialTest(t, sock, ClientOptions{})
	_, _, max := c.BlockSize()
	require.EqualValues(t, 64<<10, max)
	data := make([]byte, 1<<20+512)
	for i := range data {
		data[i] = byte(i / 512)
	}
	_, err := c.WriteAt(data, 512)
	require.NoError(t, err)
	got := make([]byte, len(data))
	_, err = c.ReadAt(got, 512)
	require.NoError(t, err)
	require.Equal(t, data, got)
}

func TestClientServerErrorReply(t *testing.T) {
	sock := startNbdkit(t, "--filter=error", "memory", "1M", "error-pwrite=EIO", "error-pwrite-rate=1", "error-pread=ENOSPC", "error-pread-rate=1")
	c := dialTest(t, sock, ClientOptions{})
	_, err := c.WriteAt(make([]byte, 4096), 0)
	var nerr *Error
	require.ErrorAs(t, err, &nerr)
	require.Equal(t, EIO, nerr.Errno)
	require.Equal(t, CmdWrite, nerr.Cmd)
	require.ErrorIs(t, err, syscall.EIO)
	require.Contains(t, err.Error(), "EIO")
	require.Contains(t, err.Error(), "WRITE")

	_, err = c.ReadAt(make([]byte, 4096), 0)
	require.ErrorAs(t, err, &nerr)
	require.Equal(t, ENOSPC, nerr.Errno)
	// An error reply does not break the connection.
	require.NoError(t, c.Flush())
}

// fakeServer answers the handshake on one end of a net.Pipe and then hands
// the connection to serve.
func fakeServer(t *testing.T, goUnsupported bool, serve func(conn net.Conn)) *Client {
	t.Helper()
	cli, srv := net.Pipe()
	t.Cleanup(func() { cli.Close(); srv.Close() })
	go func() {
		var b [20]byte
		binary.BigEndian.PutUint64(b[0:], MagicNBD)
		binary.BigEndian.PutUint64(b[8:], MagicOption)
		binary.BigEndian.PutUint16(b[16:], FlagFixedNewstyle|FlagNoZeroes)
		if _, err := srv.Write(b[:18]); err != nil {
			return
		}
		if _, err := io.ReadFull(srv, b[:4]); err != nil { // client flags
			return
		}
		for {
			var oh [16]byte
			if _, err := io.ReadFull(srv, oh[:]); err != nil {
				return
			}
			opt := binary.BigEndian.Uint32(oh[8:])
			data := make([]byte, binary.BigEndian.Uint32(oh[12:]))
			if _, err := io.ReadFull(srv, data); err != nil {
				return
			}
			reply := func(typ uint32, d []byte) {
				var rh [20]byte
				binary.BigEndian.PutUint64(rh[0:], MagicOptionReply)
				binary.BigEndian.PutUint32(rh[8:], opt)
				binary.BigEndian.PutUint32(rh[12:], typ)
				binary.BigEndian.PutUint32(rh[16:], uint32(len(d)))
				srv.Write(append(rh[:], d...))
			}
			switch {
			case opt == OptGo && goUnsupported:
				reply(RepErrUnsup, nil)
			case opt == OptGo:
				info := make([]byte, 12)
				binary.BigEndian.PutUint16(info, InfoExport)
				binary.BigEndian.PutUint64(info[2:], 1<<20)
				binary.BigEndian.PutUint16(info[10:], TFlagHasFlags|TFlagSendFlush)
				reply(RepInfo, info)
				reply(RepAck, nil)
				serve(srv)
				return
			case opt == OptExportName:
				var e [10]byte
				binary.BigEndian.PutUint64(e[0:], 2<<20)
				binary.BigEndian.PutUint16(e[8:], TFlagHasFlags)
				srv.Write(e[:])
				serve(srv)
				return
			}
		}
	}()
	c, err := NewClient(cli, ClientOptions{Timeout: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestClientExportNameFallback(t *testing.T) {
	c := fakeServer(t, true, func(conn net.Conn) { _, _ = io.Copy(io.Discard, conn) })
	require.EqualValues(t, 2<<20, c.Size())
	require.Equal(t, TFlagHasFlags, c.Flags())
	require.ErrorIs(t, c.Flush(), ErrUnsupported, "server did not advertise FLUSH")
}

func TestClientConnectionDropFailsWaiters(t *testing.T) {
	got := make(chan struct{}, 16)
	c := fakeServer(t, false, func(conn net.Conn) {
		// Swallow requests, then hang up without answering.
		var h [RequestHeaderSize]byte
		for range 4 {
			if _, err := io.ReadFull(conn, h[:]); err != nil {
				return
			}
			got <- struct{}{}
		}
		conn.Close()
	})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			_, err := c.ReadAt(make([]byte, 512), 0)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.ErrorIs(t, err, ErrConnLost)
	}
	require.Len(t, got, 4)
	// Later requests fail at once.
	require.ErrorIs(t, c.Flush(), ErrConnLost)
}

func TestClientUnknownCookieIsProtocolError(t *testing.T) {
	c := fakeServer(t, false, func(conn net.Conn) {
		var h [RequestHeaderSize]byte
		if _, err := io.ReadFull(conn, h[:]); err != nil {
			return
		}
		var r [SimpleReplyHeaderSize]byte
		binary.BigEndian.PutUint32(r[0:], MagicSimpleReply)
		binary.BigEndian.PutUint64(r[8:], binary.BigEndian.Uint64(h[8:])+1000)
		conn.Write(r[:])
		_, _ = io.Copy(io.Discard, conn)
	})
	err := c.Flush()
	require.ErrorIs(t, err, ErrConnLost)
	require.ErrorIs(t, err, ErrProtocol)
}

func TestClientCloseWaitsForInflight(t *testing.T) {
	sock := startNbdkit(t, "--filter=delay", "memory", "1M", "delay-write=200ms")
	c, err := Dial(context.Background(), "unix", sock, ClientOptions{})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := c.WriteAt(make([]byte, 4096), 0)
		done <- err
	}()
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.pending) == 1
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, c.Close())
	require.NoError(t, <-done, "the server answers requests sent before DISC")
}

func TestClientAllocationFree(t *testing.T) {
	sock := startNbdkit(t, "memory", "1M")
	c := dialTest(t, sock, ClientOptions{})
	buf := make([]byte, 4096)
	_, _ = c.WriteAt(buf, 0) // warm the pool and the map
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := c.WriteAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := c.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
	})
	require.LessOrEqual(t, allocs, 0.1)
}

func BenchmarkClientWrite4K(b *testing.B) {
	if _, err := exec.LookPath("nbdkit"); err != nil {
		b.Skip("nbdkit not installed")
	}
	sock := filepath.Join(b.TempDir(), "s")
	cmd := exec.Command("nbdkit", "-f", "--exit-with-parent", "-U", sock, "memory", "64M")
	require.NoError(b, cmd.Start())
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var c *Client
	require.Eventually(b, func() bool {
		var err error
		c, err = Dial(context.Background(), "unix", sock, ClientOptions{})
		return err == nil
	}, 5*time.Second, 10*time.Millisecond)
	defer c.Close()
	b.SetBytes(4096)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 4096)
		for pb.Next() {
			if _, err := c.WriteAt(buf, 0); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func TestClientCloseGivesUpOnStuckRequests(t *testing.T) {
	c := fakeServer(t, false, func(conn net.Conn) {
		// Read requests, never answer.
		_, _ = io.Copy(io.Discard, conn)
	})
	done := make(chan error, 1)
	go func() { done <- c.Flush() }()
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.pending) == 1
	}, 5*time.Second, time.Millisecond)
	start := time.Now()
	require.NoError(t, c.Close())
	require.Less(t, time.Since(start), 3*time.Second, "bounded by the 1 s timeout")
	require.ErrorIs(t, <-done, ErrClientClosed)
}

func TestClientZeroLengthAndBadOffsets(t *testing.T) {
	c := fakeServer(t, false, func(conn net.Conn) { _, _ = io.Copy(io.Discard, conn) })
	n, err := c.ReadAt(nil, 0)
	require.NoError(t, err)
	require.Zero(t, n)
	_, err = c.ReadAt(make([]byte, 1), -1)
	require.Error(t, err)
	require.Error(t, c.WriteAtFlags(make([]byte, 1), -1, 0))
	require.ErrorIs(t, c.WriteAtFlags(make([]byte, 1), 0, CmdFlagFUA), ErrUnsupported)
	require.ErrorIs(t, c.Trim(0, 1), ErrUnsupported)
	require.ErrorIs(t, c.WriteZeroes(0, 1, 0), ErrUnsupported)
}

// fuaExport records the fua flag of every write it is handed.
type fuaExport struct {
	Export
	mu   sync.Mutex
	fuas []bool
}

func (e *fuaExport) WriteAt(p []byte, off int64, fua bool) error {
	e.mu.Lock()
	e.fuas = append(e.fuas, fua)
	e.mu.Unlock()
	return e.Export.WriteAt(p, off, fua)
}

// WriteAtFlags puts NBD_CMD_FLAG_FUA on the wire: the server hands the
// write to its export with fua set, and a plain WriteAt without it.
func TestClientWriteAtFlagsFUAReachesServer(t *testing.T) {
	e := &fuaExport{Export: memExport(t)}
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"": e}})
	c, err := Dial(context.Background(), "tcp", addr, ClientOptions{Timeout: 5 * time.Second})
	require.NoError(t, err)
	defer c.Close()
	require.NotZero(t, c.Flags()&TFlagSendFUA, "the server offers FUA")
	p := bytes.Repeat([]byte{7}, 4096)
	require.NoError(t, c.WriteAtFlags(p, 0, CmdFlagFUA))
	_, err = c.WriteAt(p, 4096)
	require.NoError(t, err)
	require.NoError(t, c.WriteAtFlags(p, 8192, 0))
	e.mu.Lock()
	defer e.mu.Unlock()
	require.Equal(t, []bool{true, false, false}, e.fuas)
}
