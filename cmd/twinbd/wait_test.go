package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/replication"
)

func syncStatus(name, repl string, done float64, oosKiB int64) []replication.Status {
	return []replication.Status{{
		Name:    name,
		Devices: []replication.DeviceStatus{{DiskState: "UpToDate"}},
		Connections: []replication.ConnectionStatus{{
			Name: "beta", ConnectionState: "Connected",
			PeerDevices: []replication.PeerDeviceStatus{{ReplicationState: repl, DonePercent: done, OutOfSync: oosKiB, ETA: 3}},
		}},
	}}
}

// Without a terminal, wait-sync prints a line when the resync is first
// seen, one per 10% step, and one when it is done.
func TestSyncProgressLines(t *testing.T) {
	var out bytes.Buffer
	p := newSyncProgress(&out)
	require.False(t, p.tty)
	p.update(syncStatus("r0", "Established", 0, 0)) // nothing to show yet
	for _, d := range []float64{4, 5, 12, 14, 19, 35, 36, 99} {
		p.update(syncStatus("r0", "SyncSource", d, int64(100-d)*1000))
	}
	p.update(syncStatus("r0", "Established", 0, 0))
	p.stop(true)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Equal(t, []string{
		"r0: SyncSource to beta: 4.0% done, 96000 KiB out of sync",
		"r0: SyncSource to beta: 12.0% done, 88000 KiB out of sync, about 3s left",
		"r0: SyncSource to beta: 35.0% done, 65000 KiB out of sync, about 3s left",
		"r0: SyncSource to beta: 99.0% done, 1000 KiB out of sync, about 3s left",
		"r0: resync done",
	}, lines)
}

// On a terminal the same updates drive a progress bar that ends full.
func TestSyncProgressBar(t *testing.T) {
	var out bytes.Buffer
	p := newSyncProgress(&out)
	p.tty = true
	p.update(syncStatus("r0", "SyncTarget", 0, 4096))
	p.update(syncStatus("r0", "SyncTarget", 50, 2048))
	require.Equal(t, "r0", p.cur)
	require.Equal(t, int64(4096*1024), p.total)
	p.update(syncStatus("r0", "Established", 0, 0))
	require.Empty(t, p.cur)
	require.Contains(t, out.String(), "r0 SyncTarget from beta")
	require.Contains(t, out.String(), "100%")
}
