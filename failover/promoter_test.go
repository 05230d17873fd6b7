package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/twinbd/twinbd/config"
)

// promoterLog is a file every test command appends its lines to, so the
// order in which the promoter ran them can be read back.
type promoterLog string

func newPromoterLog(t *testing.T) promoterLog {
	return promoterLog(filepath.Join(t.TempDir(), "log"))
}

// cmd returns a shell command that appends line (expanded by the shell) to the log.
func (l promoterLog) cmd(line string) string {
	return fmt.Sprintf(`echo "%s" >> %s`, line, shellWord(string(l)))
}

func (l promoterLog) lines(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(string(l))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	require.NoError(t, err)
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// pair is a command pair that logs "start NAME" and "stop NAME".
func (l promoterLog) pair(name string) config.Service {
	return config.Service{Kind: config.ServiceCommand, StartCommand: l.cmd("start " + name), StopCommand: l.cmd("stop " + name)}
}

// testWriter sends log lines to t.Log: shown for failed tests and with -v.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

func testPromoter(t *testing.T, services ...config.Service) *Promoter {
	return &Promoter{
		Services: services, StartTimeout: 10 * time.Second, StopTimeout: 10 * time.Second,
		Env:    HandlerEnv{Resource: "r0", Peer: "bob", PeerNodeID: 1, MyNodeID: 0, Nodes: map[int]string{0: "alice", 1: "bob"}},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
}

func TestPromoterStartsInOrderStopsInReverse(t *testing.T) {
	l := newPromoterLog(t)
	p := testPromoter(t, l.pair("a"), l.pair("b"), l.pair("c"))
	ctx := context.Background()
	require.NoError(t, p.Start(ctx))
	require.Equal(t, []string{"start a", "start b", "start c"}, l.lines(t))
	require.NoError(t, p.Start(ctx), "a second Start starts nothing twice")
	require.NoError(t, p.Stop(ctx))
	require.NoError(t, p.Stop(ctx), "a second Stop stops nothing twice")
	require.Equal(t, []string{"start a", "start b", "start c", "stop c", "stop b", "stop a"}, l.lines(t))
	require.NoError(t, p.Start(ctx), "started again after a stop")
	require.Len(t, l.lines(t), 9)
}

func TestPromoterStartFailureStopsWhatStarted(t *testing.T) {
	l := newPromoterLog(t)
	b := config.Service{Kind: config.ServiceCommand,
		StartCommand: l.cmd("start b") + `; echo "b: disk not found" >&2; exit 3`, StopCommand: l.cmd("stop b")}
	p := testPromoter(t, l.pair("a"), b, l.pair("c"))
	p.OnStopFailure = l.cmd("escalated")
	err := p.Start(context.Background())
	require.ErrorIs(t, err, ErrStartFailed)
	require.Contains(t, err.Error(), "start "+strconv.Quote(b.StartCommand)+": exit code 3: b: disk not found")
	// a is stopped, b (which failed) and c (never started) are not; no escalation.
	require.Equal(t, []string{"start a", "start b", "stop a"}, l.lines(t))
	require.NoError(t, p.Stop(context.Background()))
	require.Len(t, l.lines(t), 3, "nothing left running after the rollback")
}

func TestPromoterStartTimeoutKills(t *testing.T) {
	l := newPromoterLog(t)
	slow := config.Service{Kind: config.ServiceCommand, StartCommand: "sleep 10; " + l.cmd("slow finished"), StopCommand: l.cmd("stop slow")}
	p := testPromoter(t, l.pair("a"), slow)
	p.StartTimeout = 200 * time.Millisecond
	t0 := time.Now()
	err := p.Start(context.Background())
	require.ErrorIs(t, err, ErrStartFailed)
	require.ErrorIs(t, err, ErrHandlerTimeout)
	require.Contains(t, err.Error(), "killed after 200ms")
	require.Less(t, time.Since(t0), 5*time.Second)
	require.Equal(t, []string{"start a", "stop a"}, l.lines(t))
}

func TestPromoterStartCancelledStillRollsBack(t *testing.T) {
	l := newPromoterLog(t)
	slow := config.Service{Kind: config.ServiceCommand, StartCommand: "sleep 10", StopCommand: l.cmd("stop slow")}
	p := testPromoter(t, l.pair("a"), slow)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := p.Start(ctx)
	require.ErrorIs(t, err, ErrStartFailed)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, []string{"start a", "stop a"}, l.lines(t), "the rollback runs although ctx ended")
}

func TestPromoterStopFailureEscalatesOnce(t *testing.T) {
	l := newPromoterLog(t)
	stuck := filepath.Join(t.TempDir(), "b-stuck")
	require.NoError(t, os.WriteFile(stuck, nil, 0o644))
	b := config.Service{Kind: config.ServiceCommand, StartCommand: l.cmd("start b"),
		StopCommand: l.cmd("stop b") + "; if [ -e " + shellWord(stuck) + " ]; then echo 'b: device busy'; exit 1; fi"}
	c := config.Service{Kind: config.ServiceCommand, StartCommand: l.cmd("start c"),
		StopCommand: l.cmd("stop c") + "; [ -e " + shellWord(stuck) + " ] && sleep 10; true"}
	p := testPromoter(t, l.pair("a"), b, c)
	p.StopTimeout = 300 * time.Millisecond
	p.OnStopFailure = l.cmd(`escalated $TWINBD_ACTION [$TWINBD_SERVICE]`)
	ctx := context.Background()
	require.NoError(t, p.Start(ctx))

	err := p.Stop(ctx)
	require.ErrorIs(t, err, ErrStopFailed)
	require.ErrorIs(t, err, ErrHandlerTimeout, "c's stop timed out")
	require.Contains(t, err.Error(), "stop "+strconv.Quote(b.StopCommand)+": exit code 1: b: device busy")
	require.Contains(t, err.Error(), "b: device busy")
	// Every entry is still stopped; the escalation runs once, after the list.
	want := []string{"start a", "start b", "start c", "stop c", "stop b", "stop a",
		"escalated on-stop-failure [" + c.StartCommand + "\n" + b.StartCommand + "]"}
	require.Equal(t, strings.Split(strings.Join(want, "\n"), "\n"), l.lines(t))

	// A retry stops what did not stop (only b and c), and escalates again only if it fails again.
	require.NoError(t, os.Remove(stuck))
	require.NoError(t, p.Stop(ctx))
	got := l.lines(t)
	require.Equal(t, []string{"stop c", "stop b"}, got[len(got)-2:])
	require.NotContains(t, got[len(got)-2:], "escalated")
}

func TestPromoterStopFailureWithoutEscalation(t *testing.T) {
	l := newPromoterLog(t)
	bad := config.Service{Kind: config.ServiceCommand, StartCommand: "true", StopCommand: "exit 1"}
	p := testPromoter(t, bad)
	require.NoError(t, p.Start(context.Background()))
	err := p.Stop(context.Background())
	require.ErrorIs(t, err, ErrStopFailed)
	require.Contains(t, err.Error(), "exit code 1 (no output)")

	// A failing escalation is reported along with the stop failure.
	p.OnStopFailure = "echo cannot reboot; exit 2"
	err = p.Stop(context.Background())
	require.ErrorIs(t, err, ErrStopFailed)
	require.Contains(t, err.Error(), `on-stop-failure "echo cannot reboot; exit 2": exit code 2: cannot reboot`)
	require.Nil(t, l.lines(t))
}

func TestPromoterStopInterruptedDoesNotEscalate(t *testing.T) {
	l := newPromoterLog(t)
	p := testPromoter(t, l.pair("a"), l.pair("b"))
	p.OnStopFailure = l.cmd("escalated")
	require.NoError(t, p.Start(context.Background()))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := p.Stop(ctx)
	require.ErrorIs(t, err, ErrStopFailed)
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, []string{"start a", "start b"}, l.lines(t), "nothing stopped, no escalation")
	require.NoError(t, p.Stop(context.Background()))
	require.Equal(t, []string{"start a", "start b", "stop b", "stop a"}, l.lines(t))
}

func TestPromoterEnvironment(t *testing.T) {
	dir := t.TempDir()
	dump := func(name string) string {
		return `env | grep -E '^(DRBD|TWINBD)_' | sort > ` + shellWord(filepath.Join(dir, name))
	}
	sv := config.Service{Kind: config.ServiceCommand, StartCommand: dump("start"), StopCommand: dump("stop") + "; exit 1"}
	p := testPromoter(t, sv)
	p.Device = "/dev/nbd3"
	p.Env.ConfPath = "/etc/twinbd/twinbd.conf"
	p.Env.Minor = 3
	p.OnStopFailure = dump("escalation")
	require.NoError(t, p.Start(context.Background()))
	require.ErrorIs(t, p.Stop(context.Background()), ErrStopFailed)

	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(t, err)
		return string(b)
	}
	drbd := "DRBD_CONF=/etc/twinbd/twinbd.conf\nDRBD_CSTATE=\nDRBD_MINOR=3\nDRBD_MY_NODE_ID=0\nDRBD_NODE_ID_0=alice\nDRBD_NODE_ID_1=bob\n" +
		"DRBD_PEER=bob\nDRBD_PEER_NODE_ID=1\nDRBD_RESOURCE=r0\nDRBD_VOLUME=0\n"
	require.Equal(t, drbd+"TWINBD_ACTION=start\nTWINBD_DEVICE=/dev/nbd3\nTWINBD_SERVICE="+sv.StartCommand+"\n", read("start"))
	require.Equal(t, drbd+"TWINBD_ACTION=stop\nTWINBD_DEVICE=/dev/nbd3\nTWINBD_SERVICE="+sv.StartCommand+"\n", read("stop"))
	require.Equal(t, drbd+"TWINBD_ACTION=on-stop-failure\nTWINBD_DEVICE=/dev/nbd3\nTWINBD_SERVICE="+sv.StartCommand+"\n", read("escalation"))
}

// fakeAgent writes an OCF agent script into root/resource.d/test/NAME that
// logs its action, instance and parameters and exits with the code the
// variable EXIT_<action> of the script names (0 by default).
func fakeAgent(t *testing.T, root, name string, l promoterLog, exits map[string]int) {
	dir := filepath.Join(root, "resource.d", "test")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	script := "#!/bin/sh\n" + l.cmd(name+` $1 inst=$OCF_RESOURCE_INSTANCE root=$OCF_ROOT type=$OCF_RESOURCE_PROVIDER:$OCF_RESOURCE_TYPE ip=$OCF_RESKEY_ip label=[$OCF_RESKEY_label] timeout=$OCF_RESKEY_CRM_meta_timeout res=$DRBD_RESOURCE`) + "\n" +
		"case $1 in\n"
	for action, code := range exits {
		script += fmt.Sprintf("%s) echo %s %s says %d; exit %d;;\n", action, name, action, code, code)
	}
	script += "esac\nexit 0\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755))
}

func TestPromoterOCFAgents(t *testing.T) {
	l := newPromoterLog(t)
	root := t.TempDir()
	fakeAgent(t, root, "IPaddr", l, map[string]int{"stop": 7}) // stop: not running counts as stopped
	fakeAgent(t, root, "Other", l, nil)
	ip := config.Service{Kind: config.ServiceOCF, Provider: "test", Agent: "IPaddr", Instance: "ip_db",
		Params: []config.OCFParam{{Name: "ip", Value: "10.9.42.1"}, {Name: "label", Value: "it's a label"}}}
	other := config.Service{Kind: config.ServiceOCF, Provider: "test", Agent: "Other"}
	p := testPromoter(t, ip, other)
	p.OCFRoot = root
	p.StartTimeout = 20 * time.Second
	require.NoError(t, p.Start(context.Background()))
	require.NoError(t, p.Stop(context.Background()))
	ipLine := func(action, timeout string) string {
		return "IPaddr " + action + " inst=ip_db root=" + root + " type=test:IPaddr ip=10.9.42.1 label=[it's a label] timeout=" + timeout + " res=r0"
	}
	otherLine := func(action, timeout string) string {
		return "Other " + action + " inst=Other_r0 root=" + root + " type=test:Other ip= label=[] timeout=" + timeout + " res=r0"
	}
	require.Equal(t, []string{ipLine("start", "20000"), otherLine("start", "20000"), otherLine("stop", "10000"), ipLine("stop", "10000")}, l.lines(t))

	// start must return 0; stop anything but 0 or 7 is a failure.
	fakeAgent(t, root, "Broken", l, map[string]int{"start": 7, "stop": 1})
	broken := config.Service{Kind: config.ServiceOCF, Provider: "test", Agent: "Broken", Instance: "b"}
	p = testPromoter(t, other, broken)
	p.OCFRoot = root
	err := p.Start(context.Background())
	require.ErrorIs(t, err, ErrStartFailed)
	require.Contains(t, err.Error(), "start ocf:test:Broken b: exit code 7: Broken start says 7")

	p = testPromoter(t, broken)
	p.OCFRoot = root
	fakeAgent(t, root, "Broken", l, map[string]int{"stop": 1})
	require.NoError(t, p.Start(context.Background()))
	err = p.Stop(context.Background())
	require.ErrorIs(t, err, ErrStopFailed)
	require.Contains(t, err.Error(), "stop ocf:test:Broken b: exit code 1: Broken stop says 1")

	missing := config.Service{Kind: config.ServiceOCF, Provider: "heartbeat", Agent: "NoSuchAgent"}
	p = testPromoter(t, missing)
	p.OCFRoot = root
	err = p.Start(context.Background())
	require.ErrorIs(t, err, ErrStartFailed)
	require.Contains(t, err.Error(), "OCF agent "+filepath.Join(root, "resource.d/heartbeat/NoSuchAgent")+" is not installed")
}

// TestPromoterRealDummyAgent runs resource-agents' ocf:heartbeat:Dummy when
// it is installed: the state file it keeps exists exactly while started.
func TestPromoterRealDummyAgent(t *testing.T) {
	if _, err := os.Stat(filepath.Join(DefaultOCFRoot, "resource.d/heartbeat/Dummy")); err != nil {
		t.Skip("resource-agents' Dummy agent is not installed")
	}
	state := filepath.Join(t.TempDir(), "dummy.state")
	p := testPromoter(t, config.Service{Kind: config.ServiceOCF, Provider: "heartbeat", Agent: "Dummy", Instance: "dummy_r0",
		Params: []config.OCFParam{{Name: "state", Value: state}}})
	require.NoError(t, p.Start(context.Background()))
	require.FileExists(t, state)
	require.NoError(t, p.Stop(context.Background()))
	require.NoFileExists(t, state)
}

func TestPromoterSystemdUnits(t *testing.T) {
	l := newPromoterLog(t)
	systemctl := filepath.Join(t.TempDir(), "systemctl")
	require.NoError(t, os.WriteFile(systemctl, []byte("#!/bin/sh\n"+l.cmd("systemctl $*")+
		"\nif [ \"$2\" = broken.service ]; then echo \"Job for broken.service failed.\" >&2; exit 1; fi\n"), 0o755))
	unit := func(name string) config.Service { return config.Service{Kind: config.ServiceSystemd, Unit: name} }
	p := testPromoter(t, unit("var-lib-mysql.mount"), unit("mariadb.service"))
	p.Systemctl = systemctl
	require.NoError(t, p.Start(context.Background()))
	require.NoError(t, p.Stop(context.Background()))
	require.Equal(t, []string{"systemctl start var-lib-mysql.mount", "systemctl start mariadb.service",
		"systemctl stop mariadb.service", "systemctl stop var-lib-mysql.mount"}, l.lines(t))

	p = testPromoter(t, unit("var-lib-mysql.mount"), unit("broken.service"))
	p.Systemctl = systemctl
	err := p.Start(context.Background())
	require.ErrorIs(t, err, ErrStartFailed)
	require.Contains(t, err.Error(), "start broken.service: exit code 1: Job for broken.service failed.")
	require.Equal(t, []string{"systemctl start broken.service", "systemctl stop var-lib-mysql.mount"}, l.lines(t)[5:])
}

// The real kernel attach (nbd.AttachKernel) needs the nbd module, which
// this host lacks; the VM suite tests it. Here a fake checks the ordering.
func fakeAttach(l promoterLog, attachErr, detachErr *error) func(ctx context.Context) (func() error, error) {
	logLine := func(s string) { _, _ = RunHandler(context.Background(), l.cmd(s), HandlerEnv{}, 5*time.Second) }
	return func(ctx context.Context) (func() error, error) {
		if _, ok := ctx.Deadline(); !ok {
			return nil, errors.New("attach without a deadline")
		}
		if *attachErr != nil {
			logLine("attach failed")
			return nil, *attachErr
		}
		logLine("attach")
		return func() error {
			if *detachErr != nil {
				logLine("detach failed")
				return *detachErr
			}
			logLine("detach")
			return nil
		}, nil
	}
}

func TestPromoterDeviceAttachOrder(t *testing.T) {
	l := newPromoterLog(t)
	var attachErr, detachErr error
	stuck := filepath.Join(t.TempDir(), "stuck")
	b := config.Service{Kind: config.ServiceCommand, StartCommand: l.cmd("start b"),
		StopCommand: l.cmd("stop b") + "; [ ! -e " + shellWord(stuck) + " ]"}
	p := testPromoter(t, l.pair("a"), b)
	p.Device = "/dev/nbd0"
	p.Attach = fakeAttach(l, &attachErr, &detachErr)
	ctx := context.Background()

	require.NoError(t, p.Start(ctx))
	require.NoError(t, p.Stop(ctx))
	require.Equal(t, []string{"attach", "start a", "start b", "stop b", "stop a", "detach"}, l.lines(t))

	// A failed attach starts nothing.
	require.NoError(t, os.Remove(string(l)))
	attachErr = errors.New("no /dev/nbd0")
	err := p.Start(ctx)
	require.ErrorIs(t, err, ErrStartFailed)
	require.Contains(t, err.Error(), "attach /dev/nbd0: no /dev/nbd0")
	require.Equal(t, []string{"attach failed"}, l.lines(t))

	// A failed start detaches after the rollback.
	require.NoError(t, os.Remove(string(l)))
	attachErr = nil
	p.Services = append(p.Services, config.Service{Kind: config.ServiceCommand, StartCommand: "exit 1", StopCommand: "true"})
	p.up = nil
	require.ErrorIs(t, p.Start(ctx), ErrStartFailed)
	require.Equal(t, []string{"attach", "start a", "start b", "stop b", "stop a", "detach"}, l.lines(t))

	// A service that does not stop keeps the device attached; the retry detaches.
	require.NoError(t, os.Remove(string(l)))
	p.Services = p.Services[:2]
	p.up = nil
	require.NoError(t, os.WriteFile(stuck, nil, 0o644))
	require.NoError(t, p.Start(ctx))
	require.ErrorIs(t, p.Stop(ctx), ErrStopFailed)
	require.Equal(t, []string{"attach", "start a", "start b", "stop b", "stop a"}, l.lines(t))
	require.NoError(t, os.Remove(stuck))
	require.NoError(t, p.Stop(ctx))
	require.Equal(t, []string{"attach", "start a", "start b", "stop b", "stop a", "stop b", "detach"}, l.lines(t))

	// A failed detach is a stop failure; it is retried by the next Stop.
	require.NoError(t, os.Remove(string(l)))
	p.OnStopFailure = l.cmd("escalated $TWINBD_SERVICE")
	require.NoError(t, p.Start(ctx))
	detachErr = errors.New("busy")
	err = p.Stop(ctx)
	require.ErrorIs(t, err, ErrStopFailed)
	require.Contains(t, err.Error(), "detach /dev/nbd0: busy")
	detachErr = nil
	require.NoError(t, p.Stop(ctx))
	require.Equal(t, []string{"attach", "start a", "start b", "stop b", "stop a", "detach failed", "escalated detach /dev/nbd0", "detach"}, l.lines(t))
}

func TestNewPromoterFromConfig(t *testing.T) {
	cfg, err := config.Parse("p.res", []byte(`resource r0 {
  promoter {
    start var-lib-mysql.mount;
    start "ocf:heartbeat:IPaddr2 ip_mysql ip=10.9.42.1 cidr_netmask=24";
    start "/usr/local/bin/db-up" stop "/usr/local/bin/db-down";
    start-timeout 30; stop-timeout 20; on-stop-failure "echo b > /proc/sysrq-trigger";
  }
  on alpha { node-id 0; address 127.0.0.1:7788; disk /tmp/a.img; meta-disk internal; }
}`))
	require.NoError(t, err)
	pc := cfg.Resources[0].Promoter
	env := HandlerEnv{Resource: "r0"}
	p := NewPromoter(pc, env)
	require.Equal(t, pc.Start, p.Services)
	require.Equal(t, 30*time.Second, p.StartTimeout)
	require.Equal(t, 20*time.Second, p.StopTimeout)
	require.Equal(t, "echo b > /proc/sysrq-trigger", p.OnStopFailure)
	require.Equal(t, env, p.Env)
	require.Nil(t, p.Attach)
	p.Services[0].Unit = "changed.mount"
	require.Equal(t, "var-lib-mysql.mount", pc.Start[0].Unit, "NewPromoter copies the start list")
}

func TestShellWord(t *testing.T) {
	for _, s := range []string{"", "plain", "it's", `a"b\c`, "$HOME `id`", "two\nlines"} {
		res, err := RunHandler(context.Background(), "printf %s "+shellWord(s), HandlerEnv{}, 5*time.Second)
		require.NoError(t, err)
		require.Equal(t, s, string(res.Output))
	}
}

// Cleanup (after the daemon died while Primary) stops the whole list in
// reverse although this process started nothing.
func TestPromoterCleanupStopsEverything(t *testing.T) {
	l := newPromoterLog(t)
	p := testPromoter(t, l.pair("a"), l.pair("b"))
	require.NoError(t, p.Cleanup(context.Background()))
	require.Equal(t, []string{"stop b", "stop a"}, l.lines(t))
	require.NoError(t, p.Start(context.Background()))
	require.Equal(t, []string{"stop b", "stop a", "start a", "start b"}, l.lines(t))
}
