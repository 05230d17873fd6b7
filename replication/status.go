package replication

import (
	"fmt"
	"io"
	"strings"
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
}

// Status returns the current status.
func (r *Resource) Status() Status {
	r.mu.Lock()
	role, disk := r.role, r.disk
	export := ""
	if r.ln != nil {
		export = r.ln.Addr().String()
	}
	r.mu.Unlock()
	pending := r.pending.Load()
	st := Status{
		Name: r.res.Name, NodeID: r.host.NodeID, Role: role.String(), Export: export,
		Devices: []DeviceStatus{{
			DiskState: disk.String(), Quorum: true, Size: r.size / 1024,
			Read: r.readBytes.Load() / 1024, Written: r.writtenBytes.Load() / 1024,
			UpperPending: pending, LowerPending: pending,
		}},
		Connections: []ConnectionStatus{},
	}
	for _, p := range r.peers {
		st.Connections = append(st.Connections, ConnectionStatus{
			PeerNodeID: p.NodeID, Name: p.Name,
			ConnectionState: ConnStandAlone.String(), PeerRole: RoleUnknown.String(),
			PeerDevices: []PeerDeviceStatus{{
				ReplicationState: ReplOff.String(), PeerDiskState: DiskDUnknown.String(),
				ResyncSuspended: "no", PercentInSync: 100,
			}},
		})
	}
	return st
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
	if verbose {
		fmt.Fprintf(&b, " suspended:%s", yesNo(s.Suspended))
	}
	b.WriteString("\n")
	for _, d := range s.Devices {
		fmt.Fprintf(&b, "  disk:%s", d.DiskState)
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
			fmt.Fprintf(&b, " connection:%s\n", c.ConnectionState)
			continue
		}
		fmt.Fprintf(&b, " role:%s\n", c.PeerRole)
		for _, p := range c.PeerDevices {
			fmt.Fprintf(&b, "    replication:%s peer-disk:%s", p.ReplicationState, p.PeerDiskState)
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
