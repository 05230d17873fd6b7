package nbd

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

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

func TestKernelBlockSize(t *testing.T) {
	for _, c := range []struct {
		size          int64
		minimum, pref uint32
		want          uint32
		wantErr       bool
	}{
		{64 << 20, 1, 4096, 4096, false},      // twinbd's server: min 1, preferred 4096
		{64 << 20, 0, 0, 512, false},          // nothing sent: the kernel's minimum
		{64 << 20, 1, 65536, 4096, false},     // above the kernel's maximum
		{64<<20 + 1024, 1, 4096, 1024, false}, // halved until it divides the size
		{64<<20 + 100, 1, 4096, 512, false},   // not below 512 (the tail is cut)
		{64 << 20, 2048, 512, 2048, false},    // the server's minimum wins
		{64 << 20, 8192, 8192, 0, true},       // above what the kernel takes
		{64 << 20, 1, 3000, 0, true},          // not a power of two
	} {
		got, err := kernelBlockSize(c.size, c.minimum, c.pref)
		if c.wantErr {
			require.ErrorIs(t, err, ErrProtocol, "%+v", c)
			continue
		}
		require.NoError(t, err, "%+v", c)
		require.Equal(t, c.want, got, "%+v", c)
	}
}

// The handshake the kernel attach runs against our server: NBD_OPT_GO with
// a well-formed option, and the flags the kernel needs to send FLUSH and FUA.
func TestKernelHandshake(t *testing.T) {
	_, addr := srvStart(t, ServerConfig{Exports: StaticResolver{"r0": rawFileExport(t, false)}})
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	exp, err := kernelHandshake(conn, "r0", 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, uint32(4096), exp.blockSize)
	require.Equal(t, uint64(rawExportSize/4096), exp.blocks)
	for _, f := range []uint16{TFlagHasFlags, TFlagSendFlush, TFlagSendFUA, TFlagSendTrim, TFlagCanMultiConn} {
		require.NotZero(t, exp.flags&f, "flag %#x in %#x", f, exp.flags)
	}
	require.Zero(t, exp.flags&TFlagReadOnly)

	// The socket is in transmission: a FLUSH written by hand is answered.
	req := make([]byte, RequestHeaderSize)
	binary.BigEndian.PutUint32(req[0:], MagicRequest)
	binary.BigEndian.PutUint16(req[6:], CmdFlush)
	binary.BigEndian.PutUint64(req[8:], 7) // cookie
	_, err = conn.Write(req)
	require.NoError(t, err)
	rep := make([]byte, SimpleReplyHeaderSize)
	_, err = io.ReadFull(conn, rep)
	require.NoError(t, err)
	require.Equal(t, MagicSimpleReply, binary.BigEndian.Uint32(rep[0:]))
	require.Zero(t, binary.BigEndian.Uint32(rep[4:]), "error")
	require.Equal(t, uint64(7), binary.BigEndian.Uint64(rep[8:]))

	conn2, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn2.Close()
	_, err = kernelHandshake(conn2, "nope", 5*time.Second)
	require.ErrorIs(t, err, ErrOptionRefused)
}
