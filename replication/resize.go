package replication

// Online resize (drbdadm resize) and a resync started mid-session.
//
// # Growing a connected pair
//
// The operator grows both backing devices (truncate, lvextend) while the
// resource is up and connected, then runs `twinbd resize R` on the Primary
// (or on either node when both are Secondary). Resize, on that node (the
// initiator, and the sync source):
//
//  1. Probe: a Resize{Probe} on the data channel; the peer refreshes its
//     device size and answers (meta channel) with its capacity, its size
//     and where its internal metadata lies. Nothing changes yet.
//  2. The new size n is --size, or the smaller capacity (capped by the
//     `disk { size }` the initiator's resource file sets now, since every
//     `up` exports no more than that). Smaller than now is a shrink (below);
//     equal is nothing to do.
//  3. Commit on the peer: a Resize{n, marks} on the data channel, after
//     every write sent before it. The peer applies it under a whole-device
//     range lock, so after every earlier write and before every later one:
//     it moves its metadata and grows (bitmap.Meta.Grow), the marked range
//     out of sync in the same durable commit, and — when anything is marked
//     — clears its Consistent flag in that commit, so it is Inconsistent
//     (not promotable) from the moment it has the new size. It answers.
//  4. Only then does the initiator grow, under its own whole-device range
//     lock (no write in flight, none started): its metadata, its data
//     window, and last its exported size (an atomic read on every request;
//     an NBD connection keeps the size it was given at its handshake, new
//     connections get the new one). Writes past the old size were refused
//     by the range check until this moment, so none can reach the peer
//     before the peer has grown.
//  5. If anything is marked, startSyncSourceRange: the peer becomes SyncTarget
//     of that range while the session stays up, and the existing resync
//     loop copies it. The verb returns once the sync runs (wait-sync waits).
//
// What is marked out of sync: the new area [old size, n), unless
// --assume-clean (the operator says it is identical on both, e.g. zeroed);
// and always the old internal metadata areas of both nodes that now lie
// inside the data, which differ between the nodes by nature (each node
// also zeroes its own).
//
// # Failures and crashes
//
// Each node's metadata move is crash-safe on its own (bitmap/resize.go: a
// crash at any step opens with the old or the new size). Between the two
// nodes, the peer grows first and the initiator second, so an interruption
// (a crash, a broken link, a failed write) can leave the peer at n and the
// initiator at the old size, never the other way round. The next connect
// then refuses with "size mismatch" (its message says what to do) and
// records the peer's size; `twinbd resize R` on the smaller node, though
// disconnected, finishes the resize to exactly that size: the one case in
// which resize runs without a connection (DRBD has --assume-peer-has-space
// for a related case; twinbd takes the size from the peer instead of
// assuming it). After `connect`, the peer, Inconsistent with its marks,
// is the target of a resync from the initiator, which merges both bitmaps.
// That also covers the window of external metadata in which the marks in
// the old bitmap area's last block are not yet on disk: the other node
// holds the same marks durably, and the connect merges them.
//
// A crash between the operator growing a device and the resize's first
// flush on that node leaves internal metadata that `up` cannot find (it is
// no longer at the end): up refuses with a message that says to restore
// the old size (logged as backing-size at up) and grow again while up.
//
// # Shrinking a connected pair
//
// `twinbd resize R --size S --force` with S below the current size (the
// operator has shrunk the filesystem on top first; without --force the
// refusal says so). Same preconditions as a grow: run on the Primary, or on
// either node when both are Secondary; Established; UpToDate here. The
// order is the grow's reversed in spirit: a grow must not let a write past
// the old end reach a peer that has not grown, so the peer grows first; a
// shrink must not let a write past S reach a peer that has already dropped
// that range, so the initiator stops serving past S first:
//
//  1. Probe, as for a grow (the sizes must still match).
//  2. The initiator takes its whole-device range lock (every write it
//     answered or sent is done; no other starts) and lowers its exported
//     size to S. Requests past S now get the NBD error the range check
//     gives (EINVAL for a read, ENOSPC for a write, trim or write-zeroes;
//     the connection stays); a write that passed the check before and
//     waited for its range lock is checked again under it (replicate), so
//     no write past S is issued or sent from here on. The lock is held to
//     the end: the resize stalls I/O for two metadata commits and a round
//     trip.
//  3. Resize{S, ResizeShrink} on the data channel, after every write sent
//     before it. The peer applies it under its whole-device range lock:
//     bitmap.Meta.Shrink (durable, crash-safe: the bits past S are dropped,
//     the activity log is emptied so that it names no extent past S), then
//     its exported size. It answers.
//  4. The initiator commits its own metadata shrink, the same way.
//
// Neither node marks anything: [0, S) is identical on both before and
// after. The data window keeps its old bounds until the next `up` (a read
// that passed the range check before step 2 still completes); internal
// metadata stays at the end of the backing device (bitmap/shrink.go), so a
// shrunk internal-metadata device keeps its size and the space between S
// and the metadata is unused until create-md on a smaller device (DRBD
// shrinks online only with external metadata).
//
// What an interruption leaves (each node's metadata shrink is crash-safe
// on its own: a crash opens with the old or the new size):
//
//   - Before step 3 reaches the peer (the initiator crashes, or the link
//     breaks before the Resize is sent): nothing changed durably on either
//     node. A crashed initiator comes back with the old size, which the
//     peer still has; run the resize again. An initiator whose link broke
//     cannot know whether the peer shrank, so it goes on with step 4 (the
//     operator forced the shrink and nothing is served past S already);
//     the peer keeps the old size.
//   - The peer shrank, the initiator did not (crash, or its commit
//     failed): the peer has S, the initiator the old size; a live
//     initiator keeps serving at most S and refuses to connect until it
//     has finished.
//   - A refusal by the peer (its commit failed before its own commit
//     point): nothing changed; the initiator raises its exported size
//     again and reports why.
//
// So an interrupted shrink leaves the two nodes either equal (old or S) or
// the bigger one behind, never the other way round, and it always goes
// forward: the next connect refuses with "size mismatch", whose message
// names both finishes (an interrupted grow is finished on the smaller node,
// an interrupted shrink on the bigger), and `twinbd resize R --size S
// --force` on the bigger node, though disconnected, shrinks it to exactly
// the peer's size (recorded at that handshake). Then `connect`: both have
// S, nothing to resync beyond the usual bitmaps. An NBD connection keeps
// the size it got at its handshake; a kernel nbd client picks up S by
// reconnecting (nbd-client -d, then attach again).
//
// # Mid-session resync
//
// startSyncSourceRange marks a range out of sync here (durably) and sends
// SyncStart on the data channel; the peer applies it in stream order under
// a whole-device range lock: marks the range, clears its Consistent flag
// durably, and is SyncTarget until the resync-done State. The session's
// resync loop (resync.go) then runs exactly as after a handshake, under
// application writes (range locks keep them and resync data ordered), and
// finishSource ends it. If the link breaks meanwhile, the next connect
// resumes it from the disk states (an Inconsistent target is always the
// target of the UpToDate side, DecideSync rule a) and the merged bitmaps;
// a Primary source also starts a new generation when the link breaks, as
// always.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/twinbd/twinbd/bitmap"
	"github.com/twinbd/twinbd/device"
)

// ResizeOptions are resize's flags.
type ResizeOptions struct {
	// Size is the new size in bytes (--size), a multiple of 4 KiB; 0
	// grows to the largest size both nodes offer.
	Size int64
	// AssumeClean (--assume-clean): the new area is identical on both
	// nodes (zeroed, say), so it is not synced. The old internal metadata
	// areas inside the new data are synced anyway.
	AssumeClean bool
	// Force (--force) allows a Size smaller than now: a shrink, which
	// discards everything past it on both nodes (shrink.go).
	Force bool
	// ConfigSize is `disk { size }` of the resource file as it is now (the
	// daemon reads the file again; 0: not set): the device does not grow
	// past it, since the next `up` would export no more than that.
	ConfigSize int64
}

// ResizeResult is what a resize did.
type ResizeResult struct {
	Old, New int64 // exported size before and after, bytes
	// SyncOff and SyncLen are the range a resync copies to the peer
	// (SyncLen 0: none).
	SyncOff, SyncLen int64
	// Note explains a resize that changed nothing or needs a next step.
	Note string
}

// ErrShrink: resize refuses to make the device smaller (without --force,
// or not in this state; the message says what to do).
var ErrShrink = errors.New("refusing to shrink")

// Resize grows the device on both nodes, or with a smaller Size and Force
// shrinks it (see the file comment). It needs an established link, except
// to finish an interrupted resize.
func (r *Resource) Resize(ctx context.Context, o ResizeOptions) (ResizeResult, error) {
	if o.Size < 0 || o.Size%bitmap.BlockSize != 0 {
		return ResizeResult{}, fmt.Errorf("replication: %s: size %d is not a multiple of 4 KiB", r.res.Name, o.Size)
	}
	r.resizeMu.Lock()
	defer r.resizeMu.Unlock()
	r.mu.Lock()
	if r.down {
		r.mu.Unlock()
		return ResizeResult{}, ErrDown
	}
	role, peerRole, repl, peerSize, disk := r.role, r.link.peerRole, r.link.repl, r.link.peerSize, r.disk
	r.mu.Unlock()
	old := r.size.Load()
	res := ResizeResult{Old: old, New: old}
	capacity, why, err := r.capacity()
	if err != nil {
		return res, err
	}
	if c := o.ConfigSize; c > 0 && c < capacity {
		capacity, why = max(c, old), fmt.Sprintf("the resource file sets `size %d` in disk { }: raise or remove it on both nodes first", c)
	}
	if (o.Size != 0 && o.Size < old) || r.shrinkTo.Load() > 0 ||
		(r.peer != nil && r.sess.Load() == nil && peerSize > 0 && peerSize < old) {
		return r.resizeShrink(o, old, res, role, peerRole, repl, peerSize, disk)
	}

	if r.peer == nil {
		n, err := r.pickSize(o, old, capacity, why, "", 0, "")
		if err != nil || n == old {
			res.Note = r.unchanged(old, capacity, why, "", 0, "")
			return res, err
		}
		return r.growHere(n, 0, 0, res)
	}

	s := r.sess.Load()
	if s == nil {
		if peerSize <= old {
			return res, fmt.Errorf("%w: resize needs the peer connected, so that both nodes grow together: run `twinbd connect %s` (on both nodes if StandAlone) and `twinbd wait-connect %s` first", ErrNotConnected, r.res.Name, r.res.Name)
		}
		// Finish an interrupted resize: the peer grew, this node did not.
		if o.Size != 0 && o.Size != peerSize {
			return res, fmt.Errorf("replication: %s: the peer %s already has %d bytes (an interrupted resize); this node can only grow to that size while disconnected, not to --size %d", r.res.Name, r.peer.Name, peerSize, o.Size)
		}
		if peerSize > capacity {
			return res, fmt.Errorf("replication: %s: the peer %s has %d bytes, but this node offers at most %d: %s", r.res.Name, r.peer.Name, peerSize, capacity, why)
		}
		off, length := r.resizeMarks(o.AssumeClean, old, peerSize, 0, 0)
		res, err = r.growHere(peerSize, off, length, res)
		if err == nil {
			res.SyncOff, res.SyncLen = off, length
			res.Note = fmt.Sprintf("grown to %d bytes to match %s (finishing an interrupted resize); run `twinbd connect %s` on both nodes: the next connect resyncs what is marked", peerSize, r.peer.Name, r.res.Name)
		}
		return res, err
	}

	if role != RolePrimary && peerRole == RolePrimary {
		return res, fmt.Errorf("%w: the peer %s is Primary: run `twinbd resize %s` there (the Primary orders the resize after its writes)", ErrInUse, r.peer.Name, r.res.Name)
	}
	if repl != ReplEstablished {
		return res, fmt.Errorf("%w: replication is %s; resize needs Established: wait for it (`twinbd wait-sync %s`)", ErrInUse, repl, r.res.Name)
	}
	if disk != DiskUpToDate {
		return res, fmt.Errorf("%w: local disk is %s; run resize on the node with UpToDate data", ErrNoUpToDate, disk)
	}
	probe, err := s.ask(ctx, &ResizeMsg{Flags: ResizeProbe}, true)
	if err != nil {
		return res, err
	}
	if probe.Failed {
		return res, fmt.Errorf("replication: %s: the peer %s cannot tell its size: %s", r.res.Name, r.peer.Name, probe.Reason)
	}
	if probe.Size != old {
		return res, fmt.Errorf("replication: %s: the peer %s has %d bytes and this node %d while connected; disconnect and connect again (the connect explains the mismatch)", r.res.Name, r.peer.Name, probe.Size, old)
	}
	n, err := r.pickSize(o, old, capacity, why, r.peer.Name, probe.Capacity, probe.Reason)
	if err != nil || n == old {
		res.Note = r.unchanged(old, capacity, why, r.peer.Name, probe.Capacity, probe.Reason)
		return res, err
	}
	mdOff, mdEnd := int64(0), int64(0)
	if probe.MDEnd > 0 {
		mdOff, mdEnd = probe.MDOffset, probe.MDEnd
	}
	off, length := r.resizeMarks(o.AssumeClean, old, n, mdOff, mdEnd)
	flags := uint32(0)
	if o.AssumeClean {
		flags = ResizeAssumeClean
	}
	r.log.Info("resize: growing the peer", "peer", r.peer.Name, "from", old, "to", n, "mark-off", off, "mark-len", length, "assume-clean", o.AssumeClean)
	// Not cancellable: once the peer may have grown, this node follows.
	rep, err := s.ask(context.Background(), &ResizeMsg{Size: n, MarkOff: off, MarkLen: length, Flags: flags}, false)
	if err != nil {
		return res, fmt.Errorf("%w; if the peer %s grew, the next connect reports a size mismatch: then run `twinbd resize %s` on this node to finish", err, r.peer.Name, r.res.Name)
	}
	if rep.Failed {
		return res, fmt.Errorf("replication: %s: the peer %s did not grow (nothing changed on either node): %s", r.res.Name, r.peer.Name, rep.Reason)
	}
	if testAfterPeerGrew != nil {
		if err := testAfterPeerGrew(r); err != nil {
			return res, err
		}
	}
	if res, err = r.growHere(n, off, length, res); err != nil {
		s.fail(fmt.Errorf("resize: the peer grew to %d bytes but this node did not: %w", n, err))
		return res, fmt.Errorf("%w; the peer %s has grown to %d bytes: fix the cause, then run `twinbd resize %s` on this node to finish (the link reconnects, refusing the size mismatch until then)", err, r.peer.Name, n, r.res.Name)
	}
	if length > 0 {
		if err := s.startSyncSourceRange(off, length); err != nil {
			// The marks are durable on both nodes and the peer is
			// Inconsistent: the next connect resyncs them.
			s.fail(fmt.Errorf("resize: starting the resync of the new area: %w", err))
			return res, fmt.Errorf("replication: %s: grown to %d bytes, but the resync of the new area did not start (%w); it runs at the next connect", r.res.Name, n, err)
		}
		res.SyncOff, res.SyncLen = off, length
	}
	return res, nil
}

// testAfterPeerGrew, if set, runs between the peer's growth and this
// node's; an error stops the resize there, as a crash would (tests only).
var testAfterPeerGrew func(*Resource) error

// pickSize is the size a resize grows to: --size, or the smallest
// capacity. It refuses one a node cannot offer, saying which node and
// why. peer is "" without a peer.
func (r *Resource) pickSize(o ResizeOptions, old, mine int64, myWhy, peer string, theirs int64, theirWhy string) (int64, error) {
	limit, who, why := mine, r.host.Name, myWhy
	if peer != "" && theirs < limit {
		limit, who, why = theirs, peer, theirWhy
	}
	n := o.Size
	if n == 0 {
		n = limit
	}
	switch {
	case n < old: // resizeShrink handles a smaller --size
		return old, fmt.Errorf("%w %s from %d to %d bytes", ErrShrink, r.res.Name, old, n)
	case n > limit:
		if why == "" {
			why = "its backing device is not larger"
		}
		return old, fmt.Errorf("replication: %s: cannot grow to %d bytes: %s offers at most %d bytes: %s", r.res.Name, n, who, limit, why)
	}
	return n, nil
}

// unchanged explains a resize that leaves the size as it is.
func (r *Resource) unchanged(old, mine int64, myWhy, peer string, theirs int64, theirWhy string) string {
	out := fmt.Sprintf("size unchanged at %d bytes: %s offers %d", old, r.host.Name, mine)
	if myWhy != "" {
		out += " (" + myWhy + ")"
	}
	if peer != "" {
		out += fmt.Sprintf(", %s offers %d", peer, theirs)
		if theirWhy != "" {
			out += " (" + theirWhy + ")"
		}
	}
	if peer == "" {
		return out + "; grow the backing device first"
	}
	return out + "; grow the backing devices of both nodes first"
}

// resizeMarks is the range a grow from old to n marks out of sync on both
// nodes: the new area, or with assumeClean only the old internal metadata
// areas inside it (this node's and the peer's [peerMDOff, peerMDEnd)),
// which differ between the nodes. One range covering both; length 0: none.
func (r *Resource) resizeMarks(assumeClean bool, old, n, peerMDOff, peerMDEnd int64) (off, length int64) {
	if !assumeClean {
		return old, n - old
	}
	lo, hi := int64(math.MaxInt64), int64(0)
	if lay := r.b().meta.Layout(); lay.Internal {
		lo, hi = lay.MDOffset, lay.MDOffset+lay.MDSize
	}
	if peerMDEnd > peerMDOff {
		lo, hi = min(lo, peerMDOff), max(hi, peerMDEnd)
	}
	lo, hi = max(lo, old), min(hi, n)
	if lo >= hi {
		return 0, 0
	}
	return lo, hi - lo
}

// growHere grows this node to n under the whole-device range lock and
// fills in res.
func (r *Resource) growHere(n, markOff, markLen int64, res ResizeResult) (ResizeResult, error) {
	unlock := r.lock.Lock(0, math.MaxInt64)
	err := r.growLocal(n, markOff, markLen, false)
	unlock()
	if err != nil {
		return res, err
	}
	res.New = n
	return res, nil
}

// capacity refreshes the sizes of the backing (and metadata) device and
// returns the largest size this node can grow to, and what limits it when
// that is not simply the device's size.
func (r *Resource) capacity() (int64, string, error) {
	bk := r.b()
	backing := bk.closer[0]
	md := backing
	if len(bk.closer) > 1 {
		md = bk.closer[1]
	}
	for _, d := range []device.Device{backing, md} {
		if rz, ok := d.(device.Resizer); ok {
			if _, err := rz.Refresh(); err != nil {
				return 0, "", fmt.Errorf("replication: %s: %w", r.res.Name, err)
			}
		}
	}
	limit, why := bitmap.GrowLimit(bk.meta.Layout(), backing.Size(), md.Size())
	if why != "" {
		why = fmt.Sprintf("%s: %s", r.host.Disk, why)
	}
	return max(limit, r.size.Load()), why, nil
}

// growLocal grows this node to n bytes, marking [markOff, markOff+markLen)
// out of sync; a target also becomes Inconsistent in the same commit when
// anything is marked. The caller holds the whole-device range lock (no
// write or resync run in flight, none starting): the metadata moves (or,
// when the data area already holds n bytes, only marks and flags change),
// then the data window grows, and the exported size last.
func (r *Resource) growLocal(n, markOff, markLen int64, target bool) error {
	old := r.size.Load()
	marking := r.bm != nil && markLen > 0
	var update func(*bitmap.Superblock)
	if target && marking {
		update = func(sb *bitmap.Superblock) { sb.Flags &^= bitmap.FlagConsistent | bitmap.FlagWasUpToDate }
	}
	capacity, why, err := r.capacity()
	if err != nil {
		return err
	}
	if n > capacity {
		return fmt.Errorf("replication: %s: cannot grow to %d bytes: this node offers at most %d: %s", r.res.Name, n, capacity, why)
	}
	if r.detached.Load() {
		return fmt.Errorf("replication: %s: the local disk is detached (Diskless): attach one first", r.res.Name)
	}
	bk := r.b() // attach swaps it only under the whole-device range lock, which the caller holds
	win, ok := bk.data.(*device.Window)
	if !ok {
		return fmt.Errorf("replication: %s: the data area cannot grow", r.res.Name)
	}
	lay := bk.meta.Layout()
	if n > lay.DataSize {
		md := bk.closer[0]
		if len(bk.closer) > 1 {
			md = bk.closer[1]
		}
		to, err := bitmap.GrownLayout(lay, n, bk.closer[0].Size(), md.Size())
		if err != nil {
			return fmt.Errorf("replication: %s: %w", r.res.Name, err)
		}
		opts := bitmap.GrowOptions{AL: bk.al, Update: update}
		if r.bm != nil {
			opts.Bitmap, opts.MarkOff, opts.MarkLen = r.bm, markOff, markLen
		}
		r.log.Info("resize: moving the metadata", "from-data", lay.DataSize, "to-data", to.DataSize,
			"md-from", lay.MDOffset, "md-to", to.MDOffset, "backing-size", bk.closer[0].Size())
		if err := bk.meta.Grow(to, opts); errors.Is(err, bitmap.ErrGrownPartly) {
			r.log.Warn("resize: metadata grown, but a later write failed (covered by the marks)", "err", err)
		} else if err != nil {
			return fmt.Errorf("replication: %s: grow metadata: %w", r.res.Name, err)
		}
		if err := win.SetSize(to.DataSize); err != nil {
			return fmt.Errorf("replication: %s: grow data area: %w", r.res.Name, err)
		}
	} else {
		if marking {
			r.bm.SetRange(markOff, markLen)
			if err := bk.meta.WriteBitmap(r.bm); err != nil {
				return fmt.Errorf("replication: %s: write bitmap: %w", r.res.Name, err)
			}
		}
		if update != nil {
			if err := bk.meta.Update(update); err != nil {
				return fmt.Errorf("replication: %s: write metadata: %w", r.res.Name, err)
			}
		}
	}
	if update != nil {
		r.setDisk(DiskInconsistent)
	}
	r.size.Store(n)
	r.log.Info("resized", "from", old, "to", n, "out-of-sync-from", markOff, "out-of-sync-bytes", markLen, "inconsistent", update != nil)
	return nil
}

// checkSize is the handshake's size check: the sizes must match. It
// records the peer's size, which lets resize finish an interrupted resize
// on the smaller node while disconnected.
func (s *session) checkSize(theirs *StateMsg) error {
	r := s.r
	mine := r.size.Load()
	r.mu.Lock()
	r.link.peerSize = theirs.Size
	r.mu.Unlock()
	if to := r.shrinkTo.Load(); to > 0 {
		return s.refuse("size mismatch: %s has not finished shrinking to %d bytes (its metadata still has %d): run `twinbd resize %s --size %d --force` on %s to finish, then `twinbd connect %s` on both nodes",
			r.host.Name, to, r.b().meta.Layout().DataSize, r.res.Name, to, r.host.Name, r.res.Name)
	}
	if theirs.Size == mine {
		return nil
	}
	smaller, bigger, small := r.host.Name, r.peer.Name, mine
	if theirs.Size < mine {
		smaller, bigger, small = r.peer.Name, r.host.Name, theirs.Size
	}
	return s.refuse("size mismatch: %s has %d bytes, %s has %d; if a resize (grow) was interrupted, run `twinbd resize %s` on %s (the smaller) to finish it; if a shrink was interrupted, run `twinbd resize %s --size %d --force` on %s (the bigger; everything past byte %d is discarded); then `twinbd connect %s` on both nodes; otherwise give both the same disk size",
		r.host.Name, mine, r.peer.Name, theirs.Size, r.res.Name, smaller, r.res.Name, small, bigger, small, r.res.Name)
}

// resizeWait hands a ResizeReply from the meta reader to the resize
// waiting for it; the zero value is ready. Each Resize carries a new id in
// its frame sequence and the reply echoes it, so a late answer to an
// abandoned request (a probe cancelled with Ctrl-C) is never taken for the
// answer to a later one.
type resizeWait struct {
	mu   sync.Mutex
	id   uint64 // of the request waited for
	last uint64
	ch   chan *ResizeReplyMsg
}

func (w *resizeWait) arm() (uint64, chan *ResizeReplyMsg) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last++
	w.id, w.ch = w.last, make(chan *ResizeReplyMsg, 1)
	return w.id, w.ch
}

// deliver passes on the reply to request id; any other is dropped.
func (w *resizeWait) deliver(id uint64, m *ResizeReplyMsg) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ch != nil && id == w.id {
		w.ch <- m
		w.ch = nil
	}
}

// ask sends m on the data channel and waits for the peer's ResizeReply,
// the session's end, or (if cancellable) ctx.
func (s *session) ask(ctx context.Context, m *ResizeMsg, cancellable bool) (*ResizeReplyMsg, error) {
	id, ch := s.rz.arm()
	if err := s.writeDataSeq(id, m); err != nil {
		return nil, fmt.Errorf("%w: the link broke during the resize: %v", ErrNotConnected, err)
	}
	done := ctx.Done()
	if !cancellable {
		done = nil
	}
	select {
	case rep := <-ch:
		return rep, nil
	case <-s.deadCh:
		return nil, fmt.Errorf("%w: the link broke during the resize", ErrNotConnected)
	case <-done:
		return nil, ctx.Err()
	}
}

// resizeWork is what apply runs for a Resize (frame sequence fseq, its id)
// or a SyncStart from the peer, under a whole-device range lock (after
// every earlier message of the stream, before every later one), and how it
// answers.
func (s *session) resizeWork(fseq uint64, m Message) (work func() error, ack func(error)) {
	r := s.r
	switch m := m.(type) {
	case *ResizeMsg:
		var reply ResizeReplyMsg
		work = func() error {
			if m.Flags&ResizeProbe != 0 {
				reply = r.probeReply()
				return nil
			}
			grow := r.growForPeer
			if m.Flags&ResizeShrink != 0 {
				grow = r.shrinkForPeer
			}
			err := grow(m)
			reply = r.probeReply()
			if err != nil {
				r.log.Error("resize asked by the peer failed", "peer", r.peer.Name, "size", m.Size, "err", err)
				reply.Failed, reply.Reason = true, clip(err.Error())
			}
			return nil
		}
		ack = func(error) {
			if err := s.mw.send(fseq, &reply); err != nil { // the request's id
				go s.fail(fmt.Errorf("meta channel: %w", err))
			}
		}
	case *SyncStartMsg:
		work = func() error { return r.beginSyncTarget(m.Offset, m.Length) }
		ack = func(err error) {
			if err != nil {
				go s.fail(fmt.Errorf("resync started by the peer: %w", err))
				return
			}
			s.sendMeta(r.myState(0))
		}
	}
	return work, ack
}

// probeReply is this node's answer to a probe (and after a grow).
func (r *Resource) probeReply() ResizeReplyMsg {
	limit, why, err := r.capacity()
	rep := ResizeReplyMsg{Size: r.size.Load(), Capacity: max(limit, r.size.Load()), Reason: clip(why)}
	if err != nil {
		rep.Failed, rep.Reason = true, clip(err.Error())
	}
	if lay := r.b().meta.Layout(); lay.Internal {
		rep.MDOffset, rep.MDEnd = lay.MDOffset, lay.MDOffset+lay.MDSize
	}
	return rep
}

// growForPeer carries out the peer's Resize on this node, its target.
func (r *Resource) growForPeer(m *ResizeMsg) error {
	old := r.size.Load()
	switch {
	case m.Size == old:
		return nil
	case m.Size < old:
		return fmt.Errorf("%w from %d to %d bytes", ErrShrink, old, m.Size)
	case m.Size%bitmap.BlockSize != 0:
		return fmt.Errorf("size %d is not a multiple of 4 KiB", m.Size)
	case r.writable.Load():
		return fmt.Errorf("%s is Primary here: run `twinbd resize %s` on this node", r.res.Name, r.res.Name)
	case !r.resizeMu.TryLock():
		return fmt.Errorf("a resize runs on this node too; run it on one node only")
	}
	defer r.resizeMu.Unlock()
	r.log.Info("resize: the peer asks to grow", "peer", r.peer.Name, "from", old, "to", m.Size, "assume-clean", m.Flags&ResizeAssumeClean != 0)
	return r.growLocal(m.Size, m.MarkOff, m.MarkLen, true)
}

// clip bounds a reason to what a wire string holds.
func clip(s string) string {
	const limit = MaxStringLen - 4
	if len(s) <= limit {
		return s
	}
	s = s[:limit]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}

// startSyncSourceRange marks [off, off+length) out of sync, here and on the
// peer, and makes this node the SyncSource of a resync of it while the
// session stays up; the peer is SyncTarget (Inconsistent, so never
// promoted) until the resync-done State (the file comment has the
// protocol). It needs UpToDate data here, Established replication (no
// other resync or verify running) and a peer that is not Primary (a
// Primary's data does not change under its users: DRBD's rr-conflict). It
// returns once the resync runs; ReplState says when it is done.
func (s *session) startSyncSourceRange(off, length int64) error {
	r := s.r
	r.mu.Lock()
	var refuse error
	switch {
	case r.sess.Load() != s:
		refuse = fmt.Errorf("%w: the link broke", ErrNotConnected)
	case r.disk != DiskUpToDate:
		refuse = fmt.Errorf("%w: local disk is %s; only UpToDate data is a sync source", ErrNoUpToDate, r.disk)
	case r.link.repl != ReplEstablished:
		refuse = fmt.Errorf("%w: replication is %s", ErrInUse, r.link.repl)
	case r.link.peerRole == RolePrimary:
		refuse = fmt.Errorf("%w: the peer is Primary; a resync never writes under a Primary's users", ErrInUse)
	}
	if refuse != nil {
		r.mu.Unlock()
		return refuse
	}
	r.link.repl = ReplSyncSource
	r.link.peerDisk = DiskInconsistent
	r.mu.Unlock()
	restore := func() {
		r.mu.Lock()
		if r.link.repl == ReplSyncSource && r.sess.Load() == s {
			r.link.repl = ReplEstablished
		}
		r.mu.Unlock()
	}
	// Durable here before the peer hears of it: a crash of this node
	// keeps the marks, a crash of the peer finds it Inconsistent.
	r.bm.SetRange(off, length)
	if err := r.b().meta.WriteBitmap(r.bm); err != nil {
		restore()
		return fmt.Errorf("replication: %s: write bitmap: %w", r.res.Name, err)
	}
	r.mu.Lock()
	r.link.syncTotal = r.bm.Count()
	r.link.syncStart = time.Now()
	r.link.syncedBytes.Store(0)
	r.mu.Unlock()
	s.syncedAt = time.Now()
	if err := s.writeData(&SyncStartMsg{Offset: off, Length: length}); err != nil {
		return fmt.Errorf("%w: the link broke: %v", ErrNotConnected, err)
	}
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return fmt.Errorf("%w: the link broke", ErrNotConnected)
	}
	s.extra.Go(s.resync) // while not dead, so before runSession waits for it
	s.mu.Unlock()
	r.log.Info("resync started", "peer", r.peer.Name, "off", off, "bytes", length, "out-of-sync", r.bm.Bytes())
	return nil
}

// beginSyncTarget is the peer's SyncStart on this node: the range is
// marked, the disk Inconsistent (durably: a crash or a broken link finds
// this node a target), and replication SyncTarget until finishSyncTarget.
func (r *Resource) beginSyncTarget(off, length int64) error {
	r.mu.Lock()
	repl := r.link.repl
	r.mu.Unlock()
	switch {
	case repl == ReplSyncSource:
		return fmt.Errorf("%w: the peer started a resync while this node is its SyncSource", ErrMalformed)
	case r.writable.Load():
		return fmt.Errorf("%w: the peer started a resync into this Primary's data", ErrMalformed)
	}
	bk := r.b()
	r.bm.SetRange(off, length)
	if err := bk.meta.WriteBitmap(r.bm); err != nil {
		return err
	}
	if sb := bk.meta.Superblock(); sb.Flags&(bitmap.FlagConsistent|bitmap.FlagWasUpToDate) != 0 {
		if err := bk.meta.Update(func(sb *bitmap.Superblock) {
			sb.Flags &^= bitmap.FlagConsistent | bitmap.FlagWasUpToDate
		}); err != nil {
			return err
		}
	}
	if repl != ReplSyncTarget {
		r.runHandler("before-resync-target", r.res.Handlers.BeforeResyncTarget)
	}
	r.mu.Lock()
	r.disk = DiskInconsistent
	r.link.repl = ReplSyncTarget
	r.link.peerDisk = DiskUpToDate
	r.link.syncTotal = r.bm.Count()
	r.link.syncStart = time.Now()
	r.link.syncedBytes.Store(0)
	r.mu.Unlock()
	r.log.Warn("resync started by the peer: Inconsistent until it finishes", "peer", r.peer.Name, "off", off, "bytes", length, "out-of-sync", r.bm.Bytes())
	return nil
}

// locateMetadata is Up's view of the metadata after resizes: the layout
// the superblock at the end describes (its data size may be below what the
// device could hold), or the old metadata a forwarding block leads to.
func locateMetadata(log *slog.Logger, data, md device.Device, lay bitmap.Layout) bitmap.Layout {
	found, forwarded := bitmap.Locate(md, lay)
	if forwarded {
		log.Warn("metadata found at its old place: a resize of this node did not finish; `twinbd resize` finishes it",
			"data", found.DataSize, "device-holds", lay.DataSize)
	}
	if w, ok := data.(*device.Window); ok && found.DataSize != lay.DataSize {
		if err := w.SetSize(found.DataSize); err != nil { // smaller: always fits
			return lay
		}
	}
	return found
}
