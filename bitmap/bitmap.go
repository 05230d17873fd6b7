package bitmap

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync"
)

// Bitmap is the in-memory dirty bitmap: bit i set means data bytes
// [i*granularity, (i+1)*granularity) may differ from the peer's. At the
// default 4 KiB granularity it takes 32 KiB per GiB of data. It is safe for
// concurrent use; each method holds an internal mutex for its whole (short,
// I/O-free) run. The data size only grows (Grow, by an online resize).
type Bitmap struct {
	granularity int64 // immutable, a power of two
	shift       uint  // log2(granularity), immutable

	mu       sync.Mutex // guards the fields below
	dataSize int64
	nbits    int64
	words    []uint64 // bit i is words[i/64] & (1 << (i%64)); bits >= nbits stay 0
}

// New returns an all-clear bitmap for dataSize bytes at granularity bytes
// per bit (0 means DefaultGranularity). ErrInvalid for a negative size or a
// granularity that is not a power of two in [MinGranularity, MaxGranularity].
func New(dataSize, granularity int64) (*Bitmap, error) {
	g, err := checkGranularity(granularity)
	if err != nil {
		return nil, err
	}
	if dataSize < 0 {
		return nil, fmt.Errorf("%w: data size %d", ErrInvalid, dataSize)
	}
	n := bitmapBits(dataSize, g)
	return &Bitmap{
		dataSize:    dataSize,
		granularity: g,
		shift:       uint(bits.TrailingZeros64(uint64(g))),
		nbits:       n,
		words:       make([]uint64, (n+63)/64),
	}, nil
}

// DataSize is the number of data bytes the bitmap covers.
func (b *Bitmap) DataSize() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dataSize
}

// Granularity is the number of data bytes per bit.
func (b *Bitmap) Granularity() int64 { return b.granularity }

// Len is the number of bits.
func (b *Bitmap) Len() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.nbits
}

// clamp cuts [off, off+length) to the data area without overflowing; ok
// is false if nothing is left. b.mu held.
func (b *Bitmap) clamp(off, length int64) (start, end int64, ok bool) {
	if length <= 0 || off >= b.dataSize {
		return 0, 0, false
	}
	if off < 0 {
		if length <= -off {
			return 0, 0, false
		}
		length += off
		off = 0
	}
	end = b.dataSize
	if length < b.dataSize-off {
		end = off + length
	}
	return off, end, true
}

// SetRange marks every block touched by [off, off+length) dirty. The parts of
// the range outside the data area are ignored.
func (b *Bitmap) SetRange(off, length int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	start, end, ok := b.clamp(off, length)
	if !ok {
		return
	}
	b.setBits(start>>b.shift, (end-1)>>b.shift+1)
}

// ClearRange marks clean only the blocks lying wholly inside [off,
// off+length): a write or resync of part of a block does not make the rest
// of it equal on both nodes, so clearing that bit would lose the difference
// (invariant 4). The last block, if the data size is not a multiple of the
// granularity, counts as whole when the range reaches the end of the data.
func (b *Bitmap) ClearRange(off, length int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	start, end, ok := b.clamp(off, length)
	if !ok {
		return
	}
	first := (start + b.granularity - 1) >> b.shift // round up
	last := end >> b.shift                          // exclusive, round down
	if end == b.dataSize {
		last = b.nbits
	}
	if first >= last {
		return
	}
	b.clearBits(first, last)
}

// setBits sets bits [from, to); b.mu held.
func (b *Bitmap) setBits(from, to int64) {
	for i := from; i < to; {
		w, bit := i/64, i%64
		n := min(64-bit, to-i)
		b.words[w] |= mask(bit, n)
		i += n
	}
}

// clearBits clears bits [from, to); b.mu held.
func (b *Bitmap) clearBits(from, to int64) {
	for i := from; i < to; {
		w, bit := i/64, i%64
		n := min(64-bit, to-i)
		b.words[w] &^= mask(bit, n)
		i += n
	}
}

// mask has n bits set starting at bit, 0 < n <= 64-bit.
func mask(bit, n int64) uint64 {
	if n == 64 {
		return ^uint64(0)
	}
	return ((1 << uint(n)) - 1) << uint(bit)
}

// SetAll marks every block dirty (a full sync).
func (b *Bitmap) SetAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.setBits(0, b.nbits)
}

// ClearAll marks every block clean.
func (b *Bitmap) ClearAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.words)
}

// Test reports whether the block holding data offset off is dirty; false
// outside the data area.
func (b *Bitmap) Test(off int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if off < 0 || off >= b.dataSize {
		return false
	}
	return b.testLocked(off >> b.shift)
}

// TestBit reports whether bit i is set; false outside [0, Len()).
func (b *Bitmap) TestBit(i int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.testLocked(i)
}

func (b *Bitmap) testLocked(i int64) bool {
	if i < 0 || i >= b.nbits {
		return false
	}
	return b.words[i/64]&(1<<uint(i%64)) != 0
}

// Count is the number of set bits.
func (b *Bitmap) Count() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.countLocked()
}

func (b *Bitmap) countLocked() int64 {
	var n int64
	for _, w := range b.words {
		n += int64(bits.OnesCount64(w))
	}
	return n
}

// Bytes is the number of data bytes the set bits cover; the last block, if
// partial, counts for its real size.
func (b *Bitmap) Bytes() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.countLocked() * b.granularity
	if b.testLocked(b.nbits - 1) {
		n -= b.nbits*b.granularity - b.dataSize
	}
	return n
}

// NextSet returns the first set bit at or after fromBit, or false if none.
func (b *Bitmap) NextSet(fromBit int64) (int64, bool) {
	if fromBit < 0 {
		fromBit = 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if fromBit >= b.nbits {
		return 0, false
	}
	w := fromBit / 64
	cur := b.words[w] &^ (1<<uint(fromBit%64) - 1)
	for {
		if cur != 0 {
			return w*64 + int64(bits.TrailingZeros64(cur)), true // bits >= nbits are always 0
		}
		w++
		if w >= int64(len(b.words)) {
			return 0, false
		}
		cur = b.words[w]
	}
}

// Or sets every bit set in other (as when both nodes' bitmaps are merged on
// connect). ErrInvalid unless both cover the same size at the same granularity.
func (b *Bitmap) Or(other *Bitmap) error {
	if other == b {
		return nil
	}
	// Copy first so the two locks are never held together (no lock order).
	src := other.Clone()
	b.mu.Lock()
	defer b.mu.Unlock()
	if src.dataSize != b.dataSize || src.granularity != b.granularity {
		return fmt.Errorf("%w: or of a bitmap for %d bytes at %d into one for %d at %d",
			ErrInvalid, src.dataSize, src.granularity, b.dataSize, b.granularity)
	}
	for i, w := range src.words {
		b.words[i] |= w
	}
	return nil
}

func (b *Bitmap) words64() []uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]uint64(nil), b.words...)
}

// Clone returns an independent copy.
func (b *Bitmap) Clone() *Bitmap {
	b.mu.Lock()
	defer b.mu.Unlock()
	return &Bitmap{
		dataSize:    b.dataSize,
		granularity: b.granularity,
		shift:       b.shift,
		nbits:       b.nbits,
		words:       append([]uint64(nil), b.words...),
	}
}

// Grow extends the bitmap to cover dataSize bytes; the new bits are clear.
// ErrInvalid for a smaller size (Grow never drops bits; a shrink of the
// device goes through Meta.Shrink, which cuts the bitmap with shrink).
func (b *Bitmap) Grow(dataSize int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if dataSize < b.dataSize {
		return fmt.Errorf("%w: grow a bitmap for %d bytes to %d", ErrInvalid, b.dataSize, dataSize)
	}
	// Bits from nbits up in the last word are clear (the invariant), so
	// they become the clear bits of the blocks the growth adds.
	b.dataSize = dataSize
	b.nbits = bitmapBits(dataSize, b.granularity)
	if n := (b.nbits + 63) / 64; n > int64(len(b.words)) {
		b.words = append(b.words, make([]uint64, n-int64(len(b.words)))...)
	}
	return nil
}

// MarshalBinary encodes the bitmap as its 64-bit words, little-endian, bit i
// in word i/64 at position i%64: ceil(Len()/64)*8 bytes. The on-disk area is
// this, zero-padded to BlockSize.
func (b *Bitmap) MarshalBinary() ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]byte, len(b.words)*8)
	for i, w := range b.words {
		binary.LittleEndian.PutUint64(out[i*8:], w)
	}
	return out, nil
}

// UnmarshalBinary replaces the bits of b (already sized by New) with data as
// MarshalBinary encodes it, followed by any number of zero padding bytes.
// ErrCorrupt, leaving b unchanged, if data is too short, a bit beyond Len()
// is set or the padding is not zero.
func (b *Bitmap) UnmarshalBinary(data []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	need := len(b.words) * 8
	if len(data) < need {
		return fmt.Errorf("%w: bitmap of %d bytes, want at least %d", ErrCorrupt, len(data), need)
	}
	words := make([]uint64, len(b.words))
	for i := range words {
		words[i] = binary.LittleEndian.Uint64(data[i*8:])
	}
	if tail := b.nbits % 64; tail != 0 && words[len(words)-1]>>uint(tail) != 0 {
		return fmt.Errorf("%w: bitmap has bits set beyond bit %d", ErrCorrupt, b.nbits)
	}
	for i, c := range data[need:] {
		if c != 0 {
			return fmt.Errorf("%w: bitmap padding byte %d is not zero", ErrCorrupt, need+i)
		}
	}
	b.words = words
	return nil
}

// Words returns a copy of the bitmap's 64-bit words (bit i in word i/64 at
// position i%64), for sending to the peer.
func (b *Bitmap) Words() []uint64 { return b.words64() }

// OrWords ORs words into the bitmap starting at word index at. ErrInvalid if
// they run past the end or set bits beyond Len.
func (b *Bitmap) OrWords(at int64, words []uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if at < 0 || at > int64(len(b.words)) || int64(len(words)) > int64(len(b.words))-at {
		return fmt.Errorf("%w: %d words at word %d of %d", ErrInvalid, len(words), at, len(b.words))
	}
	if n := int64(len(words)); n > 0 && at+n == int64(len(b.words)) {
		if tail := b.nbits % 64; tail != 0 && words[n-1]>>uint(tail) != 0 {
			return fmt.Errorf("%w: bits beyond bit %d", ErrInvalid, b.nbits)
		}
	}
	for i, w := range words {
		b.words[at+int64(i)] |= w
	}
	return nil
}

// CountRange is the number of set bits among those covering [off, off+length).
func (b *Bitmap) CountRange(off, length int64) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	start, end, ok := b.clamp(off, length)
	if !ok {
		return 0
	}
	var n int64
	for i := start >> b.shift; i <= (end-1)>>b.shift; i++ {
		if b.words[i/64]&(1<<uint(i%64)) != 0 {
			n++
		}
	}
	return n
}
