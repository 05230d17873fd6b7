package replication

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/device"
	"github.com/twinbd/twinbd/failover"
	"github.com/twinbd/twinbd/internal/netfault"
)

// newCutProxy forwards to target until Cut (a partition of one link).
func newCutProxy(t *testing.T, target string) *netfault.CutProxy {
	p, err := netfault.NewCutProxy(target)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	return p
}

// foPair is a pair with a witness; each node reaches the witness through
// its own cutProxy.
type foPair struct {
	*testPair
	wa, wb *netfault.CutProxy
	fence  map[string]func() int // fence-peer exit code per node (nil: not configured)
	fmu    sync.Mutex
	fenced []string
}

// newFoPair: options and net extras go into the resource; witness: run one.
func newFoPair(t *testing.T, netExtra, options, handlers string, witness bool, opts ...func(*foPair)) *foPair {
	dir := t.TempDir()
	p := &foPair{testPair: &testPair{t: t, net: NewMemNetwork(1)}, fence: map[string]func() int{}}
	p.imgA, p.imgB = filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, img := range []string{p.imgA, p.imgB} {
		require.NoError(t, os.WriteFile(img, nil, 0o600))
		require.NoError(t, os.Truncate(img, pairSize))
	}
	wline := ""
	if witness {
		wline = "witness 127.0.0.1:1;" // replaced per node by its proxy
	}
	src := fmt.Sprintf(`resource r0 {
  net { shared-secret "s3cret"; ping-int 1; ping-timeout 5; connect-int 1; %s }
  options { %s }
  handlers { %s }
  %s
  on a { node-id 0; address a:1; export %s; disk %s; meta-disk internal; }
  on b { node-id 1; address b:1; export %s; disk %s; meta-disk internal; }
}
`, netExtra, options, handlers, wline, freeAddr(t), p.imgA, freeAddr(t), p.imgB)
	cfg, err := config.Parse(filepath.Join(dir, "t.conf"), []byte(src))
	require.NoError(t, err)
	p.res, err = cfg.Resource("r0")
	require.NoError(t, err)
	for _, n := range []string{"a", "b"} {
		_, err := createMetadata(p.res, n, false, nil)
		require.NoError(t, err)
	}
	if witness {
		w, err := failover.NewWitness(failover.WitnessOptions{
			Resources: map[string]failover.WitnessResource{"r0": {Secret: "s3cret", Nodes: []int{0, 1}}},
			Logger:    slog.New(slog.DiscardHandler),
		})
		require.NoError(t, err)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { w.Serve(ctx, ln); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		p.wa, p.wb = newCutProxy(t, ln.Addr().String()), newCutProxy(t, ln.Addr().String())
	}
	for _, o := range opts {
		o(p)
	}
	p.a = p.upNode("a")
	p.b = p.upNode("b")
	t.Cleanup(func() {
		p.a.Down(true)
		p.b.Down(true)
	})
	return p
}

func (p *foPair) upNode(node string) *Resource {
	res := *p.res
	if p.wa != nil {
		res.Witness = map[string]string{"a": p.wa.Addr(), "b": p.wb.Addr()}[node]
	}
	peer := map[string]string{"a": "b:1", "b": "a:1"}[node]
	r, err := Up(Options{Res: &res, Node: node, Transport: p.net.Transport(node+":1", peer), FaultInjection: p.inject,
		Handler: func(name, _ string) {
			p.hmu.Lock()
			p.handlers = append(p.handlers, node+":"+name)
			p.hmu.Unlock()
		},
		FencePeer: func(ctx context.Context, command string) (int, error) {
			p.fmu.Lock()
			p.fenced = append(p.fenced, node)
			f := p.fence[node]
			p.fmu.Unlock()
			if f == nil {
				return 1, nil
			}
			return f(), nil
		},
	})
	require.NoError(p.t, err)
	return r
}

// isolate cuts node from its peer and from the witness.
func (p *foPair) isolate(node string) {
	p.net.Partition("a:1", "b:1")
	map[string]*netfault.CutProxy{"a": p.wa, "b": p.wb}[node].Cut()
}

func (p *foPair) healAll() {
	p.net.Heal("a:1", "b:1")
	p.wa.Heal()
	p.wb.Heal()
}

// answer is one write answered to the client.
type answer struct {
	node       string
	off        int64
	data       []byte
	start, end time.Time
}

// writer writes 4 KiB blocks at random offsets of [lo, hi) of r until
// stop, recording each answered write.
type writer struct {
	mu       sync.Mutex
	answers  []answer
	attempts []answer // every write issued, in order (end unset)
	errs     atomic.Int64
}

func (w *writer) run(node string, r *Resource, lo, hi int64, seed uint64, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(seed, 1))
	for {
		select {
		case <-stop:
			return
		default:
		}
		off := lo + rng.Int64N((hi-lo)/4096)*4096
		b := randBlock(rng, 4096)
		start := time.Now()
		w.mu.Lock()
		w.attempts = append(w.attempts, answer{node, off, b, start, time.Time{}})
		w.mu.Unlock()
		err := r.WriteAt(b, off, false)
		end := time.Now()
		if err != nil {
			w.errs.Add(1)
			time.Sleep(5 * time.Millisecond)
			continue
		}
		w.mu.Lock()
		w.answers = append(w.answers, answer{node, off, b, start, end})
		w.mu.Unlock()
	}
}

func (w *writer) tried() []answer {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]answer(nil), w.attempts...)
}

func (w *writer) list() []answer {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]answer(nil), w.answers...)
}

// checkLatest requires that img holds, for every offset, the data of the
// last answered write to it, or of a write issued after that one (which
// may or may not have landed). attempts lists every issued write in order.
func checkLatest(t *testing.T, img string, answers, attempts []answer) {
	t.Helper()
	last := map[int64]answer{}
	for _, a := range answers {
		if l, found := last[a.off]; !found || a.end.After(l.end) {
			last[a.off] = a
		}
	}
	ok := map[int64][][]byte{}
	for off, a := range last {
		ok[off] = [][]byte{a.data}
	}
	for _, a := range attempts {
		if l, found := last[a.off]; found && a.start.After(l.end) {
			ok[a.off] = append(ok[a.off], a.data)
		}
	}
	f, err := os.Open(img)
	require.NoError(t, err)
	defer f.Close()
	buf := make([]byte, 4096)
	for off, accept := range ok {
		_, err := f.ReadAt(buf, off)
		require.NoError(t, err)
		found := false
		for _, want := range accept {
			found = found || bytes.Equal(buf, want)
		}
		require.True(t, found, "acknowledged write at %d lost", off)
	}
}

const foOptions = "quorum majority; on-no-quorum suspend-io; auto-failover yes;"

// The Primary cut off from its peer and the witness freezes; the peer is
// promoted only after that; at no instant do both answer writes; every
// write the old Primary answered is on the new one; when the old Primary
// comes back it demotes, resyncs and ends identical.
func TestFailoverIsolatedPrimaryFreezesBeforePeerPromotes(t *testing.T) {
	p := newFoPair(t, "", foOptions, "", true)
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	eventually(t, "both nodes known to the witness", func() bool {
		return p.a.Status().Witness == "connected" && p.b.Status().Witness == "connected"
	})
	time.Sleep(3 * time.Second) // the fresh witness's warm-up

	stopA, stopB := make(chan struct{}), make(chan struct{})
	var wa, wb writer
	var wg sync.WaitGroup
	wg.Go(func() { wa.run("a", p.a, 0, pairSize/2, 1, stopA) })
	// Reads need no fencing: they stop only when a's quorum lease ends.
	var lastRead atomic.Int64
	wg.Go(func() {
		buf := make([]byte, 4096)
		for {
			select {
			case <-stopA:
				return
			default:
			}
			if p.a.ReadAt(buf, 0) == nil {
				lastRead.Store(time.Now().UnixNano())
			} else {
				time.Sleep(time.Millisecond)
			}
		}
	})
	time.Sleep(300 * time.Millisecond)
	cut := time.Now()
	p.isolate("a")
	eventually(t, "b promoted", func() bool { return p.b.Role() == RolePrimary })
	promoted := time.Since(cut)
	wg.Go(func() { wb.run("b", p.b, pairSize/2, pairSize, 2, stopB) })
	eventually(t, "b answers writes", func() bool { return len(wb.list()) > 20 })
	require.Equal(t, "quorum", p.a.Status().SuspendedReason, "the isolated Primary suspends I/O")
	t.Logf("b promoted %v after the cut", promoted)

	// No overlap: every answer of a ended before b's first write started.
	aa, bb := wa.list(), wb.list()
	require.NotEmpty(t, aa)
	lastA := aa[len(aa)-1].end
	firstB := bb[0].start
	require.True(t, lastA.Before(firstB), "a answered at %v, b started answering at %v", lastA.Sub(cut), firstB.Sub(cut))
	t.Logf("a's last answer %v after the cut, b's first write started %v after", lastA.Sub(cut), firstB.Sub(cut))
	lr := time.Unix(0, lastRead.Load())
	require.True(t, lr.Before(firstB), "a answered a read at %v, after b started writing at %v", lr.Sub(cut), firstB.Sub(cut))
	require.Less(t, lr.Sub(cut), p.a.leaseLen()+100*time.Millisecond, "a went on reading past its lease")
	t.Logf("a's last read answered %v after the cut (lease %v)", lr.Sub(cut), p.a.leaseLen())
	close(stopB)

	// Every write a answered is on b.
	checkLatest(t, p.imgB, aa, wa.tried())

	// a comes back: the witness tells it b took over; it demotes (its
	// waiting writes fail), resyncs from b, and the replicas converge.
	p.healAll()
	eventually(t, "a demoted", func() bool { return p.a.Role() == RoleSecondary })
	close(stopA)
	wg.Wait()
	p.waitSynced(p.b)
	eventually(t, "a UpToDate", func() bool { return p.a.DiskState() == DiskUpToDate })
	require.NoError(t, p.b.Flush())
	p.sameData()
	checkLatest(t, p.imgA, append(aa, wb.list()...), append(wa.tried(), wb.tried()...))
}

// The peer link cut while the witness sees both: no promotion; the
// Primary outdates its peer at the witness and writes on; when the
// Primary is then lost too, the Outdated Secondary does not promote.
func TestFailoverLinkCutOutdatesSecondary(t *testing.T) {
	p := newFoPair(t, "", foOptions, "", true)
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	eventually(t, "witness", func() bool { return p.b.Status().Witness == "connected" })
	time.Sleep(3 * time.Second)

	p.net.Partition("a:1", "b:1")
	// a writes on once b is Outdated at the witness.
	buf := bytes.Repeat([]byte{7}, 4096)
	start := time.Now()
	require.NoError(t, p.a.WriteAt(buf, 0, false))
	t.Logf("first write after the cut answered in %v", time.Since(start))
	eventually(t, "b Outdated", func() bool { return p.b.DiskState() == DiskOutdated })
	require.True(t, p.b.Status().WitnessOutdated)
	time.Sleep(2 * p.b.leaseLen())
	require.Equal(t, RoleSecondary, p.b.Role(), "b promoted while a held the lease")

	// Now a is lost as well: b must still not promote.
	p.wa.Cut()
	time.Sleep(3 * p.b.leaseLen())
	require.Equal(t, RoleSecondary, p.b.Role(), "an Outdated node promoted itself")
	require.Error(t, p.b.Primary(false), "an Outdated node promoted without --force")
	require.Equal(t, "quorum", p.a.Status().SuspendedReason)

	// Heal: a regains quorum, writes on, resyncs b, and b is UpToDate.
	p.healAll()
	require.NoError(t, p.a.WriteAt(buf, 4096, false))
	p.waitSynced(p.a)
	eventually(t, "b UpToDate", func() bool { return p.b.DiskState() == DiskUpToDate })
	eventually(t, "b no longer Outdated at the witness", func() bool { return !p.b.Status().WitnessOutdated })
	require.NoError(t, p.a.Flush())
	p.sameData()
}

// A witness outage alone changes nothing for a healthy pair; a flapping
// peer link while the witness is up never promotes the Secondary.
func TestFailoverWitnessOutageAndFlappingLink(t *testing.T) {
	p := newFoPair(t, "", foOptions, "", true)
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	time.Sleep(3 * time.Second)

	p.wa.Cut()
	p.wb.Cut()
	stop := make(chan struct{})
	var w writer
	var wg sync.WaitGroup
	wg.Go(func() { w.run("a", p.a, 0, pairSize, 3, stop) })
	time.Sleep(3 * p.a.leaseLen())
	require.False(t, p.a.Status().Suspended)
	require.True(t, p.a.Status().Devices[0].Quorum)
	n := len(w.list())
	time.Sleep(500 * time.Millisecond)
	require.Greater(t, len(w.list()), n, "writes stalled during a witness outage")
	p.wa.Heal()
	p.wb.Heal()
	eventually(t, "witness back", func() bool { return p.a.Status().Witness == "connected" && p.b.Status().Witness == "connected" })

	for range 4 {
		p.net.Partition("a:1", "b:1")
		time.Sleep(400 * time.Millisecond)
		p.net.Heal("a:1", "b:1")
		time.Sleep(1500 * time.Millisecond)
		require.Equal(t, RoleSecondary, p.b.Role(), "flapping link promoted the Secondary")
	}
	close(stop)
	wg.Wait()
	p.waitSynced(p.a)
	require.Equal(t, RolePrimary, p.a.Role())
	require.NoError(t, p.a.Flush())
	p.sameData()
	checkLatest(t, p.imgB, w.list(), w.tried())
}

// Fencing without a witness (resource-and-stonith): a Primary that loses
// its peer freezes writes until fence-peer succeeds; a failed handler
// keeps them frozen until resume-io. The Secondary promotes itself once
// its own fence-peer (STONITH, exit 7) succeeded.
func TestFailoverFencePeerHandler(t *testing.T) {
	p := newFoPair(t, "fencing resource-and-stonith;", "auto-failover yes;", `fence-peer "fake"; unfence-peer "fake-un";`, false)
	var code atomic.Int64
	code.Store(1)
	p.fence["a"] = func() int { return int(code.Load()) }
	p.fence["b"] = func() int { return 1 } // b's handler fails at first: no promotion
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)

	p.net.Partition("a:1", "b:1")
	done := make(chan error, 1)
	go func() { done <- p.a.WriteAt(bytes.Repeat([]byte{1}, 4096), 0, false) }()
	select {
	case err := <-done:
		t.Fatalf("write answered without fencing: %v", err)
	case <-time.After(1500 * time.Millisecond):
	}
	require.Equal(t, "fencing", p.a.Status().SuspendedReason)
	require.NoError(t, p.a.ResumeIO())
	require.NoError(t, <-done)
	require.False(t, p.a.Status().Suspended)
	require.Equal(t, RoleSecondary, p.b.Role(), "b promoted though its fence-peer failed")

	// Heal; then the next cut with a handler that succeeds (4: outdated).
	p.net.Heal("a:1", "b:1")
	p.waitSynced(p.a)
	require.False(t, p.called("a", "unfence-peer"), "unfence-peer ran though fence-peer had failed")
	code.Store(4)
	p.net.Partition("a:1", "b:1")
	require.NoError(t, p.a.WriteAt(bytes.Repeat([]byte{2}, 4096), 4096, false))

	// a goes away for good (down); b's handler now STONITHs it: b promotes.
	p.fmu.Lock()
	p.fence["b"] = func() int { return 7 }
	p.fmu.Unlock()
	p.net.Heal("a:1", "b:1")
	p.waitSynced(p.a)
	// The fenced peer is UpToDate again: unfence-peer runs (DRBD).
	eventually(t, "unfence-peer", func() bool { return p.called("a", "unfence-peer") })
	require.NoError(t, p.a.WriteAt(bytes.Repeat([]byte{3}, 4096), 8192, false))
	p.net.Partition("a:1", "b:1")
	eventually(t, "b promoted", func() bool { return p.b.Role() == RolePrimary })
	buf := make([]byte, 4096)
	require.NoError(t, p.b.ReadAt(buf, 8192))
	require.Equal(t, byte(3), buf[0], "the acknowledged write is on the promoted node")
}

// stallDev blocks writes while stalled (a stuck disk under a live node).
type stallDev struct {
	*device.Memory
	mu      sync.Mutex
	stalled chan struct{} // non-nil while stalled; closed to release
}

func (d *stallDev) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	ch := d.stalled
	d.mu.Unlock()
	if ch != nil {
		<-ch
	}
	return d.Memory.WriteAt(p, off)
}

func (d *stallDev) stall() {
	d.mu.Lock()
	d.stalled = make(chan struct{})
	d.mu.Unlock()
}

func (d *stallDev) release() {
	d.mu.Lock()
	close(d.stalled)
	d.stalled = nil
	d.mu.Unlock()
}

// timeout x ko-count: a peer that answers pings but no writes is declared
// dead and the link dropped, so the Primary's writes go on.
func TestPairKoCountDropsStuckPeer(t *testing.T) {
	dev := &stallDev{Memory: device.NewMemory(pairSize)}
	p := newPairOn(t, "timeout 2; ko-count 3;", map[string]device.Device{"b": dev})
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	dev.stall()
	defer dev.release()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- p.a.WriteAt(bytes.Repeat([]byte{9}, 4096), 0, false) }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the write waited for a stuck peer past timeout x ko-count")
	}
	took := time.Since(start)
	require.GreaterOrEqual(t, took, 400*time.Millisecond, "dropped before ko-count timeouts")
	// The link dropped (it may already be back: pings and the handshake
	// do not need the stuck disk), and the write is marked for resync.
	require.Positive(t, p.a.Status().Connections[0].PeerDevices[0].OutOfSync)
	t.Logf("stuck peer dropped after %v", took)
}

// quorum majority without a witness: a Primary that loses its peer has no
// quorum; with on-no-quorum io-error its I/O fails instead of waiting, and
// comes back when the peer does.
func TestQuorumLostIOError(t *testing.T) {
	p := newFoPair(t, "", "quorum majority; on-no-quorum io-error;", `quorum-lost "logger lost";`, false)
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	buf := make([]byte, 4096)
	require.NoError(t, p.a.ReadAt(buf, 0))
	p.net.Partition("a:1", "b:1")
	eventually(t, "reads fail", func() bool { return p.a.ReadAt(buf, 0) != nil })
	eventually(t, "quorum-lost handler", func() bool { return p.called("a", "quorum-lost") })
	err := p.a.WriteAt(buf, 0, false)
	require.ErrorIs(t, err, ErrNoQuorum)
	require.False(t, p.a.Status().Devices[0].Quorum)
	require.False(t, p.a.Status().Suspended, "io-error does not suspend")
	// A disconnected node without a witness cannot be promoted either.
	require.ErrorIs(t, p.b.Primary(false), ErrNoQuorum)
	p.net.Heal("a:1", "b:1")
	p.waitSynced(p.a)
	eventually(t, "quorum back", func() bool { return p.a.ReadAt(buf, 0) == nil })
	require.NoError(t, p.a.WriteAt(buf, 0, false))
}

// No write is answered between the session's death and teardown: writes
// that find the session dead wait for fencing too (a bug once: the
// isolated-Primary process test lost two answered writes).
func TestFailoverNoAnswerBeforeTeardown(t *testing.T) {
	p := newFoPair(t, "", foOptions, "", true)
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	testTeardownDelay.Store(int64(500 * time.Millisecond))
	defer testTeardownDelay.Store(0)
	stop := make(chan struct{})
	var w writer
	var wg sync.WaitGroup
	for i := range 8 { // writers whose write was acked just before the cut issue new ones in the window
		wg.Go(func() { w.run("a", p.a, int64(i)*pairSize/8, int64(i+1)*pairSize/8, uint64(10+i), stop) })
	}
	require.Eventually(t, func() bool { return len(w.list()) > 200 }, 10*time.Second, time.Millisecond)
	p.isolate("a") // no peer, no witness: fencing cannot finish
	cut := time.Now()
	time.Sleep(time.Second)
	var late []time.Duration
	for _, a := range w.list() {
		if a.start.After(cut) {
			late = append(late, a.end.Sub(cut))
		}
	}
	require.Empty(t, late, "writes issued after the cut were answered without fencing")
	close(stop)
	p.healAll()
	wg.Wait()
}

// fakeServices is a start list that fails on demand and counts starts.
type fakeServices struct {
	fail   atomic.Bool
	starts atomic.Int64
	stops  atomic.Int64
}

func (f *fakeServices) Start(context.Context) error {
	f.starts.Add(1)
	if f.fail.Load() {
		return fmt.Errorf("fake service failed to start")
	}
	return nil
}

func (f *fakeServices) Stop(context.Context) error { f.stops.Add(1); return nil }

// A start list that fails demotes the node and hands the role to its
// connected peer; if the peer's start list fails too, it is not handed
// back.
func TestFailoverStartListFailureHandsOver(t *testing.T) {
	p := newFoPair(t, "", foOptions, "", true)
	sa, sb := &fakeServices{}, &fakeServices{}
	p.a.services, p.b.services = sa, sb
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	require.NoError(t, p.a.Secondary(false))
	require.Equal(t, int64(1), sa.stops.Load())

	sa.fail.Store(true)
	err := p.a.Primary(false)
	require.ErrorContains(t, err, "start list failed")
	require.Equal(t, RoleSecondary, p.a.Role())
	eventually(t, "b took over", func() bool { return p.b.Role() == RolePrimary })
	require.Equal(t, int64(1), sb.starts.Load())
	require.Equal(t, RoleSecondary, p.a.Role())

	// Now b's services fail too: b demotes and hands over, a declines.
	require.NoError(t, p.b.Secondary(false))
	sb.fail.Store(true)
	require.ErrorContains(t, p.b.Primary(false), "start list failed")
	time.Sleep(time.Second)
	require.Equal(t, RoleSecondary, p.a.Role(), "the role went back to a node whose start list just failed")
	require.Equal(t, RoleSecondary, p.b.Role())
	require.Equal(t, int64(2), sa.starts.Load())
}

// primary --force on a node the witness records Outdated (disaster
// recovery: the other node is gone for good) tells the witness, which then
// does not demote it; the old Primary, when it comes back, is told it lost.
func TestFailoverForcedPromotionOverridesWitness(t *testing.T) {
	p := newFoPair(t, "", foOptions, "", true)
	require.NoError(t, p.a.Primary(true))
	p.waitSynced(p.a)
	eventually(t, "witness", func() bool { return p.b.Status().Witness == "connected" })
	time.Sleep(3 * time.Second)
	p.net.Partition("a:1", "b:1")
	require.NoError(t, p.a.WriteAt(bytes.Repeat([]byte{7}, 4096), 0, false))
	eventually(t, "b Outdated", func() bool { return p.b.DiskState() == DiskOutdated })
	p.wa.Cut() // a is gone
	require.Error(t, p.b.Primary(false))
	require.NoError(t, p.b.Primary(true))
	time.Sleep(2 * p.b.leaseLen())
	require.Equal(t, RolePrimary, p.b.Role(), "the witness demoted a forced Primary")
	require.False(t, p.b.Status().WitnessOutdated)
	// a comes back to the witness: it lost, demotes, and is Outdated.
	p.wa.Heal()
	eventually(t, "a demoted", func() bool { return p.a.Role() == RoleSecondary })
	eventually(t, "a Outdated", func() bool { return p.a.DiskState() == DiskOutdated })
}
