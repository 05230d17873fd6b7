package bench

import (
	"encoding/binary"
	"fmt"

	"github.com/cespare/xxhash/v2"
)

// A --verify block identifies itself:
//
//	0        8        16       24       32       40            bs
//	+--------+--------+--------+--------+--------+-- ... --------+
//	| magic  | run ID | offset |  seq   | xxh64  | filler        |
//	+--------+--------+--------+--------+--------+-- ... --------+
//
// and every further 512-byte sector starts with seq again, so a torn write
// (sectors from two versions) fails the checksum. xxh64 covers the whole
// block except its own 8 bytes. The run ID (from the seed and the start
// time) keeps blocks of an earlier run from passing; seq is unique per
// write in the run, so a lost or stale write is told from the latest one.
const (
	verifyMagic    = 0x7477696e62645631 // "twinbdV1"
	verifyHeader   = 40
	verifyMinBlock = 64
	verifySector   = 512
	// seqUnknown marks a block whose last write failed: its content is
	// not predictable and it is not checked.
	seqUnknown = ^uint64(0)
	// maxVerifyBlocks bounds the per-block bookkeeping (8 bytes a block).
	maxVerifyBlocks = 1 << 26
	// maxVerifyFailures is how many mismatches the result describes.
	maxVerifyFailures = 10
)

// VerifyResult is the data check of a --verify run.
type VerifyResult struct {
	// Blocks is how many block reads were checked (during the run and in
	// the final read-back).
	Blocks int64 `json:"blocks_checked"`
	// ReadBack is how many distinct written blocks the final pass read.
	ReadBack int64 `json:"blocks_read_back"`
	Errors   int64 `json:"errors"`
	// Failures describes the first mismatches.
	Failures []string `json:"failures,omitempty"`
}

// stampBlock fills b's header and sector stamps for a write of seq at off.
func stampBlock(b []byte, runID uint64, off int64, seq uint64, d *xxhash.Digest) {
	binary.LittleEndian.PutUint64(b[0:], verifyMagic)
	binary.LittleEndian.PutUint64(b[8:], runID)
	binary.LittleEndian.PutUint64(b[16:], uint64(off))
	binary.LittleEndian.PutUint64(b[24:], seq)
	for i := verifySector; i+8 <= len(b); i += verifySector {
		binary.LittleEndian.PutUint64(b[i:], seq)
	}
	binary.LittleEndian.PutUint64(b[32:], blockSum(b, d))
}

func blockSum(b []byte, d *xxhash.Digest) uint64 {
	d.Reset()
	_, _ = d.Write(b[:32])
	_, _ = d.Write(b[verifyHeader:])
	return d.Sum64()
}

// checkBlock returns nil when b is the write of seq at off from this run.
func checkBlock(b []byte, runID uint64, off int64, seq uint64, d *xxhash.Digest) error {
	le := binary.LittleEndian
	switch {
	case le.Uint64(b[0:]) != verifyMagic:
		return fmt.Errorf("block at %d: no verify header (never written, or overwritten by someone else)", off)
	case le.Uint64(b[8:]) != runID:
		return fmt.Errorf("block at %d: from another run (run %#x, want %#x)", off, le.Uint64(b[8:]), runID)
	case int64(le.Uint64(b[16:])) != off:
		return fmt.Errorf("block at %d: holds the block for offset %d (misdirected write)", off, int64(le.Uint64(b[16:])))
	case le.Uint64(b[32:]) != blockSum(b, d):
		return fmt.Errorf("block at %d: checksum mismatch (torn or corrupt; header seq %d, want %d)", off, le.Uint64(b[24:]), seq)
	case le.Uint64(b[24:]) != seq:
		return fmt.Errorf("block at %d: seq %d, want %d (lost or stale write)", off, le.Uint64(b[24:]), seq)
	}
	return nil
}
