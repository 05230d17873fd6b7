package nbd

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/twinbd/twinbd/device"
)

// Interoperability with real NBD clients. Each test skips, naming the
// package, only when its binary is missing.

func needBinary(t *testing.T, bin, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(bin); err != nil {
		t.Skipf("%s not installed (package %s)", bin, pkg)
	}
}

// realServe serves a fresh zeroed file export of size bytes and returns its
// nbd:// URI and the file's path.
func realServe(t *testing.T, size int64) (uri, path string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "export.img")
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	require.NoError(t, os.Truncate(path, size))
	d, err := device.OpenFile(path)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	_, addr := srvStart(t, ServerConfig{
		Exports:    StaticResolver{"": NewDeviceExport(d, false)},
		MaxRequest: DefaultMaxRequest,
	})
	return "nbd://" + addr + "/", path
}

// run runs a command with a timeout and returns its stdout.
func run(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	require.NoError(t, err, "%s %s\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), out.String(), stderr.String())
	return out.String()
}

func randomFile(t *testing.T, size int) (string, [32]byte) {
	t.Helper()
	p := make([]byte, size)
	rand.Read(p)
	path := filepath.Join(t.TempDir(), "random.img")
	require.NoError(t, os.WriteFile(path, p, 0o600))
	return path, sha256.Sum256(p)
}

func fileSum(t *testing.T, path string, n int64) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	p := make([]byte, n)
	_, err = f.ReadAt(p, 0)
	require.NoError(t, err)
	return sha256.Sum256(p)
}

func TestRealNbdinfo(t *testing.T) {
	needBinary(t, "nbdinfo", "libnbd-bin")
	uri, _ := realServe(t, 64<<20)
	out := run(t, 30*time.Second, "nbdinfo", "--json", uri)
	var info struct {
		Protocol string           `json:"protocol"`
		Exports  []map[string]any `json:"exports"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &info), out)
	require.Equal(t, "newstyle-fixed", info.Protocol)
	require.Len(t, info.Exports, 1)
	e := info.Exports[0]
	for k, want := range map[string]any{
		"can_flush": true, "can_fua": true, "can_trim": true, "can_zero": true,
		"can_multi_conn": true, "is_read_only": false,
		"can_df": false, "can_cache": false, "can_fast_zero": false,
		"block_size_minimum": float64(1), "block_size_preferred": float64(4096),
		"block_size_maximum": float64(DefaultMaxRequest), "export-size": float64(64 << 20),
	} {
		require.Equal(t, want, e[k], "nbdinfo field %s in %s", k, out)
	}
}

func TestRealNbdcopy(t *testing.T) {
	needBinary(t, "nbdcopy", "libnbd-bin")
	const size = 64 << 20
	uri, _ := realServe(t, size)
	src, sum := randomFile(t, size)
	for _, args := range [][]string{nil, {"--flush"}, {"-C", "4"}} {
		t.Run(fmt.Sprint(args), func(t *testing.T) {
			run(t, 60*time.Second, "nbdcopy", append(args, src, uri)...)
			dst := filepath.Join(t.TempDir(), "out.img")
			run(t, 60*time.Second, "nbdcopy", append(args, uri, dst)...)
			require.Equal(t, sum, fileSum(t, dst, size))
		})
	}
}

func TestRealQemuImg(t *testing.T) {
	needBinary(t, "qemu-img", "qemu-utils")
	const size = 32 << 20
	uri, _ := realServe(t, size)
	src, _ := randomFile(t, size)
	run(t, 60*time.Second, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
	run(t, 60*time.Second, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
}

func TestRealQemuIo(t *testing.T) {
	needBinary(t, "qemu-io", "qemu-utils")
	uri, _ := realServe(t, 16<<20)
	cmds := []string{
		"write -P 0xab 0 64k",
		"write -f -P 0xcd 64k 64k", // FUA
		"flush",
		"read -P 0xab 0 64k",
		"read -P 0xcd 64k 64k",
		"discard 0 64k",
		"write -z 128k 64k",
		"read -P 0 0 64k",
		"read -P 0 128k 64k",
		"write -P 0x11 1 3", // misaligned
		"read -P 0x11 1 3",
	}
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := run(t, 60*time.Second, "qemu-io", append(args, uri)...)
	require.NotContains(t, out, "Pattern verification failed", out)
	require.NotContains(t, out, "failed", out)
}

func TestRealFio(t *testing.T) {
	needBinary(t, "fio", "fio")
	uri, _ := realServe(t, 64<<20)
	base := []string{"--name=nbd", "--ioengine=nbd", "--uri=" + uri, "--bs=4k", "--size=64m", "--output-format=terse", "--verify_state_save=0"}
	// Write with verification, then a verify-only pass over what is there.
	run(t, 60*time.Second, "fio", append(base, "--rw=randwrite", "--iodepth=32", "--verify=crc32c", "--randseed=7")...)
	run(t, 60*time.Second, "fio", append(base, "--rw=randwrite", "--iodepth=32", "--verify=crc32c", "--randseed=7", "--verify_only")...)
	run(t, 60*time.Second, "fio", append(base, "--rw=randwrite", "--iodepth=8", "--fsync=1", "--io_size=8m")...)
}

func TestRealNbdfuseExt4(t *testing.T) {
	for _, b := range [][2]string{{"nbdfuse", "nbdfuse"}, {"fusermount3", "fuse3"}, {"mkfs.ext4", "e2fsprogs"}, {"e2fsck", "e2fsprogs"}, {"losetup", "mount"}, {"mount", "mount"}} {
		needBinary(t, b[0], b[1])
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices and mount)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	uri, _ := realServe(t, 64<<20)
	dir := t.TempDir()
	fuseDir := filepath.Join(dir, "fuse")
	mnt := filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(fuseDir, 0o700))
	require.NoError(t, os.Mkdir(mnt, 0o700))

	fuse := exec.Command("nbdfuse", fuseDir, uri)
	var fuseErr bytes.Buffer
	fuse.Stderr = &fuseErr
	require.NoError(t, fuse.Start())
	t.Cleanup(func() {
		exec.Command("fusermount3", "-u", fuseDir).Run()
		fuse.Process.Kill()
		fuse.Wait()
	})
	nbdFile := filepath.Join(fuseDir, "nbd")
	require.Eventually(t, func() bool {
		st, err := os.Stat(nbdFile)
		return err == nil && st.Size() == 64<<20
	}, 20*time.Second, 20*time.Millisecond, "nbdfuse did not expose %s: %s", nbdFile, &fuseErr)

	loop := strings.TrimSpace(run(t, 20*time.Second, "losetup", "-f", "--show", nbdFile))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	run(t, 60*time.Second, "mkfs.ext4", "-q", "-F", loop)

	mount := func() {
		run(t, 20*time.Second, "mount", loop, mnt)
	}
	umount := func() { run(t, 20*time.Second, "umount", mnt) }
	mount()
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	want := map[string][]byte{}
	for i := range 20 {
		p := make([]byte, 4096*(i+1)+i)
		rand.Read(p)
		name := fmt.Sprintf("file%02d", i)
		want[name] = p
		require.NoError(t, os.WriteFile(filepath.Join(mnt, name), p, 0o600))
	}
	umount()
	run(t, 60*time.Second, "e2fsck", "-f", "-n", loop)
	mount()
	for name, p := range want {
		got, err := os.ReadFile(filepath.Join(mnt, name))
		require.NoError(t, err)
		requireBytes(t, p, got)
	}
	umount()
}
