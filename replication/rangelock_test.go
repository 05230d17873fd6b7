package replication

import (
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// granted reports whether ch is closed, without blocking. Grants happen
// synchronously inside Enqueue/unlock, so this is deterministic right after
// those return.
func granted(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func waitGranted(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: not granted", what)
	}
}

func TestRangeLockLast(t *testing.T) {
	for _, c := range []struct{ off, length, last int64 }{
		{0, 10, 9},
		{5, 0, 5},  // length 0 is length 1
		{5, -3, 5}, // so is a negative length
		{7, 1, 7},
		{0, math.MaxInt64, math.MaxInt64 - 1},
		{1, math.MaxInt64, math.MaxInt64}, // would overflow
		{math.MaxInt64 - 10, 1 << 40, math.MaxInt64},
		{math.MaxInt64, 1, math.MaxInt64},
		{math.MaxInt64, math.MaxInt64, math.MaxInt64},
		{-5, 10, 4},
		{math.MinInt64, math.MaxInt64, -2},
	} {
		require.Equal(t, c.last, rangeLast(c.off, c.length), "off=%d length=%d", c.off, c.length)
	}
}

func TestRangeLockNonOverlappingConcurrent(t *testing.T) {
	var l rangeLock
	const n = 32
	// Every goroutine holds its own range until all of them hold theirs: this
	// only finishes if disjoint ranges are held at the same time.
	var all sync.WaitGroup
	all.Add(n)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			unlock := l.Lock(int64(i)*4096, 4096)
			all.Done()
			all.Wait()
			unlock()
		})
	}
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("disjoint ranges waited for each other")
	}
	require.Zero(t, l.Held())

	// Adjacent ranges do not overlap: [0,10) and [10,20).
	u1 := l.Lock(0, 10)
	g, u2 := l.Enqueue(10, 10)
	require.True(t, granted(g))
	require.Equal(t, 2, l.Held())
	u1()
	u2()
	require.Zero(t, l.Held())
}

func TestRangeLockOverlappingFIFO(t *testing.T) {
	var l rangeLock
	first := l.Lock(0, 1000)
	const n = 50
	var (
		mu    sync.Mutex
		order []int
		wg    sync.WaitGroup
	)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range n {
		// All contain byte 500, so every pair overlaps.
		off := rng.Int64N(500)
		g, unlock := l.Enqueue(off, 501-off+rng.Int64N(400))
		require.False(t, granted(g), "request %d granted under a held overlapping range", i)
		pause := time.Duration(rng.IntN(200)) * time.Microsecond
		wg.Go(func() {
			<-g
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			time.Sleep(pause)
			unlock()
		})
	}
	require.Equal(t, n+1, l.Held())
	first()
	wg.Wait()
	want := make([]int, n)
	for i := range want {
		want[i] = i
	}
	require.Equal(t, want, order)
	require.Zero(t, l.Held())
}

// TestRangeLockNoOvertakeWaiting: A holds [0,10), B waits for [5,15), C asks
// [12,20), which overlaps B only. C must wait for B although nothing granted
// overlaps it; D [20,30) overlaps nobody and goes at once.
func TestRangeLockNoOvertakeWaiting(t *testing.T) {
	var l rangeLock
	ga, ua := l.Enqueue(0, 10)
	gb, ub := l.Enqueue(5, 10)
	gc, uc := l.Enqueue(12, 8)
	gd, ud := l.Enqueue(20, 10)
	require.True(t, granted(ga))
	require.False(t, granted(gb))
	require.False(t, granted(gc), "C overtook the waiting B")
	require.True(t, granted(gd))
	require.Equal(t, 4, l.Held())

	ud()
	require.False(t, granted(gc))
	ua()
	require.True(t, granted(gb))
	require.False(t, granted(gc))
	ub()
	require.True(t, granted(gc))
	uc()
	require.Zero(t, l.Held())

	// Same with blocking Lock callers.
	ua2 := l.Lock(0, 10)
	bDone := make(chan func())
	go func() { bDone <- l.Lock(5, 10) }()
	require.Eventually(t, func() bool { return l.Held() == 2 }, 5*time.Second, time.Millisecond)
	cDone := make(chan func())
	go func() { cDone <- l.Lock(12, 8) }()
	require.Eventually(t, func() bool { return l.Held() == 3 }, 5*time.Second, time.Millisecond)
	select {
	case <-cDone:
		t.Fatal("C overtook the waiting B")
	case <-time.After(20 * time.Millisecond):
	}
	ua2()
	ub2 := <-bDone
	select {
	case <-cDone:
		t.Fatal("C granted while B holds")
	case <-time.After(20 * time.Millisecond):
	}
	ub2()
	(<-cDone)()
	require.Zero(t, l.Held())
}

func TestRangeLockBarrier(t *testing.T) {
	var l rangeLock
	_, u1 := l.Enqueue(0, 10)
	_, u2 := l.Enqueue(1<<30, 4096)
	gBar, uBar := l.Enqueue(0, math.MaxInt64)
	require.False(t, granted(gBar))
	// Later requests wait for the barrier even where no earlier one is.
	g3, u3 := l.Enqueue(1<<20, 10)
	g4, u4 := l.Enqueue(math.MaxInt64-100, math.MaxInt64) // overflows off+length
	g5, u5 := l.Enqueue(0, 0)
	require.False(t, granted(g3))
	require.False(t, granted(g4))
	require.False(t, granted(g5))

	u1()
	require.False(t, granted(gBar))
	u2()
	require.True(t, granted(gBar))
	require.False(t, granted(g3))
	require.False(t, granted(g4))
	require.False(t, granted(g5))

	uBar()
	require.True(t, granted(g3))
	require.True(t, granted(g4))
	require.True(t, granted(g5))
	u3()
	u4()
	u5()
	require.Zero(t, l.Held())

	// A barrier with nothing ahead of it is granted at once; then it blocks
	// a Lock caller until released.
	uBar = l.Lock(0, math.MaxInt64)
	got := make(chan func())
	go func() { got <- l.Lock(12345, 1) }()
	select {
	case <-got:
		t.Fatal("request passed a held barrier")
	case <-time.After(20 * time.Millisecond):
	}
	uBar()
	select {
	case u := <-got:
		u()
	case <-time.After(5 * time.Second):
		t.Fatal("request not granted after the barrier was released")
	}
	require.Zero(t, l.Held())
}

func TestRangeLockZeroLength(t *testing.T) {
	var l rangeLock
	u := l.Lock(0, 10)
	g, u0 := l.Enqueue(9, 0) // [9,10): overlaps
	require.False(t, granted(g))
	g2, u2 := l.Enqueue(10, 0) // [10,11): does not
	require.True(t, granted(g2))
	g3, u3 := l.Enqueue(9, 2) // overlaps both zero-length requests
	require.False(t, granted(g3))
	u()
	require.True(t, granted(g))
	require.False(t, granted(g3))
	u0()
	require.False(t, granted(g3))
	u2()
	require.True(t, granted(g3))
	u3()
	require.Zero(t, l.Held())
}

func TestRangeLockCancelBeforeGrant(t *testing.T) {
	var l rangeLock
	_, ua := l.Enqueue(0, 10)
	gb, ub := l.Enqueue(5, 10)  // waits for A
	gc, uc := l.Enqueue(12, 8)  // waits for B only
	gd, ud := l.Enqueue(8, 10)  // waits for A, B and C
	ge, ue := l.Enqueue(14, 10) // waits for C and D
	require.False(t, granted(gb))
	require.False(t, granted(gc))

	ub() // cancel B: C no longer waits for anything
	require.True(t, granted(gc))
	require.False(t, granted(gd))
	require.False(t, granted(gb), "a cancelled request's channel must not be closed")
	require.Equal(t, 4, l.Held())

	ud() // cancel D while C still holds: E still waits for C
	require.False(t, granted(ge))
	uc()
	require.True(t, granted(ge))
	ue()
	ua()
	require.False(t, granted(gb))
	require.False(t, granted(gd))
	require.Zero(t, l.Held())

	// Cancelling a request whose successor waits on nothing else lets a
	// blocked Lock caller through.
	_, ua = l.Enqueue(0, 10)
	_, ub = l.Enqueue(0, 10)
	got := make(chan func())
	go func() { got <- l.Lock(5, 1) }()
	require.Eventually(t, func() bool { return l.Held() == 3 }, 5*time.Second, time.Millisecond)
	ub()
	ua()
	select {
	case u := <-got:
		u()
	case <-time.After(5 * time.Second):
		t.Fatal("successor of a cancelled request never granted")
	}
	require.Zero(t, l.Held())
}

func TestRangeLockDoubleUnlock(t *testing.T) {
	var l rangeLock
	u1 := l.Lock(0, 10)
	u1()
	u1()
	require.Zero(t, l.Held())

	// A stale unlock must not release a later request on the same range.
	u2 := l.Lock(0, 10)
	u1()
	g3, u3 := l.Enqueue(0, 10)
	require.False(t, granted(g3))
	require.Equal(t, 2, l.Held())

	// Unlock from another goroutine, twice, concurrently.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(u2)
	}
	wg.Wait()
	waitGranted(t, g3, "after concurrent double unlock")
	require.Equal(t, 1, l.Held())
	u3()
	u3()
	require.Zero(t, l.Held())

	// Cancel twice.
	u4 := l.Lock(0, 1)
	g5, u5 := l.Enqueue(0, 1)
	u5()
	u5()
	require.Equal(t, 1, l.Held())
	u4()
	require.False(t, granted(g5))
	require.Zero(t, l.Held())
}

// TestRangeLockAllocs: an uncontended request costs one allocation (the
// release closure); a waiting one adds its channel.
func TestRangeLockAllocs(t *testing.T) {
	var l rangeLock
	// Warm up the slice so its growth is not counted.
	var us []func()
	for i := range 64 {
		us = append(us, l.Lock(int64(i)*10, 10))
	}
	for _, u := range us {
		u()
	}
	allocs := testing.AllocsPerRun(100, func() {
		l.Lock(0, 4096)()
	})
	require.LessOrEqual(t, allocs, 1.0)
	allocs = testing.AllocsPerRun(100, func() {
		_, u := l.Enqueue(0, 4096)
		u()
	})
	require.LessOrEqual(t, allocs, 1.0)
}

// rlChecker models the lock: it fails if two overlapping ranges are held at
// once, or if an enqueued request is granted before an earlier enqueued
// overlapping request that was not cancelled.
type rlChecker struct {
	t    *testing.T
	mu   sync.Mutex
	reqs []*rlReq // enqueued requests, in Enqueue order
	held map[*rlReq]bool
	fail bool
}

type rlReq struct {
	off, last int64
	seq       int // index in rlChecker.reqs, -1 for Lock callers
	state     int // rlPending, rlHeld, rlReleased, rlCancelled
}

const (
	rlPending = iota
	rlHeld
	rlReleased
	rlCancelled
)

func (c *rlChecker) errorf(format string, args ...any) {
	c.fail = true
	c.t.Errorf(format, args...)
}

func (c *rlChecker) acquired(r *rlReq) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for h := range c.held {
		if h.off <= r.last && r.off <= h.last {
			c.errorf("[%d,%d] granted while overlapping [%d,%d] is held", r.off, r.last, h.off, h.last)
		}
	}
	if r.seq >= 0 {
		for _, e := range c.reqs[:r.seq] {
			if e.off <= r.last && r.off <= e.last && e.state != rlReleased && e.state != rlCancelled {
				c.errorf("request %d [%d,%d] granted before earlier overlapping request %d [%d,%d] (state %d)",
					r.seq, r.off, r.last, e.seq, e.off, e.last, e.state)
			}
		}
	}
	r.state = rlHeld
	c.held[r] = true
}

func (c *rlChecker) released(r *rlReq, state int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.held, r)
	r.state = state
}

func TestRangeLockStress(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed>>7))
	var rngMu sync.Mutex
	randN := func(n int) int {
		rngMu.Lock()
		defer rngMu.Unlock()
		return rng.IntN(n)
	}

	var l rangeLock
	c := &rlChecker{t: t, held: map[*rlReq]bool{}}
	randRange := func() (int64, int64) {
		switch randN(100) {
		case 0:
			return 0, math.MaxInt64 // barrier
		case 1:
			return math.MaxInt64 - int64(randN(50)), math.MaxInt64 // overflows
		}
		return int64(randN(300)), int64(randN(30)) // length 0 included
	}
	work := func() {
		if randN(4) == 0 {
			time.Sleep(time.Duration(randN(50)) * time.Microsecond)
		}
	}

	n := 3000
	if testing.Short() {
		n = 500
	}
	var wg sync.WaitGroup

	// Lock callers, racing with the enqueuer: only mutual exclusion is
	// checked for them (their order among themselves is not known).
	for range 8 {
		wg.Go(func() {
			for range n / 20 {
				off, length := randRange()
				r := &rlReq{off: off, last: rangeLast(off, length), seq: -1}
				unlock := l.Lock(off, length)
				c.acquired(r)
				work()
				c.released(r, rlReleased)
				unlock()
			}
		})
	}

	// One enqueuer registers requests in a known order and hands the waiting
	// to workers; some requests are cancelled (released by another goroutine
	// without waiting, granted or not).
	for i := range n {
		off, length := randRange()
		r := &rlReq{off: off, last: rangeLast(off, length), seq: i}
		c.mu.Lock()
		c.reqs = append(c.reqs, r)
		c.mu.Unlock()
		g, unlock := l.Enqueue(off, length)
		if randN(10) == 0 {
			wg.Go(func() {
				work()
				c.released(r, rlCancelled) // before unlock: successors see it
				unlock()
				unlock()
			})
			continue
		}
		wg.Go(func() {
			select {
			case <-g:
			case <-time.After(30 * time.Second):
				t.Errorf("request %d [%d,%d] never granted", i, r.off, r.last)
				return
			}
			c.acquired(r)
			work()
			c.released(r, rlReleased)
			unlock()
			if randN(5) == 0 {
				unlock()
			}
		})
		if randN(8) == 0 {
			work()
		}
	}
	wg.Wait()
	require.False(t, c.fail)
	require.Zero(t, l.Held())
}

func BenchmarkRangeLockDisjoint(b *testing.B) {
	var l rangeLock
	// Tens of requests in flight, as on the write path.
	var us []func()
	for i := range 32 {
		us = append(us, l.Lock(int64(i+1)<<20, 4096))
	}
	b.ReportAllocs()
	for b.Loop() {
		l.Lock(0, 4096)()
	}
	for _, u := range us {
		u()
	}
}
