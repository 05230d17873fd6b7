package bitmap

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// shrinkCrashTest shrinks the fixture's metadata on rec from lay to n bytes
// of data and opens what a crash after every write or flush could leave the
// way `up` does (Locate with devLay, Open, ReadBitmap, the activity log):
// always the old size or the new one, never an error; no bit below the size
// it opens with is lost; the flags and generations are the fixture's.
func shrinkCrashTest(t *testing.T, rec *growRec, lay, devLay Layout, n int64) {
	f := newGrownFixture(t, rec, lay)
	// Bits at the new end, just past it (same word and block), and far past.
	extra := []int64{n/4096 - 1, n / 4096, n/4096 + 1, n/4096 + 70}
	for _, blk := range extra {
		f.bm.SetRange(blk*4096, 4096)
	}
	f.bits = append(f.bits, extra...)
	require.NoError(t, f.m.WriteBitmap(f.bm))
	rec.record()
	to, err := ShrunkLayout(lay, n)
	require.NoError(t, err)
	require.NoError(t, f.m.Shrink(to, ShrinkOptions{Bitmap: f.bm, AL: f.al}))
	require.Equal(t, to, f.m.Layout())
	require.Equal(t, n, f.bm.DataSize())
	require.Zero(t, f.m.Superblock().Flags&FlagBitmapTrimmed, "unflagged at the end")
	for _, b := range f.bits {
		require.Equal(t, b*4096 < n, f.bm.TestBit(b), "in-memory bit %d", b)
	}
	_, err = f.al.Begin(n, 4096)
	require.ErrorContains(t, err, "range outside the device", "the activity log follows the new size")

	rng := rand.New(rand.NewPCG(7, 9))
	var sawOld, sawNew bool
	nops := len(rec.ops)
	for k := 0; k <= nops; k++ {
		for _, mode := range crashModes {
			for rep := range map[string]int{"none": 1, "all": 1, "torn": 8}[mode] {
				t.Run(fmt.Sprintf("op%d-%s-%d", k, mode, rep), func(t *testing.T) {
					img := rec.crashImage(k, mode, rng)
					found, _ := Locate(img, devLay)
					m, err := Open(img, found)
					require.NoError(t, err, "open after a crash")
					require.NoError(t, m.Check("r0", 1, found.DataSize))
					sb := m.Superblock()
					require.Equal(t, f.sb.MDUUID, sb.MDUUID)
					require.Equal(t, f.sb.Current, sb.Current)
					require.Equal(t, f.sb.Flags, sb.Flags&^FlagBitmapTrimmed)
					switch found {
					case lay:
						sawOld = true
					case to:
						sawNew = true
					default:
						t.Fatalf("opened with %+v: neither the old layout nor the new", found)
					}
					if k == nops {
						require.Equal(t, to, found, "after the last flush")
						require.Zero(t, sb.Flags&FlagBitmapTrimmed)
					}
					bm, err := m.ReadBitmap()
					require.NoError(t, err)
					for _, b := range f.bits {
						if b*4096 < found.DataSize {
							require.True(t, bm.TestBit(b), "bit %d lost", b)
						}
					}
					al, err := OpenActivityLog(img, found, 0, 0)
					require.NoError(t, err, "activity log")
					for _, e := range al.Recovered() {
						require.True(t, slices.Contains(f.extents, e), "extent %d", e)
					}
				})
			}
		}
	}
	require.True(t, sawOld && sawNew)
}

// Internal metadata stays at the end of the unchanged device; the bitmap
// area's start moves up into what was the old area.
func TestShrinkInternalCrashAtEveryStep(t *testing.T) {
	rec := newGrowRec(16 * mib)
	lay, err := InternalLayout(16*mib, 0)
	require.NoError(t, err)
	shrinkCrashTest(t, rec, lay, lay, 10*mib+12<<10) // the new end mid-word
}

// External metadata shrinks in place: the bitmap area's end moves down.
func TestShrinkExternalCrashAtEveryStep(t *testing.T) {
	rec := newGrowRec(1 * mib)
	lay, err := ExternalLayout(300*mib, 1*mib, 0)
	require.NoError(t, err)
	shrinkCrashTest(t, rec, lay, lay, 20*mib+12<<10)
}

func TestShrinkRefusals(t *testing.T) {
	lay, err := InternalLayout(16*mib, 0)
	require.NoError(t, err)
	for _, n := range []int64{lay.DataSize, lay.DataSize + 4096, 8*mib + 100, MinDataSize - 4096} {
		_, err := ShrunkLayout(lay, n)
		require.ErrorIs(t, err, ErrInvalid, "%d", n)
	}
	rec := newGrowRec(16 * mib)
	f := newGrownFixture(t, rec, lay)
	to, err := ShrunkLayout(lay, 8*mib)
	require.NoError(t, err)
	require.ErrorIs(t, f.m.Shrink(to, ShrinkOptions{}), ErrInvalid, "no bitmap")
	rel, err := f.al.Begin(0, 4096)
	require.NoError(t, err)
	require.ErrorIs(t, f.m.Shrink(to, ShrinkOptions{Bitmap: f.bm, AL: f.al}), ErrALBusy)
	rel()
	require.Equal(t, lay, f.m.Layout())
}
