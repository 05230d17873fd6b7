package device

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every caller's write, completed before it called Sync, is durable when
// Sync returns: the sync that answered it started after the write.
func TestGroupSyncCoversEarlierWrites(t *testing.T) {
	var g groupSync
	var mu sync.Mutex
	written := map[int]bool{} // completed writes
	durable := map[int]bool{} // covered by a finished sync
	var syncs, calls atomic.Int64
	fn := func() error {
		syncs.Add(1)
		mu.Lock()
		snap := make([]int, 0, len(written))
		for id := range written {
			snap = append(snap, id)
		}
		mu.Unlock()
		time.Sleep(200 * time.Microsecond) // the disk at work
		mu.Lock()
		for _, id := range snap {
			durable[id] = true
		}
		mu.Unlock()
		return nil
	}
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := range 200 {
				id := w*1000 + i
				mu.Lock()
				written[id] = true
				mu.Unlock()
				calls.Add(1)
				if !assert.NoError(t, g.Sync(fn)) {
					return
				}
				mu.Lock()
				ok := durable[id]
				mu.Unlock()
				if !assert.True(t, ok, "write %d answered before a sync covered it", id) {
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d callers, %d syncs", calls.Load(), syncs.Load())
	require.Less(t, syncs.Load(), calls.Load(), "concurrent callers never shared a sync")
}

// A failed sync reports to the callers it was meant for.
func TestGroupSyncErrorGoesToItsBatch(t *testing.T) {
	var g groupSync
	boom := errors.New("boom")
	release := make(chan struct{})
	entered := make(chan struct{})
	first := make(chan error)
	go func() {
		first <- g.Sync(func() error { close(entered); <-release; return nil })
	}()
	<-entered
	// Two callers arrive while the first sync runs: one failing sync for both.
	var n atomic.Int32
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			errs <- g.Sync(func() error { n.Add(1); return boom })
		}()
	}
	require.Eventually(t, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.next != nil && g.next.callers == 2
	}, 5*time.Second, time.Millisecond)
	close(release)
	require.NoError(t, <-first)
	require.ErrorIs(t, <-errs, boom)
	require.ErrorIs(t, <-errs, boom)
	require.Equal(t, int32(1), n.Load())
	// The next caller may have written while the failed sync ran: it gets
	// the error too; the one after that its own result.
	require.ErrorIs(t, g.Sync(func() error { return nil }), boom)
	require.NoError(t, g.Sync(func() error { return nil }))
}

// Callers that gathered while a sync failed get its error even when their
// own sync succeeds: the failed one may have consumed the writeback error
// for their pages.
func TestGroupSyncErrorReachesTheBatchThatGatheredMeanwhile(t *testing.T) {
	var g groupSync
	boom := errors.New("boom")
	release := make(chan struct{})
	entered := make(chan struct{})
	first := make(chan error)
	go func() {
		first <- g.Sync(func() error { close(entered); <-release; return boom })
	}()
	<-entered
	waitCallers := func(n int) {
		require.Eventually(t, func() bool {
			g.mu.Lock()
			defer g.mu.Unlock()
			return g.next != nil && g.next.callers == n
		}, 5*time.Second, time.Millisecond)
	}
	// Two callers gather while the failing sync runs; their own sync
	// succeeds.
	release2 := make(chan struct{})
	entered2 := make(chan struct{})
	var once sync.Once
	fn2 := func() error { once.Do(func() { close(entered2) }); <-release2; return nil }
	second := make(chan error, 2)
	for range 2 {
		go func() { second <- g.Sync(fn2) }()
	}
	waitCallers(2)
	close(release)
	require.ErrorIs(t, <-first, boom)
	<-entered2
	// A third caller gathers while that successful sync runs: it gets its
	// own result, the error is not passed along further.
	third := make(chan error)
	go func() { third <- g.Sync(func() error { return nil }) }()
	waitCallers(1)
	close(release2)
	require.ErrorIs(t, <-second, boom)
	require.ErrorIs(t, <-second, boom)
	require.NoError(t, <-third)
	require.NoError(t, g.Sync(func() error { return nil }))
}
