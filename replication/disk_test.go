package replication

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/device"
)

// diskModel is what the client of a Primary was answered: block -> data.
type diskModel struct {
	mu     sync.Mutex
	blocks map[int64][]byte
}

const modelBlocks = 512 // 2 MiB of 4 KiB blocks at the start of the device

func (m *diskModel) write(t *testing.T, r *Resource, rng *rand.Rand) {
	t.Helper()
	blk := int64(rng.IntN(modelBlocks))
	data := randBlock(rng, 4096)
	m.mu.Lock()
	defer m.mu.Unlock() // one writer per block at a time: the model stays exact
	require.NoError(t, r.WriteAt(data, blk*4096, rng.IntN(8) == 0))
	m.blocks[blk] = data
}

// check reads every block through r and compares it with the model.
func (m *diskModel) check(t *testing.T, r *Resource) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	buf := make([]byte, 4096)
	for blk := int64(0); blk < modelBlocks; blk++ {
		require.NoError(t, r.ReadAt(buf, blk*4096), "read block %d", blk)
		want := m.blocks[blk]
		if want == nil {
			want = make([]byte, 4096)
		}
		require.True(t, bytes.Equal(want, buf), "block %d does not hold the last answered write", blk)
	}
}

// newDiskPair is a synced pair with fault injection, a Primary.
func newDiskPair(t *testing.T, diskExtra string) *testPair {
	p := newPairWith(t, `} handlers { local-io-error "true";`, diskExtra, nil, true) // closes net, opens handlers
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	return p
}

// replaceDisk gives node a new, empty disk with fresh metadata (the
// operator's replacement followed by create-md).
func (p *testPair) replaceDisk(img, node string) {
	p.t.Helper()
	require.NoError(p.t, os.Truncate(img, 0))
	require.NoError(p.t, os.Truncate(img, pairSize))
	_, err := createMetadata(p.res, node, true, nil)
	require.NoError(p.t, err)
}

// writeLoad writes random blocks through r until stop is closed.
func writeLoad(t *testing.T, m *diskModel, r *Resource, seed uint64, stop chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				m.write(t, r, rng)
			}
		})
	}
	return &wg
}

// TestDiskFailurePrimaryDetachesAndServesFromPeer: the Primary's disk starts
// failing writes under load; it detaches (Failed -> Diskless, the handler
// runs), every write keeps succeeding through the peer and every read
// returns the last answered write. Then a replacement disk is attached
// under load: Inconsistent, resynced from the peer, UpToDate, replicas
// identical, and the load never saw an error.
func TestDiskFailurePrimaryDetachesAndServesFromPeer(t *testing.T) {
	p := newDiskPair(t, "")
	m := &diskModel{blocks: map[int64][]byte{}}
	rng := rand.New(rand.NewPCG(7, 7))
	for range 200 {
		m.write(t, p.a, rng)
	}
	stop := make(chan struct{})
	wg := writeLoad(t, m, p.a, 8, stop)
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, p.a.DiskFault(device.FaultWrite, 0, 0))
	eventually(t, "a Diskless", func() bool { return p.a.DiskState() == DiskDiskless })
	time.Sleep(200 * time.Millisecond) // writes through the peer only
	close(stop)
	wg.Wait()
	require.True(t, p.called("a", "local-io-error"))
	st := p.a.Status()
	require.Equal(t, "Diskless", st.Devices[0].DiskState)
	require.Contains(t, st.Devices[0].DiskReason, "on-io-error detach")
	eventually(t, "b sees a Diskless", func() bool {
		return p.b.Status().Connections[0].PeerDevices[0].PeerDiskState == "Diskless"
	})
	require.NoError(t, p.a.Flush())
	m.check(t, p.a) // every read through the peer

	// The operator replaces the disk and attaches it while the load goes on.
	p.replaceDisk(p.imgA, "a")
	stop = make(chan struct{})
	wg = writeLoad(t, m, p.a, 9, stop)
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, p.a.Attach())
	require.Equal(t, DiskInconsistent, p.a.DiskState())
	eventually(t, "a UpToDate again", func() bool { return p.a.DiskState() == DiskUpToDate })
	close(stop)
	wg.Wait()
	p.waitSynced(p.a)
	require.NoError(t, p.a.Flush())
	m.check(t, p.a)
	p.sameData()
	require.ErrorContains(t, p.a.Attach(), "a disk is attached")
}

// TestDiskReadErrorServedFromPeer: one unreadable block on the Primary:
// the read is answered with the peer's copy (and the disk detached).
func TestDiskReadErrorServedFromPeer(t *testing.T) {
	p := newDiskPair(t, "")
	want := bytes.Repeat([]byte{0x5a}, 4096)
	require.NoError(t, p.a.WriteAt(want, 8192, false))
	require.NoError(t, p.a.DiskFault(device.FaultRead, 8192, 4096))
	got := make([]byte, 4096)
	require.NoError(t, p.a.ReadAt(got, 8192))
	require.Equal(t, want, got)
	require.Equal(t, DiskDiskless, p.a.DiskState())
}

// TestDiskFailureSecondary: the Secondary's disk fails; the Primary goes on
// (the peer's refusals mark the blocks out of sync), the Secondary cannot
// be promoted, and after a replacement is attached it resyncs to identical.
func TestDiskFailureSecondary(t *testing.T) {
	p := newDiskPair(t, "")
	m := &diskModel{blocks: map[int64][]byte{}}
	rng := rand.New(rand.NewPCG(3, 3))
	require.NoError(t, p.b.DiskFault(device.FaultWrite, 0, 0))
	for range 300 {
		m.write(t, p.a, rng)
	}
	eventually(t, "b Diskless", func() bool { return p.b.DiskState() == DiskDiskless })
	eventually(t, "a sees b Diskless", func() bool {
		return p.a.Status().Connections[0].PeerDevices[0].PeerDiskState == "Diskless"
	})
	require.Equal(t, DiskUpToDate, p.a.DiskState())
	require.True(t, p.called("b", "local-io-error"))
	require.ErrorIs(t, p.b.Primary(true), ErrNoUpToDate, "a Diskless node is never promoted, not even forced")
	may, _ := p.b.Promotion()
	require.False(t, may)
	require.NoError(t, p.a.Flush())

	p.replaceDisk(p.imgB, "b")
	stop := make(chan struct{})
	wg := writeLoad(t, m, p.a, 4, stop)
	require.NoError(t, p.b.Attach())
	eventually(t, "b UpToDate again", func() bool { return p.b.DiskState() == DiskUpToDate })
	close(stop)
	wg.Wait()
	p.waitSynced(p.a)
	require.NoError(t, p.a.Flush())
	m.check(t, p.a)
	p.sameData()
}

// TestDisklessPrimaryWithoutPeer: on-no-data-accessible io-error fails I/O
// of a Diskless Primary whose peer is gone; suspend-io holds it until the
// peer is back, then it succeeds.
func TestDisklessPrimaryWithoutPeer(t *testing.T) {
	t.Run("io-error", func(t *testing.T) {
		p := newDiskPair(t, "")
		require.NoError(t, p.a.DiskFault(device.FaultRW, 0, 0))
		buf := make([]byte, 4096)
		require.NoError(t, p.a.ReadAt(buf, 0))
		require.Equal(t, DiskDiskless, p.a.DiskState())
		p.net.Partition("a:1", "b:1")
		eventually(t, "link down", func() bool { return p.a.sess.Load() == nil })
		err := p.a.ReadAt(buf, 0)
		require.ErrorIs(t, err, ErrNoData)
		require.True(t, errors.Is(err, syscall.EIO))
		require.ErrorIs(t, p.a.WriteAt(buf, 0, false), ErrNoData)
		require.ErrorIs(t, p.a.Flush(), ErrNoData)
	})
	t.Run("suspend-io", func(t *testing.T) {
		p := newDiskPair(t, "on-no-data-accessible suspend-io;")
		require.NoError(t, p.a.DiskFault(device.FaultRW, 0, 0))
		data := bytes.Repeat([]byte{7}, 4096)
		require.NoError(t, p.a.WriteAt(data, 0, false))
		require.Equal(t, DiskDiskless, p.a.DiskState())
		p.net.Partition("a:1", "b:1")
		eventually(t, "link down", func() bool { return p.a.sess.Load() == nil })
		done := make(chan error, 1)
		go func() { done <- p.a.WriteAt(bytes.Repeat([]byte{8}, 4096), 0, false) }()
		select {
		case err := <-done:
			t.Fatalf("write answered without a peer: %v", err)
		case <-time.After(300 * time.Millisecond):
		}
		require.Equal(t, "no-data", p.a.Status().SuspendedReason)
		p.net.Heal("a:1", "b:1")
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Fatal("suspended write not resumed after the peer came back")
		}
		buf := make([]byte, 4096)
		require.NoError(t, p.a.ReadAt(buf, 0))
		require.Equal(t, bytes.Repeat([]byte{8}, 4096), buf)
	})
}

// TestDiskPassOn: on-io-error pass_on hands the error to the client and
// keeps the disk attached.
func TestDiskPassOn(t *testing.T) {
	p := newDiskPair(t, "on-io-error pass_on;")
	require.NoError(t, p.a.DiskFault(device.FaultWrite, 0, 4096))
	err := p.a.WriteAt(make([]byte, 4096), 0, false)
	require.True(t, errors.Is(err, syscall.EIO), "%v", err)
	require.Equal(t, DiskUpToDate, p.a.DiskState())
	require.NoError(t, p.a.WriteAt(make([]byte, 4096), 4096, false))
	require.False(t, p.called("a", "local-io-error"))
}

// TestDetachVerb: the operator's detach, refused on a Primary whose peer
// is away unless forced.
func TestDetachVerb(t *testing.T) {
	p := newDiskPair(t, "")
	p.net.Partition("a:1", "b:1")
	eventually(t, "link down", func() bool { return p.a.sess.Load() == nil })
	require.ErrorIs(t, p.a.Detach(false), ErrNoUpToDate)
	p.net.Heal("a:1", "b:1")
	p.waitSynced(p.a)
	eventually(t, "peer UpToDate", p.a.peerUpToDate)
	require.NoError(t, p.a.Detach(false))
	require.Equal(t, DiskDiskless, p.a.DiskState())
	require.Contains(t, p.a.Status().Devices[0].DiskReason, "operator")
	require.NoError(t, p.a.WriteAt(make([]byte, 4096), 0, false))
}

// TestDisklessPrimaryHandsOver: a Diskless Primary (auto-failover, a
// witness) whose peer link breaks has no data left to serve: it demotes
// and releases the witness lease, and the peer, which holds every answered
// write, takes over. Without the demotion the witness would keep the peer
// from promoting for as long as the Diskless node renews its lease.
func TestDisklessPrimaryHandsOver(t *testing.T) {
	p := newFoPair(t, "", foOptions, "", true, func(p *foPair) { p.inject = true })
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	eventually(t, "both nodes known to the witness", func() bool {
		return p.a.Status().Witness == "connected" && p.b.Status().Witness == "connected"
	})
	time.Sleep(3 * time.Second) // the fresh witness's warm-up
	m := &diskModel{blocks: map[int64][]byte{}}
	rng := rand.New(rand.NewPCG(5, 5))
	require.NoError(t, p.a.DiskFault(device.FaultRW, 0, 0))
	for range 100 {
		m.write(t, p.a, rng)
	}
	require.Equal(t, DiskDiskless, p.a.DiskState())
	p.net.Partition("a:1", "b:1") // the witness still sees both
	eventually(t, "b promoted", func() bool { return p.b.Role() == RolePrimary })
	require.Equal(t, RoleSecondary, p.a.Role())
	m.check(t, p.b) // every write a answered is on b
}

// TestAttachResyncSurvivesLinkLoss: the link breaks in the middle of an
// attaching Primary's resync (its I/O fails then: its disk is
// Inconsistent); after it heals the resync resumes as a handshake resync
// into the Primary, and the replicas converge with every answered write in
// place.
func TestAttachResyncSurvivesLinkLoss(t *testing.T) {
	p := newDiskPair(t, "resync-rate 4M;")
	m := &diskModel{blocks: map[int64][]byte{}}
	rng := rand.New(rand.NewPCG(11, 11))
	for range 100 {
		m.write(t, p.a, rng)
	}
	require.NoError(t, p.a.DiskFault(device.FaultWrite, 0, 0))
	m.write(t, p.a, rng)
	require.Equal(t, DiskDiskless, p.a.DiskState())
	p.replaceDisk(p.imgA, "a")
	require.NoError(t, p.a.Attach())
	time.Sleep(time.Second) // a quarter of the 16 MiB at 4M/s
	require.Equal(t, ReplSyncTarget, p.a.ReplState())
	p.net.Partition("a:1", "b:1")
	eventually(t, "link down", func() bool { return p.a.sess.Load() == nil })
	// Inconsistent without its peer: no write is answered (io-error), and
	// blocks not yet copied cannot be read.
	require.ErrorIs(t, p.a.WriteAt(make([]byte, 4096), 0, false), ErrNoData)
	require.ErrorIs(t, p.a.ReadAt(make([]byte, 4096), 15<<20), ErrNoData)
	p.net.Heal("a:1", "b:1")
	eventually(t, "reconnected", func() bool { return p.a.peerUpToDate() })
	for range 50 {
		m.write(t, p.a, rng)
	}
	eventually(t, "a UpToDate again", func() bool { return p.a.DiskState() == DiskUpToDate })
	p.waitSynced(p.a)
	p.waitSynced(p.b)
	require.NoError(t, p.a.Flush())
	m.check(t, p.a)
	p.sameData()
}

// TestAttachLargerDisk: the replacement disk is larger than the device
// (a bigger disk, or the full-size disk of a pair that was shrunk): attach
// keeps the device's size, and a restart of the node opens that size and
// reconnects without a size mismatch.
func TestAttachLargerDisk(t *testing.T) {
	p := newDiskPair(t, "")
	m := &diskModel{blocks: map[int64][]byte{}}
	rng := rand.New(rand.NewPCG(12, 12))
	for range 50 {
		m.write(t, p.a, rng)
	}
	require.NoError(t, p.b.DiskFault(device.FaultWrite, 0, 0))
	m.write(t, p.a, rng)
	eventually(t, "b Diskless", func() bool { return p.b.DiskState() == DiskDiskless })
	size := p.b.size.Load()
	require.NoError(t, os.Truncate(p.imgB, 0))
	require.NoError(t, os.Truncate(p.imgB, 2*pairSize))
	_, err := createMetadata(p.res, "b", true, nil)
	require.NoError(t, err)
	require.NoError(t, p.b.Attach())
	eventually(t, "b UpToDate again", func() bool { return p.b.DiskState() == DiskUpToDate })
	require.Equal(t, size, p.b.size.Load())
	require.Equal(t, size, p.b.b().meta.Layout().DataSize, "the new disk's metadata holds the device's size")
	for range 20 {
		m.write(t, p.a, rng)
	}
	p.waitSynced(p.a)
	require.NoError(t, p.a.Flush())
	p.sameData()

	require.NoError(t, p.b.Down(false))
	p.b = p.up("b")
	require.Equal(t, size, p.b.size.Load())
	p.waitSynced(p.a)
	eventually(t, "b UpToDate after the restart", func() bool { return p.b.DiskState() == DiskUpToDate })
	m.check(t, p.a)
}
