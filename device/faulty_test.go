package device

import (
	"bytes"
	"errors"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func TestFaultyFailsOnlyItsRangeAndMode(t *testing.T) {
	f := NewFaulty(NewMemory(1 << 20))
	buf := make([]byte, 4096)
	f.SetFault(FaultRead, 8192, 4096)
	_, err := f.ReadAt(buf, 8192)
	require.True(t, errors.Is(err, syscall.EIO), "read in range: %v", err)
	_, err = f.ReadAt(buf, 4096) // next to it
	require.NoError(t, err)
	_, err = f.ReadAt(make([]byte, 8192), 4096) // overlapping
	require.Error(t, err)
	_, err = f.WriteAt(buf, 8192) // reads only
	require.NoError(t, err)

	f.SetFault(FaultWrite, 0, 0)
	_, err = f.WriteAt(buf, 0)
	require.True(t, errors.Is(err, syscall.EIO))
	require.Error(t, f.Flush())
	require.Error(t, f.Trim(0, 4096))
	require.Error(t, f.WriteZeroes(0, 4096, true))
	_, err = f.WriteAtFUA(buf, 0)
	require.Error(t, err)
	_, err = f.ReadAt(buf, 0)
	require.NoError(t, err)
	mode, _, _, failed := f.Fault()
	require.Equal(t, FaultWrite, mode)
	require.EqualValues(t, 7, failed) // two reads, five writes

	f.SetFault(FaultNone, 0, 0)
	_, err = f.WriteAt(buf, 0)
	require.NoError(t, err)
}

// TestFaultyPowerFailKeepsOnlyDurable: flushed and FUA writes survive a
// power failure, later plain writes (and trims) are reverted, whole and
// partial blocks alike.
func TestFaultyPowerFailKeepsOnlyDurable(t *testing.T) {
	mem := NewMemory(64 << 10)
	f := NewFaulty(mem)
	_, err := f.WriteAt(fill(8192, 1), 0)
	require.NoError(t, err)
	require.NoError(t, f.Flush())
	require.Zero(t, f.Unflushed())

	_, err = f.WriteAt(fill(100, 2), 10) // partial block 0, unflushed
	require.NoError(t, err)
	_, err = f.WriteAtFUA(fill(4096, 3), 4096) // block 1 durable at once
	require.NoError(t, err)
	_, err = f.WriteAt(fill(4096, 4), 16384) // unflushed
	require.NoError(t, err)
	_, err = f.WriteAt(fill(10, 5), 20000) // unflushed, then FUA over part of it
	require.NoError(t, err)
	_, err = f.WriteAtFUA(fill(4, 6), 20002)
	require.NoError(t, err)
	require.NoError(t, f.Trim(0, 4096))           // unflushed trim of block 0
	require.EqualValues(t, 3*4096, f.Unflushed()) // blocks 0, 1 (FUA, saved as written) and 4

	n, err := f.PowerFail()
	require.NoError(t, err)
	require.EqualValues(t, 3*4096, n)

	got := make([]byte, 64<<10)
	_, err = mem.ReadAt(got, 0)
	require.NoError(t, err)
	want := make([]byte, 64<<10)
	copy(want, fill(4096, 1))        // block 0: the flushed write, not the partial one or the trim
	copy(want[4096:], fill(4096, 3)) // block 1: the FUA write
	copy(want[20002:], fill(4, 6))   // the FUA part only
	require.True(t, bytes.Equal(want, got), "contents after power failure")

	// The device is dead afterwards.
	_, err = f.ReadAt(got[:512], 0)
	require.Error(t, err)
}
