package replication

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPairRandomFaults drives a replicated pair through a seeded schedule
// of writes, flushes and link faults (partitions in one or both
// directions, delay, connection loss, operator disconnects) and checks,
// after healing, that the replicas converge block for block and every
// answered write is there in its newest version. TWINBD_FAULT_SEED replays
// one schedule; the seed is logged.
func TestPairRandomFaults(t *testing.T) {
	seeds := []uint64{1, 3, 4, 21} // each found a bug once
	if s := os.Getenv("TWINBD_FAULT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err)
		seeds = []uint64{v}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("seed %d (TWINBD_FAULT_SEED=%d replays it)", seed, seed)
			rng := rand.New(rand.NewPCG(seed, 99))
			proto := []string{"A", "B", "C"}[rng.IntN(3)]
			p := newPair(t, "protocol "+proto+";")
			require.NoError(t, p.a.Primary(true))
			p.waitSynced(p.a)
			blocks := int(p.a.Size()/4096) / 4
			newest := map[int64]uint64{}
			var version uint64
			reconnects, crashes := 0, 0
			const A, B = "a:1", "b:1"
			for step := range 400 {
				switch k := rng.IntN(100); {
				case k < 70:
					off := int64(rng.IntN(blocks)) * 4096
					version++
					require.NoError(t, p.a.WriteAt(block(off, version), off, rng.IntN(8) == 0), "step %d", step)
					newest[off] = version
				case k < 80:
					require.NoError(t, p.a.Flush(), "step %d", step)
				case k < 84:
					p.net.Partition(A, B)
				case k < 86:
					p.net.PartitionOneWay([]string{A, B}[rng.IntN(2)], []string{B, A}[rng.IntN(2)])
				case k < 92:
					p.net.Heal(A, B)
					// Often give the link time to come back, so that
					// reconnects and resyncs interleave with the load.
					if rng.IntN(2) == 0 {
						deadline := time.Now().Add(2 * time.Second)
						for p.a.sess.Load() == nil && time.Now().Before(deadline) {
							time.Sleep(5 * time.Millisecond)
						}
						reconnects++
					}
				case k < 94:
					p.net.SetDelay(A, B, time.Duration(rng.IntN(3))*time.Millisecond)
				case k < 96:
					p.net.SetLoss(A, B, 0.02)
				case k < 97:
					p.net.SetLoss(A, B, 0)
				case k < 98:
					require.NoError(t, p.a.Disconnect())
				case k < 99:
					require.NoError(t, p.a.Connect(false))
				case rng.IntN(2) == 0:
					// The Secondary's process dies and comes back.
					p.b.abandon()
					p.b = p.up("b")
					crashes++
				default:
					// The Primary's process dies (its files keep what it
					// wrote), comes back and is promoted again.
					p.a.abandon()
					p.a = p.up("a")
					require.NoError(t, p.a.Primary(true))
					crashes++
				}
			}
			t.Logf("protocol %s, %d writes, %d waits for a reconnect, %d process crashes", proto, version, reconnects, crashes)
			// Heal everything and let the pair converge.
			p.net.Heal(A, B)
			p.net.SetDelay(A, B, 0)
			p.net.SetLoss(A, B, 0)
			require.NoError(t, p.a.Connect(false))
			require.NoError(t, p.b.Connect(false))
			p.waitSynced(p.a)
			eventually(t, "b UpToDate", func() bool { return p.b.DiskState() == DiskUpToDate })
			require.NoError(t, p.a.Flush())
			p.sameData()
			buf := make([]byte, 4096)
			for off, v := range newest {
				require.NoError(t, p.a.ReadAt(buf, off))
				got, ok := blockVersion(buf, off)
				require.True(t, ok, "block at %d holds data never written", off)
				require.Equal(t, v, got, "block at %d", off)
			}
		})
	}
}
