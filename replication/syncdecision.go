package replication

import (
	"fmt"
	"strings"
)

// This file is the pure core of invariant 7 (DESIGN.md): which way data
// flows when the two nodes connect, decided from the generation UUIDs alone,
// and how a split brain is resolved. Nothing here does I/O, starts goroutines
// or reads the clock; the connection code gathers a SyncInput per side, calls
// DecideSync (and ResolveSplitBrain for a split brain) and executes the result.
//
// Both nodes run the same functions on the same two inputs with the roles of
// "me" and "peer" swapped, and must reach mirrored answers (one SyncSource,
// one SyncTarget); the tests check that property over random inputs.

// uuidFlag is bit 0 of a generation UUID. DRBD sets it in the current UUID
// while the node is Primary (so it says "this node was Primary in that
// generation") and masks it out of every comparison (`& ~1ULL`). twinbd does
// the same: randomUUID keeps it clear, and DecideSync never looks at it. Only
// the discard-younger-primary / discard-older-primary policies read it, from
// the bitmap UUIDs, exactly like drbd_asb_recover_0p.
const uuidFlag uint64 = 1

func uuidVal(u uint64) uint64 { return u &^ uuidFlag }

// SyncInput is what one side knows about itself at connect time. Each side
// sends its own to the peer; both then call DecideSync(mine, peers).
type SyncInput struct {
	Gen  Generation
	Disk DiskState // the state the local disk has (or will have once attached)
	Role Role
	// CrashedPrimary: the node was Primary when it stopped without demoting
	// (bitmap.FlagCrashedPrimary); its activity-log extents are already in
	// its bitmap and must be resynced to the peer.
	CrashedPrimary bool
	Dirty          int64 // bits set in this node's bitmap (changes since the split)
	NodeID         int
	// DiscardMyData is `connect --discard-my-data`: in a split brain that no
	// after-sb policy resolved, this node volunteers as the sync target.
	DiscardMyData bool
}

// SyncKind is the outcome of the generation comparison, from the point of
// view of the node that called DecideSync.
type SyncKind int

const (
	NoSync           SyncKind = iota
	BitmapSyncSource          // I am SyncSource: send what my bitmap ORed with the peer's says
	BitmapSyncTarget          // I am SyncTarget of a bitmap-based resync
	FullSyncSource            // I am SyncSource and every block is out of sync
	FullSyncTarget            // I am SyncTarget and every block is out of sync
	SplitBrainAuto            // common ancestor (equal bitmap UUIDs): after-sb policies apply
	SplitBrainManual          // only history matches: an operator picks the victim
	Unrelated                 // nothing matches: refuse, disconnect
	SyncRefused               // a direction exists but is unsafe or contradictory: disconnect
)

var syncKindNames = [...]string{"NoSync", "BitmapSyncSource", "BitmapSyncTarget",
	"FullSyncSource", "FullSyncTarget", "SplitBrainAuto", "SplitBrainManual",
	"Unrelated", "SyncRefused"}

func (k SyncKind) String() string {
	if k < 0 || int(k) >= len(syncKindNames) {
		return fmt.Sprintf("SyncKind(%d)", int(k))
	}
	return syncKindNames[k]
}

// Mirror is the kind the peer reaches for the same connection: source and
// target swap, everything else is symmetric.
func (k SyncKind) Mirror() SyncKind {
	switch k {
	case BitmapSyncSource:
		return BitmapSyncTarget
	case BitmapSyncTarget:
		return BitmapSyncSource
	case FullSyncSource:
		return FullSyncTarget
	case FullSyncTarget:
		return FullSyncSource
	}
	return k
}

// Source reports whether I send data; Target whether I receive it.
func (k SyncKind) Source() bool { return k == BitmapSyncSource || k == FullSyncSource }
func (k SyncKind) Target() bool { return k == BitmapSyncTarget || k == FullSyncTarget }

// Decision is DecideSync's answer. Rule names the table row that fired (and
// any disk-state adjustment), for the log line.
type Decision struct {
	Kind SyncKind
	Rule string
}

// DecideSync decides the resync direction when the two nodes connect. It is
// DRBD's drbd_uuid_compare followed by the disk-state checks of
// drbd_sync_handshake (drbd_receiver.c). UUIDs are compared with bit 0
// masked; 0 means "no UUID" (a fresh disk, an empty bitmap or history slot).
// The first row that matches decides:
//
//	row  observation on connect                          result                             DRBD rule
//	 0   either disk below Inconsistent (Diskless, ...)  NoSync: nothing to sync           (no handshake)
//	 1   both current UUIDs empty (fresh)                NoSync                              10
//	 2   only one current UUID empty                     full sync from the non-empty node   20, 30
//	 3   current UUIDs equal                             NoSync (bitmaps still ORed)         40
//	     3a  one bitmap UUID set, the other's empty      bitmap sync from the side that has  34-37
//	         it (it was SyncSource and the resync-finished step was lost)
//	     3b  CrashedPrimary on either side               bitmap sync (activity log) from:    40, 41
//	         the Primary if exactly one is Primary now; SplitBrainManual if both are;
//	         else the crashed one; both crashed: the lower node-id
//	 4   my bitmap UUID equals peer's current            bitmap resync, me as source         70
//	 5   peer's bitmap UUID equals my current            bitmap resync, me as target         50
//	 6   my current UUID in the peer's history           full sync, me as target             60
//	     (and symmetric: peer's current in my history    full sync, me as source             80)
//	     4-6 seen in both directions at once (each side  SyncRefused (cannot happen:
//	     descends from the other)                        the UUIDs form a cycle)
//	 7   bitmap UUIDs equal, current UUIDs differ        SplitBrainAuto: after-sb policies   90
//	 8   neither current nor bitmap match,               SplitBrainManual                    100
//	     some history matches
//	 9   nothing matches                                 Unrelated: refuse, disconnect       -1000
//
// Then, as drbd_sync_handshake does, for every result except Unrelated and
// SyncRefused:
//
//	a  exactly one disk is Inconsistent: the other side is source; the sync is
//	   full if the rows said full sync or SplitBrainManual, bitmap otherwise
//	   (an Inconsistent disk has nothing to lose, so even a split brain ends)
//	b  the source's disk is Inconsistent: SyncRefused ("I shall become
//	   SyncSource, but I am inconsistent")
//	c  the target is Primary with Consistent or UpToDate data: SyncRefused
//	   (DRBD's rr-conflict default, disconnect: a Primary's data does not
//	   change under its users)
//
// Rows 4-6 are evaluated as one symmetric group so that DecideSync(b, a) is
// always the mirror of DecideSync(a, b); DRBD checks 50, 60, 70, 80 in that
// order, which differs only on cyclic UUIDs, where both nodes would want to
// be target. DRBD's rules 51 and 71 (undo a resync start whose sync UUID
// never arrived) depend on DRBD's resync-start UUID scheme and are not
// reproduced: such a peer falls to row 6 (a full sync) instead.
func DecideSync(me, peer SyncInput) Decision {
	// Row 0: no local data on one side means no handshake at all.
	if me.Disk < DiskInconsistent {
		return Decision{NoSync, "I am " + me.Disk.String() + ": no sync"}
	}
	if peer.Disk < DiskInconsistent {
		return Decision{NoSync, "peer is " + peer.Disk.String() + ": no sync"}
	}
	d := compareGenerations(me, peer)
	if d.Kind == Unrelated || d.Kind == SyncRefused {
		return d
	}
	// a: disk states override the UUIDs when exactly one side is Inconsistent.
	meInc, peerInc := me.Disk == DiskInconsistent, peer.Disk == DiskInconsistent
	if meInc != peerInc {
		full := d.Kind == FullSyncSource || d.Kind == FullSyncTarget || d.Kind == SplitBrainManual
		switch {
		case meInc && full:
			d = Decision{FullSyncTarget, d.Rule + "; I am Inconsistent: full sync by disk states"}
		case meInc:
			d = Decision{BitmapSyncTarget, d.Rule + "; I am Inconsistent: sync by disk states"}
		case full:
			d = Decision{FullSyncSource, d.Rule + "; peer is Inconsistent: full sync by disk states"}
		default:
			d = Decision{BitmapSyncSource, d.Rule + "; peer is Inconsistent: sync by disk states"}
		}
	}
	source, target := me, peer
	srcWho, tgtWho := "I", "peer"
	switch {
	case d.Kind.Target():
		source, target = peer, me
		srcWho, tgtWho = "peer", "I"
	case !d.Kind.Source():
		return d // NoSync or a split brain
	}
	// b: the source must have consistent data.
	if source.Disk <= DiskInconsistent {
		return Decision{SyncRefused, d.Rule + "; " + srcWho + " would be SyncSource but the disk is Inconsistent"}
	}
	// c: rr-conflict (disconnect): never resync into a Primary's live data.
	if target.Role == RolePrimary && target.Disk >= DiskConsistent {
		return Decision{SyncRefused, d.Rule + "; " + tgtWho + " would be SyncTarget but is Primary"}
	}
	return d
}

// compareGenerations is rows 1-9 of DecideSync.
func compareGenerations(me, peer SyncInput) Decision {
	my, their := me.Gen, peer.Gen
	myCur, peerCur := uuidVal(my.Current), uuidVal(their.Current)

	// Row 1: both fresh.
	if myCur == 0 && peerCur == 0 {
		return Decision{NoSync, "both current UUIDs empty (fresh)"}
	}
	// Row 2: one fresh.
	if myCur == 0 {
		return Decision{FullSyncTarget, "only my current UUID empty"}
	}
	if peerCur == 0 {
		return Decision{FullSyncSource, "only peer's current UUID empty"}
	}

	// Row 3: same generation.
	if myCur == peerCur {
		myBm, peerBm := uuidVal(my.Bitmap), uuidVal(their.Bitmap)
		// 3a: the SyncSource keeps its bitmap UUID until the resync
		// finishes; the target already dropped it. DRBD also rotates the
		// stale bitmap UUID into the history here; twinbd leaves that to
		// the end of the resync this starts.
		if myBm != 0 && peerBm == 0 {
			return Decision{BitmapSyncSource, "current UUIDs equal, only I have a bitmap UUID (was SyncSource)"}
		}
		if myBm == 0 && peerBm != 0 {
			return Decision{BitmapSyncTarget, "current UUIDs equal, only peer has a bitmap UUID (was SyncTarget)"}
		}
		// 3b: a Primary crashed while connected, so the generation did
		// not move; its activity log is in its bitmap.
		if !me.CrashedPrimary && !peer.CrashedPrimary {
			return Decision{NoSync, "current UUIDs equal"}
		}
		mePri, peerPri := me.Role == RolePrimary, peer.Role == RolePrimary
		switch {
		case mePri && peerPri:
			return Decision{SplitBrainManual, "current UUIDs equal, crashed primary, both Primary now"}
		case mePri:
			return Decision{BitmapSyncSource, "current UUIDs equal, crashed primary, I am Primary"}
		case peerPri:
			return Decision{BitmapSyncTarget, "current UUIDs equal, crashed primary, peer is Primary"}
		case me.CrashedPrimary && !peer.CrashedPrimary:
			return Decision{BitmapSyncSource, "current UUIDs equal, I crashed as Primary"}
		case !me.CrashedPrimary && peer.CrashedPrimary:
			return Decision{BitmapSyncTarget, "current UUIDs equal, peer crashed as Primary"}
		}
		t := tiebreak(me, peer)
		const rule = "current UUIDs equal, both crashed as Primary: lower node-id is source"
		switch {
		case t > 0:
			return Decision{BitmapSyncSource, rule}
		case t < 0:
			return Decision{BitmapSyncTarget, rule}
		}
		return Decision{SyncRefused, "current UUIDs equal, both crashed as Primary, equal node-ids"}
	}

	// Rows 4-6, both directions at once.
	peerBehind := uuidVal(my.Bitmap) == peerCur // row 4
	meBehind := uuidVal(their.Bitmap) == myCur  // row 5
	peerOlder := inHistory(peerCur, my)         // row 6, symmetric half
	meOlder := inHistory(myCur, their)          // row 6
	if (peerBehind || peerOlder) && (meBehind || meOlder) {
		return Decision{SyncRefused, "generations contradict: each side descends from the other"}
	}
	switch {
	case peerBehind:
		return Decision{BitmapSyncSource, "my bitmap UUID equals peer's current"}
	case meBehind:
		return Decision{BitmapSyncTarget, "peer's bitmap UUID equals my current"}
	case meOlder:
		return Decision{FullSyncTarget, "my current UUID in peer's history"}
	case peerOlder:
		return Decision{FullSyncSource, "peer's current UUID in my history"}
	}

	// Row 7: split from a common bitmap UUID.
	if b := uuidVal(my.Bitmap); b != 0 && b == uuidVal(their.Bitmap) {
		return Decision{SplitBrainAuto, "bitmap UUIDs equal, current UUIDs differ: split brain"}
	}
	// Row 8: only the histories share an ancestor. DRBD also counts two
	// empty history slots as a match (a quirk that turns two never-synced
	// disks into a split brain); twinbd treats 0 as "no UUID" throughout.
	for _, h := range my.History {
		if h := uuidVal(h); h != 0 && inHistory(h, their) {
			return Decision{SplitBrainManual, "history UUIDs match: split brain, manual recovery only"}
		}
	}
	// Row 9.
	return Decision{Unrelated, "no UUID matches: unrelated data"}
}

func inHistory(u uint64, g Generation) bool {
	for _, h := range g.History {
		if u != 0 && uuidVal(h) == u {
			return true
		}
	}
	return false
}

// tiebreak stands in for DRBD's RESOLVE_CONFLICTS connection flag (which
// DRBD 8 sets on whichever node accepted the meta socket): the higher node-id
// holds it and loses ties, so the lower node-id is the source. +1 I win, -1
// the peer wins, 0 no decision (equal node-ids, a configuration error).
func tiebreak(me, peer SyncInput) int {
	switch {
	case me.NodeID < peer.NodeID:
		return 1
	case me.NodeID > peer.NodeID:
		return -1
	}
	return 0
}

// SBPolicies are the after-sb-* settings, with the config's spellings
// (config.Net.AfterSB0Pri, AfterSB1Pri, AfterSB2Pri). "" means disconnect.
type SBPolicies struct {
	ZeroPri, OnePri, TwoPri string
}

// SBOutcome is how a split brain ends, from my side.
type SBOutcome int

const (
	// SBDisconnect: nobody was picked; go StandAlone and wait for an operator.
	SBDisconnect SBOutcome = iota
	// SBDiscardMine: I am the victim: I become SyncTarget of a bitmap
	// resync that rolls my changes since the split back.
	SBDiscardMine
	// SBDiscardPeer: the peer is the victim: I become SyncSource.
	SBDiscardPeer
	// SBCallPriLost: I am the victim and I am Primary
	// (call-pri-lost-after-sb). Try to demote; if that works, continue as
	// SBDiscardMine. If it fails (device in use), run the pri-lost-after-sb
	// handler and disconnect. DRBD's drbd_asb_recover_1p/2p.
	SBCallPriLost
)

func (o SBOutcome) String() string {
	switch o {
	case SBDisconnect:
		return "disconnect"
	case SBDiscardMine:
		return "discard-mine"
	case SBDiscardPeer:
		return "discard-peer"
	case SBCallPriLost:
		return "call-pri-lost-after-sb"
	}
	return fmt.Sprintf("SBOutcome(%d)", int(o))
}

// ResolveSplitBrain picks the victim of a split brain, or nobody. It calls
// DecideSync itself: after-sb policies apply only to SplitBrainAuto (a
// common bitmap UUID); any other kind returns SBDisconnect. myName and
// peerName are the nodes' `on` names, for discard-node-NAME.
//
// Which policy applies depends on the roles now: after-sb-0pri when neither
// node is Primary, after-sb-1pri when exactly one is, after-sb-2pri when both
// are (drbd_sync_handshake).
//
// after-sb-0pri (drbd_asb_recover_0p):
//
//	disconnect               nobody
//	discard-younger-primary  the node that was not Primary before the split
//	                         loses. Known from bit 0 of the bitmap UUIDs (the
//	                         old current UUID, flagged while Primary). If both
//	                         bits are equal: disconnect. (DRBD falls through to
//	                         discard-least-changes; twinbd does not pick a
//	                         victim by a rule the operator did not configure.)
//	                         The bit is set by a Primary that loses its peer
//	                         and starts a new generation (fenced, quorum.go);
//	                         a Secondary promoted after the split leaves its
//	                         old generation with the bit clear.
//	discard-older-primary    the node that was Primary before the split loses
//	discard-zero-changes     the node with no changes (Dirty == 0) loses; both
//	                         without changes: the higher node-id loses (DRBD's
//	                         RESOLVE_CONFLICTS tie-break); both with changes:
//	                         disconnect
//	discard-least-changes    the node with fewer changes loses; a tie: the
//	                         higher node-id loses
//	discard-node-NAME        node NAME loses (disconnect if NAME is neither)
//
// after-sb-1pri (drbd_asb_recover_1p):
//
//	disconnect               nobody
//	consensus                the after-sb-0pri victim, if it is the Secondary;
//	                         otherwise disconnect
//	violently-as0p           the after-sb-0pri victim, even the Primary
//	discard-secondary        the Secondary loses
//	call-pri-lost-after-sb   the after-sb-0pri victim; if that is the Primary,
//	                         it gets SBCallPriLost
//
// after-sb-2pri (drbd_asb_recover_2p):
//
//	disconnect               nobody
//	violently-as0p           the after-sb-0pri victim
//	call-pri-lost-after-sb   the after-sb-0pri victim gets SBCallPriLost
//
// violently-as0p can return SBDiscardMine on a Primary: the caller must demote
// it before the resync (DRBD then also consults rr-conflict, which twinbd
// does not have; DecideSync applies its default, disconnect, to plain syncs).
//
// A policy value not valid for its slot (DRBD: "Configuration error") or
// unknown disconnects. When no policy picked a victim, or DecideSync said
// SplitBrainManual, `connect --discard-my-data` decides (DRBD order: a policy
// that picks a victim wins over the flag): the side with DiscardMyData loses;
// both set, or the volunteer is Primary (it must demote first), disconnect.
func ResolveSplitBrain(me, peer SyncInput, myName, peerName string, p SBPolicies) (SBOutcome, string) {
	d := DecideSync(me, peer)
	var why string
	switch d.Kind {
	case SplitBrainAuto:
		o, reason := afterSB(me, peer, myName, peerName, p)
		if o != SBDisconnect {
			return o, reason
		}
		why = reason
	case SplitBrainManual:
		why = d.Rule
	default:
		return SBDisconnect, "not a split brain: " + d.Kind.String() + " (" + d.Rule + ")"
	}
	// Manual recovery: connect --discard-my-data.
	switch {
	case me.DiscardMyData && peer.DiscardMyData:
		return SBDisconnect, why + "; both nodes asked to discard their data"
	case me.DiscardMyData && me.Role == RolePrimary:
		return SBDisconnect, why + "; discard-my-data on this node, but it is Primary: demote it first"
	case peer.DiscardMyData && peer.Role == RolePrimary:
		return SBDisconnect, why + "; discard-my-data on the peer, but it is Primary: demote it first"
	case me.DiscardMyData:
		return SBDiscardMine, why + "; discard-my-data on this node"
	case peer.DiscardMyData:
		return SBDiscardPeer, why + "; discard-my-data on the peer"
	}
	return SBDisconnect, why
}

// afterSB applies the after-sb policy for the number of Primaries.
func afterSB(me, peer SyncInput, myName, peerName string, p SBPolicies) (SBOutcome, string) {
	mePri, peerPri := me.Role == RolePrimary, peer.Role == RolePrimary
	switch {
	case !mePri && !peerPri:
		return outcome(recover0p(me, peer, myName, peerName, p.ZeroPri))
	case mePri && peerPri:
		return recover2p(me, peer, myName, peerName, p)
	}
	return recover1p(me, peer, myName, peerName, p)
}

func outcome(hg int, why string) (SBOutcome, string) {
	switch {
	case hg > 0:
		return SBDiscardPeer, why
	case hg < 0:
		return SBDiscardMine, why
	}
	return SBDisconnect, why
}

func policyOrDefault(s string) string {
	if s == "" {
		return "disconnect"
	}
	return s
}

// recover0p is drbd_asb_recover_0p: +1 the peer loses, -1 I lose, 0 nobody.
func recover0p(me, peer SyncInput, myName, peerName, pol string) (int, string) {
	pol = policyOrDefault(pol)
	pre := "after-sb-0pri " + pol + ": "
	tie := func(what string) (int, string) {
		switch tiebreak(me, peer) {
		case 1:
			return 1, pre + what + ", peer has the higher node-id and loses"
		case -1:
			return -1, pre + what + ", I have the higher node-id and lose"
		}
		return 0, pre + what + " and the node-ids are equal"
	}
	switch pol {
	case "disconnect":
		return 0, pre + "no automatic recovery"
	case "discard-younger-primary", "discard-older-primary":
		// Bit 0 of the bitmap UUID: this node was Primary in the
		// generation before the split, i.e. it is the older Primary.
		mineOld, peerOld := me.Gen.Bitmap&uuidFlag != 0, peer.Gen.Bitmap&uuidFlag != 0
		if mineOld == peerOld {
			return 0, pre + "cannot tell which node was Primary first"
		}
		younger := pol == "discard-younger-primary"
		if mineOld == younger { // I was Primary first and the younger loses, or vice versa
			return 1, pre + "peer loses"
		}
		return -1, pre + "I lose"
	case "discard-zero-changes":
		switch {
		case me.Dirty == 0 && peer.Dirty == 0:
			return tie("neither node has changes")
		case peer.Dirty == 0:
			return 1, pre + "peer has no changes"
		case me.Dirty == 0:
			return -1, pre + "I have no changes"
		}
		return 0, fmt.Sprintf("%sboth nodes have changes (%d here, %d on peer)", pre, me.Dirty, peer.Dirty)
	case "discard-least-changes":
		switch {
		case me.Dirty < peer.Dirty:
			return -1, fmt.Sprintf("%sI have fewer changes (%d < %d)", pre, me.Dirty, peer.Dirty)
		case me.Dirty > peer.Dirty:
			return 1, fmt.Sprintf("%speer has fewer changes (%d < %d)", pre, peer.Dirty, me.Dirty)
		}
		return tie(fmt.Sprintf("equal changes (%d)", me.Dirty))
	}
	if name, ok := strings.CutPrefix(pol, "discard-node-"); ok {
		switch {
		case myName == peerName:
			return 0, pre + "both nodes have the same name"
		case name == myName:
			return -1, pre + "this node loses"
		case name == peerName:
			return 1, pre + "peer loses"
		}
		return 0, pre + "names neither node"
	}
	return 0, pre + "not valid for after-sb-0pri"
}

// recover1p is drbd_asb_recover_1p: exactly one node is Primary.
func recover1p(me, peer SyncInput, myName, peerName string, p SBPolicies) (SBOutcome, string) {
	pol := policyOrDefault(p.OnePri)
	pre := "after-sb-1pri " + pol + ": "
	mePri := me.Role == RolePrimary
	switch pol {
	case "disconnect":
		return SBDisconnect, pre + "no automatic recovery"
	case "consensus":
		hg, why := recover0p(me, peer, myName, peerName, p.ZeroPri)
		if (hg < 0 && !mePri) || (hg > 0 && mePri) {
			return outcome(hg, pre+why)
		}
		return SBDisconnect, pre + why + "; no consensus: the victim would be the Primary or nobody"
	case "violently-as0p":
		hg, why := recover0p(me, peer, myName, peerName, p.ZeroPri)
		return outcome(hg, pre+why)
	case "discard-secondary":
		if mePri {
			return SBDiscardPeer, pre + "peer is Secondary"
		}
		return SBDiscardMine, pre + "I am Secondary"
	case "call-pri-lost-after-sb":
		hg, why := recover0p(me, peer, myName, peerName, p.ZeroPri)
		if hg < 0 && mePri {
			return SBCallPriLost, pre + why + "; I am Primary"
		}
		return outcome(hg, pre+why)
	}
	return SBDisconnect, pre + "not valid for after-sb-1pri"
}

// recover2p is drbd_asb_recover_2p: both nodes are Primary.
func recover2p(me, peer SyncInput, myName, peerName string, p SBPolicies) (SBOutcome, string) {
	pol := policyOrDefault(p.TwoPri)
	pre := "after-sb-2pri " + pol + ": "
	switch pol {
	case "disconnect":
		return SBDisconnect, pre + "no automatic recovery"
	case "violently-as0p":
		hg, why := recover0p(me, peer, myName, peerName, p.ZeroPri)
		return outcome(hg, pre+why)
	case "call-pri-lost-after-sb":
		hg, why := recover0p(me, peer, myName, peerName, p.ZeroPri)
		if hg < 0 {
			return SBCallPriLost, pre + why + "; I am Primary"
		}
		return outcome(hg, pre+why)
	}
	return SBDisconnect, pre + "not valid for after-sb-2pri"
}
