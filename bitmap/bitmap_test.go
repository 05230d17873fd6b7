package bitmap

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// model is the obvious bitmap: one bool per block.
type model struct {
	size, g int64
	bits    []bool
}

func newModel(size, g int64) *model {
	return &model{size: size, g: g, bits: make([]bool, (size+g-1)/g)}
}

func (m *model) set(off, length int64) {
	for i := range m.bits {
		lo, hi := int64(i)*m.g, min(int64(i+1)*m.g, m.size)
		if off < hi && off+length > lo && length > 0 {
			m.bits[i] = true
		}
	}
}

func (m *model) clear(off, length int64) {
	for i := range m.bits {
		lo, hi := int64(i)*m.g, min(int64(i+1)*m.g, m.size)
		if length > 0 && off <= lo && off+length >= hi {
			m.bits[i] = false
		}
	}
}

func (m *model) requireEqual(t *testing.T, b *Bitmap, what string) {
	t.Helper()
	var count, bytes int64
	for i, set := range m.bits {
		require.Equal(t, set, b.TestBit(int64(i)), "%s: bit %d", what, i)
		lo, hi := int64(i)*m.g, min(int64(i+1)*m.g, m.size)
		require.Equal(t, set, b.Test(lo), "%s: offset %d", what, lo)
		require.Equal(t, set, b.Test(hi-1), "%s: offset %d", what, hi-1)
		if set {
			count++
			bytes += hi - lo
		}
	}
	require.Equal(t, count, b.Count(), what)
	require.Equal(t, bytes, b.Bytes(), what)
	// NextSet walks exactly the set bits.
	var walked []int64
	for i, ok := b.NextSet(0); ok; i, ok = b.NextSet(i + 1) {
		walked = append(walked, i)
	}
	var want []int64
	for i, set := range m.bits {
		if set {
			want = append(want, int64(i))
		}
	}
	require.Equal(t, want, walked, what)
}

func TestBitmapAgainstModel(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 3))
	for round := range 40 {
		g := int64(MinGranularity) << r.IntN(8)
		// Sizes that end mid-block and mid-word; a few tiny ones.
		size := int64(r.IntN(300))*BlockSize + int64(r.IntN(2))*int64(r.IntN(int(g)))
		b, err := New(size, g)
		require.NoError(t, err)
		m := newModel(size, g)
		require.Equal(t, int64(len(m.bits)), b.Len())
		for op := range 200 {
			off := r.Int64N(size+2*g+1) - g
			length := r.Int64N(size/2+3*g+1) - g/4
			switch r.IntN(3) {
			case 0, 1:
				b.SetRange(off, length)
				m.set(off, length)
			case 2:
				b.ClearRange(off, length)
				m.clear(off, length)
			}
			if op%20 == 0 {
				m.requireEqual(t, b, fmt.Sprintf("round %d op %d (g %d size %d)", round, op, g, size))
			}
		}
		m.requireEqual(t, b, "end")
	}
}

func TestBitmapWordBoundaries(t *testing.T) {
	const g = 4096
	b, err := New(200*g, g)
	require.NoError(t, err)
	b.SetRange(63*g, 2*g) // bits 63, 64
	require.True(t, b.TestBit(63))
	require.True(t, b.TestBit(64))
	require.Equal(t, int64(2), b.Count())
	b.SetRange(0, 128*g) // two whole words
	require.Equal(t, int64(128), b.Count())
	b.ClearRange(1, 128*g) // bit 0 only partly covered: stays set
	require.Equal(t, int64(1), b.Count())
	require.True(t, b.TestBit(0))
	b.SetRange(10*g+1, 1) // one byte: the whole block
	require.True(t, b.Test(10*g))
	b.ClearRange(10*g, g-1) // all but one byte: stays
	require.True(t, b.Test(10*g))
	b.ClearRange(10*g, g)
	require.False(t, b.Test(10*g))
	i, ok := b.NextSet(1)
	require.False(t, ok, "got %d", i)
	i, ok = b.NextSet(-5)
	require.True(t, ok)
	require.Zero(t, i)
	_, ok = b.NextSet(200)
	require.False(t, ok)
}

func TestBitmapPartialLastBlock(t *testing.T) {
	const g = 64 * 1024
	size := int64(10*g + 3*BlockSize) // last block is 12 KiB
	b, err := New(size, g)
	require.NoError(t, err)
	require.Equal(t, int64(11), b.Len())
	b.SetRange(size-1, 100) // past the end: clamped
	require.True(t, b.TestBit(10))
	require.Equal(t, int64(1), b.Count())
	require.Equal(t, int64(3*BlockSize), b.Bytes(), "partial block counts its real size")
	require.False(t, b.Test(size), "outside the data")
	// A range reaching the end of the data covers the short last block.
	b.ClearRange(10*g, 3*BlockSize)
	require.Zero(t, b.Count())
	b.SetAll()
	require.Equal(t, int64(11), b.Count())
	require.Equal(t, size, b.Bytes())
	b.ClearRange(10*g, math.MaxInt64)
	require.Equal(t, int64(10), b.Count())
	b.ClearAll()
	require.Zero(t, b.Count())
}

func TestBitmapOutOfRange(t *testing.T) {
	b, err := New(mib, 0)
	require.NoError(t, err)
	require.Equal(t, int64(DefaultGranularity), b.Granularity())
	for _, r := range [][2]int64{
		{-1, 1}, {mib, 1}, {math.MaxInt64, math.MaxInt64}, {math.MinInt64, 1}, {0, 0}, {0, -5}, {math.MinInt64, math.MaxInt64},
	} {
		b.SetRange(r[0], r[1])
		require.Zero(t, b.Count(), "%v", r)
	}
	b.SetRange(-100, 101)
	require.True(t, b.TestBit(0))
	b.SetRange(mib-1, math.MaxInt64)
	require.True(t, b.TestBit(b.Len()-1))
	require.Equal(t, int64(2), b.Count())
	b.ClearRange(math.MinInt64, math.MaxInt64) // ends before 0
	require.Equal(t, int64(2), b.Count())
	b.ClearRange(-1, math.MaxInt64)
	require.Zero(t, b.Count())
	require.False(t, b.TestBit(-1))
	require.False(t, b.TestBit(b.Len()))

	_, err = New(-1, 0)
	require.ErrorIs(t, err, ErrInvalid)
	_, err = New(mib, 1000)
	require.ErrorIs(t, err, ErrInvalid)
	empty, err := New(0, 0)
	require.NoError(t, err)
	empty.SetAll()
	require.Zero(t, empty.Count())
	require.Zero(t, empty.Bytes())
	data, err := empty.MarshalBinary()
	require.NoError(t, err)
	require.Empty(t, data)
	require.NoError(t, empty.UnmarshalBinary(nil))
}

func TestBitmapMarshal(t *testing.T) {
	b, err := New(100*BlockSize, BlockSize) // 100 bits: 2 words
	require.NoError(t, err)
	b.SetRange(0, BlockSize)
	b.SetRange(64*BlockSize, BlockSize)
	b.SetRange(99*BlockSize, 1)
	data, err := b.MarshalBinary()
	require.NoError(t, err)
	require.Equal(t, []byte{1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0}, data, "little-endian words")

	c, err := New(100*BlockSize, BlockSize)
	require.NoError(t, err)
	require.NoError(t, c.UnmarshalBinary(append(data, make([]byte, 4080)...)))
	require.Equal(t, int64(3), c.Count())
	require.True(t, c.TestBit(99))

	for name, bad := range map[string][]byte{
		"short":         data[:15],
		"bit past end":  {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0},
		"top bit":       {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80},
		"dirty padding": append(append([]byte(nil), data...), 0, 0, 1),
	} {
		require.ErrorIs(t, c.UnmarshalBinary(bad), ErrCorrupt, name)
		require.Equal(t, int64(3), c.Count(), "%s: unchanged", name)
	}
}

func TestBitmapOrClone(t *testing.T) {
	a, _ := New(mib, 0)
	b, _ := New(mib, 0)
	a.SetRange(0, 10*BlockSize)
	b.SetRange(5*BlockSize, 10*BlockSize)
	c := a.Clone()
	require.NoError(t, c.Or(b))
	require.Equal(t, int64(15), c.Count())
	require.Equal(t, int64(10), a.Count(), "clone is independent")
	require.NoError(t, c.Or(c))
	require.Equal(t, int64(15), c.Count())
	other, _ := New(2*mib, 0)
	require.ErrorIs(t, a.Or(other), ErrInvalid)
	other, _ = New(mib, 8192)
	require.ErrorIs(t, a.Or(other), ErrInvalid)
}

// a.Or(b) and b.Or(a) together neither deadlock nor race.
func TestBitmapConcurrent(t *testing.T) {
	a, _ := New(64*mib, 0)
	b, _ := New(64*mib, 0)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			x, y := a, b
			if g%2 == 1 {
				x, y = b, a
			}
			for i := range 200 {
				x.SetRange(int64(g*1000+i)*BlockSize, BlockSize)
				require.NoError(t, x.Or(y))
				x.ClearRange(int64(g*1000+i)*BlockSize, BlockSize)
				_ = x.Count()
				_, _ = x.NextSet(0)
				_, _ = x.MarshalBinary()
			}
		})
	}
	wg.Wait()
}

func TestWordsOrWordsCountRange(t *testing.T) {
	b, err := New(1<<20+4096*3, 4096) // 259 bits: a partial last word
	if err != nil {
		t.Fatal(err)
	}
	b.SetRange(4096*10, 4096*5)
	w := b.Words()
	c, _ := New(1<<20+4096*3, 4096)
	if err := c.OrWords(0, w); err != nil {
		t.Fatal(err)
	}
	if c.Count() != 5 || c.CountRange(4096*12, 4096*100) != 3 || c.CountRange(0, 4096*10) != 0 {
		t.Fatalf("count %d range %d", c.Count(), c.CountRange(4096*12, 4096*100))
	}
	if err := c.OrWords(4, []uint64{1 << 10}); err == nil {
		t.Fatal("bit beyond Len accepted")
	}
	if err := c.OrWords(5, []uint64{1}); err == nil {
		t.Fatal("words past the end accepted")
	}
}
