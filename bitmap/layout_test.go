package bitmap

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
	gib = int64(1) << 30
)

// requireLayoutSane checks the properties every layout must have.
func requireLayoutSane(t *testing.T, l Layout, backing int64) {
	t.Helper()
	require.Zero(t, l.DataSize%BlockSize)
	require.GreaterOrEqual(t, l.DataSize, int64(MinDataSize))
	require.Equal(t, MDSizeFor(l.DataSize, l.Granularity), l.MDSize)
	require.Equal(t, l.MDSize, 2*SuperblockSize+l.ALSize+l.BitmapSize)
	require.Equal(t, int64(DefaultALSlots*BlockSize), l.ALSize)
	// Enough bits, in whole 4 KiB blocks.
	require.Zero(t, l.BitmapSize%BlockSize)
	nbits := (l.DataSize-1)/l.Granularity + 1
	require.GreaterOrEqual(t, l.BitmapSize*8, nbits)
	require.Less(t, (l.BitmapSize-BlockSize)*8, nbits)
	// Parts tile the metadata area without overlap.
	parts := [][2]int64{{l.SBOffset[0], SuperblockSize}, {l.SBOffset[1], SuperblockSize}, {l.ALOffset, l.ALSize}, {l.BitmapOffset, l.BitmapSize}}
	var sum int64
	for i, p := range parts {
		require.GreaterOrEqual(t, p[0], l.MDOffset)
		require.LessOrEqual(t, p[0]+p[1], l.MDOffset+l.MDSize)
		require.Zero(t, p[0]%BlockSize)
		sum += p[1]
		for _, q := range parts[i+1:] {
			require.True(t, p[0]+p[1] <= q[0] || q[0]+q[1] <= p[0], "parts %v and %v overlap", p, q)
		}
	}
	require.Equal(t, l.MDSize, sum)
	if l.Internal {
		end := backing / BlockSize * BlockSize
		require.LessOrEqual(t, l.DataSize+l.MDSize, backing)
		require.LessOrEqual(t, l.DataSize, l.MDOffset)
		require.Equal(t, end, l.MDOffset+l.MDSize)
		require.Equal(t, [2]int64{end - 8*kib, end - 4*kib}, l.SBOffset, "superblocks are the last 8 KiB")
		// Largest: one more block of data would not fit.
		d := l.DataSize + BlockSize
		require.Greater(t, d, end-MDSizeFor(d, l.Granularity))
	} else {
		require.Zero(t, l.MDOffset)
		require.Equal(t, [2]int64{0, 4 * kib}, l.SBOffset)
	}
	require.NoError(t, l.check(max(backing, l.MDOffset+l.MDSize)))
}

func TestInternalLayout(t *testing.T) {
	for _, size := range []int64{
		MinDataSize + MDSizeFor(MinDataSize, 0), // smallest accepted
		10 * mib, 10*mib + 1, 10*mib + 4095, gib, gib + 12345, 128 * mib, 128*mib + 4096,
		100 * gib, 1 << 40, 3<<40 + 511,
	} {
		l, err := InternalLayout(size, 0)
		require.NoError(t, err, "size %d", size)
		require.True(t, l.Internal)
		require.Equal(t, int64(DefaultGranularity), l.Granularity)
		requireLayoutSane(t, l, size)
	}
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	for range 2000 {
		size := MinDataSize + MDSizeFor(MinDataSize, 0) + r.Int64N(4<<40)
		g := int64(MinGranularity) << r.IntN(10)
		l, err := InternalLayout(size, g)
		require.NoError(t, err, "size %d granularity %d", size, g)
		requireLayoutSane(t, l, size)
	}
}

func TestLayoutBitmapSize(t *testing.T) {
	// 32 KiB of bitmap per GiB at 4 KiB granularity.
	l, err := ExternalLayout(gib, 64*mib, 0)
	require.NoError(t, err)
	require.Equal(t, gib, l.DataSize)
	require.Equal(t, 32*kib, l.BitmapSize)
	require.Equal(t, 8*kib+128*kib+32*kib, l.MDSize)
	requireLayoutSane(t, l, 0)

	l, err = ExternalLayout(1<<40, 64*mib, 0)
	require.NoError(t, err)
	require.Equal(t, 32*mib, l.BitmapSize)

	l, err = ExternalLayout(gib, 64*mib, 64*kib)
	require.NoError(t, err)
	require.Equal(t, 4*kib, l.BitmapSize) // 16384 bits = 2 KiB, rounded up

	l, err = InternalLayout(gib, 0)
	require.NoError(t, err)
	require.Equal(t, 32*kib, l.BitmapSize) // data is a bit under 1 GiB
	require.Equal(t, gib-l.MDSize, l.DataSize)
}

func TestExternalLayout(t *testing.T) {
	l, err := ExternalLayout(10*mib+4095, 1*mib, 0)
	require.NoError(t, err)
	require.False(t, l.Internal)
	require.Equal(t, 10*mib, l.DataSize)
	requireLayoutSane(t, l, 0)

	// The meta device must hold the area; the message says how big.
	need := MDSizeFor(gib, 0)
	_, err = ExternalLayout(gib, need-1, 0)
	require.ErrorIs(t, err, ErrTooSmall)
	require.Contains(t, err.Error(), "at least 172032 bytes")
	_, err = ExternalLayout(gib, need, 0)
	require.NoError(t, err)
}

func TestLayoutTooSmall(t *testing.T) {
	for _, size := range []int64{math.MinInt64, -1, 0, 4096, mib, MinDataSize + MDSizeFor(MinDataSize, 0) - 1} {
		_, err := InternalLayout(size, 0)
		require.ErrorIs(t, err, ErrTooSmall, "size %d", size)
		_, err = ExternalLayout(size-MDSizeFor(MinDataSize, 0), gib, 0)
		require.ErrorIs(t, err, ErrTooSmall, "size %d", size)
	}
	_, err := ExternalLayout(MinDataSize-1, gib, 0)
	require.ErrorIs(t, err, ErrTooSmall)
}

func TestLayoutHuge(t *testing.T) {
	l, err := InternalLayout(math.MaxInt64, 0)
	require.NoError(t, err)
	requireLayoutSane(t, l, math.MaxInt64)
	l, err = ExternalLayout(math.MaxInt64, math.MaxInt64, MaxGranularity)
	require.NoError(t, err)
	requireLayoutSane(t, l, 0)
}

func TestLayoutGranularity(t *testing.T) {
	for _, g := range []int64{-4096, 1, 256, 4095, 4097, 3 * 4096, MaxGranularity * 2} {
		_, err := InternalLayout(gib, g)
		require.ErrorIs(t, err, ErrInvalid, "granularity %d", g)
		_, err = ExternalLayout(gib, gib, g)
		require.ErrorIs(t, err, ErrInvalid, "granularity %d", g)
		require.Zero(t, MDSizeFor(gib, g))
	}
	require.Equal(t, MDSizeFor(gib, DefaultGranularity), MDSizeFor(gib, 0))
	require.Zero(t, MDSizeFor(-1, 0))
}

func TestLayoutCheckRefusesHandBuilt(t *testing.T) {
	l, err := InternalLayout(gib, 0)
	require.NoError(t, err)
	require.NoError(t, l.check(gib))
	require.ErrorIs(t, l.check(gib-BlockSize), ErrInvalid) // device shrank
	bad := l
	bad.SBOffset[1] = bad.SBOffset[0]
	require.ErrorIs(t, bad.check(gib), ErrInvalid)
	bad = l
	bad.DataSize += BlockSize
	require.ErrorIs(t, bad.check(gib), ErrInvalid)
	require.ErrorIs(t, Layout{}.check(gib), ErrInvalid)
}
