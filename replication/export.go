package replication

import (
	"errors"
	"fmt"
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
	err := r.local.ReadAt(p, off)
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
		func() error { return r.local.WriteAt(p, off, fua) })
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
	err := r.local.Flush()
	if peer != nil {
		// false: the link died; what the peer may lack is in the bitmap.
		<-peer
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
		func() error { return r.local.Trim(off, length, fua) })
}

func (r *Resource) WriteZeroes(off, length int64, fua, noHole bool) error {
	if err := r.checkWrite(off, length); err != nil {
		return err
	}
	err := r.replicate(off, length, fua,
		func(seq uint64) Message { return &TrimMsg{Seq: seq, Offset: off, Length: length, Zero: true} },
		func() error { return r.local.WriteZeroes(off, length, fua, noHole) })
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
		t0 := time.Now()
		err := local()
		r.latLocal.observe(time.Since(t0))
		return err
	}
	unlock := r.lock.Lock(off, length)
	defer unlock()
	release, err := r.al.Begin(off, length)
	if err != nil {
		r.log.Error("activity log", "err", err)
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
	if lerr != nil {
		// The peer may have the new data and this disk not.
		r.bm.SetRange(off, length)
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
	// Quorum, and for a write the peer lacks, fencing (quorum.go).
	return r.awaitIO(unreplicated)
}
