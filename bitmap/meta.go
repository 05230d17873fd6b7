package bitmap

import (
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/twinbd/twinbd/device"
)

// Meta is an open metadata area. It is safe for concurrent use.
type Meta struct {
	md device.Device
	// lay changes only in Grow, with updateMu, bitmapMu and mu all held,
	// so holding any one of them is enough to read it.
	lay Layout

	// updateMu serializes Update: it guards the choice of the slot to write
	// and is the one lock held across disk I/O (a superblock write and its
	// flush), because two updates must never write the same slot at once.
	// Never taken while mu is held.
	updateMu sync.Mutex
	// bitmapMu serializes WriteBitmap and ReadBitmap (held across the area
	// I/O) so writers never interleave their words on disk and a reader
	// never sees half of a write.
	bitmapMu sync.Mutex

	mu     sync.Mutex // guards sb and newest; never held across I/O
	sb     Superblock
	newest int // slot holding sb

	bmWrites atomic.Int64
	detached atomic.Bool // Detach: nothing is written to md any more
}

// Detach stops every write to the metadata device: the disk under it
// failed. Update then changes only the in-memory superblock, and the bitmap
// writes do nothing; it cannot be undone (a replacement disk gets a new Meta).
func (m *Meta) Detach() { m.detached.Store(true) }

// Create writes fresh metadata for lay on md: superblock slot 0 from sb
// (only Resource, NodeID and LogicalBlockSize are taken from it; 0 means
// 4096), slot 1 zeroed, the activity log and the bitmap zeroed, then
// md.Flush. Sizes, offsets, granularity and AL slots come from lay, the
// metadata UUID is random, Seq is 1, generation UUIDs are 0 and no flag is
// set (disk state Inconsistent).
//
// Without force, Create refuses with ErrExists if either slot holds a valid
// superblock (or one of a newer format). With force the old superblocks are
// first zeroed and flushed, so a crash during Create leaves either the old
// metadata or none, never a mix of old and new.
func Create(md device.Device, lay Layout, sb Superblock, force bool) (*Meta, error) {
	if err := lay.check(md.Size()); err != nil {
		return nil, fmt.Errorf("bitmap: create: %w", err)
	}
	fresh := Superblock{
		Seq:              1,
		Resource:         sb.Resource,
		NodeID:           sb.NodeID,
		DataSize:         lay.DataSize,
		MDOffset:         lay.MDOffset,
		MDSize:           lay.MDSize,
		LogicalBlockSize: sb.LogicalBlockSize,
		Granularity:      uint32(lay.Granularity),
		ALSlots:          uint32(lay.ALSize / BlockSize),
	}
	if fresh.LogicalBlockSize == 0 {
		fresh.LogicalBlockSize = 4096
	}
	if _, err := rand.Read(fresh.MDUUID[:]); err != nil {
		return nil, fmt.Errorf("bitmap: create: metadata UUID: %w", err)
	}
	slot0, err := fresh.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("bitmap: create: %w", err)
	}

	if !force {
		for i, off := range lay.SBOffset {
			old, err := readSlot(md, off)
			switch {
			case err == nil:
				return nil, fmt.Errorf("%w: valid metadata for resource %s (node-id %d) already present in slot %d at offset %d; use --force to overwrite",
					ErrExists, old.Resource, old.NodeID, i, off)
			case errors.Is(err, ErrVersion):
				return nil, fmt.Errorf("%w: metadata of a newer format present in slot %d at offset %d (%v); use --force to overwrite",
					ErrExists, i, off, err)
			case errors.Is(err, ErrNoMetadata), errors.Is(err, ErrCorrupt):
			default:
				return nil, fmt.Errorf("bitmap: create: %w", err)
			}
		}
	}

	// Remove the old superblocks durably before touching anything they
	// describe.
	zero := make([]byte, SuperblockSize)
	for _, off := range lay.SBOffset {
		if _, err := md.WriteAt(zero, off); err != nil {
			return nil, fmt.Errorf("bitmap: create: zero superblock at %d: %w", off, err)
		}
	}
	if err := md.Flush(); err != nil {
		return nil, fmt.Errorf("bitmap: create: flush: %w", err)
	}
	if err := device.WriteZeroes(md, lay.ALOffset, lay.ALSize, false); err != nil {
		return nil, fmt.Errorf("bitmap: create: zero activity log at %d: %w", lay.ALOffset, err)
	}
	if err := device.WriteZeroes(md, lay.BitmapOffset, lay.BitmapSize, false); err != nil {
		return nil, fmt.Errorf("bitmap: create: zero bitmap at %d: %w", lay.BitmapOffset, err)
	}
	if _, err := md.WriteAt(slot0, lay.SBOffset[0]); err != nil {
		return nil, fmt.Errorf("bitmap: create: write superblock at %d: %w", lay.SBOffset[0], err)
	}
	if err := md.Flush(); err != nil {
		return nil, fmt.Errorf("bitmap: create: flush: %w", err)
	}
	return &Meta{md: md, lay: lay, sb: fresh, newest: 0}, nil
}

func readSlot(md device.Device, off int64) (Superblock, error) {
	b := make([]byte, SuperblockSize)
	if _, err := md.ReadAt(b, off); err != nil {
		return Superblock{}, fmt.Errorf("bitmap: read superblock at %d: %w", off, err)
	}
	return DecodeSuperblock(b)
}

// Open reads both superblock slots of lay on md and uses the valid one with
// the higher Seq (a torn or failed update leaves the other one valid).
// ErrNoMetadata if neither slot has the magic; ErrCorrupt, naming each slot
// and why, if the magic is there but no slot is valid; ErrVersion if a slot
// has a newer format (never rolled back to an older slot); ErrWrongSize if
// the superblock describes another layout than lay.
func Open(md device.Device, lay Layout) (*Meta, error) {
	if err := lay.check(md.Size()); err != nil {
		return nil, fmt.Errorf("bitmap: open: %w", err)
	}
	var (
		sbs  [2]Superblock
		errs [2]error
	)
	for i, off := range lay.SBOffset {
		sbs[i], errs[i] = readSlot(md, off)
		if errs[i] != nil && !errors.Is(errs[i], ErrNoMetadata) && !errors.Is(errs[i], ErrCorrupt) {
			return nil, fmt.Errorf("bitmap: open: slot %d: %w", i, errs[i]) // I/O error or ErrVersion
		}
	}
	newest := -1
	for i := range sbs {
		if errs[i] == nil && (newest < 0 || sbs[i].Seq > sbs[newest].Seq) {
			newest = i
		}
	}
	if newest < 0 {
		if errors.Is(errs[0], ErrNoMetadata) && errors.Is(errs[1], ErrNoMetadata) {
			return nil, fmt.Errorf("bitmap: open: %w at offsets %d and %d: run create-md",
				ErrNoMetadata, lay.SBOffset[0], lay.SBOffset[1])
		}
		return nil, fmt.Errorf("bitmap: open: %w: no valid superblock: slot 0 at %d: %v; slot 1 at %d: %v",
			ErrCorrupt, lay.SBOffset[0], errs[0], lay.SBOffset[1], errs[1])
	}
	sb := sbs[newest]
	if err := matchLayout(sb, lay); err != nil {
		return nil, fmt.Errorf("bitmap: open: %w", err)
	}
	return &Meta{md: md, lay: lay, sb: sb, newest: newest}, nil
}

// matchLayout reports ErrWrongSize unless sb describes lay.
func matchLayout(sb Superblock, lay Layout) error {
	if sb.DataSize != lay.DataSize {
		return fmt.Errorf("%w: metadata is for a device of %d bytes but the backing device now gives %d; restore the device's size (twinbd grows a device online with `twinbd resize`; it never shrinks a backing device, and a shrunk replicated device keeps its metadata at the old end), or run create-md (with --force to overwrite)",
			ErrWrongSize, sb.DataSize, lay.DataSize)
	}
	if sb.MDOffset != lay.MDOffset || sb.MDSize != lay.MDSize ||
		int64(sb.Granularity) != lay.Granularity || int64(sb.ALSlots)*BlockSize != lay.ALSize {
		return fmt.Errorf("%w: metadata area [%d, +%d) with granularity %d and %d AL slots does not match the configured [%d, +%d) with granularity %d and %d AL slots; check the resource's meta-disk and granularity",
			ErrWrongSize, sb.MDOffset, sb.MDSize, sb.Granularity, sb.ALSlots,
			lay.MDOffset, lay.MDSize, lay.Granularity, lay.ALSize/BlockSize)
	}
	return nil
}

// Superblock returns a copy of the current superblock.
func (m *Meta) Superblock() Superblock {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sb
}

// Layout returns the current layout: the one the metadata was opened or
// created with, or the last Grow's.
func (m *Meta) Layout() Layout {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lay
}

// Update applies fn to a copy of the superblock and writes it crash-atomically:
// Seq+1, written to the slot not holding the current superblock, then
// md.Flush. Only after the flush does the in-memory copy change; on any error
// it stays as it was and the error is returned wrapped. fn may change the
// generation UUIDs, flags, resource name, node-id and logical block size;
// changing the layout fields, Seq or MDUUID is refused with ErrInvalid.
// fn runs with no lock held except the one serializing updates, so it must
// not call Update itself.
func (m *Meta) Update(fn func(*Superblock)) error {
	m.updateMu.Lock()
	defer m.updateMu.Unlock()

	m.mu.Lock()
	old, newest := m.sb, m.newest
	m.mu.Unlock()

	next := old
	fn(&next)
	if next.Seq != old.Seq || next.MDUUID != old.MDUUID || next.DataSize != old.DataSize ||
		next.MDOffset != old.MDOffset || next.MDSize != old.MDSize ||
		next.Granularity != old.Granularity || next.ALSlots != old.ALSlots {
		return fmt.Errorf("bitmap: update: %w: Seq, MDUUID and the layout fields are fixed", ErrInvalid)
	}
	next.Seq++
	b, err := next.MarshalBinary()
	if err != nil {
		return fmt.Errorf("bitmap: update: %w", err)
	}
	slot := 1 - newest
	off := m.lay.SBOffset[slot]
	if m.detached.Load() {
		m.mu.Lock()
		m.sb = next
		m.mu.Unlock()
		return nil
	}
	if _, err := m.md.WriteAt(b, off); err != nil {
		return fmt.Errorf("bitmap: update: write superblock slot %d at %d: %w", slot, off, err)
	}
	if err := m.md.Flush(); err != nil {
		return fmt.Errorf("bitmap: update: flush superblock slot %d: %w", slot, err)
	}

	m.mu.Lock()
	m.sb, m.newest = next, slot
	m.mu.Unlock()
	return nil
}

// Check refuses metadata that does not belong to this resource, node and
// data size, each with a sentinel (ErrWrongResource, ErrWrongNode,
// ErrWrongSize) wrapped in a message that says what to do.
func (m *Meta) Check(resource string, nodeID int, dataSize int64) error {
	sb := m.Superblock()
	if sb.Resource != resource {
		return fmt.Errorf("%w: metadata belongs to resource %s, not %s: run create-md for %s (with --force to overwrite)",
			ErrWrongResource, sb.Resource, resource, resource)
	}
	if nodeID < 0 || int64(nodeID) != int64(sb.NodeID) {
		return fmt.Errorf("%w: metadata of resource %s belongs to node-id %d, not %d: check the node-id in the resource file, or run create-md (with --force to overwrite)",
			ErrWrongNode, sb.Resource, sb.NodeID, nodeID)
	}
	if sb.DataSize != dataSize {
		return fmt.Errorf("%w: metadata is for a device of %d bytes but the backing device now gives %d: restore the device size, or run create-md (with --force to overwrite)",
			ErrWrongSize, sb.DataSize, dataSize)
	}
	return nil
}

// ReadBitmap reads and decodes the on-disk bitmap area. ErrCorrupt if bits
// beyond the data size or the area's padding are set.
func (m *Meta) ReadBitmap() (*Bitmap, error) {
	m.bitmapMu.Lock() // never read half of a concurrent WriteBitmap
	lay := m.lay
	trimmed := m.Superblock().Flags&FlagBitmapTrimmed != 0
	b, err := New(lay.DataSize, lay.Granularity)
	if err != nil {
		m.bitmapMu.Unlock()
		return nil, fmt.Errorf("bitmap: read bitmap: %w", err)
	}
	buf := make([]byte, lay.BitmapSize)
	_, err = m.md.ReadAt(buf, lay.BitmapOffset)
	m.bitmapMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("bitmap: read bitmap at %d: %w", lay.BitmapOffset, err)
	}
	if trimmed {
		maskTail(buf, lay.DataSize, lay.Granularity) // an interrupted Shrink (shrink.go)
	}
	if err := b.UnmarshalBinary(buf); err != nil {
		return nil, fmt.Errorf("bitmap: read bitmap at %d: %w", lay.BitmapOffset, err)
	}
	return b, nil
}

// WriteBitmap writes b over the whole bitmap area (padding zeroed), then
// md.Flush. b must have the layout's data size and granularity. A crash
// during the write can leave a mix of old and new words; the activity log
// (FlagALClean cleared until this returns) covers that window.
func (m *Meta) WriteBitmap(b *Bitmap) error {
	m.bitmapMu.Lock() // before the snapshot: the last call's snapshot lands last
	defer m.bitmapMu.Unlock()
	if b.DataSize() != m.lay.DataSize || b.Granularity() != m.lay.Granularity {
		return fmt.Errorf("bitmap: write bitmap: %w: bitmap for %d bytes at granularity %d, metadata for %d at %d",
			ErrInvalid, b.DataSize(), b.Granularity(), m.lay.DataSize, m.lay.Granularity)
	}
	if m.detached.Load() {
		return nil
	}
	words, err := b.MarshalBinary()
	if err != nil {
		return fmt.Errorf("bitmap: write bitmap: %w", err)
	}
	buf := make([]byte, m.lay.BitmapSize)
	copy(buf, words)
	m.bmWrites.Add(1)
	if _, err := m.md.WriteAt(buf, m.lay.BitmapOffset); err != nil {
		return fmt.Errorf("bitmap: write bitmap at %d: %w", m.lay.BitmapOffset, err)
	}
	if err := m.md.Flush(); err != nil {
		return fmt.Errorf("bitmap: write bitmap: flush: %w", err)
	}
	return nil
}

// WriteBitmapRange writes the blocks of the bitmap area that hold the bits
// covering data bytes [off, off+length), then md.Flush: how the activity log
// writes back one extent's bits when it evicts it, without rewriting the
// whole area.
func (m *Meta) WriteBitmapRange(b *Bitmap, off, length int64) error {
	m.bitmapMu.Lock()
	defer m.bitmapMu.Unlock()
	if b.DataSize() != m.lay.DataSize || b.Granularity() != m.lay.Granularity {
		return fmt.Errorf("bitmap: write bitmap range: %w: bitmap does not match the layout", ErrInvalid)
	}
	b.mu.Lock()
	start, end, ok := b.clamp(off, length)
	b.mu.Unlock()
	if !ok || m.detached.Load() {
		return nil
	}
	words, err := b.MarshalBinary()
	if err != nil {
		return fmt.Errorf("bitmap: write bitmap range: %w", err)
	}
	firstByte := (start >> b.shift) / 8
	lastByte := ((end - 1) >> b.shift) / 8
	from := firstByte / BlockSize * BlockSize
	to := min((lastByte/BlockSize+1)*BlockSize, m.lay.BitmapSize)
	buf := make([]byte, to-from)
	if from < int64(len(words)) {
		copy(buf, words[from:min(to, int64(len(words)))])
	}
	m.bmWrites.Add(1)
	if _, err := m.md.WriteAt(buf, m.lay.BitmapOffset+from); err != nil {
		return fmt.Errorf("bitmap: write bitmap range at %d: %w", m.lay.BitmapOffset+from, err)
	}
	if err := m.md.Flush(); err != nil {
		return fmt.Errorf("bitmap: write bitmap range: flush: %w", err)
	}
	return nil
}

// BitmapWrites counts bitmap-area writes (whole or partial) since Open.
func (m *Meta) BitmapWrites() int64 { return m.bmWrites.Load() }
