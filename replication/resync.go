package replication

// Resync, source side. The source walks its bitmap (already ORed with the
// target's at connect), in runs of up to resyncChunk bytes, at most
// resyncWindow runs in flight, at resync-rate (or c-max-rate) if set. For
// each run it holds the range lock from reading the block until the target
// acknowledges it, so an application write to the same blocks waits and is
// sent after the resync data (invariant 3); the bits are cleared only on the
// target's WriteAck (invariant 4).
//
// Checksum-based resync (csums-alg, and always after a Primary crash, when
// the blocks in the activity log are probably identical): the source sends
// a ChecksumRequest with the digest (csums-alg, xxhash64 by default) of its run; the target answers whether
// its copy matches, and only runs that differ are sent. An all-zero run goes
// as a ResyncZero record, other data zstd-compressed when that pays.
//
// When the bitmap is empty and nothing is in flight, the source makes the
// target flush (a barrier), sends State{ResyncDone} with its generation
// UUIDs on the data channel (after all resync data), and then clears its own
// bitmap UUID: a crash in between leaves a bitmap UUID that the next
// connect resolves with an empty bitmap sync (DecideSync row 3a).

import (
	"fmt"
	"time"

	"github.com/twinbd/twinbd/bitmap"
)

func (s *session) writeDataSeq(seq uint64, m Message) error {
	if err := s.dw.send(seq, m); err != nil {
		s.fail(fmt.Errorf("data channel: %w", err))
		return err
	}
	return nil
}

// resyncRate is the resync byte rate limit (0: none).
func (r *Resource) resyncRate() int64 {
	if r.res.Disk.ResyncRate > 0 {
		return r.res.Disk.ResyncRate
	}
	return r.res.Disk.CMaxRate
}

func (s *session) resync() {
	r := s.r
	gran := r.bm.Granularity()
	window := make(chan struct{}, resyncWindow)
	start := time.Now()
	var sent int64
	rate := r.resyncRate()
	cursor := int64(0)
	for {
		if s.isDead() {
			return
		}
		bit, ok := r.bm.NextSet(cursor)
		if !ok {
			// Drain the window, then look again: a failed run set its
			// bits back.
			for range resyncWindow {
				select {
				case window <- struct{}{}:
				case <-s.deadCh:
					return
				}
			}
			for range resyncWindow {
				<-window
			}
			if r.bm.Count() == 0 {
				s.finishSource()
				return
			}
			cursor = 0
			continue
		}
		chunk := int64(resyncChunk)
		if s.csums {
			chunk = csumsChunk // finer: only the runs that differ move
		}
		n := int64(1)
		for n*gran < chunk && bit+n < r.bm.Len() && r.bm.TestBit(bit+n) {
			n++
		}
		cursor = bit + n
		off := bit * gran
		length := min(n*gran, r.size.Load()-off)
		if length <= 0 {
			// Bits past the exported size (a smaller `size` than the
			// data area): nothing to send.
			r.bm.ClearRange(off, n*gran)
			continue
		}
		if rate > 0 {
			due := start.Add(time.Duration(float64(sent) / float64(rate) * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				select {
				case <-time.After(d):
				case <-s.deadCh:
					return
				}
			}
		}
		select {
		case window <- struct{}{}:
		case <-s.deadCh:
			return
		}
		sent += length
		s.resyncRun(off, length, func() { <-window })
	}
}

// resyncRun sends one run (checksum first if csums) and calls done when
// the target has answered or the session died.
func (s *session) resyncRun(off, length int64, done func()) {
	r := s.r
	// Not Lock: an application write holding the range waits for its ack,
	// which only the teardown gives once this goroutine has returned
	// (found by TestPairRandomFaults, seed 21).
	granted, unlock := r.lock.Enqueue(off, length)
	select {
	case <-granted:
	case <-s.deadCh:
		unlock()
		done()
		return
	}
	buf := make([]byte, length)
	if err := r.peerIO("resync read", off, func() error { return r.b().local.ReadAt(buf, off) }); err != nil {
		unlock()
		done()
		r.log.Error("resync: reading local data failed", "off", off, "err", err)
		s.fail(fmt.Errorf("resync source: read at %d: %w", off, err))
		return
	}
	if s.toPrimary.Load() {
		// The target is an attaching Primary: its application writes
		// come to this node, and the target orders them against resync
		// data itself (disk.go). Holding the range until its ack would
		// deadlock with a write of the same range waiting for ours.
		unlock()
		unlock = func() {}
	}
	sendData := func() {
		p := &pending{rng: rng{off, length}}
		p.onDone = func(p *pending) {
			if p.ok {
				r.bm.ClearRange(off, length)
				r.link.syncedBytes.Add(length)
			}
			unlock()
			done()
		}
		seq, ok := s.register(p)
		if !ok {
			unlock()
			done()
			return
		}
		m := &ResyncDataMsg{Seq: seq, Offset: off}
		EncodeResyncData(m, buf)
		r.link.resyncWire.Add(int64(len(m.Payload)) + HeaderSize + resyncFixed)
		s.writeDataSeq(0, m) // a failure kills the session; teardown finishes p
	}
	if !s.csums {
		sendData()
		return
	}
	p := &pending{rng: rng{off, length}}
	p.onDone = func(p *pending) {
		switch {
		case !p.ok || s.isDead():
			unlock()
			done()
		case p.same:
			r.bm.ClearRange(off, length)
			r.link.syncedBytes.Add(length)
			unlock()
			done()
		default:
			// Called from the meta reader: never block it on the data
			// channel.
			go sendData()
		}
	}
	seq, ok := s.register(p)
	if !ok {
		unlock()
		done()
		return
	}
	r.link.resyncWire.Add(HeaderSize + csumReqSize)
	s.writeDataSeq(seq, &ChecksumRequestMsg{Offset: off, Length: length, Sum: digest(s.csumAlg, buf), Alg: s.csumAlg})
}

// finishSource completes the resync on the source side.
func (s *session) finishSource() {
	r := s.r
	// Not <-barrier() alone: teardown answers barriers only after this
	// goroutine has returned (found by TestPairRandomFaults, seed 4).
	select {
	case ok := <-s.barrier():
		if !ok {
			return
		}
	case <-s.deadCh:
		return
	}
	sb := r.b().meta.Superblock()
	g := Generation{Current: sb.Current, Bitmap: sb.Bitmap, History: sb.History}
	if g.Bitmap != 0 {
		g.History[1], g.History[0] = g.History[0], g.Bitmap
		g.Bitmap = 0
	}
	done := r.myState(StateResyncDone)
	done.Current, done.Bitmap, done.History = g.Current, 0, g.History
	if s.writeDataSeq(0, done) != nil {
		return
	}
	if err := r.b().meta.Update(func(sb *bitmap.Superblock) {
		sb.Bitmap, sb.History = g.Bitmap, g.History
	}); err != nil {
		s.fail(fmt.Errorf("resync done: write metadata: %w", err))
		return
	}
	if err := r.b().meta.WriteBitmap(r.bm); err != nil {
		r.log.Warn("resync done: writing the bitmap failed", "err", err)
	}
	// Read before replication is Established: from then on a new
	// mid-session resync (startSyncSourceRange) may set syncedAt again.
	took, bytes, wire := time.Since(s.syncedAt).Round(time.Millisecond), r.link.syncedBytes.Load(), r.link.resyncWire.Load()
	r.mu.Lock()
	r.link.repl = ReplEstablished
	r.mu.Unlock()
	r.log.Info("resync finished", "peer", r.peer.Name, "bytes", bytes, "on-wire", wire, "took", took)
}
