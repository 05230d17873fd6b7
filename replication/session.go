package replication

// A session is one established peer link: the connect-time handshake
// (state exchange, sync decision, bitmap exchange), then the steady state
// (replicated writes, acks, barriers, pings, resync) until either side
// drops it.
//
// Channels: Data, Trim, Barrier, ResyncData, ChecksumRequest, BitmapChunk
// and the resync-done State travel on the data connection, in the order the
// sender wrote them; acks, pings, State and Disconnect on the meta
// connection, so an ack never waits behind bulk data.
//
// Acknowledgements (net { protocol }):
//
//	A  a write is answered when it is on the local disk and handed to the
//	   data connection;
//	B  ... and the peer has received it (RecvAck);
//	C  ... and the peer has written it (WriteAck).
//
// The peer always sends WriteAck (and RecvAck under B). A FLUSH is answered
// once the local fdatasync and the peer's BarrierAck (its fdatasync after
// every write it received before the barrier) are both done, under every
// protocol. A FUA write is durable on the peer before its WriteAck.
//
// Until a write's range is known durable on the peer (a BarrierAck covering
// its WriteAck), the session remembers it. When the session dies, every
// range the peer may not hold durably (unacked, or acked but not yet
// covered by a barrier) is set in the bitmap before any waiting write is
// answered: invariants 1 and 4. A Primary that loses an UpToDate peer
// starts a new data generation first (DRBD's new-current-UUID), so the
// next connect finds the peer behind by exactly the bitmap.
//
// Ordering (invariant 3): the Primary holds a write's range lock from
// before it is sent until it is answered (until the WriteAck under C), and
// the resync source holds it from reading a block until its WriteAck. The
// Secondary registers every incoming write in the range lock in stream
// order before handing it to a worker, so overlapping writes apply in the
// order they were sent. A barrier is a whole-device range.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twinbd/twinbd/bitmap"
	"github.com/twinbd/twinbd/device"
)

// Session limits.
const (
	maxApplyWorkers = 128      // concurrent writes applied on the Secondary
	resyncChunk     = 1 << 20  // bytes per ResyncData at most
	csumsChunk      = 64 << 10 // bytes per checksum in a csums resync
	resyncWindow    = 8        // resync requests in flight
	stateTimeout    = 30 * time.Second
)

type rng struct{ off, length int64 }

// pending is a sent message waiting for the peer's answer.
type pending struct {
	rng
	recvd chan struct{} // closed at RecvAck (protocol B) or completion
	done  chan struct{} // closed at WriteAck/NegAck/ChecksumReply or session end
	ok    bool          // acked positively; set before done closes
	same  bool          // ChecksumReply.Same
	// onDone, if set, runs (once) instead of a waiter reading done.
	onDone func(p *pending)
	// read: a ReadRequest (disk.go); the reply's data goes to buf, or
	// its errno to errno.
	read  bool
	buf   []byte
	errno uint32
	sent  int64 // r.stamp() at register (ko-count watchdog)
}

type session struct {
	r          *Resource
	data, meta net.Conn
	dw, mw     *frameWriter // frames on data and meta
	proto      byte

	seq atomic.Uint64

	mu        sync.Mutex
	pend      map[uint64]*pending
	barriers  map[uint64]chan bool
	barrierMu sync.Mutex // held from numbering an epoch to sending its barrier
	epoch     uint64
	unflushed []rng          // WriteAcked, not yet covered by a BarrierAck
	epochEnd  map[uint64]int // barrier epoch -> len(unflushed) when it was sent
	autoCut   bool           // an automatic barrier is on its way (complete)
	dead      bool
	err       error

	deadCh   chan struct{}
	finished chan struct{} // closed after teardown

	// Secondary: writes applied in the current epoch, and the previous
	// barrier's completion (barrier acks go out in order). Receiver only.
	epochWG     *sync.WaitGroup
	lastBarrier chan struct{}
	// Writes received since the page cache was last dropped or the count
	// restarted, and how many of them were small (dropCleanCache).
	// Receiver only.
	epochWrites, epochSmall int
	workers                 sync.WaitGroup
	sem                     chan struct{}
	extra                   sync.WaitGroup // loops started after the handshake (startSyncSource)
	toPrimary               atomic.Bool    // resync source of an attaching Primary (disk.go)

	// resync state (source)
	csums    bool
	csumAlg  uint8 // csums-alg's digest (digest.go), fixed at the handshake
	syncedAt time.Time

	rz resizeWait // resize.go: the answer to a Resize
}

func newSession(r *Resource, data, meta net.Conn) *session {
	p := byte('C')
	if v := r.res.Net.Protocol; v == "A" || v == "B" {
		p = v[0]
	}
	return &session{
		r: r, data: data, meta: meta, proto: p,
		dw: newFrameWriter(data, 256<<10), mw: newFrameWriter(meta, 16<<10),
		pend: map[uint64]*pending{}, barriers: map[uint64]chan bool{}, epochEnd: map[uint64]int{},
		deadCh: make(chan struct{}), finished: make(chan struct{}),
		sem:     make(chan struct{}, r.applyLimit()),
		epochWG: new(sync.WaitGroup),
	}
}

// fail ends the session (first error wins).
func (s *session) fail(err error) {
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return
	}
	// A Primary's writes that find the session dead from now on (register
	// refuses them) must not be answered before teardown has dealt with
	// the peer's loss (new generation, fencing): arm the gate first.
	if r := s.r; r.sess.Load() == s && r.writable.Load() {
		r.fo.fencing.Store(true)
	}
	s.dead, s.err = true, err
	s.mu.Unlock()
	close(s.deadCh)
	s.data.Close()
	s.meta.Close()
}

func (s *session) isDead() bool {
	select {
	case <-s.deadCh:
		return true
	default:
		return false
	}
}

func (s *session) sendMeta(m Message) error {
	if err := s.mw.send(0, m); err != nil {
		s.fail(fmt.Errorf("meta channel: %w", err))
		return err
	}
	return nil
}

func (s *session) writeData(m Message) error {
	if err := s.dw.send(0, m); err != nil {
		s.fail(fmt.Errorf("data channel: %w", err))
		return err
	}
	return nil
}

// register assigns a sequence number to p, or returns false if the session
// is dead (the caller then treats the peer as not having the data).
func (s *session) register(p *pending) (uint64, bool) {
	p.recvd = make(chan struct{})
	p.done = make(chan struct{})
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead {
		return 0, false
	}
	seq := s.seq.Add(1)
	p.sent = s.r.stamp()
	s.pend[seq] = p
	return seq, true
}

// koWatch is DRBD's timeout/ko-count: every `timeout` it looks at the
// oldest request the peer has not answered; when one was older than
// `timeout` at ko-count checks in a row, the peer is declared dead and the
// link dropped, even though it still answers pings (a stuck disk, a
// wedged process). ko-count 0 disables it.
func (s *session) koWatch() {
	r := s.r
	every := r.res.Net.Timeout
	if every <= 0 || r.res.Net.KoCount <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	ko := 0
	for {
		select {
		case <-s.deadCh:
			return
		case <-t.C:
		}
		now := r.stamp()
		s.mu.Lock()
		oldest := now
		for _, p := range s.pend {
			oldest = min(oldest, p.sent)
		}
		s.mu.Unlock()
		if time.Duration(now-oldest) < every {
			ko = 0
			continue
		}
		ko++
		r.log.Warn("peer has not answered a request within timeout", "peer", r.peer.Name, "age", time.Duration(now-oldest).Round(time.Millisecond), "ko", ko, "ko-count", r.res.Net.KoCount)
		if ko >= r.res.Net.KoCount {
			s.fail(fmt.Errorf("peer %s answered no request for %v (timeout %v x ko-count %d): declared dead", r.peer.Name, time.Duration(now-oldest).Round(time.Millisecond), every, r.res.Net.KoCount))
			return
		}
	}
}

// complete finishes a pending entry (from the meta reader).
func (s *session) complete(seq uint64, ok, same bool) {
	s.mu.Lock()
	p := s.pend[seq]
	if p == nil {
		s.mu.Unlock()
		return
	}
	delete(s.pend, seq)
	if ok && p.length > 0 {
		s.unflushed = append(s.unflushed, p.rng)
	}
	// One automatic barrier per full epoch: until the goroutine below
	// numbers it (barrier sets epochEnd), later acks must not start more
	// (each costs the peer an fdatasync).
	auto := len(s.unflushed) >= s.r.maxEpoch() && len(s.epochEnd) == 0 && !s.autoCut
	if auto {
		s.autoCut = true
	}
	s.mu.Unlock()
	if !ok && p.length > 0 {
		s.r.bm.SetRange(p.off, p.length) // the peer does not have it
	}
	p.ok, p.same = ok, same
	finish(p)
	if auto {
		// Close the epoch so that the list of acked but not yet durable
		// ranges stays bounded without a client FLUSH.
		go s.barrier()
	}
}

func finish(p *pending) {
	select {
	case <-p.recvd:
	default:
		close(p.recvd)
	}
	close(p.done)
	if p.onDone != nil {
		p.onDone(p)
	}
}

// barrier sends a Barrier and returns a channel that yields true once the
// peer has made everything it received before it durable.
func (s *session) barrier() chan bool {
	ch := make(chan bool, 1)
	// Epochs go on the wire in the order they are numbered (the Secondary
	// acks them in wire order, and barrierAck trims in that order).
	s.barrierMu.Lock()
	defer s.barrierMu.Unlock()
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		ch <- false
		return ch
	}
	s.epoch++
	e := s.epoch
	s.barriers[e] = ch
	s.epochEnd[e] = len(s.unflushed)
	s.autoCut = false // this barrier closes the epoch that was full
	s.mu.Unlock()
	// The barrier must follow every write already acked; the data lock
	// orders it after every frame written so far.
	if s.writeData(&BarrierMsg{Epoch: e}) != nil {
		return ch // fail() answers it false in teardown
	}
	return ch
}

func (s *session) barrierAck(e uint64) {
	s.mu.Lock()
	ch := s.barriers[e]
	n, ok := s.epochEnd[e]
	delete(s.barriers, e)
	delete(s.epochEnd, e)
	if ok {
		s.unflushed = s.unflushed[n:]
		for k, v := range s.epochEnd {
			s.epochEnd[k] = max(v-n, 0)
		}
	}
	s.mu.Unlock()
	if ch != nil {
		ch <- true
	}
}

// runSession runs the handshake and the session until it ends.
func (r *Resource) runSession(ctx context.Context, data, meta net.Conn) error {
	s := newSession(r, data, meta)
	r.mu.Lock()
	if r.disconnectReq || r.down {
		r.mu.Unlock()
		data.Close()
		meta.Close()
		return errOperatorDisconnect
	}
	r.handshaking = func() { s.fail(errOperatorDisconnect) }
	r.mu.Unlock()
	// down (ctx) also ends a handshake in progress, not only a session.
	stop := context.AfterFunc(ctx, func() { s.fail(errors.New("shutting down")) })
	defer stop()
	kind, err := s.handshake()
	r.mu.Lock()
	r.handshaking = nil
	r.mu.Unlock()
	if err != nil {
		s.fail(err)
		close(s.finished)
		s.mu.Lock()
		err = s.err
		s.mu.Unlock()
		return err
	}
	r.fo.lastPing.Store(r.stamp()) // heard from the peer just now
	r.pokeWitness()
	var loops sync.WaitGroup
	loops.Go(s.readMeta)
	loops.Go(s.readData)
	loops.Go(s.pinger)
	loops.Go(s.koWatch)
	if kind.Source() {
		loops.Go(s.resync)
	}
	<-s.deadCh
	loops.Wait()
	s.extra.Wait()
	s.teardown()
	close(s.finished)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// myState is this node's State message.
func (r *Resource) myState(flags uint32) *StateMsg {
	sb := r.b().meta.Superblock()
	r.mu.Lock()
	role, disk := r.role, r.disk
	if r.discardMyData {
		flags |= StateDiscardMyData
	}
	r.mu.Unlock()
	if sb.Flags&bitmap.FlagCrashedPrimary != 0 {
		flags |= StateCrashedPrimary
	}
	return &StateMsg{
		Role: uint8(role), Disk: uint8(disk), Size: r.size.Load(), Granularity: uint32(r.bm.Granularity()),
		Current: sb.Current, Bitmap: sb.Bitmap, History: sb.History, Flags: flags, Dirty: r.bm.Count(),
	}
}

func syncInput(m *StateMsg, nodeID int) SyncInput {
	return SyncInput{
		Gen:  Generation{Current: m.Current, Bitmap: m.Bitmap, History: m.History},
		Disk: DiskState(m.Disk), Role: Role(m.Role),
		CrashedPrimary: m.Flags&StateCrashedPrimary != 0,
		Dirty:          m.Dirty, NodeID: nodeID,
		DiscardMyData: m.Flags&StateDiscardMyData != 0,
	}
}

// readMsg reads one message with a deadline (handshake only).
func readMsg(c net.Conn, want MsgType) (Message, error) {
	f, _, err := ReadFrame(c, nil)
	if err != nil {
		return nil, err
	}
	m, err := DecodeMessage(f)
	if err != nil {
		return nil, err
	}
	if d, ok := m.(*DisconnectMsg); ok {
		return nil, standAlone("peer refused: %s", d.Reason)
	}
	if m.Type() != want {
		return nil, fmt.Errorf("%w: got %v during the handshake, want %v", ErrMalformed, m.Type(), want)
	}
	return m, nil
}

// refuse tells the peer why (best effort) and returns a StandAlone error.
func (s *session) refuse(format string, args ...any) error {
	reason := fmt.Sprintf(format, args...)
	s.mw.send(0, &DisconnectMsg{Reason: reason})
	return standAlone("%s", reason)
}

// handshake exchanges states, decides the sync direction, merges bitmaps
// and attaches the session to the resource.
func (s *session) handshake() (SyncKind, error) {
	r := s.r
	dl := time.Now().Add(stateTimeout)
	s.data.SetDeadline(dl)
	s.meta.SetDeadline(dl)
	mine := r.myState(0)
	// A send error is not final yet: the peer may have refused and closed
	// already, and its Disconnect (with the reason) is still to be read.
	sendErr := s.mw.send(0, mine)
	m, err := readMsg(s.meta, MsgState)
	if err == nil && sendErr != nil {
		err = sendErr
	}
	if err != nil {
		return 0, fmt.Errorf("state exchange: %w", err)
	}
	theirs := m.(*StateMsg)
	if err := s.checkSize(theirs); err != nil { // resize.go
		return 0, err
	}
	if int64(theirs.Granularity) != r.bm.Granularity() {
		return 0, s.refuse("bitmap granularity mismatch: %d here, %d on the peer", r.bm.Granularity(), theirs.Granularity)
	}
	me, peer := syncInput(mine, r.host.NodeID), syncInput(theirs, r.peer.NodeID)
	// A Diskless node has no data to compare: no sync either way (disk.go).
	diskless := me.Disk == DiskDiskless || peer.Disk == DiskDiskless
	d := Decision{Kind: NoSync, Rule: "a Diskless node takes part in no resync"}
	if !diskless {
		d = DecideSync(me, peer)
	}
	kind := d.Kind
	switch kind {
	case SplitBrainAuto, SplitBrainManual:
		r.log.Error("split brain detected", "peer", r.peer.Name, "rule", d.Rule)
		r.runHandler("split-brain", r.res.Handlers.SplitBrain)
		o, why := ResolveSplitBrain(me, peer, r.host.Name, r.peer.Name, SBPolicies{
			ZeroPri: r.res.Net.AfterSB0Pri, OnePri: r.res.Net.AfterSB1Pri, TwoPri: r.res.Net.AfterSB2Pri})
		switch o {
		case SBDiscardMine:
			if r.Role() == RolePrimary {
				return 0, standAlone("split brain: this node is the victim (%s) but Primary: demote it and connect again", why)
			}
			kind = BitmapSyncTarget
			if d.Kind == SplitBrainManual {
				kind = FullSyncTarget
			}
		case SBDiscardPeer:
			if peer.Role == RolePrimary {
				return 0, standAlone("split brain: the peer is the victim (%s) but Primary", why)
			}
			kind = BitmapSyncSource
			if d.Kind == SplitBrainManual {
				kind = FullSyncSource
			}
		default:
			return 0, standAlone("split brain, nobody picked to discard its data (%s): choose the victim and run `twinbd connect --discard-my-data %s` there, then `twinbd connect %s` on the other node", why, r.res.Name, r.res.Name)
		}
		r.log.Warn("split brain resolved", "outcome", o, "why", why, "sync", kind)
	case Unrelated:
		return 0, standAlone("unrelated data (%s): the nodes share no data generation; run `twinbd invalidate %s` (or create-md) on the node whose data is to be overwritten", d.Rule, r.res.Name)
	case SyncRefused:
		return 0, standAlone("sync refused: %s", d.Rule)
	}
	r.log.Info("peer connected", "peer", r.peer.Name, "sync", kind, "rule", d.Rule,
		"peer-role", Role(theirs.Role), "peer-disk", DiskState(theirs.Disk))

	// Pause application writes while the bitmaps merge and the session
	// attaches: a write is either wholly before (its bit is set) or wholly
	// after (it is replicated).
	unlock := r.lock.Lock(0, math.MaxInt64)
	defer unlock()
	switch {
	case kind == FullSyncSource || kind == FullSyncTarget:
		r.bm.SetAll()
	case kind.Source() || kind.Target():
		if err := s.exchangeBitmaps(); err != nil {
			return 0, fmt.Errorf("bitmap exchange: %w", err)
		}
	}
	peerDisk := DiskState(theirs.Disk)
	switch {
	case kind.Target():
		if err := r.b().meta.Update(func(sb *bitmap.Superblock) {
			sb.Flags &^= bitmap.FlagConsistent | bitmap.FlagWasUpToDate
		}); err != nil {
			return 0, fmt.Errorf("mark Inconsistent: %w", err)
		}
		if err := r.b().meta.WriteBitmap(r.bm); err != nil {
			return 0, err
		}
		r.runHandler("before-resync-target", r.res.Handlers.BeforeResyncTarget)
		r.setDisk(DiskInconsistent)
	case kind.Source():
		if err := r.b().meta.WriteBitmap(r.bm); err != nil {
			return 0, err
		}
		// The source holds the newest data by the sync decision: a
		// Consistent or Outdated source is UpToDate from here on.
		if me.Disk != DiskUpToDate {
			if err := r.markUpToDate(); err != nil {
				return 0, err
			}
		}
		peerDisk = DiskInconsistent
		s.csums = peer.CrashedPrimary || me.CrashedPrimary || r.res.Net.CsumsAlg != ""
		s.csumAlg, _ = digestAlg(r.res.Net.CsumsAlg) // the config parser allows only known names
		// An Inconsistent Primary as the target: one that was attaching a
		// new disk when the link broke (disk.go).
		s.toPrimary.Store(peer.Role == RolePrimary)
	case diskless:
		// A Diskless Primary writes nothing its peer does not get; at the
		// same data generation (no writes of its own before its disk
		// failed) the peer's consistent data is current.
		if peer.Disk == DiskDiskless && peer.Role == RolePrimary && me.Disk == DiskConsistent &&
			me.Gen.Current&^1 == peer.Gen.Current&^1 {
			if err := r.markUpToDate(); err != nil {
				return 0, err
			}
		}
	case kind == NoSync:
		// Same generation on both sides: consistent data is now known
		// to be current on both.
		if me.Disk >= DiskOutdated && peer.Disk >= DiskOutdated && me.Disk != DiskDUnknown {
			if err := r.markUpToDate(); err != nil {
				return 0, err
			}
			peerDisk = DiskUpToDate
		}
	}
	// The crashed-primary flag has done its job once a sync was decided.
	if me.CrashedPrimary {
		r.b().meta.Update(func(sb *bitmap.Superblock) { sb.Flags &^= bitmap.FlagCrashedPrimary })
	}
	s.data.SetDeadline(time.Time{})
	s.meta.SetDeadline(time.Time{})
	s.syncedAt = time.Now()

	repl := ReplEstablished
	switch {
	case kind.Source():
		repl = ReplSyncSource
	case kind.Target():
		repl = ReplSyncTarget
	}
	r.mu.Lock()
	r.discardMyData = false
	r.link.conn = ConnConnected
	r.link.reason = ""
	r.link.repl = repl
	r.link.peerRole = Role(theirs.Role)
	// A peer that crashed as Primary and came back Secondary (quorum.go:
	// an automatic failover still takes over from it).
	r.fo.peerCrashed.Store(theirs.Flags&StateCrashedPrimary != 0 && Role(theirs.Role) == RoleSecondary)
	r.link.peerDisk = peerDisk
	r.link.syncTotal = r.bm.Count()
	r.link.syncStart = time.Now()
	r.link.syncedBytes.Store(0)
	r.sess.Store(s)
	r.mu.Unlock()
	// Tell the peer our (possibly changed) disk state. The session is
	// published: if this fails, runSession tears it down like any other.
	s.sendMeta(r.myState(0))
	return kind, nil
}

// exchangeBitmaps sends this node's bitmap and ORs the peer's into it.
func (s *session) exchangeBitmaps() error {
	r := s.r
	words := r.bm.Words()
	errc := make(chan error, 1)
	go func() {
		for at := 0; ; at += MaxBitmapChunkWords / 4 {
			end := min(at+MaxBitmapChunkWords/4, len(words))
			m := &BitmapChunkMsg{Offset: int64(at) * 64, Words: uint32(end - at), Last: end == len(words),
				Payload: EncodeBitmapRuns(words[at:end])}
			err := s.dw.send(0, m)
			if err != nil || m.Last {
				errc <- err
				return
			}
		}
	}()
	total := int64(len(words))
	for {
		m, err := readMsg(s.data, MsgBitmapChunk)
		if err != nil {
			return err
		}
		c := m.(*BitmapChunkMsg)
		w, err := DecodeBitmapRuns(c.Payload, int(c.Words))
		if err != nil {
			return err
		}
		if err := r.bm.OrWords(c.Offset/64, w); err != nil {
			return fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		if c.Last {
			if c.Offset/64+int64(c.Words) != total {
				return fmt.Errorf("%w: bitmap of %d words, want %d", ErrMalformed, c.Offset/64+int64(c.Words), total)
			}
			break
		}
	}
	return <-errc
}

// readMeta handles acks, pings, states and disconnects.
func (s *session) readMeta() {
	r := s.r
	br := bufio.NewReaderSize(s.meta, 64<<10)
	var buf []byte
	for {
		deadline := r.res.Net.PingInt + r.res.Net.PingTimeout
		if deadline <= 0 {
			deadline = 1500 * time.Millisecond
		}
		s.meta.SetReadDeadline(time.Now().Add(deadline))
		f, b, err := ReadFrame(br, buf)
		buf = b
		if err != nil {
			if isTimeout(err) {
				err = fmt.Errorf("ping timeout: nothing from %s for %v", r.peer.Name, deadline)
			}
			s.fail(fmt.Errorf("meta channel: %w", err))
			return
		}
		m, err := DecodeMessage(f)
		if err != nil {
			s.fail(fmt.Errorf("meta channel: %w", err))
			return
		}
		switch m := m.(type) {
		case *PingMsg:
			r.fo.lastPing.Store(r.stamp())
			seq := f.Seq
			go s.mw.send(seq, &PingAckMsg{})
		case *PingAckMsg:
			r.pingAcked(f.Seq)
		case *RecvAckMsg:
			s.mu.Lock()
			p := s.pend[m.Seq]
			s.mu.Unlock()
			if p != nil {
				select {
				case <-p.recvd:
				default:
					close(p.recvd)
				}
			}
		case *WriteAckMsg:
			s.complete(m.Seq, true, false)
		case *NegAckMsg:
			r.mu.Lock()
			diskless := r.link.peerDisk == DiskDiskless
			r.mu.Unlock()
			if !diskless { // a Diskless peer refuses every write
				r.log.Warn("peer failed a write", "seq", m.Seq, "errno", m.Errno)
			}
			s.complete(m.Seq, false, false)
		case *ChecksumReplyMsg:
			s.complete(f.Seq, true, m.Same)
		case *BarrierAckMsg:
			s.barrierAck(m.Epoch)
		case *ResizeReplyMsg:
			s.rz.deliver(f.Seq, m)
		case *StateMsg:
			r.mu.Lock()
			r.link.peerRole = Role(m.Role)
			was := r.link.peerDisk
			r.link.peerDisk = DiskState(m.Disk)
			r.mu.Unlock()
			if was != DiskUpToDate && DiskState(m.Disk) == DiskUpToDate && r.fo.needUnfence.CompareAndSwap(true, false) {
				// DRBD's unfence-peer: the fenced peer caught up, so a
				// constraint fence-peer placed (crm-fence-peer) can go.
				r.runHandler("unfence-peer", r.res.Handlers.UnfencePeer)
			}
			r.pokeWitness()
			if m.Flags&StateHandover != 0 && Role(m.Role) == RoleSecondary {
				r.handover()
			}
			if m.Flags&StateAttached != 0 {
				// Not here: it waits for writes whose acks this reader reads.
				s.extra.Go(s.startSyncSource)
			}
		case *DisconnectMsg:
			s.fail(fmt.Errorf("peer disconnected: %s", m.Reason))
			return
		default:
			s.fail(fmt.Errorf("meta channel: %w: unexpected %v", ErrMalformed, m.Type()))
			return
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// pinger sends a Ping at once and then every T/3 (T = ping-int +
// ping-timeout; readMeta drops the link when nothing arrives for T). Each
// answered Ping extends the peer lease (quorum.go) from its send time.
func (s *session) pinger() {
	r := s.r
	t := time.NewTicker(r.renewEvery())
	defer t.Stop()
	for seq := uint64(1); ; seq++ {
		r.pingSent(seq)
		if err := s.mw.send(seq, &PingMsg{}); err != nil {
			s.fail(fmt.Errorf("meta channel: %w", err))
			return
		}
		select {
		case <-s.deadCh:
			return
		case <-t.C:
		}
	}
}

// readData applies the Primary's writes (and resync data) on this node.
func (s *session) readData() {
	r := s.r
	br := bufio.NewReaderSize(s.data, 256<<10)
	var buf []byte
	for {
		if br.Buffered() == 0 {
			// About to wait for the network: send the acks queued for
			// writes applied inline.
			if err := s.mw.flush(); err != nil {
				s.fail(fmt.Errorf("meta channel: %w", err))
				return
			}
		}
		// buf is reused while messages are applied inline; one handed to a
		// worker keeps its payload, and the next frame gets a new buffer.
		f, b, err := ReadFrame(br, buf)
		buf = b
		if err != nil {
			if !s.isDead() {
				s.fail(fmt.Errorf("data channel: %w", err))
			}
			return
		}
		m, err := DecodeMessage(f)
		if err != nil {
			s.fail(fmt.Errorf("data channel: %w", err))
			return
		}
		r.link.recvBytes.Add(int64(len(f.Payload)))
		done, err := s.apply(f.Seq, m)
		if err != nil {
			s.fail(fmt.Errorf("data channel: %w", err))
			return
		}
		if !done {
			buf = nil
		}
	}
}

// apply registers one data-channel message in the range lock (stream order)
// and applies it inline (done: its payload is no longer referenced) or
// hands it to a worker.
func (s *session) apply(fseq uint64, m Message) (done bool, err error) {
	r := s.r
	var (
		off, length int64
		work        func() error
		ack         func(error)
	)
	inline := false // applied by the receiver itself; acks are queued
	writeAck := func(seq uint64) func(error) {
		return func(err error) {
			var m Message = &WriteAckMsg{Seq: seq}
			if err != nil {
				m = &NegAckMsg{Seq: seq, Errno: errnoOf(err)}
			}
			if inline {
				if err := s.mw.queue(0, m); err != nil {
					go s.fail(fmt.Errorf("meta channel: %w", err))
				}
				return
			}
			s.sendMeta(m)
		}
	}
	switch m := m.(type) {
	case *DataMsg:
		if r.writable.Load() { // Primary; no r.mu on the per-write path
			return false, fmt.Errorf("%w: the peer sent application data while this node is Primary", ErrMalformed)
		}
		if err := r.checkPeerRange(m.Offset, int64(len(m.Payload))); err != nil {
			return false, err
		}
		if s.proto == 'B' {
			if err := s.mw.queue(0, &RecvAckMsg{Seq: m.Seq}); err != nil {
				return false, err
			}
		}
		// Plain writes go to the page cache and ext4 serializes them on
		// the inode anyway: applying them here saves a goroutine hand-off
		// per write. FUA writes wait for the disk and go to workers.
		inline = m.Flags&DataFUA == 0
		off, length = m.Offset, int64(len(m.Payload))
		s.epochWrites++
		if length < smallWrite {
			s.epochSmall++
		}
		work = func() error {
			err := r.peerIO("write", m.Offset, func() error {
				return r.b().local.WriteAt(m.Payload, m.Offset, m.Flags&DataFUA != 0)
			})
			if err == nil {
				r.writtenBytes.Add(int64(len(m.Payload)))
			}
			return err
		}
		ack = writeAck(m.Seq)
	case *TrimMsg:
		if err := r.checkPeerRange(m.Offset, m.Length); err != nil {
			return false, err
		}
		off, length = m.Offset, m.Length
		work = func() error {
			return r.peerIO("trim", m.Offset, func() error {
				if m.Zero {
					return r.b().local.WriteZeroes(m.Offset, m.Length, false, false)
				}
				return r.b().local.Trim(m.Offset, m.Length, false)
			})
		}
		ack = writeAck(m.Seq)
	case *ResyncDataMsg:
		if err := r.checkPeerRange(m.Offset, m.Length); err != nil {
			return false, err
		}
		var p []byte
		if m.Flags&ResyncZero == 0 {
			var err error
			if p, err = DecodeResyncPayload(m, nil); err != nil {
				return false, err
			}
		}
		off, length = m.Offset, m.Length
		work = func() error {
			err := r.peerIO("resync write", m.Offset, func() error {
				if r.partial.Load() {
					return r.applyResyncPartial(m.Offset, m.Length, p)
				}
				if p == nil {
					return r.b().local.WriteZeroes(m.Offset, m.Length, false, false) // may punch a hole
				}
				return r.b().local.WriteAt(p, m.Offset, false)
			})
			if err != nil {
				return err
			}
			r.bm.ClearRange(m.Offset, m.Length)
			r.link.syncedBytes.Add(m.Length)
			return nil
		}
		ack = writeAck(m.Seq)
	case *ChecksumRequestMsg:
		if err := r.checkPeerRange(m.Offset, m.Length); err != nil {
			return false, err
		}
		seq := fseq // the request id travels in the frame sequence (see sendCsum)
		off, length = m.Offset, m.Length
		var same bool
		work = func() error {
			buf := make([]byte, m.Length)
			if err := r.peerIO("read", m.Offset, func() error { return r.b().local.ReadAt(buf, m.Offset) }); err != nil {
				return err
			}
			same = digest(m.Alg, buf) == m.Sum
			switch target := r.ReplState() == ReplSyncTarget; {
			case same && target: // csums resync: nothing to send
				r.bm.ClearRange(m.Offset, m.Length)
				r.link.syncedBytes.Add(m.Length)
			case !same && !target: // online verify found a difference
				r.bm.SetRange(m.Offset, m.Length)
			}
			return nil
		}
		ack = func(err error) {
			reply := &ChecksumReplyMsg{Offset: m.Offset, Length: m.Length, Same: same && err == nil}
			if werr := s.mw.send(seq, reply); werr != nil {
				go s.fail(werr)
			}
		}
	case *BarrierMsg:
		// Everything received before the barrier (this epoch's writes)
		// completes, then one fdatasync, then the ack, in epoch order.
		// Later writes do not wait for it: they are the next epoch.
		wg, prev, done := s.epochWG, s.lastBarrier, make(chan struct{})
		s.epochWG, s.lastBarrier = new(sync.WaitGroup), done
		// Mostly small writes: drop the cache they went through once it is
		// clean. Large ones write whole folios, which are cheap to reuse.
		// At most once per dropEvery small writes (a FLUSH after every
		// write must not pay for it each time).
		drop := false
		switch {
		case s.epochSmall >= dropEvery:
			drop = 2*s.epochSmall >= s.epochWrites
			s.epochWrites, s.epochSmall = 0, 0
		case s.epochWrites >= 2*dropEvery: // mostly large
			s.epochWrites, s.epochSmall = 0, 0
		}
		s.workers.Go(func() {
			defer close(done)
			wg.Wait()
			if prev != nil {
				<-prev
			}
			// Diskless: nothing here to make durable (the Primary's
			// writes were refused and are out of sync on its side).
			b := r.b()
			err := r.peerIO("flush", 0, b.data.Flush)
			if err != nil && !r.detached.Load() {
				r.log.Error("flush for the peer's barrier failed", "err", err)
				s.fail(fmt.Errorf("barrier: flush: %w", err))
				return
			}
			if err == nil && drop {
				r.dropCleanCache(b)
			}
			if !s.isDead() {
				s.sendMeta(&BarrierAckMsg{Epoch: m.Epoch})
			}
		})
		return false, nil
	case *ReadRequestMsg:
		if err := r.checkPeerRange(m.Offset, m.Length); err != nil {
			return false, err
		}
		seq := fseq // pairs the reply with the request (readPeer)
		off, length = m.Offset, m.Length
		var data []byte
		work = func() error {
			buf := make([]byte, m.Length)
			if err := r.peerIO("read", m.Offset, func() error { return r.b().local.ReadAt(buf, m.Offset) }); err != nil {
				return err
			}
			data = buf
			r.readBytes.Add(m.Length)
			return nil
		}
		ack = func(err error) {
			reply := &ReadReplyMsg{Payload: data}
			if err != nil {
				reply = &ReadReplyMsg{Errno: errnoOf(err)}
			}
			s.writeDataSeq(seq, reply) // a failure kills the session
		}
	case *ReadReplyMsg:
		return true, s.readReply(fseq, m)
	case *ResizeMsg, *SyncStartMsg:
		off, length = 0, math.MaxInt64    // after every earlier message, before every later one
		work, ack = s.resizeWork(fseq, m) // resize.go
	case *StateMsg:
		if m.Flags&StateResyncDone == 0 {
			return false, fmt.Errorf("%w: State on the data channel without resync-done", ErrMalformed)
		}
		off, length = 0, math.MaxInt64
		work = func() error { return r.finishSyncTarget(m) }
		ack = func(err error) {
			if err != nil {
				go s.fail(fmt.Errorf("finishing resync: %w", err))
				return
			}
			s.sendMeta(r.myState(0))
		}
	default:
		return false, fmt.Errorf("%w: unexpected %v on the data channel", ErrMalformed, m.Type())
	}
	granted, unlock := r.lock.Enqueue(off, length)
	if inline {
		select {
		case <-granted:
			err := work()
			unlock()
			if err != nil && !errors.Is(err, errDiskless) {
				r.log.Error("applying peer data failed", "type", m.Type(), "off", off, "err", err)
			}
			ack(err)
			return true, nil
		default:
			inline = false // waits behind an overlapping write: a worker
		}
	}
	select {
	case s.sem <- struct{}{}:
	case <-s.deadCh:
		unlock()
		return false, nil
	}
	epoch := s.epochWG
	epoch.Add(1)
	s.workers.Go(func() {
		defer epoch.Done()
		defer func() { <-s.sem }()
		<-granted
		err := work()
		unlock()
		if err != nil && !errors.Is(err, errDiskless) {
			r.log.Error("applying peer data failed", "type", m.Type(), "off", off, "err", err)
		}
		if !s.isDead() {
			ack(err)
		}
	})
	return false, nil
}

func (r *Resource) checkPeerRange(off, length int64) error {
	if err := device.CheckRange(r.size.Load(), off, length); err != nil {
		return fmt.Errorf("%w: from the peer: %w", ErrMalformed, err)
	}
	return nil
}

func errnoOf(err error) uint32 {
	var en syscall.Errno
	if errors.As(err, &en) {
		return uint32(en)
	}
	return uint32(syscall.EIO)
}

// finishSyncTarget runs on the target when the source says the resync is
// complete: everything before it in the stream is applied (the whole-device
// range lock), so flush, adopt the source's generation, and be UpToDate.
func (r *Resource) finishSyncTarget(m *StateMsg) error {
	if r.detached.Load() {
		return nil // the disk failed during the resync: stays Diskless
	}
	if err := r.peerIO("flush", 0, r.b().data.Flush); err != nil {
		if r.detached.Load() {
			return nil // detached by this very error: Diskless now, the link stays
		}
		return err
	}
	r.bm.ClearAll()
	if err := r.b().meta.WriteBitmap(r.bm); err != nil {
		return err
	}
	if err := r.b().meta.Update(func(sb *bitmap.Superblock) {
		sb.Current, sb.Bitmap, sb.History = m.Current, 0, m.History
		sb.Flags |= bitmap.FlagConsistent | bitmap.FlagWasUpToDate
		sb.Flags &^= bitmap.FlagOutdated | bitmap.FlagCrashedPrimary | bitmap.FlagFullSyncNeeded
	}); err != nil {
		return err
	}
	r.mu.Lock()
	r.disk = DiskUpToDate
	r.link.repl = ReplEstablished
	r.link.peerDisk = DiskUpToDate
	r.mu.Unlock()
	r.partial.Store(false)
	r.log.Info("resync finished: UpToDate", "peer", r.peer.Name)
	r.runHandler("after-resync-target", r.res.Handlers.AfterResyncTarget)
	return nil
}

// teardown runs once the session is dead: it records what the peer may
// miss, answers every waiting write, and detaches the session.
func (s *session) teardown() {
	r := s.r
	if d := testTeardownDelay.Load(); d > 0 {
		time.Sleep(time.Duration(d)) // tests: widen the window after fail()
	}
	// Writes the peer may not hold durably: unacked, or acked after the
	// last barrier it acknowledged.
	s.mu.Lock()
	pend := s.pend
	s.pend = map[uint64]*pending{}
	unflushed := s.unflushed
	s.unflushed = nil
	barriers := s.barriers
	s.barriers = map[uint64]chan bool{}
	s.mu.Unlock()
	for _, p := range pend {
		if !p.read {
			r.bm.SetRange(p.off, p.length)
		}
	}
	for _, u := range unflushed {
		r.bm.SetRange(u.off, u.length)
	}
	// A Primary that loses its peer starts a new generation before
	// answering anything more, unless a bitmap UUID is set (it is the
	// source of a bitmap resync the peer has not finished: the peer's
	// current UUID is that bitmap UUID, which is how the next connect
	// resumes it). DRBD also asks for the peer to have been UpToDate; that
	// is not enough here: a peer may have adopted this generation (resync
	// done) without its UpToDate state having arrived yet, and then writes
	// after the split would not be found behind a shared current UUID
	// (found by TestPairRandomFaults, seed 1). With fencing (a witness, or
	// resource-and-stonith) the new generation waits until the peer is
	// fenced, and so do the writes it lacks (quorum.go).
	// No r.mu until the waiting writes are answered: a demotion holding
	// r.mu may be draining exactly those writes.
	switch {
	case r.partial.Load():
		// Attaching: every write it answered is on the peer too, and
		// nothing is answered without the peer (disk.go): no new
		// generation, nobody to fence; the resync resumes on connect.
		r.fo.fencing.Store(false)
		r.wakeIO()
	case r.detached.Load():
		// Diskless: every write it answered is on the peer, which keeps
		// the only copy; no new generation, nobody to fence (disk.go).
		r.fo.fencing.Store(false)
		r.wakeIO()
		if r.writable.Load() && r.res.Options.AutoFailover {
			// No data here any more: give the role and the witness lease
			// up, so that the peer (if alive) can take over.
			r.log.Error("Diskless Primary lost its peer: demoting so that the peer can take over (auto-failover)", "peer", r.peer.Name)
			go func() {
				if err := r.demote(true, true); err != nil {
					r.log.Error("demotion of the Diskless Primary", "err", err)
				}
			}()
		}
	case r.writable.Load() && r.fenceRequired():
		r.startFencing(false, false)
	case r.writable.Load():
		r.fenced() // new generation (unless a resync is pending), writes go on
	default: // demoted meanwhile: nothing waits
		r.fo.fencing.Store(false)
		r.wakeIO()
	}
	if r.writable.Load() && !r.detached.Load() && r.res.Net.Fencing == "resource-only" && r.res.Handlers.FencePeer != "" {
		r.runHandler("fence-peer", r.res.Handlers.FencePeer)
		r.fo.needUnfence.Store(true) // whatever it placed goes once the peer is back
	}
	r.sess.Store(nil)
	for _, p := range pend {
		p.ok = false
		finish(p)
	}
	for _, ch := range barriers {
		ch <- false
	}
	r.mu.Lock()
	if r.link.conn == ConnConnected {
		r.link.conn = ConnConnecting
	}
	r.link.repl = ReplOff
	r.fo.peerWasPrimary.Store(r.link.peerRole == RolePrimary && r.role != RolePrimary)
	r.link.peerRole = RoleUnknown
	r.link.peerDisk = DiskDUnknown
	if r.disk == DiskUpToDate && r.role != RolePrimary && len(r.peers) > 0 && r.res.Net.Fencing == "dont-care" {
		// Without the peer and without fencing a Secondary only knows its
		// data is consistent: the Primary may write on without it. With
		// fencing (DRBD's behaviour) it stays UpToDate: a Primary that
		// writes on first has fence-peer outdate it (and a witness, when
		// configured, decides every promotion of a disconnected node).
		r.disk = DiskConsistent
	}
	r.mu.Unlock()
	s.workers.Wait()
	r.log.Warn("peer link down", "peer", r.peer.Name, "err", s.err, "out-of-sync", r.bm.Bytes())
}

// testTeardownDelay delays every teardown (tests only).
var testTeardownDelay atomic.Int64

// applyLimit bounds the writes the Secondary applies at once (DRBD's
// max-buffers): beyond it the data channel is not read, and TCP pushes back
// on the Primary.
func (r *Resource) applyLimit() int {
	if n := r.res.Net.MaxBuffers; n > 0 && n < maxApplyWorkers {
		return n
	}
	return maxApplyWorkers
}
