package replication

// Local disk failure and replacement (DRBD's on-io-error, detach, attach).
//
// A failed local I/O follows `disk { on-io-error }`:
//   - pass_on: the error goes to the requester (NBD client or peer) as is;
//   - call-local-io-error: the same, and the local-io-error handler runs
//     (once per attached disk);
//   - detach (the default): the disk goes Failed, the local-io-error handler
//     runs, the metadata is frozen (nothing more is written to the failed
//     device) and the disk is Diskless. The request that failed, and every
//     later one, is served through the peer: a Diskless Primary reads with
//     ReadRequest/ReadReply and writes only to the peer, and a write is
//     answered once the peer has acknowledged it (WriteAck, whatever the
//     protocol: the write must be on a disk, the peer's). A Diskless
//     Secondary refuses the peer's writes (NegAck: the Primary marks them
//     out of sync) and answers barriers without flushing.
//
// A Diskless node serves I/O only while Connected to an UpToDate peer.
// Otherwise `on-no-data-accessible` decides: io-error (the default) fails
// the request with EIO, suspend-io holds it until such a peer is back.
// A Diskless node never promotes (promotion needs UpToDate data), starts no
// new data generation and fences nobody when its peer goes: every write it
// answered is on the peer, which stays the only copy. Under auto-failover
// a Diskless Primary that loses its peer demotes and releases the witness
// lease, so that the peer can take over.
//
// attach (Attach) opens the replaced disk, which create-md initialized:
// whatever its metadata says, its data is Inconsistent and every block is
// out of sync. Connected to an UpToDate peer it sends State{Attached}; the
// peer marks its whole bitmap and runs a resync to it while the session
// stays up (startSyncSource). A Primary keeps serving meanwhile
// (r.partial): a read of a range with an out-of-sync block goes to the
// peer, a write goes to both disks and, once both have it, clears the bits
// of the blocks it covers wholly; resync data arriving later for a block
// whose bit is clear is older than that write and is skipped (the peer's
// WriteAck for the application write can overtake resync data sent before
// it, since they travel on different channels). At the end the resync's
// State{ResyncDone} makes the disk UpToDate (finishSyncTarget).

import (
	"errors"
	"fmt"
	"math"
	"syscall"
	"time"

	"github.com/twinbd/twinbd/bitmap"
	"github.com/twinbd/twinbd/device"
	"github.com/twinbd/twinbd/nbd"
)

// ErrNoData: a Diskless node has no UpToDate peer to serve the request
// (on-no-data-accessible io-error).
var ErrNoData = errors.New("no data accessible")

// DetachedByOperator is the disk reason after `detach`.
const DetachedByOperator = "detached by the operator"

// errDiskless is a local I/O refused because the disk is detached.
var errDiskless = fmt.Errorf("replication: local disk detached (Diskless): %w", syscall.EIO)

// Diskless reports whether the local disk is detached.
func (r *Resource) Diskless() bool { return r.detached.Load() }

// localIOError applies on-io-error to a failed local I/O. It reports true
// when the disk is detached (now or before): the caller then serves the
// request through the peer, or fails it as no data accessible.
func (r *Resource) localIOError(op string, off int64, err error) bool {
	if r.detached.Load() {
		return true
	}
	switch r.res.Disk.OnIOError {
	case "pass_on":
		r.log.Error("local I/O error passed on (on-io-error pass_on)", "op", op, "offset", off, "err", err)
		return false
	case "call-local-io-error":
		r.log.Error("local I/O error passed on (on-io-error call-local-io-error)", "op", op, "offset", off, "err", err)
		if r.ioErrorCalled.CompareAndSwap(false, true) {
			r.runHandler("local-io-error", r.res.Handlers.LocalIOError)
		}
		return false
	}
	r.detach(fmt.Sprintf("%s error at offset %d: %v (on-io-error detach)", op, off, err))
	return true
}

// detach takes the local disk out of service: Failed, the local-io-error
// handler, then Diskless; the peer is told.
func (r *Resource) detach(reason string) {
	r.mu.Lock()
	if r.detached.Load() {
		r.mu.Unlock()
		return
	}
	r.detached.Store(true)
	r.partial.Store(false)
	r.disk = DiskFailed
	r.diskReason = reason
	r.mu.Unlock()
	r.b().meta.Detach()
	r.log.Error("local disk failed: detached", "reason", reason)
	r.runHandler("local-io-error", r.res.Handlers.LocalIOError)
	r.mu.Lock()
	r.disk = DiskDiskless
	if r.link.repl == ReplSyncTarget || r.link.repl == ReplSyncSource {
		r.link.repl = ReplEstablished
	}
	r.mu.Unlock()
	if s := r.sess.Load(); s != nil {
		s.sendMeta(r.myState(0))
	}
	r.pokeWitness()
	r.wakeIO()
}

// Detach is the operator's `detach`: the disk is taken out of service as
// if it had failed. A Primary whose peer is not Connected and UpToDate
// would lose access to its data: refused unless force.
func (r *Resource) Detach(force bool) error {
	if r.detached.Load() {
		return fmt.Errorf("%s: the disk is already detached (Diskless)", r.res.Name)
	}
	if r.Role() == RolePrimary && !r.peerUpToDate() && !force {
		return fmt.Errorf("%w: %s is Primary and its peer is not Connected and UpToDate: detaching would leave no data to serve; connect the peer first (or --force, and I/O fails per on-no-data-accessible)", ErrNoUpToDate, r.res.Name)
	}
	// In-flight writes finish on the disk first.
	unlock := r.lock.Lock(0, math.MaxInt64)
	err := r.b().data.Flush()
	unlock()
	if err != nil {
		r.log.Warn("flush before detach failed", "err", err)
	}
	r.detach(DetachedByOperator)
	return nil
}

// peerUpToDate: a session is up and the peer's disk is UpToDate.
func (r *Resource) peerUpToDate() bool {
	if r.sess.Load() == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.link.peerDisk == DiskUpToDate && r.link.conn == ConnConnected
}

// noData decides what a request of a Diskless node does when its peer
// cannot serve it: an error (io-error), or wait until it can (suspend-io;
// nil: try again).
func (r *Resource) noData() error {
	if r.res.Disk.OnNoDataAccessible != "suspend-io" || r.peer == nil {
		return fmt.Errorf("%w: %s is Diskless and its peer is not Connected and UpToDate (on-no-data-accessible io-error): %w", ErrNoData, r.res.Name, syscall.EIO)
	}
	if !r.writable.Load() {
		return fmt.Errorf("%w: %s is no longer Primary", ErrNotPrimary, r.res.Name)
	}
	select {
	case <-*r.fo.resumed.Load():
	case <-time.After(20 * time.Millisecond):
	}
	return nil
}

// readPeer serves a read through the peer (a Diskless node, or an
// attaching one whose range is not yet synced).
func (r *Resource) readPeer(p []byte, off int64) error {
	for {
		if s := r.sess.Load(); s != nil && r.peerUpToDate() {
			pd := &pending{rng: rng{off, int64(len(p))}, read: true, buf: p}
			if seq, ok := s.register(pd); ok {
				s.writeDataSeq(seq, &ReadRequestMsg{Offset: off, Length: int64(len(p))})
				<-pd.done
				if pd.ok {
					return nil
				}
				if pd.errno != 0 {
					return fmt.Errorf("replication: read from the peer at %d: %w", off, syscall.Errno(pd.errno))
				}
			}
		}
		if err := r.noData(); err != nil {
			return err
		}
	}
}

// readReply completes a readPeer request (data channel).
func (s *session) readReply(seq uint64, m *ReadReplyMsg) error {
	s.mu.Lock()
	p := s.pend[seq]
	if p == nil || !p.read {
		s.mu.Unlock()
		return fmt.Errorf("%w: ReadReply for unknown request %d", ErrMalformed, seq)
	}
	if m.Errno == 0 && len(m.Payload) != len(p.buf) {
		s.mu.Unlock()
		return fmt.Errorf("%w: ReadReply of %d bytes for a read of %d", ErrMalformed, len(m.Payload), len(p.buf))
	}
	delete(s.pend, seq)
	s.mu.Unlock()
	if m.Errno == 0 {
		copy(p.buf, m.Payload)
		p.ok = true
	} else {
		p.errno = m.Errno
	}
	finish(p)
	return nil
}

// replicatePeerOnly writes through the peer alone (Diskless): answered
// once the peer acknowledged it. The caller holds the range lock (*unlock
// releases it); while suspended (no peer) it is released, since a new
// session's handshake locks the whole device, and taken again to retry.
func (r *Resource) replicatePeerOnly(off, length int64, fua bool, msg func(seq uint64) Message, unlock *func()) error {
	for {
		if s := r.sess.Load(); s != nil && r.peerUpToDate() {
			p := &pending{rng: rng{off, length}}
			if seq, ok := s.register(p); ok {
				m := msg(seq)
				if s.writeData(m) == nil {
					if d, isData := m.(*DataMsg); isData {
						r.link.sentBytes.Add(int64(len(d.Payload)))
					}
				}
				t0 := time.Now()
				<-p.done
				r.latPeer.observe(time.Since(t0))
				ok := p.ok
				if _, isTrim := m.(*TrimMsg); ok && fua && isTrim {
					ok = <-s.barrier()
				}
				if ok {
					return r.awaitIO(false)
				}
			}
		}
		(*unlock)()
		err := r.noData()
		*unlock = r.lock.Lock(off, length)
		if err != nil {
			return err
		}
	}
}

// peerIO runs a local I/O for the peer (Secondary side, or a sync source):
// refused when Diskless, and a failure goes through on-io-error.
func (r *Resource) peerIO(op string, off int64, fn func() error) error {
	if r.detached.Load() {
		return errDiskless
	}
	err := fn()
	if err != nil {
		r.localIOError(op, off, err)
	}
	return err
}

// Attach puts a replaced disk (initialized with create-md) into service
// on a Diskless node: it comes back Inconsistent with every block out of
// sync, and a connected UpToDate peer resyncs it while clients go on.
func (r *Resource) Attach() error {
	r.resizeMu.Lock() // the size checked below holds until the disk is in service (resize.go)
	defer r.resizeMu.Unlock()
	if !r.detached.Load() {
		return fmt.Errorf("%s: a disk is attached (%s): nothing to do (`twinbd detach %s` first to replace it)", r.res.Name, r.DiskState(), r.res.Name)
	}
	if r.peer == nil {
		return fmt.Errorf("%s: no peer to resync a new disk from: run `twinbd down %s`, then `up`", r.res.Name, r.res.Name)
	}
	old := r.b()
	data, md, closers, lay, faulty, err := openBacking(r.res, r.host, nil, old.faulty != nil, true)
	if err != nil {
		return err
	}
	lay = locateMetadata(r.log, data, md, lay) // a disk resized before (resize.go)
	closeNew := func() {
		for _, c := range closers {
			c.Close()
		}
	}
	meta, err := bitmap.Open(md, lay)
	if err != nil {
		closeNew()
		return fmt.Errorf("%w: %s: %w", ErrMetadata, metaHint(r.res.Name, r.host, err), err)
	}
	if err := meta.Check(r.res.Name, r.host.NodeID, lay.DataSize); err != nil {
		closeNew()
		return fmt.Errorf("%w: %s: %w", ErrMetadata, r.host.Disk, err)
	}
	if size := r.size.Load(); lay.DataSize < size {
		closeNew()
		return fmt.Errorf("%w: %s gives %d bytes of data, the device has %d: use a disk at least as large and run create-md on it", ErrMetadata, r.host.Disk, lay.DataSize, size)
	}
	if meta.Layout().Granularity != r.bm.Granularity() {
		closeNew()
		return fmt.Errorf("%w: %s has bitmap granularity %d, the resource %d: run create-md again", ErrMetadata, r.host.Disk, meta.Layout().Granularity, r.bm.Granularity())
	}
	if size := r.size.Load(); lay.DataSize > size {
		// A larger disk (or the full-size disk of a device that was
		// shrunk): its metadata takes the device's size, as after a
		// shrink (the space past it stays unused until `resize`), so that
		// the bitmap fits and the next `up` opens the agreed size.
		to, err := bitmap.ShrunkLayout(lay, size)
		if err == nil {
			var bm *bitmap.Bitmap
			if bm, err = meta.ReadBitmap(); err == nil {
				err = meta.Shrink(to, bitmap.ShrinkOptions{Bitmap: bm})
			}
		}
		if err != nil {
			closeNew()
			return fmt.Errorf("replication: %s: fit the new disk's metadata to the device's %d bytes: %w", r.res.Name, size, err)
		}
		r.log.Info("attach: the new disk is larger than the device; its metadata keeps the device's size", "disk-data", lay.DataSize, "size", size)
		lay = to
	}
	bk := &backing{data: data, local: nbd.NewDeviceExport(data, false), closer: closers, faulty: faulty, meta: meta}
	if _, err := r.openAL(bk, lay); err != nil {
		closeNew()
		return err
	}
	// Whatever the new disk's metadata says, its data is not current. It
	// takes the generation of the disk it replaces (kept in memory since
	// the failure: a Diskless node starts none), so that a connect after a
	// broken link finds the nodes related, and this side Inconsistent: a
	// resync into it, by the bitmaps (DecideSync, rule a).
	gen := old.meta.Superblock()
	if err := meta.Update(func(sb *bitmap.Superblock) {
		sb.Current, sb.Bitmap, sb.History = gen.Current, gen.Bitmap, gen.History
		sb.Flags &^= bitmap.FlagConsistent | bitmap.FlagWasUpToDate | bitmap.FlagOutdated | bitmap.FlagCrashedPrimary | bitmap.FlagPrimaryInd
		if r.Role() == RolePrimary {
			sb.Flags |= bitmap.FlagPrimaryInd
		}
	}); err != nil {
		closeNew()
		return fmt.Errorf("replication: %s: write metadata on the new disk: %w", r.res.Name, err)
	}
	// No application write and no peer data in between: every block is
	// out of sync from the moment the disk is in service.
	unlock := r.lock.Lock(0, math.MaxInt64)
	r.bm.SetAll()
	if err := meta.WriteBitmap(r.bm); err != nil {
		unlock()
		closeNew()
		return fmt.Errorf("replication: %s: write the bitmap on the new disk: %w", r.res.Name, err)
	}
	r.bk.Store(bk)
	r.mu.Lock()
	r.partial.Store(r.role == RolePrimary)
	r.detached.Store(false)
	r.ioErrorCalled.Store(false)
	r.disk = DiskInconsistent
	r.diskReason = ""
	s := r.sess.Load()
	if s != nil && r.link.peerDisk == DiskUpToDate {
		r.link.repl = ReplSyncTarget
		r.link.syncTotal = r.bm.Count()
		r.link.syncStart = time.Now()
		r.link.syncedBytes.Store(0)
	}
	r.mu.Unlock()
	unlock()
	for _, c := range old.closer {
		c.Close()
	}
	r.log.Info("new disk attached: Inconsistent, full resync from the peer", "backing", r.host.Disk, "size", lay.DataSize)
	if s != nil {
		s.sendMeta(r.myState(StateAttached))
	}
	return nil
}

// startSyncSource makes this UpToDate node the sync source of the whole
// device for a peer that attached a new disk, while the session stays up.
func (s *session) startSyncSource() {
	r := s.r
	if r.detached.Load() || r.DiskState() != DiskUpToDate {
		r.log.Warn("peer attached a new disk but this node has no UpToDate data to send", "disk", r.DiskState())
		return
	}
	unlock := r.lock.Lock(0, math.MaxInt64)
	r.bm.SetAll()
	if err := r.b().meta.WriteBitmap(r.bm); err != nil {
		r.log.Warn("writing the bitmap failed", "err", err)
	}
	r.mu.Lock()
	s.toPrimary.Store(r.link.peerRole == RolePrimary)
	running := r.link.repl == ReplSyncSource
	r.link.repl = ReplSyncSource
	r.link.peerDisk = DiskInconsistent
	r.link.syncTotal = r.bm.Count()
	r.link.syncStart = time.Now()
	r.link.syncedBytes.Store(0)
	r.mu.Unlock()
	unlock()
	r.log.Info("peer attached a new disk: full resync to it", "peer", r.peer.Name, "out-of-sync", r.bm.Bytes())
	if running {
		return // the running resync finds the new bits
	}
	s.csums = false
	s.syncedAt = time.Now()
	s.extra.Go(s.resync)
}

// DiskFault injects a fault into the backing disk (daemon started with
// --fault-injection): mode on [off, off+length), length 0 the whole disk.
func (r *Resource) DiskFault(mode device.FaultMode, off, length int64) error {
	f := r.b().faulty
	if f == nil {
		return errors.New("fault injection is off: start the daemon with --fault-injection")
	}
	f.SetFault(mode, off, length)
	r.log.Warn("disk fault injected", "mode", mode, "offset", off, "length", length)
	return nil
}

// PowerFail simulates a power failure of the backing disk: every write not
// flushed (nor FUA) is reverted and the disk fails all I/O from then on;
// the caller ends the process at once. It returns the bytes reverted.
func (r *Resource) PowerFail() (int64, error) {
	f := r.b().faulty
	if f == nil {
		return 0, errors.New("fault injection is off: start the daemon with --fault-injection")
	}
	return f.PowerFail()
}

// applyResyncPartial writes resync data on an attaching Primary: only the
// blocks still out of sync. A block an application write has cleared since
// holds newer data than this (see the top of this file). p nil: zeroes.
// The run's range lock is held, so no application write changes its bits
// meanwhile.
func (r *Resource) applyResyncPartial(off, length int64, p []byte) error {
	gran := r.bm.Granularity()
	local := r.b().local
	for at := off; at < off+length; {
		end := min((at/gran+1)*gran, off+length)
		if r.bm.CountRange(at, end-at) == 0 {
			at = end
			continue
		}
		// Extend over the following out-of-sync blocks.
		for end < off+length {
			next := min(end+gran, off+length)
			if r.bm.CountRange(end, next-end) == 0 {
				break
			}
			end = next
		}
		var err error
		if p == nil {
			err = local.WriteZeroes(at, end-at, false, false)
		} else {
			err = local.WriteAt(p[at-off:end-off], at, false)
		}
		if err != nil {
			return err
		}
		at = end
	}
	return nil
}
