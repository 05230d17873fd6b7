package main

// Process-level tests: the real binary, a real daemon, real NBD clients.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var twinbdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "twinbd-bin")
	if err != nil {
		panic(err)
	}
	twinbdBin = filepath.Join(dir, "twinbd")
	if b := os.Getenv("TWINBD_BIN"); b != "" {
		// A given binary (benchmarks run the plain build, not -race).
		twinbdBin = b
	} else if out, err := exec.Command("go", "build", "-race", "-o", twinbdBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build twinbd: %v\n%s", err, out)
		os.Exit(1)
	}
	// A -race binary sleeps 1 s at exit by default (atexit_sleep_ms) so
	// other goroutines can report; every CLI call would pay it.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cluster is a resource file with nodes alpha (and beta) on loopback.
type cluster struct {
	t    *testing.T
	dir  string
	conf string
	port map[string]int // NBD export port per node
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// newCluster writes a resource file for r0 with the given nodes, each with a
// sparse backing file of size bytes and internal metadata.
func newCluster(t *testing.T, size int64, nodes ...string) *cluster {
	c := &cluster{t: t, dir: t.TempDir(), port: map[string]int{}}
	var b strings.Builder
	b.WriteString("resource r0 {\n  net { protocol C; shared-secret \"s3cret\"; }\n")
	for i, n := range nodes {
		img := filepath.Join(c.dir, n+".img")
		require.NoError(t, os.WriteFile(img, nil, 0o600))
		require.NoError(t, os.Truncate(img, size))
		c.port[n] = freePort(t)
		fmt.Fprintf(&b, "  on %s { node-id %d; address 127.0.0.1:%d; export 127.0.0.1:%d; disk %s; meta-disk internal; }\n",
			n, i, freePort(t), c.port[n], img)
	}
	b.WriteString("}\n")
	c.conf = filepath.Join(c.dir, "twinbd.conf")
	require.NoError(t, os.WriteFile(c.conf, []byte(b.String()), 0o600))
	return c
}

type result struct {
	out, err string
	code     int
}

// run runs twinbd as node with args.
func (c *cluster) run(node string, args ...string) result {
	c.t.Helper()
	full := append([]string{"--config", c.conf, "--node", node, "--run-dir", filepath.Join(c.dir, "run")}, args...)
	return runBin(c.t, full)
}

// runBin runs the test binary with args and collects output and exit code.
func runBin(t *testing.T, args []string) result {
	t.Helper()
	cmd := exec.Command(twinbdBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{out: stdout.String(), err: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return r
}

func (c *cluster) ok(node string, args ...string) string {
	c.t.Helper()
	r := c.run(node, args...)
	require.Equal(c.t, 0, r.code, "twinbd %v: %s%s", args, r.out, r.err)
	return r.out
}

// daemon starts node's daemon and waits for its socket.
func (c *cluster) daemon(node string) *exec.Cmd {
	c.t.Helper()
	cmd := exec.Command(twinbdBin, "--config", c.conf, "--node", node, "--run-dir", filepath.Join(c.dir, "run"), "daemon", "--log-level", "debug")
	logf, err := os.Create(filepath.Join(c.dir, node+".log"))
	require.NoError(c.t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(c.t, cmd.Start())
	c.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		logf.Close()
		if c.t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			c.t.Logf("%s daemon log:\n%s", node, b)
		}
	})
	require.Eventually(c.t, func() bool { return c.run(node, "status").code == 0 }, 10*time.Second, 20*time.Millisecond)
	return cmd
}

func (c *cluster) uri(node string) string { return fmt.Sprintf("nbd://127.0.0.1:%d", c.port[node]) }

func need(t *testing.T, cmds ...string) {
	for _, name := range cmds {
		if _, err := exec.LookPath(name); err != nil {
			t.Skipf("%s not installed (make deps installs it)", name)
		}
	}
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %v: %s", name, args, out)
	return string(out)
}

func fileSum(t *testing.T, path string) [32]byte {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return sha256.Sum256(b)
}

func TestOperatorLifecycle(t *testing.T) {
	need(t, "nbdinfo", "nbdcopy")
	c := newCluster(t, 128<<20, "alpha", "beta")
	d := c.daemon("alpha")
	fi, err := os.Stat(filepath.Join(c.dir, "run", "alpha.sock"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "control socket is root-only")
	require.Equal(t, "", c.run("alpha", "daemon").out)
	require.Contains(t, c.run("alpha", "daemon").err, "already running")

	// up refuses a disk without metadata, and says what to do.
	r := c.run("alpha", "up", "r0")
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.err, "twinbd create-md r0")

	out := c.ok("alpha", "create-md", "r0")
	require.Contains(t, out, "Inconsistent")
	r = c.run("alpha", "create-md", "r0")
	require.NotEqual(t, 0, r.code, "create-md over valid metadata needs --force")
	require.Contains(t, r.err, "--force")

	c.ok("alpha", "up", "r0")
	require.Equal(t, "Secondary\n", c.ok("alpha", "role", "r0"))
	require.Equal(t, "Inconsistent/DUnknown\n", c.ok("alpha", "dstate", "r0"))
	// beta's daemon never runs: alpha (node-id 0) keeps dialing it.
	require.Equal(t, "Connecting\n", c.ok("alpha", "cstate", "r0"))
	r = c.run("alpha", "create-md", "--force", "r0")
	require.NotEqual(t, 0, r.code, "create-md under a running resource")
	require.Contains(t, r.err, "twinbd down r0")

	// A Secondary does not serve the export.
	_, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.port["alpha"]), time.Second)
	require.Error(t, err)

	// primary without UpToDate data: drbdadm's exit code 17.
	r = c.run("alpha", "primary", "r0")
	require.Equal(t, 17, r.code, r.err)
	require.Contains(t, r.err, "primary --force")
	c.ok("alpha", "primary", "--force", "r0")
	require.Equal(t, "Primary\n", c.ok("alpha", "role", "r0"))
	require.Equal(t, "UpToDate/DUnknown\n", c.ok("alpha", "dstate", "r0"))
	require.Regexp(t, `^r0 role:Primary\n  disk:UpToDate\n  beta connection:Connecting( reason:".*connection refused.*")?\n$`, c.ok("alpha", "status", "r0"))

	var st []map[string]any
	require.NoError(t, json.Unmarshal([]byte(c.ok("alpha", "status", "--json")), &st))
	require.Len(t, st, 1)
	require.Equal(t, "r0", st[0]["name"])
	require.Equal(t, "Primary", st[0]["role"])
	dev := st[0]["devices"].([]any)[0].(map[string]any)
	require.Equal(t, "UpToDate", dev["disk-state"])
	conn := st[0]["connections"].([]any)[0].(map[string]any)
	require.Equal(t, "Connecting", conn["connection-state"])
	require.Equal(t, "beta", conn["name"])
	pd := conn["peer_devices"].([]any)[0].(map[string]any)
	require.Equal(t, "DUnknown", pd["peer-disk-state"])

	// Real clients: nbdinfo, then 64 MiB of random data in and out with nbdcopy.
	// The default (empty) export name maps to the single resource.
	info := sh(t, "nbdinfo", "--json", c.uri("alpha")+"/r0")
	require.Contains(t, info, `"export-name": "r0"`)
	require.Equal(t, sh(t, "nbdinfo", "--size", c.uri("alpha")+"/r0"), sh(t, "nbdinfo", "--size", c.uri("alpha")))
	require.Contains(t, sh(t, "nbdinfo", "--list", c.uri("alpha")), "export=\"r0\"")
	src := filepath.Join(c.dir, "src.bin")
	data := make([]byte, 64<<20)
	rand.Read(data)
	require.NoError(t, os.WriteFile(src, data, 0o600))
	sh(t, "nbdcopy", "--flush", src, c.uri("alpha"))
	back := filepath.Join(c.dir, "back.bin")
	sh(t, "nbdcopy", "-C", "4", c.uri("alpha"), back)
	got, err := os.ReadFile(back)
	require.NoError(t, err)
	require.Equal(t, sha256.Sum256(data), sha256.Sum256(got[:len(data)]))

	// secondary refuses while an NBD client is connected; --force disconnects it.
	held, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", c.port["alpha"]))
	require.NoError(t, err)
	defer held.Close()
	hs := make([]byte, 18)
	_, err = held.Read(hs) // greeting read: the connection is accepted
	require.NoError(t, err)
	held.Write([]byte{0, 0, 0, 3}) // client flags: fixed newstyle, no zeroes
	// GO with the default export name puts it in the transmission phase.
	goOpt := []byte{0x49, 0x48, 0x41, 0x56, 0x45, 0x4F, 0x50, 0x54, 0, 0, 0, 7, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0}
	held.Write(goOpt)
	require.Eventually(t, func() bool {
		r := c.run("alpha", "secondary", "r0")
		return r.code == 11 && strings.Contains(r.err, "secondary --force")
	}, 5*time.Second, 50*time.Millisecond)
	c.ok("alpha", "secondary", "--force", "r0")
	require.Equal(t, "Secondary\n", c.ok("alpha", "role", "r0"))

	// SIGTERM: clean shutdown, socket removed.
	require.NoError(t, d.Process.Signal(syscall.SIGTERM))
	require.NoError(t, d.Wait())
	_, err = os.Stat(filepath.Join(c.dir, "run", "alpha.sock"))
	require.True(t, os.IsNotExist(err))
	r = c.run("alpha", "status")
	require.Equal(t, 20, r.code)
	require.Contains(t, r.err, "twinbd daemon")

	// Restart: the data survived; with a peer configured but absent, a disk
	// that was UpToDate comes back Consistent and needs --force to promote.
	c.daemon("alpha")
	c.ok("alpha", "up", "r0")
	require.Equal(t, "Consistent/DUnknown\n", c.ok("alpha", "dstate", "r0"))
	require.Equal(t, 17, c.run("alpha", "primary", "r0").code)
	c.ok("alpha", "primary", "--force", "r0")
	sh(t, "nbdcopy", c.uri("alpha"), back)
	got, err = os.ReadFile(back)
	require.NoError(t, err)
	require.Equal(t, sha256.Sum256(data), sha256.Sum256(got[:len(data)]))
	c.ok("alpha", "down", "r0")
	require.Equal(t, 10, c.run("alpha", "role", "r0").code)
}

func TestMetadataRefusals(t *testing.T) {
	c := newCluster(t, 64<<20, "alpha", "beta")
	c.daemon("alpha")
	img := filepath.Join(c.dir, "alpha.img")

	// Metadata of another resource on the same disk.
	other := filepath.Join(c.dir, "other.conf")
	require.NoError(t, os.WriteFile(other, []byte(fmt.Sprintf(
		"resource r9 { on alpha { node-id 0; address 127.0.0.1:1; disk %s; meta-disk internal; } }\n", img)), 0o600))
	cmd := exec.Command(twinbdBin, "--config", other, "--node", "alpha", "--run-dir", filepath.Join(c.dir, "run9"), "create-md", "r9")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	r := c.run("alpha", "up", "r0")
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.err, "r9")
	require.Contains(t, r.err, "create-md")

	// Corrupt metadata: both superblock slots damaged.
	c.ok("alpha", "create-md", "--force", "r0")
	before := fileSum(t, img)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	require.NoError(t, err)
	fi, _ := f.Stat()
	junk := bytes.Repeat([]byte{0x5a}, 100)
	// The superblocks live in the last 8 KiB; damage past the magic in each.
	for _, off := range []int64{fi.Size() - 8192 + 64, fi.Size() - 4096 + 64} {
		_, err = f.WriteAt(junk, off)
		require.NoError(t, err)
	}
	f.Close()
	r = c.run("alpha", "up", "r0")
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.err, "corrupt")
	require.NotEqual(t, before, fileSum(t, img))

	// Device grew: the metadata no longer sits where the size says.
	c.ok("alpha", "create-md", "--force", "r0")
	require.NoError(t, os.Truncate(img, 96<<20))
	r = c.run("alpha", "up", "r0")
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.err, "create-md")
	require.Equal(t, "# No resources are up on this node.\n", c.ok("alpha", "status"))
}

func TestExternalMetadataAndCrashedPrimary(t *testing.T) {
	need(t, "nbdcopy")
	c := newCluster(t, 32<<20, "solo")
	md := filepath.Join(c.dir, "solo.md")
	require.NoError(t, os.WriteFile(md, nil, 0o600))
	require.NoError(t, os.Truncate(md, 4<<20))
	conf, err := os.ReadFile(c.conf)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(c.conf, bytes.Replace(conf, []byte("meta-disk internal"), []byte("meta-disk "+md), 1), 0o600))
	out := c.ok("solo", "create-md", "r0")
	require.Contains(t, out, "external")
	d := c.daemon("solo")
	c.ok("solo", "up", "r0")
	c.ok("solo", "primary", "--force", "r0")
	// The whole backing file is data with external metadata.
	info := sh(t, "nbdinfo", "--size", c.uri("solo"))
	require.Equal(t, fmt.Sprint(32<<20), strings.TrimSpace(info))

	// kill -9 while Primary: the next start records a crashed primary; a
	// single-node resource's Consistent disk promotes without --force.
	require.NoError(t, d.Process.Kill())
	d.Wait()
	c.daemon("solo")
	c.ok("solo", "up", "r0")
	require.Equal(t, "Consistent\n", c.ok("solo", "dstate", "r0"))
	c.ok("solo", "primary", "r0")
	log, err := os.ReadFile(filepath.Join(c.dir, "solo.log"))
	require.NoError(t, err)
	require.Contains(t, string(log), "crashed primary")
}

// The README's first command: make demo (non-interactive here). Both nodes
// end UpToDate with identical data areas.
func TestDemoScript(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("bash", "../../scripts/demo.sh")
	cmd.Env = append(os.Environ(), "BIN="+twinbdBin, "DEMO_EXIT=1", "DEMO_DIR="+dir, "DEMO_SIZE=64M",
		fmt.Sprintf("DEMO_PORT=%d", freePort(t)), fmt.Sprintf("DEMO_REPL_PORT=%d", freePort(t)))
	out, err := cmd.CombinedOutput()
	if err != nil {
		// The daemons' logs say why (the run dir goes with the test).
		for _, f := range []string{"alpha.log", "beta.log", "witness.log"} {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			t.Logf("%s:\n%s", f, tailLines(string(b), 80))
		}
	}
	require.NoError(t, err, "%s", out)
	s := string(out)
	require.Contains(t, s, "r0 role:Primary")
	require.Contains(t, s, "r0 role:Secondary")
	require.Contains(t, s, "r0: in sync with beta (disk:UpToDate peer-disk:UpToDate)")
	require.Contains(t, s, "r0 role:Primary\n  disk:UpToDate\n  beta role:Secondary\n    replication:Established peer-disk:UpToDate\n")
	require.Contains(t, s, "r0 role:Secondary\n  disk:UpToDate\n  alpha role:Primary\n    replication:Established peer-disk:UpToDate\n")
	require.Regexp(t, `verify: +OK: [1-9][0-9]* block reads checked .* 0 errors`, s)
	require.Regexp(t, `r0: verified [1-9][0-9]* KiB in .*: 0 KiB out of sync`, s)
	require.Contains(t, s, "bringing both nodes down")
	// Both daemons are gone (their control sockets with them).
	for _, n := range []string{"alpha", "beta"} {
		_, err := os.Stat(filepath.Join(dir, "run", n+".sock"))
		require.True(t, os.IsNotExist(err), "%s's daemon outlived the demo", n)
	}

	// The data areas (everything before the internal metadata) match.
	m := regexp.MustCompile(`for ([0-9]+) KiB of data`).FindStringSubmatch(s)
	require.NotNil(t, m)
	kib, err := strconv.ParseInt(m[1], 10, 64)
	require.NoError(t, err)
	a, err := os.ReadFile(filepath.Join(dir, "alpha.img"))
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(dir, "beta.img"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(a[:kib*1024], b[:kib*1024]), "alpha's and beta's data areas differ")
}

// daemon --up brings resources up before the daemon reports ready, and a
// resource that does not exist stops the daemon with the config's message.
func TestDaemonUpAtStart(t *testing.T) {
	c := newCluster(t, 32<<20, "solo")
	c.ok("solo", "create-md", "r0")
	bad := exec.Command(twinbdBin, "--config", c.conf, "--node", "solo", "--run-dir", filepath.Join(c.dir, "run"), "daemon", "--up", "nosuch")
	out, err := bad.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), `no such resource: "nosuch"`)

	d := exec.Command(twinbdBin, "--config", c.conf, "--node", "solo", "--run-dir", filepath.Join(c.dir, "run"), "daemon", "--up", "all")
	require.NoError(t, d.Start())
	t.Cleanup(func() { d.Process.Signal(syscall.SIGTERM); d.Wait() })
	require.Eventually(t, func() bool { return c.run("solo", "role", "r0").out == "Secondary\n" }, 10*time.Second, 20*time.Millisecond)
}

// tailLines is the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
