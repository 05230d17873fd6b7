package e2e

// MariaDB end to end (issue 6, item 2): two real twinbd daemons and a
// witness on loopback; each node's promoter start list
// (scripts/e2e-mariadb-start.sh) attaches the node's own NBD export with
// nbdfuse + losetup (this host has no nbd kernel module), fscks and mounts
// ext4, and starts a private mariadbd on a Unix socket. A client commits
// autocommit INSERTs through the `mariadb` CLI and records every id whose
// statement returned OK; the whole Primary "node" (its twinbd daemon, its
// mariadbd and its nbdfuse) is killed with kill -9; the Secondary promotes
// by itself, its start list runs InnoDB crash recovery, and the client
// finds every recorded id there before it commits a new one. The time from
// the kill to that commit is what the test measures; roles alternate, one
// run per kill (TWINBD_MARIADB_RUNS, default 2).
//
// Needs root (losetup, mount), /dev/fuse, nbdfuse, mariadbd; missing
// packages are installed with scripts/deps.sh when possible, else the
// test skips. Skipped with -short.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/replication"
)

const mariaDiskSize = 256 << 20

var mariaNodes = []string{"alpha", "beta"} // node-id 0 and 1

// mariaCluster is the pair, its witness and the service directories.
type mariaCluster struct {
	t       *testing.T
	repo    string // repository root (the scripts)
	dir     string // logs, resource file, backing files, run dir
	base    string // BASE of the start/stop scripts: BASE/nodeN
	bin     string
	conf    string
	mu      sync.Mutex
	daemons map[string]*exec.Cmd
}

func mariaID(node string) int { return slices.Index(mariaNodes, node) }

func (c *mariaCluster) nodeDir(node string) string {
	return filepath.Join(c.base, fmt.Sprintf("node%d", mariaID(node)))
}

func (c *mariaCluster) sock(node string) string {
	return filepath.Join(c.nodeDir(node), "run", "mysqld.sock")
}

// mariaRequireTools skips unless everything the test needs is here,
// installing missing Debian packages first (scripts/deps.sh) when root.
func mariaRequireTools(t *testing.T, repo string) {
	if testing.Short() {
		t.Skip("MariaDB failover end to end: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (losetup, mount, mariadbd --user=mysql)")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("needs %s: %v", dev, err)
		}
	}
	tools := []string{"mariadbd", "mariadb", "mariadb-admin", "mariadb-install-db", "nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "blkid"}
	missing := func() []string {
		var m []string
		for _, tool := range tools {
			if _, err := exec.LookPath(tool); err != nil {
				m = append(m, tool)
			}
		}
		return m
	}
	if m := missing(); len(m) > 0 {
		out, err := exec.Command(filepath.Join(repo, "scripts", "deps.sh")).CombinedOutput()
		if m2 := missing(); len(m2) > 0 {
			t.Skipf("missing %v and scripts/deps.sh could not install them (%v): %s", m2, err, out)
		}
	}
}

func mariaFreePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// mariaAlive: pid exists and is not a zombie (orphans of the start script
// may not be reaped in a container).
func mariaAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func mariaPid(file string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func newMariaCluster(t *testing.T) *mariaCluster {
	repo, err := filepath.Abs("..")
	require.NoError(t, err)
	mariaRequireTools(t, repo)
	dir := t.TempDir()
	// mariadbd runs as mysql: every directory above its socket and data
	// directory must be traversable.
	for d := dir; d != filepath.Dir(d) && strings.HasPrefix(d, os.TempDir()) && d != filepath.Clean(os.TempDir()); d = filepath.Dir(d) {
		require.NoError(t, os.Chmod(d, 0o755))
	}
	c := &mariaCluster{t: t, repo: repo, dir: dir, base: filepath.Join(dir, "svc"), bin: filepath.Join(dir, "twinbd"), conf: filepath.Join(dir, "twinbd.conf"), daemons: map[string]*exec.Cmd{}}
	require.NoError(t, os.MkdirAll(c.base, 0o755))
	// Registered first, so it runs last: whatever the daemons' stop lists
	// left (a failed test, a killed node) is torn down by force.
	t.Cleanup(func() {
		for _, n := range mariaNodes {
			c.forceClean(n)
		}
	})

	if bin := os.Getenv("TWINBD_BIN"); bin != "" { // a prebuilt binary instead of this tree's
		c.bin = bin
	} else {
		build := exec.Command("go", "build", "-o", c.bin, "./cmd/twinbd")
		build.Dir = repo
		out, err := build.CombinedOutput()
		require.NoError(t, err, "go build: %s", out)
	}

	var nbdPort, replPort [2]int
	for i := range 2 {
		nbdPort[i], replPort[i] = mariaFreePort(t), mariaFreePort(t)
	}
	witness := fmt.Sprintf("127.0.0.1:%d", mariaFreePort(t))
	var b strings.Builder
	fmt.Fprintf(&b, `resource r0 {
  net { protocol C; shared-secret "maria"; connect-int 1; ping-int 1; ping-timeout 5; }
  witness %s;
  options { quorum majority; on-no-quorum suspend-io; auto-failover yes; }
  promoter {
    start "%s %s nbd://127.0.0.1:%d/r0 nbd://127.0.0.1:%d/r0" stop "%s %s";
    start-timeout 120; stop-timeout 120;
  }
`, witness, filepath.Join(repo, "scripts", "e2e-mariadb-start.sh"), c.base, nbdPort[0], nbdPort[1],
		filepath.Join(repo, "scripts", "e2e-mariadb-stop.sh"), c.base)
	for i, n := range mariaNodes {
		img := filepath.Join(dir, n+".img")
		require.NoError(t, os.WriteFile(img, nil, 0o600))
		require.NoError(t, os.Truncate(img, mariaDiskSize))
		fmt.Fprintf(&b, "  on %s { node-id %d; address 127.0.0.1:%d; export 127.0.0.1:%d; disk %s; meta-disk internal; }\n",
			n, i, replPort[i], nbdPort[i], img)
	}
	b.WriteString("}\n")
	require.NoError(t, os.WriteFile(c.conf, []byte(b.String()), 0o600))

	w := exec.Command(c.bin, "--config", c.conf, "witness", "--listen", witness, "--state", filepath.Join(dir, "witness.json"))
	wlog, err := os.Create(filepath.Join(dir, "witness.log"))
	require.NoError(t, err)
	w.Stdout, w.Stderr = wlog, wlog
	require.NoError(t, w.Start())
	t.Cleanup(func() {
		w.Process.Kill()
		w.Wait()
		wlog.Close()
	})
	return c
}

// tw runs the twinbd CLI as node.
func (c *mariaCluster) tw(node string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"--config", c.conf, "--node", node, "--run-dir", filepath.Join(c.dir, "run")}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *mariaCluster) ok(node string, args ...string) string {
	c.t.Helper()
	out, err := c.tw(node, args...)
	require.NoError(c.t, err, "%s: twinbd %v: %s", node, args, out)
	return out
}

func (c *mariaCluster) status(node string) replication.Status {
	c.t.Helper()
	var st []replication.Status
	require.NoError(c.t, json.Unmarshal([]byte(c.ok(node, "status", "--json", "r0")), &st))
	require.Len(c.t, st, 1)
	return st[0]
}

// start runs node's daemon (log: DIR/NODE.log) and waits for its control socket.
func (c *mariaCluster) start(node string) {
	c.t.Helper()
	cmd := exec.Command(c.bin, "--config", c.conf, "--node", node, "--run-dir", filepath.Join(c.dir, "run"), "daemon", "--log-level", "info")
	logf, err := os.OpenFile(filepath.Join(c.dir, node+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(c.t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(c.t, cmd.Start())
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	c.mu.Lock()
	c.daemons[node] = cmd
	c.mu.Unlock()
	c.t.Cleanup(func() {
		// SIGTERM: the daemon runs its stop list (mariadb shutdown, umount, ...).
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
	})
	require.Eventually(c.t, func() bool { _, err := c.tw(node, "status"); return err == nil }, 10*time.Second, 20*time.Millisecond)
}

// crash kills node's daemon, mariadbd and nbdfuse with SIGKILL, as close
// together as possible, then clears what the dead node leaves on this
// host (the lazy umount of the errored filesystem, the loop device, the
// fuse mount). Returns the time of the first kill.
func (c *mariaCluster) crash(node string) time.Time {
	c.t.Helper()
	nd := c.nodeDir(node)
	c.mu.Lock()
	d := c.daemons[node]
	c.mu.Unlock()
	my, fuse := mariaPid(filepath.Join(nd, "run", "mysqld.pid")), mariaPid(filepath.Join(nd, "nbdfuse.pid"))
	require.NotZero(c.t, my, "no mariadbd pid for %s", node)
	require.NotZero(c.t, fuse, "no nbdfuse pid for %s", node)
	killed := time.Now()
	require.NoError(c.t, d.Process.Kill())
	syscall.Kill(my, syscall.SIGKILL)
	syscall.Kill(fuse, syscall.SIGKILL)
	require.Eventually(c.t, func() bool { return !mariaAlive(my) && !mariaAlive(fuse) }, 10*time.Second, 5*time.Millisecond)
	c.clearDeadNode(node)
	return killed
}

// clearDeadNode: umount -l, losetup -d, umount -l of the fuse mount, as an
// administrator would after a node's processes died.
func (c *mariaCluster) clearDeadNode(node string) {
	nd := c.nodeDir(node)
	run := func(name string, args ...string) {
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			c.t.Logf("%s: %s %v: %v %s", node, name, args, err, out)
		}
	}
	if mariaMounted(filepath.Join(nd, "mnt")) {
		run("umount", "-l", filepath.Join(nd, "mnt"))
	}
	// The loop device the start script recorded (losetup -j cannot find it:
	// the file on the dead fuse mount no longer stats).
	if b, err := os.ReadFile(filepath.Join(nd, "loop")); err == nil {
		if l := strings.TrimSpace(string(b)); strings.HasPrefix(l, "/dev/loop") {
			if _, err := os.Stat(filepath.Join("/sys/block", filepath.Base(l), "loop")); err == nil {
				run("losetup", "-d", l)
			}
		}
	}
	if mariaMounted(filepath.Join(nd, "fuse")) {
		run("umount", "-l", filepath.Join(nd, "fuse"))
	}
	for _, f := range []string{"loop", "nbdfuse.pid", "run/mysqld.pid"} {
		os.Remove(filepath.Join(nd, f))
	}
}

// forceClean (test end): kill what is left of node's services, then clear.
func (c *mariaCluster) forceClean(node string) {
	nd := c.nodeDir(node)
	for _, f := range []string{"run/mysqld.pid", "nbdfuse.pid"} {
		if pid := mariaPid(filepath.Join(nd, f)); pid > 0 && mariaAlive(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
			for i := 0; i < 100 && mariaAlive(pid); i++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	c.clearDeadNode(node)
}

func mariaMounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == dir {
			return true
		}
	}
	return false
}

// sql runs statements through node's socket with the mariadb CLI (batch
// mode, no column names). err is nil only if every statement succeeded.
func (c *mariaCluster) sql(node, q string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "mariadb", "--no-defaults", "--socket="+c.sock(node), "-uroot", "-N", "-B", "-e", q).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, out)
	}
	return string(out), nil
}

// mariaWriters commit autocommit INSERTs of increasing ids on one node and
// record the ids whose statement returned OK.
type mariaWriters struct {
	c         *mariaCluster
	node      string
	next      *atomic.Int64
	mu        sync.Mutex
	committed []int64
	failed    int
	stop      chan struct{}
	wg        sync.WaitGroup
}

func (c *mariaCluster) startWriters(node string, next *atomic.Int64, workers int) *mariaWriters {
	w := &mariaWriters{c: c, node: node, next: next, stop: make(chan struct{})}
	for range workers {
		w.wg.Go(func() {
			for {
				select {
				case <-w.stop:
					return
				default:
				}
				id := next.Add(1)
				_, err := c.sql(node, fmt.Sprintf("INSERT INTO t.c (id, node) VALUES (%d, '%s')", id, node))
				w.mu.Lock()
				if err == nil {
					w.committed = append(w.committed, id)
				} else {
					w.failed++
				}
				w.mu.Unlock()
				if err != nil {
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
	return w
}

func (w *mariaWriters) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.committed)
}

func (w *mariaWriters) halt() []int64 {
	close(w.stop)
	w.wg.Wait()
	return slices.Clone(w.committed)
}

// ids reads every id in t.c from node.
func (c *mariaCluster) ids(node string) map[int64]bool {
	c.t.Helper()
	out, err := c.sql(node, "SELECT id FROM t.c")
	require.NoError(c.t, err)
	got := map[int64]bool{}
	for _, f := range strings.Fields(out) {
		id, err := strconv.ParseInt(f, 10, 64)
		require.NoError(c.t, err)
		got[id] = true
	}
	return got
}

var mariaStarted = regexp.MustCompile(`msg="promoter: services started".* took=(\S+)`)

// startLists lists how long each of node's start lists took (its daemon log).
func (c *mariaCluster) startLists(node string) []time.Duration {
	c.t.Helper()
	b, _ := os.ReadFile(filepath.Join(c.dir, node+".log"))
	var out []time.Duration
	for _, m := range mariaStarted.FindAllSubmatch(b, -1) {
		d, err := time.ParseDuration(string(m[1]))
		require.NoError(c.t, err)
		out = append(out, d)
	}
	return out
}

// nextStartList waits for node's start list after the first `before` ones
// to be logged (mariadbd may answer before the daemon has logged that its
// start command exited) and returns how long it took.
func (c *mariaCluster) nextStartList(node string, before int) time.Duration {
	c.t.Helper()
	require.Eventually(c.t, func() bool { return len(c.startLists(node)) > before }, 30*time.Second, 20*time.Millisecond,
		"%s: the daemon log shows no new start list", node)
	return c.startLists(node)[before]
}

// recoveries counts the InnoDB crash recoveries in node's mariadbd.err.
func (c *mariaCluster) recoveries(node string) int {
	b, _ := os.ReadFile(filepath.Join(c.nodeDir(node), "run", "mariadbd.err"))
	return strings.Count(string(b), "Starting crash recovery")
}

func (c *mariaCluster) logs() {
	if !c.t.Failed() {
		return
	}
	for _, n := range mariaNodes {
		b, _ := os.ReadFile(filepath.Join(c.dir, n+".log"))
		c.t.Logf("%s daemon log (tail):\n%s", n, mariaTail(b, 6000))
		b, _ = os.ReadFile(filepath.Join(c.nodeDir(n), "run", "mariadbd.err"))
		c.t.Logf("%s mariadbd.err (tail):\n%s", n, mariaTail(b, 3000))
	}
}

func mariaTail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// TestMariaDBFailover: kill -9 of the Primary node under committed
// transactions; the other node promotes, recovers MariaDB, and has every
// committed row. TWINBD_MARIADB_RUNS=N kills (default 2: alpha, then
// beta); TWINBD_MARIADB_REPORT=FILE writes the timing summary there;
// TWINBD_BIN=PATH uses that twinbd binary instead of building ./cmd/twinbd.
func TestMariaDBFailover(t *testing.T) {
	runs := 2
	if s := os.Getenv("TWINBD_MARIADB_RUNS"); s != "" {
		var err error
		runs, err = strconv.Atoi(s)
		require.NoError(t, err)
	}
	c := newMariaCluster(t)
	defer c.logs()

	for _, n := range mariaNodes {
		c.ok(n, "create-md", "--force", "r0")
		c.start(n)
	}
	for _, n := range mariaNodes {
		c.ok(n, "up", "r0")
	}
	c.ok("alpha", "wait-connect", "--timeout", "30s", "r0")
	// The first promotion: the start script finds no filesystem, runs
	// mkfs.ext4 and mariadb-install-db, then starts mariadbd.
	t0 := time.Now()
	c.ok("alpha", "primary", "--force", "r0")
	t.Logf("alpha: primary --force with first-time mkfs + install-db + mariadbd: %v", time.Since(t0).Round(time.Millisecond))
	c.ok("alpha", "wait-sync", "--timeout", "120s", "r0")
	_, err := c.sql("alpha", "CREATE DATABASE t; CREATE TABLE t.c (id BIGINT PRIMARY KEY, node VARCHAR(8) NOT NULL) ENGINE=InnoDB")
	require.NoError(t, err)

	var next atomic.Int64
	all := map[int64]bool{} // every id ever committed
	var times, promos, starts []time.Duration
	primary, other := "alpha", "beta"
	for run := 1; run <= runs; run++ {
		// The Secondary is UpToDate and the witness knows it (after a resync).
		require.Eventually(t, func() bool {
			st := c.status(other)
			return st.Devices[0].DiskState == "UpToDate" && !st.WitnessOutdated
		}, 60*time.Second, 50*time.Millisecond)
		w := c.startWriters(primary, &next, 4)
		require.Eventually(t, func() bool { return w.count() >= 200 }, 60*time.Second, 10*time.Millisecond, "no commits on %s", primary)

		recoveries, started := c.recoveries(other), len(c.startLists(other))
		killed := c.crash(primary)
		committed := w.halt()
		for _, id := range committed {
			all[id] = true
		}

		// The client follows: it retries the new Primary's socket.
		var promoted time.Duration
		require.Eventually(t, func() bool {
			if promoted == 0 {
				if out, err := c.tw(other, "role", "r0"); err == nil && strings.TrimSpace(out) == "Primary" {
					promoted = time.Since(killed)
				}
			}
			_, err := c.sql(other, "SELECT 1 FROM t.c LIMIT 1")
			return err == nil
		}, 120*time.Second, 20*time.Millisecond, "MariaDB never came up on %s after %s was killed", other, primary)
		require.Greater(t, c.recoveries(other), recoveries, "%s: mariadbd.err shows no InnoDB crash recovery", other)
		got := c.ids(other)
		var lost []int64
		for id := range all {
			if !got[id] {
				lost = append(lost, id)
			}
		}
		slices.Sort(lost)
		require.Empty(t, lost, "committed ids missing on %s after the failover (of %d committed)", other, len(all))
		id := next.Add(1)
		_, err := c.sql(other, fmt.Sprintf("INSERT INTO t.c (id, node) VALUES (%d, '%s')", id, other))
		require.NoError(t, err)
		took := time.Since(killed)
		all[id] = true
		startList := c.nextStartList(other, started)
		times, promos, starts = append(times, took), append(promos, promoted), append(starts, startList)
		t.Logf("run %d: kill -9 %s (daemon, mariadbd, nbdfuse) with %d commits recorded (%d in total, %d statements failed): %s Primary after %v, its start list took %v, first new commit after %v",
			run, primary, len(committed), len(all), w.failed, other, promoted.Round(time.Millisecond), startList.Round(time.Millisecond), took.Round(time.Millisecond))

		// The dead node comes back as Secondary and resyncs.
		c.start(primary)
		c.ok(primary, "up", "r0")
		c.ok(other, "wait-sync", "--timeout", "120s", "r0")
		require.Equal(t, "Secondary", c.status(primary).Role)
		primary, other = other, primary
	}

	summary := func(name string, d []time.Duration) string {
		s := slices.Clone(d)
		slices.Sort(s)
		return fmt.Sprintf("%s: runs=%d median=%v max=%v min=%v", name, len(s), s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond), s[0].Round(time.Millisecond))
	}
	report := summary("kill -9 Primary node -> first new commit on the new Primary", times) + "\n" +
		summary("kill -9 Primary node -> new Primary promoted (role)", promos) + "\n" +
		summary("the new Primary's start list (nbdfuse .. mariadbd answers)", starts) + "\n"
	t.Log("\n" + report)
	if f := os.Getenv("TWINBD_MARIADB_REPORT"); f != "" {
		require.NoError(t, os.WriteFile(f, []byte(report), 0o644))
	}
}
