package replication

import (
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// gen builds a Generation: current, bitmap, history[0], history[1].
func gen(cur, bm, h0, h1 uint64) Generation {
	return Generation{Current: cur, Bitmap: bm, History: [2]uint64{h0, h1}}
}

// side is an UpToDate Secondary with node-id 0 (me) unless changed.
func side(g Generation) SyncInput {
	return SyncInput{Gen: g, Disk: DiskUpToDate, Role: RoleSecondary}
}

func (s SyncInput) disk(d DiskState) SyncInput { s.Disk = d; return s }
func (s SyncInput) primary() SyncInput         { s.Role = RolePrimary; return s }
func (s SyncInput) crashed() SyncInput         { s.CrashedPrimary = true; return s }
func (s SyncInput) node(id int) SyncInput      { s.NodeID = id; return s }
func (s SyncInput) dirty(n int64) SyncInput    { s.Dirty = n; return s }
func (s SyncInput) discard() SyncInput         { s.DiscardMyData = true; return s }

// TestDecideSync has one row per row of DecideSync's table (in its order),
// then precedence, bit-0 masking, and disk-state cases. Every row is also
// checked from the peer's side, which must get the mirrored kind.
func TestDecideSync(t *testing.T) {
	const A, B, C, D, E, F = 0x10, 0x20, 0x30, 0x40, 0x50, 0x60
	tests := []struct {
		name     string
		me, peer SyncInput
		want     SyncKind
		rule     string // the Rule prefix expected, "" to skip
	}{
		// Row 0.
		{"0 I am Diskless", side(gen(A, 0, 0, 0)).disk(DiskDiskless), side(gen(B, 0, 0, 0)), NoSync, "I am Diskless"},
		{"0 peer is Diskless", side(gen(A, 0, 0, 0)), side(gen(0, 0, 0, 0)).disk(DiskDiskless), NoSync, "peer is Diskless"},
		{"0 peer is Failed", side(gen(A, 0, 0, 0)), side(gen(B, 0, 0, 0)).disk(DiskFailed), NoSync, "peer is Failed"},
		// Row 1.
		{"1 both current UUIDs empty", side(gen(0, 0, 0, 0)).disk(DiskInconsistent), side(gen(0, 0, 0, 0)).disk(DiskInconsistent), NoSync, "both current UUIDs empty"},
		// Row 2.
		{"2 only my current UUID empty", side(gen(0, 0, 0, 0)).disk(DiskInconsistent), side(gen(A, 0, 0, 0)), FullSyncTarget, "only my current UUID empty"},
		{"2 only peer's current UUID empty", side(gen(A, B, C, 0)), side(gen(0, 0, 0, 0)).disk(DiskInconsistent), FullSyncSource, "only peer's current UUID empty"},
		// Row 3.
		{"3 current UUIDs equal", side(gen(A, B, 0, 0)), side(gen(A, B, 0, 0)), NoSync, "current UUIDs equal"},
		{"3 current UUIDs equal, both Inconsistent", side(gen(A, 0, 0, 0)).disk(DiskInconsistent), side(gen(A, 0, 0, 0)).disk(DiskInconsistent), NoSync, "current UUIDs equal"},
		{"3a only I have a bitmap UUID", side(gen(A, B, 0, 0)), side(gen(A, 0, B, 0)), BitmapSyncSource, "current UUIDs equal, only I have a bitmap UUID"},
		{"3a only peer has a bitmap UUID", side(gen(A, 0, B, 0)), side(gen(A, B, 0, 0)), BitmapSyncTarget, "current UUIDs equal, only peer has a bitmap UUID"},
		{"3b I crashed as Primary", side(gen(A, 0, 0, 0)).crashed(), side(gen(A, 0, 0, 0)).node(1), BitmapSyncSource, "current UUIDs equal, I crashed as Primary"},
		{"3b peer crashed as Primary", side(gen(A, 0, 0, 0)), side(gen(A, 0, 0, 0)).crashed().node(1), BitmapSyncTarget, "current UUIDs equal, peer crashed as Primary"},
		{"3b crashed, I am Primary now", side(gen(A, 0, 0, 0)).primary(), side(gen(A, 0, 0, 0)).crashed().node(1), BitmapSyncSource, "current UUIDs equal, crashed primary, I am Primary"},
		{"3b crashed, peer is Primary now", side(gen(A, 0, 0, 0)).crashed(), side(gen(A, 0, 0, 0)).primary().node(1), BitmapSyncTarget, "current UUIDs equal, crashed primary, peer is Primary"},
		{"3b crashed, both Primary now", side(gen(A, 0, 0, 0)).crashed().primary(), side(gen(A, 0, 0, 0)).primary().node(1), SplitBrainManual, "current UUIDs equal, crashed primary, both Primary"},
		{"3b both crashed, my node-id lower", side(gen(A, 0, 0, 0)).crashed(), side(gen(A, 0, 0, 0)).crashed().node(1), BitmapSyncSource, "current UUIDs equal, both crashed"},
		{"3b both crashed, my node-id higher", side(gen(A, 0, 0, 0)).crashed().node(3), side(gen(A, 0, 0, 0)).crashed().node(1), BitmapSyncTarget, "current UUIDs equal, both crashed"},
		{"3b both crashed, equal node-ids", side(gen(A, 0, 0, 0)).crashed(), side(gen(A, 0, 0, 0)).crashed(), SyncRefused, "current UUIDs equal, both crashed"},
		// Row 4.
		{"4 my bitmap UUID equals peer's current", side(gen(B, A, 0, 0)), side(gen(A, 0, 0, 0)), BitmapSyncSource, "my bitmap UUID equals peer's current"},
		// Row 5.
		{"5 peer's bitmap UUID equals my current", side(gen(A, 0, C, 0)), side(gen(B, A, C, 0)), BitmapSyncTarget, "peer's bitmap UUID equals my current"},
		// Row 6.
		{"6 my current UUID in peer's history[0]", side(gen(A, 0, 0, 0)), side(gen(C, B, A, 0)), FullSyncTarget, "my current UUID in peer's history"},
		{"6 my current UUID in peer's history[1]", side(gen(A, 0, 0, 0)), side(gen(D, C, B, A)), FullSyncTarget, "my current UUID in peer's history"},
		{"6 peer's current UUID in my history", side(gen(D, C, B, A)), side(gen(B, 0, 0, 0)), FullSyncSource, "peer's current UUID in my history"},
		{"4-6 both directions: cycle", side(gen(A, B, 0, 0)), side(gen(B, A, 0, 0)), SyncRefused, "generations contradict"},
		{"4-6 both directions: bitmap one way, history the other", side(gen(A, B, 0, 0)), side(gen(B, C, A, 0)), SyncRefused, "generations contradict"},
		// Row 7.
		{"7 bitmap UUIDs equal, current UUIDs differ", side(gen(B, A, 0, 0)), side(gen(C, A, 0, 0)), SplitBrainAuto, "bitmap UUIDs equal, current UUIDs differ"},
		// Row 8.
		{"8 some history matches", side(gen(B, C, A, 0)), side(gen(D, E, F, A)), SplitBrainManual, "history UUIDs match"},
		// Row 9.
		{"9 nothing matches", side(gen(A, B, C, D)), side(gen(E, F, 0x70, 0x80)), Unrelated, "no UUID matches"},

		// Precedence.
		{"prec: Diskless before unrelated", side(gen(A, 0, 0, 0)), side(gen(B, 0, 0, 0)).disk(DiskDiskless), NoSync, "peer is Diskless"},
		{"prec: fresh before anything", side(gen(0, A, 0, 0)).disk(DiskInconsistent), side(gen(B, A, 0, 0)), FullSyncTarget, "only my current UUID empty"},
		{"prec: equal currents before row 4", side(gen(A, A, 0, 0)), side(gen(A, A, 0, 0)), NoSync, "current UUIDs equal"},
		{"prec: bitmap row 5 before history row 6", side(gen(A, 0, 0, 0)), side(gen(B, A, A, 0)), BitmapSyncTarget, "peer's bitmap UUID equals my current"},
		{"prec: bitmap row 4 before history row 6", side(gen(B, A, A, 0)), side(gen(A, 0, 0, 0)), BitmapSyncSource, "my bitmap UUID equals peer's current"},
		{"prec: row 4 before split brain", side(gen(B, A, 0, 0)), side(gen(A, A, 0, 0)), BitmapSyncSource, "my bitmap UUID equals peer's current"},
		{"prec: auto split brain before manual", side(gen(B, A, C, 0)), side(gen(D, A, C, 0)), SplitBrainAuto, "bitmap UUIDs equal"},
		{"prec: empty bitmaps are no common ancestor", side(gen(A, 0, C, 0)), side(gen(B, 0, C, 0)), SplitBrainManual, "history UUIDs match"},
		{"prec: empty history slots are no match", side(gen(A, 0, 0, 0)), side(gen(B, 0, 0, 0)), Unrelated, "no UUID matches"},

		// Bit 0 is the "was Primary" flag and never compared.
		{"mask: current UUIDs differing in bit 0 are equal", side(gen(A|1, 0, 0, 0)), side(gen(A, 0, 0, 0)), NoSync, "current UUIDs equal"},
		{"mask: bitmap UUID with bit 0 matches current", side(gen(B, A|1, 0, 0)), side(gen(A, 0, 0, 0)), BitmapSyncSource, "my bitmap UUID equals peer's current"},
		{"mask: history UUID with bit 0 matches current", side(gen(A|1, 0, 0, 0)), side(gen(C, B, A, 0)), FullSyncTarget, "my current UUID in peer's history"},
		{"mask: bitmap UUIDs differing in bit 0 are a common ancestor", side(gen(B, A|1, 0, 0)), side(gen(C, A, 0, 0)), SplitBrainAuto, "bitmap UUIDs equal"},
		{"mask: current UUID 1 is empty", side(gen(1, 0, 0, 0)).disk(DiskInconsistent), side(gen(A, 0, 0, 0)), FullSyncTarget, "only my current UUID empty"},
		{"mask: bitmap UUID 1 is no bitmap UUID", side(gen(A, 1, 0, 0)), side(gen(A, 0, 0, 0)), NoSync, "current UUIDs equal"},

		// Disk states after the rows.
		{"disk: I am Inconsistent, UUIDs equal", side(gen(A, 0, 0, 0)).disk(DiskInconsistent), side(gen(A, 0, 0, 0)), BitmapSyncTarget, "current UUIDs equal; I am Inconsistent"},
		{"disk: peer Inconsistent overrides row 5", side(gen(A, 0, 0, 0)), side(gen(B, A, 0, 0)).disk(DiskInconsistent), BitmapSyncSource, "peer's bitmap UUID equals my current; peer is Inconsistent"},
		{"disk: I am Inconsistent, row 6 stays full", side(gen(D, C, B, A)).disk(DiskInconsistent), side(gen(B, 0, 0, 0)), FullSyncTarget, "peer's current UUID in my history; I am Inconsistent: full"},
		{"disk: Inconsistent ends an auto split brain by bitmap", side(gen(B, A, 0, 0)).disk(DiskInconsistent), side(gen(C, A, 0, 0)), BitmapSyncTarget, "bitmap UUIDs equal, current UUIDs differ: split brain; I am Inconsistent"},
		{"disk: Inconsistent ends a manual split brain by full sync", side(gen(B, C, A, 0)), side(gen(D, E, A, 0)).disk(DiskInconsistent), FullSyncSource, "history UUIDs match: split brain, manual recovery only; peer is Inconsistent: full"},
		{"disk: unrelated stays unrelated", side(gen(A, 0, 0, 0)).disk(DiskInconsistent), side(gen(B, 0, 0, 0)), Unrelated, "no UUID matches"},
		{"disk: Outdated does not override", side(gen(B, A, 0, 0)).disk(DiskOutdated), side(gen(A, 0, 0, 0)), BitmapSyncSource, "my bitmap UUID equals peer's current"},
		{"disk: Inconsistent source refused", side(gen(B, A, 0, 0)).disk(DiskInconsistent), side(gen(A, 0, 0, 0)).disk(DiskInconsistent), SyncRefused, "my bitmap UUID equals peer's current; I would be SyncSource but the disk is Inconsistent"},
		{"disk: both Inconsistent, peer fresh: refused", side(gen(A, 0, 0, 0)).disk(DiskInconsistent), side(gen(0, 0, 0, 0)).disk(DiskInconsistent), SyncRefused, "only peer's current UUID empty; I would be SyncSource"},
		{"disk: Primary target refused (rr-conflict)", side(gen(A, 0, 0, 0)).primary(), side(gen(B, A, 0, 0)), SyncRefused, "peer's bitmap UUID equals my current; I would be SyncTarget but is Primary"},
		{"disk: Inconsistent Primary may be target", side(gen(A, 0, 0, 0)).primary().disk(DiskInconsistent), side(gen(B, A, 0, 0)), BitmapSyncTarget, "peer's bitmap UUID equals my current"},
		{"disk: Primary source is fine", side(gen(B, A, 0, 0)).primary(), side(gen(A, 0, 0, 0)), BitmapSyncSource, "my bitmap UUID equals peer's current"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.peer.NodeID == tc.me.NodeID && tc.want != SyncRefused {
				tc.peer.NodeID = tc.me.NodeID + 1
			}
			got := DecideSync(tc.me, tc.peer)
			require.Equal(t, tc.want, got.Kind, "rule: %s", got.Rule)
			require.Truef(t, len(got.Rule) >= len(tc.rule) && got.Rule[:len(tc.rule)] == tc.rule,
				"rule %q, want prefix %q", got.Rule, tc.rule)
			mirror := DecideSync(tc.peer, tc.me)
			require.Equal(t, tc.want.Mirror(), mirror.Kind, "from the peer's side; rule: %s", mirror.Rule)
		})
	}
}

// testSeed returns TWINBD_SEED if set, else a random seed, and logs it.
func testSeed(t *testing.T) uint64 {
	seed := rand.Uint64()
	if s := os.Getenv("TWINBD_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "TWINBD_SEED")
		seed = v
	}
	t.Logf("seed %d (rerun with TWINBD_SEED=%d)", seed, seed)
	return seed
}

// randSide draws one side from a small UUID alphabet so that the rows
// actually match; bit 0 is set at random to exercise the masking.
func randSide(r *rand.Rand) SyncInput {
	u := func() uint64 {
		if r.IntN(4) == 0 {
			return uint64(r.IntN(2)) // 0, or 1 (empty after masking)
		}
		return uint64(2+r.IntN(5))<<1 | uint64(r.IntN(2))
	}
	disks := []DiskState{DiskDiskless, DiskInconsistent, DiskInconsistent, DiskOutdated,
		DiskConsistent, DiskUpToDate, DiskUpToDate, DiskUpToDate}
	return SyncInput{
		Gen:            Generation{Current: u(), Bitmap: u(), History: [2]uint64{u(), u()}},
		Disk:           disks[r.IntN(len(disks))],
		Role:           []Role{RoleSecondary, RoleSecondary, RolePrimary}[r.IntN(3)],
		CrashedPrimary: r.IntN(3) == 0,
		Dirty:          int64(r.IntN(3)),
		NodeID:         r.IntN(3),
		DiscardMyData:  r.IntN(4) == 0,
	}
}

// TestDecideSyncMirror: both nodes run DecideSync on the same pair; their
// answers must agree (one source, one target, or the same non-directed kind).
func TestDecideSyncMirror(t *testing.T) {
	r := rand.New(rand.NewPCG(testSeed(t), 7))
	seen := map[SyncKind]int{}
	for i := range 10000 {
		a, b := randSide(r), randSide(r)
		da, db := DecideSync(a, b), DecideSync(b, a)
		require.Equal(t, da.Kind, db.Kind.Mirror(), "pair %d:\n a=%+v\n b=%+v\n a: %s\n b: %s", i, a, b, da.Rule, db.Rule)
		seen[da.Kind]++
	}
	t.Logf("kinds seen: %v", seen)
	for k := NoSync; k <= SyncRefused; k++ {
		require.NotZero(t, seen[k], "the generator never produced %s", k)
	}
}

// TestResolveSplitBrain: every after-sb policy value for 0, 1 and 2
// Primaries, and connect --discard-my-data.
func TestResolveSplitBrain(t *testing.T) {
	// A split brain with a common ancestor (row 7): me "alpha" node-id 0,
	// peer "beta" node-id 1.
	me := side(gen(0x20, 0x10, 0, 0)).dirty(5)
	peer := side(gen(0x30, 0x10, 0, 0)).node(1).dirty(9)
	older := func(s SyncInput) SyncInput { s.Gen.Bitmap |= 1; return s } // was Primary before the split
	manual := func(s SyncInput) SyncInput { s.Gen.Bitmap = 0; s.Gen.History[0] = 0x10; return s }
	zero := SBPolicies{}
	p0 := func(v string) SBPolicies { return SBPolicies{ZeroPri: v} }
	p1 := func(v0, v1 string) SBPolicies { return SBPolicies{ZeroPri: v0, OnePri: v1} }
	p2 := func(v0, v2 string) SBPolicies { return SBPolicies{ZeroPri: v0, TwoPri: v2} }

	tests := []struct {
		name     string
		me, peer SyncInput
		p        SBPolicies
		want     SBOutcome
	}{
		// after-sb-0pri.
		{"0pri default is disconnect", me, peer, zero, SBDisconnect},
		{"0pri disconnect", me, peer, p0("disconnect"), SBDisconnect},
		{"0pri discard-younger-primary, I was Primary first", older(me), peer, p0("discard-younger-primary"), SBDiscardPeer},
		{"0pri discard-younger-primary, peer was Primary first", me, older(peer), p0("discard-younger-primary"), SBDiscardMine},
		{"0pri discard-younger-primary, undecided", me, peer, p0("discard-younger-primary"), SBDisconnect},
		{"0pri discard-younger-primary, both flagged: undecided", older(me), older(peer), p0("discard-younger-primary"), SBDisconnect},
		{"0pri discard-older-primary, I was Primary first", older(me), peer, p0("discard-older-primary"), SBDiscardMine},
		{"0pri discard-older-primary, peer was Primary first", me, older(peer), p0("discard-older-primary"), SBDiscardPeer},
		{"0pri discard-older-primary, undecided", me, peer, p0("discard-older-primary"), SBDisconnect},
		{"0pri discard-zero-changes, I have none", me.dirty(0), peer, p0("discard-zero-changes"), SBDiscardMine},
		{"0pri discard-zero-changes, peer has none", me, peer.dirty(0), p0("discard-zero-changes"), SBDiscardPeer},
		{"0pri discard-zero-changes, both have changes", me, peer, p0("discard-zero-changes"), SBDisconnect},
		{"0pri discard-zero-changes, neither: higher node-id (peer) loses", me.dirty(0), peer.dirty(0), p0("discard-zero-changes"), SBDiscardPeer},
		{"0pri discard-zero-changes, neither: higher node-id (me) loses", me.dirty(0).node(2), peer.dirty(0), p0("discard-zero-changes"), SBDiscardMine},
		{"0pri discard-least-changes, I have fewer", me, peer, p0("discard-least-changes"), SBDiscardMine},
		{"0pri discard-least-changes, peer has fewer", me.dirty(20), peer, p0("discard-least-changes"), SBDiscardPeer},
		{"0pri discard-least-changes, tie: higher node-id loses", me.dirty(9), peer, p0("discard-least-changes"), SBDiscardPeer},
		{"0pri discard-least-changes, tie, equal node-ids", me.dirty(9), peer.node(0), p0("discard-least-changes"), SBDisconnect},
		{"0pri discard-node-alpha (me)", me, peer, p0("discard-node-alpha"), SBDiscardMine},
		{"0pri discard-node-beta (peer)", me, peer, p0("discard-node-beta"), SBDiscardPeer},
		{"0pri discard-node-gamma (neither)", me, peer, p0("discard-node-gamma"), SBDisconnect},
		{"0pri 1pri-only value consensus", me, peer, p0("consensus"), SBDisconnect},
		{"0pri 1pri-only value discard-secondary", me, peer, p0("discard-secondary"), SBDisconnect},
		{"0pri unknown value", me, peer, p0("discard-everything"), SBDisconnect},

		// after-sb-1pri (I am Primary unless the name says otherwise).
		{"1pri default is disconnect", me.primary(), peer, p0("discard-least-changes"), SBDisconnect},
		{"1pri disconnect", me.primary(), peer, p1("discard-least-changes", "disconnect"), SBDisconnect},
		{"1pri consensus, 0pri picks the Secondary peer", me.primary().dirty(20), peer, p1("discard-least-changes", "consensus"), SBDiscardPeer},
		{"1pri consensus, 0pri picks me, the Secondary", me, peer.primary(), p1("discard-least-changes", "consensus"), SBDiscardMine},
		{"1pri consensus, 0pri picks the Primary (me)", me.primary(), peer, p1("discard-least-changes", "consensus"), SBDisconnect},
		{"1pri consensus, 0pri picks nobody", me.primary(), peer, p1("disconnect", "consensus"), SBDisconnect},
		{"1pri violently-as0p discards the Primary (me)", me.primary(), peer, p1("discard-least-changes", "violently-as0p"), SBDiscardMine},
		{"1pri violently-as0p discards the Secondary peer", me.primary().dirty(20), peer, p1("discard-least-changes", "violently-as0p"), SBDiscardPeer},
		{"1pri violently-as0p, 0pri disconnect", me.primary(), peer, p1("disconnect", "violently-as0p"), SBDisconnect},
		{"1pri discard-secondary, I am Primary", me.primary(), peer, p1("", "discard-secondary"), SBDiscardPeer},
		{"1pri discard-secondary, I am Secondary", me, peer.primary(), p1("", "discard-secondary"), SBDiscardMine},
		{"1pri call-pri-lost-after-sb, 0pri picks me, the Primary", me.primary(), peer, p1("discard-least-changes", "call-pri-lost-after-sb"), SBCallPriLost},
		{"1pri call-pri-lost-after-sb, 0pri picks the Primary peer", me.dirty(20), peer.primary(), p1("discard-least-changes", "call-pri-lost-after-sb"), SBDiscardPeer},
		{"1pri call-pri-lost-after-sb, 0pri picks me, the Secondary", me, peer.primary(), p1("discard-least-changes", "call-pri-lost-after-sb"), SBDiscardMine},
		{"1pri call-pri-lost-after-sb, 0pri disconnect", me.primary(), peer, p1("disconnect", "call-pri-lost-after-sb"), SBDisconnect},
		{"1pri 0pri-only value", me.primary(), peer, p1("discard-least-changes", "discard-least-changes"), SBDisconnect},

		// after-sb-2pri.
		{"2pri default is disconnect", me.primary(), peer.primary(), p0("discard-least-changes"), SBDisconnect},
		{"2pri disconnect", me.primary(), peer.primary(), p2("discard-least-changes", "disconnect"), SBDisconnect},
		{"2pri violently-as0p, I lose", me.primary(), peer.primary(), p2("discard-least-changes", "violently-as0p"), SBDiscardMine},
		{"2pri violently-as0p, peer loses", me.primary().dirty(20), peer.primary(), p2("discard-least-changes", "violently-as0p"), SBDiscardPeer},
		{"2pri violently-as0p, 0pri disconnect", me.primary(), peer.primary(), p2("disconnect", "violently-as0p"), SBDisconnect},
		{"2pri call-pri-lost-after-sb, I lose", me.primary(), peer.primary(), p2("discard-least-changes", "call-pri-lost-after-sb"), SBCallPriLost},
		{"2pri call-pri-lost-after-sb, peer loses", me.primary().dirty(20), peer.primary(), p2("discard-least-changes", "call-pri-lost-after-sb"), SBDiscardPeer},
		{"2pri call-pri-lost-after-sb, 0pri disconnect", me.primary(), peer.primary(), p2("disconnect", "call-pri-lost-after-sb"), SBDisconnect},
		{"2pri 1pri-only value", me.primary(), peer.primary(), p2("discard-least-changes", "discard-secondary"), SBDisconnect},

		// connect --discard-my-data.
		{"discard-my-data on me, auto split brain, policy disconnect", me.discard(), peer, zero, SBDiscardMine},
		{"discard-my-data on peer, auto split brain", me, peer.discard(), zero, SBDiscardPeer},
		{"discard-my-data on me, manual split brain", manual(me).discard(), manual(peer), zero, SBDiscardMine},
		{"discard-my-data on peer, manual split brain", manual(me), manual(peer).discard(), zero, SBDiscardPeer},
		{"discard-my-data on both", me.discard(), peer.discard(), zero, SBDisconnect},
		{"manual split brain without discard-my-data ignores policies", manual(me), manual(peer), p0("discard-least-changes"), SBDisconnect},
		{"discard-my-data on a Primary: demote first", me.primary().discard(), peer, zero, SBDisconnect},
		{"discard-my-data on a Primary peer: demote first", me, peer.primary().discard(), zero, SBDisconnect},
		{"a policy that decides wins over discard-my-data (DRBD order)", me.dirty(20).discard(), peer, p0("discard-least-changes"), SBDiscardPeer},
		{"discard-my-data after consensus failed", me.primary(), peer.discard(), p1("discard-least-changes", "consensus"), SBDiscardPeer},
		{"equal-current crash with both Primary, discard-my-data", side(gen(0x20, 0, 0, 0)).primary().crashed().discard(), side(gen(0x20, 0, 0, 0)).primary().node(1), zero, SBDisconnect},

		// Not a split brain.
		{"no split brain: bitmap resync", side(gen(0x20, 0x10, 0, 0)), side(gen(0x10, 0, 0, 0)).node(1).discard(), p0("discard-node-alpha"), SBDisconnect},
		{"no split brain: Inconsistent side ends it", me.disk(DiskInconsistent), peer, p0("discard-node-beta"), SBDisconnect},
		{"no split brain: unrelated", side(gen(0x20, 0, 0, 0)).discard(), side(gen(0x30, 0, 0, 0)).node(1), zero, SBDisconnect},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, why := ResolveSplitBrain(tc.me, tc.peer, "alpha", "beta", tc.p)
			require.Equal(t, tc.want, got, "reason: %s", why)
			require.NotEmpty(t, why)
			back, bwhy := ResolveSplitBrain(tc.peer, tc.me, "beta", "alpha", tc.p)
			requireMirrorOutcome(t, got, back, why+" / "+bwhy)
		})
	}
}

// requireMirrorOutcome: the peer reaches the opposite victim. A Primary
// victim under call-pri-lost-after-sb gets SBCallPriLost on its own side.
func requireMirrorOutcome(t *testing.T, mine, theirs SBOutcome, why string) {
	t.Helper()
	switch mine {
	case SBDisconnect:
		require.Equal(t, SBDisconnect, theirs, why)
	case SBDiscardMine, SBCallPriLost:
		require.Equal(t, SBDiscardPeer, theirs, why)
	case SBDiscardPeer:
		require.Contains(t, []SBOutcome{SBDiscardMine, SBCallPriLost}, theirs, why)
	}
}

// TestResolveSplitBrainMirror: random split brains and policies; both
// nodes must agree on the victim.
func TestResolveSplitBrainMirror(t *testing.T) {
	r := rand.New(rand.NewPCG(testSeed(t), 11))
	pick := func(vs ...string) string { return vs[r.IntN(len(vs))] }
	seen := map[SBOutcome]int{}
	for i := range 10000 {
		a, b := randSide(r), randSide(r)
		if i%2 == 0 { // force row 7 half the time
			a.Gen.Bitmap, b.Gen.Bitmap = 0x10|uint64(r.IntN(2)), 0x10|uint64(r.IntN(2))
			a.Gen.Current, b.Gen.Current = 0x20, 0x30
		}
		p := SBPolicies{
			ZeroPri: pick("", "disconnect", "discard-younger-primary", "discard-older-primary",
				"discard-zero-changes", "discard-least-changes", "discard-node-alpha", "discard-node-beta", "consensus"),
			OnePri: pick("", "disconnect", "consensus", "violently-as0p", "discard-secondary", "call-pri-lost-after-sb"),
			TwoPri: pick("", "disconnect", "violently-as0p", "call-pri-lost-after-sb"),
		}
		oa, wa := ResolveSplitBrain(a, b, "alpha", "beta", p)
		ob, wb := ResolveSplitBrain(b, a, "beta", "alpha", p)
		requireMirrorOutcome(t, oa, ob, wa+" / "+wb)
		seen[oa]++
	}
	t.Logf("outcomes seen: %v", seen)
	for o := SBDisconnect; o <= SBCallPriLost; o++ {
		require.NotZero(t, seen[o], "the generator never produced %s", o)
	}
}
