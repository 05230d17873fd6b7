package device

import "sync"

// groupSync shares one fdatasync among concurrent callers ("group commit").
// A caller is covered by the first sync that starts after it called Sync:
// every write it completed before calling is then durable. While a sync
// runs, new callers gather into the next batch; when it ends, one of them
// runs a single sync for the whole batch and each gets that sync's result.
// A sync error goes to every caller of its batch, and also to the batch that
// gathered while it ran: that sync may have written back those callers'
// pages too and taken the error for them (Linux reports a writeback error
// once per open file), so their own, later sync could report success for
// data that never reached the disk. (When nobody gathered, the next batch
// to form gets it: its first caller may have written during that sync.)
type groupSync struct {
	mu      sync.Mutex
	cond    sync.Cond // signalled when a sync ends
	running bool      // a sync is in progress
	next    *syncBatch
	carry   error // the last sync's error, for the next batch when none gathered
}

type syncBatch struct {
	callers int
	done    bool
	err     error
	overlap error // the error of a sync that ran while this batch gathered
}

// Sync returns once a call of fn that started after Sync was called has
// returned, with that call's error.
func (g *groupSync) Sync(fn func() error) error {
	g.mu.Lock()
	if g.cond.L == nil {
		g.cond.L = &g.mu
	}
	if g.next == nil {
		g.next = &syncBatch{overlap: g.carry}
		g.carry = nil
	}
	b := g.next // no sync for b has started: it starts after this call
	b.callers++
	for !b.done {
		if !g.running {
			// Lead b: later callers join a new batch, since this sync
			// may start before their writes completed.
			g.running = true
			g.next = nil
			g.mu.Unlock()
			err := fn()
			g.mu.Lock()
			if err != nil { // only this sync's own error: no chain
				if g.next != nil {
					g.next.overlap = err
				} else {
					g.carry = err // a caller may have written meanwhile
				}
			}
			if err == nil {
				err = b.overlap
			}
			b.err, b.done = err, true
			g.running = false
			g.cond.Broadcast()
			break
		}
		g.cond.Wait()
	}
	err := b.err
	g.mu.Unlock()
	return err
}
