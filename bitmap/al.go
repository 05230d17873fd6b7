package bitmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	"github.com/twinbd/twinbd/device"
)

// The activity log (DRBD's AL) is the set of "hot" extents of the data area
// in which writes may be in flight. An extent enters it durably, by a
// transaction written to the AL area and flushed, before Begin lets a write
// to it proceed; so after a crash of a Primary every block written since the
// bitmap was last written out lies either in a Recovered extent or in a bit
// of the on-disk bitmap.
//
// # On-disk transaction
//
// The AL area (Layout.ALOffset, Layout.ALSize: DefaultALSlots slots of
// BlockSize) is a ring of transaction slots. Transaction number tr (1, 2, ...)
// always lives in slot (tr-1) mod slots. Each transaction holds the complete
// active set, so one valid slot is enough to recover (no replay of
// increments). A slot (4096 bytes, integers big-endian):
//
//	off  size  field
//	  0     8  magic "TWINBDAL"
//	  8     4  format version (1)
//	 12     4  number of extents n (<= MaxALExtents)
//	 16     8  transaction number tr (1 .. 2^62)
//	 24     8  extent size in bytes (a power of two >= BlockSize)
//	 32   4*n  extent numbers, uint32, strictly increasing
//	  .     .  zero up to the checksum
//	4088    8  xxhash64 of bytes [0, 4088)
//
// So the active set is capped at MaxALExtents (1014) extents, 3.96 GiB hot at
// the default 4 MiB extent (DRBD's default al-extents of 1237 does not fit;
// OpenActivityLog refuses more than MaxALExtents).
//
// Writing a transaction is one slot WriteAt plus md.Flush. Recovery reads
// every slot and takes the valid one with the highest tr. A slot without the
// magic or with a bad checksum (never written, or torn by a crash) is
// ignored; a slot whose checksum matches but whose contents are impossible
// (field out of range, tr in the wrong slot) was not
// torn, so OpenActivityLog refuses it with ErrCorrupt instead of silently
// falling back to an older set; an unknown format version is ErrVersion.
//
// # Crash safety
//
// Only the slot of the transaction being written is ever overwritten; every
// other slot, in particular the newest durable one, stays intact, so a torn
// write recovers the previous set. Transaction tr+1 is only written once tr
// is durable; a failed write is retried with the same tr in the same slot, so
// failures can never wrap the ring over the last durable transaction. After a
// failed write the disk may hold either the old set or the failed one (which
// lacks the extents it evicted), so until a transaction succeeds every Begin
// writes one (no fast path). An extent chosen for eviction takes no new
// writes until its transaction is done, and OnEvict (for example writing back
// its part of the bitmap) runs before the transaction that drops it.
//
// # Concurrency
//
// ActivityLog is safe for concurrent use. mu guards the in-memory state and
// is never held across I/O; Begin for extents already active only takes mu
// (a map lookup, no I/O). txMu serializes transactions and is the one lock
// held across disk I/O (the slot write and flush, and OnEvict); it is taken
// before mu, never while holding it. Callers needing new extents register
// them in want before queueing on txMu, so the holder of txMu writes one
// transaction for all of them (group commit, DRBD 8.4.3's batching): the
// others find their extents active when they get txMu and do no I/O. When
// the set is full and no extent is idle, the txMu holder waits on cond for a
// release.

// MaxALExtents is the largest active set: the extent numbers that fit in one
// transaction slot.
const MaxALExtents = (alOffChecksum - alOffExtents) / 4

// DefaultExtentSize is the data bytes one activity-log extent covers.
const DefaultExtentSize = 4 << 20

// ALMagic opens every activity-log transaction slot.
const ALMagic = "TWINBDAL"

// ALFormatVersion is the transaction format this build writes and reads.
const ALFormatVersion = 1

const (
	alOffMagic      = 0
	alOffVersion    = 8
	alOffCount      = 12
	alOffTr         = 16
	alOffExtentSize = 24
	alOffExtents    = 32
	alOffChecksum   = BlockSize - 8

	// maxALTr bounds transaction numbers, so that they never wrap (a
	// larger one is corrupt; reaching it takes 2^62 transactions).
	maxALTr = 1 << 62
)

// ErrALBusy: the activity log cannot be cleaned while writes are in flight.
var ErrALBusy = errors.New("bitmap: activity log has writes in flight")

// ALOptions are the optional settings of OpenActivityLog.
type ALOptions struct {
	// OnEvict, if set, is called for an idle extent before the transaction
	// that drops it from the active set is written (to write back its part
	// of the bitmap). An error aborts that transaction and fails the Begin
	// that needed the room. It is called with the transaction lock held:
	// it must not call Begin or Clean.
	OnEvict func(extent int64) error
}

type alExtent struct {
	refs     int    // Begins not yet released
	lastUse  uint64 // tick of the last Begin, for LRU eviction
	evicting bool   // dropped by the transaction being written: no new refs
}

// ActivityLog is the open activity log of a metadata area.
type ActivityLog struct {
	md device.Device
	// lay changes only when Meta.Grow moves the metadata, with txMu held
	// (which writeTransaction holds when it reads lay); Begin reads the
	// data size from dataSize.
	lay        Layout
	dataSize   atomic.Int64
	extentSize int64
	shift      uint
	maxExtents int
	slots      int64
	onEvict    func(int64) error
	recovered  []int64

	// txMu serializes transactions: held across the slot write, its flush
	// and OnEvict. Taken before mu, never while holding mu.
	txMu   sync.Mutex
	nextTr uint64 // guarded by txMu

	mu        sync.Mutex // guards the fields below; never held across I/O
	cond      *sync.Cond // on mu: an extent became idle
	active    map[int64]*alExtent
	want      map[int64]int // extents Begins are queueing for, with their count
	needWrite bool          // the last transaction write failed: disk state unknown
	tick      uint64
	txs       int64

	waitHook func() // tests: called under mu before waiting for room
}

// OpenActivityLog reads the activity-log ring of lay on md and recovers the
// last durable active set (Recovered), which also becomes the initial active
// set: its extents stay logged until evicted (after OnEvict) or Clean, so a
// second crash before the caller has written their bits still finds them.
//
// extentSize (0: DefaultExtentSize) is a power of two >= BlockSize;
// maxExtents (0: MaxALExtents) is at most MaxALExtents. At most one
// ALOptions may be given. If the newest transaction is non-empty and was
// written with another extent size, it is refused with ErrWrongSize.
func OpenActivityLog(md device.Device, lay Layout, extentSize int64, maxExtents int, opts ...ALOptions) (*ActivityLog, error) {
	if err := lay.check(md.Size()); err != nil {
		return nil, fmt.Errorf("bitmap: open activity log: %w", err)
	}
	if extentSize == 0 {
		extentSize = DefaultExtentSize
	}
	if maxExtents == 0 {
		maxExtents = MaxALExtents
	}
	switch {
	case extentSize < BlockSize || bits.OnesCount64(uint64(extentSize)) != 1:
		return nil, fmt.Errorf("bitmap: open activity log: %w: extent size %d is not a power of two >= %d", ErrInvalid, extentSize, BlockSize)
	case maxExtents < 0 || maxExtents > MaxALExtents:
		return nil, fmt.Errorf("bitmap: open activity log: %w: %d extents; one transaction holds 1..%d", ErrInvalid, maxExtents, MaxALExtents)
	case len(opts) > 1:
		return nil, fmt.Errorf("bitmap: open activity log: %w: more than one ALOptions", ErrInvalid)
	}
	num := ceilDiv(lay.DataSize, extentSize)
	if num > 1<<32 {
		return nil, fmt.Errorf("bitmap: open activity log: %w: %d bytes of data is %d extents of %d bytes; raise the extent size",
			ErrInvalid, lay.DataSize, num, extentSize)
	}
	a := &ActivityLog{
		md:         md,
		lay:        lay,
		extentSize: extentSize,
		shift:      uint(bits.TrailingZeros64(uint64(extentSize))),
		maxExtents: maxExtents,
		slots:      lay.ALSize / BlockSize,
		active:     make(map[int64]*alExtent),
		want:       make(map[int64]int),
	}
	a.dataSize.Store(lay.DataSize)
	if len(opts) == 1 {
		a.onEvict = opts[0].OnEvict
	}
	a.cond = sync.NewCond(&a.mu)

	area := make([]byte, lay.ALSize)
	if _, err := md.ReadAt(area, lay.ALOffset); err != nil {
		return nil, fmt.Errorf("bitmap: open activity log: read at %d: %w", lay.ALOffset, err)
	}
	var (
		best     alTransaction
		found    bool
		slotSize = int64(BlockSize)
	)
	for s := int64(0); s < a.slots; s++ {
		off := lay.ALOffset + s*slotSize
		tx, err := decodeALSlot(area[s*slotSize:(s+1)*slotSize], lay.DataSize)
		switch {
		case errors.Is(err, errALTorn):
			continue
		case err != nil:
			return nil, fmt.Errorf("bitmap: open activity log: slot %d at %d: %w", s, off, err)
		case int64((tx.tr-1)%uint64(a.slots)) != s:
			return nil, fmt.Errorf("bitmap: open activity log: %w: slot %d at %d holds transaction %d, which belongs in slot %d",
				ErrCorrupt, s, off, tx.tr, (tx.tr-1)%uint64(a.slots))
		}
		if !found || tx.tr > best.tr {
			best, found = tx, true
		}
	}
	a.nextTr = 1
	if found {
		a.nextTr = best.tr + 1
		if len(best.extents) > 0 && best.extentSize != extentSize {
			return nil, fmt.Errorf("bitmap: open activity log: %w: it holds %d extents of %d bytes (not cleanly shut down) but the extent size is now %d; open it with extent size %d, resync and shut down cleanly before changing it",
				ErrWrongSize, len(best.extents), best.extentSize, extentSize, best.extentSize)
		}
		for _, e := range best.extents {
			if e >= num {
				return nil, fmt.Errorf("bitmap: open activity log: %w: extent %d beyond the %d extents of the data area", ErrCorrupt, e, num)
			}
			a.active[e] = &alExtent{}
		}
		a.recovered = best.extents
	}
	return a, nil
}

// ceilDiv is n/d rounded up, for n >= 0 and d > 0, without overflow.
func ceilDiv(n, d int64) int64 {
	q := n / d
	if n%d != 0 {
		q++
	}
	return q
}

// alTransaction is one decoded slot.
type alTransaction struct {
	tr         uint64
	extentSize int64
	extents    []int64 // strictly increasing
}

// errALTorn marks a slot that was never written or was torn: no magic or a
// checksum mismatch.
var errALTorn = errors.New("torn or empty activity-log slot")

// decodeALSlot decodes one slot of a metadata area for dataSize bytes of
// data. errALTorn if the slot has no magic or a bad checksum; otherwise
// ErrVersion or ErrCorrupt for contents this build never writes. It never
// panics.
func decodeALSlot(b []byte, dataSize int64) (alTransaction, error) {
	if len(b) != BlockSize || string(b[:len(ALMagic)]) != ALMagic {
		return alTransaction{}, errALTorn
	}
	be := binary.BigEndian
	if xxhash.Sum64(b[:alOffChecksum]) != be.Uint64(b[alOffChecksum:]) {
		return alTransaction{}, errALTorn
	}
	if v := be.Uint32(b[alOffVersion:]); v != ALFormatVersion {
		return alTransaction{}, fmt.Errorf("%w: activity-log format version %d, this build reads version %d", ErrVersion, v, ALFormatVersion)
	}
	n := be.Uint32(b[alOffCount:])
	tx := alTransaction{tr: be.Uint64(b[alOffTr:]), extentSize: int64(be.Uint64(b[alOffExtentSize:]))}
	switch {
	case n > MaxALExtents:
		return alTransaction{}, fmt.Errorf("%w: activity log: %d extents (at most %d)", ErrCorrupt, n, MaxALExtents)
	case tx.tr == 0 || tx.tr > maxALTr:
		return alTransaction{}, fmt.Errorf("%w: activity log: transaction number %d", ErrCorrupt, tx.tr)
	case tx.extentSize < BlockSize || tx.extentSize > 1<<62 || bits.OnesCount64(uint64(tx.extentSize)) != 1:
		return alTransaction{}, fmt.Errorf("%w: activity log: extent size %d", ErrCorrupt, tx.extentSize)
	}
	num := ceilDiv(dataSize, tx.extentSize)
	tx.extents = make([]int64, n)
	for i := range tx.extents {
		e := int64(be.Uint32(b[alOffExtents+4*i:]))
		if e >= num || (i > 0 && e <= tx.extents[i-1]) {
			return alTransaction{}, fmt.Errorf("%w: activity log: extent %d at index %d (extents strictly increasing, below %d)", ErrCorrupt, e, i, num)
		}
		tx.extents[i] = e
	}
	for i := alOffExtents + 4*int(n); i < alOffChecksum; i++ {
		if b[i] != 0 {
			return alTransaction{}, fmt.Errorf("%w: activity log: non-zero padding at offset %d", ErrCorrupt, i)
		}
	}
	return tx, nil
}

// encodeALSlot encodes a transaction; extents must be sorted, unique and at
// most MaxALExtents.
func encodeALSlot(tr uint64, extentSize int64, extents []int64) []byte {
	b := make([]byte, BlockSize)
	be := binary.BigEndian
	copy(b[alOffMagic:], ALMagic)
	be.PutUint32(b[alOffVersion:], ALFormatVersion)
	be.PutUint32(b[alOffCount:], uint32(len(extents)))
	be.PutUint64(b[alOffTr:], tr)
	be.PutUint64(b[alOffExtentSize:], uint64(extentSize))
	for i, e := range extents {
		be.PutUint32(b[alOffExtents+4*i:], uint32(e))
	}
	be.PutUint64(b[alOffChecksum:], xxhash.Sum64(b[:alOffChecksum]))
	return b
}

// ExtentSize is the data bytes one extent covers.
func (a *ActivityLog) ExtentSize() int64 { return a.extentSize }

// Recovered returns the extents that were active when the log was opened,
// sorted: after a crash of a Primary, the extents to mark out of sync.
func (a *ActivityLog) Recovered() []int64 { return append([]int64{}, a.recovered...) }

// Active returns the extents of the last durably written transaction, sorted.
func (a *ActivityLog) Active() []int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.activeLocked()
}

func (a *ActivityLog) activeLocked() []int64 {
	out := make([]int64, 0, len(a.active))
	for e := range a.active {
		out = append(out, e)
	}
	slices.Sort(out)
	return out
}

// Stats returns the number of transactions written since open.
func (a *ActivityLog) Stats() (transactions int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.txs
}

// Begin marks the extents covering [off, off+length) as in use by one more
// write and returns the function that ends that use (idempotent). If an
// extent is not yet active, it is added by a transaction that is written and
// flushed before Begin returns, so the caller may then issue the data write.
// When the active set is full, the least recently used idle extent is
// evicted (after OnEvict), or Begin waits until one becomes idle (so a
// goroutine must not wait in Begin while holding, unreleased, writes that
// keep the set full). A zero length needs no
// extent. ErrInvalid for a range outside the data area or one spanning more
// extents than the active set holds; an I/O or OnEvict error is returned
// wrapped and the write must not be issued.
func (a *ActivityLog) Begin(off, length int64) (release func(), err error) {
	if err := device.CheckRange(a.dataSize.Load(), off, length); err != nil {
		return nil, fmt.Errorf("bitmap: activity log: %w: %v", ErrInvalid, err)
	}
	if length == 0 {
		return func() {}, nil
	}
	first, last := off>>a.shift, (off+length-1)>>a.shift
	if last-first+1 > int64(a.maxExtents) {
		return nil, fmt.Errorf("bitmap: activity log: %w: [%d, +%d) spans %d extents, the activity log holds %d",
			ErrInvalid, off, length, last-first+1, a.maxExtents)
	}

	a.mu.Lock()
	if a.usableLocked(first, last) {
		a.refLocked(first, last)
		a.mu.Unlock()
		return a.releaser(first, last), nil
	}
	// Slow path: register the extents so that whoever writes the next
	// transaction includes them, then queue for the transaction lock.
	for e := first; e <= last; e++ {
		a.want[e]++
	}
	a.mu.Unlock()

	a.txMu.Lock()
	defer a.txMu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	defer func() {
		for e := first; e <= last; e++ {
			if a.want[e]--; a.want[e] == 0 {
				delete(a.want, e)
			}
		}
	}()
	for {
		if a.usableLocked(first, last) {
			a.refLocked(first, last)
			return a.releaser(first, last), nil
		}
		victims, adds, ok := a.planLocked(first, last)
		if !ok {
			if a.waitHook != nil {
				a.waitHook()
			}
			a.cond.Wait()
			continue
		}
		if err := a.commitLocked(victims, adds, true); err != nil {
			return nil, fmt.Errorf("bitmap: activity log: begin [%d, +%d): %w", off, length, err)
		}
	}
}

// usableLocked reports whether every extent in [first, last] may take a new
// write without a transaction.
func (a *ActivityLog) usableLocked(first, last int64) bool {
	if a.needWrite {
		return false
	}
	for e := first; e <= last; e++ {
		x := a.active[e]
		if x == nil || x.evicting {
			return false
		}
	}
	return true
}

func (a *ActivityLog) refLocked(first, last int64) {
	a.tick++
	for e := first; e <= last; e++ {
		x := a.active[e]
		x.refs++
		x.lastUse = a.tick
	}
}

func (a *ActivityLog) releaser(first, last int64) func() {
	var done atomic.Bool
	return func() {
		if done.Swap(true) {
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		idle := false
		for e := first; e <= last; e++ {
			x := a.active[e]
			if x.refs--; x.refs == 0 {
				idle = true
			}
		}
		if idle {
			a.cond.Broadcast()
		}
	}
}

// planLocked chooses the next transaction for a Begin of [first, last]
// (called with txMu and mu held): the extents to add (the Begin's missing
// ones, then as many as fit of those other Begins queue for) and the idle
// extents to evict for them, least recently used first. ok is false if the
// Begin's own extents do not fit until some extent becomes idle.
func (a *ActivityLog) planLocked(first, last int64) (victims, adds []int64, ok bool) {
	count := len(a.active)
	taken := make(map[int64]bool)
	room := func(mine bool) bool {
		for count >= a.maxExtents {
			v := a.victimLocked(first, last, taken, mine)
			if v < 0 {
				return false
			}
			taken[v] = true
			victims = append(victims, v)
			count--
		}
		return true
	}
	for e := first; e <= last; e++ {
		if a.active[e] != nil {
			continue
		}
		if !room(true) {
			return nil, nil, false
		}
		adds = append(adds, e)
		taken[e] = true
		count++
	}
	others := make([]int64, 0, len(a.want))
	for e := range a.want {
		if a.active[e] == nil && !taken[e] {
			others = append(others, e)
		}
	}
	slices.Sort(others)
	for _, e := range others {
		if !room(false) {
			break
		}
		adds = append(adds, e)
		taken[e] = true
		count++
	}
	return victims, adds, true
}

// victimLocked is the extent to evict next, or -1: an active extent with no
// write in flight, outside [first, last] and not taken, preferring extents no
// other Begin queues for, then the least recently used. For another Begin's
// extents (!mine) queued-for extents are never taken; for the Begin's own
// (mine) they may be (their Begins add them back), so a full set of
// queued-for idle extents cannot stall it.
func (a *ActivityLog) victimLocked(first, last int64, taken map[int64]bool, mine bool) int64 {
	best, bestWanted, bestUse := int64(-1), false, uint64(0)
	for e, x := range a.active {
		wanted := a.want[e] > 0
		if x.refs > 0 || taken[e] || (e >= first && e <= last) || (wanted && !mine) {
			continue
		}
		if best < 0 || (bestWanted && !wanted) ||
			(bestWanted == wanted && (x.lastUse < bestUse || (x.lastUse == bestUse && e < best))) {
			best, bestWanted, bestUse = e, wanted, x.lastUse
		}
	}
	return best
}

// commitLocked (txMu and mu held; mu released during I/O) runs OnEvict for
// the victims, writes and flushes the transaction of the active set minus
// victims plus adds, and applies it in memory on success. On a write or
// flush error the disk may hold either set, so needWrite is set until a
// transaction succeeds.
func (a *ActivityLog) commitLocked(victims, adds []int64, evict bool) error {
	next := make([]int64, 0, len(a.active)+len(adds))
	for e := range a.active {
		if !slices.Contains(victims, e) {
			next = append(next, e)
		}
	}
	next = append(next, adds...)
	slices.Sort(next)
	for _, v := range victims {
		a.active[v].evicting = true
	}
	tr := a.nextTr
	a.mu.Unlock()
	err := a.writeTransaction(tr, next, victims, evict)
	a.mu.Lock()
	for _, v := range victims {
		a.active[v].evicting = false
	}
	if err != nil {
		return err
	}
	for _, v := range victims {
		delete(a.active, v)
	}
	a.tick++
	for _, e := range adds {
		a.active[e] = &alExtent{lastUse: a.tick}
	}
	a.nextTr++
	a.txs++
	a.needWrite = false
	return nil
}

// writeTransaction (txMu held, mu not held) runs OnEvict for victims if
// evict, then writes transaction tr with extents to its slot and flushes.
func (a *ActivityLog) writeTransaction(tr uint64, extents, victims []int64, evict bool) error {
	if evict && a.onEvict != nil {
		for _, v := range victims {
			if err := a.onEvict(v); err != nil {
				return fmt.Errorf("evict extent %d: %w", v, err)
			}
		}
	}
	if tr > maxALTr {
		return fmt.Errorf("%w: activity log: transaction number %d exhausted", ErrCorrupt, tr)
	}
	b := encodeALSlot(tr, a.extentSize, extents)
	slot := int64((tr - 1) % uint64(a.slots))
	off := a.lay.ALOffset + slot*BlockSize
	_, err := a.md.WriteAt(b, off)
	if err == nil {
		err = a.md.Flush()
	}
	if err != nil {
		a.mu.Lock()
		a.needWrite = true
		a.mu.Unlock()
		return fmt.Errorf("write transaction %d to slot %d at %d: %w", tr, slot, off, err)
	}
	return nil
}

// Clean writes a transaction with the empty set, for a clean shutdown: the
// caller must have written the whole bitmap first (OnEvict is not called).
// ErrALBusy if a write is in flight; the log stays usable afterwards.
func (a *ActivityLog) Clean() error {
	a.txMu.Lock()
	defer a.txMu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, x := range a.active {
		n += x.refs
	}
	if n > 0 {
		return fmt.Errorf("bitmap: activity log: clean: %w: %d", ErrALBusy, n)
	}
	if err := a.commitLocked(a.activeLocked(), nil, false); err != nil {
		return fmt.Errorf("bitmap: activity log: clean: %w", err)
	}
	return nil
}
