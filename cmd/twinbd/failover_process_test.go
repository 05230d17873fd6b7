package main

// Process tests of automatic failover: two real daemons and a real witness
// process on loopback, NBD clients writing self-identifying blocks, kill -9.

import (
	"bytes"
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
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
	mu      sync.Mutex
	recs    []blockRec
	seq     uint64
	answers []loadAnswer
	stop    chan struct{}
	wg      sync.WaitGroup
}

type blockRec struct{ issued, answered uint64 }

type loadAnswer struct {
	node string
	at   time.Time
}

const loadBlocks = 1024

func startLoad(p *pair, node string, workers int, seed uint64) *blockLoad {
	l := &blockLoad{p: p, recs: make([]blockRec, loadBlocks), stop: make(chan struct{})}
	for w := range workers {
		l.wg.Go(func() { l.worker(node, w, workers, seed) })
	}
	return l
}

func (l *blockLoad) worker(node string, w, workers int, seed uint64) {
	rng := mrand.New(mrand.NewPCG(seed, uint64(w)))
	var c *nbd.Client
	defer func() {
		if c != nil {
			c.Close()
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
			c, err = nbd.Dial(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", l.p.nbd[node]), nbd.ClientOptions{ExportName: "r0"})
			if err != nil {
				c = nil
				node = map[string]string{"alpha": "beta", "beta": "alpha"}[node] // try the other node
				time.Sleep(20 * time.Millisecond)
				continue
			}
		}
		b := (rng.IntN(loadBlocks/workers))*workers + w
		l.mu.Lock()
		l.seq++
		s := l.seq
		l.recs[b].issued = s
		l.mu.Unlock()
		if _, err := c.WriteAt(makeBlock(int64(b)*blk, s), int64(b)*blk); err != nil {
			c.Close()
			c = nil
			continue
		}
		now := time.Now()
		l.mu.Lock()
		if s > l.recs[b].answered {
			l.recs[b].answered = s
		}
		l.answers = append(l.answers, loadAnswer{node, now})
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
		if a.node == node && a.at.After(t) {
			return a.at
		}
	}
	return time.Time{}
}

func (l *blockLoad) halt() {
	close(l.stop)
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
		off := int64(b) * blk
		_, err := c.ReadAt(buf, off)
		require.NoError(p.t, err)
		got, ok := parseBlock(buf, off)
		switch {
		case want.answered == 0 && !ok && bytes.Equal(buf, make([]byte, blk)):
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
