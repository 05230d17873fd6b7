package bitmap

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/device"
)

// alDataSize leaves a partial last extent: 257 extents of 4 MiB.
const (
	alDataSize = 1<<30 + BlockSize
	alExt      = int64(DefaultExtentSize)
)

func alLayout(t testing.TB) (Layout, *device.Memory) {
	lay, err := ExternalLayout(alDataSize, MDSizeFor(alDataSize, 0), 0)
	require.NoError(t, err)
	return lay, device.NewMemory(lay.MDSize)
}

func alSeed(t *testing.T) uint64 {
	seed := rand.Uint64()
	if s := os.Getenv("TWINBD_SEED"); s != "" {
		var err error
		seed, err = strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "TWINBD_SEED")
	}
	t.Logf("seed %d (rerun with TWINBD_SEED=%d)", seed, seed)
	return seed
}

// recDevice records, in order, the writes and flushes reaching the wrapped
// device, and what the test notes in between; flushHook runs before each
// flush.
type recDevice struct {
	device.Device
	mu              sync.Mutex
	log             []string
	writes, flushes int
	flushHook       func()
}

func (d *recDevice) note(s string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.log = append(d.log, s)
}

func (d *recDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	d.writes++
	d.log = append(d.log, fmt.Sprintf("write %d+%d", off, len(p)))
	d.mu.Unlock()
	return d.Device.WriteAt(p, off)
}

func (d *recDevice) Flush() error {
	if d.flushHook != nil {
		d.flushHook()
	}
	d.mu.Lock()
	d.flushes++
	d.log = append(d.log, "flush")
	d.mu.Unlock()
	return d.Device.Flush()
}

func (d *recDevice) counts() (writes, flushes int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.writes, d.flushes
}

func (d *recDevice) takeLog() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.log
	d.log = nil
	return l
}

func slotWrite(lay Layout, slot int) string {
	return fmt.Sprintf("write %d+%d", lay.ALOffset+int64(slot)*BlockSize, BlockSize)
}

func reopenAL(t *testing.T, md device.Device, lay Layout, max int) *ActivityLog {
	a, err := OpenActivityLog(md, lay, 0, max)
	require.NoError(t, err)
	return a
}

func mustBegin(t *testing.T, a *ActivityLog, off, length int64) func() {
	t.Helper()
	rel, err := a.Begin(off, length)
	require.NoError(t, err)
	return rel
}

func TestActivityLogExtentsCovered(t *testing.T) {
	lay, mem := alLayout(t)
	a := reopenAL(t, mem, lay, 0)
	require.Empty(t, a.Recovered())
	require.Empty(t, a.Active())

	for _, c := range []struct {
		name        string
		off, length int64
		want        []int64
	}{
		{"first byte", 0, 1, []int64{0}},
		{"last byte of extent 0", alExt - 1, 1, []int64{0}},
		{"first byte of extent 1", alExt, 1, []int64{0, 1}},
		{"spans 1 and 2", 2*alExt - 512, 1024, []int64{0, 1, 2}},
		{"exactly extent 3", 3 * alExt, alExt, []int64{0, 1, 2, 3}},
		{"ends at extent 5's first byte", 4*alExt + 4096, alExt - 4096 + 1, []int64{0, 1, 2, 3, 4, 5}},
		{"partial last extent", alDataSize - BlockSize, BlockSize, []int64{0, 1, 2, 3, 4, 5, 256}},
		{"zero length", 100 * alExt, 0, []int64{0, 1, 2, 3, 4, 5, 256}},
	} {
		rel := mustBegin(t, a, c.off, c.length)
		require.Equal(t, c.want, a.Active(), c.name)
		rel()
		rel() // idempotent
	}
	require.Equal(t, int64(6), a.Stats())

	for _, bad := range [][2]int64{{-1, 1}, {alDataSize, 1}, {alDataSize - 1, 2}, {0, -1}, {1 << 62, 1 << 62}} {
		_, err := a.Begin(bad[0], bad[1])
		require.ErrorIs(t, err, ErrInvalid, "%v", bad)
	}
	small := reopenAL(t, mem, lay, 2)
	_, err := small.Begin(alExt-1, alExt+2) // extents 0, 1, 2
	require.ErrorIs(t, err, ErrInvalid)
	rel := mustBegin(t, small, alExt-1, 2)
	rel()
}

func TestActivityLogActiveExtentNoIO(t *testing.T) {
	lay, mem := alLayout(t)
	rec := &recDevice{Device: mem}
	a := reopenAL(t, rec, lay, 0)
	rel := mustBegin(t, a, 10*alExt, 4096)
	w, f := rec.counts()
	require.Equal(t, [2]int{1, 1}, [2]int{w, f})
	for i := range 1000 {
		r := mustBegin(t, a, 10*alExt+int64(i%1024)*4096, 4096)
		r()
	}
	rel()
	r := mustBegin(t, a, 10*alExt, alExt) // idle but still active
	r()
	w2, f2 := rec.counts()
	require.Equal(t, [2]int{w, f}, [2]int{w2, f2}, "writes to an active extent did I/O")
	require.Equal(t, int64(1), a.Stats())
}

func TestActivityLogTransactionFlushedBeforeBegin(t *testing.T) {
	lay, mem := alLayout(t)
	rec := &recDevice{Device: mem}
	a := reopenAL(t, rec, lay, 0)
	rel := mustBegin(t, a, 7*alExt, 1)
	rec.note("begin returned")
	_ = mustBegin(t, a, 9*alExt, alExt+1) // extents 9 and 10
	rec.note("begin returned")
	require.Equal(t, []string{
		slotWrite(lay, 0), "flush", "begin returned",
		slotWrite(lay, 1), "flush", "begin returned",
	}, rec.takeLog())
	rel()

	// Durable as soon as Begin returned.
	mem.Crash()
	b := reopenAL(t, mem, lay, 0)
	require.Equal(t, []int64{7, 9, 10}, b.Recovered())
	require.Equal(t, []int64{7, 9, 10}, b.Active())
}

// TestActivityLogRecoverProperty runs random sequences of Begin, release,
// Clean, eviction failures, torn transactions and crashes, and checks after
// every crash that each extent written since its bitmap part was last
// written back (OnEvict or Clean) is recovered; in particular every extent
// with a write in flight.
func TestActivityLogRecoverProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(alSeed(t), 0))
	lay, mem := alLayout(t)
	fd := &faultDevice{Memory: mem}
	const pool = 12 // extents used

	for round := range 30 {
		max := 1 + rng.IntN(6)
		var (
			held      []([]int64) // extents of each write in flight
			releases  []func()
			dirty     = map[int64]bool{}
			inflight  = map[int64]int{}
			failEvict bool
		)
		open := func() *ActivityLog {
			a, err := OpenActivityLog(fd, lay, 0, max, ALOptions{OnEvict: func(e int64) error {
				require.Zero(t, inflight[e], "OnEvict(%d) with a write in flight", e)
				if failEvict {
					return errInjected
				}
				delete(dirty, e)
				return nil
			}})
			require.NoError(t, err)
			return a
		}
		a := open()
		for _, e := range a.Recovered() {
			dirty[e] = true
		}
		for op := range 200 {
			what := fmt.Sprintf("round %d (max %d) op %d", round, max, op)
			switch r := rng.IntN(100); {
			case r < 50: // Begin, only if it cannot wait forever
				first := int64(rng.IntN(pool))
				last := min(first+int64(rng.IntN(2)), pool-1)
				busy := map[int64]bool{}
				for e := first; e <= last; e++ {
					busy[e] = true
				}
				for e, n := range inflight {
					if n > 0 {
						busy[e] = true
					}
				}
				if len(busy) > max {
					continue
				}
				failEvict = rng.IntN(10) == 0
				torn := rng.IntN(10) == 0
				if torn {
					cut := rng.IntN(BlockSize + 1)
					fd.tearNext(func(p []byte, off int64) [][2]int { return [][2]int{{0, cut}} })
				}
				rel, err := a.Begin(first*alExt+int64(rng.IntN(int(alExt))), (last-first)*alExt+1)
				fd.mu.Lock()
				fd.armed = false // the Begin may have needed no write
				fd.mu.Unlock()
				if err != nil {
					require.True(t, errors.Is(err, errInjected), "%s: %v", what, err)
					continue
				}
				var exts []int64
				for e := first; e <= last; e++ {
					exts = append(exts, e)
					inflight[e]++
					dirty[e] = true
					require.Contains(t, a.Active(), e, what)
				}
				held = append(held, exts)
				releases = append(releases, rel)
			case r < 80: // release
				if len(held) == 0 {
					continue
				}
				i := rng.IntN(len(held))
				for _, e := range held[i] {
					inflight[e]--
				}
				releases[i]()
				held = slices.Delete(held, i, i+1)
				releases = slices.Delete(releases, i, i+1)
			case r < 85: // clean shutdown attempt
				err := a.Clean()
				if len(held) > 0 {
					require.ErrorIs(t, err, ErrALBusy, what)
					continue
				}
				require.NoError(t, err, what)
				clear(dirty)
				require.Empty(t, a.Active())
			default: // crash
				mem.Crash()
				a = open()
				got := a.Recovered()
				for e := range dirty {
					require.Contains(t, got, e, "%s: extent %d written since its last write-back, recovered %v", what, e, got)
				}
				for e, n := range inflight {
					if n > 0 {
						require.Contains(t, got, e, "%s: extent %d has a write in flight", what, e)
					}
				}
				require.Equal(t, got, a.Active())
				held, releases = nil, nil
				clear(inflight)
				clear(dirty)
				for _, e := range got {
					dirty[e] = true
				}
			}
		}
		for _, rel := range releases {
			rel()
		}
		clear(inflight)
	}
}

func TestActivityLogTornTransaction(t *testing.T) {
	lay, mem := alLayout(t)
	fd := &faultDevice{Memory: mem}
	a := reopenAL(t, fd, lay, 0)
	mustBegin(t, a, 3*alExt, 1)()
	mustBegin(t, a, 5*alExt, 1)()

	fd.tearNext(func(p []byte, off int64) [][2]int { return [][2]int{{0, len(p) / 2}} })
	_, err := a.Begin(8*alExt, 1)
	require.ErrorIs(t, err, errInjected)
	require.Equal(t, []int64{3, 5}, a.Active())
	mem.Crash()
	b := reopenAL(t, fd, lay, 0)
	require.Equal(t, []int64{3, 5}, b.Recovered())

	// A torn tail (only the checksum missing) is just as torn.
	fd.tearNext(func(p []byte, off int64) [][2]int { return [][2]int{{0, len(p) - 1}} })
	_, err = b.Begin(9*alExt, 1)
	require.ErrorIs(t, err, errInjected)
	mem.Crash()
	require.Equal(t, []int64{3, 5}, reopenAL(t, fd, lay, 0).Recovered())
}

// TestActivityLogFailedEvictingTransaction: a transaction that drops extent
// A lands on disk but reports an error. A is still active in memory, but the
// disk may no longer log it, so the next write to A must write a
// transaction first.
func TestActivityLogFailedEvictingTransaction(t *testing.T) {
	lay, mem := alLayout(t)
	fd := &faultDevice{Memory: mem}
	a := reopenAL(t, fd, lay, 1)
	mustBegin(t, a, 0, 1)() // A = extent 0, idle

	fd.tearNext(func(p []byte, off int64) [][2]int { return [][2]int{{0, len(p)}} })
	_, err := a.Begin(alExt, 1) // evicts A; lands durably, then fails
	require.ErrorIs(t, err, errInjected)
	require.Equal(t, []int64{0}, a.Active())

	writes := fd.writes
	rel := mustBegin(t, a, 0, 1)
	require.Equal(t, writes+1, fd.writes, "write to A after a failed transaction did no I/O")
	// It retried transaction 2 in slot 1; slot 2 was never written.
	buf := make([]byte, BlockSize)
	_, err = mem.ReadAt(buf, lay.ALOffset+2*BlockSize)
	require.NoError(t, err)
	require.Equal(t, make([]byte, BlockSize), buf)

	mem.Crash()
	require.Equal(t, []int64{0}, reopenAL(t, fd, lay, 1).Recovered())
	rel()

	// Failed flush: same rule.
	b := reopenAL(t, fd, lay, 0)
	fd.failFlush = true
	_, err = b.Begin(2*alExt, 1)
	require.ErrorIs(t, err, errInjected)
	fd.failFlush = false
	w0 := fd.writes
	mustBegin(t, b, 0, 1)()
	require.Equal(t, w0+1, fd.writes)
	w1 := fd.writes
	mustBegin(t, b, 0, 1)()
	require.Equal(t, w1, fd.writes, "fast path back after a successful transaction")
}

func TestActivityLogEvictionFailure(t *testing.T) {
	lay, mem := alLayout(t)
	fail := true
	a, err := OpenActivityLog(mem, lay, 0, 1, ALOptions{OnEvict: func(int64) error {
		if fail {
			return errInjected
		}
		return nil
	}})
	require.NoError(t, err)
	mustBegin(t, a, 0, 1)()
	_, err = a.Begin(alExt, 1)
	require.ErrorIs(t, err, errInjected)
	require.Equal(t, []int64{0}, a.Active())
	require.Equal(t, int64(1), a.Stats())
	fail = false
	mustBegin(t, a, alExt, 1)()
	require.Equal(t, []int64{1}, a.Active())
}

func TestActivityLogLRUEviction(t *testing.T) {
	lay, mem := alLayout(t)
	rec := &recDevice{Device: mem}
	a, err := OpenActivityLog(rec, lay, 0, 3, ALOptions{OnEvict: func(e int64) error {
		rec.note(fmt.Sprintf("evict %d", e))
		return nil
	}})
	require.NoError(t, err)
	for _, e := range []int64{10, 11, 12, 10} {
		mustBegin(t, a, e*alExt, 1)()
	}
	rec.takeLog()
	mustBegin(t, a, 13*alExt, 1)() // 11 is least recently used
	require.Equal(t, []string{"evict 11", slotWrite(lay, 3), "flush"}, rec.takeLog())
	require.Equal(t, []int64{10, 12, 13}, a.Active())

	hold := mustBegin(t, a, 12*alExt, 1) // busy: not evictable
	mustBegin(t, a, 14*alExt, 1)()       // LRU idle is 10
	mustBegin(t, a, 15*alExt, 1)()       // then 13
	require.Equal(t, []string{"evict 10", slotWrite(lay, 4), "flush", "evict 13", slotWrite(lay, 5), "flush"}, rec.takeLog())
	require.Equal(t, []int64{12, 14, 15}, a.Active())
	hold()

	mem.Crash()
	b, err := OpenActivityLog(rec, lay, 0, 2, ALOptions{OnEvict: func(e int64) error {
		rec.note(fmt.Sprintf("evict %d", e))
		return nil
	}})
	require.NoError(t, err)
	require.Equal(t, []int64{12, 14, 15}, b.Recovered())
	require.Equal(t, []int64{12, 14, 15}, b.Active(), "recovered extents stay logged")
	mustBegin(t, b, 14*alExt, 1)() // active: no I/O
	rec.takeLog()
	mustBegin(t, b, 20*alExt, 1)() // over the smaller max: evicts two
	require.Equal(t, []string{"evict 12", "evict 15", slotWrite(lay, 6), "flush"}, rec.takeLog())
	require.Equal(t, []int64{14, 20}, b.Active())
}

// TestActivityLogNoWriteToEvictingExtent: while a transaction dropping idle
// extent A is under way (here: in OnEvict), a Begin for A must wait for it
// (and then add A back), never proceed on the stale in-memory set.
func TestActivityLogNoWriteToEvictingExtent(t *testing.T) {
	lay, mem := alLayout(t)
	var a *ActivityLog
	done := make(chan error, 1)
	a, err := OpenActivityLog(mem, lay, 0, 1, ALOptions{OnEvict: func(e int64) error {
		go func() {
			rel, err := a.Begin(0, 1)
			if err == nil {
				rel()
			}
			done <- err
		}()
		for { // until the Begin for A queues (or wrongly returns)
			select {
			case err := <-done:
				return fmt.Errorf("Begin for extent %d returned during its eviction: %v", e, err)
			default:
			}
			a.mu.Lock()
			queued := a.want[0] > 0
			a.mu.Unlock()
			if queued {
				return nil
			}
			runtime.Gosched()
		}
	}})
	require.NoError(t, err)
	mustBegin(t, a, 0, 1)()
	mustBegin(t, a, alExt, 1)() // evicts extent 0
	require.NoError(t, <-done)
	require.Equal(t, []int64{0}, a.Active())
	require.Equal(t, int64(3), a.Stats())
}

func TestActivityLogWaitsWhenFull(t *testing.T) {
	lay, mem := alLayout(t)
	var evicted []int64
	a, err := OpenActivityLog(mem, lay, 0, 2, ALOptions{OnEvict: func(e int64) error {
		evicted = append(evicted, e)
		return nil
	}})
	require.NoError(t, err)
	relA := mustBegin(t, a, 0, 1)
	relB := mustBegin(t, a, alExt, 1)

	waiting := make(chan struct{})
	var once sync.Once
	a.mu.Lock()
	a.waitHook = func() { once.Do(func() { close(waiting) }) }
	a.mu.Unlock()
	done := make(chan error)
	go func() {
		rel, err := a.Begin(2*alExt, 1)
		if err == nil {
			rel()
		}
		done <- err
	}()
	<-waiting
	select {
	case err := <-done:
		t.Fatalf("Begin returned while every extent was busy: %v", err)
	default:
	}
	relA()
	require.NoError(t, <-done)
	require.Equal(t, []int64{0}, evicted)
	require.Equal(t, []int64{1, 2}, a.Active())
	relB()
}

func TestActivityLogConcurrent(t *testing.T) {
	seed := alSeed(t)
	lay, mem := alLayout(t)
	const (
		workers = 16
		ops     = 300
		pool    = 24
		max     = 6
	)
	var inflight [pool]atomic.Int32
	var bad atomic.Value
	a, err := OpenActivityLog(mem, lay, 0, max, ALOptions{OnEvict: func(e int64) error {
		if n := inflight[e].Load(); n != 0 {
			bad.Store(fmt.Sprintf("OnEvict(%d) with %d writes in flight", e, n))
		}
		return nil
	}})
	require.NoError(t, err)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for range ops {
				first := int64(rng.IntN(pool - 1))
				last := first + int64(rng.IntN(2))
				rel, err := a.Begin(first*alExt+alExt-1, (last-first)*alExt+1)
				if err != nil {
					bad.Store(err.Error())
					return
				}
				for e := first; e <= last; e++ {
					inflight[e].Add(1)
				}
				if act := a.Active(); len(act) > max || !slices.Contains(act, first) || !slices.Contains(act, last) {
					bad.Store(fmt.Sprintf("active %v while writing extents %d..%d", act, first, last))
				}
				runtime.Gosched()
				for e := first; e <= last; e++ {
					inflight[e].Add(-1)
				}
				rel()
			}
		})
	}
	wg.Wait()
	require.Nil(t, bad.Load())
	require.LessOrEqual(t, len(a.Active()), max)
	t.Logf("%d transactions for %d writes", a.Stats(), workers*ops)
	mem.Crash()
	require.Equal(t, a.Active(), reopenAL(t, mem, lay, max).Recovered())
}

// TestActivityLogBatching: Begins needing new extents while a transaction is
// being written share the next one.
func TestActivityLogBatching(t *testing.T) {
	lay, mem := alLayout(t)
	inFlush, unblock := make(chan struct{}), make(chan struct{})
	var first sync.Once
	rec := &recDevice{Device: mem, flushHook: func() {
		first.Do(func() {
			close(inFlush)
			<-unblock
		})
	}}
	a := reopenAL(t, rec, lay, 0)
	const n = 8
	errs := make(chan error, n+1)
	go func() {
		_, err := a.Begin(0, 1)
		errs <- err
	}()
	<-inFlush
	for i := 1; i <= n; i++ {
		go func() {
			_, err := a.Begin(int64(i)*alExt, 1)
			errs <- err
		}()
	}
	// Wait (without sleeping) until all n have queued for extents.
	for {
		a.mu.Lock()
		queued := len(a.want)
		a.mu.Unlock()
		if queued == n+1 {
			break
		}
		runtime.Gosched()
	}
	close(unblock)
	for range n + 1 {
		require.NoError(t, <-errs)
	}
	require.Equal(t, int64(2), a.Stats(), "the queued Begins share one transaction")
	require.Equal(t, []int64{0, 1, 2, 3, 4, 5, 6, 7, 8}, a.Active())
	w, f := rec.counts()
	require.Equal(t, [2]int{2, 2}, [2]int{w, f})
}

func TestActivityLogClean(t *testing.T) {
	lay, mem := alLayout(t)
	a := reopenAL(t, mem, lay, 0)
	mustBegin(t, a, 0, 1)()
	rel := mustBegin(t, a, 5*alExt, 2*alExt)
	require.ErrorIs(t, a.Clean(), ErrALBusy)
	rel()
	require.NoError(t, a.Clean())
	require.Empty(t, a.Active())
	mem.Crash()
	b := reopenAL(t, mem, lay, 0)
	require.Empty(t, b.Recovered())
	require.Empty(t, b.Active())
	// Still usable after Clean, and after reopening.
	mustBegin(t, b, 2*alExt, 1)()
	require.Equal(t, []int64{2}, reopenAL(t, mem, lay, 0).Recovered())

	// A clean log may be reopened with another extent size; a dirty one not.
	_, err := OpenActivityLog(mem, lay, 1<<20, 0)
	require.ErrorIs(t, err, ErrWrongSize)
	require.NoError(t, reopenAL(t, mem, lay, 0).Clean())
	c, err := OpenActivityLog(mem, lay, 1<<20, 0)
	require.NoError(t, err)
	mustBegin(t, c, 3<<20, 1)()
	require.Equal(t, []int64{3}, c.Active())
}

func TestActivityLogRingWraps(t *testing.T) {
	lay, mem := alLayout(t)
	a := reopenAL(t, mem, lay, 1)
	for i := range 3*DefaultALSlots + 5 {
		mustBegin(t, a, int64(i%7)*alExt, 1)()
	}
	want := a.Active()
	mem.Crash()
	b := reopenAL(t, mem, lay, 1)
	require.Equal(t, want, b.Recovered())
	require.Equal(t, uint64(3*DefaultALSlots+6), b.nextTr)
	mustBegin(t, b, 100*alExt, 1)()
	mem.Crash()
	require.Equal(t, []int64{100}, reopenAL(t, mem, lay, 1).Recovered())
}

func writeALSlot(t *testing.T, mem *device.Memory, lay Layout, slot int, b []byte) {
	_, err := mem.WriteAt(b, lay.ALOffset+int64(slot)*BlockSize)
	require.NoError(t, err)
}

func TestActivityLogCorruptSlots(t *testing.T) {
	seal := func(b []byte) []byte {
		b = slices.Clone(b)
		reseal(b) // same checksum place and hash as the superblock
		return b
	}
	good := encodeALSlot(1, alExt, []int64{1, 4})
	for _, c := range []struct {
		name string
		slot int
		b    []byte
		want error // nil: ignored as torn, recovers {1, 4}
	}{
		{"bit flip", 1, func() []byte { b := encodeALSlot(2, alExt, []int64{7}); b[40] ^= 1; return b }(), nil},
		{"garbage", 1, func() []byte { b := make([]byte, BlockSize); copy(b, "junk"); return b }(), nil},
		{"magic only", 5, []byte(ALMagic), nil},
		{"wrong slot", 3, encodeALSlot(2, alExt, []int64{7}), ErrCorrupt},
		{"version 2", 1, func() []byte { b := encodeALSlot(2, alExt, nil); b[alOffVersion+3] = 2; return seal(b) }(), ErrVersion},
		{"unsorted", 1, func() []byte { b := encodeALSlot(2, alExt, []int64{7, 7}); return seal(b) }(), ErrCorrupt},
		{"extent beyond data", 1, encodeALSlot(2, alExt, []int64{257}), ErrCorrupt},
		{"count too big", 1, func() []byte { b := encodeALSlot(2, alExt, nil); b[alOffCount+2] = 0x10; return seal(b) }(), ErrCorrupt},
		{"tr 0", 31, encodeALSlot(0, alExt, nil), ErrCorrupt},
		{"bad extent size", 1, encodeALSlot(2, 3000, nil), ErrCorrupt},
		{"padding", 1, func() []byte { b := encodeALSlot(2, alExt, nil); b[100] = 1; return seal(b) }(), ErrCorrupt},
		{"huge tr", int((maxALTr - 1) % DefaultALSlots), encodeALSlot(maxALTr+DefaultALSlots, alExt, nil), ErrCorrupt},
	} {
		t.Run(c.name, func(t *testing.T) {
			lay, mem := alLayout(t)
			writeALSlot(t, mem, lay, 0, good)
			writeALSlot(t, mem, lay, c.slot, c.b)
			a, err := OpenActivityLog(mem, lay, 0, 0)
			if c.want != nil {
				require.ErrorIs(t, err, c.want)
				return
			}
			require.NoError(t, err)
			require.Equal(t, []int64{1, 4}, a.Recovered())
		})
	}
}

func TestActivityLogOpenRefusesBadArguments(t *testing.T) {
	lay, mem := alLayout(t)
	for _, c := range []struct {
		ext  int64
		max  int
		opts []ALOptions
	}{
		{3000, 0, nil}, {2048, 0, nil}, {-4096, 0, nil}, {0, MaxALExtents + 1, nil}, {0, -1, nil},
		{0, 0, []ALOptions{{}, {}}},
	} {
		_, err := OpenActivityLog(mem, lay, c.ext, c.max, c.opts...)
		require.ErrorIs(t, err, ErrInvalid, "%+v", c)
	}
	_, err := OpenActivityLog(device.NewMemory(lay.MDSize-BlockSize), lay, 0, 0)
	require.ErrorIs(t, err, ErrInvalid)
	require.Equal(t, 1014, MaxALExtents)

	// The largest set round-trips through one slot.
	var all []int64
	for e := range int64(MaxALExtents) {
		all = append(all, e*2)
	}
	_, big := alLayout(t)
	a, err := OpenActivityLog(big, lay, 4096, 0)
	require.NoError(t, err)
	var rels []func()
	for _, e := range all {
		rels = append(rels, mustBegin(t, a, e*4096, 1))
	}
	big.Crash()
	require.Equal(t, all, reopenALExt(t, big, lay, 4096).Recovered())
	for _, r := range rels {
		r()
	}
}

func reopenALExt(t *testing.T, md device.Device, lay Layout, ext int64) *ActivityLog {
	a, err := OpenActivityLog(md, lay, ext, 0)
	require.NoError(t, err)
	return a
}
