package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/replication"
)

// syncBuffer is a log sink safe for the daemon's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startAlpha runs a daemon for node alpha of a two-node resource whose
// peer (beta) never comes, with r0 up. It returns the socket and the log.
func startAlpha(t *testing.T) (string, *syncBuffer) { return startAlphaWith(t, nil) }

// startAlphaWith is startAlpha with opts adjusted by edit (nil: none).
func startAlphaWith(t *testing.T, edit func(*Options)) (string, *syncBuffer) {
	dir := t.TempDir()
	img := filepath.Join(dir, "alpha.img")
	require.NoError(t, os.WriteFile(img, nil, 0o600))
	require.NoError(t, os.Truncate(img, 8<<20))
	conf := filepath.Join(dir, "r0.conf")
	require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf(`resource r0 {
  net { shared-secret "s"; connect-int 1; }
  on alpha { node-id 0; address 127.0.0.1:%d; export 127.0.0.1:%d; disk %s; meta-disk internal; }
  on beta  { node-id 1; address 127.0.0.1:%d; export 127.0.0.1:%d; disk %s.b; meta-disk internal; }
}
`, freePort(t), freePort(t), img, freePort(t), freePort(t), img)), 0o600))
	cfg, err := config.Load(conf)
	require.NoError(t, err)
	res, err := cfg.Resource("r0")
	require.NoError(t, err)
	_, err = replication.CreateMetadata(res, "alpha", false)
	require.NoError(t, err)

	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	opts := Options{ConfigPath: conf, Node: "alpha", RunDir: filepath.Join(dir, "run"), Logger: log, Up: []string{"r0"}}
	if edit != nil {
		edit(&opts)
	}
	d := New(opts)
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
	return sock, logs
}

// Short keepalive and idle timeouts for one test.
func fastKeepalive(t *testing.T) {
	ka, idle := keepaliveInterval, clientIdleTimeout
	keepaliveInterval, clientIdleTimeout = 20*time.Millisecond, 150*time.Millisecond
	t.Cleanup(func() { keepaliveInterval, clientIdleTimeout = ka, idle })
}

// A wait longer than the client's idle timeout survives on keepalives and
// ends with the timeout exit code and the link's state.
func TestWaitTimesOutWithKeepalives(t *testing.T) {
	fastKeepalive(t)
	sock, _ := startAlpha(t)
	start := time.Now()
	resp, err := Call(context.Background(), sock, Request{Verb: "wait-connect", Resource: "r0", Timeout: 600 * time.Millisecond})
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), 600*time.Millisecond)
	require.Equal(t, CodeTimeout, resp.Code)
	require.Contains(t, resp.Error, "r0: wait-connect timed out after 600ms (connection:Connecting")
	require.Contains(t, resp.Error, "twinbd status r0")

	resp, err = Call(context.Background(), sock, Request{Verb: "wait-sync", Resource: "nosuch"})
	require.NoError(t, err)
	require.Equal(t, CodeNoResource, resp.Code)
}

// A client that hangs up (Ctrl-C on wait-sync) ends the daemon's wait.
func TestWaitEndsWhenClientHangsUp(t *testing.T) {
	sock, logs := startAlpha(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := Call(ctx, sock, Request{Verb: "wait-sync", Resource: "r0"})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "wait-sync interrupted: the client hung up")
	}, 5*time.Second, 10*time.Millisecond, logs.String())
}

// A daemon that accepts and then says nothing is reported, not waited on
// forever.
func TestCallSilentDaemon(t *testing.T) {
	fastKeepalive(t)
	sock := filepath.Join(t.TempDir(), "x.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(2 * time.Second)
		}
	}()
	_, err = Call(context.Background(), sock, Request{Verb: "status"})
	require.ErrorIs(t, err, ErrDaemonSilent)
}

// Verbs that need the peer say so with exit code 11 and what to do.
func TestVerbsNeedingThePeer(t *testing.T) {
	sock, _ := startAlpha(t)
	resp, err := Call(context.Background(), sock, Request{Verb: "verify", Resource: "r0"})
	require.NoError(t, err)
	require.Equal(t, CodeNotConnected, resp.Code, resp.Error)

	resp, err = Call(context.Background(), sock, Request{Verb: "disconnect", Resource: "all"})
	require.NoError(t, err)
	require.Equal(t, CodeOK, resp.Code, resp.Error)
	resp, err = Call(context.Background(), sock, Request{Verb: "wait-connect", Resource: "r0"})
	require.NoError(t, err)
	require.Equal(t, CodeNotConnected, resp.Code)
	require.Contains(t, resp.Error, "StandAlone")
	require.Contains(t, resp.Error, "twinbd connect r0")
	resp, err = Call(context.Background(), sock, Request{Verb: "connect", Resource: "r0", DiscardMyData: true})
	require.NoError(t, err)
	require.Equal(t, CodeOK, resp.Code, resp.Error)
	resp, err = Call(context.Background(), sock, Request{Verb: "cstate", Resource: "r0"})
	require.NoError(t, err)
	require.Equal(t, "Connecting\n", resp.Output)
}

// Handlers run asynchronously with DRBD's environment.
func TestHandlerEnvironment(t *testing.T) {
	dir := t.TempDir()
	cfg, err := config.Parse("h.conf", []byte(`resource r7 {
  on alpha { node-id 2; address 127.0.0.1:1; disk /dev/null; meta-disk internal; device /dev/nbd3; }
  on beta  { node-id 5; address 127.0.0.1:2; disk /dev/null; meta-disk internal; }
}
`))
	require.NoError(t, err)
	res, err := cfg.Resource("r7")
	require.NoError(t, err)
	d := New(Options{ConfigPath: "/etc/twinbd/h.conf", Node: "alpha", Logger: slog.New(slog.DiscardHandler)})
	var self atomic.Pointer[replication.Resource]
	out := filepath.Join(dir, "env")
	d.handlerFor(res, &self)("split-brain", "env | grep ^DRBD_ | sort > "+out)
	d.handlers.Wait()
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, strings.Join([]string{
		"DRBD_CONF=/etc/twinbd/h.conf", "DRBD_CSTATE=Unknown", "DRBD_MINOR=3", "DRBD_MY_NODE_ID=2",
		"DRBD_NODE_ID_2=alpha", "DRBD_NODE_ID_5=beta", "DRBD_PEER=beta", "DRBD_PEER_NODE_ID=5",
		"DRBD_RESOURCE=r7", "DRBD_VOLUME=0",
	}, "\n")+"\n", string(b))
	require.Equal(t, 0, nbdMinor(""))
	require.Equal(t, 0, nbdMinor("/dev/sda"))
	require.Equal(t, 12, nbdMinor("/dev/nbd12"))
}
