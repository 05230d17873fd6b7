package bitmap

import (
	"errors"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzALRecover: OpenActivityLog over arbitrary AL-area bytes never panics
// and fails only with ErrCorrupt, ErrVersion or ErrWrongSize; what it
// recovers is a sorted set of extents of the data area that fits one slot;
// and the opened log still works: a Begin is logged and recovered on reopen.
//
// The fuzzer's bytes go into the area from the start of slot slot (small
// inputs: it stalls minimizing 128 KiB ones); with seal, each slot they touch
// gets a valid checksum so the fuzzer reaches the field checks behind it.
func FuzzALRecover(f *testing.F) {
	good := encodeALSlot(1, alExt, []int64{0, 5, 9})
	f.Add(good[:64], uint8(0), true, uint8(10))
	f.Add(good[:64], uint8(1), true, uint8(10))
	f.Add(good[:64], uint8(0), true, uint8(0))
	f.Add(good[:64], uint8(0), false, uint8(10))
	f.Add(append(good[:64:64], good[:64]...), uint8(31), true, uint8(10))
	f.Add([]byte(ALMagic), uint8(7), false, uint8(3))
	f.Add([]byte{}, uint8(0), false, uint8(10))
	f.Fuzz(func(t *testing.T, data []byte, slot uint8, seal bool, shift uint8) {
		lay, mem := alLayout(t)
		start := int64(slot%DefaultALSlots) * BlockSize
		area := make([]byte, lay.ALSize)
		n := copy(area[start:], data)
		if seal {
			for s := start; s < start+int64(max(n, 1)); s += BlockSize {
				reseal(area[s : s+BlockSize])
			}
		}
		_, err := mem.WriteAt(area, lay.ALOffset)
		require.NoError(t, err)

		ext := int64(BlockSize) << (shift % 20)
		a, err := OpenActivityLog(mem, lay, ext, 0)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrWrongSize) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		got := a.Recovered()
		require.LessOrEqual(t, len(got), MaxALExtents)
		require.True(t, slices.IsSorted(got))
		require.Equal(t, len(got), len(slices.Compact(slices.Clone(got))))
		for _, e := range got {
			require.True(t, e >= 0 && e < ceilDiv(lay.DataSize, ext), "extent %d", e)
		}
		require.Equal(t, got, a.Active())

		last := (lay.DataSize - 1) / ext
		rel, err := a.Begin(last*ext, 1)
		require.NoError(t, err)
		rel()
		mem.Crash()
		b, err := OpenActivityLog(mem, lay, ext, 0)
		require.NoError(t, err)
		require.Contains(t, b.Recovered(), last)
	})
}
