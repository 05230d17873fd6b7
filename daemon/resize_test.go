package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/bitmap"
	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/replication"
)

// The resize verb on a resource without a peer: it reads the resource
// file again (a `disk { size }` added since up caps the growth at once),
// reports what it did or why nothing changed, and status and the size
// metric show the new size.
func TestResizeVerbStandalone(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "solo.img")
	require.NoError(t, os.WriteFile(img, nil, 0o600))
	require.NoError(t, os.Truncate(img, 8<<20))
	conf := filepath.Join(dir, "r0.conf")
	exportPort := freePort(t)
	writeConf := func(disk string) {
		require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf(`resource r0 {
  %s
  on alpha { node-id 0; address 127.0.0.1:%d; export 127.0.0.1:%d; disk %s; meta-disk internal; }
}
`, disk, freePort(t), exportPort, img)), 0o600))
	}
	writeConf("")
	cfg, err := config.Load(conf)
	require.NoError(t, err)
	res, err := cfg.Resource("r0")
	require.NoError(t, err)
	_, err = replication.CreateMetadata(res, "alpha", false)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	metrics := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	d := New(Options{ConfigPath: conf, Node: "alpha", RunDir: filepath.Join(dir, "run"), Metrics: metrics,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Up: []string{"r0"}})
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
		t.Helper()
		resp, err := Call(context.Background(), sock, req)
		require.NoError(t, err)
		return resp
	}
	require.Equal(t, CodeOK, call(Request{Verb: "primary", Resource: "r0", Force: true}).Code)
	size := func() int64 { return call(Request{Verb: "status", Resource: "r0"}).Statuses[0].Devices[0].Size * 1024 }
	metric := func() float64 {
		r, err := http.Get("http://" + metrics + "/metrics")
		require.NoError(t, err)
		defer r.Body.Close()
		b, err := io.ReadAll(r.Body)
		require.NoError(t, err)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "twinbd_device_size_bytes{") {
				v, err := strconv.ParseFloat(l[strings.LastIndex(l, " ")+1:], 64)
				require.NoError(t, err)
				return v
			}
		}
		t.Fatal("no twinbd_device_size_bytes")
		return 0
	}
	lay8, err := bitmap.InternalLayout(8<<20, 0)
	require.NoError(t, err)
	require.Equal(t, lay8.DataSize, size())

	resp := call(Request{Verb: "resize", Resource: "r0"})
	require.Equal(t, CodeOK, resp.Code, resp.Error)
	require.Contains(t, resp.Output, "r0: size unchanged at")
	require.Contains(t, resp.Output, "has not grown")

	// Grown, with a cap in the file that was not there at up.
	require.NoError(t, os.Truncate(img, 16<<20))
	writeConf("disk { size 12M; }")
	resp = call(Request{Verb: "resize", Resource: "r0"})
	require.Equal(t, CodeOK, resp.Code, resp.Error)
	require.Equal(t, fmt.Sprintf("r0: grown from %d KiB to %d KiB.\nr0: NBD clients connected now keep the old size; a new connection (nbdinfo, or nbd-client after `nbd-client -d`) sees the new one.\n", lay8.DataSize/1024, 12<<10), resp.Output)
	require.Equal(t, int64(12<<20), size())
	require.Equal(t, float64(12<<20), metric())
	// The metadata now ends the device, sized for 12M: more needs the
	// device to grow again.
	resp = call(Request{Verb: "resize", Resource: "r0"})
	require.Contains(t, resp.Output, "has not grown since its metadata was placed at its end")
	require.Contains(t, resp.Output, "grow the backing device first")

	resp = call(Request{Verb: "resize", Resource: "r0", Size: 8 << 20})
	require.Equal(t, CodeFailed, resp.Code)
	require.Contains(t, resp.Error, "r0: refusing to shrink r0 from 12582912 to 8388608 bytes")
	resp = call(Request{Verb: "resize", Resource: "r0", Size: 8 << 20, Force: true})
	require.Equal(t, CodeFailed, resp.Code, "the resource file's size 12M")
	require.Contains(t, resp.Error, "the resource file sets `size 12582912`")

	// Grown again, the cap still there: it is the limit, and says so.
	require.NoError(t, os.Truncate(img, 24<<20))
	resp = call(Request{Verb: "resize", Resource: "r0"})
	require.Contains(t, resp.Output, "size unchanged at 12582912 bytes: alpha offers 12582912 (the resource file sets `size 12582912` in disk { }")

	// Without the cap: all the device offers.
	writeConf("")
	resp = call(Request{Verb: "resize", Resource: "r0"})
	require.Equal(t, CodeOK, resp.Code, resp.Error)
	lay24, err := bitmap.InternalLayout(24<<20, 0)
	require.NoError(t, err)
	require.Equal(t, lay24.DataSize, size())
	require.Equal(t, float64(lay24.DataSize), metric())

	// Shrinking: refused without --force, with what to do; a `disk {
	// size }` that does not match is refused; forced, status and the
	// metric show the new size.
	resp = call(Request{Verb: "resize", Resource: "r0", Size: 8 << 20})
	require.Equal(t, CodeFailed, resp.Code)
	require.Contains(t, resp.Error, "First shrink the filesystem")
	require.Contains(t, resp.Error, "`twinbd resize r0 --size 8388608 --force`")
	writeConf("disk { size 12M; }")
	resp = call(Request{Verb: "resize", Resource: "r0", Size: 8 << 20, Force: true})
	require.Equal(t, CodeFailed, resp.Code)
	require.Contains(t, resp.Error, "set it to 8388608 (or remove it)")
	writeConf("")
	resp = call(Request{Verb: "resize", Resource: "r0", Size: 8 << 20, Force: true})
	require.Equal(t, CodeOK, resp.Code, resp.Error)
	require.Equal(t, fmt.Sprintf("r0: shrunk from %d KiB to %d KiB.\nr0: NBD clients connected now keep the old size, and their requests past the new end get an error (EINVAL for a read, ENOSPC for a write); a new connection (nbdinfo, or nbd-client after `nbd-client -d`) sees the new one.\n", lay24.DataSize/1024, 8<<10), resp.Output)
	require.Equal(t, int64(8<<20), size())
	require.Equal(t, float64(8<<20), metric())
}
