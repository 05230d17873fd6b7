package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/twinbd/twinbd/device"
)

// fakeReads is a checkRun with one block and one export, driven by hand:
// the worker's bookkeeping (issue, answer, fail) and reads returning
// chosen versions, as a reader would see them.
type fakeReads struct {
	t   *testing.T
	r   *checkRun
	now time.Duration
}

func newFakeReads(t *testing.T) *fakeReads {
	cfg := CheckConfig{URLs: []string{"nbd://a/r0"}, Workers: 1, Blocks: 1, Readers: 1, Duration: time.Second}
	r, err := newCheckRun(cfg)
	require.NoError(t, err)
	r.firstSeq = 100
	return &fakeReads{t: t, r: r}
}

func (f *fakeReads) tick() time.Duration { f.now += time.Millisecond; return f.now }

func (f *fakeReads) issue(seq uint64) {
	f.r.recMu.Lock()
	defer f.r.recMu.Unlock()
	f.r.recs[0].issued, f.r.recs[0].inflight = seq, true
}

func (f *fakeReads) done(seq uint64, answered bool) {
	f.r.recMu.Lock()
	defer f.r.recMu.Unlock()
	rec := &f.r.recs[0]
	rec.inflight = false
	if answered {
		rec.answered, rec.at = seq, f.tick()
	}
	f.r.writeDoneLocked(0, seq, answered)
}

// send snapshots the block as a read sent now would.
func (f *fakeReads) send() (readSnap, time.Duration) {
	f.r.recMu.Lock()
	defer f.r.recMu.Unlock()
	rec := &f.r.recs[0]
	return readSnap{answered: rec.answered, issued: rec.issued, inflight: rec.inflight, seen: f.r.seen[0]}, f.tick()
}

// answer delivers the read sent with snap/sent, returning version seq (0: zeroes).
func (f *fakeReads) answer(snap readSnap, sent time.Duration, seq uint64) {
	data := make([]byte, CheckBlockSize)
	if seq != 0 {
		MakeCheckBlock(data, 0, seq, nil)
	}
	f.r.recMu.Lock()
	defer f.r.recMu.Unlock()
	f.r.observeLocked(0, data, &snap, 0, sent, f.tick())
}

func (f *fakeReads) read(seq uint64) {
	snap, sent := f.send()
	f.answer(snap, sent, seq)
}

func (f *fakeReads) reads() checkReads {
	f.r.recMu.Lock()
	defer f.r.recMu.Unlock()
	return f.r.rd
}

// The live read properties, case by case (checkread.go).
func TestLiveReadProperties(t *testing.T) {
	t.Run("in order", func(t *testing.T) {
		f := newFakeReads(t)
		f.read(0)
		f.issue(101)
		f.read(0) // not landed yet
		f.read(101)
		f.done(101, true)
		f.read(101)
		f.issue(102)
		f.read(101)
		f.done(102, true)
		f.read(102)
		d := f.reads()
		require.Zero(t, d.stale+d.backward+d.corrupt+d.vanished, d.failures)
		require.EqualValues(t, 6, d.blocks)
	})
	t.Run("stale: older than an answered write", func(t *testing.T) {
		f := newFakeReads(t)
		f.issue(101)
		f.done(101, true)
		f.issue(102)
		f.done(102, true)
		f.read(101)
		f.read(0)
		d := f.reads()
		require.EqualValues(t, 2, d.stale)
		require.Equal(t, ReadStale, d.failures[0].Kind)
		require.EqualValues(t, 102, d.failures[0].Expected)
		require.Contains(t, d.failures[0].Detail, "returned write #2")
		require.Contains(t, d.failures[1].Detail, "returned zeroes")
	})
	t.Run("backward: an earlier read saw a version whose write is answered later", func(t *testing.T) {
		f := newFakeReads(t)
		f.issue(101)
		f.done(101, true)
		f.issue(102)
		f.read(102) // in flight, already visible
		f.read(101) // went back while 102 was in flight: pending
		require.Zero(t, f.reads().backward)
		f.done(102, true) // ... and 102 is answered: it went backwards
		d := f.reads()
		require.EqualValues(t, 1, d.backward)
		require.Zero(t, d.stale)
		require.Equal(t, ReadBackward, d.failures[0].Kind)
		require.EqualValues(t, 102, d.failures[0].Expected)
		require.EqualValues(t, 101, d.failures[0].Found)
		require.Contains(t, d.failures[0].Detail, "was answered at")
	})
	t.Run("backward: answered while the later read was out", func(t *testing.T) {
		f := newFakeReads(t)
		f.issue(101)
		f.done(101, true)
		f.issue(102)
		f.read(102)
		snap, sent := f.send()
		f.done(102, true)
		f.answer(snap, sent, 101)
		d := f.reads()
		require.EqualValues(t, 1, d.backward, d.failures)
		require.Zero(t, d.stale)
	})
	t.Run("vanished: a version never answered may go", func(t *testing.T) {
		f := newFakeReads(t)
		f.issue(101)
		f.done(101, true)
		f.issue(102)
		f.read(102)
		f.read(101) // pending...
		f.done(102, false)
		f.issue(103)
		f.read(101) // 102 failed before this read: vanished at once
		d := f.reads()
		require.Zero(t, d.backward+d.stale+d.corrupt, d.failures)
		require.EqualValues(t, 1, d.vanished) // the second read compares with 101, seen last
		f.read(102)                           // the failed write had landed after all: allowed
		f.read(101)
		require.EqualValues(t, 2, f.reads().vanished)
		require.Zero(t, f.reads().backward)
	})
	t.Run("concurrent reads are not ordered", func(t *testing.T) {
		f := newFakeReads(t)
		f.issue(101)
		f.done(101, true)
		f.issue(102)
		snap, sent := f.send() // sent before the read that sees 102 is answered
		f.read(102)
		f.answer(snap, sent, 101)
		f.done(102, true)
		require.Zero(t, f.reads().backward, f.reads().failures)
	})
	t.Run("corrupt", func(t *testing.T) {
		f := newFakeReads(t)
		f.issue(101)
		f.done(101, true)
		f.read(105) // never issued
		snap, sent := f.send()
		data := make([]byte, CheckBlockSize)
		MakeCheckBlock(data, 4096, 101, nil) // another block's
		f.r.recMu.Lock()
		f.r.observeLocked(0, data, &snap, 0, sent, f.tick())
		f.r.recMu.Unlock()
		d := f.reads()
		require.EqualValues(t, 2, d.corrupt, d.failures)
		// The same garbage while a write is in flight is a torn overlap.
		f.issue(106)
		snap, sent = f.send()
		f.r.recMu.Lock()
		f.r.observeLocked(0, data, &snap, 0, sent, f.tick())
		f.r.recMu.Unlock()
		require.EqualValues(t, 1, f.reads().torn)
		require.EqualValues(t, 2, f.reads().corrupt)
	})
}

// Live readers against an honest export find nothing, and do read.
func TestCheckReadersPlain(t *testing.T) {
	url, _ := serveCheck(t, device.NewMemory(checkTestBlocks*CheckBlockSize))
	cfg := checkTestConfig(500*time.Millisecond, url)
	cfg.Readers = 2
	cfg.FlushEvery = 8
	res, err := RunCheck(context.Background(), cfg)
	require.NoError(t, err)
	logCheck(t, res)
	require.NoError(t, res.Err())
	require.Equal(t, 2, res.Readers)
	require.Positive(t, res.Reads)
	require.LessOrEqual(t, res.ReadBlocks, res.Reads*checkLiveRead)
	require.Greater(t, res.ReadBlocks, res.Reads)
	require.Zero(t, res.StaleReads+res.BackwardReads+res.CorruptReads+res.VanishedReads)
}

// staleReadDevice serves reads from a copy frozen when armed, while writes
// go on landing: a node that answers reads from old data. The readers see
// it during the load, although the read-back after it is disarmed finds
// every write.
type staleReadDevice struct {
	*device.Memory
	mu     sync.Mutex
	frozen []byte
	armed  atomic.Bool
}

func (d *staleReadDevice) arm() {
	d.mu.Lock()
	d.frozen = make([]byte, d.Size())
	_, _ = d.Memory.ReadAt(d.frozen, 0)
	d.mu.Unlock()
	d.armed.Store(true)
}

func (d *staleReadDevice) ReadAt(p []byte, off int64) (int, error) {
	if d.armed.Load() {
		d.mu.Lock()
		defer d.mu.Unlock()
		return copy(p, d.frozen[off:]), nil
	}
	return d.Memory.ReadAt(p, off)
}

func TestCheckReadersCatchStaleReads(t *testing.T) {
	dev := &staleReadDevice{Memory: device.NewMemory(checkTestBlocks * CheckBlockSize)}
	url, _ := serveCheck(t, dev)
	cfg := checkTestConfig(0, url)
	cfg.Readers = 2
	k, err := StartChecker(context.Background(), cfg)
	require.NoError(t, err)
	defer k.Stop()
	time.Sleep(200 * time.Millisecond)
	dev.arm()
	time.Sleep(300 * time.Millisecond)
	k.Pause()
	dev.armed.Store(false)
	res, err := k.Verify(context.Background(), 0)
	require.NoError(t, err)
	logCheck(t, res)
	require.Zero(t, res.Lost, "the data is all there")
	require.Positive(t, res.StaleReads, "but reads returned old versions")
	require.Equal(t, ReadStale, res.ReadFailures[0].Kind)
	require.Equal(t, url, res.ReadFailures[0].By)
	require.Greater(t, res.ReadFailures[0].Expected, res.ReadFailures[0].Found)
	require.ErrorIs(t, res.Err(), ErrCheckFailed)
	require.Contains(t, res.Err().Error(), "bad reads during the load")
}
