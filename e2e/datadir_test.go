package e2e

// Service data directory end to end (issue 6, item 4; the Eucalyptus
// cloud-controller case): two real twinbd daemons and a witness on
// loopback with auto-failover; each node's promoter start list
// (scripts/e2e-fs-start.sh) attaches the node's own NBD export with
// nbdfuse + losetup (this host has no nbd kernel module), fscks and mounts
// ext4. The test process is the service: it writes a tree of files and
// directories under the mountpoint (random sizes, nested directories,
// renames, overwrites, deletes), fsyncs every file and the directories it
// changed, and records the checksum of each file once those fsyncs
// returned. The whole Primary "node" (its daemon and its nbdfuse) is
// killed with kill -9; the Secondary promotes by itself, its start list
// replays the ext4 journal and mounts; the writer goes on there, and every
// recorded file must be present with its recorded checksum. The time from
// the kill to the first fsync that returns on the new Primary is what the
// test measures. At the end the filesystem is unmounted (planned demotion)
// and `e2fsck -fn` must find both nodes' images clean.
//
// The cluster helpers (fsCluster) are shared with e2e/rabbitmq_test.go.
// Needs root, /dev/fuse, nbdfuse, losetup, e2fsprogs (scripts/deps.sh
// installs them when possible, else the test skips). Skipped with -short.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
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

const fsDiskSize = 256 << 20

var fsNodes = []string{"alpha", "beta"} // node-id 0 and 1

// fsCluster is the pair, its witness and the service directories. The
// start list is scripts/e2e-fs-start.sh plus the caller's entries.
type fsCluster struct {
	t        *testing.T
	repo     string // repository root (the scripts)
	dir      string // logs, resource file, backing files, run dir
	base     string // BASE of the start/stop scripts: BASE/nodeN
	bin      string
	conf     string
	pidFiles []string // per node, relative to its node dir: killed by crash and cleanup
	mu       sync.Mutex
	daemons  map[string]*exec.Cmd
}

func fsID(node string) int { return slices.Index(fsNodes, node) }

func (c *fsCluster) nodeDir(node string) string {
	return filepath.Join(c.base, fmt.Sprintf("node%d", fsID(node)))
}

// mnt is node's mountpoint (BASE/nodeN/mnt).
func (c *fsCluster) mnt(node string) string { return filepath.Join(c.nodeDir(node), "mnt") }

func (c *fsCluster) image(node string) string { return filepath.Join(c.dir, node+".img") }

// fsRequireTools skips unless root and every tool is here, installing
// missing Debian packages first (scripts/deps.sh) when possible.
func fsRequireTools(t *testing.T, repo string, extra ...string) {
	if testing.Short() {
		t.Skip("failover end to end: skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (losetup, mount)")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("needs %s: %v", dev, err)
		}
	}
	tools := append([]string{"nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "blkid", "mountpoint"}, extra...)
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

func fsFreePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// fsAlive: pid exists and is not a zombie.
func fsAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func fsPid(file string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func fsMounted(dir string) bool {
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

// newFSCluster writes the resource file (the start list: the filesystem,
// then extra, a promoter block fragment such as `start "A" stop "B";` in
// which {BASE} stands for the scripts' BASE directory),
// builds twinbd and starts the witness. pidFiles (relative to a node dir)
// name the services' processes crash and cleanup kill, besides nbdfuse.
func newFSCluster(t *testing.T, extra string, pidFiles []string, tools ...string) *fsCluster {
	repo, err := filepath.Abs("..")
	require.NoError(t, err)
	fsRequireTools(t, repo, tools...)
	dir := t.TempDir()
	// Services may run as another user: every directory above must be traversable.
	for d := dir; d != filepath.Dir(d) && strings.HasPrefix(d, os.TempDir()) && d != filepath.Clean(os.TempDir()); d = filepath.Dir(d) {
		require.NoError(t, os.Chmod(d, 0o755))
	}
	c := &fsCluster{t: t, repo: repo, dir: dir, base: filepath.Join(dir, "svc"), bin: filepath.Join(dir, "twinbd"),
		conf: filepath.Join(dir, "twinbd.conf"), pidFiles: append(slices.Clone(pidFiles), "nbdfuse.pid"), daemons: map[string]*exec.Cmd{}}
	require.NoError(t, os.MkdirAll(c.base, 0o755))
	// Registered first, so it runs last: whatever the daemons' stop lists
	// left (a failed test, a killed node) is torn down by force.
	t.Cleanup(func() {
		for _, n := range fsNodes {
			c.forceClean(n)
		}
	})

	if bin := os.Getenv("TWINBD_BIN"); bin != "" {
		c.bin = bin
	} else {
		build := exec.Command("go", "build", "-o", c.bin, "./cmd/twinbd")
		build.Dir = repo
		out, err := build.CombinedOutput()
		require.NoError(t, err, "go build: %s", out)
	}

	var nbdPort, replPort [2]int
	for i := range 2 {
		nbdPort[i], replPort[i] = fsFreePort(t), fsFreePort(t)
	}
	witness := fmt.Sprintf("127.0.0.1:%d", fsFreePort(t))
	var b strings.Builder
	fmt.Fprintf(&b, `resource r0 {
  net { protocol C; shared-secret "fs"; connect-int 1; ping-int 1; ping-timeout 5; }
  witness %s;
  options { quorum majority; on-no-quorum suspend-io; auto-failover yes; }
  promoter {
    start "%s %s nbd://127.0.0.1:%d/r0 nbd://127.0.0.1:%d/r0" stop "%s %s";
    %s
    start-timeout 120; stop-timeout 120;
  }
`, witness, filepath.Join(repo, "scripts", "e2e-fs-start.sh"), c.base, nbdPort[0], nbdPort[1],
		filepath.Join(repo, "scripts", "e2e-fs-stop.sh"), c.base, strings.ReplaceAll(extra, "{BASE}", c.base))
	for i, n := range fsNodes {
		img := c.image(n)
		require.NoError(t, os.WriteFile(img, nil, 0o600))
		require.NoError(t, os.Truncate(img, fsDiskSize))
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
func (c *fsCluster) tw(node string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"--config", c.conf, "--node", node, "--run-dir", filepath.Join(c.dir, "run")}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *fsCluster) ok(node string, args ...string) string {
	c.t.Helper()
	out, err := c.tw(node, args...)
	require.NoError(c.t, err, "%s: twinbd %v: %s", node, args, out)
	return out
}

func (c *fsCluster) status(node string) replication.Status {
	c.t.Helper()
	var st []replication.Status
	require.NoError(c.t, json.Unmarshal([]byte(c.ok(node, "status", "--json", "r0")), &st))
	require.Len(c.t, st, 1)
	return st[0]
}

// start runs node's daemon (log: DIR/NODE.log) and waits for its control socket.
func (c *fsCluster) start(node string) {
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
		cmd.Process.Signal(syscall.SIGTERM) // the daemon runs its stop list
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

// bringUp: create-md, daemons, up, connect; node first is promoted by hand
// (its start list runs mkfs) and the pair is synced.
func (c *fsCluster) bringUp(first string) time.Duration {
	c.t.Helper()
	for _, n := range fsNodes {
		c.ok(n, "create-md", "--force", "r0")
		c.start(n)
	}
	for _, n := range fsNodes {
		c.ok(n, "up", "r0")
	}
	c.ok(first, "wait-connect", "--timeout", "30s", "r0")
	t0 := time.Now()
	c.ok(first, "primary", "--force", "r0")
	took := time.Since(t0)
	c.ok(first, "wait-sync", "--timeout", "120s", "r0")
	require.True(c.t, fsMounted(c.mnt(first)), "%s: nothing mounted on %s after the promotion", first, c.mnt(first))
	return took
}

// waitPeerReady: other is UpToDate and the witness knows it.
func (c *fsCluster) waitPeerReady(other string) {
	c.t.Helper()
	require.Eventually(c.t, func() bool {
		st := c.status(other)
		return st.Devices[0].DiskState == "UpToDate" && !st.WitnessOutdated
	}, 60*time.Second, 50*time.Millisecond)
}

// kill kills node's daemon, nbdfuse and the services' processes with
// SIGKILL, as close together as possible, and waits until they are gone.
// Returns the time of the first kill. clearDeadNode clears the rest.
func (c *fsCluster) kill(node string) time.Time {
	c.t.Helper()
	nd := c.nodeDir(node)
	c.mu.Lock()
	d := c.daemons[node]
	c.mu.Unlock()
	var pids []int
	for _, f := range c.pidFiles {
		pid := fsPid(filepath.Join(nd, f))
		require.NotZero(c.t, pid, "%s: no pid in %s", node, f)
		pids = append(pids, pid)
	}
	killed := time.Now()
	require.NoError(c.t, d.Process.Kill())
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	require.Eventually(c.t, func() bool {
		for _, pid := range pids {
			if fsAlive(pid) {
				return false
			}
		}
		return true
	}, 10*time.Second, 5*time.Millisecond)
	return killed
}

// clearDeadNode: umount -l, losetup -d, umount -l of the fuse mount, as an
// administrator would after a node's processes died.
func (c *fsCluster) clearDeadNode(node string) {
	nd := c.nodeDir(node)
	run := func(name string, args ...string) {
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			c.t.Logf("%s: %s %v: %v %s", node, name, args, err, out)
		}
	}
	if fsMounted(filepath.Join(nd, "mnt")) {
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
	if fsMounted(filepath.Join(nd, "fuse")) {
		run("umount", "-l", filepath.Join(nd, "fuse"))
	}
	os.Remove(filepath.Join(nd, "loop"))
	for _, f := range c.pidFiles {
		os.Remove(filepath.Join(nd, f))
	}
}

// forceClean (test end): kill what is left of node's services, then clear.
func (c *fsCluster) forceClean(node string) {
	nd := c.nodeDir(node)
	for _, f := range c.pidFiles {
		if pid := fsPid(filepath.Join(nd, f)); pid > 0 && fsAlive(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
			for i := 0; i < 100 && fsAlive(pid); i++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	c.clearDeadNode(node)
}

var fsStarted = regexp.MustCompile(`msg="promoter: services started".* took=(\S+)`)

// startLists lists how long each of node's start lists took (its daemon log).
func (c *fsCluster) startLists(node string) []time.Duration {
	c.t.Helper()
	b, _ := os.ReadFile(filepath.Join(c.dir, node+".log"))
	var out []time.Duration
	for _, m := range fsStarted.FindAllSubmatch(b, -1) {
		d, err := time.ParseDuration(string(m[1]))
		require.NoError(c.t, err)
		out = append(out, d)
	}
	return out
}

// nextStartList waits for node's start list after the first `before` ones
// to be logged and returns how long it took.
func (c *fsCluster) nextStartList(node string, before int) time.Duration {
	c.t.Helper()
	require.Eventually(c.t, func() bool { return len(c.startLists(node)) > before }, 30*time.Second, 20*time.Millisecond,
		"%s: the daemon log shows no new start list", node)
	return c.startLists(node)[before]
}

func (c *fsCluster) logs(extra ...string) {
	if !c.t.Failed() {
		return
	}
	for _, n := range fsNodes {
		b, _ := os.ReadFile(filepath.Join(c.dir, n+".log"))
		c.t.Logf("%s daemon log (tail):\n%s", n, fsTail(b, 6000))
		for _, f := range extra {
			b, _ = os.ReadFile(filepath.Join(c.nodeDir(n), f))
			c.t.Logf("%s %s (tail):\n%s", n, f, fsTail(b, 3000))
		}
	}
}

func fsTail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// e2fsckClean runs e2fsck -fn on node's backing file (the metadata is at
// its end, the filesystem starts at offset 0).
func (c *fsCluster) e2fsckClean(node string) {
	c.t.Helper()
	out, err := exec.Command("e2fsck", "-fn", c.image(node)).CombinedOutput()
	require.NoError(c.t, err, "%s: e2fsck -fn %s: %s", node, c.image(node), out)
}

func fsSummary(name string, d []time.Duration) string {
	s := slices.Clone(d)
	slices.Sort(s)
	return fmt.Sprintf("%s: runs=%d median=%v max=%v min=%v", name, len(s), s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond), s[0].Round(time.Millisecond))
}

// ---- the writer ----

// fsTree is a writer's durable state: the files whose fsyncs returned (a
// relative path and its content's SHA-256) and the directories whose
// entries were fsynced in their parent. A file an operation is changing
// leaves the record first and comes back only when the fsyncs returned.
type fsTree struct {
	files map[string][32]byte
	dirs  []string
}

// fsWriter runs workers, each in its own subtree wN of the mountpoint.
type fsWriter struct {
	seq    atomic.Int64 // unique names across workers and failovers
	trees  []*fsTree
	ops    atomic.Int64 // operations whose fsyncs returned
	failed atomic.Int64
	mu     sync.Mutex
	first  time.Time // the first fsync that returned since start
	stop   chan struct{}
	wg     sync.WaitGroup
}

func newFSWriter(workers int) *fsWriter {
	w := &fsWriter{}
	for i := range workers {
		w.trees = append(w.trees, &fsTree{files: map[string][32]byte{}, dirs: []string{fmt.Sprintf("w%d", i)}})
	}
	return w
}

func fsSyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// fsWriteFile writes data to path (created or truncated) and fsyncs it
// and its directory.
func fsWriteFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return fsSyncDir(filepath.Dir(path))
}

func fsRandomData(rng *rand.Rand) []byte {
	var n int
	switch r := rng.IntN(10); {
	case r < 2:
		n = rng.IntN(64) // tiny, some empty
	case r < 8:
		n = rng.IntN(16 << 10)
	default:
		n = rng.IntN(256 << 10)
	}
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// op does one random operation in tree under root.
func (w *fsWriter) op(root string, tr *fsTree, rng *rand.Rand) error {
	abs := func(rel string) string { return filepath.Join(root, rel) }
	pick := func() (string, bool) {
		if len(tr.files) == 0 {
			return "", false
		}
		names := make([]string, 0, len(tr.files))
		for n := range tr.files {
			names = append(names, n)
		}
		slices.Sort(names)
		return names[rng.IntN(len(names))], true
	}
	dir := tr.dirs[rng.IntN(len(tr.dirs))]
	r := rng.IntN(100)
	switch {
	case r < 8 && len(tr.dirs) < 40: // a nested directory
		d := filepath.Join(dir, fmt.Sprintf("d%d", w.seq.Add(1)))
		if err := os.Mkdir(abs(d), 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := fsSyncDir(abs(d)); err != nil {
			return err
		}
		if err := fsSyncDir(abs(dir)); err != nil {
			return err
		}
		tr.dirs = append(tr.dirs, d)
		return nil
	case r < 25: // overwrite in place
		if name, ok := pick(); ok {
			delete(tr.files, name)
			data := fsRandomData(rng)
			if err := fsWriteFile(abs(name), data); err != nil {
				return err
			}
			tr.files[name] = sha256.Sum256(data)
			return nil
		}
	case r < 40: // rename, maybe into another directory, maybe over a recorded file
		if name, ok := pick(); ok {
			sum := tr.files[name]
			to := filepath.Join(dir, fmt.Sprintf("r%d", w.seq.Add(1)))
			if rng.IntN(4) == 0 {
				if victim, ok := pick(); ok && victim != name {
					to = victim
				}
			}
			delete(tr.files, name)
			delete(tr.files, to)
			if err := os.Rename(abs(name), abs(to)); err != nil {
				return err
			}
			if err := fsSyncDir(filepath.Dir(abs(to))); err != nil {
				return err
			}
			if err := fsSyncDir(filepath.Dir(abs(name))); err != nil {
				return err
			}
			tr.files[to] = sum
			return nil
		}
	case r < 48: // delete
		if name, ok := pick(); ok {
			delete(tr.files, name)
			if err := os.Remove(abs(name)); err != nil {
				return err
			}
			return fsSyncDir(filepath.Dir(abs(name)))
		}
	}
	name := filepath.Join(dir, fmt.Sprintf("f%d", w.seq.Add(1)))
	data := fsRandomData(rng)
	if err := fsWriteFile(abs(name), data); err != nil {
		return err
	}
	tr.files[name] = sha256.Sum256(data)
	return nil
}

// start runs the workers on root once something is mounted there: the
// writer of a service that retries until its data directory is back.
func (w *fsWriter) start(root string, seed uint64) {
	w.stop = make(chan struct{})
	w.mu.Lock()
	w.first = time.Time{}
	w.mu.Unlock()
	for i, tr := range w.trees {
		w.wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			for !fsMounted(root) {
				select {
				case <-w.stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
			if err := os.MkdirAll(filepath.Join(root, tr.dirs[0]), 0o755); err == nil {
				fsSyncDir(filepath.Join(root, tr.dirs[0]))
				fsSyncDir(root)
			}
			for {
				select {
				case <-w.stop:
					return
				default:
				}
				if err := w.op(root, tr, rng); err != nil {
					w.failed.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				now := time.Now()
				w.ops.Add(1)
				w.mu.Lock()
				if w.first.IsZero() {
					w.first = now
				}
				w.mu.Unlock()
			}
		})
	}
}

func (w *fsWriter) firstOK() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.first
}

// halt stops the workers; false if one is stuck in a system call.
func (w *fsWriter) halt(timeout time.Duration) bool {
	close(w.stop)
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// verify checks every recorded file under root; returns the number of
// recorded files, bytes, and files found that are not recorded (left by
// operations in flight at a crash).
func (w *fsWriter) verify(t *testing.T, root string) (files int, size int64, unrecorded int) {
	t.Helper()
	var bad []string
	seen := map[string]bool{}
	for _, tr := range w.trees {
		for name, sum := range tr.files {
			seen[name] = true
			b, err := os.ReadFile(filepath.Join(root, name))
			if err != nil {
				bad = append(bad, fmt.Sprintf("%s: %v", name, err))
				continue
			}
			if got := sha256.Sum256(b); !bytes.Equal(got[:], sum[:]) {
				bad = append(bad, fmt.Sprintf("%s: checksum %x, recorded %x (%d bytes)", name, got[:6], sum[:6], len(b)))
				continue
			}
			files++
			size += int64(len(b))
		}
		for _, d := range tr.dirs {
			if st, err := os.Stat(filepath.Join(root, d)); err != nil || !st.IsDir() {
				bad = append(bad, fmt.Sprintf("directory %s: %v", d, err))
			}
		}
	}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if rel, _ := filepath.Rel(root, p); !seen[rel] && !strings.HasPrefix(rel, "lost+found") {
				unrecorded++
			}
		}
		return nil
	})
	slices.Sort(bad)
	require.Empty(t, bad, "fsynced files missing or changed under %s (%d recorded)", root, files+len(bad))
	return files, size, unrecorded
}

// TestDataDirFailover: kill -9 of the Primary node under a writer that
// fsyncs files and directories on the replicated ext4; the other node
// promotes, fscks and mounts, and has every fsynced file.
// TWINBD_DATADIR_RUNS=N kills (default 2: alpha, then beta);
// TWINBD_DATADIR_REPORT=FILE writes the timing summary there;
// TWINBD_BIN=PATH uses that twinbd binary.
func TestDataDirFailover(t *testing.T) {
	runs := 2
	if s := os.Getenv("TWINBD_DATADIR_RUNS"); s != "" {
		var err error
		runs, err = strconv.Atoi(s)
		require.NoError(t, err)
	}
	c := newFSCluster(t, "", nil)
	defer c.logs("e2fsck.log")

	first := c.bringUp("alpha")
	t.Logf("alpha: primary --force with first-time mkfs.ext4 + mount: %v", first.Round(time.Millisecond))

	w := newFSWriter(2)
	running := false
	t.Cleanup(func() { // before the daemons' stop lists umount
		if running {
			w.halt(30 * time.Second)
		}
	})
	var times, promos, starts []time.Duration
	primary, other := "alpha", "beta"
	w.start(c.mnt(primary), 0)
	running = true
	for run := 1; run <= runs; run++ {
		c.waitPeerReady(other)
		before := w.ops.Load()
		require.Eventually(t, func() bool { return w.ops.Load() >= before+150 }, 60*time.Second, 10*time.Millisecond,
			"no fsyncs on %s", primary)

		started := len(c.startLists(other))
		failedBefore := w.failed.Load()
		killed := c.kill(primary)
		running = false
		require.True(t, w.halt(30*time.Second), "the writer is stuck on the dead node's mount")
		failedAtKill := w.failed.Load() - failedBefore
		c.clearDeadNode(primary)

		// The writer follows: it waits for the new mount and goes on there.
		w.start(c.mnt(other), uint64(run))
		running = true
		var promoted time.Duration
		require.Eventually(t, func() bool {
			if promoted == 0 {
				if out, err := c.tw(other, "role", "r0"); err == nil && strings.TrimSpace(out) == "Primary" {
					promoted = time.Since(killed)
				}
			}
			return !w.firstOK().IsZero()
		}, 120*time.Second, 10*time.Millisecond, "no fsync returned on %s after %s was killed", other, primary)
		took := w.firstOK().Sub(killed)
		if promoted == 0 || promoted > took {
			promoted = took // the role poll came late
		}
		running = false
		require.True(t, w.halt(30*time.Second))
		files, size, unrec := w.verify(t, c.mnt(other))
		startList := c.nextStartList(other, started)
		times, promos, starts = append(times, took), append(promos, promoted), append(starts, startList)
		t.Logf("run %d: kill -9 %s (daemon, nbdfuse) after %d fsynced operations (%d failed at the kill): %s Primary after %v, its start list (nbdfuse .. mount) took %v, first fsync on it after %v; %d recorded files (%.1f MiB) verified, %d unrecorded files (in flight at the kill)",
			run, primary, before+150, failedAtKill, other, promoted.Round(time.Millisecond), startList.Round(time.Millisecond), took.Round(time.Millisecond),
			files, float64(size)/(1<<20), unrec)

		w.start(c.mnt(other), uint64(100+run))
		running = true
		// The dead node comes back as Secondary and resyncs.
		c.start(primary)
		c.ok(primary, "up", "r0")
		c.ok(other, "wait-sync", "--timeout", "120s", "r0")
		require.Equal(t, "Secondary", c.status(primary).Role)
		primary, other = other, primary
	}
	time.Sleep(300 * time.Millisecond)
	running = false
	require.True(t, w.halt(30*time.Second))
	files, size, _ := w.verify(t, c.mnt(primary))
	t.Logf("end: %d operations fsynced in all, %d recorded files (%.1f MiB) verified on %s", w.ops.Load(), files, float64(size)/(1<<20), primary)

	// Planned demotion: the stop list unmounts; both images must be clean.
	c.ok(primary, "secondary", "r0")
	require.False(t, fsMounted(c.mnt(primary)), "%s: still mounted after the demotion", primary)
	c.ok(other, "wait-sync", "--timeout", "60s", "r0")
	for _, n := range fsNodes {
		c.e2fsckClean(n)
	}

	report := fsSummary("kill -9 Primary node -> first fsync returned on the new Primary", times) + "\n" +
		fsSummary("kill -9 Primary node -> new Primary promoted (role)", promos) + "\n" +
		fsSummary("the new Primary's start list (nbdfuse, losetup, e2fsck -p, mount)", starts) + "\n"
	t.Log("\n" + report)
	if f := os.Getenv("TWINBD_DATADIR_REPORT"); f != "" {
		require.NoError(t, os.WriteFile(f, []byte(report), 0o644))
	}
}
