package e2e

// twinbd as a node inside the VM: alpha runs in the guest on a virtio disk
// and attaches its own export to the guest kernel's /dev/nbd0 through the
// promoter (nbd.AttachKernel), beta and the witness run on
// the host. The guest writes files with fsync on a mounted ext4 until the
// test kills qemu (a hard power off: no umount, no sync, the guest's page
// cache is gone). beta promotes itself, and its disk must hold a clean ext4
// with every file the guest saw fsynced; so must the dead node's own disk.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// vmGuestNodeConf is the resource file of alpha (in the guest) and beta (on
// the host). The two copies differ only in how the host's listeners are
// reached: the host dials 127.0.0.1, the guest dials 10.0.2.2, which qemu's
// user network connects to the host's 127.0.0.1. alpha has the lower
// node-id, so alpha dials beta's address for both peer connections (data
// and meta) and nobody dials alpha: no port forward into the guest is
// needed, and alpha's address is never used.
//
// ping-int 2 and ping-timeout 1 s (lease T = 3 s, twice the other VM
// tests'): the guest is an emulated CPU on a shared host, and a stall
// longer than T would make beta give up on a live alpha.
func vmGuestNodeConf(hostIP string, witnessPort, betaPort, betaExport int, betaDisk string) string {
	return fmt.Sprintf(`resource r0 {
  net { protocol C; shared-secret "e2e-secret"; connect-int 1; ping-int 2; ping-timeout 10; }
  witness %[1]s:%[2]d;
  options { quorum majority; on-no-quorum suspend-io; auto-failover yes; }
  promoter { }
  on alpha { node-id 0; address 10.0.2.15:7788; export 127.0.0.1:10809; disk /dev/vda; meta-disk internal; device /dev/nbd0; }
  on beta  { node-id 1; address %[1]s:%[3]d; export 127.0.0.1:%[4]d; disk %[5]s; meta-disk internal; }
}
`, hostIP, witnessPort, betaPort, betaExport, betaDisk)
}

// vmGuestNodeScript runs alpha in the guest: create-md on /dev/vda, the
// daemon (its log goes to the second serial port), up, primary --force
// (the promoter attaches /dev/nbd0 to the local export), wait-sync (the
// initial full sync to beta), mkfs.ext4, mount, then files written with
// fsync into new directories, each one's MD5 printed once its fsync
// returned, until the test powers the guest off. nbd-client is in the
// initramfs but never called: the attach must be twinbd's.
const vmGuestNodeScript = `#!/bin/sh
say() { echo "TWINBD-E2E $*"; }
fail() { say "FAILED: $*"; exit 1; }
now() { cut -d' ' -f1 /proc/uptime; }
T="twinbd --config /etc/twinbd.conf --node alpha --run-dir /run/twinbd"
run() { "$@" >/tmp/out 2>&1 || { cat /tmp/out; fail "$*"; }; }
[ -b /dev/vda ] || fail "no /dev/vda (virtio_blk not loaded?)"
run $T create-md --force r0
$T daemon --log-level info >/dev/ttyS1 2>&1 &
daemon=$!
n=0
until $T status >/dev/null 2>&1; do
  n=$((n + 1)); [ $n -ge 300 ] && fail "the daemon did not answer"; sleep 0.1
done
run $T up r0
run $T wait-connect --timeout 120s r0
say "alpha up and connected to beta at uptime $(now)"
attached() { # /dev/nbd0 has a size and the daemon's thread runs its NBD_DO_IT
  size=$(cat /sys/block/nbd0/size)
  tid=$(cat /sys/block/nbd0/pid 2>/dev/null)
  tgid=$(awk '/^Tgid:/ {print $2}' /proc/$tid/status 2>/dev/null)
  [ "$size" -gt 0 ] || fail "/dev/nbd0 not attached after primary (size $size)"
  [ "$tgid" = "$daemon" ] || fail "/dev/nbd0 is held by thread '$tid' of '$tgid', not by the daemon ($daemon)"
}
run $T primary --force r0
attached
say "primary; the daemon attached /dev/nbd0 ($size sectors) at uptime $(now)"
run $T wait-sync --timeout 300s r0
say "initial sync done at uptime $(now)"
# Demote and promote once: the promoter detaches and attaches again.
run $T secondary r0
[ "$(cat /sys/block/nbd0/size)" = 0 ] || fail "/dev/nbd0 still attached after secondary"
[ ! -e /sys/block/nbd0/pid ] || fail "/dev/nbd0 still has a pid after secondary"
run $T primary r0
attached
say "secondary detached /dev/nbd0, primary attached it again at uptime $(now)"
run mkfs.ext4 -q -F /dev/nbd0
run mount -t ext4 /dev/nbd0 /mnt
say "mkfs and mount done at uptime $(now)"
i=1
while [ $i -le 2000 ]; do
  d=/mnt/tree/d$((i / 8))
  [ -d $d ] || mkdir -p $d
  dd if=/dev/urandom of=$d/f$i bs=4k count=$((i % 7 + 1)) conv=fsync 2>/tmp/dd.err || fail "write $d/f$i: $(cat /tmp/dd.err)"
  set -- $(md5sum $d/f$i)
  echo "TWINBD-E2E-FSYNCED $1 ${2#/mnt/} $(now)"
  i=$((i + 1))
done
fail "wrote 2000 files and was never powered off"
`

// TestKernelTwinbdInGuest: twinbd runs as node alpha inside the guest, with
// its own /dev/nbd0 attach (nbd.AttachKernel), and beta on the host. After
// a hard power off of the guest mid-write, beta promotes itself; its disk
// and the dead guest's disk both hold a clean ext4 (after journal replay)
// with every file the guest saw fsynced. In the default set (go test ./e2e,
// make test): it is the only test of the kernel attach (nbd.AttachKernel)
// against a real kernel, and it takes about 20 s here.
func TestKernelTwinbdInGuest(t *testing.T) {
	vmPrepare(t)
	dir := vmWorkDir(t)
	t0 := time.Now()
	c := &vmCluster{t: t, bin: vmBuild(t, dir), dir: dir, conf: filepath.Join(dir, "twinbd.conf"),
		nbd: map[string]int{}, img: map[string]string{}, daemon: map[string]*exec.Cmd{}}
	witnessPort, betaPort := vmFreePort(t), vmFreePort(t)
	c.nbd["beta"] = vmFreePort(t)
	for _, n := range vmNodes {
		// beta's backing file; alpha's is the guest's /dev/vda.
		c.img[n] = filepath.Join(dir, n+".img")
		require.NoError(t, os.WriteFile(c.img[n], nil, 0o600))
		require.NoError(t, os.Truncate(c.img[n], vmDiskSize))
	}
	require.NoError(t, os.WriteFile(c.conf, []byte(vmGuestNodeConf("127.0.0.1", witnessPort, betaPort, c.nbd["beta"], c.img["beta"])), 0o600))
	guestConf := vmGuestNodeConf("10.0.2.2", witnessPort, betaPort, c.nbd["beta"], c.img["beta"])
	bin, err := os.ReadFile(c.bin)
	require.NoError(t, err)

	c.background("witness.log", "--config", c.conf, "witness", "--listen", fmt.Sprintf("127.0.0.1:%d", witnessPort),
		"--state", filepath.Join(dir, "witness.json"))
	c.ok("beta", "create-md", "--force", "r0")
	c.start("beta")
	c.ok("beta", "up", "r0")
	t.Cleanup(func() {
		if t.Failed() {
			for _, f := range []string{"guest-alpha.log", "beta.log", "witness.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				t.Logf("%s (tail):\n%s", f, vmTail(string(b), 40))
			}
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	g := vmBootWith(ctx, t, dir, vmGuestNodeScript, nil, vmBootOptions{
		files: []vmFile{
			{name: "sbin/twinbd", mode: 0o755, data: string(bin)},
			{name: "etc/twinbd.conf", mode: 0o600, data: guestConf},
		},
		qemuArgs: []string{
			"-drive", "file=" + c.img["alpha"] + ",format=raw,if=virtio",
			"-serial", "file:" + filepath.Join(dir, "guest-alpha.log"),
		},
	})

	// Power off after this many fsynced files; the guest keeps writing
	// (30 files take 1.2 to 2.4 s here), so the kill usually lands while a
	// write is in flight.
	const killAfter = 30
	fsynced := map[string]string{}
	var writing time.Time
	for len(fsynced) < killAfter {
		var line string
		select {
		case <-ctx.Done():
			t.Fatalf("guest did not write %d files in time (%d so far, %v after boot); serial log %s",
				killAfter, len(fsynced), time.Since(g.start).Round(time.Second), g.log)
		case l, ok := <-g.lines:
			if !ok {
				t.Fatalf("qemu exited after %d fsynced files; serial log %s", len(fsynced), g.log)
			}
			line = l
		}
		g.logProgress(t, line)
		if f := strings.Fields(line); len(f) == 4 && f[0] == "TWINBD-E2E-FSYNCED" {
			if writing.IsZero() {
				writing = time.Now()
			}
			fsynced[f[2]] = f[1]
		}
	}
	// Before the power off: beta is a connected, UpToDate Secondary of a
	// Primary alpha (so its promotion is the failover, not a forced one).
	st, err := c.status("beta")
	require.NoError(t, err)
	require.Equal(t, "Secondary", st.Role)
	require.Equal(t, "UpToDate", st.Devices[0].DiskState)
	require.Len(t, st.Connections, 1)
	require.Equal(t, "Connected", st.Connections[0].ConnectionState)
	require.Equal(t, "Primary", st.Connections[0].PeerRole)
	require.Len(t, st.Connections[0].PeerDevices, 1)
	require.Equal(t, "UpToDate", st.Connections[0].PeerDevices[0].PeerDiskState)

	require.NoError(t, g.cmd.Process.Kill())
	killed := time.Now()
	t.Logf("killed qemu (SIGKILL) %v after boot, after %d fsynced files in %v", killed.Sub(g.start).Round(100*time.Millisecond),
		len(fsynced), killed.Sub(writing).Round(100*time.Millisecond))
	// Lines qemu wrote before it died were fsynced before it died too.
	for line := range g.lines {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "TWINBD-E2E-FSYNCED" {
			fsynced[f[2]] = f[1]
		}
	}
	<-g.done

	require.Eventually(t, func() bool {
		st, err = c.status("beta")
		return err == nil && st.Role == "Primary"
	}, 2*time.Minute, 100*time.Millisecond, "beta did not promote itself")
	t.Logf("beta Primary %v after the power off", time.Since(killed).Round(100*time.Millisecond))
	require.Equal(t, "UpToDate", st.Devices[0].DiskState)
	size := st.Devices[0].Size * 1024

	e2fsck, _ := vmLookTool("e2fsck")
	for _, n := range []string{"beta", "alpha"} {
		// The guest never unmounted: e2fsck -fy replays the journal on a
		// copy, then vmCheckFS wants -fn clean and every file intact.
		img := c.dataCopy(n, size)
		out, err := exec.Command(e2fsck, "-fy", img).CombinedOutput()
		if rc := exitCode(err); rc != 0 && rc != 1 { // 1: "errors corrected" (the journal replay, free counts)
			t.Fatalf("e2fsck -fy on %s's data area: %v\n%s", n, err, out)
		}
		require.Empty(t, vmUnexpectedFixes(string(out)), "%s: e2fsck -fy repaired more than a crash leaves:\n%s", n, out)
		t.Logf("%s: e2fsck -fy (exit %d):\n%s", n, exitCode(err), out)
		vmCheckFS(t, img, fsynced)
		t.Logf("%s: ext4 clean, all %d fsynced files intact", n, len(fsynced))
	}
	t.Logf("scenario done in %v", time.Since(t0).Round(100*time.Millisecond))
}

// exitCode is a command's exit code (0 for a nil error).
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// vmUnexpectedFixes returns the questions e2fsck -y answered other than the
// free block and inode counts, which ext4 does not keep exact in the
// journal (the kernel recomputes them at mount): after a crash with every
// flush honoured, the journal replay plus those counts is all there is to
// repair.
func vmUnexpectedFixes(out string) []string {
	var bad []string
	prev := ""
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if strings.HasSuffix(line, "? yes") && !strings.HasPrefix(prev, "Free blocks count wrong") &&
			!strings.HasPrefix(prev, "Free inodes count wrong") {
			bad = append(bad, prev+" "+line)
		}
		prev = line
	}
	return bad
}

func TestVMUnexpectedFixes(t *testing.T) {
	// e2fsck 1.47's output after this test's power off.
	crash := `/tmp/b.img: recovering journal
Pass 1: Checking inodes, blocks, and sizes
Pass 5: Checking group summary information
Free blocks count wrong (14286, counted=14164).
Fix? yes

Free inodes count wrong (16341, counted=16306).
Fix? yes


/tmp/b.img: ***** FILE SYSTEM WAS MODIFIED *****
`
	require.Empty(t, vmUnexpectedFixes(crash))
	corrupt := `Pass 2: Checking directory structure
Entry 'f7' in /tree/d0 (12) has deleted/unused inode 19.  Clear? yes

Pass 4: Checking reference counts
Inode 20 ref count is 2, should be 1.  Fix? yes
`
	require.Equal(t, []string{
		"Pass 2: Checking directory structure Entry 'f7' in /tree/d0 (12) has deleted/unused inode 19.  Clear? yes",
		"Pass 4: Checking reference counts Inode 20 ref count is 2, should be 1.  Fix? yes",
	}, vmUnexpectedFixes(corrupt))
}
