package replication

// State names are DRBD's exact spellings: operators, scripts and exporters
// match on them.

// Role of a node for a resource.
type Role int

const (
	RoleUnknown Role = iota
	RoleSecondary
	RolePrimary
)

func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "Primary"
	case RoleSecondary:
		return "Secondary"
	}
	return "Unknown"
}

// DiskState of a node's local disk.
type DiskState int

const (
	DiskDiskless DiskState = iota
	DiskAttaching
	DiskDetaching
	DiskFailed
	DiskNegotiating
	DiskInconsistent
	DiskOutdated
	DiskDUnknown
	DiskConsistent
	DiskUpToDate
)

var diskNames = [...]string{"Diskless", "Attaching", "Detaching", "Failed", "Negotiating",
	"Inconsistent", "Outdated", "DUnknown", "Consistent", "UpToDate"}

func (d DiskState) String() string {
	if d < 0 || int(d) >= len(diskNames) {
		return "DUnknown"
	}
	return diskNames[d]
}

// ConnState of the connection to a peer.
type ConnState int

const (
	ConnStandAlone ConnState = iota
	ConnDisconnecting
	ConnUnconnected
	ConnTimeout
	ConnBrokenPipe
	ConnNetworkFailure
	ConnProtocolError
	ConnTearDown
	ConnConnecting
	ConnConnected
)

var connNames = [...]string{"StandAlone", "Disconnecting", "Unconnected", "Timeout",
	"BrokenPipe", "NetworkFailure", "ProtocolError", "TearDown", "Connecting", "Connected"}

func (c ConnState) String() string {
	if c < 0 || int(c) >= len(connNames) {
		return "StandAlone"
	}
	return connNames[c]
}

// ReplState of the replication with a peer (one volume).
type ReplState int

const (
	ReplOff ReplState = iota
	ReplEstablished
	ReplStartingSyncS
	ReplStartingSyncT
	ReplWFBitMapS
	ReplWFBitMapT
	ReplWFSyncUUID
	ReplSyncSource
	ReplSyncTarget
	ReplPausedSyncS
	ReplPausedSyncT
	ReplVerifyS
	ReplVerifyT
	ReplAhead
	ReplBehind
)

var replNames = [...]string{"Off", "Established", "StartingSyncS", "StartingSyncT",
	"WFBitMapS", "WFBitMapT", "WFSyncUUID", "SyncSource", "SyncTarget", "PausedSyncS",
	"PausedSyncT", "VerifyS", "VerifyT", "Ahead", "Behind"}

func (r ReplState) String() string {
	if r < 0 || int(r) >= len(replNames) {
		return "Off"
	}
	return replNames[r]
}
