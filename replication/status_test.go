package replication

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The text status shows what a disconnected peer will need (verbose), why
// I/O is suspended, and a lost quorum.
func TestStatusText(t *testing.T) {
	st := Status{Name: "r0", Role: "Primary", Suspended: true, SuspendedReason: "quorum",
		Devices: []DeviceStatus{{DiskState: "UpToDate", Quorum: false}},
		Connections: []ConnectionStatus{{Name: "beta", ConnectionState: "Connecting", Reason: "meta channel: EOF",
			PeerDevices: []PeerDeviceStatus{{OutOfSync: 4096}}}}}
	var b strings.Builder
	st.WriteText(&b, false)
	require.Equal(t, "r0 role:Primary suspended:quorum\n  disk:UpToDate quorum:no\n  beta connection:Connecting reason:\"meta channel: EOF\"\n", b.String())
	b.Reset()
	st.WriteText(&b, true)
	require.Contains(t, b.String(), "  beta node-id:0 connection:Connecting reason:\"meta channel: EOF\"\n    out-of-sync:4096\n")
}
