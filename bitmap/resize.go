package bitmap

// Growing the metadata area (online resize, drbdadm resize).
//
// # Internal metadata moves
//
// Internal metadata ends the backing device, and Open finds it there (the
// superblock slots are the last 8 KiB). Once the operator has grown the
// device, the metadata no longer ends it; Grow moves it to the new end,
// sized for the new data size, in a place that does not overlap the old
// one (GrowLimit refuses a growth too small for that). The writes, in
// order, each group flushed before the next starts:
//
//	1  new end: slot 0 zeroed, slot 1 a forwarding block naming the old
//	   end and the metadata UUID; the new bitmap (the old bits, grown,
//	   plus the marked range and the old metadata area as out of sync);
//	   a copy of the activity-log area                              flush
//	2  new superblock (Seq+1, the new sizes) in slot 0              flush  <- commit
//	3  the old metadata area zeroed                                 flush
//
// Locate (what `up` runs) reads the slots at the end of the device: a valid
// superblock there is used as it is, with its data size even when that is
// less than the device could hold; failing that, a forwarding block leads
// back to the metadata at the old end, with the old size. So a crash at any
// point leaves a device that opens: after step 1 is durable with the old
// size until step 2 is, and with the new size from then on (before step 1
// is durable, see below). A torn step-2 write is a slot with a bad
// checksum next to the forwarding block, which still leads to the old
// metadata. Nothing the old superblock refers to is written before the
// commit, and the old area is zeroed only after it.
//
// What no ordering can cover is the time between the operator growing the
// device and the end of step 1: the end of the device may then hold
// neither metadata nor a forwarding block, and Open reports ErrNoMetadata. A resize should
// follow the growth while the resource is up; Open's message says what to
// do otherwise.
//
// # External metadata grows in place
//
// With external metadata only the bitmap grows, at the end of its area; the
// superblock slots and the activity log stay. Grow writes the bitmap blocks
// past the old area (invisible to the old superblock), flushes, commits the
// new superblock to the spare slot (the usual two-slot update), flushes,
// then rewrites the old blocks of the area with the in-memory bitmap and
// flushes. The marks that fall into the old area's last block (its new bits
// share it with old ones; writing them before the commit would make the old
// layout's bitmap corrupt) are on disk only after the last step; a crash
// between the commit and that step loses them on this node. The replication
// layer covers that window with the peer's copy of the same marks (see
// replication/resize.go).

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cespare/xxhash/v2"
	"github.com/twinbd/twinbd/device"
)

// ForwardMagic opens a forwarding block.
const ForwardMagic = "TWINBDFW"

// A forwarding block (4096 bytes, big-endian) in a superblock slot at the
// end of a grown device points to metadata that a Grow has not yet moved:
//
//	off  size  field
//	  0     8  magic "TWINBDFW"
//	  8     4  version (1)
//	 12     4  reserved, zero
//	 16     8  old end: the metadata in use ends here (its superblock
//	           slots are the 8 KiB before it)
//	 24    16  metadata UUID of that metadata
//	 40  4048  reserved, zero
//	4088    8  xxhash64 of bytes [0, 4088)
const (
	fwdOffVersion = 8
	fwdOffOldEnd  = 16
	fwdOffUUID    = 24
	fwdOffRest    = 40
)

func encodeForward(oldEnd int64, uuid [16]byte) []byte {
	b := make([]byte, BlockSize)
	copy(b, ForwardMagic)
	binary.BigEndian.PutUint32(b[fwdOffVersion:], 1)
	binary.BigEndian.PutUint64(b[fwdOffOldEnd:], uint64(oldEnd))
	copy(b[fwdOffUUID:], uuid[:])
	binary.BigEndian.PutUint64(b[offChecksum:], xxhash.Sum64(b[:offChecksum]))
	return b
}

// decodeForward decodes a forwarding block; ok is false for anything else
// (a superblock, zeroes, a torn or damaged block).
func decodeForward(b []byte) (oldEnd int64, uuid [16]byte, ok bool) {
	if len(b) != BlockSize || string(b[:len(ForwardMagic)]) != ForwardMagic ||
		xxhash.Sum64(b[:offChecksum]) != binary.BigEndian.Uint64(b[offChecksum:]) ||
		binary.BigEndian.Uint32(b[fwdOffVersion:]) != 1 {
		return 0, uuid, false
	}
	for _, c := range b[12:16] {
		if c != 0 {
			return 0, uuid, false
		}
	}
	for _, c := range b[fwdOffRest:offChecksum] {
		if c != 0 {
			return 0, uuid, false
		}
	}
	oldEnd = int64(binary.BigEndian.Uint64(b[fwdOffOldEnd:]))
	copy(uuid[:], b[fwdOffUUID:])
	if oldEnd <= 0 || oldEnd%BlockSize != 0 {
		return 0, uuid, false
	}
	return oldEnd, uuid, true
}

// GrowLimit is the largest data size a Grow of metadata now laid out as
// lay can reach, with a data device of dataDevSize bytes and a metadata
// device of mdDevSize bytes (the same device for internal metadata). When
// something other than the data device's size keeps it down, why says what
// and what would lift it; a limit of lay.DataSize means no growth at all.
func GrowLimit(lay Layout, dataDevSize, mdDevSize int64) (limit int64, why string) {
	g := lay.Granularity
	if !lay.Internal {
		dataCap := roundDown(dataDevSize, BlockSize)
		if dataCap <= lay.DataSize {
			return lay.DataSize, fmt.Sprintf("the data device (%d bytes) has not grown", dataDevSize)
		}
		// The largest data size whose metadata area fits the device.
		metaCap := largestBlocks(lay.DataSize, dataCap, func(d int64) bool { return lay.MDOffset+MDSizeFor(d, g) <= mdDevSize })
		if metaCap < dataCap {
			need := lay.MDOffset + MDSizeFor(dataCap, g)
			return metaCap, fmt.Sprintf("the metadata device (%d bytes) holds the bitmap for at most %d bytes of data; %d bytes need a metadata device of at least %d bytes (%d KiB)",
				mdDevSize, metaCap, dataCap, need, (need+1023)/1024)
		}
		return dataCap, ""
	}
	end := roundDown(mdDevSize, BlockSize)
	avail := end - (lay.MDOffset + lay.MDSize) // space past the metadata area
	if avail <= 0 {
		return lay.DataSize, fmt.Sprintf("the device (%d bytes) has not grown since its metadata was placed at its end", mdDevSize)
	}
	maxData := lay.DataSize
	if full, err := InternalLayout(mdDevSize, g); err == nil {
		maxData = max(full.DataSize, lay.DataSize)
	}
	// The new area lies wholly past the old one: MDSizeFor(d) <= avail.
	limit = largestBlocks(lay.DataSize, maxData, func(d int64) bool { return MDSizeFor(d, g) <= avail })
	if limit > lay.DataSize {
		return limit, ""
	}
	need := MDSizeFor(lay.DataSize+BlockSize, g)
	return lay.DataSize, fmt.Sprintf("the device grew by only %d bytes; the metadata moves to the new end and needs %d bytes there: grow it by at least %d KiB more",
		avail, need, (need-avail+1023)/1024)
}

// largestBlocks is the largest multiple of BlockSize d in [lo, hi] with
// ok(d), ok being monotonic (true up to some point); lo if none above it.
func largestBlocks(lo, hi int64, ok func(int64) bool) int64 {
	a, b := lo/BlockSize, hi/BlockSize
	for a < b {
		mid := a + (b-a+1)/2
		if ok(mid * BlockSize) {
			a = mid
		} else {
			b = mid - 1
		}
	}
	return max(a*BlockSize, lo)
}

// GrownLayout is the layout of metadata now laid out as lay after a Grow to
// dataSize bytes of data, on a metadata device of mdDevSize bytes: internal
// metadata ends the device, external stays where it is. ErrInvalid unless
// dataSize is larger, a multiple of BlockSize, and within GrowLimit.
func GrownLayout(lay Layout, dataSize, dataDevSize, mdDevSize int64) (Layout, error) {
	if dataSize <= lay.DataSize || dataSize%BlockSize != 0 {
		return Layout{}, fmt.Errorf("%w: grow from %d to %d bytes of data (larger, a multiple of %d)", ErrInvalid, lay.DataSize, dataSize, BlockSize)
	}
	if limit, why := GrowLimit(lay, dataDevSize, mdDevSize); dataSize > limit {
		if why == "" {
			why = fmt.Sprintf("the device offers at most %d bytes of data", limit)
		}
		return Layout{}, fmt.Errorf("%w: cannot grow to %d bytes: %s", ErrTooSmall, dataSize, why)
	}
	off := lay.MDOffset
	if lay.Internal {
		off = roundDown(mdDevSize, BlockSize) - MDSizeFor(dataSize, lay.Granularity)
	}
	to := canonical(lay.Internal, dataSize, lay.Granularity, off)
	if err := to.check(mdDevSize); err != nil {
		return Layout{}, err
	}
	return to, nil
}

// ExternalFit is ExternalLayout with the data size cut to what the metadata
// device holds a bitmap for: where `up` starts when a data device grew
// (while the resource was down) past what its metadata device describes;
// Locate then takes the data size from the superblock. create-md uses
// ExternalLayout, which refuses such a metadata device.
func ExternalFit(dataDevSize, metaDevSize, granularity int64) (Layout, error) {
	g, err := checkGranularity(granularity)
	if err != nil {
		return Layout{}, err
	}
	data := roundDown(max(dataDevSize, 0), BlockSize)
	if MDSizeFor(data, g) > metaDevSize {
		data = largestBlocks(0, data, func(d int64) bool { return MDSizeFor(d, g) <= metaDevSize })
	}
	return ExternalLayout(data, metaDevSize, g)
}

// Locate returns the layout to Open the metadata of md with, given lay,
// the layout InternalLayout or ExternalLayout computes from the device
// sizes (the largest data area). A valid superblock where lay puts the
// slots may describe a smaller data area (an agreed size below what this
// device could hold, or an external data device grown while the resource
// was down): then the layout for that size. For internal metadata whose
// slots hold no valid superblock but a forwarding block (a Grow that did
// not commit), the layout of the metadata at the old end, and forwarded is
// true. Otherwise lay, and Open reports what is wrong.
func Locate(md device.Device, lay Layout) (found Layout, forwarded bool) {
	var (
		best  Superblock
		valid bool
		fwd   []byte
	)
	for _, off := range lay.SBOffset {
		b := make([]byte, SuperblockSize)
		if _, err := md.ReadAt(b, off); err != nil {
			return lay, false
		}
		if sb, err := DecodeSuperblock(b); err == nil {
			if !valid || sb.Seq > best.Seq {
				best, valid = sb, true
			}
		} else if _, _, ok := decodeForward(b); ok {
			fwd = b
		}
	}
	if valid {
		if best.DataSize >= lay.DataSize || best.DataSize < MinDataSize || best.DataSize%BlockSize != 0 {
			return lay, false
		}
		off := lay.MDOffset
		if lay.Internal {
			off = lay.SBOffset[1] + SuperblockSize - MDSizeFor(best.DataSize, lay.Granularity)
		}
		if l := canonical(lay.Internal, best.DataSize, lay.Granularity, off); l.check(md.Size()) == nil {
			return l, false
		}
		return lay, false
	}
	if fwd == nil || !lay.Internal {
		return lay, false
	}
	oldEnd, uuid, _ := decodeForward(fwd)
	if oldEnd > lay.SBOffset[0] {
		return lay, false
	}
	var old Superblock
	for _, off := range []int64{oldEnd - 2*SuperblockSize, oldEnd - SuperblockSize} {
		b := make([]byte, SuperblockSize)
		if off < 0 {
			return lay, false
		}
		if _, err := md.ReadAt(b, off); err != nil {
			return lay, false
		}
		if sb, err := DecodeSuperblock(b); err == nil && sb.MDUUID == uuid && (old.Seq == 0 || sb.Seq > old.Seq) {
			old = sb
		}
	}
	if old.Seq == 0 || old.DataSize < MinDataSize || old.DataSize%BlockSize != 0 {
		return lay, false
	}
	l := canonical(true, old.DataSize, lay.Granularity, oldEnd-MDSizeFor(old.DataSize, lay.Granularity))
	if l.MDOffset < 0 || l.check(md.Size()) != nil {
		return lay, false
	}
	return l, true
}

// GrowOptions are what Grow changes besides the layout.
type GrowOptions struct {
	// Bitmap is the in-memory bitmap of this metadata (nil: none is kept,
	// and the new bitmap area is written clear). The new area gets its
	// bits, grown, with Mark and (internal) the old metadata area set; on
	// success Bitmap itself grows and gets the same bits.
	Bitmap *Bitmap
	// AL is the open activity log of this metadata, if any: its
	// transactions are held off during the move, and it follows the
	// metadata. The area itself is copied as it is on disk, so its
	// recovery after a crash is the same before and after.
	AL *ActivityLog
	// MarkOff and MarkLen are a data range to mark out of sync in the
	// new bitmap before the commit (the new area, unless the operator
	// said it is identical on both nodes).
	MarkOff, MarkLen int64
	// Update, if set, changes the flags, generation UUIDs or other
	// non-layout fields of the superblock in the same commit.
	Update func(*Superblock)
}

// Grow moves the metadata to the layout to (from GrownLayout, on the same
// metadata device, refreshed to its grown size) as the package comment
// says: crash-safe, every step flushed before the next. The caller makes
// sure that nothing writes the data area past the old data size until Grow
// has returned, and that no write needing an activity-log transaction is in
// flight (the AL's transactions wait for Grow). On an error before the
// commit the metadata stays as it was, on disk and in memory. An error
// after it wraps ErrGrownPartly: the metadata has grown, on disk and in
// memory, and what failed is covered (an unzeroed old area is marked out
// of sync, so a resync overwrites it).
func (m *Meta) Grow(to Layout, o GrowOptions) error {
	defer m.lockLayout(o.AL)()
	from := m.lay // updateMu and bitmapMu held: nothing else changes it
	bad := func(why string, args ...any) error {
		return fmt.Errorf("bitmap: grow: %w: %s", ErrInvalid, fmt.Sprintf(why, args...))
	}
	switch {
	case m.detached.Load():
		return bad("the metadata device is detached")
	case to.Internal != from.Internal || to.Granularity != from.Granularity || to.ALSize != from.ALSize:
		return bad("layout %+v is not a growth of %+v", to, from)
	case to.DataSize <= from.DataSize:
		return bad("data size %d is not larger than %d", to.DataSize, from.DataSize)
	case to.Internal && to.MDOffset < from.MDOffset+from.MDSize:
		return bad("new metadata area at %d overlaps the old one ending at %d", to.MDOffset, from.MDOffset+from.MDSize)
	case !to.Internal && to.MDOffset != from.MDOffset:
		return bad("external metadata moves from %d to %d", from.MDOffset, to.MDOffset)
	case o.Bitmap != nil && o.Bitmap.DataSize() != from.DataSize:
		return bad("bitmap for %d bytes, metadata for %d", o.Bitmap.DataSize(), from.DataSize)
	case o.AL != nil && ceilDiv(to.DataSize, o.AL.extentSize) > 1<<32:
		return bad("%d bytes of data is more than 2^32 activity-log extents", to.DataSize)
	}
	if err := to.check(m.md.Size()); err != nil {
		return fmt.Errorf("bitmap: grow: %w", err)
	}

	// The new bitmap: the current bits, grown, plus the marks.
	nb, _ := New(from.DataSize, from.Granularity)
	if o.Bitmap != nil {
		nb = o.Bitmap.Clone()
	}
	if err := nb.Grow(to.DataSize); err != nil {
		return fmt.Errorf("bitmap: grow: %w", err)
	}
	marks := [][2]int64{{o.MarkOff, o.MarkLen}}
	if from.Internal {
		// The old area becomes data (or slack); its contents differ
		// between the nodes, so it is out of sync until resynced.
		marks = append(marks, [2]int64{from.MDOffset, from.MDSize})
	}
	for _, mk := range marks {
		nb.SetRange(mk[0], mk[1])
	}
	words, _ := nb.MarshalBinary()
	area := make([]byte, to.BitmapSize)
	copy(area, words)

	m.mu.Lock()
	sb, newest := m.sb, m.newest
	m.mu.Unlock()
	next := sb
	if o.Update != nil {
		o.Update(&next)
		if next.Seq != sb.Seq || next.MDUUID != sb.MDUUID || next.DataSize != sb.DataSize ||
			next.MDOffset != sb.MDOffset || next.MDSize != sb.MDSize ||
			next.Granularity != sb.Granularity || next.ALSlots != sb.ALSlots {
			return bad("Update changed Seq, MDUUID or a layout field")
		}
	}
	next.Seq++
	next.DataSize, next.MDOffset, next.MDSize = to.DataSize, to.MDOffset, to.MDSize
	slot, err := next.MarshalBinary()
	if err != nil {
		return fmt.Errorf("bitmap: grow: %w", err)
	}

	var (
		nextSlot  int
		committed bool
	)
	if from.Internal {
		committed, err = m.move(from, to, area, slot, sb.MDUUID)
	} else {
		nextSlot = 1 - newest
		committed, err = m.growInPlace(from, to, area, slot, nextSlot)
	}
	if !committed {
		return err
	}

	// Committed: switch over in memory.
	m.mu.Lock()
	m.lay, m.sb, m.newest = to, next, nextSlot
	m.mu.Unlock()
	if o.Bitmap != nil {
		o.Bitmap.Grow(to.DataSize) // larger, checked above
		for _, mk := range marks {
			o.Bitmap.SetRange(mk[0], mk[1])
		}
	}
	if o.AL != nil {
		o.AL.moved(to)
	}
	if err != nil {
		return err
	}
	if from.Internal {
		if err := device.WriteZeroes(m.md, from.MDOffset, from.MDSize, false); err != nil {
			return fmt.Errorf("%w: zeroing the old metadata area [%d, +%d) (it is marked out of sync): %w", ErrGrownPartly, from.MDOffset, from.MDSize, err)
		}
		if err := m.md.Flush(); err != nil {
			return fmt.Errorf("%w: flushing the zeroed old metadata area (it is marked out of sync): %w", ErrGrownPartly, err)
		}
	}
	return nil
}

// move is steps 1 and 2 of an internal Grow (the package comment);
// committed reports whether step 2 is durable. If writing or flushing the new
// superblock fails, its slot is cleared again (best effort): an ambiguous
// slot must not turn valid later while this node keeps updating the old
// superblocks, and the forwarding block still leads to them.
func (m *Meta) move(from, to Layout, area, slot []byte, uuid [16]byte) (committed bool, err error) {
	write := func(what string, b []byte, off int64) error {
		if _, err := m.md.WriteAt(b, off); err != nil {
			return fmt.Errorf("bitmap: grow: write %s at %d: %w", what, off, err)
		}
		return nil
	}
	flush := func(step string) error {
		if err := m.md.Flush(); err != nil {
			return fmt.Errorf("bitmap: grow: flush %s: %w", step, err)
		}
		return nil
	}
	oldEnd := from.MDOffset + from.MDSize
	if err := write("cleared superblock slot 0", make([]byte, SuperblockSize), to.SBOffset[0]); err != nil {
		return false, err
	}
	if err := write("forwarding block", encodeForward(oldEnd, uuid), to.SBOffset[1]); err != nil {
		return false, err
	}
	al := make([]byte, from.ALSize)
	if _, err := m.md.ReadAt(al, from.ALOffset); err != nil {
		return false, fmt.Errorf("bitmap: grow: read activity log at %d: %w", from.ALOffset, err)
	}
	if err := write("bitmap", area, to.BitmapOffset); err != nil {
		return false, err
	}
	if err := write("activity log", al, to.ALOffset); err != nil {
		return false, err
	}
	if err := flush("forwarding block, bitmap and activity log"); err != nil {
		return false, err
	}
	err = write("superblock", slot, to.SBOffset[0])
	if err == nil {
		err = flush("superblock")
	}
	if err != nil {
		if _, zerr := m.md.WriteAt(make([]byte, SuperblockSize), to.SBOffset[0]); zerr == nil {
			m.md.Flush()
		}
		return false, err
	}
	return true, nil
}

// growInPlace is an external Grow (the package comment); committed reports
// whether the new superblock is durable (an error after that is
// ErrGrownPartly). A failed superblock write leaves the spare slot
// ambiguous, as a failed Update does; the next Update overwrites it.
func (m *Meta) growInPlace(from, to Layout, area, slot []byte, nextSlot int) (committed bool, err error) {
	old := from.BitmapSize
	if _, err := m.md.WriteAt(area[old:], to.BitmapOffset+old); err != nil {
		return false, fmt.Errorf("bitmap: grow: write bitmap at %d: %w", to.BitmapOffset+old, err)
	}
	if err := m.md.Flush(); err != nil {
		return false, fmt.Errorf("bitmap: grow: flush bitmap: %w", err)
	}
	if _, err := m.md.WriteAt(slot, to.SBOffset[nextSlot]); err != nil {
		return false, fmt.Errorf("bitmap: grow: write superblock slot %d at %d: %w", nextSlot, to.SBOffset[nextSlot], err)
	}
	if err := m.md.Flush(); err != nil {
		return false, fmt.Errorf("bitmap: grow: flush superblock: %w", err)
	}
	// Committed. The rest is the in-memory bitmap over the old blocks.
	if _, err := m.md.WriteAt(area[:old], to.BitmapOffset); err != nil {
		return true, fmt.Errorf("%w: write bitmap at %d: %w", ErrGrownPartly, to.BitmapOffset, err)
	}
	if err := m.md.Flush(); err != nil {
		return true, fmt.Errorf("%w: flush bitmap: %w", ErrGrownPartly, err)
	}
	return true, nil
}

// ErrGrownPartly: Grow committed the new layout but a write after the
// commit failed; the metadata has the new size.
var ErrGrownPartly = errors.New("bitmap: grown, but a write after the commit failed")

// moved points the activity log at the grown metadata (Grow, txMu held).
func (a *ActivityLog) moved(to Layout) {
	a.mu.Lock()
	a.lay = to
	a.mu.Unlock()
	a.dataSize.Store(to.DataSize)
}

// lockLayout takes the locks a layout change (Grow, Shrink) holds
// throughout, in the order the rest of the package takes them: the
// activity log's transaction lock (if al is not nil), then updateMu, then
// bitmapMu. It returns the unlock.
func (m *Meta) lockLayout(al *ActivityLog) (unlock func()) {
	if al != nil {
		al.txMu.Lock()
	}
	m.updateMu.Lock()
	m.bitmapMu.Lock()
	return func() {
		m.bitmapMu.Unlock()
		m.updateMu.Unlock()
		if al != nil {
			al.txMu.Unlock()
		}
	}
}
