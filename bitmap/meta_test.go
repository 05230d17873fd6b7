package bitmap

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/device"
)

var errInjected = errors.New("injected I/O error")

// faultDevice wraps a device.Memory and, when armed, tears the next write:
// only the bytes selected by keep reach the device (made durable, as a power
// failure in the middle of the write would leave them), and the write fails.
// failFlush makes every Flush fail instead.
type faultDevice struct {
	*device.Memory
	mu        sync.Mutex
	armed     bool
	keep      func(p []byte, off int64) [][2]int // byte ranges of p that land
	failFlush bool
	writes    int
}

func (d *faultDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.writes++
	if !d.armed {
		return d.Memory.WriteAt(p, off)
	}
	d.armed = false
	for _, r := range d.keep(p, off) {
		if _, err := d.Memory.WriteAt(p[r[0]:r[1]], off+int64(r[0])); err != nil {
			return 0, err
		}
	}
	if err := d.Memory.Flush(); err != nil {
		return 0, err
	}
	return 0, errInjected
}

func (d *faultDevice) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failFlush {
		return errInjected
	}
	return d.Memory.Flush()
}

func (d *faultDevice) tearNext(keep func(p []byte, off int64) [][2]int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.armed, d.keep = true, keep
}

func newMeta(t *testing.T, size int64) (*device.Memory, Layout, *Meta) {
	t.Helper()
	mem := device.NewMemory(size)
	lay, err := InternalLayout(size, 0)
	require.NoError(t, err)
	m, err := Create(mem, lay, Superblock{Resource: "r0", NodeID: 1}, false)
	require.NoError(t, err)
	return mem, lay, m
}

func TestCreateOpen(t *testing.T) {
	mem, lay, m := newMeta(t, 16*mib)
	sb := m.Superblock()
	require.Equal(t, uint64(1), sb.Seq)
	require.Equal(t, "r0", sb.Resource)
	require.Equal(t, uint32(1), sb.NodeID)
	require.Equal(t, lay.DataSize, sb.DataSize)
	require.Equal(t, uint32(4096), sb.LogicalBlockSize)
	require.Equal(t, uint32(DefaultALSlots), sb.ALSlots)
	require.NotEqual(t, [16]byte{}, sb.MDUUID)
	require.Zero(t, sb.Current)
	require.Zero(t, sb.Bitmap)
	require.Zero(t, sb.History)
	require.Zero(t, sb.Flags)
	require.Equal(t, lay, m.Layout())

	// Durable: survives a crash right after Create.
	mem.Crash()
	m2, err := Open(mem, lay)
	require.NoError(t, err)
	require.Equal(t, sb, m2.Superblock())
	require.NoError(t, m2.Check("r0", 1, lay.DataSize))

	// Slot 1 is zero, the whole metadata area but slot 0 is zero.
	buf := make([]byte, lay.MDSize-2*SuperblockSize)
	_, err = mem.ReadAt(buf, lay.MDOffset)
	require.NoError(t, err)
	require.Equal(t, make([]byte, len(buf)), buf)
	buf = make([]byte, SuperblockSize)
	_, err = mem.ReadAt(buf, lay.SBOffset[1])
	require.NoError(t, err)
	require.Equal(t, make([]byte, len(buf)), buf)
}

func TestCreateExternal(t *testing.T) {
	meta := device.NewMemory(mib)
	lay, err := ExternalLayout(64*mib, meta.Size(), 0)
	require.NoError(t, err)
	m, err := Create(meta, lay, Superblock{Resource: "ext", NodeID: 0, LogicalBlockSize: 512}, false)
	require.NoError(t, err)
	require.Equal(t, uint32(512), m.Superblock().LogicalBlockSize)
	m2, err := Open(meta, lay)
	require.NoError(t, err)
	require.Equal(t, m.Superblock(), m2.Superblock())
}

func TestCreateRefusesExisting(t *testing.T) {
	mem, lay, m := newMeta(t, 16*mib)
	old := m.Superblock()
	_, err := Create(mem, lay, Superblock{Resource: "r1", NodeID: 2}, false)
	require.ErrorIs(t, err, ErrExists)
	require.Contains(t, err.Error(), "valid metadata for resource r0 (node-id 1) already present")
	require.Contains(t, err.Error(), "use --force to overwrite")
	m2, err := Open(mem, lay)
	require.NoError(t, err)
	require.Equal(t, old, m2.Superblock(), "refused create left the metadata alone")

	// Only slot 1 valid (slot 0 torn): still refused.
	require.NoError(t, m.Update(func(s *Superblock) { s.Current = 7 }))
	_, err = mem.WriteAt(make([]byte, 100), lay.SBOffset[0]+200)
	require.NoError(t, err)
	_, err = Create(mem, lay, Superblock{Resource: "r1", NodeID: 2}, false)
	require.ErrorIs(t, err, ErrExists)

	// Forced: new metadata, new UUID, old bitmap gone.
	b, err := m.ReadBitmap()
	require.NoError(t, err)
	b.SetAll()
	require.NoError(t, m.WriteBitmap(b))
	m3, err := Create(mem, lay, Superblock{Resource: "r1", NodeID: 2}, true)
	require.NoError(t, err)
	require.NotEqual(t, old.MDUUID, m3.Superblock().MDUUID)
	m4, err := Open(mem, lay)
	require.NoError(t, err)
	require.Equal(t, "r1", m4.Superblock().Resource)
	require.Equal(t, uint64(1), m4.Superblock().Seq, "the old seq-2 slot is gone")
	b, err = m4.ReadBitmap()
	require.NoError(t, err)
	require.Zero(t, b.Count())
}

func TestCreateRefusesNewerFormat(t *testing.T) {
	mem, lay, _ := newMeta(t, 16*mib)
	writeVersion2(t, mem, lay.SBOffset[1])
	_, err := Create(mem, lay, Superblock{Resource: "r0", NodeID: 1}, false)
	require.ErrorIs(t, err, ErrExists)
	_, err = Open(mem, lay)
	require.ErrorIs(t, err, ErrVersion, "never roll back to the older slot")
}

func writeVersion2(t *testing.T, mem *device.Memory, off int64) {
	sb := sampleSuperblock()
	b, err := sb.MarshalBinary()
	require.NoError(t, err)
	b[offVersion+3] = 2
	reseal(b)
	_, err = mem.WriteAt(b, off)
	require.NoError(t, err)
}

func TestCreateRefusesBadInput(t *testing.T) {
	mem := device.NewMemory(16 * mib)
	lay, err := InternalLayout(mem.Size(), 0)
	require.NoError(t, err)
	for _, sb := range []Superblock{{}, {Resource: "r\n"}, {Resource: "r", LogicalBlockSize: 1000}} {
		_, err := Create(mem, lay, sb, false)
		require.ErrorIs(t, err, ErrInvalid)
	}
	big, err := InternalLayout(32*mib, 0)
	require.NoError(t, err)
	_, err = Create(mem, big, Superblock{Resource: "r"}, false)
	require.ErrorIs(t, err, ErrInvalid)
	_, err = Open(mem, big)
	require.ErrorIs(t, err, ErrInvalid)
	require.Equal(t, make([]byte, mem.Size()), readAll(t, mem), "nothing written")
}

func readAll(t *testing.T, d device.Device) []byte {
	b := make([]byte, d.Size())
	_, err := d.ReadAt(b, 0)
	require.NoError(t, err)
	return b
}

func TestOpenNoMetadata(t *testing.T) {
	mem := device.NewMemory(16 * mib)
	lay, err := InternalLayout(mem.Size(), 0)
	require.NoError(t, err)
	_, err = Open(mem, lay)
	require.ErrorIs(t, err, ErrNoMetadata)
	require.Contains(t, err.Error(), "create-md")
}

func TestOpenWrongLayout(t *testing.T) {
	mem, lay, _ := newMeta(t, 16*mib)
	// Same superblock place, other granularity: a different area.
	lay8k, err := InternalLayout(mem.Size(), 8192)
	require.NoError(t, err)
	require.Equal(t, lay.SBOffset, lay8k.SBOffset)
	_, err = Open(mem, lay8k)
	require.ErrorIs(t, err, ErrWrongSize)

	// External metadata opened for a data device of another size.
	meta := device.NewMemory(mib)
	ext, err := ExternalLayout(64*mib, meta.Size(), 0)
	require.NoError(t, err)
	_, err = Create(meta, ext, Superblock{Resource: "r0"}, false)
	require.NoError(t, err)
	ext2, err := ExternalLayout(32*mib, meta.Size(), 0)
	require.NoError(t, err)
	_, err = Open(meta, ext2)
	require.ErrorIs(t, err, ErrWrongSize)
	require.Contains(t, err.Error(), "metadata is for a device of 67108864 bytes but the backing device now gives 33554432")
}

func TestCheck(t *testing.T) {
	_, lay, m := newMeta(t, 16*mib)
	require.NoError(t, m.Check("r0", 1, lay.DataSize))

	err := m.Check("r9", 1, lay.DataSize)
	require.ErrorIs(t, err, ErrWrongResource)
	require.Contains(t, err.Error(), "metadata belongs to resource r0, not r9: run create-md for r9 (with --force to overwrite)")

	err = m.Check("r0", 2, lay.DataSize)
	require.ErrorIs(t, err, ErrWrongNode)
	require.Contains(t, err.Error(), "node-id 1, not 2")
	require.ErrorIs(t, m.Check("r0", -1, lay.DataSize), ErrWrongNode)
	require.ErrorIs(t, m.Check("r0", 1<<32+1, lay.DataSize), ErrWrongNode)

	err = m.Check("r0", 1, lay.DataSize+BlockSize)
	require.ErrorIs(t, err, ErrWrongSize)
	require.Contains(t, err.Error(), "but the backing device now gives")
}

func TestUpdate(t *testing.T) {
	mem, lay, m := newMeta(t, 16*mib)
	for i := range 5 {
		require.NoError(t, m.Update(func(s *Superblock) {
			s.History[1], s.History[0] = s.History[0], s.Current
			s.Current = uint64(100 + i)
			s.Flags |= FlagConsistent
		}))
		sb := m.Superblock()
		require.Equal(t, uint64(i+2), sb.Seq)
		mem.Crash() // Update flushed
		m2, err := Open(mem, lay)
		require.NoError(t, err)
		require.Equal(t, sb, m2.Superblock())
	}
	sb := m.Superblock()
	require.Equal(t, [2]uint64{103, 102}, sb.History)

	// Fixed fields are refused; nothing written.
	for _, fn := range []func(*Superblock){
		func(s *Superblock) { s.Seq = 99 },
		func(s *Superblock) { s.MDUUID[0]++ },
		func(s *Superblock) { s.DataSize += BlockSize },
		func(s *Superblock) { s.Granularity = 8192 },
	} {
		require.ErrorIs(t, m.Update(fn), ErrInvalid)
	}
	require.ErrorIs(t, m.Update(func(s *Superblock) { s.Flags = 1 << 30 }), ErrInvalid)
	require.ErrorIs(t, m.Update(func(s *Superblock) { s.Resource = "" }), ErrInvalid)
	require.Equal(t, sb, m.Superblock())
}

// A write that fails or tears leaves the in-memory superblock as it was,
// and Open returns either the old or the new superblock, never garbage.
func TestUpdateTornWrite(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))

	prefix := func(n int) func([]byte, int64) [][2]int {
		return func(p []byte, _ int64) [][2]int { return [][2]int{{0, min(n, len(p))}} }
	}
	suffix := func(n int) func([]byte, int64) [][2]int {
		return func(p []byte, _ int64) [][2]int { return [][2]int{{len(p) - min(n, len(p)), len(p)}} }
	}
	randomSectors := func(p []byte, _ int64) [][2]int {
		var out [][2]int
		for s := 0; s < len(p); s += 512 {
			if r.IntN(2) == 0 {
				out = append(out, [2]int{s, min(s+512, len(p))})
			}
		}
		return out
	}
	tears := []func([]byte, int64) [][2]int{randomSectors, randomSectors, randomSectors}
	for _, n := range []int{0, 1, 7, 8, 9, 100, 512, 2048, 4087, 4088, 4095, 4096} {
		tears = append(tears, prefix(n), suffix(n))
	}

	for i, tear := range tears {
		mem := device.NewMemory(2 * mib)
		fd := &faultDevice{Memory: mem}
		lay, err := InternalLayout(mem.Size(), 0)
		require.NoError(t, err)
		m, err := Create(fd, lay, Superblock{Resource: "r0", NodeID: 1}, false)
		require.NoError(t, err)
		steps := 1 + r.IntN(3)
		for range steps {
			require.NoError(t, m.Update(func(s *Superblock) { s.Current = r.Uint64() }))
		}
		old := m.Superblock()
		var want Superblock

		fd.tearNext(tear)
		err = m.Update(func(s *Superblock) {
			s.Current, s.Flags = 0xfeed, FlagPrimaryInd
			want = *s
		})
		want.Seq = old.Seq + 1
		require.ErrorIs(t, err, errInjected, "tear %d", i)
		require.Equal(t, old, m.Superblock(), "tear %d: in-memory copy unchanged", i)

		mem.Crash()
		m2, err := Open(mem, lay)
		require.NoError(t, err, "tear %d", i)
		got := m2.Superblock()
		if got != old {
			require.Equal(t, want, got, "tear %d: neither old nor new", i)
		}

		// The handle that saw the error keeps working.
		require.NoError(t, m.Update(func(s *Superblock) { s.Bitmap = 5 }))
		m3, err := Open(mem, lay)
		require.NoError(t, err)
		require.Equal(t, m.Superblock(), m3.Superblock())
		require.Equal(t, uint64(5), m3.Superblock().Bitmap)
	}
}

func TestUpdateFlushError(t *testing.T) {
	mem := device.NewMemory(16 * mib)
	fd := &faultDevice{Memory: mem}
	lay, err := InternalLayout(mem.Size(), 0)
	require.NoError(t, err)
	m, err := Create(fd, lay, Superblock{Resource: "r0", NodeID: 1}, false)
	require.NoError(t, err)
	old := m.Superblock()
	fd.failFlush = true
	err = m.Update(func(s *Superblock) { s.Current = 9 })
	require.ErrorIs(t, err, errInjected)
	require.Contains(t, err.Error(), "flush")
	require.Equal(t, old, m.Superblock())
	mem.Crash()
	m2, err := Open(mem, lay)
	require.NoError(t, err)
	require.Equal(t, old, m2.Superblock())

	b, err := New(lay.DataSize, lay.Granularity)
	require.NoError(t, err)
	require.ErrorIs(t, m.WriteBitmap(b), errInjected)
}

// Corrupting either slot makes Open use the other; corrupting both is
// ErrCorrupt naming both slots.
func TestOpenCorruptSlots(t *testing.T) {
	mem, lay, m := newMeta(t, 16*mib)
	sb1 := m.Superblock()
	require.NoError(t, m.Update(func(s *Superblock) { s.Current = 77 }))
	sb2 := m.Superblock() // in slot 1
	pristine := readAll(t, mem)

	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 2))
	flip := func(slot int, i int) {
		var b [1]byte
		off := lay.SBOffset[slot] + int64(i)
		_, err := mem.ReadAt(b[:], off)
		require.NoError(t, err)
		b[0] ^= byte(1 + r.IntN(255))
		_, err = mem.WriteAt(b[:], off)
		require.NoError(t, err)
	}
	restore := func() {
		for _, off := range lay.SBOffset {
			_, err := mem.WriteAt(pristine[off:off+SuperblockSize], off)
			require.NoError(t, err)
		}
	}
	for i := range SuperblockSize {
		flip(1, i)
		m2, err := Open(mem, lay)
		require.NoError(t, err, "byte %d of slot 1", i)
		require.Equal(t, sb1, m2.Superblock(), "byte %d of slot 1", i)
		restore()

		flip(0, i)
		m2, err = Open(mem, lay)
		require.NoError(t, err, "byte %d of slot 0", i)
		require.Equal(t, sb2, m2.Superblock(), "byte %d of slot 0", i)
		restore()
	}
	for _, i := range []int{8, 100, 4095, r.IntN(SuperblockSize-8) + 8} {
		flip(0, i)
		flip(1, i)
		_, err := Open(mem, lay)
		require.ErrorIs(t, err, ErrCorrupt, "byte %d", i)
		require.Contains(t, err.Error(), "slot 0")
		require.Contains(t, err.Error(), "slot 1")
		restore()
	}
	// Magic gone in both: no metadata.
	flip(0, 0)
	flip(1, 3)
	_, err := Open(mem, lay)
	require.ErrorIs(t, err, ErrNoMetadata)
}

func TestBitmapOnDisk(t *testing.T) {
	mem, lay, m := newMeta(t, 64*mib)
	b, err := m.ReadBitmap()
	require.NoError(t, err)
	require.Zero(t, b.Count())
	require.Equal(t, lay.DataSize, b.DataSize())
	b.SetRange(0, 1)
	b.SetRange(lay.DataSize-1, 1)
	b.SetRange(5*mib+100, 3*mib)
	require.NoError(t, m.WriteBitmap(b))
	mem.Crash()
	m2, err := Open(mem, lay)
	require.NoError(t, err)
	got, err := m2.ReadBitmap()
	require.NoError(t, err)
	require.Equal(t, b.Count(), got.Count())
	bw, _ := b.MarshalBinary()
	gw, _ := got.MarshalBinary()
	require.Equal(t, bw, gw)

	other, err := New(lay.DataSize+BlockSize, lay.Granularity)
	require.NoError(t, err)
	require.ErrorIs(t, m.WriteBitmap(other), ErrInvalid)

	// Garbage in the padding of the area is corruption.
	_, err = mem.WriteAt([]byte{1}, lay.BitmapOffset+lay.BitmapSize-1)
	require.NoError(t, err)
	_, err = m.ReadBitmap()
	require.ErrorIs(t, err, ErrCorrupt)
}

func TestMetaConcurrent(t *testing.T) {
	_, lay, m := newMeta(t, 2*mib)
	b, err := m.ReadBitmap()
	require.NoError(t, err)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 25 {
				require.NoError(t, m.Update(func(s *Superblock) { s.Current++ }))
				_ = m.Superblock()
				b.SetRange(int64(g*i)*BlockSize, BlockSize)
				if i%10 == 0 {
					require.NoError(t, m.WriteBitmap(b))
				}
			}
		})
	}
	wg.Wait()
	sb := m.Superblock()
	require.Equal(t, uint64(200), sb.Current)
	require.Equal(t, uint64(201), sb.Seq)
	m2, err := Open(m.md, lay)
	require.NoError(t, err)
	require.Equal(t, sb, m2.Superblock())
}

// WriteBitmapRange writes the blocks holding a range's bits and only those.
func TestWriteBitmapRange(t *testing.T) {
	_, lay, m := newMeta(t, 1<<30)
	b, err := New(lay.DataSize, lay.Granularity)
	require.NoError(t, err)
	b.SetRange(0, 4096)                 // bit 0, first bitmap block
	b.SetRange(lay.DataSize-4096, 4096) // last bit, last bitmap block
	b.SetRange(512<<20, 8<<20)          // an extent in the middle
	require.NoError(t, m.WriteBitmapRange(b, 512<<20, 4<<20))
	got, err := m.ReadBitmap()
	require.NoError(t, err)
	// Only the middle range's block was written.
	require.False(t, got.Test(0))
	require.False(t, got.Test(lay.DataSize-4096))
	require.Equal(t, int64(2048), got.CountRange(512<<20, 8<<20)) // its 4 KiB block holds all 8 MiB
	require.NoError(t, m.WriteBitmapRange(b, 0, lay.DataSize))
	got, err = m.ReadBitmap()
	require.NoError(t, err)
	require.Equal(t, b.Count(), got.Count())
	require.Equal(t, int64(2), m.BitmapWrites())
}

// TestDetachWritesNothing: after Detach (the disk failed) updates change
// only memory and bitmap writes are dropped; the device is untouched.
func TestDetachWritesNothing(t *testing.T) {
	mem, lay, m := newMeta(t, 16*mib)
	before := make([]byte, mem.Size())
	_, err := mem.ReadAt(before, 0)
	require.NoError(t, err)
	m.Detach()
	require.NoError(t, m.Update(func(sb *Superblock) { sb.Current = 42 }))
	require.EqualValues(t, 42, m.Superblock().Current)
	b, err := New(lay.DataSize, lay.Granularity)
	require.NoError(t, err)
	b.SetAll()
	require.NoError(t, m.WriteBitmap(b))
	require.NoError(t, m.WriteBitmapRange(b, 0, 4096))
	after := make([]byte, mem.Size())
	_, err = mem.ReadAt(after, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(before, after), "the metadata device changed after Detach")
}
