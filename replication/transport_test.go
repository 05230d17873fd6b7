package replication

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// transportImpls builds, per implementation, a listening transport and a
// transport that dials it.
var transportImpls = []struct {
	name    string
	newPair func(t *testing.T) (srv Transport, ln Listener, cli Transport)
}{
	{"tcp", func(t *testing.T) (Transport, Listener, Transport) {
		srv := NewTCPTransport("127.0.0.1:0", "", TCPOptions{})
		ln, err := srv.Listen(context.Background())
		require.NoError(t, err)
		cli := NewTCPTransport("", ln.Addr(), TCPOptions{DialTimeout: 5 * time.Second})
		t.Cleanup(func() { srv.Close(); cli.Close() })
		return srv, ln, cli
	}},
	{"mem", func(t *testing.T) (Transport, Listener, Transport) {
		n := NewMemNetwork(1)
		srv := n.Transport("alpha", "beta")
		ln, err := srv.Listen(context.Background())
		require.NoError(t, err)
		t.Cleanup(n.CloseAll)
		return srv, ln, n.Transport("beta", "alpha")
	}},
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connect dials ch and accepts it, returning (dialer end, acceptor end).
func connect(t *testing.T, ln Listener, cli Transport, ch Channel) (net.Conn, net.Conn) {
	t.Helper()
	ctx := testCtx(t)
	c, err := cli.Dial(ctx, ch)
	require.NoError(t, err)
	s, got, err := ln.Accept(ctx)
	require.NoError(t, err)
	require.Equal(t, ch, got)
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := io.ReadFull(c, b)
	require.NoError(t, err)
	return b
}

func TestTransportContract(t *testing.T) {
	for _, impl := range transportImpls {
		t.Run(impl.name, func(t *testing.T) {
			t.Run("BothChannels", func(t *testing.T) {
				_, ln, cli := impl.newPair(t)
				ctx := testCtx(t)
				dialed := map[Channel]net.Conn{}
				for _, ch := range []Channel{ChannelData, ChannelMeta} {
					c, err := cli.Dial(ctx, ch)
					require.NoError(t, err)
					defer c.Close()
					_, err = c.Write([]byte(ch.String()))
					require.NoError(t, err)
					dialed[ch] = c
				}
				for range 2 {
					s, ch, err := ln.Accept(ctx)
					require.NoError(t, err)
					defer s.Close()
					// The dialer's declared channel matches what it sent.
					require.Equal(t, ch.String(), string(readN(t, s, 4)))
					_, err = s.Write([]byte("ack-" + ch.String()))
					require.NoError(t, err)
					require.Equal(t, "ack-"+ch.String(), string(readN(t, dialed[ch], 8)))
				}
			})
			t.Run("BulkBothWays", func(t *testing.T) {
				_, ln, cli := impl.newPair(t)
				c, s := connect(t, ln, cli, ChannelData)
				payload := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16) // > mem pipe capacity
				for _, dir := range [][2]net.Conn{{c, s}, {s, c}} {
					var wg sync.WaitGroup
					var werr error
					wg.Go(func() { _, werr = dir[0].Write(payload) })
					got := readN(t, dir[1], len(payload))
					wg.Wait()
					require.NoError(t, werr)
					require.True(t, bytes.Equal(payload, got))
				}
			})
			t.Run("FrameRoundTrip", func(t *testing.T) {
				_, ln, cli := impl.newPair(t)
				c, s := connect(t, ln, cli, ChannelMeta)
				require.NoError(t, WriteFrame(c, &Frame{Type: MsgPing, Seq: 7}))
				f, _, err := ReadFrame(s, nil)
				require.NoError(t, err)
				require.Equal(t, MsgPing, f.Type)
				require.Equal(t, uint64(7), f.Seq)
			})
			t.Run("CloseGivesEOF", func(t *testing.T) {
				_, ln, cli := impl.newPair(t)
				c, s := connect(t, ln, cli, ChannelData)
				_, err := c.Write([]byte("bye"))
				require.NoError(t, err)
				require.NoError(t, c.Close())
				got, err := io.ReadAll(s)
				require.NoError(t, err)
				require.Equal(t, "bye", string(got))
				_, err = c.Read(make([]byte, 1))
				require.ErrorIs(t, err, net.ErrClosed)
				_, err = c.Write([]byte("x"))
				require.ErrorIs(t, err, net.ErrClosed)
			})
			t.Run("ReadDeadline", func(t *testing.T) {
				_, ln, cli := impl.newPair(t)
				c, s := connect(t, ln, cli, ChannelMeta)
				require.NoError(t, s.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
				_, err := s.Read(make([]byte, 1))
				require.ErrorIs(t, err, os.ErrDeadlineExceeded)
				var ne net.Error
				require.ErrorAs(t, err, &ne)
				require.True(t, ne.Timeout())

				// A deadline moved into the past unblocks a blocked Read.
				require.NoError(t, s.SetReadDeadline(time.Time{}))
				done := make(chan error)
				go func() { _, err := s.Read(make([]byte, 1)); done <- err }()
				require.NoError(t, s.SetDeadline(time.Now().Add(-time.Second)))
				require.ErrorIs(t, <-done, os.ErrDeadlineExceeded)

				// Cleared, the conn works again.
				require.NoError(t, s.SetDeadline(time.Time{}))
				_, err = c.Write([]byte("z"))
				require.NoError(t, err)
				require.Equal(t, "z", string(readN(t, s, 1)))
			})
			t.Run("WriteDeadline", func(t *testing.T) {
				_, ln, cli := impl.newPair(t)
				c, _ := connect(t, ln, cli, ChannelData)
				require.NoError(t, c.SetWriteDeadline(time.Now().Add(-time.Second)))
				_, err := c.Write([]byte("x"))
				require.ErrorIs(t, err, os.ErrDeadlineExceeded)

				// Nobody reads: the buffers fill and the deadline fires.
				require.NoError(t, c.SetWriteDeadline(time.Now().Add(200*time.Millisecond)))
				chunk := make([]byte, 256<<10)
				for i := 0; ; i++ {
					require.Less(t, i, 4096, "1 GiB written without blocking")
					if _, err = c.Write(chunk); err != nil {
						break
					}
				}
				require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			})
			t.Run("CancelUnblocksAccept", func(t *testing.T) {
				_, ln, _ := impl.newPair(t)
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error)
				go func() { _, _, err := ln.Accept(ctx); done <- err }()
				cancel()
				require.ErrorIs(t, <-done, context.Canceled)
			})
			t.Run("CancelledDial", func(t *testing.T) {
				_, _, cli := impl.newPair(t)
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				_, err := cli.Dial(ctx, ChannelData)
				require.ErrorIs(t, err, context.Canceled)
			})
			t.Run("BadChannel", func(t *testing.T) {
				_, _, cli := impl.newPair(t)
				for _, ch := range []Channel{0, 3, 255} {
					_, err := cli.Dial(testCtx(t), ch)
					require.ErrorIs(t, err, ErrBadChannel)
				}
			})
			t.Run("Close", func(t *testing.T) {
				srv, ln, cli := impl.newPair(t)
				require.NoError(t, ln.Close())
				require.NoError(t, ln.Close()) // idempotent
				_, _, err := ln.Accept(testCtx(t))
				require.ErrorIs(t, err, ErrTransportClosed)
				_, err = cli.Dial(testCtx(t), ChannelData)
				require.Error(t, err) // nobody listens
				require.ErrorIs(t, err, syscall.ECONNREFUSED)

				require.NoError(t, srv.Close())
				require.NoError(t, srv.Close())
				_, err = srv.Listen(testCtx(t))
				require.ErrorIs(t, err, ErrTransportClosed)
				require.NoError(t, cli.Close())
				_, err = cli.Dial(testCtx(t), ChannelMeta)
				require.ErrorIs(t, err, ErrTransportClosed)
			})
			t.Run("TransportCloseClosesListener", func(t *testing.T) {
				srv, ln, _ := impl.newPair(t)
				done := make(chan error)
				go func() { _, _, err := ln.Accept(context.Background()); done <- err }()
				require.NoError(t, srv.Close())
				require.ErrorIs(t, <-done, ErrTransportClosed)
			})
		})
	}
}

func TestTransportPreamble(t *testing.T) {
	for _, ch := range []Channel{ChannelData, ChannelMeta} {
		var p [PreambleSize]byte
		copy(p[:], appendPreamble(nil, ch))
		got, err := parsePreamble(p)
		require.NoError(t, err)
		require.Equal(t, ch, got)
	}
	good := [PreambleSize]byte{'T', 'W', 'B', 'C', PreambleVersion, byte(ChannelData), 0, 0}
	for i, v := range map[int]byte{0: 'X', 4: 2, 5: 0, 6: 1, 7: 1} {
		p := good
		p[i] = v
		_, err := parsePreamble(p)
		require.ErrorIs(t, err, ErrBadPreamble, "byte %d = %d", i, v)
	}
	require.Equal(t, "data", ChannelData.String())
	require.Equal(t, "meta", ChannelMeta.String())
	require.Equal(t, "Channel(9)", Channel(9).String())
}

func TestTransportTCPBadPreamble(t *testing.T) {
	var mu sync.Mutex
	var reported []error
	srv := NewTCPTransport("127.0.0.1:0", "", TCPOptions{
		PreambleTimeout: 100 * time.Millisecond,
		OnBadPreamble: func(_ net.Addr, err error) {
			mu.Lock()
			reported = append(reported, err)
			mu.Unlock()
		},
	})
	defer srv.Close()
	ctx := testCtx(t)
	ln, err := srv.Listen(ctx)
	require.NoError(t, err)
	cli := NewTCPTransport("", ln.Addr(), TCPOptions{SndBuf: 1 << 20, RcvBuf: 1 << 20, DataNagle: true})
	defer cli.Close()

	// An Accept already waiting must not see the bad connections.
	type accepted struct {
		c   net.Conn
		ch  Channel
		err error
	}
	res := make(chan accepted, 1)
	go func() { c, ch, err := ln.Accept(ctx); res <- accepted{c, ch, err} }()

	garbage, err := net.Dial("tcp", ln.Addr())
	require.NoError(t, err)
	defer garbage.Close()
	_, err = garbage.Write([]byte("GARBAGE!"))
	require.NoError(t, err)
	_, err = garbage.Read(make([]byte, 1)) // the acceptor hangs up
	require.Error(t, err)

	short, err := net.Dial("tcp", ln.Addr())
	require.NoError(t, err)
	_, err = short.Write([]byte("TWB"))
	require.NoError(t, err)
	require.NoError(t, short.Close())

	silent, err := net.Dial("tcp", ln.Addr()) // times out after PreambleTimeout
	require.NoError(t, err)
	defer silent.Close()

	require.Eventually(t, func() bool { return srv.BadPreambles() == 3 }, 5*time.Second, 5*time.Millisecond)
	mu.Lock()
	require.Len(t, reported, 3)
	for _, err := range reported {
		require.ErrorIs(t, err, ErrBadPreamble)
	}
	mu.Unlock()

	c, err := cli.Dial(ctx, ChannelMeta)
	require.NoError(t, err)
	defer c.Close()
	a := <-res
	require.NoError(t, a.err)
	defer a.c.Close()
	require.Equal(t, ChannelMeta, a.ch)
	_, err = c.Write([]byte("ok"))
	require.NoError(t, err)
	require.Equal(t, "ok", string(readN(t, a.c, 2)))
}

// A client that never sends its preamble does not hold up the next one.
func TestTransportTCPSilentClientDoesNotBlock(t *testing.T) {
	srv := NewTCPTransport("127.0.0.1:0", "", TCPOptions{}) // 5s preamble timeout
	ctx := testCtx(t)
	ln, err := srv.Listen(ctx)
	require.NoError(t, err)
	silent, err := net.Dial("tcp", ln.Addr())
	require.NoError(t, err)
	defer silent.Close()

	cli := NewTCPTransport("", ln.Addr(), TCPOptions{})
	defer cli.Close()
	c, s := connect(t, ln, cli, ChannelData)
	_, err = s.Write([]byte("hi"))
	require.NoError(t, err)
	require.Equal(t, "hi", string(readN(t, c, 2)))

	start := time.Now()
	require.NoError(t, srv.Close()) // does not wait out the silent client's timeout
	require.Less(t, time.Since(start), 2*time.Second)
	require.Zero(t, srv.BadPreambles())
}

func TestTransportTCPDialCancel(t *testing.T) {
	// A black-holed address (TEST-NET-1) either hangs until ctx ends or is
	// refused at once by a sandbox; both must return promptly.
	cli := NewTCPTransport("", "192.0.2.1:7788", TCPOptions{})
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := cli.Dial(ctx, ChannelData)
	require.Error(t, err)
	require.Less(t, time.Since(start), 3*time.Second)

	// Closing the transport fails a dial in progress.
	done := make(chan error)
	go func() { _, err := cli.Dial(context.Background(), ChannelMeta); done <- err }()
	require.NoError(t, cli.Close())
	select {
	case err := <-done:
		require.Error(t, err)
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not fail the dial")
	}
}

// The preamble write honours ctx (net.Pipe blocks until read, like a full
// socket buffer).
func TestTransportWritePreambleCancel(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- writePreamble(ctx, c, ChannelMeta) }()
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)

	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, writePreamble(ctx, c, ChannelMeta), os.ErrDeadlineExceeded)

	c, s = net.Pipe() // the old pair is left with a past deadline
	defer c.Close()
	defer s.Close()
	go func() { done <- writePreamble(context.Background(), c, ChannelData) }()
	var p [PreambleSize]byte
	_, err := io.ReadFull(s, p[:])
	require.NoError(t, err)
	require.NoError(t, <-done)
	ch, err := parsePreamble(p)
	require.NoError(t, err)
	require.Equal(t, ChannelData, ch)
}

// memNodes returns a network where alpha listens and beta dials it.
func memNodes(t *testing.T, seed int64) (*MemNetwork, Listener, Transport) {
	n := NewMemNetwork(seed)
	t.Cleanup(n.CloseAll)
	ln, err := n.Transport("alpha", "beta").Listen(context.Background())
	require.NoError(t, err)
	return n, ln, n.Transport("beta", "alpha")
}

func TestTransportMemPartition(t *testing.T) {
	n, ln, beta := memNodes(t, 1)
	c, s := connect(t, ln, beta, ChannelData)

	// A bystander link to gamma is not affected.
	lnG, err := n.Transport("gamma", "beta").Listen(context.Background())
	require.NoError(t, err)
	gc, gs := connect(t, lnG, n.Transport("beta", "gamma"), ChannelMeta)

	_, err = c.Write([]byte("lost"))
	require.NoError(t, err)
	n.Partition("alpha", "beta")
	for _, end := range []net.Conn{c, s} {
		_, err := end.Read(make([]byte, 4))
		require.ErrorIs(t, err, syscall.ECONNRESET)
		require.ErrorIs(t, err, ErrPartitioned)
		_, err = end.Write([]byte("x"))
		require.ErrorIs(t, err, ErrPartitioned)
	}
	for _, tr := range []Transport{beta, n.Transport("alpha", "beta")} {
		_, err = tr.Dial(testCtx(t), ChannelData)
		require.ErrorIs(t, err, ErrPartitioned)
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		require.True(t, ne.Timeout())
	}

	_, err = gc.Write([]byte("g"))
	require.NoError(t, err)
	require.Equal(t, "g", string(readN(t, gs, 1)))

	n.Heal("beta", "alpha")
	c2, s2 := connect(t, ln, beta, ChannelData)
	_, err = c2.Write([]byte("back"))
	require.NoError(t, err)
	require.Equal(t, "back", string(readN(t, s2, 4)))
}

func TestTransportMemPartitionOneWay(t *testing.T) {
	n, ln, beta := memNodes(t, 1)
	c, s := connect(t, ln, beta, ChannelData) // c on beta, s on alpha

	n.PartitionOneWay("beta", "alpha")
	_, err := c.Write([]byte("held"))
	require.NoError(t, err) // buffered, like unacknowledged TCP data
	require.NoError(t, s.SetReadDeadline(time.Now().Add(30*time.Millisecond)))
	_, err = s.Read(make([]byte, 4))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.NoError(t, s.SetReadDeadline(time.Time{}))

	_, err = s.Write([]byte("pong")) // the other way still flows
	require.NoError(t, err)
	require.Equal(t, "pong", string(readN(t, c, 4)))

	for _, tr := range []Transport{beta, n.Transport("alpha", "beta")} {
		_, err = tr.Dial(testCtx(t), ChannelMeta)
		require.ErrorIs(t, err, ErrPartitioned)
	}

	n.Heal("alpha", "beta")
	require.Equal(t, "held", string(readN(t, s, 4)))
	connect(t, ln, beta, ChannelMeta)
}

func TestTransportMemDelay(t *testing.T) {
	const d = 50 * time.Millisecond
	n, ln, beta := memNodes(t, 1)
	c, s := connect(t, ln, beta, ChannelData)
	n.SetDelay("beta", "alpha", d)

	start := time.Now()
	_, err := c.Write([]byte("slow"))
	require.NoError(t, err)
	_, err = c.Write([]byte("ordr"))
	require.NoError(t, err)
	require.Less(t, time.Since(start), d, "Write must not wait for delivery")
	require.Equal(t, "slowordr", string(readN(t, s, 8)))
	require.GreaterOrEqual(t, time.Since(start), d)

	// A read deadline shorter than the delay expires with nothing read.
	_, err = c.Write([]byte("late"))
	require.NoError(t, err)
	require.NoError(t, s.SetReadDeadline(time.Now().Add(d/5)))
	_, err = s.Read(make([]byte, 4))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.NoError(t, s.SetReadDeadline(time.Time{}))
	require.Equal(t, "late", string(readN(t, s, 4)))
}

func TestTransportMemLoss(t *testing.T) {
	n, ln, beta := memNodes(t, 1)
	c, s := connect(t, ln, beta, ChannelData)
	n.SetLoss("beta", "alpha", 0)
	go func(s net.Conn) { _, _ = io.Copy(io.Discard, s) }(s) // s is reassigned below
	for range 1000 {
		_, err := c.Write([]byte("fine"))
		require.NoError(t, err)
	}

	c, s = connect(t, ln, beta, ChannelData)
	n.SetLoss("beta", "alpha", 1)
	_, err := s.Write([]byte("other way is fine"))
	require.NoError(t, err)
	_, err = c.Write([]byte("x"))
	require.ErrorIs(t, err, ErrInjectedLoss)
	require.ErrorIs(t, err, syscall.ECONNRESET)
	_, err = s.Read(make([]byte, 1))
	require.ErrorIs(t, err, ErrInjectedLoss)
}

// lossBreaks returns, for each of 30 connections, how many writes it took
// to break it at loss p.
func lossBreaks(t *testing.T, seed int64) []int {
	n, ln, beta := memNodes(t, seed)
	n.SetLoss("beta", "alpha", 0.25)
	var breaks []int
	for range 30 {
		c, _ := connect(t, ln, beta, ChannelData)
		i := 0
		for ; i < 1000; i++ {
			if _, err := c.Write([]byte{byte(i)}); err != nil {
				require.ErrorIs(t, err, ErrInjectedLoss)
				break
			}
		}
		breaks = append(breaks, i)
	}
	return breaks
}

func TestTransportMemLossSeeded(t *testing.T) {
	a, b := lossBreaks(t, 42), lossBreaks(t, 42)
	require.Equal(t, a, b)
	require.NotEqual(t, a, lossBreaks(t, 43))
	t.Logf("seed 42 breaks after writes: %v", a)
}

func TestTransportMemDialErrors(t *testing.T) {
	n, ln, beta := memNodes(t, 1)
	_, err := n.Transport("alpha", "beta").Listen(testCtx(t))
	require.ErrorIs(t, err, syscall.EADDRINUSE)
	_, err = n.Transport("beta", "nobody").Dial(testCtx(t), ChannelData)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)

	// Dials complete into the backlog without Accept; past it they wait,
	// and ctx or Close unblocks them.
	for range memBacklog {
		_, err := beta.Dial(testCtx(t), ChannelData)
		require.NoError(t, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { _, err := beta.Dial(ctx, ChannelData); done <- err }()
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	go func() { _, err := beta.Dial(context.Background(), ChannelData); done <- err }()
	require.NoError(t, beta.Close())
	require.ErrorIs(t, <-done, ErrTransportClosed)
	_, ch, err := ln.Accept(testCtx(t))
	require.NoError(t, err)
	require.Equal(t, ChannelData, ch)
}

func TestTransportMemPeerClose(t *testing.T) {
	_, ln, beta := memNodes(t, 1)
	c, s := connect(t, ln, beta, ChannelData)
	require.NoError(t, s.Close())
	_, err := c.Write([]byte("x"))
	require.ErrorIs(t, err, syscall.EPIPE)
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, "beta", c.LocalAddr().String())
	require.Equal(t, "alpha", c.RemoteAddr().String())
	require.Equal(t, "mem", c.RemoteAddr().Network())
}

func TestTransportMemCloseAll(t *testing.T) {
	n, ln, beta := memNodes(t, 1)
	c, s := connect(t, ln, beta, ChannelData)
	blocked := make(chan error)
	go func() { _, err := s.Read(make([]byte, 1)); blocked <- err }()
	n.CloseAll()
	n.CloseAll()
	// Both ends close one after the other: the blocked reader sees its
	// peer's close (EOF) or its own (ErrClosed), whichever came first.
	err := <-blocked
	require.True(t, errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF), "got %v", err)
	_, err = c.Write([]byte("x"))
	require.ErrorIs(t, err, net.ErrClosed)
	_, _, err = ln.Accept(testCtx(t))
	require.ErrorIs(t, err, ErrTransportClosed)
	_, err = beta.Dial(testCtx(t), ChannelData)
	require.ErrorIs(t, err, ErrTransportClosed)
	_, err = n.Transport("x", "y").Listen(testCtx(t))
	require.ErrorIs(t, err, ErrTransportClosed)
	require.True(t, errors.Is(err, ErrTransportClosed))
}
