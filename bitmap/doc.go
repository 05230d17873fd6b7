// Package bitmap is the on-disk metadata of a twinbd resource and the
// in-memory dirty bitmap: the superblock (sizes, generation UUIDs, flags),
// the activity-log area and the bitmap area, internal (at the end of the
// backing device) or external (at the start of a separate metadata device).
//
// # Layout
//
// All parts are multiples of 4 KiB (BlockSize). Internal metadata ends the
// backing device, its size rounded down to 4 KiB, with the two superblock
// slots last, so it is found from the device size alone (Locate). The data
// area is the largest that fits, or, after an online resize to an agreed
// size below that, the superblock's data size, with slack up to the
// metadata:
//
//	backing device (internal)
//	0                       DataSize   MDOffset                                  end
//	+-----------------------+----------+----------------+-----------+-----+-----+
//	| data (replicated)     | (slack)  | bitmap         | AL        | SB0 | SB1 |
//	+-----------------------+----------+----------------+-----------+-----+-----+
//	                                     BitmapSize       32 x 4KiB   4KiB  4KiB
//
//	metadata device (external)         data device: all data, rounded down to 4 KiB
//	0     4KiB  8KiB        136KiB                   MDSize
//	+-----+-----+-----------+------------------------+
//	| SB0 | SB1 | AL        | bitmap                 |
//	+-----+-----+-----------+------------------------+
//
// The bitmap has one bit per Granularity bytes of data (default 4 KiB, so
// 32 KiB of bitmap per GiB), stored as 64-bit little-endian words, bit i in
// word i/64 at position i%64, zero-padded to 4 KiB. The activity log is a
// ring of 32 transaction slots of 4 KiB, zeroed at create; each transaction
// holds the whole active extent set (at most MaxALExtents = 1014), its
// format and crash-safety argument are in al.go.
//
// A superblock slot (4096 bytes, integers big-endian):
//
//	off  size  field
//	  0     8  magic "TWINBDMD"
//	  8     4  format version (1)
//	 12     4  flags (FlagConsistent, ...)
//	 16     8  sequence number (+1 per write; the valid slot with the higher wins)
//	 24    16  metadata UUID (random at create)
//	 40     4  node-id
//	 44     4  logical block size (512 or 4096)
//	 48     4  bitmap granularity
//	 52     4  activity-log slots
//	 56     8  data size (bytes)
//	 64     8  metadata area offset
//	 72     8  metadata area size
//	 80     8  current UUID
//	 88     8  bitmap UUID
//	 96    16  history UUIDs [2]
//	112     2  resource name length (<= 64)
//	114    64  resource name, zero-padded
//	178  3910  reserved, zero
//	4088    8  xxhash64 of bytes [0, 4088)
//
// The magic, the version and the checksum keep their places in every format
// version, so an older build reports a newer format (ErrVersion) and never
// mistakes it for corruption.
//
// Growing (resize.go): Grow moves internal metadata to the new end of a
// grown device, leaving a forwarding block (magic "TWINBDFW") in a slot
// there until the new superblock is durable, so that Locate finds the old
// metadata after a crash in between; external metadata grows its bitmap in
// place. resize.go has the write order and the crash-safety argument.
//
// # Invariants
//
//   - Superblock updates are crash-atomic: Update writes the whole
//     superblock with Seq+1 to the slot that does not hold the current one,
//     then flushes; Open takes the valid (magic, checksum, fields) slot with
//     the higher Seq. A torn or failed write leaves at worst an invalid slot
//     next to the previous valid one, so Open returns the old or the new
//     superblock, never a mix.
//   - Metadata that does not match is refused, never overwritten: Open
//     refuses another layout (ErrWrongSize), Check another resource, node-id
//     or size, and Create refuses to overwrite valid metadata (ErrExists)
//     unless forced (--force).
//   - Decoding never panics on any input; a bad slot is ErrCorrupt.
//   - A bitmap bit is cleared only for a block wholly inside the cleared
//     range (see Bitmap.ClearRange).
//   - A write or flush error of metadata is always returned, and the
//     in-memory superblock then stays as it was.
//
// The on-disk bitmap has no checksum and a whole-area WriteBitmap is not
// atomic; the activity log covers that window (FlagALClean is set only after
// the bitmap has been written).
//
// # Concurrency
//
// Meta and Bitmap are safe for concurrent use by many goroutines. Meta's
// updates are serialized (one superblock write and flush at a time; Update's
// callback must not call Update); Superblock returns a copy and never waits
// for I/O. Bitmap's methods each hold its mutex briefly and never do I/O; Or
// copies the other bitmap first, so a.Or(b) and b.Or(a) cannot deadlock.
// Layout and Superblock are plain values.
package bitmap
