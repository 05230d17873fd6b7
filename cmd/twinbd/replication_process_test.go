package main

// Process tests of a replicated pair: two real daemons (alpha, node-id 0,
// dials; beta, node-id 1, listens) on loopback, file-backed 64 MiB disks
// with internal metadata, real NBD clients, kill -9.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/nbd"
	"github.com/twinbd/twinbd/replication"
)

const pairDiskSize = 64 << 20

// pair is a two-node resource r0 with one resource file per node (so one
// node's file can differ, e.g. a wrong shared-secret) and one run dir.
type pair struct {
	t      *testing.T
	dir    string
	conf   map[string]string // node → resource file
	nbd    map[string]int    // node → NBD export port
	repl   map[string]int    // node → replication port
	img    map[string]string // node → backing file
	daemon map[string]*exec.Cmd
	// handlers is the body of a `handlers { }` section for every node's
	// file ("" for none); set it before writeConf.
	handlers string
	// netExtra goes into `net { }`, resExtra at resource level (witness,
	// options, promoter); set them before writeConf.
	netExtra, resExtra string
	// daemonArgs are extra `twinbd daemon` flags (e.g. --fault-injection).
	daemonArgs []string
}

var pairNodes = []string{"alpha", "beta"}

func newPair(t *testing.T) *pair {
	p := &pair{
		t: t, dir: t.TempDir(), conf: map[string]string{}, nbd: map[string]int{}, repl: map[string]int{},
		img: map[string]string{}, daemon: map[string]*exec.Cmd{},
	}
	for _, n := range pairNodes {
		p.img[n] = filepath.Join(p.dir, n+".img")
		require.NoError(t, os.WriteFile(p.img[n], nil, 0o600))
		require.NoError(t, os.Truncate(p.img[n], pairDiskSize))
		p.nbd[n], p.repl[n] = freePort(t), freePort(t)
		p.conf[n] = filepath.Join(p.dir, n+".conf")
	}
	for _, n := range pairNodes {
		p.writeConf(n, "s3cret")
	}
	return p
}

// writeConf writes node's resource file with the given shared secret.
// connect-int 1: a restarted peer is redialled within a second.
func (p *pair) writeConf(node, secret string) {
	var b strings.Builder
	fmt.Fprintf(&b, "resource r0 {\n  net { protocol C; shared-secret %q; connect-int 1; %s }\n", secret, p.netExtra)
	if p.resExtra != "" {
		fmt.Fprintf(&b, "  %s\n", p.resExtra)
	}
	if p.handlers != "" {
		fmt.Fprintf(&b, "  handlers { %s }\n", p.handlers)
	}
	for i, n := range pairNodes {
		fmt.Fprintf(&b, "  on %s { node-id %d; address 127.0.0.1:%d; export 127.0.0.1:%d; disk %s; meta-disk internal; }\n",
			n, i, p.repl[n], p.nbd[n], p.img[n])
	}
	b.WriteString("}\n")
	require.NoError(p.t, os.WriteFile(p.conf[node], []byte(b.String()), 0o600))
}

func (p *pair) args(node string, args ...string) []string {
	return append([]string{"--config", p.conf[node], "--node", node, "--run-dir", filepath.Join(p.dir, "run")}, args...)
}

func (p *pair) run(node string, args ...string) result {
	p.t.Helper()
	return runBin(p.t, p.args(node, args...))
}

func (p *pair) ok(node string, args ...string) string {
	p.t.Helper()
	r := p.run(node, args...)
	require.Equal(p.t, 0, r.code, "%s: twinbd %v: %s%s", node, args, r.out, r.err)
	return r.out
}

// start runs node's daemon (its log appends to NODE.log) and waits for its
// control socket.
func (p *pair) start(node string) {
	p.t.Helper()
	cmd := exec.Command(twinbdBin, p.args(node, append([]string{"daemon", "--log-level", "debug"}, p.daemonArgs...)...)...)
	logf, err := os.OpenFile(filepath.Join(p.dir, node+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(p.t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(p.t, cmd.Start())
	p.daemon[node] = cmd
	p.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		logf.Close()
	})
	require.Eventually(p.t, func() bool { return p.run(node, "status").code == 0 }, 10*time.Second, 20*time.Millisecond)
}

// kill9 kills node's daemon with SIGKILL and reaps it.
func (p *pair) kill9(node string) {
	p.t.Helper()
	cmd := p.daemon[node]
	require.NoError(p.t, cmd.Process.Kill())
	cmd.Wait()
}

// logs dumps both daemon logs when the test failed.
func (p *pair) logs() {
	if !p.t.Failed() {
		return
	}
	for _, n := range pairNodes {
		b, _ := os.ReadFile(filepath.Join(p.dir, n+".log"))
		p.t.Logf("%s daemon log:\n%s", n, b)
	}
}

var resyncLog = regexp.MustCompile(`msg="resync finished" .*\bbytes=([0-9]+)`)

// resyncs lists the byte counts of the resyncs node's log says it ran as
// the source, oldest first.
func (p *pair) resyncs(node string) []int64 {
	b, err := os.ReadFile(filepath.Join(p.dir, node+".log"))
	require.NoError(p.t, err)
	var out []int64
	for _, m := range resyncLog.FindAllSubmatch(b, -1) {
		n, err := strconv.ParseInt(string(m[1]), 10, 64)
		require.NoError(p.t, err)
		out = append(out, n)
	}
	return out
}

// status is node's `status --json` for r0.
func (p *pair) status(node string) replication.Status {
	p.t.Helper()
	var st []replication.Status
	require.NoError(p.t, json.Unmarshal([]byte(p.ok(node, "status", "--json", "r0")), &st))
	require.Len(p.t, st, 1)
	require.Len(p.t, st[0].Connections, 1)
	return st[0]
}

func (p *pair) peerDev(node string) (replication.ConnectionStatus, replication.PeerDeviceStatus) {
	st := p.status(node)
	return st.Connections[0], st.Connections[0].PeerDevices[0]
}

// upAndSync brings both nodes up from fresh metadata, makes alpha the
// initial sync source and waits for the full sync.
func (p *pair) upAndSync() {
	p.t.Helper()
	for _, n := range pairNodes {
		p.ok(n, "create-md", "r0")
		p.start(n)
		p.ok(n, "up", "r0")
	}
	p.ok("alpha", "wait-connect", "--timeout", "20s", "r0")
	p.ok("alpha", "primary", "--force", "r0")
	out := p.ok("alpha", "wait-sync", "--timeout", "60s", "r0")
	require.Contains(p.t, out, "r0: in sync with beta (disk:UpToDate peer-disk:UpToDate)")
	p.requireInSync()
}

// requireInSync checks both nodes report Connected, Established and
// UpToDate on both sides, with nothing out of sync.
func (p *pair) requireInSync() {
	p.t.Helper()
	for _, n := range pairNodes {
		st := p.status(n)
		c, pd := st.Connections[0], st.Connections[0].PeerDevices[0]
		require.Equal(p.t, "UpToDate", st.Devices[0].DiskState, n)
		require.Equal(p.t, "Connected", c.ConnectionState, n)
		require.Equal(p.t, "Established", pd.ReplicationState, n)
		require.Equal(p.t, "UpToDate", pd.PeerDiskState, n)
		require.Zero(p.t, pd.OutOfSync, n)
	}
}

// dataSize is the exported size in bytes (status devices[0].size, KiB).
func (p *pair) dataSize() int64 {
	return p.status("alpha").Devices[0].Size * 1024
}

// sameData compares the two backing files' data areas byte for byte.
func (p *pair) sameData() {
	p.t.Helper()
	n := p.dataSize()
	require.Greater(p.t, n, int64(pairDiskSize-1<<20))
	a, err := os.ReadFile(p.img["alpha"])
	require.NoError(p.t, err)
	b, err := os.ReadFile(p.img["beta"])
	require.NoError(p.t, err)
	a, b = a[:n], b[:n]
	if !bytes.Equal(a, b) {
		var diff []string
		for off := int64(0); off < n && len(diff) < 8; off += 4096 {
			if !bytes.Equal(a[off:off+4096], b[off:off+4096]) {
				diff = append(diff, fmt.Sprint(off))
			}
		}
		p.t.Fatalf("data areas differ (first differing 4 KiB blocks at %s)", strings.Join(diff, ", "))
	}
}

func (p *pair) dial(node string) *nbd.Client {
	p.t.Helper()
	c, err := nbd.Dial(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", p.nbd[node]), nbd.ClientOptions{ExportName: "r0"})
	require.NoError(p.t, err)
	return c
}

// testSeed is the seed of a test's random offsets: $TWINBD_SEED, or the
// clock; logged so a failing run can be repeated.
func testSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TWINBD_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "TWINBD_SEED")
		seed = n
	}
	t.Logf("seed %d (TWINBD_SEED=%d repeats it)", seed, seed)
	return seed
}

// randomWrites writes n random 4 KiB blocks of random data at random
// 4 KiB-aligned offsets below limit, depth at a time; answered counts the
// writes answered so far (may be nil). It returns the first failure.
func randomWrites(c *nbd.Client, seed uint64, n, depth int, limit int64, answered *atomic.Int64) error {
	var wg sync.WaitGroup
	errc := make(chan error, depth)
	for w := range depth {
		wg.Go(func() {
			rng := mrand.New(mrand.NewPCG(seed, uint64(w)))
			buf := make([]byte, 4096)
			for i := w; i < n; i += depth {
				rand.Read(buf)
				if _, err := c.WriteAt(buf, rng.Int64N(limit/4096)*4096); err != nil {
					errc <- err
					return
				}
				if answered != nil {
					answered.Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// a. Initial full sync after primary --force; then fio (nbd engine, with
// verify) and nbdcopy of random data at once through the export; the two
// data areas are then identical and online verify agrees.
func TestPairSyncAndMixedWorkload(t *testing.T) {
	need(t, "fio", "nbdcopy")
	p := newPair(t)
	defer p.logs()
	p.upAndSync()
	p.sameData()

	// nbdcopy: 16 MiB of random data at [0, 16M); fio: a verified random
	// read/write mix with flushes at [16M, 48M) and trim+write at
	// [48M, 56M), at the same time.
	src := filepath.Join(p.dir, "src.bin")
	data := make([]byte, 16<<20)
	rand.Read(data)
	require.NoError(t, os.WriteFile(src, data, 0o600))
	uri := fmt.Sprintf("nbd://127.0.0.1:%d/r0", p.nbd["alpha"])
	fio := exec.Command("fio", "--output-format=normal", "--ioengine=nbd", "--uri="+uri,
		"--name=mixed", "--rw=randrw", "--rwmixread=30", "--bs=4k", "--iodepth=16", "--offset=16m", "--size=32m",
		"--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--fsync=64",
		"--name=trimwrite", "--rw=trimwrite", "--bs=64k", "--iodepth=4", "--offset=48m", "--size=8m")
	var fioOut bytes.Buffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	require.NoError(t, fio.Start())
	copyOut, copyErr := exec.Command("nbdcopy", "--flush", "-C", "2", src, uri).CombinedOutput()
	fioErr := fio.Wait()
	require.NoError(t, copyErr, "nbdcopy: %s", copyOut)
	require.NoError(t, fioErr, "fio: %s", fioOut.String())
	require.Contains(t, fioOut.String(), "err= 0")

	p.ok("alpha", "wait-sync", "--timeout", "30s", "r0")
	p.requireInSync()
	p.sameData()
	img, err := os.ReadFile(p.img["beta"])
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, img[:len(data)]), "nbdcopy's data on beta")
	_, pd := p.peerDev("alpha")
	require.GreaterOrEqual(t, pd.Sent, int64(16<<10+32<<10*7/10), "application bytes reached the peer (KiB)")

	out := p.ok("alpha", "verify", "r0")
	require.Regexp(t, `^r0: verified [0-9]+ KiB in .*: 0 KiB out of sync\n$`, out)
}

// b. kill -9 of the Secondary in the middle of a workload: after restart,
// up and wait-sync the replicas are identical, and the resync moved about
// what was written while it was away (the bitmap at 4 KiB granularity),
// not the whole disk.
func TestPairSecondaryKilledResyncsOnlyDirty(t *testing.T) {
	p := newPair(t)
	defer p.logs()
	p.upAndSync()
	c := p.dial("alpha")
	defer c.Close()

	// A workload is running when beta is killed; it goes on while beta is
	// away, then stops.
	size := p.dataSize()
	seed := testSeed(t)
	done := make(chan error, 1)
	var answered atomic.Int64
	go func() { done <- randomWrites(c, seed, 6000, 8, size, &answered) }()
	require.Eventually(t, func() bool { return answered.Load() >= 1000 }, 20*time.Second, time.Millisecond)
	p.kill9("beta")
	require.NoError(t, <-done)
	require.Equal(t, int64(6000), answered.Load(), "the Primary answers every write while its peer dies")
	require.Eventually(t, func() bool {
		cs, _ := p.peerDev("alpha")
		return cs.ConnectionState != "Connected"
	}, 5*time.Second, 20*time.Millisecond)
	require.NoError(t, randomWrites(c, seed+1, 1000, 8, size, nil))
	require.NoError(t, c.Flush())

	// Just before beta comes back: what alpha has marked, and its counter.
	_, before := p.peerDev("alpha")
	dirty := before.OutOfSync * 1024
	require.Greater(t, dirty, int64(2<<20), "writes while beta was away are marked out of sync")
	require.Less(t, dirty, size/2)

	p.start("beta")
	p.ok("beta", "up", "r0")
	out := p.ok("alpha", "wait-sync", "--timeout", "60s", "r0")
	require.Contains(t, out, "in sync with beta (disk:UpToDate peer-disk:UpToDate)")
	p.requireInSync()
	_, after := p.peerDev("alpha")
	moved := (after.Sent - before.Sent) * 1024
	t.Logf("dirty %d KiB, resync moved %d KiB", dirty/1024, moved/1024)
	require.InDelta(t, float64(dirty), float64(moved), 0.10*float64(dirty),
		"resync moved %d bytes for %d dirty bytes", moved, dirty)
	p.sameData()
}

// Self-identifying 4 KiB blocks: offset, sequence, random fill, checksum.
const blk = 4096

func makeBlock(off int64, seq uint64) []byte {
	b := make([]byte, blk)
	binary.BigEndian.PutUint64(b[0:], uint64(off))
	binary.BigEndian.PutUint64(b[8:], seq)
	rand.Read(b[16 : blk-8])
	binary.BigEndian.PutUint64(b[blk-8:], xxhash.Sum64(b[:blk-8]))
	return b
}

// parseBlock returns the block's sequence, or ok=false for a block that is
// not a valid self-identifying block for off (e.g. never written: zeroes).
func parseBlock(b []byte, off int64) (seq uint64, ok bool) {
	if binary.BigEndian.Uint64(b[blk-8:]) != xxhash.Sum64(b[:blk-8]) || int64(binary.BigEndian.Uint64(b[0:])) != off {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[8:]), true
}

// c. kill -9 of the Primary right after acknowledged writes: every write
// the Primary answered is on the Secondary, which is promoted with --force
// and serves the newest answered version of every block (or a newer one
// that was in flight).
func TestPairPrimaryKilledAnsweredWritesSurvive(t *testing.T) {
	p := newPair(t)
	defer p.logs()
	p.upAndSync()
	c := p.dial("alpha")

	// Writers own disjoint blocks and write one at a time, so per block the
	// answer order is the write order. 1024 blocks in the first 8 MiB get
	// overwritten again and again.
	seed := testSeed(t)
	const workers, blocks = 16, 1024
	type rec struct{ issued, answered uint64 } // sequences; 0 = none
	recs := make([]rec, blocks)
	var mu sync.Mutex
	var seq uint64
	var answered int
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := mrand.New(mrand.NewPCG(seed, uint64(w)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				b := (rng.IntN(blocks/workers))*workers + w
				mu.Lock()
				seq++
				s := seq
				recs[b].issued = s
				mu.Unlock()
				if _, err := c.WriteAt(makeBlock(int64(b)*blk, s), int64(b)*blk); err != nil {
					return // the Primary is gone
				}
				mu.Lock()
				recs[b].answered = s
				answered++
				mu.Unlock()
			}
		})
	}
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return answered >= 3000 }, 20*time.Second, 5*time.Millisecond)
	p.kill9("alpha") // writes are in flight
	close(stop)
	wg.Wait()
	c.Close()
	mu.Lock()
	final := append([]rec(nil), recs...)
	total := answered
	mu.Unlock()
	t.Logf("%d writes answered before kill -9", total)

	require.Eventually(t, func() bool {
		cs, _ := p.peerDev("beta")
		return cs.ConnectionState != "Connected"
	}, 5*time.Second, 20*time.Millisecond)
	p.ok("beta", "primary", "--force", "r0")
	nc := p.dial("beta")
	defer nc.Close()
	buf := make([]byte, blk)
	var missing []string
	for b, want := range final {
		off := int64(b) * blk
		_, err := nc.ReadAt(buf, off)
		require.NoError(t, err)
		got, ok := parseBlock(buf, off)
		switch {
		case want.answered == 0 && !ok && bytes.Equal(buf, make([]byte, blk)):
			// never answered, never landed
		case !ok:
			missing = append(missing, fmt.Sprintf("block %d: not a valid block (answered seq %d)", b, want.answered))
		case got < want.answered || got > want.issued:
			missing = append(missing, fmt.Sprintf("block %d: seq %d, answered %d, last issued %d", b, got, want.answered, want.issued))
		}
	}
	require.Empty(t, missing, "answered writes lost on the Secondary")
}

// d. disconnect/connect, then a wrong shared-secret on beta: the dialing
// node (alpha, node-id 0) goes StandAlone with the reason in status, no
// data moves, and connect after fixing the file (down + up re-reads it)
// resyncs.
func TestPairDisconnectAndWrongSecret(t *testing.T) {
	p := newPair(t)
	defer p.logs()
	p.upAndSync()
	c := p.dial("alpha")
	defer c.Close()

	// disconnect: StandAlone with the operator as the reason; writes are
	// only marked; wait-connect gives up at once (11).
	p.ok("alpha", "disconnect", "r0")
	cs, pd0 := p.peerDev("alpha")
	require.Equal(t, "StandAlone", cs.ConnectionState)
	require.Contains(t, cs.Reason, "disconnected by the operator")
	require.Contains(t, p.ok("alpha", "status", "r0"), `beta connection:StandAlone reason:"disconnected by the operator"`)
	r := p.run("alpha", "wait-connect", "r0")
	require.Equal(t, 11, r.code, r.err)
	require.Contains(t, r.err, "StandAlone")
	require.Contains(t, r.err, "twinbd connect r0")
	r = p.run("alpha", "verify", "r0")
	require.Equal(t, 11, r.code, r.err)
	_, bpd0 := p.peerDev("beta")
	require.NoError(t, randomWrites(c, testSeed(t), 500, 8, p.dataSize(), nil))
	_, pd1 := p.peerDev("alpha")
	require.Equal(t, pd0.Sent, pd1.Sent, "nothing sent while StandAlone")
	require.Greater(t, pd1.OutOfSync, int64(0))
	_, bpd1 := p.peerDev("beta")
	require.Equal(t, bpd0.Received, bpd1.Received, "nothing received while the peer is StandAlone")

	p.ok("alpha", "connect", "r0")
	p.ok("alpha", "wait-sync", "--timeout", "30s", "r0")
	p.requireInSync()
	p.sameData()

	// Wrong secret on beta: alpha dials, authentication fails, alpha goes
	// StandAlone with the reason; beta keeps listening and says whom it
	// refused. wait-connect on beta times out (5).
	p.ok("beta", "down", "r0")
	p.writeConf("beta", "wrong-secret")
	p.ok("beta", "up", "r0")
	p.ok("alpha", "connect", "r0") // after beta's down the link broke; make sure alpha dials now
	var reason string
	require.Eventually(t, func() bool {
		cs, _ := p.peerDev("alpha")
		reason = cs.Reason
		return cs.ConnectionState == "StandAlone" && reason != ""
	}, 15*time.Second, 50*time.Millisecond, "alpha: StandAlone with a reason")
	t.Logf("alpha: StandAlone, reason: %s", reason)
	require.Contains(t, strings.ToLower(reason), "auth")
	bcs, bpd := p.peerDev("beta")
	require.NotEqual(t, "Connected", bcs.ConnectionState)
	require.Contains(t, bcs.Reason, "refused")
	r = p.run("beta", "wait-connect", "--timeout", "1s", "r0")
	require.Equal(t, 5, r.code, r.err)
	require.Contains(t, r.err, "timed out")
	// No data moved: beta received nothing, alpha sent nothing more.
	_, apd := p.peerDev("alpha")
	require.NoError(t, randomWrites(c, testSeed(t), 200, 8, p.dataSize(), nil))
	_, apd2 := p.peerDev("alpha")
	_, bpd2 := p.peerDev("beta")
	require.Equal(t, apd.Sent, apd2.Sent)
	require.Zero(t, bpd.Received)
	require.Zero(t, bpd2.Received)

	// Fix the file, down + up re-reads it, connect: a resync of what alpha
	// wrote meanwhile.
	p.ok("beta", "down", "r0")
	p.writeConf("beta", "s3cret")
	p.ok("beta", "up", "r0")
	p.ok("alpha", "connect", "r0")
	p.ok("alpha", "wait-sync", "--timeout", "30s", "r0")
	p.requireInSync()
	p.sameData()
}

// outdate, invalidate, invalidate-remote, a manual role switch and a
// verify that finds a corrupted block, on a connected pair.
func TestPairDataVerbs(t *testing.T) {
	p := newPair(t)
	defer p.logs()
	hook := filepath.Join(p.dir, "out-of-sync.env")
	p.handlers = fmt.Sprintf(`out-of-sync "echo $DRBD_RESOURCE $DRBD_PEER $DRBD_PEER_NODE_ID $DRBD_MY_NODE_ID $DRBD_CSTATE > %s";`, hook)
	for _, n := range pairNodes {
		p.writeConf(n, "s3cret")
	}
	p.upAndSync()

	// Corrupt one block of beta's copy behind twinbd's back: verify on
	// alpha finds its 64 KiB run, the out-of-sync handler runs with DRBD's
	// environment, and disconnect + connect on the Primary repairs it.
	f, err := os.OpenFile(p.img["beta"], os.O_WRONLY, 0)
	require.NoError(t, err)
	junk := make([]byte, 4096)
	rand.Read(junk)
	_, err = f.WriteAt(junk, 5<<20)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	out := p.ok("alpha", "verify", "r0")
	require.Regexp(t, `^r0: verified [0-9]+ KiB in .*: 64 KiB out of sync \(marked; .*twinbd disconnect r0; twinbd connect r0.*\)\n$`, out)
	_, pd := p.peerDev("alpha")
	require.Equal(t, int64(64), pd.OutOfSync)
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(hook)
		return err == nil && string(b) == "r0 beta 1 0 Connected\n"
	}, 10*time.Second, 20*time.Millisecond, "the out-of-sync handler ran with DRBD's environment")
	p.ok("alpha", "disconnect", "r0")
	p.ok("alpha", "connect", "r0")
	p.ok("alpha", "wait-sync", "--timeout", "30s", "r0")
	p.requireInSync()
	p.sameData()

	// outdate is refused on the Primary (11) and marks a Secondary.
	require.Equal(t, 11, p.run("alpha", "outdate", "r0").code)
	r := p.run("beta", "outdate", "r0")
	require.Equal(t, 11, r.code, "outdate while Connected is refused (DRBD)")
	require.Contains(t, r.err, "twinbd disconnect r0")
	p.ok("beta", "disconnect", "r0")
	p.ok("beta", "outdate", "r0")
	require.Equal(t, "Outdated/DUnknown\n", p.ok("beta", "dstate", "r0"))
	require.Equal(t, 17, p.run("beta", "primary", "r0").code)
	p.ok("beta", "connect", "r0")
	p.ok("alpha", "wait-sync", "--timeout", "30s", "r0")
	p.requireInSync()

	// invalidate on the Secondary: a full sync from the Primary (the
	// source logs how many bytes it resynced; zero runs go as zero records
	// so the wire counters say little here).
	syncs := len(p.resyncs("alpha"))
	p.ok("beta", "invalidate", "r0")
	p.ok("beta", "wait-sync", "--timeout", "30s", "r0")
	p.ok("alpha", "wait-sync", "--timeout", "30s", "r0")
	p.requireInSync()
	require.Eventually(t, func() bool { return len(p.resyncs("alpha")) > syncs }, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, p.dataSize(), p.resyncs("alpha")[syncs], "a full sync")
	r = p.run("alpha", "invalidate", "r0")
	require.Equal(t, 11, r.code, "invalidate on the Primary: %s", r.err)

	// Switching roles by hand: secondary here, primary there, and back.
	p.ok("alpha", "secondary", "r0")
	p.ok("beta", "primary", "r0")
	p.requireInSync()
	require.Equal(t, "Primary\n", p.ok("beta", "role", "r0"))
	p.ok("beta", "secondary", "r0")
	p.ok("alpha", "primary", "r0")

	// invalidate-remote on the Primary: a full sync to the peer.
	syncs = len(p.resyncs("alpha"))
	p.ok("alpha", "invalidate-remote", "r0")
	p.ok("alpha", "wait-sync", "--timeout", "30s", "r0")
	p.requireInSync()
	require.Eventually(t, func() bool { return len(p.resyncs("alpha")) > syncs }, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, p.dataSize(), p.resyncs("alpha")[syncs], "a full sync")
	p.sameData()
}

// FLUSHes from several NBD connections at once, each after its own
// writes (what nbd-client -C N and fio with fsync do): every FLUSH is
// answered, the Primary survives, and the replicas end identical.
func TestPairConcurrentFlushes(t *testing.T) {
	p := newPair(t)
	defer p.logs()
	p.upAndSync()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			c := p.dial("alpha")
			defer c.Close()
			buf := make([]byte, 4096)
			for i := range 200 {
				rand.Read(buf)
				if _, err := c.WriteAt(buf, int64(w*200+i)*4096); err != nil {
					errc <- err
					return
				}
				if err := c.Flush(); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	require.NoError(t, <-errc)
	p.ok("alpha", "wait-sync", "--timeout", "30s", "r0")
	p.requireInSync()
	p.sameData()
}
