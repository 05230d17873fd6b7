package replication

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/twinbd/twinbd/config"
)

// Status is a resource's state with drbdsetup status --json's keys.
type Status struct {
	Name        string             `json:"name"`
	NodeID      int                `json:"node-id"`
	Role        string             `json:"role"`
	Suspended   bool               `json:"suspended"`
	Devices     []DeviceStatus     `json:"devices"`
	Connections []ConnectionStatus `json:"connections"`
	// Export is twinbd's own addition: where the NBD export listens ("" when not serving).
	Export string `json:"export,omitempty"`
	// SuspendedReason is twinbd's addition: why I/O is suspended
	// ("fencing" or "quorum"; drbdsetup's text shows the same words).
	SuspendedReason string `json:"suspended-reason,omitempty"`
	// Witness is twinbd's addition: whether the witness answers
	// ("connected", "unreachable"; absent without a witness) and whether it
	// records this node Outdated.
	Witness         string `json:"witness,omitempty"`
	WitnessOutdated bool   `json:"witness-outdated,omitempty"`
	// MayPromote and PromotionScore are events2's may_promote and
	// promotion_score (see Promotion).
	MayPromote     bool `json:"may-promote"`
	PromotionScore int  `json:"promotion-score"`
}

// DeviceStatus is the local volume. Sizes and counters are in KiB.
type DeviceStatus struct {
	Volume       int    `json:"volume"`
	Minor        int    `json:"minor"`
	DiskState    string `json:"disk-state"`
	Client       bool   `json:"client"`
	Quorum       bool   `json:"quorum"`
	Size         int64  `json:"size"`
	Read         int64  `json:"read"`
	Written      int64  `json:"written"`
	ALWrites     int64  `json:"al-writes"`
	BMWrites     int64  `json:"bm-writes"`
	UpperPending int64  `json:"upper-pending"`
	LowerPending int64  `json:"lower-pending"`
	// DiskReason is twinbd's addition: why the disk is Diskless (the
	// failed I/O, or the operator's detach), "" otherwise.
	DiskReason string `json:"disk-reason,omitempty"`
}

// ConnectionStatus is the connection to one peer.
type ConnectionStatus struct {
	PeerNodeID      int                `json:"peer-node-id"`
	Name            string             `json:"name"`
	ConnectionState string             `json:"connection-state"`
	Congested       bool               `json:"congested"`
	PeerRole        string             `json:"peer-role"`
	APInFlight      int64              `json:"ap-in-flight"`
	RSInFlight      int64              `json:"rs-in-flight"`
	PeerDevices     []PeerDeviceStatus `json:"peer_devices"`
	// Reason is twinbd's addition: why the connection is not Connected
	// (the last refusal or network error), "" when it is.
	Reason string `json:"reason,omitempty"`
}

// PeerDeviceStatus is the peer's copy of the volume.
type PeerDeviceStatus struct {
	Volume           int     `json:"volume"`
	ReplicationState string  `json:"replication-state"`
	PeerDiskState    string  `json:"peer-disk-state"`
	PeerClient       bool    `json:"peer-client"`
	ResyncSuspended  string  `json:"resync-suspended"`
	Received         int64   `json:"received"`
	Sent             int64   `json:"sent"`
	OutOfSync        int64   `json:"out-of-sync"`
	Pending          int64   `json:"pending"`
	Unacked          int64   `json:"unacked"`
	PercentInSync    float64 `json:"percent-in-sync"`
	// While syncing (and verifying), drbdsetup's keys: the amount to
	// sync when it started (KiB), percent done and seconds left.
	RSTotal     int64   `json:"rs-total,omitempty"`
	DonePercent float64 `json:"percent-resync-done,omitempty"`
	ETA         int64   `json:"estimated-seconds-to-finish,omitempty"`
}

// Status returns the current status.
func (r *Resource) Status() Status {
	r.mu.Lock()
	role, disk, diskReason := r.role, r.disk, r.diskReason
	export := ""
	if r.ln != nil {
		export = r.ln.Addr().String()
	}
	r.mu.Unlock()
	pending := r.pending.Load()
	susp := r.suspended()
	st := Status{
		Name: r.res.Name, NodeID: r.host.NodeID, Role: role.String(), Export: export,
		Suspended: susp != "", SuspendedReason: susp,
		Devices: []DeviceStatus{{
			DiskState: disk.String(), Quorum: r.haveQuorum(), Size: r.size.Load() / 1024,
			Read: r.readBytes.Load() / 1024, Written: r.writtenBytes.Load() / 1024,
			UpperPending: pending, LowerPending: pending, DiskReason: diskReason,
		}},
		Connections: []ConnectionStatus{},
	}
	if r.fo.wc != nil {
		st.Witness = "unreachable"
		if r.fo.witnessUp.Load() {
			st.Witness = "connected"
		}
		st.WitnessOutdated = r.fo.outdatedHere.Load()
	}
	st.MayPromote, st.PromotionScore = r.Promotion()
	st.Devices[0].BMWrites = r.b().meta.BitmapWrites()
	if r.b().al != nil {
		st.Devices[0].ALWrites = r.b().al.Stats()
	}
	for _, p := range r.peers {
		st.Connections = append(st.Connections, r.connStatus(p))
	}
	return st
}

func (r *Resource) connStatus(p *config.Host) ConnectionStatus {
	r.mu.Lock()
	l := &r.link
	c := ConnectionStatus{
		PeerNodeID: p.NodeID, Name: p.Name,
		ConnectionState: l.conn.String(), PeerRole: l.peerRole.String(),
	}
	if l.conn != ConnConnected {
		c.Reason = l.reason
	}
	repl, peerDisk, total, start := l.repl, l.peerDisk, l.syncTotal, l.syncStart
	r.mu.Unlock()
	pd := PeerDeviceStatus{
		ReplicationState: repl.String(), PeerDiskState: peerDisk.String(),
		ResyncSuspended: "no", PercentInSync: 100,
		Sent: (r.link.sentBytes.Load() + r.link.resyncWire.Load()) / 1024, Received: r.link.recvBytes.Load() / 1024,
	}
	if r.bm != nil {
		size := r.size.Load()
		oos := min(r.bm.Bytes(), size)
		pd.OutOfSync = oos / 1024
		if size > 0 {
			pd.PercentInSync = float64(int64(1000*float64(size-oos)/float64(size))) / 10
		}
		if (repl == ReplSyncSource || repl == ReplSyncTarget || repl == ReplVerifyS) && total > 0 {
			left := r.bm.Count()
			if repl == ReplVerifyS {
				left = total - r.link.verifyDone.Load()
			}
			done := float64(total-left) / float64(total)
			pd.RSTotal = total * r.bm.Granularity() / 1024
			if repl == ReplVerifyS {
				pd.RSTotal = size / 1024
			}
			pd.DonePercent = float64(int64(done*1000)) / 10
			if done > 0 {
				el := time.Since(start).Seconds()
				pd.ETA = int64(el/done - el + 0.5)
			}
		}
	}
	if s := r.sess.Load(); s != nil {
		s.mu.Lock()
		c.APInFlight = int64(len(s.pend))
		pd.Unacked = int64(len(s.pend))
		s.mu.Unlock()
	}
	c.PeerDevices = []PeerDeviceStatus{pd}
	return c
}

// WriteText writes the status in drbdadm status's layout; verbose adds
// node-id, suspension and the statistics.
func (s Status) WriteText(w io.Writer, verbose bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", s.Name)
	if verbose {
		fmt.Fprintf(&b, " node-id:%d", s.NodeID)
	}
	fmt.Fprintf(&b, " role:%s", s.Role)
	switch {
	case s.Suspended:
		fmt.Fprintf(&b, " suspended:%s", s.SuspendedReason)
	case verbose:
		b.WriteString(" suspended:no")
	}
	b.WriteString("\n")
	for _, d := range s.Devices {
		fmt.Fprintf(&b, "  disk:%s", d.DiskState)
		if d.DiskReason != "" {
			fmt.Fprintf(&b, " (%s)", d.DiskReason)
		}
		if !d.Quorum && !verbose {
			b.WriteString(" quorum:no")
		}
		if verbose {
			fmt.Fprintf(&b, " quorum:%s size:%d read:%d written:%d al-writes:%d bm-writes:%d upper-pending:%d lower-pending:%d",
				yesNo(d.Quorum), d.Size, d.Read, d.Written, d.ALWrites, d.BMWrites, d.UpperPending, d.LowerPending)
		}
		b.WriteString("\n")
	}
	for _, c := range s.Connections {
		fmt.Fprintf(&b, "  %s", c.Name)
		if verbose {
			fmt.Fprintf(&b, " node-id:%d", c.PeerNodeID)
		}
		if c.ConnectionState != ConnConnected.String() {
			fmt.Fprintf(&b, " connection:%s", c.ConnectionState)
			if c.Reason != "" {
				fmt.Fprintf(&b, " reason:%q", c.Reason)
			}
			b.WriteString("\n")
			if verbose {
				// What the peer will need when it is back.
				for _, p := range c.PeerDevices {
					fmt.Fprintf(&b, "    out-of-sync:%d\n", p.OutOfSync)
				}
			}
			continue
		}
		fmt.Fprintf(&b, " role:%s\n", c.PeerRole)
		for _, p := range c.PeerDevices {
			fmt.Fprintf(&b, "    replication:%s peer-disk:%s", p.ReplicationState, p.PeerDiskState)
			if p.ReplicationState == ReplSyncSource.String() || p.ReplicationState == ReplSyncTarget.String() || p.ReplicationState == ReplVerifyS.String() {
				fmt.Fprintf(&b, " done:%.1f", p.DonePercent)
			}
			if verbose {
				fmt.Fprintf(&b, " out-of-sync:%d pending:%d unacked:%d", p.OutOfSync, p.Pending, p.Unacked)
			}
			b.WriteString("\n")
		}
	}
	io.WriteString(w, b.String())
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// Promotion reports whether `primary` (without --force) may succeed now
// and the promotion score (the OCF agent's: 10000 UpToDate and connected,
// 1000 UpToDate with the peer unknown, 5 Consistent, 0 otherwise) that
// events2 and the metrics show.
func (r *Resource) Promotion() (may bool, score int) {
	r.mu.Lock()
	role, disk, down := r.role, r.disk, r.down
	peerRole := r.link.peerRole
	r.mu.Unlock()
	connected := r.sess.Load() != nil
	switch {
	case disk == DiskUpToDate && (connected || r.peer == nil):
		score = 10000
	case disk == DiskUpToDate:
		score = 1000
	case disk == DiskConsistent:
		score = 5
	}
	if down || role == RolePrimary {
		return false, score
	}
	switch {
	case r.peer == nil:
		may = disk == DiskUpToDate || disk == DiskConsistent
	case connected:
		may = disk == DiskUpToDate && peerRole != RolePrimary
	case r.fo.wc != nil:
		may = (disk == DiskUpToDate || disk == DiskConsistent) && r.fo.witnessUp.Load() && !r.fo.outdatedHere.Load()
	default:
		may = disk == DiskUpToDate && !r.quorumEnforced()
	}
	return may, score
}
