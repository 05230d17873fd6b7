package main

// The Pacemaker OCF agent (ocf/twinbd) and the systemd units against real
// daemons: the agent's actions by hand on a pair, its state and score
// table against a fake twinbd, ocf-tester, systemd-analyze verify.

import (
	"bytes"
	"errors"
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
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// ocfAgent runs ocf/twinbd for the nodes of a pair, with a fake
// crm_attribute (and crm_master) in PATH that records promotion scores.
type ocfAgent struct {
	t      *testing.T
	p      *pair
	path   string // the agent, in a directory user nobody can read (ocf-tester checks)
	bin    string // fake crm_attribute, crm_master
	scores string // what they were called with: "NODE TOOL ARGS" per line
	env    []string
}

func newOCFAgent(t *testing.T, p *pair) *ocfAgent {
	src, err := filepath.Abs("../../ocf/twinbd")
	require.NoError(t, err)
	body, err := os.ReadFile(src)
	require.NoError(t, err)
	fi, err := os.Stat(src)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o755), fi.Mode().Perm(), "ocf/twinbd must be executable (0755)")
	dir, err := os.MkdirTemp("", "twinbd-ocf")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	a := &ocfAgent{t: t, p: p, path: filepath.Join(dir, "twinbd"), bin: filepath.Join(dir, "bin"), scores: filepath.Join(dir, "scores")}
	require.NoError(t, os.WriteFile(a.path, body, 0o755))
	require.NoError(t, os.Mkdir(a.bin, 0o755))
	for _, tool := range []string{"crm_attribute", "crm_master"} {
		script := "#!/bin/sh\necho \"$OCF_RESKEY_node " + tool + " $*\" >>" + a.scores + "\n"
		require.NoError(t, os.WriteFile(filepath.Join(a.bin, tool), []byte(script), 0o755))
	}
	a.env = append(os.Environ(), "PATH="+a.bin+":"+os.Getenv("PATH"), "OCF_ROOT=/usr/lib/ocf", "OCF_RESOURCE_INSTANCE=p_r0")
	return a
}

// params are the agent's parameters for node, as Pacemaker passes them.
func (a *ocfAgent) params(node string) []string {
	return []string{
		"resource=r0", "config=" + a.p.conf[node], "node=" + node, "twinbd=" + twinbdBin,
		"run_dir=" + filepath.Join(a.p.dir, "run"), "daemon_log=" + filepath.Join(a.p.dir, node+".log"),
	}
}

// run runs the agent's action for node; extra are environment settings
// (later ones win).
func (a *ocfAgent) run(node, action string, extra ...string) result {
	a.t.Helper()
	cmd := exec.Command(a.path, action)
	env := append([]string{}, a.env...)
	for _, kv := range a.params(node) {
		env = append(env, "OCF_RESKEY_"+kv)
	}
	env = append(env, "OCF_RESKEY_wfc_timeout=5", "OCF_RESKEY_CRM_meta_timeout=20000")
	cmd.Env = append(env, extra...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{out: stdout.String(), err: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else {
		require.NoError(a.t, err)
	}
	return r
}

func (a *ocfAgent) expect(node, action string, want int, extra ...string) result {
	a.t.Helper()
	r := a.run(node, action, extra...)
	require.Equal(a.t, want, r.code, "%s: agent %s %v: stdout %q stderr %q", node, action, extra, r.out, r.err)
	return r
}

// lastScore is the last promotion-score call for node ("" if none).
func (a *ocfAgent) lastScore(node string) string {
	b, err := os.ReadFile(a.scores)
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	require.NoError(a.t, err)
	last := ""
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, node+" "); ok {
			last = rest
		}
	}
	return last
}

// eventuallyScore runs monitor on node until it exits want and the last
// promotion-score call is score.
func (a *ocfAgent) eventuallyScore(node string, want int, score string, extra ...string) {
	a.t.Helper()
	require.Eventually(a.t, func() bool {
		return a.run(node, "monitor", extra...).code == want && a.lastScore(node) == score
	}, 10*time.Second, 100*time.Millisecond, "%s: want monitor %d and score %q; last score %q", node, want, score, a.lastScore(node))
}

// killAgentDaemons ends (at test end) every daemon whose command line
// names runDir: the agent launches them detached, so they are not this
// process's children.
func killAgentDaemons(t *testing.T, runDir string) {
	t.Cleanup(func() {
		find := func() []int {
			var pids []int
			ents, _ := os.ReadDir("/proc")
			for _, e := range ents {
				pid, err := strconv.Atoi(e.Name())
				if err != nil {
					continue
				}
				cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
				if err != nil || !bytes.Contains(cmdline, []byte("\x00"+runDir+"\x00")) || !bytes.Contains(cmdline, []byte("\x00daemon")) {
					continue
				}
				stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
				if err != nil {
					continue
				}
				if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) > 0 && f[0] == "Z" {
					continue
				}
				pids = append(pids, pid)
			}
			return pids
		}
		for _, pid := range find() {
			syscall.Kill(pid, syscall.SIGTERM)
		}
		deadline := time.Now().Add(15 * time.Second)
		for len(find()) > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		for _, pid := range find() {
			t.Logf("daemon %d ignored SIGTERM: SIGKILL", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// startBoth starts the agent on both nodes at once (each start waits for
// the peer link, so one after the other would wait for nothing).
func (a *ocfAgent) startBoth() {
	a.t.Helper()
	var wg sync.WaitGroup
	res := map[string]result{}
	var mu sync.Mutex
	for _, n := range pairNodes {
		wg.Go(func() {
			cmd := a.run(n, "start")
			mu.Lock()
			res[n] = cmd
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, n := range pairNodes {
		require.Equal(a.t, 0, res[n].code, "%s: start: %s", n, res[n].err)
	}
}

func TestOCFAgentActions(t *testing.T) {
	p := newPair(t)
	defer p.logs()
	a := newOCFAgent(t, p)
	killAgentDaemons(t, filepath.Join(p.dir, "run"))
	for _, n := range pairNodes {
		p.ok(n, "create-md", "r0")
	}
	pcmk := "OCF_RESKEY_crm_feature_set=3.16.2" // as Pacemaker 2.1.5 passes it

	md := a.expect("alpha", "meta-data", 0).out
	for _, s := range []string{`<resource-agent name="twinbd"`, `<parameter name="resource" unique="1" required="1">`,
		`name="start" timeout="240s"`, `name="stop" timeout="100s"`, `name="promote" timeout="90s"`,
		`name="monitor" timeout="20s" interval="20s" role="Slave"`, `name="monitor" timeout="20s" interval="10s" role="Master"`} {
		require.Contains(t, md, s)
	}
	a.expect("alpha", "validate-all", 0)
	a.expect("alpha", "validate-all", 6, "OCF_RESKEY_resource=r9")
	a.expect("alpha", "validate-all", 6, "OCF_RESKEY_resource=all")
	a.expect("alpha", "validate-all", 6, "OCF_RESKEY_resource=")
	a.expect("alpha", "validate-all", 6, "OCF_RESKEY_node=gamma")
	a.expect("alpha", "validate-all", 6, "OCF_RESKEY_config="+filepath.Join(p.dir, "nonexistent.conf"))
	a.expect("alpha", "validate-all", 5, "OCF_RESKEY_twinbd=/nonexistent/twinbd")
	a.expect("alpha", "migrate_to", 3)
	a.expect("alpha", "", 2)

	// Nothing runs yet: the probe says stopped, stop succeeds, demote
	// says not running.
	a.expect("alpha", "monitor", 7, "OCF_RESKEY_CRM_meta_interval=0", pcmk)
	a.expect("alpha", "monitor", 7, "OCF_RESKEY_twinbd=/nonexistent/twinbd", "OCF_RESKEY_CRM_meta_interval=0")
	a.expect("alpha", "monitor", 5, "OCF_RESKEY_twinbd=/nonexistent/twinbd", "OCF_RESKEY_CRM_meta_interval=20000")
	a.expect("alpha", "stop", 0, pcmk)
	a.expect("alpha", "demote", 7)
	require.Equal(t, 20, p.run("alpha", "status").code, "stop does not launch a daemon")

	// start launches the daemons and leaves the resource Secondary; fresh
	// metadata is Inconsistent on both: no promotion score.
	a.startBoth()
	for _, n := range pairNodes {
		a.expect(n, "start", 0) // idempotent
		a.expect(n, "monitor", 0, pcmk)
		require.Equal(t, "crm_attribute --promotion -D", a.lastScore(n), n)
		require.Equal(t, "Secondary\n", p.ok(n, "role", "r0"))
	}
	pid, err := os.ReadFile(filepath.Join(p.dir, "run", "alpha.agent.pid"))
	require.NoError(t, err)
	require.NotEmpty(t, strings.TrimSpace(string(pid)))

	// promote never forces: without UpToDate data it retries until the
	// action's timeout (3 s here), then fails and leaves the node Secondary.
	begin := time.Now()
	r := a.expect("alpha", "promote", 1, "OCF_RESKEY_CRM_meta_timeout=3000")
	require.Less(t, time.Since(begin), 5*time.Second)
	require.Contains(t, r.err, "ocf-exit-reason:")
	require.Contains(t, r.err, "no UpToDate data")
	require.Equal(t, "Secondary\n", p.ok("alpha", "role", "r0"))
	require.Equal(t, "Inconsistent/Inconsistent\n", p.ok("alpha", "dstate", "r0"))

	// The initial sync, by hand as the operator does it.
	p.ok("alpha", "primary", "--force", "r0")
	p.ok("alpha", "wait-sync", "--timeout", "60s", "r0")
	a.expect("alpha", "monitor", 8, pcmk)
	require.Equal(t, "crm_attribute --promotion -v 10000", a.lastScore("alpha"))
	a.eventuallyScore("beta", 0, "crm_attribute --promotion -v 10000", pcmk)

	// Role changes, each one twice.
	a.expect("alpha", "promote", 0)
	a.expect("alpha", "demote", 0)
	a.expect("alpha", "monitor", 0)
	a.expect("alpha", "demote", 0)
	a.expect("beta", "promote", 0)
	a.expect("beta", "promote", 0)
	a.expect("beta", "monitor", 8)
	p.dial("beta").Close() // the Primary serves NBD
	// The peer is Primary: promote retries, then gives up.
	a.expect("alpha", "promote", 1, "OCF_RESKEY_CRM_meta_timeout=2000")

	// stop on a Primary demotes and takes the resource down; the daemon
	// stays.
	a.expect("beta", "stop", 0, pcmk)
	require.Equal(t, "crm_attribute --promotion -D", a.lastScore("beta"))
	a.expect("beta", "monitor", 7)
	a.expect("beta", "stop", 0)
	a.expect("beta", "demote", 7)
	p.ok("beta", "status")

	// alpha lost its peer: its UpToDate data is only Consistent now (the
	// peer may have moved on), a low score.
	a.eventuallyScore("alpha", 0, "crm_attribute --promotion -v 5", pcmk)
	// beta back: both UpToDate again, each knows the other.
	a.expect("beta", "start", 0, pcmk)
	for _, n := range pairNodes {
		a.eventuallyScore(n, 0, "crm_attribute --promotion -v 10000", pcmk)
	}
	a.expect("alpha", "notify", 0, pcmk)

	for _, n := range pairNodes {
		a.expect(n, "stop", 0)
		a.expect(n, "monitor", 7)
	}
}

// fakeTwinbd answers role and dstate from $FAKE_ROLE, $FAKE_DSTATE and
// exits $FAKE_RC.
const fakeTwinbd = `#!/bin/sh
case " $* " in
*" role "*) [ -n "$FAKE_ROLE" ] && echo "$FAKE_ROLE" ;;
*" dstate "*) echo "$FAKE_DSTATE" ;;
esac
exit ${FAKE_RC:-0}
`

func TestOCFAgentStatesAndScores(t *testing.T) {
	p := &pair{dir: t.TempDir(), conf: map[string]string{"alpha": "/nonexistent.conf"}}
	a := newOCFAgent(t, p)
	fake := filepath.Join(t.TempDir(), "twinbd")
	require.NoError(t, os.WriteFile(fake, []byte(fakeTwinbd), 0o755))
	for _, c := range []struct {
		role, dstate string
		rc           int // fake twinbd's exit code
		extra        string
		want         int
		score        string
	}{
		{"Secondary", "UpToDate/UpToDate", 0, "", 0, "crm_attribute --promotion -v 10000"},
		{"Secondary", "UpToDate/DUnknown", 0, "", 0, "crm_attribute --promotion -v 1000"},
		{"Secondary", "UpToDate/Inconsistent", 0, "", 0, "crm_attribute --promotion -v 10000"},
		{"Secondary", "Consistent/DUnknown", 0, "", 0, "crm_attribute --promotion -v 5"},
		{"Secondary", "Outdated/UpToDate", 0, "", 0, "crm_attribute --promotion -D"},
		{"Secondary", "Inconsistent/UpToDate", 0, "", 0, "crm_attribute --promotion -D"},
		{"Secondary", "Failed/DUnknown", 0, "", 0, "crm_attribute --promotion -D"},
		{"Secondary", "Attaching/DUnknown", 0, "", 0, ""},
		{"Primary", "UpToDate/DUnknown", 0, "", 8, "crm_attribute --promotion -v 10000"},
		{"Primary", "UpToDate/UpToDate", 0, "", 8, "crm_attribute --promotion -v 10000"},
		{"Primary", "Failed/UpToDate", 0, "", 9, "crm_attribute --promotion -D"},
		{"Primary", "Diskless/UpToDate", 0, "", 9, "crm_attribute --promotion -D"},
		{"", "", 10, "", 7, ""},
		{"", "", 20, "", 7, ""},
		{"", "", 1, "", 1, ""},
		{"Secondary", "Consistent/DUnknown", 0, "OCF_RESKEY_adjust_master_score=0 500 20000", 0, "crm_attribute --promotion -D"},
		{"Secondary", "UpToDate/DUnknown", 0, "OCF_RESKEY_adjust_master_score=0 500 20000", 0, "crm_attribute --promotion -v 500"},
		{"Secondary", "UpToDate/UpToDate", 0, "OCF_RESKEY_crm_feature_set=3.2.0", 0, "crm_master -l reboot -v 10000"},
	} {
		require.NoError(t, os.RemoveAll(a.scores))
		env := []string{"OCF_RESKEY_twinbd=" + fake, "FAKE_ROLE=" + c.role, "FAKE_DSTATE=" + c.dstate,
			"FAKE_RC=" + strconv.Itoa(c.rc), "OCF_RESKEY_crm_feature_set=3.16.2"}
		if c.extra != "" {
			env = append(env, c.extra)
		}
		r := a.run("alpha", "monitor", env...)
		require.Equal(t, c.want, r.code, "%+v: %s", c, r.err)
		require.Equal(t, c.score, a.lastScore("alpha"), "%+v", c)
		if c.want == 9 {
			require.Contains(t, r.err, "ocf-exit-reason:Primary with disk")
		}
		// Outside Pacemaker (ocf-tester, by hand) no score is set.
		env = append(env, "OCF_RESKEY_crm_feature_set=")
		require.NoError(t, os.RemoveAll(a.scores))
		require.Equal(t, c.want, a.run("alpha", "monitor", env...).code, "%+v", c)
		require.Equal(t, "", a.lastScore("alpha"), "%+v", c)
	}
}

// ocfTester finds ocf-tester, installing Debian's resource-agents with
// scripts/deps.sh when it is missing and this runs as root.
func ocfTester(t *testing.T) string {
	find := func() string {
		if p, err := exec.LookPath("ocf-tester"); err == nil {
			return p
		}
		if _, err := os.Stat("/usr/sbin/ocf-tester"); err == nil {
			return "/usr/sbin/ocf-tester"
		}
		return ""
	}
	if p := find(); p != "" {
		return p
	}
	if os.Geteuid() == 0 {
		out, err := exec.Command("../../scripts/deps.sh").CombinedOutput()
		t.Logf("scripts/deps.sh: %v %s", err, out)
	}
	p := find()
	if p == "" {
		t.Skip("ocf-tester not installed and not installable (Debian resource-agents; make deps installs it as root)")
	}
	return p
}

func TestOCFTester(t *testing.T) {
	tester := ocfTester(t)
	p := newPair(t)
	defer p.logs()
	a := newOCFAgent(t, p)
	killAgentDaemons(t, filepath.Join(p.dir, "run"))
	for _, n := range pairNodes {
		p.ok(n, "create-md", "r0")
	}
	a.startBoth()
	p.ok("alpha", "primary", "--force", "r0")
	p.ok("alpha", "wait-sync", "--timeout", "60s", "r0")
	p.ok("alpha", "secondary", "r0")

	// ocf-tester starts, stops, promotes and demotes alpha while beta
	// stays up and connected.
	args := []string{"-n", "p_r0"}
	for _, kv := range a.params("alpha") {
		args = append(args, "-o", kv)
	}
	cmd := exec.Command(tester, append(args, a.path)...)
	cmd.Env = a.env
	begin := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("ocf-tester (%v):\n%s", time.Since(begin).Round(time.Millisecond), out)
	require.NoError(t, err, "ocf-tester failed")
	require.Contains(t, string(out), "passed all tests")
	require.Equal(t, "", a.lastScore("alpha"), "no promotion score outside Pacemaker")

	a.expect("alpha", "monitor", 7) // ocf-tester ends with the resource stopped
	for _, n := range pairNodes {
		a.expect(n, "stop", 0)
	}
}

// TestOCFSystemdUnits checks both units with systemd-analyze verify and
// runs twinbd@.service's ExecStop line the way systemd would.
func TestOCFSystemdUnits(t *testing.T) {
	dir := t.TempDir()
	units := map[string]string{}
	for _, name := range []string{"twinbd.service", "twinbd@.service"} {
		b, err := os.ReadFile(filepath.Join("../../systemd", name))
		require.NoError(t, err)
		require.Contains(t, string(b), "/usr/sbin/twinbd ")
		units[name] = strings.ReplaceAll(string(b), "/usr/sbin/twinbd", twinbdBin)
	}
	main := units["twinbd.service"]
	for _, s := range []string{"Type=notify", "Restart=on-failure", "ExecReload=" + twinbdBin + " up all",
		"After=network-online.target", "Wants=network-online.target", "Before=pacemaker.service"} {
		require.Contains(t, main, s+"\n")
	}
	tmpl := units["twinbd@.service"]
	for _, s := range []string{"BindsTo=twinbd.service", "After=twinbd.service", "RemainAfterExit=yes",
		"ExecStart=" + twinbdBin + " up %i"} {
		require.Contains(t, tmpl, s+"\n")
	}

	// ExecStop: systemd turns $$ into $ and %i into the instance.
	var stop string
	for _, line := range strings.Split(tmpl, "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStop="); ok {
			stop = strings.ReplaceAll(strings.ReplaceAll(v, "$$", "$"), "%i", "r0")
		}
	}
	require.NotEmpty(t, stop)
	c := newCluster(t, 32<<20, "alpha")
	env := append(os.Environ(), "TWINBD_CONFIG="+c.conf, "TWINBD_NODE=alpha", "TWINBD_RUN_DIR="+filepath.Join(c.dir, "run"))
	runStop := func() error {
		cmd := exec.Command("/bin/sh", "-c", "eval \"$0\"", stop)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		t.Logf("ExecStop: %v %s", err, out)
		return err
	}
	require.NoError(t, runStop(), "no daemon (exit 20) is success")
	c.daemon("alpha")
	require.NoError(t, runStop(), "not up (exit 10) is success")
	c.ok("alpha", "create-md", "r0")
	c.ok("alpha", "up", "r0")
	require.NoError(t, runStop())
	require.Equal(t, 10, c.run("alpha", "role", "r0").code, "ExecStop took r0 down")

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: units not verified")
		return
	}
	for name, body := range units {
		file := name
		if name == "twinbd@.service" {
			file = "twinbd@r0.service"
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, file), []byte(body), 0o644))
	}
	cmd := exec.Command(analyze, "verify", "--man=no", filepath.Join(dir, "twinbd.service"), filepath.Join(dir, "twinbd@r0.service"))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify complains")
}

// TestWitnessUnit runs systemd/twinbd-witness.service's ExecStart the way
// systemd would (${VAR} one word, $VAR split at spaces) with an
// EnvironmentFile's variables, and checks that the witness serves the
// address it names and gets TWINBD_WITNESS_OPTS.
func TestWitnessUnit(t *testing.T) {
	b, err := os.ReadFile("../../systemd/twinbd-witness.service")
	require.NoError(t, err)
	unit := string(b)
	for _, s := range []string{"EnvironmentFile=/etc/default/twinbd-witness", "StateDirectory=twinbd", "Restart=on-failure",
		"After=network-online.target", "Wants=network-online.target", "WantedBy=multi-user.target"} {
		require.Contains(t, unit, s+"\n")
	}
	var start string
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			start = v
		}
	}
	require.Contains(t, start, "/usr/sbin/twinbd witness --listen ${TWINBD_WITNESS_LISTEN} --state /var/lib/twinbd/witness.json")

	p, _ := failoverPair(t) // its own witness runs too; ours gets another port
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	state := t.TempDir()
	start = strings.ReplaceAll(start, "/usr/sbin/twinbd", twinbdBin+" --config "+p.conf["alpha"])
	start = strings.ReplaceAll(start, "/var/lib/twinbd", state)
	start = strings.ReplaceAll(start, "${TWINBD_WITNESS_LISTEN}", `"$TWINBD_WITNESS_LISTEN"`)
	// The unit's witness serves the resources that name its address.
	conf, err := os.ReadFile(p.conf["alpha"])
	require.NoError(t, err)
	waddr := regexp.MustCompile(`witness (127\.0\.0\.1:[0-9]+);`).FindSubmatch(conf)[1]
	require.NoError(t, os.WriteFile(p.conf["alpha"], []byte(strings.ReplaceAll(string(conf), string(waddr), addr)), 0o600))

	cmd := exec.Command("/bin/sh", "-c", "exec "+start)
	cmd.Env = append(os.Environ(), "TWINBD_WITNESS_LISTEN="+addr, "TWINBD_WITNESS_OPTS=--log-level warn")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 20*time.Second, 50*time.Millisecond, "the unit's witness does not listen on %s: %s", addr, &out)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	cmd.Wait()
	require.NotContains(t, out.String(), "witness serving", "TWINBD_WITNESS_OPTS (--log-level warn) did not reach the witness")

	if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
		dir := t.TempDir()
		f := filepath.Join(dir, "twinbd-witness.service")
		require.NoError(t, os.WriteFile(f, []byte(strings.ReplaceAll(unit, "/usr/sbin/twinbd", twinbdBin)), 0o644))
		out, err := exec.Command(analyze, "verify", "--man=no", f).CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify complains")
	}
}
