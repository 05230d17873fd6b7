package bitmap

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/cespare/xxhash/v2"
)

// Magic opens every superblock.
const Magic = "TWINBDMD"

// FormatVersion is the superblock format this build writes and reads. The
// magic, the version field and the trailing checksum keep their places in
// every future version, so an old build can always tell "newer format"
// (ErrVersion) from "corrupt" (ErrCorrupt).
const FormatVersion = 1

// MaxResourceName is the longest resource name a superblock holds, in bytes.
const MaxResourceName = 64

// Superblock field offsets (big-endian); see doc.go for the picture.
const (
	offMagic       = 0
	offVersion     = 8
	offFlags       = 12
	offSeq         = 16
	offMDUUID      = 24
	offNodeID      = 40
	offLBS         = 44
	offGranularity = 48
	offALSlots     = 52
	offDataSize    = 56
	offMDOffset    = 64
	offMDSize      = 72
	offCurrent     = 80
	offBitmap      = 88
	offHistory     = 96
	offNameLen     = 112
	offName        = 114
	offReserved    = offName + MaxResourceName // zero up to the checksum
	offChecksum    = SuperblockSize - 8
)

// Flags are the persistent disk flags, DRBD's MDF_* analogues. The disk
// state at attach is derived from them; it is not stored.
type Flags uint32

const (
	// FlagConsistent: the data is consistent (a resync is not half done).
	FlagConsistent Flags = 1 << iota
	// FlagWasUpToDate: the disk was UpToDate when last attached.
	FlagWasUpToDate
	// FlagPrimaryInd: set while Primary; seen at startup it means the node
	// crashed while Primary.
	FlagPrimaryInd
	// FlagCrashedPrimary: the node crashed while Primary (kept until the
	// activity log has been resynced).
	FlagCrashedPrimary
	// FlagALClean: the activity log was cleanly written out (bitmap on disk
	// covers every write), so no AL extents need resync.
	FlagALClean
	// FlagOutdated: the peer has newer data; this disk must not be promoted.
	FlagOutdated
	// FlagFullSyncNeeded: a full sync is needed (set by create-md with
	// data on the peer, or invalidate).
	FlagFullSyncNeeded
	// FlagBitmapTrimmed: a Shrink is (or was) under way, so the bitmap
	// area may hold set bits past the data size and non-zero padding:
	// ReadBitmap drops them instead of reporting ErrCorrupt
	// (bitmap/shrink.go). Cleared by the Shrink's last step.
	FlagBitmapTrimmed

	allFlags = FlagConsistent | FlagWasUpToDate | FlagPrimaryInd | FlagCrashedPrimary |
		FlagALClean | FlagOutdated | FlagFullSyncNeeded | FlagBitmapTrimmed
)

var flagNames = []string{"Consistent", "WasUpToDate", "PrimaryInd", "CrashedPrimary", "ALClean", "Outdated", "FullSyncNeeded", "BitmapTrimmed"}

// String lists the set flags, "Consistent|ALClean", or "0".
func (f Flags) String() string {
	var parts []string
	for i, name := range flagNames {
		if f&(1<<i) != 0 {
			parts = append(parts, name)
		}
	}
	if rest := f &^ allFlags; rest != 0 {
		parts = append(parts, fmt.Sprintf("%#x", uint32(rest)))
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, "|")
}

// Superblock is the decoded metadata superblock.
type Superblock struct {
	// Seq grows by one per write; of two valid slots the higher wins.
	Seq uint64
	// Resource is the resource name, 1..MaxResourceName bytes.
	Resource string
	// MDUUID identifies this metadata instance; random at create.
	MDUUID [16]byte
	NodeID uint32
	// DataSize is the replicated data size in bytes.
	DataSize int64
	// MDOffset and MDSize locate the metadata area on its device.
	MDOffset, MDSize int64
	// LogicalBlockSize is 512 or 4096.
	LogicalBlockSize uint32
	// Granularity is the number of data bytes per bitmap bit.
	Granularity uint32
	// ALSlots is the number of activity-log transaction slots.
	ALSlots uint32
	// Generation identifiers (DRBD-NOTES.md, "Generation identifiers").
	Current, Bitmap uint64
	History         [2]uint64
	Flags           Flags
}

// Has reports whether every flag in f is set.
func (s *Superblock) Has(f Flags) bool { return s.Flags&f == f }

// validate reports the first impossible field, or nil.
func (s *Superblock) validate() error {
	switch {
	case s.Seq == 0:
		return fmt.Errorf("sequence number 0")
	case s.MDUUID == [16]byte{}:
		return fmt.Errorf("metadata UUID is zero")
	case len(s.Resource) == 0 || len(s.Resource) > MaxResourceName:
		return fmt.Errorf("resource name of %d bytes (want 1..%d)", len(s.Resource), MaxResourceName)
	case !validName(s.Resource):
		return fmt.Errorf("resource name %q is not printable UTF-8", s.Resource)
	case s.LogicalBlockSize != 512 && s.LogicalBlockSize != 4096:
		return fmt.Errorf("logical block size %d (want 512 or 4096)", s.LogicalBlockSize)
	case !validGranularity(int64(s.Granularity)):
		return fmt.Errorf("bitmap granularity %d", s.Granularity)
	case s.ALSlots == 0 || s.ALSlots > 1<<16:
		return fmt.Errorf("activity-log slots %d", s.ALSlots)
	case s.DataSize < MinDataSize || s.DataSize%BlockSize != 0:
		return fmt.Errorf("data size %d", s.DataSize)
	case s.MDOffset < 0 || s.MDOffset%BlockSize != 0:
		return fmt.Errorf("metadata offset %d", s.MDOffset)
	case s.MDSize != superblockArea+int64(s.ALSlots)*BlockSize+bitmapAreaSize(s.DataSize, int64(s.Granularity)):
		return fmt.Errorf("metadata size %d does not fit data size %d, granularity %d, %d AL slots",
			s.MDSize, s.DataSize, s.Granularity, s.ALSlots)
	case s.MDOffset > math.MaxInt64-s.MDSize:
		return fmt.Errorf("metadata area [%d, +%d) overflows", s.MDOffset, s.MDSize)
	case s.Flags&^allFlags != 0:
		return fmt.Errorf("unknown flags %#x", uint32(s.Flags&^allFlags))
	}
	return nil
}

func validName(name string) bool {
	if !utf8.ValidString(name) {
		return false
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// MarshalBinary encodes s into one SuperblockSize slot. It refuses (with
// ErrInvalid) a superblock DecodeSuperblock would refuse.
func (s *Superblock) MarshalBinary() ([]byte, error) {
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("%w: superblock: %v", ErrInvalid, err)
	}
	b := make([]byte, SuperblockSize)
	be := binary.BigEndian
	copy(b[offMagic:], Magic)
	be.PutUint32(b[offVersion:], FormatVersion)
	be.PutUint32(b[offFlags:], uint32(s.Flags))
	be.PutUint64(b[offSeq:], s.Seq)
	copy(b[offMDUUID:], s.MDUUID[:])
	be.PutUint32(b[offNodeID:], s.NodeID)
	be.PutUint32(b[offLBS:], s.LogicalBlockSize)
	be.PutUint32(b[offGranularity:], s.Granularity)
	be.PutUint32(b[offALSlots:], s.ALSlots)
	be.PutUint64(b[offDataSize:], uint64(s.DataSize))
	be.PutUint64(b[offMDOffset:], uint64(s.MDOffset))
	be.PutUint64(b[offMDSize:], uint64(s.MDSize))
	be.PutUint64(b[offCurrent:], s.Current)
	be.PutUint64(b[offBitmap:], s.Bitmap)
	be.PutUint64(b[offHistory:], s.History[0])
	be.PutUint64(b[offHistory+8:], s.History[1])
	be.PutUint16(b[offNameLen:], uint16(len(s.Resource)))
	copy(b[offName:], s.Resource)
	be.PutUint64(b[offChecksum:], xxhash.Sum64(b[:offChecksum]))
	return b, nil
}

// DecodeSuperblock decodes one slot. ErrNoMetadata if the magic is absent
// (for example an all-zero slot); ErrVersion for a format version other than
// FormatVersion; ErrCorrupt for a wrong length, a checksum mismatch, a
// non-zero reserved byte or an impossible field. It never panics.
func DecodeSuperblock(b []byte) (Superblock, error) {
	if len(b) < len(Magic) || string(b[:len(Magic)]) != Magic {
		return Superblock{}, fmt.Errorf("%w: magic %q absent", ErrNoMetadata, Magic)
	}
	if len(b) != SuperblockSize {
		return Superblock{}, fmt.Errorf("%w: superblock of %d bytes, want %d", ErrCorrupt, len(b), SuperblockSize)
	}
	be := binary.BigEndian
	if got, want := xxhash.Sum64(b[:offChecksum]), be.Uint64(b[offChecksum:]); got != want {
		return Superblock{}, fmt.Errorf("%w: superblock checksum %#016x, stored %#016x", ErrCorrupt, got, want)
	}
	if v := be.Uint32(b[offVersion:]); v != FormatVersion {
		return Superblock{}, fmt.Errorf("%w: format version %d, this build reads version %d", ErrVersion, v, FormatVersion)
	}
	nameLen := int(be.Uint16(b[offNameLen:]))
	if nameLen > MaxResourceName {
		return Superblock{}, fmt.Errorf("%w: resource name length %d", ErrCorrupt, nameLen)
	}
	for i := offName + nameLen; i < offChecksum; i++ {
		if b[i] != 0 {
			return Superblock{}, fmt.Errorf("%w: non-zero reserved byte at offset %d", ErrCorrupt, i)
		}
	}
	s := Superblock{
		Flags:            Flags(be.Uint32(b[offFlags:])),
		Seq:              be.Uint64(b[offSeq:]),
		NodeID:           be.Uint32(b[offNodeID:]),
		LogicalBlockSize: be.Uint32(b[offLBS:]),
		Granularity:      be.Uint32(b[offGranularity:]),
		ALSlots:          be.Uint32(b[offALSlots:]),
		DataSize:         int64(be.Uint64(b[offDataSize:])),
		MDOffset:         int64(be.Uint64(b[offMDOffset:])),
		MDSize:           int64(be.Uint64(b[offMDSize:])),
		Current:          be.Uint64(b[offCurrent:]),
		Bitmap:           be.Uint64(b[offBitmap:]),
		History:          [2]uint64{be.Uint64(b[offHistory:]), be.Uint64(b[offHistory+8:])},
		Resource:         string(b[offName : offName+nameLen]),
	}
	copy(s.MDUUID[:], b[offMDUUID:])
	if err := s.validate(); err != nil {
		return Superblock{}, fmt.Errorf("%w: superblock: %v", ErrCorrupt, err)
	}
	return s, nil
}
