package nbd

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestAttachKernelWithoutModule(t *testing.T) {
	if _, err := os.Stat("/dev/nbd0"); err == nil {
		t.Skip("/dev/nbd0 exists: this host has the nbd module")
	}
	_, err := AttachKernel(context.Background(), "/dev/nbd0", "tcp", "127.0.0.1:1", "r0")
	require.ErrorIs(t, err, ErrNoKernelModule)
	require.ErrorIs(t, err, os.ErrNotExist)
	require.Contains(t, err.Error(), "no /dev/nbd0: load the nbd kernel module (modprobe nbd)")

	err = DetachKernel("/dev/nbd0")
	require.ErrorIs(t, err, ErrNoKernelModule)
}

func TestAttachKernelNotADevice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nbd0")
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	_, err := AttachKernel(context.Background(), path, "tcp", "127.0.0.1:1", "r0")
	require.ErrorIs(t, err, ErrNotNBDDevice)
	require.ErrorIs(t, DetachKernel(path), ErrNotNBDDevice)
}
