package replication

import "golang.org/x/sys/unix"

// smallWrite: a replicated write shorter than this is small for
// dropCleanCache, which runs at most once per dropEvery small writes.
const (
	smallWrite = 64 << 10
	dropEvery  = 1024
)

// dropCleanCache asks the kernel to drop the clean page cache of the
// data area of a Secondary (a node that is not Primary), after the flush
// of a barrier made it clean, when at least dropEvery small writes came
// since the last drop and they were at least half of all writes (the
// receiver counts them).
//
// A Secondary reads almost none of the data it writes (verify, a resync
// source, a Diskless peer's reads), so the cache of it only costs: its
// folios stay as large as the writes that made them (1 MiB after a
// sequential write), and every later 4 KiB write into such a folio walks
// all of its block heads (ext4_block_write_begin), as does its writeback.
// On this project's 2-core bench host that halved the Secondary's CPU per
// 4 KiB random write after a 1 MiB pre-fill (63 -> 30 us). DRBD's
// Secondary writes to the block device underneath and keeps no page cache
// of the data either.
//
// Not after mostly large writes: those write whole folios,
// which are cheap to reuse, and dropping them cost 1 MiB sequential writes
// about half again as much CPU (the early writeback below, and new folios
// for every write).
//
// Only pages that are clean and unlocked are dropped; POSIX_FADV_DONTNEED
// starts (does not wait for) writeback of pages dirtied since the flush,
// which the next barrier's flush would have written anyway. Dropping at
// every barrier cost a FLUSH after each 4 KiB write (fsync=1) 1.17x CPU. A disk
// without a file descriptor (an injected or fault-injecting one) is left
// alone.
func (r *Resource) dropCleanCache(b *backing) {
	if r.writable.Load() || len(b.closer) == 0 {
		return
	}
	f, ok := b.closer[0].(interface{ Fd() uintptr })
	if !ok {
		return
	}
	if err := unix.Fadvise(int(f.Fd()), 0, b.data.Size(), unix.FADV_DONTNEED); err != nil {
		r.log.Debug("dropping the page cache after a barrier", "err", err)
	}
}
