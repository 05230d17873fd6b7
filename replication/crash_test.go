package replication

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/bitmap"
	"github.com/twinbd/twinbd/device"
)

// crashDev is a power-failable disk: after crash() every write and flush
// fails (the machine is off) and the contents are what was last flushed.
type crashDev struct {
	mem  *device.Memory
	dead atomic.Bool
}

func (d *crashDev) ReadAt(p []byte, off int64) (int, error) { return d.mem.ReadAt(p, off) }
func (d *crashDev) WriteAt(p []byte, off int64) (int, error) {
	if d.dead.Load() {
		return 0, syscall.EIO
	}
	return d.mem.WriteAt(p, off)
}
func (d *crashDev) Flush() error {
	if d.dead.Load() {
		return syscall.EIO
	}
	return d.mem.Flush()
}
func (d *crashDev) Size() int64  { return d.mem.Size() }
func (d *crashDev) Close() error { return nil }

func (d *crashDev) crash() {
	d.dead.Store(true)
	d.mem.Crash()
}

// reboot returns the same disk, powered on again.
func (d *crashDev) reboot() *crashDev { return &crashDev{mem: d.mem} }

// abandon stops a resource's goroutines without any of Down's clean-up, as
// a process that died would.
func (r *Resource) abandon() {
	if r.stopPeer != nil {
		r.stopPeer()
		<-r.peerDone
		r.tr.Close()
	}
	r.mu.Lock()
	ln := r.ln
	r.down = true
	r.writable.Store(false)
	r.mu.Unlock()
	if ln != nil {
		ln.Close()
		r.server.CloseConnections()
	}
}

// block is a self-identifying 4 KiB block: offset, version, checksum.
func block(off int64, version uint64) []byte {
	b := make([]byte, 4096)
	binary.BigEndian.PutUint64(b[0:], uint64(off))
	binary.BigEndian.PutUint64(b[8:], version)
	for i := 24; i < len(b); i += 8 {
		binary.BigEndian.PutUint64(b[i:], version*uint64(i)^uint64(off))
	}
	binary.BigEndian.PutUint64(b[16:], xxhash.Sum64(b[24:]))
	return b
}

// blockVersion decodes a block: version 0 with ok for never-written
// (all-zero) blocks; !ok for data that was never written by the test.
func blockVersion(b []byte, off int64) (uint64, bool) {
	if isZero(b) {
		return 0, true
	}
	if int64(binary.BigEndian.Uint64(b[0:])) != off || binary.BigEndian.Uint64(b[16:]) != xxhash.Sum64(b[24:]) {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[8:]), true
}

// TestCrashKeepsFlushedWrites: power failure of both nodes at a random
// moment of a write/flush workload. Whichever node comes back and is
// promoted, every write answered before a FLUSH was answered is there (or a
// later write of the same block), and no block holds data never written.
func TestCrashKeepsFlushedWrites(t *testing.T) {
	for round := range 6 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(round), 7))
			mk := func() *crashDev { return &crashDev{mem: device.NewMemory(pairSize)} }
			da, db := mk(), mk()
			p := newPairOn(t, "protocol "+[]string{"A", "B", "C"}[round%3]+";", map[string]device.Device{"a": da, "b": db})
			require.NoError(t, p.a.Primary(true))
			p.waitSynced(p.a)
			blocks := int(p.a.Size()/4096) / 8
			written := map[int64]uint64{} // newest answered version per block
			durable := map[int64]uint64{} // newest version answered before a FLUSH answer
			var version uint64
			n := 200 + rng.IntN(400)
			for i := range n {
				if i%17 == 16 {
					require.NoError(t, p.a.Flush())
					for k, v := range written {
						durable[k] = v
					}
					continue
				}
				off := int64(rng.IntN(blocks)) * 4096
				version++
				require.NoError(t, p.a.WriteAt(block(off, version), off, rng.IntN(10) == 0))
				written[off] = version
			}
			// Power failure of both machines.
			da.crash()
			db.crash()
			p.a.abandon()
			p.b.abandon()
			p.a, p.b = nil, nil

			survivor := []string{"a", "b"}[rng.IntN(2)]
			p.devs = map[string]device.Device{"a": da.reboot(), "b": db.reboot()}
			r := p.up(survivor)
			defer r.Down(true)
			require.NoError(t, r.Primary(true))
			buf := make([]byte, 4096)
			for i := range blocks {
				off := int64(i) * 4096
				require.NoError(t, r.ReadAt(buf, off))
				v, ok := blockVersion(buf, off)
				require.True(t, ok, "block %d on %s holds data that was never written", i, survivor)
				require.GreaterOrEqual(t, v, durable[off], "block %d on %s: version %d, but %d was answered before a FLUSH", i, survivor, v, durable[off])
				require.LessOrEqual(t, v, version)
			}
		})
	}
}

func bitmapFlagCrashedPrimary() bitmap.Flags { return bitmap.FlagCrashedPrimary }
