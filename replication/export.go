package replication

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/twinbd/twinbd/device"
	"github.com/twinbd/twinbd/nbd"
)

// Resource implements nbd.Export. The NBD server has checked ranges and
// flags; every write re-checks that this node is still Primary. Local I/O
// goes through an nbd.DeviceExport over the data area; with a peer, writes
// go through replicate (the write path of DESIGN.md).

var _ nbd.Export = (*Resource)(nil)

// Size is the exported size in bytes.
func (r *Resource) Size() int64 { return r.size.Load() }

// ReadOnly is false: the export only exists while Primary.
func (r *Resource) ReadOnly() bool { return false }

func (r *Resource) ReadAt(p []byte, off int64) error {
	if err := device.CheckRange(r.size.Load(), off, int64(len(p))); err != nil {
		return err
	}
	r.pending.Add(1)
	var err error
	switch {
	case r.detached.Load():
		err = r.readPeer(p, off)
	case r.partial.Load() && r.bm.CountRange(off, int64(len(p))) > 0:
		err = r.readPeer(p, off) // not synced here yet (disk.go)
	default:
		if err = r.b().local.ReadAt(p, off); err != nil && r.localIOError("read", off, err) {
			err = r.readPeer(p, off)
		}
	}
	if err == nil {
		err = r.awaitIO(false)
	}
	r.pending.Add(-1)
	if err == nil {
		r.readBytes.Add(int64(len(p)))
	}
	return err
}

func (r *Resource) WriteAt(p []byte, off int64, fua bool) error {
	if err := r.checkWrite(off, int64(len(p))); err != nil {
		return err
	}
	r.pending.Add(1)
	defer r.pending.Add(-1)
	var flags uint32
	if fua {
		flags = DataFUA
	}
	err := r.replicate(off, int64(len(p)), fua,
		func(seq uint64) Message { return &DataMsg{Seq: seq, Offset: off, Flags: flags, Payload: p} },
		func() error { return r.b().local.WriteAt(p, off, fua) })
	if err == nil {
		r.writtenBytes.Add(int64(len(p)))
	}
	return err
}

// Flush makes every completed write durable on this node and on a
// connected peer (a barrier: the peer fdatasyncs after every write it
// received before it). Writes answered on any NBD connection have completed
// on the shared data device, so one fdatasync covers all connections (what
// CAN_MULTI_CONN promises).
func (r *Resource) Flush() error {
	if !r.writable.Load() {
		return nbd.ErrReadOnly
	}
	var peer chan bool
	if s := r.sess.Load(); s != nil {
		peer = s.barrier()
	}
	var err error
	if !r.detached.Load() {
		if err = r.b().local.Flush(); err != nil && r.localIOError("flush", 0, err) {
			err = nil
		}
	}
	ok := false
	if peer != nil {
		// false: the link died; what the peer may lack is in the bitmap.
		ok = <-peer
	}
	// Diskless: only the peer's disk holds the data.
	for r.detached.Load() && !ok && err == nil {
		if err = r.noData(); err == nil {
			if s := r.sess.Load(); s != nil && r.peerUpToDate() {
				ok = <-s.barrier()
			}
		}
	}
	if err == nil {
		err = r.awaitIO(false)
	}
	return err
}

func (r *Resource) Trim(off, length int64, fua bool) error {
	if err := r.checkWrite(off, length); err != nil {
		return err
	}
	return r.replicate(off, length, fua,
		func(seq uint64) Message { return &TrimMsg{Seq: seq, Offset: off, Length: length} },
		func() error { return r.b().local.Trim(off, length, fua) })
}

func (r *Resource) WriteZeroes(off, length int64, fua, noHole bool) error {
	if err := r.checkWrite(off, length); err != nil {
		return err
	}
	err := r.replicate(off, length, fua,
		func(seq uint64) Message { return &TrimMsg{Seq: seq, Offset: off, Length: length, Zero: true} },
		func() error { return r.b().local.WriteZeroes(off, length, fua, noHole) })
	if err == nil {
		r.writtenBytes.Add(length)
	}
	return err
}

func (r *Resource) checkWrite(off, length int64) error {
	if !r.writable.Load() {
		return nbd.ErrReadOnly
	}
	return device.CheckRange(r.size.Load(), off, length)
}

// errActivityLog is returned (as EIO) when the activity log cannot record
// a write: it is not issued, since a crash could then lose track of it.
var errActivityLog = errors.New("replication: activity log")

// replicate is the write path: range lock, activity log, then the local
// write in parallel with the send to the peer, answered per the protocol.
// Without a connected peer the range is marked out of sync before the local
// write, under the activity log, so the mark survives a crash.
func (r *Resource) replicate(off, length int64, fua bool, msg func(seq uint64) Message, local func() error) error {
	if r.peer == nil {
		if r.detached.Load() {
			return fmt.Errorf("%w: %s is Diskless and has no peer: %w", ErrNoData, r.res.Name, syscall.EIO)
		}
		t0 := time.Now()
		err := local()
		r.latLocal.observe(time.Since(t0))
		if err != nil {
			r.localIOError("write", off, err)
		}
		return err
	}
	unlock := r.lock.Lock(off, length)
	defer func() { unlock() }() // replicatePeerOnly may take it again
	// Again under the range lock: a shrink (shrink.go) may have lowered
	// the size while this request waited for it.
	if err := device.CheckRange(r.size.Load(), off, length); err != nil {
		return err
	}
	if r.detached.Load() {
		return r.replicatePeerOnly(off, length, fua, msg, &unlock)
	}
	bk := r.b()
	release, err := bk.al.Begin(off, length)
	if err != nil {
		r.log.Error("activity log", "err", err)
		if r.localIOError("activity log", off, err) {
			return r.replicatePeerOnly(off, length, fua, msg, &unlock)
		}
		return fmt.Errorf("%w: %w", errActivityLog, err)
	}
	defer release()
	s := r.sess.Load()
	var p *pending
	var m Message
	if s != nil {
		p = &pending{rng: rng{off, length}}
		seq, ok := s.register(p)
		if ok {
			m = msg(seq)
			if s.writeData(m) == nil {
				if d, isData := m.(*DataMsg); isData {
					r.link.sentBytes.Add(int64(len(d.Payload)))
				}
			}
		} else {
			p = nil
		}
	}
	if p == nil {
		r.bm.SetRange(off, length)
	}
	t0 := time.Now()
	lerr := local()
	r.latLocal.observe(time.Since(t0))
	detached := false
	if lerr != nil {
		// The peer may have the new data and this disk not.
		r.bm.SetRange(off, length)
		detached = r.localIOError("write", off, lerr)
	}
	if detached {
		// The write counts if the peer has it (disk.go).
		if p != nil {
			<-p.done
			ok := p.ok
			if _, isTrim := m.(*TrimMsg); ok && fua && isTrim {
				ok = <-s.barrier()
			}
			if ok {
				return r.awaitIO(false)
			}
		}
		return r.replicatePeerOnly(off, length, fua, msg, &unlock)
	}
	unreplicated := p == nil
	if p != nil {
		switch {
		case fua || s.proto == 'C':
			<-p.done
		case s.proto == 'B':
			<-p.recvd
		}
		if fua {
			if _, isTrim := m.(*TrimMsg); isTrim {
				// A trim has no FUA flag on the wire: a barrier makes it
				// durable on the peer.
				if !<-s.barrier() {
					unreplicated = true
				}
			}
		}
		select {
		case <-p.done:
			unreplicated = unreplicated || !p.ok
		default: // protocol A or B, still in flight
		}
		r.latPeer.observe(time.Since(t0))
	}
	if lerr != nil {
		return lerr
	}
	if r.partial.Load() {
		// Attaching Primary: its disk is Inconsistent, so a write counts
		// only once the peer has it too, whatever the protocol (disk.go).
		ok := false
		if p != nil {
			<-p.done
			ok = p.ok
		}
		if !ok {
			return r.replicatePeerOnly(off, length, fua, msg, &unlock)
		}
		// Both disks have these blocks now; resync data still on its way
		// for them is older and is skipped.
		r.bm.ClearRange(off, length)
		unreplicated = false
	}
	// Quorum, and for a write the peer lacks, fencing (quorum.go).
	return r.awaitIO(unreplicated)
}
