// Package e2e runs the real Linux kernel NBD client against twinbd: Debian's
// kernel boots under qemu (software emulation, no KVM) with a busybox
// initramfs (scripts/e2e-assets.sh), attaches the Primary's export with
// Debian's nbd-client, makes an ext4 filesystem and writes files; the host
// then checks that both nodes hold the same bytes, that the filesystem is
// clean on the Secondary's disk and that every file reads back with the
// checksum the guest printed. guestnode_test.go runs twinbd itself as a
// node inside the guest. See README.md.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/replication"
)

const vmDiskSize = 64 << 20

// vmFull reports whether every scenario runs (make e2e), not just the basic one.
func vmFull() bool { return os.Getenv("TWINBD_E2E") == "full" }

var (
	vmSetupOnce sync.Once
	vmSetupSkip string // reason to skip, when the VM cannot run here
	vmAssetDir  string
)

// vmRepoRoot is the module root (the parent of this package's directory).
func vmRepoRoot(t *testing.T) string {
	_, file, _, ok := runtime.Caller(0)
	require.True(t, ok)
	return filepath.Dir(filepath.Dir(file))
}

// vmPrepare finds qemu and builds the guest assets (cached), once per test
// process; it skips the test when qemu or the assets
// cannot be had.
func vmPrepare(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM; not in -short")
	}
	vmSetupOnce.Do(func() {
		root := vmRepoRoot(t)
		if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
			vmSetupSkip = "qemu-system-x86_64 not installed (scripts/deps.sh installs qemu-system-x86)"
			return
		}
		for _, tool := range []string{"e2fsck", "debugfs"} {
			if _, err := vmLookTool(tool); err != nil {
				vmSetupSkip = tool + " not installed (e2fsprogs)"
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "e2e-assets.sh"))
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			vmSetupSkip = fmt.Sprintf("scripts/e2e-assets.sh: %v\n%s", err, stderr.String())
			return
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		vmAssetDir = lines[len(lines)-1]
	})
	if vmSetupSkip != "" {
		t.Skip(vmSetupSkip)
	}
}

// vmBuild builds the twinbd binary into dir (plain build, no -race: the
// daemons share two cores with an emulated CPU). It is static
// (CGO_ENABLED=0) and stripped so the same binary also runs in the guest's
// initramfs (TestKernelTwinbdInGuest).
func vmBuild(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "twinbd")
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", bin, "./cmd/twinbd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Dir = vmRepoRoot(t)
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

func vmLookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/sbin", "/usr/sbin"} {
		if p := filepath.Join(d, name); vmFileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

func vmFileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func vmFreePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// vmWorkDir is the test's directory (resource file, disks, daemon logs, the
// serial log). It is removed when the test passes, kept when it fails or
// TWINBD_E2E_KEEP=1.
func vmWorkDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "twinbd-e2e-"+strings.ReplaceAll(t.Name(), "/", "_")+"-")
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("TWINBD_E2E_KEEP") == "1" {
			t.Logf("kept %s (serial.log, alpha.log, beta.log, witness.log)", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

// vmCluster is alpha and beta with a witness, quorum majority and automatic
// failover, as in scripts/demo.sh; exports listen on 127.0.0.1 (qemu's user
// network connects there when the guest dials 10.0.2.2).
type vmCluster struct {
	t      *testing.T
	bin    string // twinbd
	dir    string
	conf   string
	nbd    map[string]int
	img    map[string]string
	daemon map[string]*exec.Cmd
}

var vmNodes = []string{"alpha", "beta"}

func newVMCluster(t *testing.T, dir string) *vmCluster {
	c := &vmCluster{t: t, bin: vmBuild(t, dir), dir: dir, conf: filepath.Join(dir, "twinbd.conf"), nbd: map[string]int{},
		img: map[string]string{}, daemon: map[string]*exec.Cmd{}}
	witness := fmt.Sprintf("127.0.0.1:%d", vmFreePort(t))
	var b strings.Builder
	fmt.Fprintf(&b, "resource r0 {\n  net { protocol C; shared-secret \"e2e-secret\"; connect-int 1; ping-int 1; ping-timeout 5; }\n")
	fmt.Fprintf(&b, "  witness %s;\n  options { quorum majority; on-no-quorum suspend-io; auto-failover yes; }\n", witness)
	for i, n := range vmNodes {
		c.img[n] = filepath.Join(dir, n+".img")
		require.NoError(t, os.WriteFile(c.img[n], nil, 0o600))
		require.NoError(t, os.Truncate(c.img[n], vmDiskSize))
		c.nbd[n] = vmFreePort(t)
		fmt.Fprintf(&b, "  on %s { node-id %d; address 127.0.0.1:%d; export 127.0.0.1:%d; disk %s; meta-disk internal; }\n",
			n, i, vmFreePort(t), c.nbd[n], c.img[n])
	}
	b.WriteString("}\n")
	require.NoError(t, os.WriteFile(c.conf, []byte(b.String()), 0o600))

	c.background("witness.log", "--config", c.conf, "witness", "--listen", witness, "--state", filepath.Join(dir, "witness.json"))
	for _, n := range vmNodes {
		c.ok(n, "create-md", "--force", "r0")
		c.start(n)
		c.ok(n, "up", "r0")
	}
	c.ok("alpha", "wait-connect", "--timeout", "30s", "r0")
	c.ok("alpha", "primary", "--force", "r0")
	c.ok("alpha", "wait-sync", "--timeout", "120s", "r0")
	t.Cleanup(func() {
		if t.Failed() {
			for _, f := range []string{"alpha.log", "beta.log", "witness.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				t.Logf("%s (tail):\n%s", f, vmTail(string(b), 40))
			}
		}
	})
	return c
}

// background runs twinbd with args, its output in dir/logName; killed at cleanup.
func (c *vmCluster) background(logName string, args ...string) *exec.Cmd {
	c.t.Helper()
	logf, err := os.OpenFile(filepath.Join(c.dir, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(c.t, err)
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(c.t, cmd.Start())
	c.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
	})
	return cmd
}

func (c *vmCluster) args(node string, args ...string) []string {
	return append([]string{"--config", c.conf, "--node", node, "--run-dir", filepath.Join(c.dir, "run")}, args...)
}

// run runs a twinbd verb for node (at most a minute).
func (c *vmCluster) run(node string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.bin, c.args(node, args...)...).CombinedOutput()
	return string(out), err
}

func (c *vmCluster) ok(node string, args ...string) string {
	c.t.Helper()
	out, err := c.run(node, args...)
	require.NoError(c.t, err, "%s: twinbd %v: %s", node, args, out)
	return out
}

func (c *vmCluster) start(node string) {
	c.t.Helper()
	c.daemon[node] = c.background(node+".log", c.args(node, "daemon", "--log-level", "info")...)
	require.Eventually(c.t, func() bool { _, err := c.run(node, "status"); return err == nil },
		10*time.Second, 50*time.Millisecond)
}

func (c *vmCluster) status(node string) (replication.Status, error) {
	out, err := c.run(node, "status", "--json", "r0")
	if err != nil {
		return replication.Status{}, fmt.Errorf("%v: %s", err, out)
	}
	var st []replication.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return replication.Status{}, err
	}
	if len(st) != 1 || len(st[0].Devices) != 1 {
		return replication.Status{}, fmt.Errorf("unexpected status %s", out)
	}
	return st[0], nil
}

// dataSize is the exported size in bytes (status devices[0].size, KiB).
func (c *vmCluster) dataSize(node string) int64 {
	st, err := c.status(node)
	require.NoError(c.t, err)
	return st.Devices[0].Size * 1024
}

// sameData compares the two backing files' data areas byte for byte.
func (c *vmCluster) sameData(size int64) {
	c.t.Helper()
	a, err := os.ReadFile(c.img["alpha"])
	require.NoError(c.t, err)
	b, err := os.ReadFile(c.img["beta"])
	require.NoError(c.t, err)
	require.GreaterOrEqual(c.t, int64(len(a)), size)
	require.GreaterOrEqual(c.t, int64(len(b)), size)
	a, b = a[:size], b[:size]
	if !bytes.Equal(a, b) {
		var diff []string
		for off := int64(0); off < size && len(diff) < 8; off += 4096 {
			if !bytes.Equal(a[off:off+4096], b[off:off+4096]) {
				diff = append(diff, fmt.Sprint(off))
			}
		}
		c.t.Fatalf("data areas differ (first differing 4 KiB blocks at %s)", strings.Join(diff, ", "))
	}
}

// dataCopy writes the first size bytes of node's backing file to a new file
// (the filesystem image e2fsck and debugfs read).
func (c *vmCluster) dataCopy(node string, size int64) string {
	c.t.Helper()
	src, err := os.Open(c.img[node])
	require.NoError(c.t, err)
	defer src.Close()
	dst := filepath.Join(c.dir, node+"-data.img")
	f, err := os.Create(dst)
	require.NoError(c.t, err)
	_, err = io.Copy(f, io.LimitReader(src, size))
	require.NoError(c.t, err)
	require.NoError(c.t, f.Close())
	return dst
}

// vmCheckFS runs e2fsck -fn on image and compares every file's MD5 (read with
// debugfs, no mount) with sums (path → hex MD5, paths relative to the
// filesystem root).
func vmCheckFS(t *testing.T, image string, sums map[string]string) {
	t.Helper()
	e2fsck, _ := vmLookTool("e2fsck")
	out, err := exec.Command(e2fsck, "-fn", image).CombinedOutput()
	require.NoError(t, err, "e2fsck -fn %s:\n%s", image, out)
	debugfs, _ := vmLookTool("debugfs")
	for path, want := range sums {
		cmd := exec.Command(debugfs, "-R", "cat /"+path, image)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		require.NoError(t, cmd.Run(), "debugfs cat %s: %s", path, stderr.String())
		got := md5.Sum(stdout.Bytes())
		require.Equal(t, want, hex.EncodeToString(got[:]), "%s (%d bytes read back; debugfs: %s)", path, stdout.Len(), strings.TrimSpace(stderr.String()))
	}
}

// vmGuest is one qemu run: the serial console goes to dir/serial.log and,
// line by line, to lines.
type vmGuest struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{} // closed when qemu has exited and the console is drained
	log   string
	start time.Time
}

// vmBootOptions adds to a guest: files for the appended archive and qemu
// arguments (a disk, a second serial port).
type vmBootOptions struct {
	files    []vmFile
	qemuArgs []string
}

// vmBoot boots the kernel with the assets' initramfs plus /scenario.sh
// (script) and twinbd.* parameters on the command line. qemu is killed at
// cleanup and when ctx ends.
func vmBoot(ctx context.Context, t *testing.T, dir, script string, params map[string]string) *vmGuest {
	t.Helper()
	return vmBootWith(ctx, t, dir, script, params, vmBootOptions{})
}

// vmBootWith is vmBoot with more files in the initramfs and more qemu
// arguments.
func vmBootWith(ctx context.Context, t *testing.T, dir, script string, params map[string]string, opts vmBootOptions) *vmGuest {
	t.Helper()
	base, err := os.ReadFile(filepath.Join(vmAssetDir, "initramfs.cpio.gz"))
	require.NoError(t, err)
	// The kernel reads an uncompressed cpio segment only at a 4-byte
	// boundary; zero bytes between segments are skipped.
	for len(base)%4 != 0 {
		base = append(base, 0)
	}
	initrd := filepath.Join(dir, "initrd.img")
	files := append([]vmFile{{name: "scenario.sh", mode: 0o755, data: script}}, opts.files...)
	require.NoError(t, os.WriteFile(initrd, append(base, vmNewcArchive(files)...), 0o600))

	cmdline := []string{"console=ttyS0", "quiet", "panic=-1"}
	for k, v := range params {
		cmdline = append(cmdline, "twinbd."+k+"="+v)
	}
	logPath := filepath.Join(dir, "serial.log")
	logf, err := os.Create(logPath)
	require.NoError(t, err)
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "tcg", "-m", "512M", "-smp", "1",
		"-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
		"-kernel", filepath.Join(vmAssetDir, "vmlinuz"), "-initrd", initrd,
		"-append", strings.Join(cmdline, " "),
		"-netdev", "user,id=n", "-device", "virtio-net-pci,netdev=n,romfile=")
	cmd.Args = append(cmd.Args, opts.qemuArgs...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = logf
	cmd.WaitDelay = 2 * time.Second
	g := &vmGuest{cmd: cmd, lines: make(chan string, 4096), done: make(chan struct{}), log: logPath, start: time.Now()}
	require.NoError(t, cmd.Start())
	go func() {
		defer close(g.done)
		defer logf.Close()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			fmt.Fprintln(logf, line)
			select {
			case g.lines <- line:
			default: // nobody reads: the log has it
			}
		}
		cmd.Wait()
		close(g.lines)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-g.done
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("serial console %s (tail):\n%s", logPath, vmTail(string(b), 60))
		}
	})
	return g
}

// result waits for the guest's exit marker and collects TWINBD-E2E-SUM
// lines; it fails the test when ctx ends first (a guest that hangs).
func (g *vmGuest) result(ctx context.Context, t *testing.T, onLine func(string)) (rc string, sums map[string]string) {
	t.Helper()
	sums = map[string]string{}
	for {
		select {
		case <-ctx.Done():
			t.Fatalf("guest did not finish in time (%v after boot): %v; serial log %s", time.Since(g.start).Round(time.Second), ctx.Err(), g.log)
		case line, ok := <-g.lines:
			if !ok {
				if rc == "" {
					t.Fatalf("qemu exited without the guest's exit marker; serial log %s", g.log)
				}
				return rc, sums
			}
			if onLine != nil {
				onLine(line)
			}
			g.logProgress(t, line)
			switch f := strings.Fields(line); {
			case len(f) == 3 && f[0] == "TWINBD-E2E-SUM":
				sums[strings.TrimPrefix(f[2], "./")] = f[1]
			case len(f) == 2 && f[0] == "TWINBD-E2E-EXIT":
				rc = f[1]
			}
		}
	}
}

// logProgress repeats the boot marker and TWINBD-E2E progress lines in the
// test log, with the time since qemu started.
func (g *vmGuest) logProgress(t *testing.T, line string) {
	t.Helper()
	switch f := strings.Fields(line); {
	case len(f) == 2 && f[0] == "TWINBD-E2E-BOOTED":
		t.Logf("guest booted (%v after start, guest uptime %ss)", time.Since(g.start).Round(100*time.Millisecond), f[1])
	case len(f) >= 2 && f[0] == "TWINBD-E2E":
		t.Logf("guest %v: %s", time.Since(g.start).Round(100*time.Millisecond), strings.Join(f[1:], " "))
	}
}

// vmFile is a regular file of the archive appended to the initramfs; name
// is relative to the root and its directory must exist in the base
// initramfs (/etc, /sbin, …).
type vmFile struct {
	name string
	mode int // permission bits
	data string
}

// vmNewcArchive is a cpio archive (newc format) of regular files.
func vmNewcArchive(files []vmFile) []byte {
	var b bytes.Buffer
	ino := 1
	entry := func(name string, mode int, data string) {
		fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		ino++
		b.WriteString(name)
		b.WriteByte(0)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
		b.WriteString(data)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	for _, f := range files {
		entry(f.name, 0o100000|f.mode, f.data)
	}
	entry("TRAILER!!!", 0, "")
	return b.Bytes()
}

func vmTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// vmBasicScript attaches the export, makes ext4, writes a tree of files with
// fsync, prints their MD5 sums, unmounts and detaches.
const vmBasicScript = `#!/bin/sh
set -e
say() { echo "TWINBD-E2E $*"; }
trap 'say "failed at line $LINENO"' EXIT
conns=${TWINBD_CONNS:-1}
nbd-client 10.0.2.2 "$TWINBD_PORT" /dev/nbd0 -N r0 -C "$conns" -b 4096
say "attached /dev/nbd0 ($conns connections, $(cat /sys/block/nbd0/size) sectors)"
mkfs.ext4 -q -F /dev/nbd0
mount -t ext4 /dev/nbd0 /mnt
say "mkfs and mount done"
mkdir -p /mnt/tree/a/b /mnt/tree/c
i=1
while [ $i -le "$TWINBD_FILES" ]; do
  case $((i % 3)) in 0) d=/mnt/tree ;; 1) d=/mnt/tree/a/b ;; *) d=/mnt/tree/c ;; esac
  dd if=/dev/urandom of=$d/f$i bs=4k count=$((i % 17 + 1)) conv=fsync 2>/dev/null
  i=$((i + 1))
done
# One larger file, written in pieces past 1 MiB.
dd if=/dev/urandom of=/mnt/tree/big bs=64k count=40 conv=fsync 2>/dev/null
sync
cd /mnt
find tree -type f | sort | while read -r f; do set -- $(md5sum "$f"); echo "TWINBD-E2E-SUM $1 $2"; done
cd /
umount /mnt
say "unmounted"
e2fsck -fn /dev/nbd0 >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; exit 1; }
say "guest e2fsck clean"
nbd-client -d /dev/nbd0
say "detached"
trap - EXIT
`

// vmRunBasic: the basic scenario with conns NBD connections.
func vmRunBasic(t *testing.T, conns int) {
	vmPrepare(t)
	dir := vmWorkDir(t)
	t0 := time.Now()
	c := newVMCluster(t, dir)
	t.Logf("pair up and in sync in %v", time.Since(t0).Round(100*time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const files = 30
	g := vmBoot(ctx, t, dir, vmBasicScript, map[string]string{
		"port": fmt.Sprint(c.nbd["alpha"]), "conns": fmt.Sprint(conns), "files": fmt.Sprint(files),
	})
	rc, sums := g.result(ctx, t, nil)
	t.Logf("guest finished in %v (exit %s)", time.Since(g.start).Round(100*time.Millisecond), rc)
	require.Equal(t, "0", rc, "guest scenario failed; serial log %s", g.log)
	require.Len(t, sums, files+1, "checksums the guest printed")

	c.ok("alpha", "wait-sync", "--timeout", "60s", "r0")
	size := c.dataSize("alpha")
	require.Equal(t, size, c.dataSize("beta"))
	c.sameData(size)
	vmCheckFS(t, c.dataCopy("beta", size), sums)
	t.Logf("scenario done in %v", time.Since(t0).Round(100*time.Millisecond))
}

// TestKernelClientBasic: the kernel's nbd-client with one connection: mkfs,
// files with fsync; both nodes identical, ext4 clean on beta, files intact.
func TestKernelClientBasic(t *testing.T) { vmRunBasic(t, 1) }

// TestKernelClientMultiConn: the same with nbd-client -C 2 (two connections
// to the export, the kernel spreads requests over both). Full run only.
func TestKernelClientMultiConn(t *testing.T) {
	if !vmFull() {
		t.Skip("TWINBD_E2E=full (make e2e) runs this")
	}
	vmRunBasic(t, 2)
}

// vmForwarder stands in for a floating IP: it listens on a fixed port and
// splices each accepted connection to the export of whichever node is
// Primary at that moment (polling status --json, for up to a minute). When
// the Primary dies its connections die with it, as they would behind a
// moved IP address.
type vmForwarder struct {
	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]bool
	dials []string // "node at time" per upstream dial, for the log
	wg    sync.WaitGroup
}

func (c *vmCluster) forwarder() *vmForwarder {
	c.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(c.t, err)
	f := &vmForwarder{ln: ln, conns: map[net.Conn]bool{}}
	start := time.Now()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				f.track(down, true)
				defer f.track(down, false)
				var up net.Conn
				for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline) && up == nil; {
					for _, n := range vmNodes {
						st, err := c.status(n)
						if err != nil || st.Role != "Primary" {
							continue
						}
						if up, err = net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", c.nbd[n])); err == nil {
							f.mu.Lock()
							f.dials = append(f.dials, fmt.Sprintf("%s at %v", n, time.Since(start).Round(10*time.Millisecond)))
							f.mu.Unlock()
							break
						}
					}
					if up == nil {
						time.Sleep(100 * time.Millisecond)
					}
				}
				if up == nil {
					return
				}
				f.track(up, true)
				defer f.track(up, false)
				done := make(chan struct{}, 2)
				go func() { io.Copy(up, down); done <- struct{}{} }()
				go func() { io.Copy(down, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	c.t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for conn := range f.conns {
			conn.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *vmForwarder) port() int { return f.ln.Addr().(*net.TCPAddr).Port }

// track adds or (closing it) removes a connection.
func (f *vmForwarder) track(conn net.Conn, add bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if add {
		f.conns[conn] = true
	} else {
		delete(f.conns, conn)
		conn.Close()
	}
}

func (f *vmForwarder) dialLog() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.dials, ", ")
}

// vmFailoverScript writes and fsyncs one file at a time on a mounted ext4,
// printing each one's MD5 once dd's fsync returned, until a write fails
// (the Primary died). Debian 12's nbd-client (3.24) and kernel (6.1) cannot
// keep the device alive across a lost connection: -persist runs in ioctl
// mode, where the kernel fails queued I/O at once and resets the device,
// and netlink mode sets no dead-connection timeout and never reconfigures.
// So the guest does what a promoter's start list does on a new Primary:
// detach, attach again at the same address (the forwarder now leads to the
// new Primary), replay the journal with e2fsck, mount, check every file it
// saw fsynced, and write more.
const vmFailoverScript = `#!/bin/sh
say() { echo "TWINBD-E2E $*"; }
nbd-client 10.0.2.2 "$TWINBD_PORT" /dev/nbd0 -N r0 -b 4096 || exit 1
mkfs.ext4 -q -F /dev/nbd0 && mount -t ext4 /dev/nbd0 /mnt || exit 1
mkdir -p /mnt/w && sync
say "mounted /dev/nbd0"
: >/tmp/fsynced
write() { # file: write 16 KiB with fsync, record its sum
  dd if=/dev/urandom of=/mnt/$1 bs=4k count=4 conv=fsync 2>/tmp/dd.err || return 1
  set -- $(md5sum /mnt/$1)
  echo "$1  $2" >>/tmp/fsynced
  echo "TWINBD-E2E-FSYNCED $1 ${2#/mnt/} $(cut -d' ' -f1 /proc/uptime)"
}
i=1
while [ $i -le 300 ] && write w/f$i; do sleep 0.1; i=$((i + 1)); done
say "write of w/f$i failed at uptime $(cut -d' ' -f1 /proc/uptime): $(cat /tmp/dd.err)"
dmesg | grep -iE 'nbd|I/O error' | head -5
umount /mnt 2>/dev/null || umount -l /mnt
nbd-client -d /dev/nbd0 >/dev/null 2>&1
n=0
until nbd-client 10.0.2.2 "$TWINBD_PORT" /dev/nbd1 -N r0 -b 4096 >/tmp/nbd.log 2>&1; do
  n=$((n + 1)); [ $n -ge 60 ] && { cat /tmp/nbd.log; exit 1; }; sleep 1
done
say "attached /dev/nbd1 again at uptime $(cut -d' ' -f1 /proc/uptime)"
e2fsck -fy /dev/nbd1 >/tmp/fsck.log 2>&1; rc=$?
[ $rc -le 1 ] || { cat /tmp/fsck.log; exit 1; }
say "e2fsck -fy exit $rc (journal replay)"
e2fsck -fn /dev/nbd1 >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; exit 1; }
mount -t ext4 /dev/nbd1 /mnt || exit 1
md5sum -c -s /tmp/fsynced || { md5sum -c /tmp/fsynced | grep -v OK; exit 1; }
say "all $(wc -l </tmp/fsynced) fsynced files intact"
j=1
while [ $j -le "$TWINBD_FILES_AFTER" ]; do write w/g$j || exit 1; j=$((j + 1)); done
umount /mnt || exit 1
e2fsck -fn /dev/nbd1 >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; exit 1; }
nbd-client -d /dev/nbd1
say "done"
`

// TestKernelClientFailover: the guest writes and fsyncs files on a mounted
// ext4 through a forwarder (the floating IP) while alpha is killed with
// kill -9; beta promotes itself, the guest attaches again through the same
// address, replays the journal, finds every file it saw fsynced and writes
// more; beta's disk is a clean ext4 with all of them. Full run only.
func TestKernelClientFailover(t *testing.T) {
	if !vmFull() {
		t.Skip("TWINBD_E2E=full (make e2e) runs this")
	}
	vmPrepare(t)
	dir := vmWorkDir(t)
	c := newVMCluster(t, dir)
	fwd := c.forwarder()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const after, killAfter = 10, 15
	g := vmBoot(ctx, t, dir, vmFailoverScript, map[string]string{
		"port": fmt.Sprint(fwd.port()), "files_after": fmt.Sprint(after),
	})
	fsynced := map[string]string{}
	var killed, firstAfter time.Time
	rc, _ := g.result(ctx, t, func(line string) {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "TWINBD-E2E-FSYNCED" {
			return
		}
		fsynced[f[2]] = f[1]
		now := time.Now()
		if killed.IsZero() {
			if len(fsynced) == killAfter {
				killed = time.Now()
				require.NoError(t, c.daemon["alpha"].Process.Kill())
				t.Logf("kill -9 alpha after %d fsynced files", len(fsynced))
			}
		} else if firstAfter.IsZero() {
			firstAfter = now
			t.Logf("first fsynced file after the kill: %v after it (detach, failover, attach, e2fsck, mount)",
				now.Sub(killed).Round(10*time.Millisecond))
		}
	})
	t.Logf("guest finished in %v (exit %s); forwarder dialled %s; %d files fsynced",
		time.Since(g.start).Round(100*time.Millisecond), rc, fwd.dialLog(), len(fsynced))
	require.False(t, killed.IsZero(), "the guest never reached %d files", killAfter)
	st, err := c.status("beta")
	require.NoError(t, err)
	require.Equal(t, "Primary", st.Role)
	require.Equal(t, "0", rc, "guest scenario failed; serial log %s", g.log)
	require.GreaterOrEqual(t, len(fsynced), killAfter+after)
	vmCheckFS(t, c.dataCopy("beta", st.Devices[0].Size*1024), fsynced)
}
