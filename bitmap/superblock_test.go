package bitmap

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/stretchr/testify/require"
)

func sampleSuperblock() Superblock {
	return Superblock{
		Seq:              42,
		Resource:         "r0",
		MDUUID:           [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		NodeID:           1,
		DataSize:         gib,
		MDOffset:         0,
		MDSize:           MDSizeFor(gib, 0),
		LogicalBlockSize: 4096,
		Granularity:      4096,
		ALSlots:          DefaultALSlots,
		Current:          0xdeadbeef00000001,
		Bitmap:           0x1234,
		History:          [2]uint64{0xaaaa, 0xbbbb},
		Flags:            FlagConsistent | FlagWasUpToDate | FlagALClean,
	}
}

func TestSuperblockRoundTrip(t *testing.T) {
	sb := sampleSuperblock()
	b, err := sb.MarshalBinary()
	require.NoError(t, err)
	require.Len(t, b, SuperblockSize)
	require.Equal(t, "TWINBDMD", string(b[:8]))
	require.Equal(t, uint32(1), binary.BigEndian.Uint32(b[8:]))
	got, err := DecodeSuperblock(b)
	require.NoError(t, err)
	require.Equal(t, sb, got)

	sb.Resource = strings.Repeat("x", MaxResourceName)
	sb.LogicalBlockSize = 512
	sb.Flags = allFlags
	b, err = sb.MarshalBinary()
	require.NoError(t, err)
	got, err = DecodeSuperblock(b)
	require.NoError(t, err)
	require.Equal(t, sb, got)
}

func TestSuperblockMarshalRefusesInvalid(t *testing.T) {
	for name, mutate := range map[string]func(*Superblock){
		"seq 0":         func(s *Superblock) { s.Seq = 0 },
		"zero uuid":     func(s *Superblock) { s.MDUUID = [16]byte{} },
		"empty name":    func(s *Superblock) { s.Resource = "" },
		"long name":     func(s *Superblock) { s.Resource = strings.Repeat("x", MaxResourceName+1) },
		"control char":  func(s *Superblock) { s.Resource = "r\x00" },
		"bad utf8":      func(s *Superblock) { s.Resource = "r\xff" },
		"lbs":           func(s *Superblock) { s.LogicalBlockSize = 1024 },
		"granularity":   func(s *Superblock) { s.Granularity = 3000 },
		"al slots":      func(s *Superblock) { s.ALSlots = 0 },
		"data size":     func(s *Superblock) { s.DataSize = gib + 1 },
		"negative data": func(s *Superblock) { s.DataSize = -gib },
		"md size":       func(s *Superblock) { s.MDSize += BlockSize },
		"md offset":     func(s *Superblock) { s.MDOffset = 17 },
		"md overflow":   func(s *Superblock) { s.MDOffset = 1<<63 - BlockSize },
		"unknown flags": func(s *Superblock) { s.Flags |= 1 << 20 },
	} {
		sb := sampleSuperblock()
		mutate(&sb)
		_, err := sb.MarshalBinary()
		require.ErrorIs(t, err, ErrInvalid, name)
	}
}

// reseal recomputes the checksum after a test edits a field by hand.
func reseal(b []byte) {
	binary.BigEndian.PutUint64(b[offChecksum:], xxhash.Sum64(b[:offChecksum]))
}

func TestDecodeSuperblockErrors(t *testing.T) {
	good, err := new(sampleSuperblock()).MarshalBinary()
	require.NoError(t, err)

	_, err = DecodeSuperblock(make([]byte, SuperblockSize))
	require.ErrorIs(t, err, ErrNoMetadata)
	_, err = DecodeSuperblock(nil)
	require.ErrorIs(t, err, ErrNoMetadata)
	_, err = DecodeSuperblock(good[:SuperblockSize-1])
	require.ErrorIs(t, err, ErrCorrupt)
	_, err = DecodeSuperblock(append(good[:SuperblockSize:SuperblockSize], 0))
	require.ErrorIs(t, err, ErrCorrupt)

	// A newer format with a valid checksum is ErrVersion, not ErrCorrupt.
	b := append([]byte(nil), good...)
	binary.BigEndian.PutUint32(b[offVersion:], 2)
	reseal(b)
	_, err = DecodeSuperblock(b)
	require.ErrorIs(t, err, ErrVersion)
	require.NotErrorIs(t, err, ErrCorrupt)

	// Impossible fields behind a valid checksum are ErrCorrupt.
	for name, edit := range map[string]func([]byte){
		"name length":   func(b []byte) { binary.BigEndian.PutUint16(b[offNameLen:], MaxResourceName+1) },
		"name length 0": func(b []byte) { binary.BigEndian.PutUint16(b[offNameLen:], 0) },
		"reserved":      func(b []byte) { b[offChecksum-1] = 1 },
		"name pad":      func(b []byte) { b[offName+MaxResourceName-1] = 'x' },
		"granularity":   func(b []byte) { binary.BigEndian.PutUint32(b[offGranularity:], 0) },
		"data size":     func(b []byte) { binary.BigEndian.PutUint64(b[offDataSize:], 1<<63) },
		"flags":         func(b []byte) { binary.BigEndian.PutUint32(b[offFlags:], 0xffffffff) },
		"seq":           func(b []byte) { binary.BigEndian.PutUint64(b[offSeq:], 0) },
	} {
		b := append([]byte(nil), good...)
		edit(b)
		reseal(b)
		_, err := DecodeSuperblock(b)
		require.ErrorIs(t, err, ErrCorrupt, name)
	}
}

// Flipping any bit anywhere is detected: ErrNoMetadata when it hits the
// magic, ErrCorrupt everywhere else (the version field included: the
// checksum is verified first).
func TestDecodeSuperblockEveryBitFlip(t *testing.T) {
	good, err := new(sampleSuperblock()).MarshalBinary()
	require.NoError(t, err)
	b := append([]byte(nil), good...)
	for i := range b {
		for bit := range 8 {
			b[i] ^= 1 << bit
			_, err := DecodeSuperblock(b)
			if i < len(Magic) {
				require.ErrorIs(t, err, ErrNoMetadata, "byte %d bit %d", i, bit)
			} else {
				require.ErrorIs(t, err, ErrCorrupt, "byte %d bit %d", i, bit)
			}
			b[i] ^= 1 << bit
		}
	}
}

func TestFlagsString(t *testing.T) {
	require.Equal(t, "0", Flags(0).String())
	require.Equal(t, "Consistent|ALClean", (FlagConsistent | FlagALClean).String())
	require.Equal(t, "FullSyncNeeded|0x100", (FlagFullSyncNeeded | 0x100).String())
	sb := Superblock{Flags: FlagPrimaryInd | FlagOutdated}
	require.True(t, sb.Has(FlagPrimaryInd))
	require.True(t, sb.Has(FlagPrimaryInd|FlagOutdated))
	require.False(t, sb.Has(FlagPrimaryInd|FlagConsistent))
}
