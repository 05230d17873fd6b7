package main

import (
	"bufio"
	"bytes"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/bitmap"
	"github.com/twinbd/twinbd/nbd"
)

// loadWriter writes self-identifying blocks (makeBlock) through one NBD
// connection, depth at a time, each worker owning the blocks with
// index%depth == its number, below limit(); it keeps the last answered
// sequence of every block.
type loadWriter struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	last     map[int64]uint64
	answered atomic.Int64
	err      atomic.Pointer[error]
}

func startResizeLoad(c *nbd.Client, seed uint64, depth int, lo int64, limit func() int64) *loadWriter {
	l := &loadWriter{stop: make(chan struct{}), last: map[int64]uint64{}}
	for w := range depth {
		l.wg.Go(func() {
			rng := mrand.New(mrand.NewPCG(seed, uint64(w)))
			for seq := uint64(1); ; seq++ {
				select {
				case <-l.stop:
					return
				default:
				}
				blocks := (limit() - lo) / blk
				off := lo + (rng.Int64N(blocks/int64(depth))*int64(depth)+int64(w))*blk
				if _, err := c.WriteAt(makeBlock(off, seq), off); err != nil {
					l.err.Store(&err)
					return
				}
				l.answered.Add(1)
				l.mu.Lock()
				l.last[off] = seq
				l.mu.Unlock()
			}
		})
	}
	return l
}

func (l *loadWriter) halt(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if e := l.err.Load(); e != nil {
		t.Fatalf("a write through NBD failed: %v", *e)
	}
}

// check reads every block the load wrote through c and compares it with
// the last answered sequence.
func (l *loadWriter) check(t *testing.T, c *nbd.Client) {
	t.Helper()
	buf := make([]byte, blk)
	l.mu.Lock()
	defer l.mu.Unlock()
	for off, seq := range l.last {
		_, err := c.ReadAt(buf, off)
		require.NoError(t, err)
		got, ok := parseBlock(buf, off)
		require.True(t, ok, "block at %d is not the load's", off)
		require.Equal(t, seq, got, "block at %d", off)
	}
}

// Online resize with real daemons: bad input is refused with a clear
// message (a smaller size, no connection), then, with both backing files
// grown and a write load running through NBD, `twinbd resize r0` grows
// both nodes; the open connection keeps its size, a new one (nbdinfo, the
// test's client) sees and writes the new area, the new area resyncs, and
// the data areas of both files are identical with every answered write in
// place, also after both daemons restart.
func TestPairResizeUnderLoad(t *testing.T) {
	need(t, "nbdinfo")
	p := newPair(t)
	defer p.logs()
	p.upAndSync()
	old := p.dataSize()
	uri := fmt.Sprintf("nbd://127.0.0.1:%d/r0", p.nbd["alpha"])

	// Bad input: smaller without --force; a bad --size.
	r := p.run("alpha", "resize", "--size", "32M", "r0")
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.err, "refusing to shrink r0 from")
	require.Contains(t, r.err, "everything past byte 33554432 is discarded")
	r = p.run("alpha", "resize", "--size", "lots", "r0")
	require.Equal(t, 2, r.code)
	require.Contains(t, r.err, "--size")
	// Nothing grew yet: nothing to do.
	out := p.ok("alpha", "resize", "r0")
	require.Contains(t, out, "r0: size unchanged at")
	require.Equal(t, old, p.dataSize())

	c := p.dial("alpha")
	defer c.Close()
	require.Equal(t, old, c.Size())
	load := startResizeLoad(c, testSeed(t), 8, 0, func() int64 { return old })
	require.Eventually(t, func() bool { return load.answered.Load() > 200 }, 20*time.Second, 10*time.Millisecond)

	const grown = 2 * pairDiskSize
	for _, n := range pairNodes {
		require.NoError(t, os.Truncate(p.img[n], grown))
	}
	// Not connected: refused, with what to do.
	p.ok("alpha", "disconnect", "r0")
	r = p.run("alpha", "resize", "r0")
	require.Equal(t, 11, r.code, "%s", r.err)
	require.Contains(t, r.err, "resize needs the peer connected")
	require.Contains(t, r.err, "twinbd connect r0")
	p.ok("alpha", "connect", "r0")
	p.ok("alpha", "wait-sync", "--timeout", "60s", "r0")

	// On the Secondary: refused, run it on the Primary.
	r = p.run("beta", "resize", "r0")
	require.Equal(t, 11, r.code, "%s", r.err)
	require.Contains(t, r.err, "run `twinbd resize r0` there")

	// events2 (no --statistics) reports the new size as a change.
	events := exec.Command(twinbdBin, p.args("alpha", "events2", "r0")...)
	evOut, perr := events.StdoutPipe()
	require.NoError(t, perr)
	require.NoError(t, events.Start())
	t.Cleanup(func() { events.Process.Kill(); events.Wait() })
	evLines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(evOut)
		for sc.Scan() {
			evLines <- sc.Text()
		}
		close(evLines)
	}()
	waitEvent := func(want string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case l, ok := <-evLines:
				require.True(t, ok, "events2 ended before %q", want)
				if l == want {
					return
				}
			case <-deadline:
				t.Fatalf("no events2 line %q", want)
			}
		}
	}
	waitEvent("exists -")

	start := time.Now()
	out = p.ok("alpha", "resize", "r0")
	took := time.Since(start)
	full, err := bitmap.InternalLayout(grown, 0)
	require.NoError(t, err)
	require.Contains(t, out, fmt.Sprintf("r0: grown from %d KiB to %d KiB; resyncing", old/1024, full.DataSize/1024))
	require.Contains(t, out, "NBD clients connected now keep the old size")
	t.Logf("resize took %v under load", took)
	require.Equal(t, full.DataSize, p.dataSize())
	require.Equal(t, full.DataSize, p.status("beta").Devices[0].Size*1024)
	waitEvent(fmt.Sprintf("change device name:r0 volume:0 minor:0 size:%d", full.DataSize/1024))

	// The open connection keeps its size; a new one sees the new size.
	require.Equal(t, old, c.Size())
	_, err = c.WriteAt(makeBlock(old, 1), old)
	require.Error(t, err, "past the old end on a connection from before")
	info := strings.TrimSpace(sh(t, "nbdinfo", "--size", uri))
	require.Equal(t, fmt.Sprint(full.DataSize), info)
	c2 := p.dial("alpha")
	defer c2.Close()
	require.Equal(t, full.DataSize, c2.Size())
	load2 := startResizeLoad(c2, testSeed(t)+1, 4, old, func() int64 { return full.DataSize })
	require.Eventually(t, func() bool { return load2.answered.Load() > 200 }, 20*time.Second, 10*time.Millisecond)
	load.halt(t)
	load2.halt(t)
	require.NoError(t, c.Flush())

	p.ok("alpha", "wait-sync", "--timeout", "60s", "r0")
	p.requireInSync()
	p.sameData()
	load.check(t, c2)
	load2.check(t, c2)
	ev := p.ok("alpha", "events2", "--now", "--statistics", "r0")
	require.Contains(t, ev, fmt.Sprintf(" size:%d ", full.DataSize/1024))
	b, err := os.ReadFile(filepath.Join(p.dir, "beta.log"))
	require.NoError(t, err)
	require.Contains(t, string(b), `msg="resize: the peer asks to grow"`)
	require.Contains(t, string(b), `msg="resync started by the peer: Inconsistent until it finishes"`)

	// Both daemons restart: same size, no sync needed, same data.
	c.Close()
	c2.Close()
	p.ok("alpha", "secondary", "r0")
	for _, n := range pairNodes {
		p.ok(n, "down", "r0")
		p.ok(n, "up", "r0")
	}
	p.ok("alpha", "wait-connect", "--timeout", "20s", "r0")
	p.ok("alpha", "primary", "r0")
	p.requireInSync()
	require.Equal(t, full.DataSize, p.dataSize())
	p.sameData()
	c3 := p.dial("alpha")
	defer c3.Close()
	load.check(t, c3)
	load2.check(t, c3)
}

// sameDataBelow compares the two backing files over [0, n).
func (p *pair) sameDataBelow(n int64) {
	p.t.Helper()
	a, err := os.ReadFile(p.img["alpha"])
	require.NoError(p.t, err)
	b, err := os.ReadFile(p.img["beta"])
	require.NoError(p.t, err)
	for off := int64(0); off < n; off += blk {
		if !bytes.Equal(a[off:off+blk], b[off:off+blk]) {
			p.t.Fatalf("the replicas differ at %d (below the size %d)", off, n)
		}
	}
}

// A forced online shrink with real daemons under a write load through NBD
// confined below S: refused without --force (with what to do), then
// `twinbd resize --size S --force` shrinks both nodes; the open
// connection keeps its old size and gets an error past S while it keeps
// working below; nbdinfo and a new connection see S; status, events2 and
// both logs show the shrink; the replicas are identical over [0, S) with
// every answered write in place, also after both daemons restart.
func TestPairShrinkUnderLoad(t *testing.T) {
	need(t, "nbdinfo")
	p := newPair(t)
	defer p.logs()
	p.upAndSync()
	old := p.dataSize()
	const n = 40 << 20
	uri := fmt.Sprintf("nbd://127.0.0.1:%d/r0", p.nbd["alpha"])

	r := p.run("alpha", "resize", "--size", "40M", "r0")
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.err, fmt.Sprintf("refusing to shrink r0 from %d to %d bytes", old, n))
	require.Contains(t, r.err, "First shrink the filesystem")
	require.Contains(t, r.err, fmt.Sprintf("run `twinbd resize r0 --size %d --force` on the Primary", n))
	r = p.run("beta", "resize", "--size", "40M", "--force", "r0")
	require.Equal(t, 11, r.code, "%s", r.err)
	require.Contains(t, r.err, "run `twinbd resize r0` there")
	require.Equal(t, old, p.dataSize())

	c := p.dial("alpha")
	defer c.Close()
	// Something past S, on both nodes: discarded.
	_, err := c.WriteAt(makeBlock(n, 1), n)
	require.NoError(t, err)
	load := startResizeLoad(c, testSeed(t), 8, 0, func() int64 { return n })
	require.Eventually(t, func() bool { return load.answered.Load() > 200 }, 20*time.Second, 10*time.Millisecond)

	out := p.ok("alpha", "resize", "--size", "40M", "--force", "r0")
	require.Contains(t, out, fmt.Sprintf("r0: shrunk from %d KiB to %d KiB.", old/1024, n/1024))
	require.Contains(t, out, "requests past the new end get an error")
	require.Equal(t, int64(n), p.dataSize())
	require.Equal(t, int64(n), p.status("beta").Devices[0].Size*1024)
	require.Eventually(t, func() bool { return load.answered.Load() > 600 }, 20*time.Second, 10*time.Millisecond, "the load goes on")

	// The open connection: an errno past S, and it keeps working.
	require.Equal(t, old, c.Size())
	_, err = c.WriteAt(makeBlock(n, 2), n)
	require.ErrorIs(t, err, syscall.ENOSPC)
	_, err = c.ReadAt(make([]byte, blk), n)
	require.ErrorIs(t, err, syscall.EINVAL)
	info := strings.TrimSpace(sh(t, "nbdinfo", "--size", uri))
	require.Equal(t, fmt.Sprint(n), info)
	c2 := p.dial("alpha")
	defer c2.Close()
	require.Equal(t, int64(n), c2.Size())
	load.halt(t)
	// The old connection still works below S (the load's blocks are
	// its own until it stopped).
	_, err = c.WriteAt(makeBlock(n-blk, 1<<40), n-blk)
	require.NoError(t, err)
	load.mu.Lock()
	load.last[n-blk] = 1 << 40
	load.mu.Unlock()
	require.NoError(t, c.Flush())
	load.check(t, c2)
	p.requireInSync()
	p.sameDataBelow(n)
	ev := p.ok("alpha", "events2", "--now", "--statistics", "r0")
	require.Contains(t, ev, fmt.Sprintf(" size:%d ", n/1024))
	for _, node := range pairNodes {
		b, err := os.ReadFile(filepath.Join(p.dir, node+".log"))
		require.NoError(t, err)
		require.Contains(t, string(b), fmt.Sprintf("shrunk from %d to %d bytes", old, n), node)
	}

	// Both daemons restart with S, in sync, the same data.
	c.Close()
	c2.Close()
	p.ok("alpha", "secondary", "r0")
	for _, node := range pairNodes {
		p.ok(node, "down", "r0")
		p.ok(node, "up", "r0")
	}
	p.ok("alpha", "wait-connect", "--timeout", "20s", "r0")
	p.ok("alpha", "primary", "r0")
	p.requireInSync()
	require.Equal(t, int64(n), p.dataSize())
	require.Equal(t, int64(n), p.status("beta").Devices[0].Size*1024)
	p.sameDataBelow(n)
	c3 := p.dial("alpha")
	defer c3.Close()
	require.Equal(t, int64(n), c3.Size())
	load.check(t, c3)
}
