package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twinbd/twinbd/replication"
)

// Nodes are the two node names, node-id 0 and 1; alpha dials beta.
var Nodes = [2]string{"alpha", "beta"}

// proc is a daemon or witness process the harness started. An exit the
// harness did not cause is a crash.
type proc struct {
	name     string
	cmd      *exec.Cmd
	done     chan struct{}
	mu       sync.Mutex
	expected bool // the harness killed it
	stopped  bool // SIGSTOPped
	err      error
}

// cluster is two node daemons and a witness on loopback, every link
// through a Proxy.
type cluster struct {
	bin, dir string
	size     int64
	conf     map[string]string // per node; "witness" too
	nbd      map[string]int
	repl     map[string]int
	witness  string // the witness's real address
	peer     *Proxy // alpha → beta's address
	wlink    map[string]*Proxy
	// daemonArgs are extra daemon flags (Config.daemonArgs).
	daemonArgs []string

	mu      sync.Mutex
	procs   map[string]*proc
	crashes []string
}

// Ports for the daemons come from below Linux's ephemeral range
// (32768-60999): a port found free and closed again can otherwise be taken
// before the daemon binds it, by an outgoing connection or by a proxy
// listening on port 0 (seen with two scenarios running at once: a daemon's
// peer dialled another scenario's proxy). handed remembers what this
// process gave out already.
var (
	portMu   sync.Mutex
	handed   = map[int]bool{}
	portNext = 20000 + int(time.Now().UnixNano()%10000)
)

func freePort() (int, error) {
	portMu.Lock()
	defer portMu.Unlock()
	for range 12768 {
		p := portNext
		portNext++
		if portNext >= 32768 {
			portNext = 20000
		}
		if handed[p] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue // in use
		}
		ln.Close()
		handed[p] = true
		return p, nil
	}
	return 0, fmt.Errorf("chaos: no free port in 20000-32767")
}

// newCluster writes the resource files and backing files and starts the
// proxies (nothing runs yet).
func newCluster(bin, dir string, size int64, protocol string, seed uint64) (*cluster, error) {
	c := &cluster{bin: bin, dir: dir, size: size, conf: map[string]string{}, nbd: map[string]int{}, repl: map[string]int{},
		wlink: map[string]*Proxy{}, procs: map[string]*proc{}}
	ports := make([]int, 5)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	c.nbd["alpha"], c.nbd["beta"] = ports[0], ports[1]
	c.repl["alpha"], c.repl["beta"] = ports[2], ports[3]
	c.witness = fmt.Sprintf("127.0.0.1:%d", ports[4])
	var err error
	c.peer, err = NewClassifyingProxy("peer", fmt.Sprintf("127.0.0.1:%d", c.repl["beta"]), seed,
		Classifier{N: replication.PreambleSize, Name: peerChannel})
	if err != nil {
		return nil, err
	}
	for i, n := range Nodes {
		if c.wlink[n], err = NewProxy("witness-"+n, c.witness, seed+uint64(i)+1); err != nil {
			return nil, err
		}
	}
	for _, n := range Nodes {
		img := filepath.Join(dir, n+".img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			return nil, err
		}
		if err := os.Truncate(img, size); err != nil {
			return nil, err
		}
	}
	write := func(name, witness, betaAddr string) error {
		var b strings.Builder
		fmt.Fprintf(&b, "# twinbd chaos: %s's resource file\nresource r0 {\n", name)
		fmt.Fprintf(&b, "  net { protocol %s; shared-secret \"chaos-secret\"; connect-int 1; ping-int 1; ping-timeout 5; }\n", protocol)
		fmt.Fprintf(&b, "  witness %s;\n", witness)
		b.WriteString("  options { quorum majority; on-no-quorum suspend-io; auto-failover yes; }\n")
		for i, n := range Nodes {
			addr := fmt.Sprintf("127.0.0.1:%d", c.repl[n])
			if n == "beta" {
				addr = betaAddr
			}
			fmt.Fprintf(&b, "  on %s { node-id %d; address %s; export 127.0.0.1:%d; disk %s; meta-disk internal; }\n",
				n, i, addr, c.nbd[n], filepath.Join(dir, n+".img"))
		}
		b.WriteString("}\n")
		c.conf[name] = filepath.Join(dir, name+".conf")
		return os.WriteFile(c.conf[name], []byte(b.String()), 0o600)
	}
	beta := fmt.Sprintf("127.0.0.1:%d", c.repl["beta"])
	if err := write("alpha", c.wlink["alpha"].Addr(), c.peer.Addr()); err != nil {
		return nil, err
	}
	if err := write("beta", c.wlink["beta"].Addr(), beta); err != nil {
		return nil, err
	}
	if err := write("witness", c.witness, beta); err != nil {
		return nil, err
	}
	return c, nil
}

// The classes of the peer proxy's connections: the replication channels.
const (
	DataChannel = "data"
	MetaChannel = "meta"
)

// peerChannel names a peer-link connection by the preamble its dialer
// sends first (replication/transport.go): "TWBC", version, channel, 0, 0.
func peerChannel(first []byte) string {
	if len(first) < replication.PreambleSize || string(first[:4]) != "TWBC" {
		return ""
	}
	switch replication.Channel(first[5]) {
	case replication.ChannelData:
		return DataChannel
	case replication.ChannelMeta:
		return MetaChannel
	}
	return ""
}

func (c *cluster) proxies() []*Proxy { return []*Proxy{c.peer, c.wlink["alpha"], c.wlink["beta"]} }

func (c *cluster) url(node string) string { return fmt.Sprintf("nbd://127.0.0.1:%d/r0", c.nbd[node]) }

func (c *cluster) args(node string, args ...string) []string {
	return append([]string{"--config", c.conf[node], "--node", node, "--run-dir", filepath.Join(c.dir, "run")}, args...)
}

// twinbd runs a CLI verb as node, bounded by timeout.
func (c *cluster) twinbd(timeout time.Duration, node string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, c.args(node, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: twinbd %s: %v: %s", node, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// status is node's `status --json` for r0.
func (c *cluster) status(node string) (*replication.Status, error) {
	out, err := c.twinbd(3*time.Second, node, "status", "--json", "r0")
	if err != nil {
		return nil, err
	}
	var st []replication.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("%s: status --json: %w", node, err)
	}
	if len(st) != 1 || len(st[0].Devices) != 1 {
		return nil, fmt.Errorf("%s: status --json: %d resources", node, len(st))
	}
	return &st[0], nil
}

// start runs a process whose output appends to DIR/NAME.log.
func (c *cluster) start(name string, args ...string) error {
	logf, err := os.OpenFile(filepath.Join(c.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "==== twinbd chaos: started at %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	c.mu.Lock()
	c.procs[name] = p
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.err = err
		expected := p.expected
		p.mu.Unlock()
		if !expected {
			c.mu.Lock()
			c.crashes = append(c.crashes, fmt.Sprintf("%s exited by itself at %s: %v (log: %s)", name, time.Now().Format("15:04:05.000"), err, logf.Name()))
			c.mu.Unlock()
		}
		close(p.done)
	}()
	return nil
}

// startDaemon starts node's daemon (with fault injection: `debug
// disk-fault` works) and waits for its control socket.
func (c *cluster) startDaemon(node string) error {
	args := append(c.args(node, "daemon", "--log-level", "info", "--fault-injection"), c.daemonArgs...)
	if err := c.start(node, args...); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.twinbd(2*time.Second, node, "status"); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// up runs `up r0` on node, retrying while the daemon starts.
func (c *cluster) up(node string) error {
	var err error
	for range 50 {
		if _, err = c.twinbd(5*time.Second, node, "up", "r0"); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

func (c *cluster) startWitness() error {
	return c.start("witness", "--config", c.conf["witness"], "witness", "--listen", c.witness,
		"--state", filepath.Join(c.dir, "witness.json"), "--log-level", "info")
}

// signal sends sig to a process; SIGKILL and SIGTERM wait for it to exit
// (and mark it expected: not a crash).
func (c *cluster) signal(name string, sig syscall.Signal) error {
	c.mu.Lock()
	p := c.procs[name]
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("%s is not running", name)
	}
	p.mu.Lock()
	switch sig {
	case syscall.SIGKILL, syscall.SIGTERM:
		p.expected = true
	case syscall.SIGSTOP:
		p.stopped = true
	case syscall.SIGCONT:
		p.stopped = false
	}
	p.mu.Unlock()
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%s: %v: %w", name, sig, err)
	}
	if sig == syscall.SIGKILL || sig == syscall.SIGTERM {
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	return nil
}

// powerFail makes node's disk lose power (`debug disk-fault r0
// power-fail`: every unflushed write reverted, the daemon exits at once)
// and waits for the daemon to be gone (an exit the harness caused, not a
// crash). It returns the bytes the daemon logged as reverted (-1: not
// found in its log).
func (c *cluster) powerFail(node string) (int64, error) {
	c.mu.Lock()
	p := c.procs[node]
	c.mu.Unlock()
	if p == nil {
		return 0, fmt.Errorf("%s is not running", node)
	}
	p.mu.Lock()
	p.expected = true
	p.mu.Unlock()
	_, err := c.twinbd(10*time.Second, node, "debug", "disk-fault", "r0", "power-fail")
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return 0, fmt.Errorf("%s still ran 20 s after power-fail (killed): %v", node, err)
	}
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile(filepath.Join(c.dir, node+".log"))
	if err != nil {
		return -1, nil
	}
	if i := bytes.LastIndex(b, []byte("simulated power failure")); i >= 0 {
		if m := revertedRE.FindSubmatch(b[i:]); m != nil {
			n, err := strconv.ParseInt(string(m[1]), 10, 64)
			if err == nil {
				return n, nil
			}
		}
	}
	return -1, nil
}

var revertedRE = regexp.MustCompile(`reverted=(\d+)`)

// replaceDisk replaces node's failed disk while the resource is up and
// Diskless: a new, empty disk behind the same path, create-md, attach
// (a full resync from the peer follows).
func (c *cluster) replaceDisk(node string) error {
	img := filepath.Join(c.dir, node+".img")
	if err := os.Truncate(img, 0); err != nil {
		return err
	}
	if err := os.Truncate(img, c.size); err != nil {
		return err
	}
	if _, err := c.twinbd(30*time.Second, node, "create-md", "--force", "r0"); err != nil {
		return err
	}
	_, err := c.twinbd(30*time.Second, node, "attach", "r0")
	return err
}

// running says whether the process is alive.
func (c *cluster) running(name string) bool {
	c.mu.Lock()
	p := c.procs[name]
	c.mu.Unlock()
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (c *cluster) takeCrashes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.crashes
	c.crashes = nil
	return out
}

// shutdown stops everything (not a crash) and closes the proxies.
func (c *cluster) shutdown() {
	c.mu.Lock()
	var ps []*proc
	for _, p := range c.procs {
		ps = append(ps, p)
	}
	c.mu.Unlock()
	for _, p := range ps {
		p.mu.Lock()
		p.expected = true
		p.mu.Unlock()
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range ps {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	for _, p := range c.proxies() {
		_ = p.Close()
	}
}

// sameData compares the two backing files' data areas (the first n bytes)
// byte for byte; "" when equal.
func (c *cluster) sameData(n int64) (string, error) {
	fa, err := os.Open(filepath.Join(c.dir, "alpha.img"))
	if err != nil {
		return "", err
	}
	defer fa.Close()
	fb, err := os.Open(filepath.Join(c.dir, "beta.img"))
	if err != nil {
		return "", err
	}
	defer fb.Close()
	const chunk = 1 << 20
	a, b := make([]byte, chunk), make([]byte, chunk)
	var diff []string
	ndiff := 0
	for off := int64(0); off < n; off += chunk {
		k := min(chunk, n-off)
		if _, err := fa.ReadAt(a[:k], off); err != nil {
			return "", err
		}
		if _, err := fb.ReadAt(b[:k], off); err != nil {
			return "", err
		}
		if bytes.Equal(a[:k], b[:k]) {
			continue
		}
		for o := int64(0); o < k; o += 4096 {
			if !bytes.Equal(a[o:min(o+4096, k)], b[o:min(o+4096, k)]) {
				ndiff++
				if len(diff) < 8 {
					diff = append(diff, fmt.Sprint(off+o))
				}
			}
		}
	}
	if ndiff == 0 {
		return "", nil
	}
	return fmt.Sprintf("%d 4 KiB blocks differ (first at offsets %s)", ndiff, strings.Join(diff, ", ")), nil
}
