package replication

// Operator verbs that change which data is current: invalidate,
// invalidate-remote, outdate, and online verify.

import (
	"errors"
	"fmt"
	"time"

	"github.com/twinbd/twinbd/bitmap"
)

// Online verify compares runs of verifyChunk bytes, verifyWindow in flight.
const (
	verifyChunk  = 64 << 10
	verifyWindow = 32
)

// ErrNotConnected: the verb needs an established peer link.
var ErrNotConnected = errors.New("not connected to the peer")

// needPeer is called with r.mu held.
func (r *Resource) needPeer() error {
	switch {
	case r.down:
		return ErrDown
	case r.peer == nil:
		return fmt.Errorf("replication: %s has no peer in the resource file", r.res.Name)
	}
	return nil
}

// Invalidate discards this node's data: the disk becomes Inconsistent with
// every block out of sync, and a full sync from the peer follows (at once
// if connected, else at the next connect). Refused on a Primary.
func (r *Resource) Invalidate() error {
	r.mu.Lock()
	if err := r.needPeer(); err != nil {
		r.mu.Unlock()
		return err
	}
	if r.role == RolePrimary {
		r.mu.Unlock()
		return fmt.Errorf("%w: %s is Primary here; demote it first, or run invalidate-remote on this node to overwrite the peer instead", ErrInUse, r.res.Name)
	}
	if r.link.repl == ReplSyncSource {
		r.mu.Unlock()
		return fmt.Errorf("%w: this node is the SyncSource of a running resync", ErrInUse)
	}
	r.mu.Unlock()
	r.bm.SetAll()
	if err := r.b().meta.WriteBitmap(r.bm); err != nil {
		return fmt.Errorf("replication: %s: write bitmap: %w", r.res.Name, err)
	}
	if err := r.b().meta.Update(func(sb *bitmap.Superblock) {
		sb.Flags &^= bitmap.FlagConsistent | bitmap.FlagWasUpToDate
	}); err != nil {
		return fmt.Errorf("replication: %s: write metadata: %w", r.res.Name, err)
	}
	r.setDisk(DiskInconsistent)
	r.log.Warn("local data invalidated: full sync from the peer follows")
	if s := r.sess.Load(); s != nil {
		s.fail(errors.New("invalidated: reconnecting to resync from the peer"))
	}
	return nil
}

// InvalidateRemote overwrites the peer's data with this node's: a new data
// generation starts here with every block out of sync, so the next
// handshake makes this node the SyncSource of a full sync. Needs UpToDate
// data here and a peer that is not Primary.
func (r *Resource) InvalidateRemote() error {
	r.mu.Lock()
	if err := r.needPeer(); err != nil {
		r.mu.Unlock()
		return err
	}
	if r.disk != DiskUpToDate {
		r.mu.Unlock()
		return fmt.Errorf("%w: local disk is %s", ErrNoUpToDate, r.disk)
	}
	if r.link.peerRole == RolePrimary {
		r.mu.Unlock()
		return fmt.Errorf("%w: the peer is Primary; its data cannot be overwritten under it", ErrInUse)
	}
	r.mu.Unlock()
	r.bm.SetAll()
	if err := r.b().meta.WriteBitmap(r.bm); err != nil {
		return fmt.Errorf("replication: %s: write bitmap: %w", r.res.Name, err)
	}
	if err := r.b().meta.Update(func(sb *bitmap.Superblock) {
		g := NewCurrentUUID(Generation{Current: sb.Current, Bitmap: sb.Bitmap, History: sb.History}, randomUUID())
		sb.Current, sb.Bitmap, sb.History = g.Current, g.Bitmap, g.History
	}); err != nil {
		return fmt.Errorf("replication: %s: write metadata: %w", r.res.Name, err)
	}
	r.log.Warn("peer data invalidated: full sync to the peer follows")
	if s := r.sess.Load(); s != nil {
		s.fail(errors.New("invalidate-remote: reconnecting to resync the peer"))
	}
	return nil
}

// Outdate marks this node's data Outdated (it will not be promoted
// without --force). Refused on a Primary.
func (r *Resource) Outdate() error {
	r.mu.Lock()
	if r.down {
		r.mu.Unlock()
		return ErrDown
	}
	if r.role == RolePrimary {
		r.mu.Unlock()
		return fmt.Errorf("%w: %s is Primary here", ErrInUse, r.res.Name)
	}
	if r.disk < DiskOutdated {
		d := r.disk
		r.mu.Unlock()
		return fmt.Errorf("replication: %s: disk is %s, which is already worse than Outdated", r.res.Name, d)
	}
	if r.sess.Load() != nil {
		r.mu.Unlock()
		// DRBD refuses too: connected, the data is kept current by the
		// peer, so Outdated would be false (and undone by the next sync).
		return fmt.Errorf("%w: refusing to be Outdated while Connected to %s: run `twinbd disconnect %s` first", ErrInUse, r.peer.Name, r.res.Name)
	}
	r.mu.Unlock()
	if err := r.b().meta.Update(func(sb *bitmap.Superblock) { sb.Flags |= bitmap.FlagOutdated }); err != nil {
		return fmt.Errorf("replication: %s: write metadata: %w", r.res.Name, err)
	}
	r.setDisk(DiskOutdated)
	return nil
}

// VerifyResult is the outcome of an online verify.
type VerifyResult struct {
	Checked   int64 // bytes compared
	OutOfSync int64 // bytes found different (now marked in the bitmap)
	Took      time.Duration
}

// Verify compares every block with the peer by checksum (online verify,
// verify-alg: xxhash64 by default, crc32c or sha256). Blocks that differ are marked out of
// sync here and reported; as in DRBD they are resynced at the next
// connect that runs a resync (a Primary's disconnect/connect does). It
// runs while applications keep writing: each run holds its range lock.
func (r *Resource) Verify() (VerifyResult, error) {
	alg, err := digestAlg(r.res.Net.VerifyAlg)
	if err != nil {
		return VerifyResult{}, err
	}
	s := r.sess.Load()
	if s == nil {
		return VerifyResult{}, fmt.Errorf("%w: %s", ErrNotConnected, r.res.Name)
	}
	r.mu.Lock()
	if r.link.repl != ReplEstablished {
		repl := r.link.repl
		r.mu.Unlock()
		return VerifyResult{}, fmt.Errorf("%w: replication is %s; verify needs Established", ErrInUse, repl)
	}
	r.link.repl = ReplVerifyS
	size := r.size.Load() // resize waits for Established
	r.link.syncTotal = (size + verifyChunk - 1) / verifyChunk
	r.link.syncStart = time.Now()
	r.link.verifyDone.Store(0)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		if r.link.repl == ReplVerifyS {
			r.link.repl = ReplEstablished
		}
		r.mu.Unlock()
	}()
	start := time.Now()
	var res VerifyResult
	window := make(chan struct{}, verifyWindow)
	var oos, checked int64
	type outcome struct {
		off, length int64
		same, ok    bool
	}
	out := make(chan outcome, verifyWindow)
	sent := 0
	for off := int64(0); off < size; off += verifyChunk {
		length := min(int64(verifyChunk), size-off)
		select {
		case window <- struct{}{}:
		case <-s.deadCh:
			return res, fmt.Errorf("%w: the link broke during verify", ErrNotConnected)
		}
		unlock := r.lock.Lock(off, length)
		buf := make([]byte, length)
		if err := r.b().local.ReadAt(buf, off); err != nil {
			unlock()
			return res, fmt.Errorf("replication: verify: read at %d: %w", off, err)
		}
		p := &pending{}
		o := outcome{off: off, length: length}
		p.onDone = func(p *pending) {
			unlock()
			o.same, o.ok = p.same, p.ok && !s.isDead()
			out <- o
			<-window
		}
		seq, ok := s.register(p)
		if !ok {
			unlock()
			return res, fmt.Errorf("%w: the link broke during verify", ErrNotConnected)
		}
		sent++
		s.writeDataSeq(seq, &ChecksumRequestMsg{Offset: off, Length: length, Sum: digest(alg, buf), Alg: alg})
		// Collect finished ones without blocking.
	drain:
		for {
			select {
			case o := <-out:
				sent--
				if err := r.verifyOutcome(o.off, o.length, o.same, o.ok, &oos, &checked); err != nil {
					return res, err
				}
			default:
				break drain
			}
		}
	}
	for ; sent > 0; sent-- {
		o := <-out
		if err := r.verifyOutcome(o.off, o.length, o.same, o.ok, &oos, &checked); err != nil {
			return res, err
		}
	}
	res = VerifyResult{Checked: checked, OutOfSync: oos, Took: time.Since(start)}
	if oos > 0 {
		if err := r.b().meta.WriteBitmap(r.bm); err != nil {
			return res, fmt.Errorf("replication: verify: write bitmap: %w", err)
		}
		r.log.Warn("online verify found out-of-sync blocks", "bytes", oos)
		r.runHandler("out-of-sync", r.res.Handlers.OutOfSync)
	} else {
		r.log.Info("online verify: replicas identical", "bytes", checked, "took", res.Took.Round(time.Millisecond))
	}
	return res, nil
}

func (r *Resource) verifyOutcome(off, length int64, same, ok bool, oos, checked *int64) error {
	if !ok {
		return fmt.Errorf("%w: the link broke during verify", ErrNotConnected)
	}
	*checked += length
	r.link.verifyDone.Add(1)
	if !same {
		// A whole run differs as far as one checksum can tell: mark it
		// and, block by block, it will be resynced.
		r.bm.SetRange(off, length)
		*oos += length
	}
	return nil
}
