package bitmap

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/device"
)

// growRec is a device that records every write and flush made after
// record(), over contents that were all durable at that point, so a test
// can rebuild what a power failure after any one operation could leave.
type growRec struct {
	mu   sync.Mutex
	img  []byte // current contents, every write applied
	base []byte // contents at record(), all durable
	ops  []recOp
}

type recOp struct {
	off   int64
	data  []byte
	flush bool
}

func newGrowRec(size int64) *growRec { return &growRec{img: make([]byte, size)} }

func (d *growRec) Size() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return int64(len(d.img))
}
func (d *growRec) Close() error { return nil }

func (d *growRec) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := device.CheckRange(int64(len(d.img)), off, int64(len(p))); err != nil {
		return 0, err
	}
	return copy(p, d.img[off:]), nil
}

func (d *growRec) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := device.CheckRange(int64(len(d.img)), off, int64(len(p))); err != nil {
		return 0, err
	}
	d.ops = append(d.ops, recOp{off: off, data: slices.Clone(p)})
	return copy(d.img[off:], p), nil
}

func (d *growRec) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ops = append(d.ops, recOp{flush: true})
	return nil
}

// record starts recording: everything so far counts as durable.
func (d *growRec) record() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.base, d.ops = slices.Clone(d.img), nil
}

// grow extends the device (the operator's truncate or lvextend).
func (d *growRec) grow(size int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.img = append(d.img, make([]byte, size-int64(len(d.img)))...)
	d.base = append(d.base, make([]byte, size-int64(len(d.base)))...)
}

// crashModes are how the writes after the last flush before a crash land.
var crashModes = []string{"none", "all", "torn"}

// crashImage is a device as a power failure after the first k operations
// could leave it: every write before the last flush among them, and of
// the later ones none, all, or (torn) a random part of each, in 512-byte
// sectors.
func (d *growRec) crashImage(k int, mode string, rng *rand.Rand) *growRec {
	d.mu.Lock()
	defer d.mu.Unlock()
	img := slices.Clone(d.base)
	last := -1
	for i := range k {
		if d.ops[i].flush {
			last = i
		}
	}
	for i, op := range d.ops[:k] {
		switch {
		case op.flush:
		case i < last, mode == "all":
			copy(img[op.off:], op.data)
		case mode == "torn":
			for s := 0; s < len(op.data); s += 512 {
				if rng.IntN(2) == 0 {
					copy(img[op.off+int64(s):], op.data[s:min(s+512, len(op.data))])
				}
			}
		}
	}
	return &growRec{img: img}
}

// grownFixture is metadata with some history: generation UUIDs, bits set
// and written, extents in the activity log.
type grownFixture struct {
	m       *Meta
	bm      *Bitmap
	al      *ActivityLog
	sb      Superblock
	lay     Layout
	bits    []int64 // set bits, on disk
	extents []int64 // the activity log's active set, on disk
}

func newGrownFixture(t *testing.T, md device.Device, lay Layout) *grownFixture {
	t.Helper()
	m, err := Create(md, lay, Superblock{Resource: "r0", NodeID: 1}, false)
	require.NoError(t, err)
	require.NoError(t, m.Update(func(sb *Superblock) {
		sb.Current, sb.Bitmap, sb.History = 0xc0ffee00, 0xbeef00, [2]uint64{0x1100, 0x2200}
		sb.Flags = FlagConsistent | FlagWasUpToDate | FlagPrimaryInd
	}))
	f := &grownFixture{m: m, lay: lay}
	f.bm, err = m.ReadBitmap()
	require.NoError(t, err)
	for _, blk := range []int64{0, 1, 77, 1000, lay.DataSize/4096 - 1} {
		f.bm.SetRange(blk*4096, 4096)
		f.bits = append(f.bits, blk)
	}
	require.NoError(t, m.WriteBitmap(f.bm))
	f.al, err = OpenActivityLog(md, lay, 0, 0)
	require.NoError(t, err)
	for _, off := range []int64{0, 5 << 20, lay.DataSize - 4096} {
		rel, err := f.al.Begin(off, 4096)
		require.NoError(t, err)
		rel()
	}
	f.extents = f.al.Active()
	require.Len(t, f.extents, 3)
	f.sb = m.Superblock()
	return f
}

// checkOpened opens the metadata of md the way `up` does (Locate, Open)
// and checks it is the fixture's metadata with the old data size or the
// new one, and returns which.
func (f *grownFixture) checkOpened(t *testing.T, md device.Device, max Layout, to Layout, markOff, markLen int64, newMarksOptional func(bit int64) bool) (grown bool) {
	t.Helper()
	found, _ := Locate(md, max)
	m, err := Open(md, found)
	require.NoError(t, err, "open after a crash")
	require.NoError(t, m.Check("r0", 1, found.DataSize))
	sb := m.Superblock()
	require.Equal(t, f.sb.MDUUID, sb.MDUUID)
	require.Equal(t, [4]uint64{f.sb.Current, f.sb.Bitmap, f.sb.History[0], f.sb.History[1]},
		[4]uint64{sb.Current, sb.Bitmap, sb.History[0], sb.History[1]}, "generation UUIDs")
	require.Equal(t, f.sb.Flags, sb.Flags)
	switch found.DataSize {
	case f.lay.DataSize:
		require.Equal(t, f.lay, found)
	case to.DataSize:
		require.Equal(t, to, found)
		grown = true
	default:
		t.Fatalf("opened with data size %d: neither the old %d nor the new %d", found.DataSize, f.lay.DataSize, to.DataSize)
	}
	bm, err := m.ReadBitmap()
	require.NoError(t, err)
	for _, b := range f.bits {
		require.True(t, bm.TestBit(b), "bit %d lost", b)
	}
	if grown {
		for off := markOff; off < markOff+markLen; off += 4096 {
			if !bm.Test(off) && (newMarksOptional == nil || !newMarksOptional(off/4096)) {
				t.Fatalf("new area at %d not marked out of sync", off)
			}
		}
	}
	al, err := OpenActivityLog(md, found, 0, 0)
	require.NoError(t, err)
	require.Equal(t, f.extents, al.Recovered(), "activity log")
	return grown
}

func TestGrowLimitAndLayout(t *testing.T) {
	lay, err := InternalLayout(16*mib, 0)
	require.NoError(t, err)
	limit, why := GrowLimit(lay, 16*mib, 16*mib)
	require.Equal(t, lay.DataSize, limit)
	require.Contains(t, why, "has not grown")

	// Grown by less than the metadata area needs.
	limit, why = GrowLimit(lay, 16*mib+64<<10, 16*mib+64<<10)
	require.Equal(t, lay.DataSize, limit)
	require.Contains(t, why, "grew by only 65536 bytes")

	full, err := InternalLayout(32*mib, 0)
	require.NoError(t, err)
	limit, why = GrowLimit(lay, 32*mib, 32*mib)
	require.Equal(t, full.DataSize, limit, "doubling: the largest data area")
	require.Empty(t, why)
	to, err := GrownLayout(lay, limit, 32*mib, 32*mib)
	require.NoError(t, err)
	require.Equal(t, full, to)
	to, err = GrownLayout(lay, 20*mib, 32*mib, 32*mib)
	require.NoError(t, err, "a smaller size, metadata still at the end")
	require.Equal(t, int64(32*mib), to.SBOffset[1]+SuperblockSize)
	require.Equal(t, int64(20*mib), to.DataSize)
	_, err = GrownLayout(lay, limit+4096, 32*mib, 32*mib)
	require.ErrorIs(t, err, ErrTooSmall)
	_, err = GrownLayout(lay, lay.DataSize, 32*mib, 32*mib)
	require.ErrorIs(t, err, ErrInvalid)
	_, err = GrownLayout(lay, 20*mib+512, 32*mib, 32*mib)
	require.ErrorIs(t, err, ErrInvalid)

	// External: the metadata device bounds the data size.
	ext, err := ExternalLayout(16*mib, 1*mib, 0)
	require.NoError(t, err)
	limit, why = GrowLimit(ext, 64*mib, 1*mib)
	require.Equal(t, int64(64*mib), limit)
	require.Empty(t, why)
	small := MDSizeFor(16*mib, 0)
	limit, why = GrowLimit(ext, 1<<40, small+4096)
	require.Less(t, limit, int64(1<<40))
	require.Greater(t, limit, int64(16*mib))
	require.LessOrEqual(t, MDSizeFor(limit, 0), small+4096)
	require.Greater(t, MDSizeFor(limit+4096, 0), small+4096)
	require.Contains(t, why, fmt.Sprintf("need a metadata device of at least %d bytes", MDSizeFor(1<<40, 0)))
	limit, why = GrowLimit(ext, 16*mib, 1*mib)
	require.Equal(t, ext.DataSize, limit)
	require.Contains(t, why, "has not grown")
}

// An internal Grow moves the metadata to the new end: the bits, marks,
// generation and activity log follow; the old area is zeroed; `up`
// (Locate, Open) finds the new size; later updates go to the new slots.
func TestGrowInternal(t *testing.T) {
	rec := newGrowRec(16 * mib)
	lay, err := InternalLayout(16*mib, 0)
	require.NoError(t, err)
	f := newGrownFixture(t, rec, lay)
	rec.grow(32 * mib)
	to, err := GrownLayout(lay, 24*mib, 32*mib, 32*mib)
	require.NoError(t, err)
	require.NoError(t, f.m.Grow(to, GrowOptions{Bitmap: f.bm, AL: f.al, MarkOff: lay.DataSize, MarkLen: to.DataSize - lay.DataSize}))

	require.Equal(t, to, f.m.Layout())
	require.Equal(t, to.DataSize, f.bm.DataSize())
	require.Equal(t, to.DataSize, f.m.Superblock().DataSize)
	require.True(t, f.bm.Test(lay.DataSize) && f.bm.Test(to.DataSize-1), "the new area is out of sync in memory too")
	old := make([]byte, lay.MDSize)
	_, err = rec.ReadAt(old, lay.MDOffset)
	require.NoError(t, err)
	require.Equal(t, make([]byte, lay.MDSize), old, "old metadata area zeroed")

	full, err := InternalLayout(32*mib, 0)
	require.NoError(t, err)
	require.True(t, f.checkOpened(t, rec, full, to, lay.DataSize, to.DataSize-lay.DataSize, nil))

	// The log and updates work on the new area.
	rel, err := f.al.Begin(to.DataSize-4096, 4096)
	require.NoError(t, err)
	rel()
	require.NoError(t, f.m.Update(func(sb *Superblock) { sb.Flags &^= FlagPrimaryInd }))
	require.NoError(t, f.m.WriteBitmap(f.bm))
	found, fwd := Locate(rec, full)
	require.False(t, fwd)
	m, err := Open(rec, found)
	require.NoError(t, err)
	require.Equal(t, FlagConsistent|FlagWasUpToDate, m.Superblock().Flags)
	al, err := OpenActivityLog(rec, found, 0, 0)
	require.NoError(t, err)
	require.Contains(t, al.Recovered(), (to.DataSize-4096)/DefaultExtentSize)

	// Growing again moves it once more (the forwarding block in the slot
	// an update overwrote is gone; a fresh one is written).
	rec.grow(48 * mib)
	to2, err := GrownLayout(to, 40*mib, 48*mib, 48*mib)
	require.NoError(t, err)
	require.NoError(t, f.m.Grow(to2, GrowOptions{Bitmap: f.bm, AL: f.al}))
	full2, err := InternalLayout(48*mib, 0)
	require.NoError(t, err)
	found, _ = Locate(rec, full2)
	require.Equal(t, to2, found)
}

// A crash after any write or flush of an internal Grow, with the writes
// since the last flush lost, kept or torn: `up` opens the metadata with
// the old size (forwarding block) or the new one, with every bit, the
// generation, the flags and the activity log; with the new size the new
// area is out of sync.
func TestGrowInternalCrashAtEveryStep(t *testing.T) {
	rec := newGrowRec(12 * mib)
	lay, err := InternalLayout(12*mib, 0)
	require.NoError(t, err)
	f := newGrownFixture(t, rec, lay)
	rec.record()
	rec.grow(16 * mib)
	full, err := InternalLayout(16*mib, 0)
	require.NoError(t, err)
	to, err := GrownLayout(lay, full.DataSize, 16*mib, 16*mib)
	require.NoError(t, err)
	require.NoError(t, f.m.Grow(to, GrowOptions{Bitmap: f.bm, AL: f.al, MarkOff: lay.DataSize, MarkLen: to.DataSize - lay.DataSize}))
	nops := len(rec.ops)
	require.Equal(t, 3, func() (n int) {
		for _, op := range rec.ops {
			if op.flush {
				n++
			}
		}
		return
	}(), "forwarding+bitmap+AL, superblock, zeroed old area: one flush each")

	firstFlush := slices.IndexFunc(rec.ops, func(op recOp) bool { return op.flush })
	rng := rand.New(rand.NewPCG(1, 2))
	var sawOld, sawNew bool
	for k := 0; k <= nops; k++ {
		for _, mode := range crashModes {
			for rep := range map[string]int{"none": 1, "all": 1, "torn": 8}[mode] {
				t.Run(fmt.Sprintf("op%d-%s-%d", k, mode, rep), func(t *testing.T) {
					img := rec.crashImage(k, mode, rng)
					if k <= firstFlush {
						// The forwarding block may not be durable yet: the
						// window that starts with the operator's growth.
						if found, _ := Locate(img, full); func() bool { _, err := Open(img, found); return errors.Is(err, ErrNoMetadata) }() {
							return
						}
					}
					grown := f.checkOpened(t, img, full, to, lay.DataSize, to.DataSize-lay.DataSize, nil)
					sawOld, sawNew = sawOld || !grown, sawNew || grown
					if k == nops {
						require.True(t, grown, "after the last flush")
					}
				})
			}
		}
	}
	require.True(t, sawOld && sawNew)
	// Before the forwarding block is durable the grown device has no
	// metadata at its end: the window between the operator's growth and
	// the resize, which Open reports (ErrNoMetadata).
	bare := rec.crashImage(0, "none", rng)
	_, err = Open(bare, full)
	require.ErrorIs(t, err, ErrNoMetadata)
}

// External metadata grows in place with the two-slot commit; a crash at
// any step opens with the old or the new size. The only marks that may be
// missing after a crash are those in the old area's last block (see
// resize.go), and only until the last write is durable.
func TestGrowExternalCrashAtEveryStep(t *testing.T) {
	rec := newGrowRec(1 * mib)
	lay, err := ExternalLayout(20*mib+12<<10, 1*mib, 0) // bits end mid-block
	require.NoError(t, err)
	f := newGrownFixture(t, rec, lay)
	rec.record()
	to, err := GrownLayout(lay, 300*mib, 300*mib, 1*mib)
	require.NoError(t, err)
	require.Greater(t, to.BitmapSize, lay.BitmapSize)
	require.NoError(t, f.m.Grow(to, GrowOptions{Bitmap: f.bm, AL: f.al, MarkOff: lay.DataSize, MarkLen: to.DataSize - lay.DataSize}))
	require.Equal(t, to, f.m.Layout())

	devLay, err := ExternalLayout(300*mib, 1*mib, 0) // what `up` computes from the device sizes
	require.NoError(t, err)
	oldBlockBits := lay.BitmapSize * 8 // bits stored in the old area's blocks
	inOldBlocks := func(bit int64) bool { return bit < oldBlockBits }
	rng := rand.New(rand.NewPCG(3, 4))
	var sawOld, sawNew bool
	nops := len(rec.ops)
	for k := 0; k <= nops; k++ {
		for _, mode := range crashModes {
			for rep := range map[string]int{"none": 1, "all": 1, "torn": 8}[mode] {
				t.Run(fmt.Sprintf("op%d-%s-%d", k, mode, rep), func(t *testing.T) {
					optional := inOldBlocks
					if k == nops {
						optional = nil
					}
					grown := f.checkOpened(t, rec.crashImage(k, mode, rng), devLay, to, lay.DataSize, to.DataSize-lay.DataSize, optional)
					sawOld, sawNew = sawOld || !grown, sawNew || grown
				})
			}
		}
	}
	require.True(t, sawOld && sawNew)
}

// Locate: a superblock for less data than the device holds (an agreed size
// after a resize) opens with its own size; one for more (a shrunk device)
// is left to Open to refuse; garbage where a forwarding block would be is
// ignored.
func TestLocate(t *testing.T) {
	rec := newGrowRec(16 * mib)
	lay, err := InternalLayout(16*mib, 0)
	require.NoError(t, err)
	f := newGrownFixture(t, rec, lay)
	rec.grow(64 * mib)
	to, err := GrownLayout(lay, 20*mib, 64*mib, 64*mib)
	require.NoError(t, err)
	require.NoError(t, f.m.Grow(to, GrowOptions{Bitmap: f.bm, AL: f.al}))
	full, err := InternalLayout(64*mib, 0)
	require.NoError(t, err)
	found, fwd := Locate(rec, full)
	require.False(t, fwd)
	require.Equal(t, to, found)

	// A forwarding block with a bad checksum is no forwarding block.
	b := encodeForward(16*mib, f.sb.MDUUID)
	_, _, ok := decodeForward(b)
	require.True(t, ok)
	for _, i := range []int{0, 9, 13, 20, 30, 100, 4090} {
		bad := slices.Clone(b)
		bad[i] ^= 1
		_, _, ok := decodeForward(bad)
		require.False(t, ok, "byte %d", i)
	}
	sbBytes := make([]byte, SuperblockSize)
	_, err = rec.ReadAt(sbBytes, to.SBOffset[0])
	require.NoError(t, err)
	_, _, ok = decodeForward(sbBytes)
	require.False(t, ok, "a superblock is not a forwarding block")

	// External data device that shrank below the metadata's size: Locate
	// gives the device's layout and Open refuses it.
	md := device.NewMemory(1 * mib)
	ext, err := ExternalLayout(32*mib, 1*mib, 0)
	require.NoError(t, err)
	_, err = Create(md, ext, Superblock{Resource: "r0", NodeID: 1}, false)
	require.NoError(t, err)
	shrunk, err := ExternalLayout(16*mib, 1*mib, 0)
	require.NoError(t, err)
	found, _ = Locate(md, shrunk)
	require.Equal(t, shrunk, found)
	_, err = Open(md, found)
	require.ErrorIs(t, err, ErrWrongSize)
	// A data device grown past what the metadata device describes: up
	// starts from the layout the metadata device holds (ExternalFit; create-md's
	// ExternalLayout refuses it).
	_, err = ExternalLayout(1<<40, 1*mib, 0)
	require.ErrorIs(t, err, ErrTooSmall)
	fit, err := ExternalFit(1<<40, 1*mib, 0)
	require.NoError(t, err)
	require.LessOrEqual(t, fit.MDSize, int64(1*mib))
	require.Greater(t, MDSizeFor(fit.DataSize+4096, 0), int64(1*mib))
	found, _ = Locate(md, fit)
	require.Equal(t, ext, found)

	// Grown while down: it opens with the size it had.
	grownExt, err := ExternalLayout(48*mib, 1*mib, 0)
	require.NoError(t, err)
	found, _ = Locate(md, grownExt)
	require.Equal(t, ext, found)
	_, err = Open(md, found)
	require.NoError(t, err)
}

func TestGrowRefusals(t *testing.T) {
	rec := newGrowRec(16 * mib)
	lay, err := InternalLayout(16*mib, 0)
	require.NoError(t, err)
	f := newGrownFixture(t, rec, lay)
	rec.grow(32 * mib)
	to, err := GrownLayout(lay, 24*mib, 32*mib, 32*mib)
	require.NoError(t, err)
	// A hand-made layout overlapping the current area.
	overlap := canonical(true, lay.DataSize+4096, lay.Granularity, lay.MDOffset+4096)
	require.ErrorIs(t, f.m.Grow(overlap, GrowOptions{}), ErrInvalid)
	// A bitmap of another size.
	other, _ := New(8*mib, 0)
	require.ErrorIs(t, f.m.Grow(to, GrowOptions{Bitmap: other}), ErrInvalid)
	// Update may not touch the layout.
	require.ErrorIs(t, f.m.Grow(to, GrowOptions{Update: func(sb *Superblock) { sb.DataSize = 1 }}), ErrInvalid)
	require.Equal(t, lay, f.m.Layout(), "nothing changed")
	full, err := InternalLayout(32*mib, 0)
	require.NoError(t, err)
	_, err = Open(rec, full)
	require.ErrorIs(t, err, ErrNoMetadata, "nothing written at the new end")
}

func TestBitmapGrow(t *testing.T) {
	b, err := New(10*4096+512, 4096) // partial last block
	require.NoError(t, err)
	b.SetRange(10*4096, 512)
	b.SetRange(0, 1)
	require.Equal(t, int64(4096+512), b.Bytes())
	require.NoError(t, b.Grow(200*4096))
	require.Equal(t, int64(200), b.Len())
	require.Equal(t, int64(2), b.Count(), "bits kept, new ones clear")
	require.Equal(t, int64(2*4096), b.Bytes(), "the old partial block is now whole")
	b.SetRange(199*4096, 4096)
	require.True(t, b.TestBit(199))
	require.ErrorIs(t, b.Grow(4096), ErrInvalid)
	words, _ := b.MarshalBinary()
	c, _ := New(200*4096, 4096)
	require.NoError(t, c.UnmarshalBinary(words))
	require.Equal(t, int64(3), c.Count())
}
