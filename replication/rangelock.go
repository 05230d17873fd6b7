package replication

import (
	"math"
	"sync"
)

// rangeLock grants exclusive access to byte ranges [off, off+length).
// Requests that overlap are granted strictly in the order Lock was called
// (FIFO among overlapping requests, including ones still waiting: a later
// request never overtakes an earlier overlapping one, even if the earlier one
// is itself still waiting). Non-overlapping requests never wait for each other.
// The zero value is ready to use.
//
// It keeps DESIGN invariant 3 on both nodes: overlapping writes are applied in
// the order they were registered, and resync data and application writes to
// the same block never race. A whole-device request such as
// [0, math.MaxInt64) is a barrier: it waits for every earlier request and
// blocks every later one until it is released.
//
// Rule: a request is granted exactly when no earlier request (granted or
// still waiting) overlaps it. Requests are kept in one slice in registration
// order; granted ones stay in it until released, so a waiting request blocks
// later overlapping ones just as a granted one does (A holds [0,10), B waits
// for [5,15), then C [12,20) waits for B although A does not touch it).
//
// Cost: Enqueue is O(n) and release O(n·k) (k = waiting requests the released
// one overlapped) over the n requests held or waiting, under one mutex. Per
// request it allocates the release closure and, only if the request has to
// wait, its channel; the slice of requests is reused.
type rangeLock struct {
	mu     sync.Mutex
	reqs   []rangeReq // in registration order, so sorted by id
	nextID uint64
}

// rangeReq is one registered request. It lives by value in rangeLock.reqs and
// is found again by id, so a request costs no allocation of its own.
type rangeReq struct {
	id      uint64
	off     int64         // first byte
	last    int64         // last byte, inclusive (no overflow at the top)
	ch      chan struct{} // nil unless the request had to wait
	granted bool
}

// closedChan is handed out by Enqueue for requests granted at once.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// rangeLast returns the inclusive last byte of [off, off+length), treating
// length <= 0 as 1 and saturating at math.MaxInt64 instead of overflowing.
func rangeLast(off, length int64) int64 {
	if length <= 1 {
		return off
	}
	if off > 0 && length-1 > math.MaxInt64-off {
		return math.MaxInt64
	}
	return off + (length - 1)
}

func (a *rangeReq) overlaps(off, last int64) bool {
	return a.off <= last && off <= a.last
}

// Lock blocks until [off, off+length) is granted and returns its release
// function (idempotent; safe to call from another goroutine). length 0 is
// treated as length 1 (it still orders against overlapping ranges).
func (l *rangeLock) Lock(off, length int64) (unlock func()) {
	ch, unlock := l.enqueue(off, length)
	if ch != nil {
		<-ch
	}
	return unlock
}

// Enqueue registers the request in FIFO order without blocking and returns
// a channel closed when it is granted plus the release function. It lets a
// single receiver goroutine register requests in stream order and hand the
// waiting to workers. Releasing a request before it was granted cancels it
// (and must still let later requests proceed); the channel of a cancelled
// request is never closed, so whoever waits on it must also watch its own
// cancellation.
func (l *rangeLock) Enqueue(off, length int64) (granted <-chan struct{}, unlock func()) {
	ch, unlock := l.enqueue(off, length)
	if ch == nil {
		return closedChan, unlock
	}
	return ch, unlock
}

// enqueue registers the request. It returns a nil channel when the request was
// granted at once, else the channel that is closed when it is granted.
func (l *rangeLock) enqueue(off, length int64) (chan struct{}, func()) {
	last := rangeLast(off, length)
	l.mu.Lock()
	id := l.nextID
	l.nextID++
	r := rangeReq{id: id, off: off, last: last, granted: true}
	for i := range l.reqs {
		if l.reqs[i].overlaps(off, last) {
			r.granted = false
			r.ch = make(chan struct{})
			break
		}
	}
	l.reqs = append(l.reqs, r)
	l.mu.Unlock()
	return r.ch, func() { l.release(id) }
}

// release removes request id (granted or still waiting) and grants the waiting
// requests it was holding back that now have no earlier overlapping request.
// Releasing an id that is gone already does nothing.
func (l *rangeLock) release(id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	i, ok := l.find(id)
	if !ok {
		return
	}
	gone := l.reqs[i]
	copy(l.reqs[i:], l.reqs[i+1:])
	l.reqs[len(l.reqs)-1] = rangeReq{} // drop the channel reference
	l.reqs = l.reqs[:len(l.reqs)-1]

	// Only later waiting requests that overlapped the released one can have
	// become grantable; earlier ones never depended on it.
	for j := i; j < len(l.reqs); j++ {
		w := &l.reqs[j]
		if w.granted || !gone.overlaps(w.off, w.last) {
			continue
		}
		blocked := false
		for k := 0; k < j; k++ {
			if l.reqs[k].overlaps(w.off, w.last) {
				blocked = true
				break
			}
		}
		if !blocked {
			w.granted = true
			close(w.ch)
		}
	}
}

// find returns the index of request id in l.reqs (sorted by id). l.mu is held.
func (l *rangeLock) find(id uint64) (int, bool) {
	lo, hi := 0, len(l.reqs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if l.reqs[m].id < id {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo, lo < len(l.reqs) && l.reqs[lo].id == id
}

// Held reports the number of granted plus waiting requests (for tests/stats).
func (l *rangeLock) Held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.reqs)
}
