package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/failover"
	"github.com/twinbd/twinbd/replication"
)

func TestServicesFor(t *testing.T) {
	parse := func(promoter, alphaExtra string) *config.Resource {
		cfg, err := config.Parse("s.conf", []byte(`resource r7 {
  `+promoter+`
  on alpha { node-id 2; address 127.0.0.1:1; disk /dev/null; meta-disk internal; `+alphaExtra+` }
  on beta  { node-id 5; address 127.0.0.1:2; disk /dev/null; meta-disk internal; device /dev/nbd9; }
}
`))
		require.NoError(t, err)
		return cfg.Resources[0]
	}
	d := New(Options{ConfigPath: "/etc/twinbd/s.conf", Node: "alpha", Logger: slog.New(slog.DiscardHandler)})

	require.Nil(t, d.servicesFor(parse("", "device /dev/nbd3;")), "no promoter section: no services (an untyped nil)")

	s := d.servicesFor(parse(`promoter { start a.service; stop-timeout 7; }`, "device /dev/nbd3; export 0.0.0.0:10809;"))
	p, ok := s.(*failover.Promoter)
	require.True(t, ok, "%T", s)
	require.Equal(t, "/dev/nbd3", p.Device)
	require.NotNil(t, p.Attach, "attach-device defaults to yes")
	require.Equal(t, 7*time.Second, p.StopTimeout)
	require.Equal(t, "r7", p.Env.Resource)
	require.Equal(t, 3, p.Env.Minor)
	require.Equal(t, "beta", p.Env.Peer)
	require.Equal(t, "/etc/twinbd/s.conf", p.Env.ConfPath)

	p = d.servicesFor(parse(`promoter { attach-device no; }`, "device /dev/nbd3;")).(*failover.Promoter)
	require.Equal(t, "/dev/nbd3", p.Device, "TWINBD_DEVICE is set even when twinbd does not attach it")
	require.Nil(t, p.Attach)

	p = d.servicesFor(parse(`promoter { }`, "")).(*failover.Promoter)
	require.Equal(t, "", p.Device, "beta's device is not alpha's")
	require.Nil(t, p.Attach)

	p = d.servicesFor(parse(`promoter { }`, "device /dev/nbd3;")).(*failover.Promoter)
	_, err := p.Attach(context.Background())
	require.ErrorContains(t, err, `attach /dev/nbd3: resource r7 has no export address for this node (export IP:PORT in "on alpha" or at resource level)`)
}

func TestDialAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0.0.0.0:10809":   "127.0.0.1:10809",
		"[::]:10809":      "[::1]:10809",
		"10.0.0.1:10809":  "10.0.0.1:10809",
		"[fd00::1]:10809": "[fd00::1]:10809",
		"db.example:1":    "db.example:1",
	} {
		require.Equal(t, want, dialAddr(in), in)
	}
}

// The promoter runs on `primary` and stops on `secondary`; a start list
// that fails leaves the node Secondary.
func TestPromoterOnRoleChange(t *testing.T) {
	dir := t.TempDir()
	logFile := filepath.Join(dir, "services.log")
	var conf strings.Builder
	for _, rname := range []string{"good", "bad"} {
		img := filepath.Join(dir, rname+".img")
		require.NoError(t, os.WriteFile(img, nil, 0o600))
		require.NoError(t, os.Truncate(img, 8<<20))
		start := `echo \"start $DRBD_RESOURCE $TWINBD_ACTION\" >> ` + logFile
		if rname == "bad" {
			start += "; echo cannot start; exit 1"
		}
		fmt.Fprintf(&conf, `resource %s {
  promoter { start "%s" stop "echo \"stop $DRBD_RESOURCE $TWINBD_ACTION\" >> %s"; }
  on alpha { node-id 0; address 127.0.0.1:%d; export 127.0.0.1:%d; disk %s; meta-disk internal; }
}
`, rname, start, logFile, freePort(t), freePort(t), img)
	}
	confPath := filepath.Join(dir, "twinbd.conf")
	require.NoError(t, os.WriteFile(confPath, []byte(conf.String()), 0o600))
	cfg, err := config.Load(confPath)
	require.NoError(t, err)
	for _, res := range cfg.Resources {
		_, err = replication.CreateMetadata(res, "alpha", false)
		require.NoError(t, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	d := New(Options{ConfigPath: confPath, Node: "alpha", RunDir: filepath.Join(dir, "run"),
		Logger: slog.New(slog.DiscardHandler), Up: []string{"all"}})
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	sock := SocketPath(filepath.Join(dir, "run"), "alpha")
	require.Eventually(t, func() bool {
		_, err := Call(context.Background(), sock, Request{Verb: "ping"})
		return err == nil
	}, 5*time.Second, 10*time.Millisecond)
	call := func(req Request) Response {
		resp, err := Call(context.Background(), sock, req)
		require.NoError(t, err)
		return resp
	}
	readLog := func() string {
		b, _ := os.ReadFile(logFile)
		return string(b)
	}

	resp := call(Request{Verb: "primary", Resource: "good", Force: true})
	require.Equal(t, CodeOK, resp.Code, resp.Error)
	require.Equal(t, "start good start\n", readLog())
	resp = call(Request{Verb: "secondary", Resource: "good"})
	require.Equal(t, CodeOK, resp.Code, resp.Error)
	require.Equal(t, "start good start\nstop good stop\n", readLog())

	resp = call(Request{Verb: "primary", Resource: "bad", Force: true})
	require.NotEqual(t, CodeOK, resp.Code)
	require.Contains(t, resp.Error, "cannot start")
	require.Equal(t, "Secondary\n", call(Request{Verb: "role", Resource: "bad"}).Output)
	require.Equal(t, "start good start\nstop good stop\nstart bad start\n", readLog(), "the failed entry is not stopped")
}
