package device

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func tempFile(t *testing.T, size int64) *File {
	p := filepath.Join(t.TempDir(), "d.img")
	require.NoError(t, os.WriteFile(p, nil, 0o600))
	require.NoError(t, os.Truncate(p, size))
	f, err := OpenFile(p)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

func TestCheckRange(t *testing.T) {
	for _, tc := range []struct {
		off, n int64
		ok     bool
	}{
		{0, 0, true}, {0, 100, true}, {100, 0, true}, {99, 1, true},
		{100, 1, false}, {-1, 1, false}, {0, -1, false}, {1, 1<<63 - 1, false}, {101, 0, false},
	} {
		err := CheckRange(100, tc.off, tc.n)
		if tc.ok {
			require.NoError(t, err, "%+v", tc)
		} else {
			require.ErrorIs(t, err, ErrOutOfRange, "%+v", tc)
		}
	}
}

func TestFileNeverGrows(t *testing.T) {
	f := tempFile(t, 64<<10)
	_, err := f.WriteAt(make([]byte, 4096), 62<<10)
	require.ErrorIs(t, err, ErrOutOfRange)
	_, err = f.WriteAtFUA(make([]byte, 1), 64<<10)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.ErrorIs(t, f.Trim(60<<10, 8<<10), ErrOutOfRange)
	require.ErrorIs(t, f.WriteZeroes(60<<10, 8<<10, false), ErrOutOfRange)
	fi, err := os.Stat(f.Path())
	require.NoError(t, err)
	require.Equal(t, int64(64<<10), fi.Size())
}

func TestFileWriteTrimZero(t *testing.T) {
	f := tempFile(t, 1<<20)
	pattern := bytes.Repeat([]byte{0xab}, 256<<10)
	_, err := f.WriteAtFUA(pattern, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(pattern, 512<<10)
	require.NoError(t, err)
	require.NoError(t, f.Flush())
	got := make([]byte, len(pattern))
	_, err = f.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, pattern, got)

	require.NoError(t, f.Trim(4096, 64<<10))
	require.NoError(t, f.WriteZeroes(512<<10, 4096, false))
	require.NoError(t, f.WriteZeroes(520<<10, 8192, true))
	zero := make([]byte, 64<<10)
	_, err = f.ReadAt(got[:64<<10], 4096)
	require.NoError(t, err)
	require.Equal(t, zero, got[:64<<10])
	_, err = f.ReadAt(got[:4096], 512<<10)
	require.NoError(t, err)
	require.Equal(t, zero[:4096], got[:4096])
	_, err = f.ReadAt(got[:8192], 520<<10)
	require.NoError(t, err)
	require.Equal(t, zero[:8192], got[:8192])
	// Neighbours untouched.
	_, err = f.ReadAt(got[:1], 0)
	require.NoError(t, err)
	require.Equal(t, byte(0xab), got[0])
	_, err = f.ReadAt(got[:1], 516<<10)
	require.NoError(t, err)
	require.Equal(t, byte(0xab), got[0])
	require.NoError(t, f.Close())
	require.NoError(t, f.Close(), "Close is idempotent")
}

func TestRegionStaysInside(t *testing.T) {
	parent := NewMemory(1 << 20)
	_, err := NewRegion(parent, 512<<10, 1<<20)
	require.ErrorIs(t, err, ErrOutOfRange)
	r, err := NewRegion(parent, 256<<10, 256<<10)
	require.NoError(t, err)
	require.Equal(t, int64(256<<10), r.Size())
	_, err = r.WriteAt([]byte{1}, 256<<10)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.ErrorIs(t, r.Trim(255<<10, 2<<10), ErrOutOfRange)

	_, err = r.WriteAtFUA(bytes.Repeat([]byte{7}, 4096), 0)
	require.NoError(t, err)
	b := make([]byte, 4096)
	_, err = parent.ReadAt(b, 256<<10)
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{7}, 4096), b)
	// Memory has no Trimmer: the helpers fall back to writing zeroes.
	require.NoError(t, r.Trim(0, 2048))
	require.NoError(t, r.WriteZeroes(2048, 2048, false))
	_, err = parent.ReadAt(b, 256<<10)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 4096), b)
}

func TestMemoryCrashKeepsOnlyFlushed(t *testing.T) {
	m := NewMemory(8192)
	_, err := m.WriteAt([]byte("durable"), 0)
	require.NoError(t, err)
	require.NoError(t, m.Flush())
	_, err = m.WriteAt([]byte("lost"), 4096)
	require.NoError(t, err)
	m.Crash()
	b := make([]byte, 7)
	_, err = m.ReadAt(b, 0)
	require.NoError(t, err)
	require.Equal(t, "durable", string(b))
	_, err = m.ReadAt(b[:4], 4096)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 4), b[:4])
}
