package bitmap

import (
	"fmt"
	"math/bits"
)

// Sizes of the fixed parts of the metadata area.
const (
	// BlockSize is the unit of the metadata area: every part starts and
	// ends on a multiple of it, and the data area is rounded down to it.
	BlockSize = 4096
	// SuperblockSize is the size of one superblock slot.
	SuperblockSize = BlockSize
	// DefaultALSlots is the number of activity-log transaction slots.
	DefaultALSlots = 32
	// DefaultGranularity is the number of data bytes one bitmap bit covers.
	DefaultGranularity = 4096
	// MinGranularity and MaxGranularity bound the bitmap granularity (a
	// power of two).
	MinGranularity = 512
	MaxGranularity = 1 << 30
	// MinDataSize is the smallest data area a layout accepts.
	MinDataSize = 1 << 20

	superblockArea = 2 * SuperblockSize
	alSize         = DefaultALSlots * BlockSize
)

// Layout says where the data and each part of the metadata area live. Build
// it with InternalLayout or ExternalLayout; all offsets are absolute offsets
// on the metadata device (the backing device when Internal).
type Layout struct {
	Internal bool
	// DataSize is the number of bytes replicated; a multiple of BlockSize.
	// The data area is [0, DataSize) of the backing device.
	DataSize int64
	// MDOffset and MDSize bound the whole metadata area.
	MDOffset, MDSize int64
	// SBOffset are the two superblock slots.
	SBOffset         [2]int64
	ALOffset, ALSize int64
	BitmapOffset     int64
	BitmapSize       int64
	Granularity      int64
}

// validGranularity reports whether g is a power of two in range.
func validGranularity(g int64) bool {
	return g >= MinGranularity && g <= MaxGranularity && bits.OnesCount64(uint64(g)) == 1
}

// bitmapBits is the number of bits covering dataSize bytes.
func bitmapBits(dataSize, granularity int64) int64 {
	n := dataSize / granularity
	if dataSize%granularity != 0 {
		n++
	}
	return n
}

// bitmapAreaSize is the on-disk size of the bitmap: whole 64-bit words,
// rounded up to BlockSize.
func bitmapAreaSize(dataSize, granularity int64) int64 {
	words := (bitmapBits(dataSize, granularity) + 63) / 64
	return roundUp(words*8, BlockSize)
}

func roundUp(n, to int64) int64   { return (n + to - 1) / to * to }
func roundDown(n, to int64) int64 { return n / to * to }

// MDSizeFor is the size of the metadata area for dataSize bytes of data:
// two superblock slots, the activity log and the bitmap. It returns 0 for a
// negative size or an invalid granularity (see InternalLayout); a granularity
// of 0 means DefaultGranularity.
func MDSizeFor(dataSize, granularity int64) int64 {
	if granularity == 0 {
		granularity = DefaultGranularity
	}
	if dataSize < 0 || !validGranularity(granularity) {
		return 0
	}
	return superblockArea + alSize + bitmapAreaSize(dataSize, granularity)
}

func checkGranularity(granularity int64) (int64, error) {
	if granularity == 0 {
		return DefaultGranularity, nil
	}
	if !validGranularity(granularity) {
		return 0, fmt.Errorf("%w: granularity %d is not a power of two between %d and %d",
			ErrInvalid, granularity, MinGranularity, MaxGranularity)
	}
	return granularity, nil
}

// InternalLayout places the metadata at the end of a backing device of
// backingSize bytes and gives the rest (rounded down to BlockSize) to data:
// the largest DataSize with DataSize + MDSize <= backingSize. The superblock
// slots are the last two blocks of the device (after rounding its size down
// to BlockSize), so the metadata is found from the device size alone. A
// granularity of 0 means DefaultGranularity. ErrTooSmall if less than
// MinDataSize of data fits.
func InternalLayout(backingSize, granularity int64) (Layout, error) {
	g, err := checkGranularity(granularity)
	if err != nil {
		return Layout{}, err
	}
	end := roundDown(max(backingSize, 0), BlockSize)
	// Largest n (in blocks) with n*BlockSize + MDSizeFor(n*BlockSize) <= end;
	// MDSizeFor is monotonic, so binary search.
	lo, hi := int64(0), end/BlockSize
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		if d := mid * BlockSize; d <= end-MDSizeFor(d, g) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	data := lo * BlockSize
	if data < MinDataSize {
		return Layout{}, fmt.Errorf("%w: backing device of %d bytes leaves %d bytes of data after internal metadata; it needs at least %d bytes",
			ErrTooSmall, backingSize, data, MinDataSize+MDSizeFor(MinDataSize, g))
	}
	md := MDSizeFor(data, g)
	return canonical(true, data, g, end-md), nil
}

// ExternalLayout puts the metadata at offset 0 of a separate metadata device
// of metaDevSize bytes; the data area is the whole data device (rounded down
// to BlockSize). A granularity of 0 means DefaultGranularity. ErrTooSmall if
// the data device is under MinDataSize or the metadata device cannot hold
// the area (the message says how big it must be).
func ExternalLayout(dataDevSize, metaDevSize, granularity int64) (Layout, error) {
	g, err := checkGranularity(granularity)
	if err != nil {
		return Layout{}, err
	}
	data := roundDown(max(dataDevSize, 0), BlockSize)
	if data < MinDataSize {
		return Layout{}, fmt.Errorf("%w: data device of %d bytes is under the minimum of %d bytes",
			ErrTooSmall, dataDevSize, MinDataSize)
	}
	md := MDSizeFor(data, g)
	if metaDevSize < md {
		return Layout{}, fmt.Errorf("%w: metadata device of %d bytes is too small: %d bytes of data need a metadata device of at least %d bytes (%d KiB)",
			ErrTooSmall, metaDevSize, data, md, md/1024)
	}
	return canonical(false, data, g, 0), nil
}

// canonical is the one layout for these parameters: external areas run
// superblocks, AL, bitmap from mdOffset; internal ones run bitmap, AL,
// superblocks so that the superblocks end the device.
func canonical(internal bool, data, g, mdOffset int64) Layout {
	l := Layout{
		Internal:    internal,
		DataSize:    data,
		MDOffset:    mdOffset,
		MDSize:      MDSizeFor(data, g),
		ALSize:      alSize,
		BitmapSize:  bitmapAreaSize(data, g),
		Granularity: g,
	}
	if internal {
		l.BitmapOffset = mdOffset
		l.ALOffset = l.BitmapOffset + l.BitmapSize
		l.SBOffset = [2]int64{l.ALOffset + l.ALSize, l.ALOffset + l.ALSize + SuperblockSize}
	} else {
		l.SBOffset = [2]int64{mdOffset, mdOffset + SuperblockSize}
		l.ALOffset = mdOffset + superblockArea
		l.BitmapOffset = l.ALOffset + l.ALSize
	}
	return l
}

// check reports whether l is a layout InternalLayout or ExternalLayout could
// have built and whether it fits a metadata device of mdDevSize bytes. It
// guards Create and Open against hand-built layouts.
func (l Layout) check(mdDevSize int64) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: layout: %s", ErrInvalid, why)
	}
	switch {
	case !validGranularity(l.Granularity):
		return bad(fmt.Sprintf("granularity %d", l.Granularity))
	case l.DataSize < MinDataSize || l.DataSize%BlockSize != 0:
		return bad(fmt.Sprintf("data size %d", l.DataSize))
	case l.MDOffset < 0 || l.MDOffset%BlockSize != 0:
		return bad(fmt.Sprintf("metadata offset %d", l.MDOffset))
	case l != canonical(l.Internal, l.DataSize, l.Granularity, l.MDOffset):
		return bad(fmt.Sprintf("%+v is not a layout InternalLayout or ExternalLayout builds", l))
	case l.MDOffset > mdDevSize-l.MDSize:
		return bad(fmt.Sprintf("metadata area [%d, +%d) outside a device of %d bytes", l.MDOffset, l.MDSize, mdDevSize))
	case l.Internal && l.DataSize > l.MDOffset:
		return bad(fmt.Sprintf("data area [0, %d) overlaps metadata at %d", l.DataSize, l.MDOffset))
	}
	return nil
}
