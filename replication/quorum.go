package replication

// Quorum, fencing and automatic promotion (invariants 5 and 6).
//
// Quorum (options { quorum majority; }): a node has quorum while it holds a
// lease from its peer or from the witness. A lease is taken at the moment
// a request is sent (a Ping to the peer, a renew to the witness) and lasts
// T = ping-int + ping-timeout from then, once the answer has arrived. The
// other side treats it as alive for T + margin from when it received the
// request, which is later. So the holder's lease always ends first.
//
// A Primary without quorum does not answer I/O (on-no-quorum suspend-io:
// requests wait until quorum returns or the node demotes; io-error: they
// fail with EIO). The check happens just before each answer, so the bound
// is exact: no answer leaves a Primary more than T after the last request
// its peer or the witness answered.
//
// The other side: a Secondary that lost its Primary asks the witness for
// the lease only after T + margin has passed since the last Ping it
// received from the Primary (every Ping the Primary's lease counts from
// was received no later than that), and the witness grants only when the
// Primary's witness lease has expired in its own view (T + margin after the
// last renew it received). So by the time the Secondary is granted, the
// old Primary's own quorum check already fails: two nodes never answer I/O
// in the same instant.
//
// Fencing (invariant 6): a Primary that loses its peer answers no write the
// peer does not have until the peer is recorded Outdated where a later
// promotion sees it: at the witness (when one is configured) and by the
// fence-peer handler (fencing resource-and-stonith). Until then such writes
// wait (status: suspended:fencing); `resume-io` lets an operator declare
// the peer fenced. The new data generation starts only when fencing is
// done, and the peer link does not reconnect before, so a peer that comes
// back meanwhile is found behind by the bitmap.
//
// Automatic promotion (options { auto-failover yes; }): a Secondary whose
// Primary peer vanished promotes itself when its data was UpToDate, it is
// not Outdated, fence-peer (if fencing is configured) succeeded and the
// witness (if configured) granted the primary lease. An Outdated or
// Inconsistent node never promotes itself.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twinbd/twinbd/bitmap"
	"github.com/twinbd/twinbd/failover"
)

// leaseMargin is how much longer the other side of a lease waits than the
// holder trusts it.
const leaseMargin = failover.WitnessMargin

// ErrNoQuorum: I/O refused (on-no-quorum io-error) or promotion refused
// because this node has no quorum.
var ErrNoQuorum = errors.New("no quorum")

// foState is the failover state of a resource.
type foState struct {
	epoch time.Time // monotonic base of the nanosecond stamps below

	peerLease atomic.Int64 // quorum through the peer until (ns since epoch)
	witLease  atomic.Int64 // quorum through the witness until
	lastPing  atomic.Int64 // when the last Ping from the peer arrived

	pingMu   sync.Mutex
	pingSent [8]int64 // send time of ping seq%8

	fencing      atomic.Bool                   // Primary: unreplicated writes wait (peer loss not yet handled, or peer not yet fenced)
	fenceRunning atomic.Bool                   // a fencePeer goroutine runs
	failIO       atomic.Bool                   // demoting: waiting I/O fails
	resumed      atomic.Pointer[chan struct{}] // closed and replaced to wake awaitIO

	wc           *failover.WitnessClient
	witnessUp    atomic.Bool // the last witness request got an answer
	outdatedHere atomic.Bool // the witness says this node is Outdated

	renewNow chan struct{} // poked when something the witness records changed

	// Set by teardown: the peer was Primary when the link went down.
	peerWasPrimary atomic.Bool
	// Set by the handshake: the peer stopped as Primary without demoting
	// and is back as Secondary.
	peerCrashed atomic.Bool
	// needUnfence: fence-peer fenced the peer; unfence-peer runs once the
	// peer is UpToDate again.
	needUnfence atomic.Bool
	// startFailedAt: when this node's start list last failed (0: never);
	// a handover from the peer within handoverQuiet is declined, so two
	// nodes whose services both fail do not hand the role back and forth.
	startFailedAt atomic.Int64
}

// stamp is now in ns since the failover epoch (monotonic).
func (r *Resource) stamp() int64 { return int64(time.Since(r.fo.epoch)) }

// leaseLen is T: ping-int + ping-timeout.
func (r *Resource) leaseLen() time.Duration {
	t := r.res.Net.PingInt + r.res.Net.PingTimeout
	if t <= 0 {
		t = 1500 * time.Millisecond
	}
	return t
}

// renewEvery is how often leases are renewed (pings, witness renews).
func (r *Resource) renewEvery() time.Duration { return r.leaseLen() / 3 }

func (r *Resource) quorumEnforced() bool { return r.res.Options.Quorum == "majority" && r.peer != nil }

// haveQuorum reports whether this node holds a lease now.
func (r *Resource) haveQuorum() bool {
	if !r.quorumEnforced() {
		return true
	}
	now := r.stamp()
	return now < r.fo.peerLease.Load() || now < r.fo.witLease.Load()
}

// fenceRequired reports whether a Primary that loses its peer must wait
// for the peer to be fenced before answering writes it does not have.
func (r *Resource) fenceRequired() bool {
	if r.peer == nil {
		return false
	}
	return r.fo.wc != nil || (r.res.Net.Fencing == "resource-and-stonith" && r.res.Handlers.FencePeer != "" && r.fencePeerHook != nil)
}

// suspended is why I/O waits ("" when it does not): fencing or quorum.
func (r *Resource) suspended() string {
	if !r.writable.Load() {
		return ""
	}
	if !r.haveQuorum() && r.res.Options.OnNoQuorum != "io-error" {
		return "quorum"
	}
	if r.fo.fencing.Load() {
		return "fencing"
	}
	if r.detached.Load() && r.res.Disk.OnNoDataAccessible == "suspend-io" && !r.peerUpToDate() {
		return "no-data" // Diskless without an UpToDate peer (disk.go)
	}
	return ""
}

// pingSent records when ping seq left (for the peer lease).
func (r *Resource) pingSent(seq uint64) {
	r.fo.pingMu.Lock()
	r.fo.pingSent[seq%8] = r.stamp()
	r.fo.pingMu.Unlock()
}

// pingAcked extends the peer lease from the send time of ping seq.
func (r *Resource) pingAcked(seq uint64) {
	r.fo.pingMu.Lock()
	sent := r.fo.pingSent[seq%8]
	r.fo.pingMu.Unlock()
	if sent == 0 {
		return
	}
	until := sent + int64(r.leaseLen())
	for {
		old := r.fo.peerLease.Load()
		if until <= old || r.fo.peerLease.CompareAndSwap(old, until) {
			return
		}
	}
}

// awaitIO is called before an answer leaves this node. unreplicated: the
// answer is for a write the peer may not have. It returns nil when the
// answer may go, or an error (EIO) when the request must fail.
func (r *Resource) awaitIO(unreplicated bool) error {
	if r.peer == nil {
		return nil
	}
	for {
		if r.fo.failIO.Load() || !r.writable.Load() {
			return fmt.Errorf("%w: %s is no longer Primary", ErrNotPrimary, r.res.Name)
		}
		q := r.haveQuorum()
		fencing := unreplicated && r.fo.fencing.Load()
		if q && !fencing {
			return nil
		}
		if !q && r.res.Options.OnNoQuorum == "io-error" {
			return fmt.Errorf("%w: %s lost quorum (on-no-quorum io-error)", ErrNoQuorum, r.res.Name)
		}
		select {
		case <-*r.fo.resumed.Load():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// startFencing marks unreplicated writes as waiting and fences the peer in
// the background. witnessDone: the witness already outdated the peer (a
// granted promotion); handlerDone: fence-peer already succeeded (automatic
// promotion). Called with the session gone, before any waiting write is
// answered.
func (r *Resource) startFencing(witnessDone, handlerDone bool) {
	needHandler := r.res.Net.Fencing == "resource-and-stonith" && r.res.Handlers.FencePeer != "" && r.fencePeerHook != nil
	if (witnessDone || r.fo.wc == nil) && (handlerDone || !needHandler) {
		return
	}
	r.fo.fencing.Store(true) // session.fail may have armed it already
	if !r.fo.fenceRunning.CompareAndSwap(false, true) {
		return
	}
	r.log.Warn("peer lost while Primary: writes the peer lacks wait until it is fenced", "peer", r.peer.Name)
	go func() {
		defer r.fo.fenceRunning.Store(false)
		r.fencePeer(witnessDone, handlerDone)
	}()
}

// fencePeer records the peer Outdated at the witness and runs the
// fence-peer handler, as configured; then starts the new data generation
// and lets waiting writes go.
func (r *Resource) fencePeer(witnessDone, handlerDone bool) {
	ctx := context.Background()
	if r.fo.wc != nil && !witnessDone {
		var last string
		for r.fo.fencing.Load() && r.writable.Load() {
			rep, err := r.fo.wc.Call(ctx, failover.WitnessRequest{Op: failover.OpOutdate, Peer: r.peer.NodeID, LeaseMS: r.leaseLen().Milliseconds()})
			if err == nil && rep.OK {
				r.log.Warn("peer recorded Outdated at the witness", "peer", r.peer.Name)
				break
			}
			if err == nil && (rep.Outdated || rep.Primary == r.peer.NodeID) {
				// The peer was promoted: this node must not write on.
				r.lostPrimary("the witness refused to outdate the peer: " + rep.Reason)
				return
			}
			msg := fmt.Sprint(err)
			if err == nil {
				msg = rep.Reason
			}
			if msg != last {
				r.log.Warn("cannot outdate the peer at the witness yet; writes wait", "err", msg)
				last = msg
			}
			select {
			case <-*r.fo.resumed.Load():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	if !r.fo.fencing.Load() { // resume-io or demotion meanwhile
		return
	}
	if !handlerDone && r.res.Net.Fencing == "resource-and-stonith" && r.res.Handlers.FencePeer != "" && r.fencePeerHook != nil {
		code, err := r.fencePeerHook(ctx, r.res.Handlers.FencePeer)
		out := failover.InterpretFencePeer(code)
		switch {
		case err == nil && out.PeerFenced():
			r.log.Warn("fence-peer: peer fenced", "outcome", out.String())
			r.fo.needUnfence.Store(true)
		case err == nil && out == failover.FencePeerPrimary:
			r.lostPrimary("fence-peer says the peer is Primary")
			return
		default:
			r.log.Error("fence-peer failed: I/O stays frozen until `twinbd resume-io` (fencing resource-and-stonith)",
				"resource", r.res.Name, "exit", code, "err", err)
			return
		}
	}
	r.fenced()
}

// fenced ends a fencing episode: new data generation, writes go on.
//
// The generation left behind, now the bitmap UUID, is one in which this
// node was Primary, so it gets bit 0 (uuidFlag), as DRBD's current UUID
// carries it while Primary: discard-younger-primary and
// discard-older-primary read it after a split brain. A Secondary promoted
// without its peer starts its generation in Primary (resource.go) with the
// bit clear: it was not Primary in the generation it leaves.
func (r *Resource) fenced() {
	if r.b().meta.Superblock().Bitmap == 0 {
		if err := r.b().meta.Update(func(sb *bitmap.Superblock) {
			g := NewCurrentUUID(Generation{Current: sb.Current, Bitmap: sb.Bitmap, History: sb.History}, randomUUID())
			g.Bitmap |= uuidFlag
			sb.Current, sb.Bitmap, sb.History = g.Current, g.Bitmap, g.History
		}); err != nil {
			r.log.Error("new current UUID after losing the peer", "err", err)
			return // writes keep waiting: the generation must move first
		}
	}
	r.fo.fencing.Store(false)
	r.wakeIO()
}

// wakeIO wakes requests waiting in awaitIO.
func (r *Resource) wakeIO() {
	ch := make(chan struct{})
	close(*r.fo.resumed.Swap(&ch))
}

// ResumeIO is `resume-io`: the operator declares the lost peer fenced
// (outdated, or dead), and writes waiting for fencing go on. It does not
// override lost quorum: that returns by itself, or the node demotes.
func (r *Resource) ResumeIO() error {
	if !r.writable.Load() {
		return fmt.Errorf("%w: resume-io applies to a Primary", ErrNotPrimary)
	}
	if !r.fo.fencing.Load() {
		if !r.haveQuorum() {
			return fmt.Errorf("%w: I/O is suspended for lack of quorum, which resume-io cannot override: bring the peer or the witness back, or demote (twinbd secondary --force %s)", ErrNoQuorum, r.res.Name)
		}
		return nil
	}
	r.log.Warn("resume-io: the operator declared the peer fenced", "peer", r.peer.Name)
	r.fenced()
	if !r.haveQuorum() {
		return fmt.Errorf("%w: the peer is now considered fenced, but I/O stays suspended for lack of quorum, which resume-io cannot override: bring the peer or the witness back, or demote (twinbd secondary --force %s)", ErrNoQuorum, r.res.Name)
	}
	return nil
}

// lostPrimary demotes a Primary that learned its peer took over: waiting
// I/O fails, services stop, the disk is marked Outdated.
func (r *Resource) lostPrimary(why string) {
	r.log.Error("another node holds the primary role: demoting and marking this disk Outdated", "why", why)
	r.fo.failIO.Store(true)
	r.fo.fencing.Store(false)
	r.wakeIO()
	go func() {
		if err := r.demote(true, false); err != nil {
			r.log.Error("demotion after losing the primary role", "err", err)
		}
		r.markOutdated()
	}()
}

// markOutdated records this node's data as Outdated (the witness says so).
func (r *Resource) markOutdated() {
	r.mu.Lock()
	if r.role == RolePrimary || r.disk == DiskOutdated || r.disk == DiskInconsistent || r.sess.Load() != nil {
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	if err := r.b().meta.Update(func(sb *bitmap.Superblock) { sb.Flags |= bitmap.FlagOutdated }); err != nil {
		r.log.Error("record Outdated", "err", err)
		return
	}
	r.setDisk(DiskOutdated)
	r.log.Warn("disk marked Outdated: the peer has newer data")
}

// runWitness renews this node's state at the witness every T/3 and keeps
// the witness lease.
func (r *Resource) runWitness(ctx context.Context) {
	t := time.NewTicker(r.renewEvery())
	defer t.Stop()
	var lastErr string
	for {
		r.renewWitness(ctx, &lastErr)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.fo.renewNow:
		}
	}
}

// pokeWitness renews at the witness now (role, disk or peer state
// changed): a peer that became UpToDate stops being Outdated there at once.
func (r *Resource) pokeWitness() {
	select {
	case r.fo.renewNow <- struct{}{}:
	default:
	}
}

func (r *Resource) renewWitness(ctx context.Context, lastErr *string) {
	r.mu.Lock()
	role, disk := r.role, r.disk
	peerUp := r.sess.Load() != nil && r.link.peerDisk == DiskUpToDate && r.link.conn == ConnConnected
	r.mu.Unlock()
	sent := r.stamp()
	ctx, cancel := context.WithTimeout(ctx, r.renewEvery())
	defer cancel()
	rep, err := r.fo.wc.Call(ctx, failover.WitnessRequest{
		Op: failover.OpRenew, Peer: r.peer.NodeID, Role: role.String(), Disk: disk.String(),
		PeerUp: peerUp, LeaseMS: r.leaseLen().Milliseconds(),
	})
	if err != nil {
		r.fo.witnessUp.Store(false)
		if e := err.Error(); e != *lastErr {
			r.log.Warn("witness unreachable", "witness", r.res.Witness, "err", err)
			*lastErr = e
		}
		return
	}
	if *lastErr != "" || !r.fo.witnessUp.Load() {
		r.log.Info("witness connected", "witness", r.res.Witness)
		*lastErr = ""
	}
	r.fo.witnessUp.Store(true)
	r.fo.outdatedHere.Store(rep.Outdated)
	if rep.OK && !rep.Outdated {
		until := sent + int64(r.leaseLen())
		if old := r.fo.witLease.Load(); until > old {
			r.fo.witLease.Store(until)
		}
		return
	}
	if role == RolePrimary && (rep.Outdated || (rep.Primary >= 0 && rep.Primary != r.host.NodeID)) && !peerUp {
		r.lostPrimary(rep.Reason)
		return
	}
	if rep.Outdated && role == RoleSecondary {
		r.markOutdated()
	}
}

// askWitnessPromote asks the witness for the primary lease. It first waits
// until the peer's lease on this node's Pings has certainly expired.
func (r *Resource) askWitnessPromote(ctx context.Context) error {
	if wait := time.Duration(r.fo.lastPing.Load() + int64(r.leaseLen()+leaseMargin) - r.stamp()); wait > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	sent := r.stamp()
	rep, err := r.fo.wc.Call(ctx, failover.WitnessRequest{Op: failover.OpPromote, Peer: r.peer.NodeID, LeaseMS: r.leaseLen().Milliseconds()})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoQuorum, err)
	}
	r.fo.outdatedHere.Store(rep.Outdated)
	if !rep.OK {
		if rep.Outdated {
			r.markOutdated()
		}
		return fmt.Errorf("%w: the witness refused: %s", ErrNoQuorum, rep.Reason)
	}
	r.fo.witLease.Store(sent + int64(r.leaseLen()))
	return nil
}

// releaseWitness gives the primary lease up after a clean demotion, so the
// peer can be granted at once.
func (r *Resource) releaseWitness() {
	if r.fo.wc == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r.fo.wc.Call(ctx, failover.WitnessRequest{Op: failover.OpRelease, Peer: r.peer.NodeID, LeaseMS: r.leaseLen().Milliseconds()})
	r.fo.witLease.Store(0)
}

// runAutoFailover promotes this Secondary when its Primary peer is gone
// (options { auto-failover yes; }).
func (r *Resource) runAutoFailover(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var lastMsg string
	var lastAt time.Time
	fenced := false    // fence-peer succeeded in this episode
	announced := false // "promoting" logged in this episode
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r.sess.Load() != nil {
			fenced = false
			r.takeOverFromRestartedPrimary(ctx)
			continue
		}
		if !r.fo.peerWasPrimary.Load() {
			announced = false
			continue
		}
		stale := r.testOnlyStale // tests only: promote stale data too (Options.TestOnlyPromoteStale)
		r.mu.Lock()
		ok := r.role == RoleSecondary && !r.down && (stale || r.disk == DiskConsistent || r.disk == DiskUpToDate)
		r.mu.Unlock()
		if !ok || (r.fo.outdatedHere.Load() && !stale) {
			continue
		}
		if time.Duration(r.stamp()-r.fo.lastPing.Load()) < r.leaseLen()+leaseMargin {
			continue
		}
		note := func(msg string) {
			if msg != lastMsg || time.Since(lastAt) > 10*time.Second {
				r.log.Warn("automatic promotion: not yet", "why", msg)
				lastMsg, lastAt = msg, time.Now()
			}
		}
		if !fenced && r.res.Net.Fencing != "dont-care" && r.res.Handlers.FencePeer != "" && r.fencePeerHook != nil {
			code, err := r.fencePeerHook(ctx, r.res.Handlers.FencePeer)
			out := failover.InterpretFencePeer(code)
			switch {
			case err == nil && out.PeerFenced():
				fenced = true
				r.fo.needUnfence.Store(true)
			case err == nil && out == failover.FencePeerPrimary:
				r.log.Warn("fence-peer says the peer is still Primary: not promoting; marking this disk Outdated")
				r.fo.peerWasPrimary.Store(false)
				r.markOutdated()
				continue
			default:
				note(fmt.Sprintf("fence-peer failed (exit %d, %v)", code, err))
				time.Sleep(2 * time.Second)
				continue
			}
		}
		if !announced {
			r.log.Warn("Primary peer gone: promoting", "peer", r.peer.Name)
			announced = true
		}
		start := time.Now()
		if err := r.promote(ctx, stale, true); err != nil {
			note(err.Error())
			continue
		}
		announced = false
		r.fo.peerWasPrimary.Store(false)
		r.log.Warn("automatic promotion done", "took", time.Since(start))
	}
}

// takeOverFromRestartedPrimary covers a Primary that was killed and came
// back (a service manager restarts it) before this node's promotion: it
// is Secondary, connected, and says it crashed as Primary. Its services are
// gone, so this node promotes once the resync settled and it is UpToDate;
// connected to a Secondary peer, no witness grant is needed. It reports
// whether it promoted.
func (r *Resource) takeOverFromRestartedPrimary(ctx context.Context) bool {
	r.mu.Lock()
	peerRole, repl, disk, role := r.link.peerRole, r.link.repl, r.disk, r.role
	r.mu.Unlock()
	if peerRole == RolePrimary {
		r.fo.peerWasPrimary.Store(false) // the Primary is back (a link blip)
		return false
	}
	if !r.fo.peerWasPrimary.Load() || !r.fo.peerCrashed.Load() || role != RoleSecondary ||
		repl != ReplEstablished || disk != DiskUpToDate || peerRole != RoleSecondary {
		return false
	}
	r.log.Warn("the Primary peer crashed and came back as Secondary: taking over", "peer", r.peer.Name)
	if err := r.promote(ctx, false, true); err != nil {
		r.log.Warn("automatic promotion: not yet", "why", err.Error())
		return false
	}
	r.fo.peerWasPrimary.Store(false)
	r.fo.peerCrashed.Store(false)
	return true
}

// handoverQuiet is how long after its own start list failed a node
// declines a handover from its peer.
const handoverQuiet = time.Minute

// handover is the peer's request to take over after its start list
// failed (StateHandover): with auto-failover, a connected UpToDate
// Secondary promotes.
func (r *Resource) handover() {
	if !r.res.Options.AutoFailover {
		r.log.Warn("the peer's start list failed and it demoted; auto-failover is off: promote a node by hand", "peer", r.peer.Name)
		return
	}
	if at := r.fo.startFailedAt.Load(); at != 0 && time.Duration(r.stamp()-at) < handoverQuiet {
		r.log.Error("the peer's start list failed too: not taking the role back; fix the services, then promote by hand", "peer", r.peer.Name)
		return
	}
	r.log.Warn("the peer's start list failed and it handed over: promoting", "peer", r.peer.Name)
	go func() {
		if err := r.promote(context.Background(), false, false); err != nil {
			r.log.Error("taking over from the peer failed", "err", err)
		}
	}()
}

// runQuorumWatch logs quorum changes of a Primary and runs the
// `quorum-lost` handler when it loses quorum (quorum is a lease: it ends
// by time, so it is sampled every 100 ms).
func (r *Resource) runQuorumWatch(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	had := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !r.writable.Load() {
			had = true
			continue
		}
		q := r.haveQuorum()
		switch {
		case had && !q:
			r.log.Error("quorum lost: I/O is "+map[bool]string{true: "failing (on-no-quorum io-error)", false: "suspended (on-no-quorum suspend-io)"}[r.res.Options.OnNoQuorum == "io-error"],
				"peer-connected", r.sess.Load() != nil, "witness", r.fo.witnessUp.Load())
			r.runHandler("quorum-lost", r.res.Handlers.QuorumLost)
		case !had && q:
			r.log.Warn("quorum regained: I/O goes on")
		}
		had = q
	}
}

// forceWitness tells the witness about a forced promotion (best effort:
// an unreachable witness does not stop `primary --force`).
func (r *Resource) forceWitness() {
	if r.fo.wc == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	sent := r.stamp()
	rep, err := r.fo.wc.Call(ctx, failover.WitnessRequest{Op: failover.OpPromote, Force: true, Peer: r.peer.NodeID, LeaseMS: r.leaseLen().Milliseconds()})
	if err != nil || !rep.OK {
		r.log.Warn("forced promotion: the witness was not told (it may still record this node Outdated and demote it when it answers again)", "err", err)
		return
	}
	r.fo.outdatedHere.Store(false)
	r.fo.witLease.Store(sent + int64(r.leaseLen()))
}
