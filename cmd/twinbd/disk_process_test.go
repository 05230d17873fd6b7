package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fioVerify starts fio's nbd engine against node's export: random 4 KiB
// writes over [0, 24M) with a crc32c verify header in every block and a
// FLUSH every 32 writes, then reads everything back and verifies it.
func (p *pair) fioVerify(node string) (*exec.Cmd, *bytes.Buffer) {
	p.t.Helper()
	uri := fmt.Sprintf("nbd://127.0.0.1:%d/r0", p.nbd[node])
	fio := exec.Command("fio", "--output-format=normal", "--ioengine=nbd", "--uri="+uri,
		"--name=verify", "--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=24m", "--loops=2",
		"--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--do_verify=1", "--fsync=32")
	var out bytes.Buffer
	fio.Stdout, fio.Stderr = &out, &out
	require.NoError(p.t, fio.Start())
	return fio, &out
}

// replaceDisk stands for the operator's disk replacement on node: a new,
// empty device at the same path, then create-md on it.
func (p *pair) replaceDisk(node string) {
	p.t.Helper()
	require.NoError(p.t, os.Truncate(p.img[node], 0))
	require.NoError(p.t, os.Truncate(p.img[node], pairDiskSize))
	p.ok(node, "create-md", "--force", "r0")
}

// Issue 8, item 5: the Primary's disk starts failing writes under a fio
// verify workload: the workload finishes with no error and verifies, the
// Primary is Diskless (status says why) and the handler ran; the disk is
// replaced and attached while fio runs again, resynced, and the replicas
// are identical.
func TestDiskFailurePrimaryUnderFio(t *testing.T) {
	need(t, "fio")
	p := newPair(t)
	defer p.logs()
	mark := p.dir + "/local-io-error.ran"
	p.handlers = fmt.Sprintf(`local-io-error "touch %s";`, mark)
	for _, n := range pairNodes {
		p.writeConf(n, "s3cret")
	}
	p.daemonArgs = []string{"--fault-injection"}
	p.upAndSync()

	fio, out := p.fioVerify("alpha")
	time.Sleep(1500 * time.Millisecond)
	p.ok("alpha", "debug", "disk-fault", "r0", "write-error")
	require.NoError(t, fio.Wait(), "fio: %s", out)
	require.Contains(t, out.String(), "err= 0")
	st := p.status("alpha")
	require.Equal(t, "Diskless", st.Devices[0].DiskState)
	require.Contains(t, st.Devices[0].DiskReason, "on-io-error detach")
	require.Regexp(t, `disk:Diskless \((write|flush) error .*\(on-io-error detach\)\)`, p.ok("alpha", "status", "r0"))
	require.Equal(t, "Diskless", p.status("beta").Connections[0].PeerDevices[0].PeerDiskState)
	require.Eventually(t, func() bool { _, err := os.Stat(mark); return err == nil }, 5*time.Second, 50*time.Millisecond, "local-io-error handler")

	// Refused while the disk is attached; Diskless: allowed.
	r := p.run("beta", "create-md", "--force", "r0")
	require.NotZero(t, r.code)
	require.Contains(t, r.err, "with its disk attached")
	p.replaceDisk("alpha")
	fio, out = p.fioVerify("alpha")
	time.Sleep(500 * time.Millisecond)
	p.ok("alpha", "attach", "r0")
	require.NoError(t, fio.Wait(), "fio after attach: %s", out)
	require.Contains(t, out.String(), "err= 0")
	p.ok("alpha", "wait-sync", "--timeout", "60s", "r0")
	require.Eventually(t, func() bool { return p.status("alpha").Devices[0].DiskState == "UpToDate" }, 30*time.Second, 50*time.Millisecond)
	p.requireInSync()
	p.sameData()
	r = p.run("alpha", "attach", "r0")
	require.NotZero(t, r.code)
	require.Contains(t, r.err, "a disk is attached")
}

// The same on the Secondary: the Primary goes on, the Secondary's disk is
// marked Diskless, a replacement resyncs; the Secondary cannot be promoted
// meanwhile. Then bad input: attaching a disk of another resource.
func TestDiskFailureSecondaryUnderFio(t *testing.T) {
	need(t, "fio")
	p := newPair(t)
	defer p.logs()
	p.daemonArgs = []string{"--fault-injection"}
	p.upAndSync()

	fio, out := p.fioVerify("alpha")
	time.Sleep(1500 * time.Millisecond)
	p.ok("beta", "debug", "disk-fault", "r0", "write-error")
	require.NoError(t, fio.Wait(), "fio: %s", out)
	require.Contains(t, out.String(), "err= 0")
	require.Equal(t, "Diskless", p.status("beta").Devices[0].DiskState)
	require.Equal(t, "UpToDate", p.status("alpha").Devices[0].DiskState)
	p.ok("alpha", "secondary", "r0")
	r := p.run("beta", "primary", "--force", "r0")
	require.Equal(t, 17, r.code, "%s%s", r.out, r.err)
	require.Contains(t, r.err, "Diskless")
	p.ok("alpha", "primary", "r0")

	// A disk of another resource is refused, with what to do.
	require.NoError(t, os.Truncate(p.img["beta"], 0))
	require.NoError(t, os.Truncate(p.img["beta"], pairDiskSize))
	other := p.dir + "/other.conf"
	conf, err := os.ReadFile(p.conf["beta"])
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(other, bytes.Replace(conf, []byte("resource r0"), []byte("resource r9"), 1), 0o600))
	r = runBin(t, []string{"--config", other, "--node", "beta", "--run-dir", p.dir + "/run-other", "create-md", "r9"})
	require.Equal(t, 0, r.code, "%s%s", r.out, r.err)
	r = p.run("beta", "attach", "r0")
	require.NotZero(t, r.code)
	require.Contains(t, r.err, "belongs to resource r9")
	require.Equal(t, "Diskless", p.status("beta").Devices[0].DiskState)

	p.replaceDisk("beta")
	fio, out = p.fioVerify("alpha")
	p.ok("beta", "attach", "r0")
	require.NoError(t, fio.Wait(), "fio after attach: %s", out)
	p.ok("alpha", "wait-sync", "--timeout", "60s", "r0")
	require.Eventually(t, func() bool { return p.status("beta").Devices[0].DiskState == "UpToDate" }, 30*time.Second, 50*time.Millisecond)
	p.requireInSync()
	p.sameData()
}

// Without --fault-injection the debug verb is refused.
func TestDiskFaultNeedsFlag(t *testing.T) {
	p := newPair(t)
	defer p.logs()
	p.ok("alpha", "create-md", "r0")
	p.start("alpha")
	p.ok("alpha", "up", "r0")
	r := p.run("alpha", "debug", "disk-fault", "r0", "write-error")
	require.NotZero(t, r.code)
	require.Contains(t, r.err, "--fault-injection")
}
