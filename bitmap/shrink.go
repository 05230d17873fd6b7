package bitmap

// Shrinking the metadata area (a forced online shrink, `twinbd resize
// --size S --force`).
//
// # Where the metadata stays
//
// The superblock slots and the activity log do not move: external metadata
// stays at its offset, and internal metadata stays at the end of the
// backing device, which keeps its size (the space between the new data end
// and the metadata is slack; reclaiming it means create-md on a smaller
// device, as DRBD supports online shrinking only with external metadata).
// The shrunk layout is the canonical one for the new data size with the
// same end (internal) or the same offset (external): the bitmap area gets
// smaller, its start moves up (internal) or its end moves down (external).
// Locate finds it: a valid superblock at the end with a smaller data size
// is used with that size.
//
// # Crash safety
//
// The new bitmap area lies inside the old one, and ReadBitmap is strict
// (bits past the data size or non-zero padding are ErrCorrupt), so the same
// bytes cannot be exact for both layouts at once. Shrink therefore sets
// FlagBitmapTrimmed first, which makes ReadBitmap drop such bits instead,
// and writes, each step flushed before the next:
//
//	1  superblock (old layout) with FlagBitmapTrimmed         (two-slot Update)
//	2  the old area: the in-memory bitmap, with the new area's
//	   words ORed in where the new area lies (internal: at its
//	   end; external: the same words, so nothing changes)      flush
//	3  the activity log: an empty transaction, every other
//	   slot zeroed (extents past the new end would make the
//	   new layout's log corrupt; the bitmap of step 2 covers
//	   everything, and no write is in flight)                  flush
//	4  superblock with the new layout (still flagged) in the
//	   spare slot                                              flush  <- commit
//	5  the new area, exact                                     flush
//	6  superblock without FlagBitmapTrimmed                    (two-slot Update)
//
// A crash before step 4 is durable opens with the old size and a bitmap
// that is a superset of the in-memory one (step 2 only adds bits); after it,
// with the new size and a superset of the shrunk bitmap (the bits for data
// past the new end are dropped). Either way no mark is lost, only extra
// blocks may be resynced. Steps 1 to 3 are valid states of the old layout
// on their own, so an error before the commit leaves metadata that opens
// with the old size.

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrShrunkPartly: Shrink committed the new layout but a write after the
// commit failed; the metadata has the new size (and FlagBitmapTrimmed may
// stay set, which is harmless).
var ErrShrunkPartly = errors.New("bitmap: shrunk, but a write after the commit failed")

// ShrunkLayout is the layout of metadata now laid out as lay after a Shrink
// to dataSize bytes of data: the same end (internal) or offset (external),
// a smaller bitmap. ErrInvalid unless dataSize is smaller, a multiple of
// BlockSize and at least MinDataSize.
func ShrunkLayout(lay Layout, dataSize int64) (Layout, error) {
	if dataSize >= lay.DataSize || dataSize%BlockSize != 0 || dataSize < MinDataSize {
		return Layout{}, fmt.Errorf("%w: shrink from %d to %d bytes of data (smaller, a multiple of %d, at least %d)",
			ErrInvalid, lay.DataSize, dataSize, BlockSize, MinDataSize)
	}
	off := lay.MDOffset
	if lay.Internal {
		off = lay.SBOffset[1] + SuperblockSize - MDSizeFor(dataSize, lay.Granularity)
	}
	return canonical(lay.Internal, dataSize, lay.Granularity, off), nil
}

// ShrinkOptions are what Shrink changes besides the layout.
type ShrinkOptions struct {
	// Bitmap is the in-memory bitmap of this metadata (required): its bits
	// are written before the commit; on success it shrinks too, and the
	// bits past the new end are gone.
	Bitmap *Bitmap
	// AL is the open activity log of this metadata, if any: it must have
	// no write in flight; it is emptied (see the file comment) and follows
	// the new size. Without one the activity-log area is zeroed.
	AL *ActivityLog
}

// Shrink changes the metadata to the layout to (from ShrunkLayout), as the
// file comment says: crash-safe, every step flushed before the next. The
// caller makes sure that nothing writes the data area past the new data
// size from now on and that no write is in flight. On an error before the
// commit the metadata keeps the old layout (on disk and in memory); an
// error after it wraps ErrShrunkPartly.
func (m *Meta) Shrink(to Layout, o ShrinkOptions) error {
	defer m.lockLayout(o.AL)()
	from := m.lay
	bad := func(why string, args ...any) error {
		return fmt.Errorf("bitmap: shrink: %w: %s", ErrInvalid, fmt.Sprintf(why, args...))
	}
	want, err := ShrunkLayout(from, to.DataSize)
	switch {
	case m.detached.Load():
		return bad("the metadata device is detached")
	case err != nil:
		return fmt.Errorf("bitmap: shrink: %w", err)
	case to != want:
		return bad("layout %+v is not a shrink of %+v", to, from)
	case o.Bitmap == nil:
		return bad("no bitmap")
	case o.Bitmap.DataSize() != from.DataSize || o.Bitmap.Granularity() != from.Granularity:
		return bad("bitmap for %d bytes, metadata for %d", o.Bitmap.DataSize(), from.DataSize)
	case to.SBOffset != from.SBOffset || to.ALOffset != from.ALOffset:
		return bad("the superblocks or the activity log would move")
	}
	if o.AL != nil {
		if busy := o.AL.busy(); busy > 0 {
			return fmt.Errorf("bitmap: shrink: %w: %d activity-log references", ErrALBusy, busy)
		}
	}
	writeSB := func(sb Superblock, slot int) error {
		b, err := sb.MarshalBinary()
		if err != nil {
			return err
		}
		if _, err := m.md.WriteAt(b, from.SBOffset[slot]); err != nil {
			return fmt.Errorf("write superblock slot %d: %w", slot, err)
		}
		return m.md.Flush()
	}
	m.mu.Lock()
	sb, newest := m.sb, m.newest
	m.mu.Unlock()

	// 1: flag the old layout.
	if sb.Flags&FlagBitmapTrimmed == 0 {
		next := sb
		next.Seq++
		next.Flags |= FlagBitmapTrimmed
		if err := writeSB(next, 1-newest); err != nil {
			return fmt.Errorf("bitmap: shrink: %w", err)
		}
		sb, newest = next, 1-newest
		m.mu.Lock()
		m.sb, m.newest = sb, newest
		m.mu.Unlock()
	}

	// 2: the old area, a superset for both layouts.
	nb := o.Bitmap.Clone()
	nb.shrink(to.DataSize)
	oldWords, _ := o.Bitmap.MarshalBinary()
	newWords, _ := nb.MarshalBinary()
	area := make([]byte, to.BitmapSize)
	copy(area, newWords)
	comb := make([]byte, from.BitmapSize)
	copy(comb, oldWords)
	delta := to.BitmapOffset - from.BitmapOffset
	for i, c := range area {
		comb[delta+int64(i)] |= c
	}
	if _, err := m.md.WriteAt(comb, from.BitmapOffset); err != nil {
		return fmt.Errorf("bitmap: shrink: write bitmap at %d: %w", from.BitmapOffset, err)
	}
	if err := m.md.Flush(); err != nil {
		return fmt.Errorf("bitmap: shrink: flush bitmap: %w", err)
	}

	// 3: an activity log valid for both sizes.
	if o.AL != nil {
		if err := o.AL.resetForShrink(); err != nil {
			return fmt.Errorf("bitmap: shrink: activity log: %w", err)
		}
	} else {
		if _, err := m.md.WriteAt(make([]byte, from.ALSize), from.ALOffset); err != nil {
			return fmt.Errorf("bitmap: shrink: zero activity log: %w", err)
		}
		if err := m.md.Flush(); err != nil {
			return fmt.Errorf("bitmap: shrink: flush activity log: %w", err)
		}
	}

	// 4: commit.
	next := sb
	next.Seq++
	next.DataSize, next.MDOffset, next.MDSize = to.DataSize, to.MDOffset, to.MDSize
	slot := 1 - newest
	if err := writeSB(next, slot); err != nil {
		// The slot may hold either: clear it (best effort), so that the
		// flagged old superblock stays the valid one.
		if _, zerr := m.md.WriteAt(make([]byte, SuperblockSize), from.SBOffset[slot]); zerr == nil {
			m.md.Flush()
		}
		return fmt.Errorf("bitmap: shrink: commit: %w", err)
	}
	m.mu.Lock()
	m.lay, m.sb, m.newest = to, next, slot
	m.mu.Unlock()
	o.Bitmap.shrink(to.DataSize)
	if o.AL != nil {
		o.AL.moved(to)
	}

	// 5: the exact new area; 6: unflag.
	if _, err := m.md.WriteAt(area, to.BitmapOffset); err != nil {
		return fmt.Errorf("%w: write bitmap at %d: %w", ErrShrunkPartly, to.BitmapOffset, err)
	}
	if err := m.md.Flush(); err != nil {
		return fmt.Errorf("%w: flush bitmap: %w", ErrShrunkPartly, err)
	}
	last := next
	last.Seq++
	last.Flags &^= FlagBitmapTrimmed
	if err := writeSB(last, 1-slot); err != nil {
		return fmt.Errorf("%w: clear the trimmed flag: %w", ErrShrunkPartly, err)
	}
	m.mu.Lock()
	m.sb, m.newest = last, 1-slot
	m.mu.Unlock()
	return nil
}

// maskTail clears what a bitmap area for dataSize bytes at granularity g
// may not hold: bits past the data size in the last word, and the padding.
func maskTail(buf []byte, dataSize, g int64) {
	nbits := bitmapBits(dataSize, g)
	need := (nbits + 63) / 64 * 8
	if need > int64(len(buf)) {
		return // UnmarshalBinary reports it
	}
	clear(buf[need:])
	if tail := nbits % 64; tail != 0 {
		w := binary.LittleEndian.Uint64(buf[need-8:])
		binary.LittleEndian.PutUint64(buf[need-8:], w&(1<<uint(tail)-1))
	}
}

// shrink cuts the bitmap to dataSize bytes (smaller or equal): the bits
// past it are dropped.
func (b *Bitmap) shrink(dataSize int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if dataSize >= b.dataSize {
		return
	}
	b.dataSize = dataSize
	b.nbits = bitmapBits(dataSize, b.granularity)
	n := (b.nbits + 63) / 64
	b.words = b.words[:n:n]
	if tail := b.nbits % 64; tail != 0 {
		b.words[len(b.words)-1] &= 1<<uint(tail) - 1
	}
}

// busy is the number of Begins not yet released.
func (a *ActivityLog) busy() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, x := range a.active {
		n += x.refs
	}
	return n
}

// resetForShrink (txMu held, no Begin in flight) writes a transaction with
// the empty set and zeroes every other slot, so that no slot names an
// extent: the log is then valid for any data size. The caller has written
// the bitmap first (as for Clean).
func (a *ActivityLog) resetForShrink() error {
	a.mu.Lock()
	for _, x := range a.active {
		if x.refs > 0 {
			a.mu.Unlock()
			return fmt.Errorf("%w: a write is in flight", ErrALBusy)
		}
	}
	err := a.commitLocked(a.activeLocked(), nil, false)
	tr := a.nextTr - 1
	a.mu.Unlock()
	if err != nil {
		return err
	}
	keep := int64((tr - 1) % uint64(a.slots))
	// The slots before and after the kept one, one write each.
	for _, r := range [][2]int64{{0, keep}, {keep + 1, a.slots}} {
		if r[1] <= r[0] {
			continue
		}
		if _, err := a.md.WriteAt(make([]byte, (r[1]-r[0])*BlockSize), a.lay.ALOffset+r[0]*BlockSize); err != nil {
			return fmt.Errorf("zero slots %d to %d: %w", r[0], r[1]-1, err)
		}
	}
	return a.md.Flush()
}
