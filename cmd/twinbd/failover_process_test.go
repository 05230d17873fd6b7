package main

// Process tests of automatic failover: two real daemons and a real witness
// process on loopback, NBD clients writing self-identifying blocks, kill -9.

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/nbd"
)

// witnessCmd runs `twinbd witness` on addr for p's resource (with a state
// file); the process is killed at cleanup.
func (p *pair) witnessCmd(addr string) *exec.Cmd {
	p.t.Helper()
	cmd := exec.Command(twinbdBin, "--config", p.conf["alpha"], "witness", "--listen", addr,
		"--state", filepath.Join(p.dir, "witness.json"))
	logf, err := os.OpenFile(filepath.Join(p.dir, "witness.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(p.t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(p.t, cmd.Start())
	p.t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	})
	return cmd
}

// failoverPair is a pair with a witness, quorum majority, automatic
// failover, and a promoter start list that logs to DIR/services.
func failoverPair(t *testing.T) (*pair, string) {
	p := newPair(t)
	waddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	svc := filepath.Join(p.dir, "services")
	p.resExtra = fmt.Sprintf(`witness %s;
  options { quorum majority; on-no-quorum suspend-io; auto-failover yes; }
  promoter { start "echo up $DRBD_MY_NODE_ID >> %s" stop "echo down $DRBD_MY_NODE_ID >> %s"; }`, waddr, svc, svc)
	p.netExtra = "ping-int 1; ping-timeout 5;"
	for _, n := range pairNodes {
		p.writeConf(n, "s3cret")
	}
	p.witnessCmd(waddr)
	return p, svc
}

// blockLoad writes self-identifying blocks through NBD: writers own
// disjoint blocks and write one at a time, so per block the answer order
// is the write order. It follows the Primary: when a write fails it
// reconnects to whichever node answers.
type blockLoad struct {
	p       *pair
	base    int64 // first block
	follow  bool  // on a failed dial, try the other node
	mu      sync.Mutex
	recs    []blockRec
	seq     uint64
	answers []loadAnswer
	clients map[*nbd.Client]bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

type blockRec struct{ issued, answered uint64 }

type loadAnswer struct {
	node       string
	start, end time.Time
}

const loadBlocks = 1024

func startLoad(p *pair, node string, workers int, seed uint64) *blockLoad {
	return startLoadAt(p, node, workers, seed, 0, true)
}

// startLoadAt writes blocks [base, base+loadBlocks) on node; follow: move
// to the other node when node stops answering.
func startLoadAt(p *pair, node string, workers int, seed uint64, base int64, follow bool) *blockLoad {
	l := &blockLoad{p: p, base: base, follow: follow, recs: make([]blockRec, loadBlocks), stop: make(chan struct{}), clients: map[*nbd.Client]bool{}}
	for w := range workers {
		l.wg.Go(func() { l.worker(node, w, workers, seed) })
	}
	return l
}

func (l *blockLoad) worker(node string, w, workers int, seed uint64) {
	rng := mrand.New(mrand.NewPCG(seed, uint64(w)))
	var c *nbd.Client
	drop := func() {
		c.Close()
		l.mu.Lock()
		delete(l.clients, c)
		l.mu.Unlock()
		c = nil
	}
	defer func() {
		if c != nil {
			drop()
		}
	}()
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		if c == nil {
			var err error
			c, err = nbd.Dial(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", l.p.nbd[node]), nbd.ClientOptions{ExportName: "r0", Timeout: 2 * time.Second})
			if err != nil {
				c = nil
				if l.follow {
					node = map[string]string{"alpha": "beta", "beta": "alpha"}[node] // try the other node
				}
				time.Sleep(20 * time.Millisecond)
				continue
			}
			l.mu.Lock()
			l.clients[c] = true
			l.mu.Unlock()
		}
		b := (rng.IntN(loadBlocks/workers))*workers + w
		off := (l.base + int64(b)) * blk
		l.mu.Lock()
		l.seq++
		s := l.seq
		l.recs[b].issued = s
		l.mu.Unlock()
		start := time.Now()
		if _, err := c.WriteAt(makeBlock(off, s), off); err != nil {
			drop()
			continue
		}
		end := time.Now()
		l.mu.Lock()
		if s > l.recs[b].answered {
			l.recs[b].answered = s
		}
		l.answers = append(l.answers, loadAnswer{node, start, end})
		l.mu.Unlock()
	}
}

// answeredBy counts the answers from node.
func (l *blockLoad) answeredBy(node string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, a := range l.answers {
		if a.node == node {
			n++
		}
	}
	return n
}

// firstAnswer is the time of node's first answer after t (zero if none).
func (l *blockLoad) firstAnswer(node string, t time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range l.answers {
		if a.node == node && a.end.After(t) {
			return a.end
		}
	}
	return time.Time{}
}

// lastAnswer is the end of node's last answer (zero if none).
func (l *blockLoad) lastAnswer(node string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var last time.Time
	for _, a := range l.answers {
		if a.node == node && a.end.After(last) {
			last = a.end
		}
	}
	return last
}

// firstStart is when node's earliest answered write was issued.
func (l *blockLoad) firstStart(node string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	for _, a := range l.answers {
		if a.node == node && (first.IsZero() || a.start.Before(first)) {
			first = a.start
		}
	}
	return first
}

// halt stops the writers; writes still waiting (a frozen node) fail as
// their connections close.
func (l *blockLoad) halt() {
	close(l.stop)
	var closing sync.WaitGroup
	l.mu.Lock()
	for c := range l.clients {
		closing.Go(func() { c.Close() })
	}
	l.mu.Unlock()
	closing.Wait()
	l.wg.Wait()
}

// verify reads every block from node: each holds the last answered
// version or a newer issued one.
func (l *blockLoad) verify(node string) {
	p := l.p
	p.t.Helper()
	l.mu.Lock()
	recs := append([]blockRec(nil), l.recs...)
	l.mu.Unlock()
	c := p.dial(node)
	defer c.Close()
	buf := make([]byte, blk)
	var missing []string
	for b, want := range recs {
		off := (l.base + int64(b)) * blk
		_, err := c.ReadAt(buf, off)
		require.NoError(p.t, err)
		got, ok := parseBlock(buf, off)
		switch {
		case want.answered == 0: // nothing answered to check (earlier loads' data may be there)
		case !ok:
			missing = append(missing, fmt.Sprintf("block %d: not a valid block (answered seq %d)", b, want.answered))
		case got < want.answered || got > want.issued:
			missing = append(missing, fmt.Sprintf("block %d: seq %d, answered %d, last issued %d", b, got, want.answered, want.issued))
		}
	}
	require.Empty(p.t, missing, "answered writes lost on %s", node)
}

// killPrimaryOnce kills alpha (Primary) under load and returns the time
// from the kill to the first write answered by beta.
func killPrimaryOnce(t *testing.T, p *pair, primary, other string, seed uint64) time.Duration {
	l := startLoad(p, primary, 8, seed)
	require.Eventually(t, func() bool { return l.answeredBy(primary) > 500 }, 20*time.Second, 5*time.Millisecond)
	// The witness knows the Secondary is UpToDate again (after a resync).
	require.Eventually(t, func() bool { return !p.status(other).WitnessOutdated }, 10*time.Second, 20*time.Millisecond)
	killed := time.Now()
	p.kill9(primary)
	require.Eventually(t, func() bool { return !l.firstAnswer(other, killed).IsZero() }, 20*time.Second, 5*time.Millisecond,
		"%s never answered a write after %s was killed", other, primary)
	took := l.firstAnswer(other, killed).Sub(killed)
	require.Eventually(t, func() bool { return l.answeredBy(other) > 200 }, 10*time.Second, 5*time.Millisecond)
	l.halt()
	l.verify(other)
	return took
}

// kill -9 of the Primary under a write load: the Secondary promotes by
// itself, its export answers writes, every acknowledged write is there,
// and its start list ran. The old Primary comes back as Secondary and
// resyncs from the new one.
func TestFailoverKillPrimary(t *testing.T) {
	p, svc := failoverPair(t)
	defer p.logs()
	p.upAndSync()
	took := killPrimaryOnce(t, p, "alpha", "beta", testSeed(t))
	t.Logf("failover: first write answered by beta %v after kill -9 of alpha", took)
	st := p.status("beta")
	require.Equal(t, "Primary", st.Role)
	b, err := os.ReadFile(svc)
	require.NoError(t, err)
	require.Equal(t, "up 0\nup 1\n", string(b), "start lists: alpha's at its promotion, then beta's")

	// The old Primary returns: Secondary, Outdated at the witness until it
	// resynced from beta; then the replicas are identical.
	p.start("alpha")
	p.ok("alpha", "up", "r0")
	p.ok("beta", "wait-sync", "--timeout", "30s", "r0")
	require.Eventually(t, func() bool { return p.status("alpha").Devices[0].DiskState == "UpToDate" }, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, "Secondary", p.status("alpha").Role)
	p.requireInSync()
	p.sameData()
	// alpha died as Primary: its restart ran the stop list, in case its
	// services outlived the daemon.
	b, err = os.ReadFile(svc)
	require.NoError(t, err)
	require.Equal(t, "up 0\nup 1\ndown 0\n", string(b))
}

// A Primary killed and restarted at once (a service manager restarting
// it) comes back Secondary before the lease ran out: the other node still
// takes over, since the old Primary's services died with it.
func TestFailoverPrimaryRestartedQuickly(t *testing.T) {
	p, svc := failoverPair(t)
	defer p.logs()
	p.upAndSync()
	l := startLoad(p, "alpha", 4, testSeed(t))
	require.Eventually(t, func() bool { return l.answeredBy("alpha") > 300 }, 20*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return !p.status("beta").WitnessOutdated }, 10*time.Second, 20*time.Millisecond)
	killed := time.Now()
	p.kill9("alpha")
	p.start("alpha")
	p.ok("alpha", "up", "r0")
	require.Eventually(t, func() bool { return p.status("beta").Role == "Primary" }, 20*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { return !l.firstAnswer("beta", killed).IsZero() }, 10*time.Second, 5*time.Millisecond)
	t.Logf("beta took over %v after the kill", l.firstAnswer("beta", killed).Sub(killed))
	l.halt()
	l.verify("beta")
	require.Equal(t, "Secondary", p.status("alpha").Role)
	b, err := os.ReadFile(svc)
	require.NoError(t, err)
	// alpha's restart stopped its start list; beta took over (before or
	// after that restart, depending on how fast it was).
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	require.Equal(t, "up 0", lines[0])
	require.ElementsMatch(t, []string{"up 0", "down 0", "up 1"}, lines)
	p.ok("beta", "wait-sync", "--timeout", "30s", "r0")
	p.requireInSync()
	p.sameData()
}

// A planned switchover under load (secondary --force here, primary there)
// loses nothing; the writers move to the new Primary.
func TestFailoverPlannedSwitchover(t *testing.T) {
	p, svc := failoverPair(t)
	defer p.logs()
	p.upAndSync()
	l := startLoad(p, "alpha", 8, testSeed(t))
	require.Eventually(t, func() bool { return l.answeredBy("alpha") > 500 }, 20*time.Second, 5*time.Millisecond)
	start := time.Now()
	p.ok("alpha", "secondary", "--force", "r0")
	p.ok("beta", "primary", "r0")
	require.Eventually(t, func() bool { return !l.firstAnswer("beta", start).IsZero() }, 10*time.Second, time.Millisecond)
	t.Logf("switchover: first write answered by beta %v after `secondary` started on alpha", l.firstAnswer("beta", start).Sub(start))
	require.Eventually(t, func() bool { return l.answeredBy("beta") > 200 }, 10*time.Second, 5*time.Millisecond)
	l.halt()
	l.verify("beta")
	b, err := os.ReadFile(svc)
	require.NoError(t, err)
	require.Equal(t, "up 0\ndown 0\nup 1\n", string(b))
	p.ok("beta", "wait-sync", "--timeout", "30s", "r0")
	p.requireInSync()
	p.sameData()
}

// TestFailoverTiming measures failover and switchover times
// (TWINBD_FAILOVER_RUNS=N, default 0: skipped; `make bench` runs it).
func TestFailoverTiming(t *testing.T) {
	runs, _ := strconv.Atoi(os.Getenv("TWINBD_FAILOVER_RUNS"))
	if runs <= 0 {
		t.Skip("set TWINBD_FAILOVER_RUNS=N to measure (make bench does)")
	}
	p, _ := failoverPair(t)
	defer p.logs()
	p.upAndSync()
	seed := testSeed(t)
	primary, other := "alpha", "beta"
	var fail, sw []time.Duration
	for i := range runs {
		took := killPrimaryOnce(t, p, primary, other, seed+uint64(i))
		fail = append(fail, took)
		t.Logf("run %d: kill -9 %s -> first write on %s: %v", i+1, primary, other, took)
		p.start(primary)
		p.ok(primary, "up", "r0")
		p.ok(other, "wait-sync", "--timeout", "60s", "r0")
		require.Eventually(t, func() bool { return p.status(primary).Devices[0].DiskState == "UpToDate" }, 20*time.Second, 20*time.Millisecond)
		// A planned switchover back, under load.
		l := startLoad(p, other, 8, seed+1000+uint64(i))
		require.Eventually(t, func() bool { return l.answeredBy(other) > 200 }, 20*time.Second, 5*time.Millisecond)
		start := time.Now()
		p.ok(other, "secondary", "--force", "r0")
		p.ok(primary, "primary", "r0")
		require.Eventually(t, func() bool { return !l.firstAnswer(primary, start).IsZero() }, 10*time.Second, time.Millisecond)
		sw = append(sw, l.firstAnswer(primary, start).Sub(start))
		t.Logf("run %d: switchover %s -> %s: %v", i+1, other, primary, sw[len(sw)-1])
		l.halt()
		l.verify(primary)
		p.ok(primary, "wait-sync", "--timeout", "60s", "r0")
	}
	report := func(name string, d []time.Duration) string {
		s := slices.Clone(d)
		slices.Sort(s)
		return fmt.Sprintf("%s: runs=%d median=%v max=%v min=%v", name, len(s), s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond), s[0].Round(time.Millisecond))
	}
	lines := []string{report("failover (kill -9 Primary -> first write on the new Primary)", fail), report("planned switchover (secondary --force; primary -> first write)", sw)}
	t.Log("\n" + strings.Join(lines, "\n"))
	if out := os.Getenv("TWINBD_FAILOVER_REPORT"); out != "" {
		require.NoError(t, os.WriteFile(out, []byte(strings.Join(lines, "\n")+"\n"), 0o644))
	}
}

// rewrite replaces old by new in node's resource file.
func (p *pair) rewrite(node, old, new string) {
	p.t.Helper()
	b, err := os.ReadFile(p.conf[node])
	require.NoError(p.t, err)
	require.Contains(p.t, string(b), old)
	require.NoError(p.t, os.WriteFile(p.conf[node], []byte(strings.ReplaceAll(string(b), old, new)), 0o600))
}

// The Primary cut off from both its peer and the witness (fault-injecting
// proxies on its links): it freezes within its lease; the Secondary
// promotes only after that; at no instant do both answer writes; every
// write the old Primary answered is on the new one. When the links heal,
// the old Primary learns from the witness that it lost, demotes, and
// resyncs.
func TestFailoverIsolatedPrimaryProcesses(t *testing.T) {
	p, _ := failoverPair(t)
	defer p.logs()
	// alpha (node-id 0) dials beta; both of alpha's links go through proxies.
	peerProxy := newCutProxy(t, fmt.Sprintf("127.0.0.1:%d", p.repl["beta"]))
	b, err := os.ReadFile(p.conf["beta"])
	require.NoError(t, err)
	waddr := regexp.MustCompile(`witness (127\.0\.0\.1:[0-9]+);`).FindSubmatch(b)[1]
	witProxy := newCutProxy(t, string(waddr))
	p.rewrite("alpha", fmt.Sprintf("address 127.0.0.1:%d;", p.repl["beta"]), "address "+peerProxy.Addr()+";")
	p.rewrite("alpha", "witness "+string(waddr)+";", "witness "+witProxy.Addr()+";")
	p.upAndSync()
	require.Eventually(t, func() bool { return !p.status("beta").WitnessOutdated }, 10*time.Second, 20*time.Millisecond)

	seed := testSeed(t)
	la := startLoadAt(p, "alpha", 8, seed, 0, false)
	require.Eventually(t, func() bool { return la.answeredBy("alpha") > 500 }, 20*time.Second, 5*time.Millisecond)
	cut := time.Now()
	peerProxy.Cut()
	witProxy.Cut()
	require.Eventually(t, func() bool { return p.status("beta").Role == "Primary" }, 15*time.Second, 10*time.Millisecond)
	lb := startLoadAt(p, "beta", 8, seed+1, loadBlocks, false)
	require.Eventually(t, func() bool { return lb.answeredBy("beta") > 200 }, 10*time.Second, 5*time.Millisecond)
	st := p.status("alpha")
	require.Equal(t, "Primary", st.Role)
	require.Equal(t, "quorum", st.SuspendedReason, "the isolated Primary suspends I/O")
	lastA, firstB := la.lastAnswer("alpha"), lb.firstStart("beta")
	t.Logf("alpha's last answer %v after the cut; beta's first answered write was issued %v after", lastA.Sub(cut), firstB.Sub(cut))
	require.True(t, lastA.Before(firstB), "both nodes answered writes at once")
	la.halt()
	lb.halt()
	la.verify("beta")
	lb.verify("beta")

	peerProxy.Heal()
	witProxy.Heal()
	require.Eventually(t, func() bool { return p.status("alpha").Role == "Secondary" }, 15*time.Second, 20*time.Millisecond)
	p.ok("beta", "wait-sync", "--timeout", "30s", "r0")
	require.Eventually(t, func() bool { return p.status("alpha").Devices[0].DiskState == "UpToDate" }, 10*time.Second, 20*time.Millisecond)
	p.requireInSync()
	p.sameData()
}
