package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/twinbd/twinbd/nbd"
)

// startNbdkit runs nbdkit on a unix socket for the test and returns a
// Config pointing at it with short-run defaults.
func startNbdkit(t *testing.T, args ...string) Config {
	t.Helper()
	if _, err := exec.LookPath("nbdkit"); err != nil {
		t.Skip("nbdkit not installed")
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command("nbdkit", append([]string{"-f", "--exit-with-parent", "-U", sock}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	require.Eventually(t, func() bool {
		select {
		case <-exited:
			t.Fatalf("nbdkit exited: %s", stderr.String())
		default:
		}
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 10*time.Second, 10*time.Millisecond)
	cfg := Defaults()
	cfg.Network, cfg.Addr = "unix", sock
	cfg.Duration = time.Second
	cfg.IODepth = 8
	cfg.ProgressInterval = 100 * time.Millisecond
	return cfg
}

func TestRunEveryMode(t *testing.T) {
	for _, mode := range Modes {
		for _, verify := range []bool{false, true} {
			name := string(mode)
			if verify {
				name += "/verify"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				cfg := startNbdkit(t, "memory", "64M")
				cfg.Mode = mode
				cfg.Verify = verify
				cfg.Seed = 42
				if verify {
					cfg.Size = 4 << 20 // small: blocks get rewritten and reread
					cfg.Duration = 700 * time.Millisecond
				}
				var snaps atomic.Int32
				res, err := Run(context.Background(), cfg, func(Snapshot) { snaps.Add(1) })
				require.NoError(t, err)
				require.Positive(t, res.Ops)
				require.Zero(t, res.Errors)
				require.EqualValues(t, 42, res.Seed)
				require.Greater(t, res.IOPS, 0.0)
				require.Greater(t, res.MiBps, 0.0)
				require.Positive(t, res.Latency.P50)
				require.LessOrEqual(t, res.Latency.P50, res.Latency.P99)
				require.LessOrEqual(t, res.Latency.P99, res.Latency.P999)
				require.LessOrEqual(t, res.Latency.P999, res.Latency.Max)
				require.InDelta(t, float64(cfg.Duration), float64(res.Duration), float64(50*time.Millisecond))
				switch mode {
				case RandRead, SeqRead:
					require.Zero(t, res.WriteOps)
				case RandWrite, SeqWrite:
					require.Zero(t, res.ReadOps)
				case RandRW:
					require.Positive(t, res.ReadOps)
					require.Positive(t, res.WriteOps)
					require.NotNil(t, res.ReadLatency)
					share := float64(res.ReadOps) / float64(res.Ops)
					require.InDelta(t, 0.70, share, 0.05)
				}
				if verify {
					require.NotNil(t, res.Verify)
					require.Zero(t, res.Verify.Errors, res.Verify.Failures)
					if res.WriteOps > 0 {
						require.Positive(t, res.Verify.ReadBack)
					}
				} else {
					require.Nil(t, res.Verify)
				}
				require.Positive(t, snaps.Load(), "progress called every interval")

				var out bytes.Buffer
				require.NoError(t, res.WriteJSON(&out))
				var back Result
				require.NoError(t, json.Unmarshal(out.Bytes(), &back))
				require.Equal(t, res, back)
				var raw map[string]any
				require.NoError(t, json.Unmarshal(out.Bytes(), &raw))
				for _, k := range []string{"iops", "mib_per_s", "latency", "errors", "ops"} {
					require.Contains(t, raw, k)
				}
				out.Reset()
				require.NoError(t, res.WriteText(&out))
				require.Contains(t, out.String(), "IOPS:")
				require.Contains(t, out.String(), "p99.9")
			})
		}
	}
}

func TestRunFUAFlushConnsRamp(t *testing.T) {
	cfg := startNbdkit(t, "memory", "64M")
	cfg.FUA = true
	cfg.FlushEvery = 16
	cfg.Conns = 2
	cfg.IODepth = 4
	cfg.Ramp = 200 * time.Millisecond
	cfg.Duration = 800 * time.Millisecond
	cfg.Size = 8 << 20
	cfg.Offset = 1 << 20
	res, err := Run(context.Background(), cfg, nil)
	require.NoError(t, err)
	require.Positive(t, res.WriteOps)
	require.Positive(t, res.Flushes)
	require.NotNil(t, res.FlushLatency)
	require.EqualValues(t, 8<<20, res.Size)
	require.Equal(t, 200*time.Millisecond, res.Ramp)
	require.InDelta(t, float64(800*time.Millisecond), float64(res.Duration), float64(50*time.Millisecond))
}

func TestRunVerifyCatchesLostWrites(t *testing.T) {
	// The null plugin acknowledges writes and reads back zeroes.
	cfg := startNbdkit(t, "null", "16M")
	cfg.Mode = RandRW
	cfg.Verify = true
	cfg.Duration = 300 * time.Millisecond
	res, err := Run(context.Background(), cfg, nil)
	require.NoError(t, err)
	require.NotNil(t, res.Verify)
	require.Positive(t, res.Verify.Errors)
	require.NotEmpty(t, res.Verify.Failures)
	require.LessOrEqual(t, len(res.Verify.Failures), maxVerifyFailures)
	require.Contains(t, res.Verify.Failures[0], "no verify header")
}

func TestRunCountsServerErrors(t *testing.T) {
	cfg := startNbdkit(t, "--filter=error", "memory", "16M", "error-pwrite=EIO", "error-pwrite-rate=20%")
	cfg.Duration = 300 * time.Millisecond
	cfg.Verify = true
	res, err := Run(context.Background(), cfg, nil)
	require.NoError(t, err, "error replies do not end the run")
	require.Positive(t, res.Errors)
	require.Positive(t, res.WriteOps)
	require.Contains(t, res.FirstError, "EIO")
	require.Zero(t, res.Verify.Errors, "blocks whose write failed are not checked")
}

func TestRunConnectionLostEndsRun(t *testing.T) {
	cfg := startNbdkit(t, "memory", "16M")
	// A proxy we can cut.
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "proxy.sock"))
	require.NoError(t, err)
	defer l.Close()
	cut := make(chan struct{})
	upstream := cfg.Addr
	go func() {
		for {
			down, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("unix", upstream)
			if err != nil {
				down.Close()
				return
			}
			go func() { _, _ = copyConn(up, down) }()
			go func() { _, _ = copyConn(down, up) }()
			go func() { <-cut; up.Close(); down.Close() }()
		}
	}()
	cfg.Addr = l.Addr().String()
	cfg.Duration = 5 * time.Second
	time.AfterFunc(300*time.Millisecond, func() { close(cut) })
	start := time.Now()
	res, err := Run(context.Background(), cfg, nil)
	require.ErrorIs(t, err, nbd.ErrConnLost)
	require.Less(t, time.Since(start), 3*time.Second)
	require.Equal(t, RandWrite, res.Mode, "partial result comes back")
}

func copyConn(dst, src net.Conn) (int64, error) {
	buf := make([]byte, 64<<10)
	var n int64
	for {
		k, err := src.Read(buf)
		if k > 0 {
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return n, werr
			}
			n += int64(k)
		}
		if err != nil {
			return n, err
		}
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	cfg := startNbdkit(t, "memory", "1M")
	for name, mut := range map[string]func(*Config){
		"mode":          func(c *Config) { c.Mode = "sideways" },
		"bs":            func(c *Config) { c.BlockSize = 0 },
		"offset align":  func(c *Config) { c.Offset = 100 },
		"offset past":   func(c *Config) { c.Offset = 2 << 20 },
		"size past":     func(c *Config) { c.Size = 2 << 20 },
		"rwmix":         func(c *Config) { c.RWMixRead = 101 },
		"duration":      func(c *Config) { c.Duration = 0 },
		"verify blocks": func(c *Config) { c.Verify = true; c.Size = 16 << 10 },
	} {
		c := cfg
		mut(&c)
		_, err := Run(context.Background(), c, nil)
		require.ErrorIs(t, err, ErrConfig, name)
	}
}

func TestParseTarget(t *testing.T) {
	for _, c := range []struct{ in, network, addr, export string }{
		{"nbd://127.0.0.1:10810/r0", "tcp", "127.0.0.1:10810", "r0"},
		{"nbd://127.0.0.1:10810/", "tcp", "127.0.0.1:10810", ""},
		{"nbd://127.0.0.1:10810", "tcp", "127.0.0.1:10810", ""},
		{"nbd://node-a/r0", "tcp", "node-a:10809", "r0"},
		{"nbd://[::1]:7000/x", "tcp", "[::1]:7000", "x"},
		{"127.0.0.1:10809", "tcp", "127.0.0.1:10809", ""},
		{"nbd+unix:///r0?socket=/run/x.sock", "unix", "/run/x.sock", "r0"},
	} {
		n, a, e, err := ParseTarget(c.in)
		require.NoError(t, err, c.in)
		require.Equal(t, []string{c.network, c.addr, c.export}, []string{n, a, e}, c.in)
	}
	for _, bad := range []string{"", "localhost", "http://x:1/", "nbd:///r0", "nbd+unix:///r0", ":10809"} {
		_, _, _, err := ParseTarget(bad)
		require.ErrorIs(t, err, ErrConfig, bad)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "512": 512, "4k": 4096, "4K": 4096, "4KiB": 4096, "4kb": 4096,
		"1m": 1 << 20, "64M": 64 << 20, "1g": 1 << 30, "2t": 2 << 40,
	} {
		got, err := ParseSize(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
		if want > 0 {
			back, err := ParseSize(FormatSize(want))
			require.NoError(t, err)
			require.Equal(t, want, back)
		}
	}
	for _, bad := range []string{"", "k", "-1", "1x", "1.5m", "99999999999t"} {
		_, err := ParseSize(bad)
		require.ErrorIs(t, err, ErrConfig, bad)
	}
}

func TestSnapshotString(t *testing.T) {
	s := Snapshot{Elapsed: 3 * time.Second, Ramping: true, IOPS: 12345, MiBps: 48.2}
	require.True(t, strings.Contains(s.String(), "(ramp)"))
	require.Contains(t, s.String(), "12345")
}
