package replication

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/bitmap"
	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/device"
)

// versionedWriter writes self-identifying blocks (block(), crash_test.go)
// from several goroutines, each owning the blocks with index%n == its
// number, always below the Primary's current size, and remembers the
// last version of each block that was answered.
type versionedWriter struct {
	t    *testing.T
	r    *Resource
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	last map[int64]uint64 // block offset → last answered version
	errs atomic.Int64
	// beyond counts answered writes past the size the resource had when
	// the writer started.
	beyond atomic.Int64
}

func startWriters(t *testing.T, r *Resource, n int, seed uint64) *versionedWriter {
	return startWritersBelow(t, r, n, seed, 0)
}

// startWritersBelow is startWriters confined below limit bytes (0: the
// resource's current size).
func startWritersBelow(t *testing.T, r *Resource, n int, seed uint64, limit int64) *versionedWriter {
	w := &versionedWriter{t: t, r: r, stop: make(chan struct{}), last: map[int64]uint64{}}
	start := r.Size()
	for g := range n {
		w.wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			for v := uint64(1); ; v++ {
				select {
				case <-w.stop:
					return
				default:
				}
				blocks := r.Size() / 4096
				if limit > 0 {
					blocks = limit / 4096
				}
				blk := rng.Int64N(blocks/int64(n))*int64(n) + int64(g)
				if blk >= blocks {
					continue
				}
				// Half the writes near the end, where the growth happens.
				if rng.IntN(2) == 0 && blocks > 512 {
					blk = (blocks-512+rng.Int64N(512))/int64(n)*int64(n) + int64(g)
					if blk >= blocks {
						continue
					}
				}
				off := blk * 4096
				if err := r.WriteAt(block(off, v), off, rng.IntN(8) == 0); err != nil {
					w.errs.Add(1)
					t.Errorf("write at %d: %v", off, err)
					return
				}
				if off >= start {
					w.beyond.Add(1)
				}
				w.mu.Lock()
				w.last[off] = v
				w.mu.Unlock()
			}
		})
	}
	return w
}

func (w *versionedWriter) halt() {
	close(w.stop)
	w.wg.Wait()
}

// check reads every written block back through the Primary and compares
// it with the last answered version.
func (w *versionedWriter) check() {
	w.t.Helper()
	buf := make([]byte, 4096)
	w.mu.Lock()
	defer w.mu.Unlock()
	for off, v := range w.last {
		require.NoError(w.t, w.r.ReadAt(buf, off))
		got, ok := blockVersion(buf, off)
		require.True(w.t, ok, "block at %d is not one the test wrote", off)
		require.Equal(w.t, v, got, "block at %d", off)
	}
}

func growImages(t *testing.T, p *testPair, size int64) {
	t.Helper()
	for _, img := range []string{p.imgA, p.imgB} {
		require.NoError(t, os.Truncate(img, size))
	}
}

func waitResynced(t *testing.T, p *testPair) {
	t.Helper()
	eventually(t, "resync done, b UpToDate", func() bool {
		return p.a.ReplState() == ReplEstablished && p.b.ReplState() == ReplEstablished &&
			p.b.DiskState() == DiskUpToDate && p.a.bm.Count() == 0
	})
}

// An online resize under concurrent writes: both nodes grow while the
// writes go on, writes past the old end work once the resize returns, the
// new area (and the old metadata areas now inside the data) is resynced,
// and the two data areas end identical, with every answered write in
// place. Restarting both nodes keeps the new size and needs no sync.
func TestPairResizeUnderLoad(t *testing.T) {
	p := newPair(t, "")
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	eventually(t, "b UpToDate", func() bool { return p.b.DiskState() == DiskUpToDate })
	old := p.a.Size()
	oldLay := p.a.b().meta.Layout()

	w := startWriters(t, p.a, 4, 1)
	time.Sleep(100 * time.Millisecond) // writes in flight when the resize comes
	growImages(t, p, 2*pairSize)
	// Order: the peer has grown before this node does, and until then a
	// write past the old end is refused here.
	var between struct{ aSize, bSize int64 }
	var beyondErr error
	testAfterPeerGrew = func(r *Resource) error {
		between.aSize, between.bSize = p.a.Size(), p.b.Size()
		beyondErr = p.a.WriteAt(block(old, 1), old, false)
		return nil
	}
	res, err := p.a.Resize(context.Background(), ResizeOptions{})
	testAfterPeerGrew = nil
	require.NoError(t, err)
	require.Equal(t, old, between.aSize)
	require.Equal(t, res.New, between.bSize)
	require.ErrorIs(t, beyondErr, device.ErrOutOfRange)
	full, err := bitmap.InternalLayout(2*pairSize, 0)
	require.NoError(t, err)
	require.Equal(t, old, res.Old)
	require.Equal(t, full.DataSize, res.New)
	require.Equal(t, res.New, p.a.Size())
	require.Equal(t, res.New, p.b.size.Load(), "the peer grew first")
	require.Equal(t, old, res.SyncOff)
	require.Equal(t, res.New-old, res.SyncLen)
	require.Greater(t, full.MDOffset, oldLay.MDOffset+oldLay.MDSize, "metadata moved past the old area")

	eventually(t, "writes past the old end", func() bool { return w.beyond.Load() > 200 })
	waitResynced(t, p)
	w.halt()
	require.Zero(t, w.errs.Load())
	require.NoError(t, p.a.Flush())
	p.sameData()
	w.check()

	// Both nodes restart with the new size and reconnect without a sync.
	synced := p.a.link.syncedBytes.Load()
	require.GreaterOrEqual(t, synced, res.SyncLen/2, "the new area went over the link")
	require.NoError(t, p.a.Down(true))
	require.NoError(t, p.b.Down(true))
	p.a, p.b = p.up("a"), p.up("b")
	require.Equal(t, res.New, p.a.Size())
	require.Equal(t, res.New, p.b.Size())
	p.waitSynced(p.a)
	require.Zero(t, p.a.bm.Count())
	require.Equal(t, ReplEstablished, p.a.ReplState())
	require.NoError(t, p.a.Primary(false))
	p.sameData()
}

// --assume-clean: the new area is not synced, only the old metadata areas
// of both nodes that are now data (they differ between the nodes); the
// replicas are identical since truncate left zeroes on both.
func TestPairResizeAssumeClean(t *testing.T) {
	p := newPair(t, "")
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	oldLay := p.a.b().meta.Layout()
	growImages(t, p, 3*pairSize)
	res, err := p.a.Resize(context.Background(), ResizeOptions{AssumeClean: true})
	require.NoError(t, err)
	require.Equal(t, oldLay.MDOffset, res.SyncOff, "from the old metadata area")
	waitResynced(t, p)
	synced := p.a.link.syncedBytes.Load()
	require.Greater(t, synced, int64(0))
	require.LessOrEqual(t, synced, oldLay.MDOffset+oldLay.MDSize-oldLay.DataSize+int64(resyncChunk),
		"only the old metadata areas were synced, not the %d bytes of new area", res.New-res.Old)
	p.sameData()
}

// Bad input and states: shrinking, a size no node offers, nothing to grow,
// a misaligned size, a Secondary whose peer is Primary, no connection.
func TestPairResizeRefusals(t *testing.T) {
	p := newPair(t, "")
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	ctx := context.Background()
	size := p.a.Size()

	res, err := p.a.Resize(ctx, ResizeOptions{})
	require.NoError(t, err, "nothing to grow is not an error")
	require.Equal(t, size, res.New)
	require.Contains(t, res.Note, "size unchanged")
	require.Contains(t, res.Note, "grow the backing devices of both nodes first")

	_, err = p.a.Resize(ctx, ResizeOptions{Size: size - 1<<20})
	require.ErrorIs(t, err, ErrShrink)
	require.Contains(t, err.Error(), "is discarded")
	require.Contains(t, err.Error(), "First shrink the filesystem")
	require.Contains(t, err.Error(), fmt.Sprintf("`twinbd resize r0 --size %d --force`", size-1<<20))
	_, err = p.a.Resize(ctx, ResizeOptions{Size: size + 100})
	require.ErrorContains(t, err, "multiple of 4 KiB")

	// Only a's device grew: b limits the size.
	require.NoError(t, os.Truncate(p.imgA, 2*pairSize))
	_, err = p.a.Resize(ctx, ResizeOptions{Size: size + 4<<20})
	require.ErrorContains(t, err, "b offers at most")
	require.ErrorContains(t, err, "has not grown")
	res, err = p.a.Resize(ctx, ResizeOptions{})
	require.NoError(t, err)
	require.Equal(t, size, res.New)

	require.NoError(t, os.Truncate(p.imgB, 2*pairSize))
	_, err = p.b.Resize(ctx, ResizeOptions{})
	require.ErrorIs(t, err, ErrInUse)
	require.ErrorContains(t, err, "run `twinbd resize r0` there")

	require.NoError(t, p.a.Disconnect())
	_, err = p.a.Resize(ctx, ResizeOptions{})
	require.ErrorIs(t, err, ErrNotConnected)
	require.ErrorContains(t, err, "twinbd connect r0")
	require.Equal(t, size, p.a.Size())
	require.Equal(t, size, p.b.Size())
}

// The initiator dies after the peer grew and before it grew itself: its
// grown device has no metadata at its end, and up says to restore the old
// size; restored, it comes up, the connect refuses the size mismatch and
// says to finish the resize on it; `resize` while disconnected finishes
// it, and after connect the new area resyncs and the replicas match.
func TestPairResizeInterrupted(t *testing.T) {
	p := newPair(t, "")
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	rng := rand.New(rand.NewPCG(5, 8))
	for i := range 64 {
		require.NoError(t, p.a.WriteAt(randBlock(rng, 4096), int64(i)*65536, false))
	}
	old := p.a.Size()
	growImages(t, p, 2*pairSize)
	crashed := errors.New("the initiator died")
	testAfterPeerGrew = func(r *Resource) error {
		r.abandon()
		return crashed
	}
	_, err := p.a.Resize(context.Background(), ResizeOptions{})
	testAfterPeerGrew = nil
	require.ErrorIs(t, err, crashed)
	p.a = nil
	grown := p.b.Size()
	require.Greater(t, grown, old)

	_, err = Up(Options{Res: p.res, Node: "a", Transport: p.net.Transport("a:1", "b:1")})
	require.ErrorIs(t, err, ErrMetadata)
	require.ErrorContains(t, err, "restore the old size")
	require.NoError(t, os.Truncate(p.imgA, pairSize))
	p.a = p.up("a")
	require.Equal(t, old, p.a.Size())
	eventually(t, "size mismatch refused", func() bool {
		st := p.a.Status().Connections[0]
		return st.ConnectionState == "StandAlone"
	})
	require.Contains(t, p.a.Status().Connections[0].Reason, "size mismatch")
	require.Contains(t, p.a.Status().Connections[0].Reason, "run `twinbd resize r0` on a")

	require.NoError(t, os.Truncate(p.imgA, 2*pairSize))
	_, err = p.a.Resize(context.Background(), ResizeOptions{Size: grown + 4096})
	require.ErrorContains(t, err, "can only grow to that size")
	res, err := p.a.Resize(context.Background(), ResizeOptions{})
	require.NoError(t, err)
	require.Equal(t, grown, res.New)
	require.Contains(t, res.Note, "connect")
	require.NoError(t, p.a.Connect(false))
	require.NoError(t, p.b.Connect(false))
	p.waitSynced(p.a)
	waitResynced(t, p)
	require.Equal(t, DiskUpToDate, p.a.DiskState())
	p.sameData()
}

// startSyncSourceRange on its own: a range that differs behind twinbd's back is
// resynced mid-session while writes go on; the peer is SyncTarget and
// Inconsistent meanwhile (not promotable), a link break in the middle is
// survived (the next connect resumes it), and the replicas converge.
func TestPairMidSessionResync(t *testing.T) {
	p := newPair(t, "")
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	eventually(t, "b UpToDate", func() bool { return p.b.DiskState() == DiskUpToDate })
	p.res.Disk.ResyncRate = 2 << 20 // ~2 s for the range below
	w := startWriters(t, p.a, 3, 9)

	// Damage 4 MiB on b behind twinbd's back.
	const off, length = 4 << 20, 4 << 20
	f, err := os.OpenFile(p.imgB, os.O_WRONLY, 0)
	require.NoError(t, err)
	junk := randBlock(rand.New(rand.NewPCG(2, 2)), length)
	_, err = f.WriteAt(junk, off)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	s := p.a.sess.Load()
	require.NoError(t, s.startSyncSourceRange(off, length))
	require.ErrorIs(t, s.startSyncSourceRange(0, 4096), ErrInUse, "one resync at a time")
	eventually(t, "b SyncTarget", func() bool { return p.b.ReplState() == ReplSyncTarget })
	require.Equal(t, DiskInconsistent, p.b.DiskState())
	may, score := p.b.Promotion()
	require.False(t, may)
	require.Zero(t, score, "an Inconsistent disk has no promotion score")
	require.Zero(t, p.b.b().meta.Superblock().Flags&bitmap.FlagConsistent, "durably Inconsistent")

	// A link break in the middle: the next connect resumes it.
	eventually(t, "some of it synced", func() bool { return p.a.link.syncedBytes.Load() > 0 })
	p.net.Partition("a:1", "b:1")
	eventually(t, "both notice", func() bool { return p.a.sess.Load() == nil && p.b.sess.Load() == nil })
	time.Sleep(50 * time.Millisecond)
	p.net.Heal("a:1", "b:1")
	p.waitSynced(p.a)
	waitResynced(t, p)
	w.halt()
	require.NoError(t, p.a.Flush())
	p.sameData()
	w.check()
}

// A late answer to an abandoned request (a probe cancelled with Ctrl-C) is
// not taken for the answer to the next one.
func TestResizeReplyMatchesRequest(t *testing.T) {
	var w resizeWait
	id1, ch1 := w.arm()
	id2, ch2 := w.arm() // the first was abandoned
	require.NotEqual(t, id1, id2)
	w.deliver(id1, &ResizeReplyMsg{Size: 1})
	select {
	case <-ch2:
		t.Fatal("the stale reply was taken")
	case <-ch1:
		t.Fatal("the abandoned request got an answer")
	default:
	}
	w.deliver(id2, &ResizeReplyMsg{Size: 2})
	require.Equal(t, int64(2), (<-ch2).Size)
	w.deliver(id2, &ResizeReplyMsg{Size: 3}) // a duplicate is dropped, never blocks
}

// External metadata: the bitmap grows in place on the metadata device; one
// too small for the new size is refused with the size it needs; after a
// restart the resource comes up with the new size. A data device grown
// while the resource was down comes up with its old size.
func TestResizeExternalMetadata(t *testing.T) {
	dir := t.TempDir()
	data, md := filepath.Join(dir, "data.img"), filepath.Join(dir, "md.img")
	for f, size := range map[string]int64{data: 16 << 20, md: 140 << 10} {
		require.NoError(t, os.WriteFile(f, nil, 0o600))
		require.NoError(t, os.Truncate(f, size))
	}
	cfg, err := config.Parse(filepath.Join(dir, "t.conf"), []byte(fmt.Sprintf(`resource r0 {
  on solo { node-id 0; address 127.0.0.1:1; export %s; disk %s; meta-disk %s; }
}
`, freeAddr(t), data, md)))
	require.NoError(t, err)
	res, err := cfg.Resource("r0")
	require.NoError(t, err)
	_, err = CreateMetadata(res, "solo", false)
	require.NoError(t, err)
	up := func() *Resource {
		r, err := Up(Options{Res: res, Node: "solo"})
		require.NoError(t, err)
		return r
	}
	r := up()
	require.NoError(t, r.Primary(true))
	require.NoError(t, r.WriteAt(block(4096, 7), 4096, false))

	// 1 GiB of data needs a 32 KiB bitmap: the 140 KiB device holds less.
	require.NoError(t, os.Truncate(data, 1<<30))
	_, err = r.Resize(context.Background(), ResizeOptions{})
	require.NoError(t, err, "grows as far as the metadata device allows")
	limit := r.Size()
	require.Less(t, limit, int64(1<<30))
	require.Greater(t, limit, int64(16<<20))
	_, err = r.Resize(context.Background(), ResizeOptions{Size: 1 << 30})
	require.ErrorContains(t, err, fmt.Sprintf("need a metadata device of at least %d bytes", bitmap.MDSizeFor(1<<30, 0)))

	require.NoError(t, os.Truncate(md, bitmap.MDSizeFor(1<<30, 0)))
	res2, err := r.Resize(context.Background(), ResizeOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(1<<30), res2.New)
	require.NoError(t, r.WriteAt(block(1<<30-4096, 8), 1<<30-4096, false))
	require.NoError(t, r.Down(true))

	// Grown again while down: up keeps the recorded size.
	require.NoError(t, os.Truncate(data, 2<<30))
	r = up()
	require.Equal(t, int64(1<<30), r.Size())
	buf := make([]byte, 4096)
	require.NoError(t, r.b().local.ReadAt(buf, 1<<30-4096))
	v, ok := blockVersion(buf, 1<<30-4096)
	require.True(t, ok)
	require.Equal(t, uint64(8), v)
	require.NoError(t, r.b().local.ReadAt(buf, 4096))
	v, _ = blockVersion(buf, 4096)
	require.Equal(t, uint64(7), v)
	require.NoError(t, r.Down(true))
}

// A forced online shrink under writes confined below the new size: the
// Primary stops serving past S before the peer shrinks, the peer shrinks
// before the Primary's metadata does, every answered write is in place,
// the replicas are identical over [0, S), requests past S get an error
// while the rest keeps working, and both nodes come back with S.
func TestPairShrinkUnderLoad(t *testing.T) {
	p := newPair(t, "")
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	eventually(t, "b UpToDate", func() bool { return p.b.DiskState() == DiskUpToDate })
	old := p.a.Size()
	oldLay := p.a.b().meta.Layout()
	n := old/2/4096*4096 + 12<<10 // not on a bitmap word
	// Data past S on both nodes: dropped by the shrink.
	for off := n; off < old; off += 1 << 20 {
		require.NoError(t, p.a.WriteAt(block(off, 1), off, false))
	}

	w := startWritersBelow(t, p.a, 4, 3, n)
	time.Sleep(100 * time.Millisecond) // writes in flight when the resize comes
	var steps []string
	var lowered struct {
		aSize, bSize int64
		beyond       error
	}
	testShrinkStep = func(r *Resource, step string) error {
		steps = append(steps, step)
		switch step {
		case "lowered":
			lowered.aSize, lowered.bSize = p.a.Size(), p.b.Size()
			lowered.beyond = p.a.checkWrite(n, 4096)
		case "peer-shrank":
			require.Equal(t, n, p.b.Size(), "the peer shrank before the initiator's metadata")
			require.Equal(t, n, p.b.b().meta.Layout().DataSize)
			require.Equal(t, oldLay.DataSize, p.a.b().meta.Layout().DataSize)
		}
		return nil
	}
	res, err := p.a.Resize(context.Background(), ResizeOptions{Size: n, Force: true})
	testShrinkStep = nil
	require.NoError(t, err)
	require.Equal(t, []string{"lowered", "peer-shrank"}, steps)
	require.Equal(t, n, lowered.aSize, "the initiator stops serving past S first")
	require.Equal(t, old, lowered.bSize)
	require.ErrorIs(t, lowered.beyond, device.ErrOutOfRange)
	require.Equal(t, old, res.Old)
	require.Equal(t, n, res.New)
	require.Equal(t, n, p.a.Size())
	require.Equal(t, n, p.b.Size())
	lay := p.a.b().meta.Layout()
	require.Equal(t, n, lay.DataSize)
	require.Equal(t, oldLay.SBOffset, lay.SBOffset, "internal metadata stays at the end")
	require.Equal(t, n, p.a.bm.DataSize(), "the bitmap shrank")

	time.Sleep(200 * time.Millisecond) // writes go on after the shrink
	w.halt()
	require.Zero(t, w.errs.Load())
	require.NoError(t, p.a.Flush())
	require.Equal(t, ReplEstablished, p.a.ReplState(), "the session stayed up")
	p.sameData()
	w.check()

	// Past S: an error, not a broken resource; below it all works.
	buf := make([]byte, 4096)
	require.ErrorIs(t, p.a.WriteAt(buf, n, false), device.ErrOutOfRange)
	require.ErrorIs(t, p.a.ReadAt(buf, n), device.ErrOutOfRange)
	require.ErrorIs(t, p.a.Trim(n-4096, 8192, false), device.ErrOutOfRange)
	require.NoError(t, p.a.WriteAt(block(n-4096, 99), n-4096, true))
	require.Equal(t, ReplEstablished, p.a.ReplState())
	require.Equal(t, DiskUpToDate, p.a.DiskState())

	// Both restart with S and reconnect without a sync.
	require.NoError(t, p.a.Down(true))
	require.NoError(t, p.b.Down(true))
	p.a, p.b = p.up("a"), p.up("b")
	require.Equal(t, n, p.a.Size())
	require.Equal(t, n, p.b.Size())
	p.waitSynced(p.a)
	require.Zero(t, p.a.bm.Count())
	require.Equal(t, ReplEstablished, p.a.ReplState())
	require.Zero(t, p.a.link.syncedBytes.Load())
	require.NoError(t, p.a.Primary(false))
	require.NoError(t, p.a.ReadAt(buf, n-4096))
	v, ok := blockVersion(buf, n-4096)
	require.True(t, ok)
	require.Equal(t, uint64(99), v)
	p.sameData()
}

// Refusals: a size below the minimum, a `disk { size }` that does not
// match, no connection; a peer that cannot shrink leaves both as they were.
func TestPairShrinkRefusals(t *testing.T) {
	p := newPair(t, "")
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	ctx := context.Background()
	size := p.a.Size()
	n := size - 4<<20

	_, err := p.a.Resize(ctx, ResizeOptions{Size: 4096, Force: true})
	require.ErrorIs(t, err, ErrShrink)
	require.ErrorContains(t, err, "smallest device")
	_, err = p.a.Resize(ctx, ResizeOptions{Size: n, Force: true, ConfigSize: size})
	require.ErrorIs(t, err, ErrShrink)
	require.ErrorContains(t, err, fmt.Sprintf("set it to %d (or remove it)", n))

	// The peer refuses (a resize of its own runs): nothing changes.
	p.b.resizeMu.Lock()
	_, err = p.a.Resize(ctx, ResizeOptions{Size: n, Force: true})
	p.b.resizeMu.Unlock()
	require.ErrorContains(t, err, "did not shrink (nothing changed on either node)")
	require.Equal(t, size, p.a.Size())
	require.Equal(t, size, p.b.Size())
	require.NoError(t, p.a.WriteAt(block(n, 1), n, false), "serving past S again")

	_, err = p.b.Resize(ctx, ResizeOptions{Size: n, Force: true})
	require.ErrorIs(t, err, ErrInUse, "the Primary orders the shrink")

	require.NoError(t, p.a.Disconnect())
	_, err = p.a.Resize(ctx, ResizeOptions{Size: n, Force: true})
	require.ErrorIs(t, err, ErrNotConnected)
	require.Equal(t, size, p.a.Size())
	require.Equal(t, size, p.b.Size())
}

// A write that passed the range check with the old size and waits for its
// range lock behind the shrink is refused once it gets the lock (checked
// again under it): it never reaches the shrunk peer or the activity log,
// the session stays up and the disk UpToDate.
func TestPairShrinkWriteWaitingForLock(t *testing.T) {
	p := newPair(t, "")
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	old := p.a.Size()
	n := old - 4<<20
	hold := p.a.lock.Lock(n, 4096)
	waiters := func() int {
		p.a.lock.mu.Lock()
		defer p.a.lock.mu.Unlock()
		return len(p.a.lock.reqs)
	}
	resized := make(chan error, 1)
	go func() {
		_, err := p.a.Resize(context.Background(), ResizeOptions{Size: n, Force: true})
		resized <- err
	}()
	eventually(t, "the resize waits for the lock", func() bool { return waiters() == 2 })
	wrote := make(chan error, 1)
	go func() { wrote <- p.a.WriteAt(block(n, 1), n, false) }()
	eventually(t, "the write waits for the lock", func() bool { return waiters() == 3 })
	hold()
	require.NoError(t, <-resized)
	require.ErrorIs(t, <-wrote, device.ErrOutOfRange)
	require.Equal(t, n, p.b.Size())
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, ReplEstablished, p.a.ReplState())
	require.Equal(t, DiskUpToDate, p.a.DiskState())
	require.NoError(t, p.a.WriteAt(block(n-4096, 2), n-4096, false))
	p.sameData()
}

// An interruption at each step of a shrink leaves both nodes openable, the
// sizes equal or the bigger node behind, and a clear path to finish:
// `resize --size S --force` on the bigger node (the one the connect's
// size-mismatch message names), then connect; the replicas end identical
// over [0, S) and a restart keeps S.
func TestPairShrinkInterrupted(t *testing.T) {
	crashed := errors.New("injected")
	for _, tc := range []struct {
		name, step string
		act        func(p *testPair, r *Resource) error
		// after the resize: the sizes of a and b, and who finishes ("": nobody)
		aShrunk, bShrunk bool
		finish           string
	}{
		{name: "initiator-crash-after-lowering", step: "lowered",
			act: func(p *testPair, r *Resource) error { r.abandon(); return crashed }},
		{name: "initiator-crash-after-peer-shrank", step: "peer-shrank",
			act:     func(p *testPair, r *Resource) error { r.abandon(); return crashed },
			bShrunk: true, finish: "a"},
		{name: "link-lost-before-the-peer-heard", step: "lowered",
			act:     func(p *testPair, r *Resource) error { p.net.Partition("a:1", "b:1"); return nil },
			aShrunk: true, finish: "b"},
		{name: "initiator-commit-failed", step: "peer-shrank",
			act: func(p *testPair, r *Resource) error {
				r.sess.Load().fail(crashed)
				return crashed
			},
			bShrunk: true, finish: "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, "")
			require.NoError(t, p.a.Primary(true))
			p.waitSynced(p.a)
			rng := rand.New(rand.NewPCG(5, 9))
			old := p.a.Size()
			n := old - 6<<20
			for i := range 64 {
				require.NoError(t, p.a.WriteAt(randBlock(rng, 4096), int64(i)*(old/64), false))
			}
			testShrinkStep = func(r *Resource, step string) error {
				if step == tc.step {
					return tc.act(p, r)
				}
				return nil
			}
			_, err := p.a.Resize(context.Background(), ResizeOptions{Size: n, Force: true})
			testShrinkStep = nil
			require.Error(t, err)
			if tc.step == "lowered" && tc.aShrunk {
				require.ErrorContains(t, err, fmt.Sprintf("run `twinbd resize r0 --size %d --force` on b", n))
			}
			if errors.Is(err, crashed) && p.a.down {
				p.a = p.up("a") // the crashed initiator comes back
			}
			want := map[bool]int64{false: old, true: n}
			require.Equal(t, want[tc.aShrunk], p.a.b().meta.Layout().DataSize, "a's metadata")
			require.Equal(t, want[tc.bShrunk], p.b.b().meta.Layout().DataSize, "b's metadata")
			p.net.Heal("a:1", "b:1")

			if tc.finish != "" {
				bigger, other := map[string]*Resource{"a": p.a, "b": p.b}[tc.finish], map[string]string{"a": "b", "b": "a"}[tc.finish]
				var reason string
				eventually(t, "size mismatch refused", func() bool {
					for _, r := range []*Resource{p.a, p.b} {
						if st := r.Status().Connections[0]; st.ConnectionState == "StandAlone" && strings.Contains(st.Reason, "size mismatch") {
							reason = st.Reason
						}
					}
					bigger.mu.Lock()
					defer bigger.mu.Unlock()
					return reason != "" && bigger.link.peerSize == n
				})
				require.Contains(t, reason, "size mismatch")
				require.Contains(t, reason, fmt.Sprintf("run `twinbd resize r0 --size %d --force` on %s", n, tc.finish), reason)
				_, err := bigger.Resize(context.Background(), ResizeOptions{})
				require.ErrorIs(t, err, ErrShrink)
				require.ErrorContains(t, err, "--force")
				_, err = bigger.Resize(context.Background(), ResizeOptions{Size: n + 4096, Force: true})
				require.ErrorContains(t, err, "can only shrink to that size")
				res, err := bigger.Resize(context.Background(), ResizeOptions{Force: true})
				require.NoError(t, err)
				require.Equal(t, n, res.New)
				require.Contains(t, res.Note, "finishing an interrupted shrink")
				require.NoError(t, bigger.Connect(false))
				require.NoError(t, map[string]*Resource{"a": p.a, "b": p.b}[other].Connect(false))
				old = n
			}
			p.waitSynced(p.a)
			eventually(t, "in sync", func() bool {
				return p.a.ReplState() == ReplEstablished && p.b.DiskState() == DiskUpToDate && p.a.bm.Count() == 0
			})
			require.Equal(t, old, p.a.Size())
			require.Equal(t, old, p.b.Size())
			if p.a.Role() != RolePrimary {
				require.NoError(t, p.a.Primary(false))
			}
			require.NoError(t, p.a.Flush())
			p.sameData()

			// A restart opens with the size both agreed on.
			require.NoError(t, p.a.Down(true))
			require.NoError(t, p.b.Down(true))
			p.a, p.b = p.up("a"), p.up("b")
			require.Equal(t, old, p.a.Size())
			require.Equal(t, old, p.b.Size())
			p.waitSynced(p.a)
		})
	}
}

// newExternalPair is newPair with external metadata (a 1 MiB metadata file
// per node).
func newExternalPair(t *testing.T, size int64) *testPair {
	dir := t.TempDir()
	p := &testPair{t: t, net: NewMemNetwork(1)}
	p.imgA, p.imgB = filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	mdA, mdB := filepath.Join(dir, "a.md"), filepath.Join(dir, "b.md")
	for f, sz := range map[string]int64{p.imgA: size, p.imgB: size, mdA: 1 << 20, mdB: 1 << 20} {
		require.NoError(t, os.WriteFile(f, nil, 0o600))
		require.NoError(t, os.Truncate(f, sz))
	}
	src := fmt.Sprintf(`resource r0 {
  net { shared-secret "s3cret"; ping-int 1; connect-int 1; }
  on a { node-id 0; address a:1; export %s; disk %s; meta-disk %s; }
  on b { node-id 1; address b:1; export %s; disk %s; meta-disk %s; }
}
`, freeAddr(t), p.imgA, mdA, freeAddr(t), p.imgB, mdB)
	cfg, err := config.Parse(filepath.Join(dir, "t.conf"), []byte(src))
	require.NoError(t, err)
	p.res, err = cfg.Resource("r0")
	require.NoError(t, err)
	for _, n := range []string{"a", "b"} {
		_, err := createMetadata(p.res, n, false, nil)
		require.NoError(t, err)
	}
	p.a, p.b = p.up("a"), p.up("b")
	t.Cleanup(func() {
		if p.a != nil {
			p.a.Down(true)
		}
		if p.b != nil {
			p.b.Down(true)
		}
	})
	return p
}

// External metadata: the bitmap shrinks in place on the metadata device
// (the data device keeps its size); a shrink under writes, then a restart
// with S; then the data device's tail can go (truncate) and it still
// comes up with S.
func TestPairShrinkExternalMetadata(t *testing.T) {
	p := newExternalPair(t, 64<<20)
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	eventually(t, "b UpToDate", func() bool { return p.b.DiskState() == DiskUpToDate })
	require.False(t, p.a.b().meta.Layout().Internal)
	old := p.a.Size()
	n := int64(20<<20 + 12<<10)
	w := startWritersBelow(t, p.a, 3, 11, n)
	time.Sleep(100 * time.Millisecond)
	res, err := p.a.Resize(context.Background(), ResizeOptions{Size: n, Force: true})
	require.NoError(t, err)
	require.Equal(t, old, res.Old)
	require.Equal(t, n, res.New)
	time.Sleep(100 * time.Millisecond)
	w.halt()
	require.Zero(t, w.errs.Load())
	require.NoError(t, p.a.Flush())
	require.Equal(t, ReplEstablished, p.a.ReplState())
	for _, r := range []*Resource{p.a, p.b} {
		lay := r.b().meta.Layout()
		require.Equal(t, n, lay.DataSize)
		require.Equal(t, bitmap.MDSizeFor(n, 0), lay.MDSize, "the bitmap shrank")
	}
	p.sameData()
	w.check()

	require.NoError(t, p.a.Down(true))
	require.NoError(t, p.b.Down(true))
	for _, img := range []string{p.imgA, p.imgB} {
		require.NoError(t, os.Truncate(img, n)) // the operator reclaims the tail
	}
	p.a, p.b = p.up("a"), p.up("b")
	require.Equal(t, n, p.a.Size())
	require.Equal(t, n, p.b.Size())
	p.waitSynced(p.a)
	require.Zero(t, p.a.bm.Count())
	require.NoError(t, p.a.Primary(false))
	w.r = p.a
	w.check()
	p.sameData()
}
