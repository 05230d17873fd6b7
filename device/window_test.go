package device

import (
	"bytes"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// A file grown under an open File is used only after Refresh; a file that
// shrank is refused and the old size kept.
func TestFileRefresh(t *testing.T) {
	f := tempFile(t, 64<<10)
	require.NoError(t, os.Truncate(f.Path(), 128<<10))
	require.Equal(t, int64(64<<10), f.Size(), "not before Refresh")
	_, err := f.WriteAt(make([]byte, 4096), 100<<10)
	require.ErrorIs(t, err, ErrOutOfRange)

	n, err := f.Refresh()
	require.NoError(t, err)
	require.Equal(t, int64(128<<10), n)
	require.Equal(t, int64(128<<10), f.Size())
	_, err = f.WriteAt(bytes.Repeat([]byte{7}, 4096), 100<<10)
	require.NoError(t, err)

	require.NoError(t, os.Truncate(f.Path(), 32<<10))
	n, err = f.Refresh()
	require.ErrorIs(t, err, ErrShrunk)
	require.Equal(t, int64(128<<10), n)
	require.Equal(t, int64(128<<10), f.Size())
}

func TestWindowSetSize(t *testing.T) {
	parent := NewMemory(1 << 20)
	w, err := NewWindow(parent, 256<<10)
	require.NoError(t, err)
	_, err = w.WriteAt(make([]byte, 4096), 256<<10)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.ErrorIs(t, w.Trim(252<<10, 8<<10), ErrOutOfRange)

	require.NoError(t, w.SetSize(512<<10))
	require.Equal(t, int64(512<<10), w.Size())
	_, err = w.WriteAt(bytes.Repeat([]byte{9}, 4096), 256<<10)
	require.NoError(t, err)
	got := make([]byte, 4096)
	_, err = parent.ReadAt(got, 256<<10)
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{9}, 4096), got, "offset 0 of the window is offset 0 of the parent")
	require.NoError(t, w.WriteZeroes(256<<10, 4096, false))
	_, err = w.ReadAt(got, 256<<10)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 4096), got)

	require.ErrorIs(t, w.SetSize(2<<20), ErrOutOfRange, "past the parent")
	require.Equal(t, int64(512<<10), w.Size())
	_, err = NewWindow(parent, -1)
	require.ErrorIs(t, err, ErrOutOfRange)
}

func TestMemoryGrow(t *testing.T) {
	m := NewMemory(8192)
	_, err := m.WriteAt([]byte{1}, 0)
	require.NoError(t, err)
	m.Grow(16384)
	require.Equal(t, int64(16384), m.Size())
	_, err = m.WriteAt([]byte{2}, 12288)
	require.NoError(t, err)
	m.Crash() // neither write was flushed; the grown space survives
	b := make([]byte, 16384)
	_, err = m.ReadAt(b, 0)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 16384), b)
	m.Grow(4096)
	require.Equal(t, int64(16384), m.Size(), "never shrinks")
}

func TestFaultyRefresh(t *testing.T) {
	f := tempFile(t, 64<<10)
	fd := NewFaulty(f)
	require.NoError(t, os.Truncate(f.Path(), 128<<10))
	n, err := fd.Refresh()
	require.NoError(t, err)
	require.Equal(t, int64(128<<10), n)
	require.Equal(t, int64(128<<10), fd.Size())
}
