package replication

// A forced online shrink (`twinbd resize R --size S --force`); the
// ordering argument and what an interruption leaves are in resize.go's
// file comment ("Shrinking a connected pair").

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/twinbd/twinbd/bitmap"
)

// testShrinkStep, if set, runs at each step of a connected shrink on the
// initiator ("lowered": the exported size is S, the peer not asked yet;
// "peer-shrank": the peer answered, this node's metadata is not shrunk
// yet); an error stops the shrink there, as a crash would (tests only).
var testShrinkStep func(r *Resource, step string) error

// shrinkRefusal explains why a shrink to n is not done, or nil: without
// --force always (what shrinking means and what to do first).
func (r *Resource) shrinkRefusal(o ResizeOptions, old, n int64) error {
	name := r.res.Name
	switch {
	case !o.Force:
		return fmt.Errorf("%w %s from %d to %d bytes: everything past byte %d is discarded, on both nodes. "+
			"First shrink the filesystem (or whatever uses the device) on top to at most %d bytes, so that nothing lives or is written past it; "+
			"then run `twinbd resize %s --size %d --force` on the Primary (or on either node when both are Secondary), with the peer connected",
			ErrShrink, name, old, n, n, n, name, n)
	case n < bitmap.MinDataSize:
		return fmt.Errorf("%w %s to %d bytes: the smallest device is %d bytes", ErrShrink, name, n, bitmap.MinDataSize)
	case o.ConfigSize > 0 && o.ConfigSize != n:
		return fmt.Errorf("%w %s to %d bytes: the resource file sets `size %d` in disk { }, and the next `up` would export that: set it to %d (or remove it) on both nodes first",
			ErrShrink, name, n, o.ConfigSize, n)
	}
	return nil
}

// resizeShrink is Resize to a smaller size (o.Size < old), or finishing an
// interrupted shrink while disconnected (this node is the bigger one).
func (r *Resource) resizeShrink(o ResizeOptions, old int64, res ResizeResult, role, peerRole Role, repl ReplState, peerSize int64, disk DiskState) (ResizeResult, error) {
	name := r.res.Name
	s := r.sess.Load()
	if r.peer == nil || s == nil {
		target, finishing := o.Size, false
		if r.peer != nil {
			switch pending := r.shrinkTo.Load(); {
			case pending > 0:
				target, finishing = pending, true
				old = r.b().meta.Layout().DataSize
			case peerSize > 0 && peerSize < old:
				target, finishing = peerSize, true
			default:
				return res, fmt.Errorf("%w: resize needs the peer connected, so that both nodes shrink together: run `twinbd connect %s` (on both nodes if StandAlone) and `twinbd wait-connect %s` first", ErrNotConnected, name, name)
			}
			if o.Size != 0 && o.Size != target {
				return res, fmt.Errorf("%w %s: the peer %s has %d bytes (an interrupted shrink); disconnected, this node can only shrink to that size, not to --size %d", ErrShrink, name, r.peer.Name, target, o.Size)
			}
			if !o.Force {
				return res, fmt.Errorf("%w %s from %d to %d bytes: the peer %s has %d bytes. If a shrink was interrupted, run `twinbd resize %s --size %d --force` here to finish it (everything past byte %d is discarded); if a grow was interrupted, run `twinbd resize %s` on %s instead",
					ErrShrink, name, old, target, r.peer.Name, target, name, target, target, name, r.peer.Name)
			}
		}
		if err := r.shrinkRefusal(o, old, target); err != nil {
			return res, err
		}
		unlock := r.lock.Lock(0, math.MaxInt64)
		err := r.shrinkLocal(target)
		unlock()
		if err != nil {
			return res, err
		}
		res.New = target
		if finishing {
			res.Note = fmt.Sprintf("shrunk to %d bytes to match %s (finishing an interrupted shrink); run `twinbd connect %s` on both nodes", target, r.peer.Name, name)
		}
		return res, nil
	}

	n := o.Size
	if err := r.shrinkRefusal(o, old, n); err != nil {
		return res, err
	}
	if role != RolePrimary && peerRole == RolePrimary {
		return res, fmt.Errorf("%w: the peer %s is Primary: run `twinbd resize %s` there (the Primary orders the resize after its writes)", ErrInUse, r.peer.Name, name)
	}
	if repl != ReplEstablished {
		return res, fmt.Errorf("%w: replication is %s; resize needs Established: wait for it (`twinbd wait-sync %s`)", ErrInUse, repl, name)
	}
	if disk != DiskUpToDate {
		return res, fmt.Errorf("%w: local disk is %s; run resize on the node with UpToDate data", ErrNoUpToDate, disk)
	}
	probe, err := s.ask(context.Background(), &ResizeMsg{Flags: ResizeProbe}, true)
	if err != nil {
		return res, err
	}
	if probe.Size != old {
		return res, fmt.Errorf("replication: %s: the peer %s has %d bytes and this node %d while connected; disconnect and connect again (the connect explains the mismatch)", name, r.peer.Name, probe.Size, old)
	}

	// No write in flight here, none starts: every earlier write was sent
	// before the Resize below; every later one sees the new size (the
	// range check, again under the range lock in replicate).
	unlock := r.lock.Lock(0, math.MaxInt64)
	defer unlock()
	r.shrinkTo.Store(n)
	r.size.Store(n)
	r.log.Warn("resize: shrinking: nothing past the new end is served from now on", "peer", r.peer.Name, "from", old, "to", n)
	if testShrinkStep != nil {
		if err := testShrinkStep(r, "lowered"); err != nil {
			return res, err
		}
	}
	// Not cancellable: once the peer may have shrunk, this node follows.
	rep, linkErr := s.ask(context.Background(), &ResizeMsg{Size: n, Flags: ResizeShrink}, false)
	if linkErr == nil && rep.Failed {
		r.size.Store(old)
		r.shrinkTo.Store(0)
		return res, fmt.Errorf("replication: %s: the peer %s did not shrink (nothing changed on either node): %s", name, r.peer.Name, rep.Reason)
	}
	if testShrinkStep != nil {
		if err := testShrinkStep(r, "peer-shrank"); err != nil {
			return res, err
		}
	}
	if err := r.shrinkLocal(n); err != nil {
		s.fail(fmt.Errorf("resize: the peer shrank to %d bytes but this node did not: %w", n, err))
		return res, fmt.Errorf("%w; the peer %s has shrunk to %d bytes (or had not yet, if the link broke): fix the cause, then run `twinbd resize %s --size %d --force` on this node to finish (the link refuses the size mismatch until then)", err, r.peer.Name, n, name, n)
	}
	res.New = n
	if linkErr != nil {
		return res, fmt.Errorf("%w; this node has shrunk to %d bytes, the peer %s may not have: if the next connect reports a size mismatch, run `twinbd resize %s --size %d --force` on %s to finish", linkErr, n, r.peer.Name, name, n, r.peer.Name)
	}
	return res, nil
}

// shrinkForPeer carries out the peer's shrinking Resize on this node, its
// target (under the whole-device range lock of apply).
func (r *Resource) shrinkForPeer(m *ResizeMsg) error {
	old := r.size.Load()
	switch {
	case m.Size == old:
		return nil
	case m.Size > old:
		return fmt.Errorf("a shrink to %d bytes is larger than the %d bytes here", m.Size, old)
	case m.Size%bitmap.BlockSize != 0 || m.Size < bitmap.MinDataSize:
		return fmt.Errorf("size %d is not a multiple of 4 KiB of at least %d", m.Size, bitmap.MinDataSize)
	case r.writable.Load():
		return fmt.Errorf("%s is Primary here: run `twinbd resize %s` on this node", r.res.Name, r.res.Name)
	case !r.resizeMu.TryLock():
		return fmt.Errorf("a resize runs on this node too; run it on one node only")
	}
	defer r.resizeMu.Unlock()
	r.log.Warn("resize: the peer asks to shrink (forced): everything past the new end is discarded", "peer", r.peer.Name, "from", old, "to", m.Size)
	return r.shrinkLocal(m.Size)
}

// shrinkLocal shrinks this node to n bytes. The caller holds the
// whole-device range lock (no write or resync run in flight, none
// starting). The metadata shrinks (bitmap.Meta.Shrink: the bits past n
// are dropped, the activity log is emptied), then the exported size. The
// data window keeps its old bounds until the next `up`: nothing reaches
// past n anyway (every request is checked against the exported size, a
// write again under its range lock), and a read that passed the check
// before the shrink finishes unharmed.
func (r *Resource) shrinkLocal(n int64) error {
	if r.detached.Load() {
		return fmt.Errorf("replication: %s: the local disk is detached (Diskless): attach one first", r.res.Name)
	}
	bk := r.b() // attach swaps it only under the whole-device range lock, which the caller holds
	lay := bk.meta.Layout()
	from := r.size.Load()
	if r.shrinkTo.Load() > 0 {
		from = lay.DataSize
	}
	if n < lay.DataSize {
		to, err := bitmap.ShrunkLayout(lay, n)
		if err != nil {
			return fmt.Errorf("replication: %s: %w", r.res.Name, err)
		}
		bm := r.bm
		if bm == nil { // no peer: no bitmap kept in memory
			if bm, err = bk.meta.ReadBitmap(); err != nil {
				return fmt.Errorf("replication: %s: %w", r.res.Name, err)
			}
		}
		r.log.Info("resize: shrinking the metadata", "from-data", lay.DataSize, "to-data", to.DataSize,
			"md-from", lay.MDOffset, "md-to", to.MDOffset, "internal", lay.Internal)
		if err := bk.meta.Shrink(to, bitmap.ShrinkOptions{Bitmap: bm, AL: bk.al}); errors.Is(err, bitmap.ErrShrunkPartly) {
			r.log.Warn("resize: metadata shrunk, but a later write failed (harmless: the bitmap read drops bits past the end)", "err", err)
		} else if err != nil {
			return fmt.Errorf("replication: %s: shrink metadata: %w", r.res.Name, err)
		}
	}
	r.size.Store(n)
	r.shrinkTo.Store(0)
	r.log.Warn(fmt.Sprintf("shrunk from %d to %d bytes", from, n), "from", from, "to", n)
	return nil
}
