package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/twinbd/twinbd/bench"
)

// benchNbdkit serves `nbdkit memory 64M` on a unix socket and returns the
// target URI.
func benchNbdkit(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("nbdkit"); err != nil {
		t.Skip("nbdkit not installed")
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command("nbdkit", "-f", "--exit-with-parent", "-U", sock, "memory", "64M")
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	require.Eventually(t, func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 10*time.Second, 10*time.Millisecond)
	return "nbd+unix:///?socket=" + sock
}

func runBench(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newBenchCmd()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	cmd.SilenceUsage = true
	err = cmd.Execute()
	return out.String(), errb.String(), err
}

func TestBenchFlagsReachTheRun(t *testing.T) {
	target := benchNbdkit(t)
	out, _, err := runBench(t, "--rw", "randrw", "--bs", "8k", "--iodepth", "4", "--conns", "2",
		"--fua", "--flush-every", "7", "--rwmix-read", "60", "--size", "16m", "--offset", "1m",
		"--duration", "300ms", "--ramp", "100ms", "--seed", "99", "--json", "--no-progress", "--verify", target)
	require.NoError(t, err)
	var res bench.Result
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	require.Equal(t, bench.RandRW, res.Mode)
	require.Equal(t, 8192, res.BlockSize)
	require.Equal(t, 4, res.IODepth)
	require.Equal(t, 2, res.Conns)
	require.True(t, res.FUA)
	require.Equal(t, 7, res.FlushEvery)
	require.Equal(t, 60, res.RWMixRead)
	require.EqualValues(t, 16<<20, res.Size)
	require.EqualValues(t, 1<<20, res.Offset)
	require.EqualValues(t, 99, res.Seed)
	require.Equal(t, 100*time.Millisecond, res.Ramp)
	require.Equal(t, target, res.Target)
	require.NotNil(t, res.Verify)
	require.Zero(t, res.Verify.Errors)
	require.Positive(t, res.Ops)
}

func TestBenchDefaultsAndText(t *testing.T) {
	target := benchNbdkit(t)
	out, stderr, err := runBench(t, "--duration", "1200ms", "--progress", target)
	require.NoError(t, err)
	for _, want := range []string{"workload:  randwrite bs=4k iodepth=32 conns=1 fua=false", "IOPS:", "MiB/s:", "p50", "p99.9", "max"} {
		require.Contains(t, out, want)
	}
	require.Contains(t, stderr, "IOPS", "--progress forces the progress line")
	require.Contains(t, stderr, "\r")

	// Without a terminal, no progress line unless forced.
	_, stderr, err = runBench(t, "--duration", "1100ms", "--rw", "read", "--iodepth", "1", target)
	require.NoError(t, err)
	require.Empty(t, stderr)
}

func TestBenchRejectsBadInput(t *testing.T) {
	for name, args := range map[string][]string{
		"no target":     {},
		"two targets":   {"a:1", "b:2"},
		"bad target":    {"http://x/"},
		"bad bs":        {"--bs", "4q", "127.0.0.1:1"},
		"bad size":      {"--size", "-1", "127.0.0.1:1"},
		"bad rw":        {"--rw", "sideways", "127.0.0.1:1"},
		"both progress": {"--progress", "--no-progress", "127.0.0.1:1"},
		"bad iodepth":   {"--iodepth", "0", "127.0.0.1:1"},
	} {
		_, _, err := runBench(t, args...)
		require.Error(t, err, name)
	}
	_, _, err := runBench(t, "--rw", "sideways", "127.0.0.1:1")
	require.ErrorIs(t, err, bench.ErrConfig)
	_, _, err = runBench(t, "--bs", "4q", "127.0.0.1:1")
	require.ErrorIs(t, err, bench.ErrConfig)
}

func TestBenchUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	_, _, err = runBench(t, "--timeout", "2s", addr)
	require.ErrorContains(t, err, "dial")
}
