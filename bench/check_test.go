package bench

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/twinbd/twinbd/device"
	"github.com/twinbd/twinbd/nbd"
)

const checkTestBlocks = 1024

// serveCheck serves dev as export "r0" on a loopback listener and returns
// its URL and the server (shut down at the end of the test).
func serveCheck(t *testing.T, dev device.Device) (string, *nbd.Server) {
	t.Helper()
	s := nbd.NewServer(nbd.ServerConfig{Exports: nbd.StaticResolver{"r0": nbd.NewDeviceExport(dev, false)}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		require.NoError(t, <-served)
	})
	return "nbd://" + ln.Addr().String() + "/r0", s
}

func checkTestConfig(d time.Duration, urls ...string) CheckConfig {
	cfg := CheckDefaults()
	cfg.URLs = urls
	cfg.Duration = d
	cfg.Blocks = checkTestBlocks
	cfg.Seed = 7
	return cfg
}

func logCheck(t *testing.T, res *CheckResult) {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, res.WriteText(&b))
	t.Log("\n" + b.String())
}

// lossyDevice acknowledges writes without making them once drop is set.
type lossyDevice struct {
	device.Device
	drop atomic.Bool
}

func (d *lossyDevice) WriteAt(p []byte, off int64) (int, error) {
	if d.drop.Load() {
		return len(p), nil
	}
	return d.Device.WriteAt(p, off)
}

// failingDevice fails the writes for which fail returns true once armed.
type failingDevice struct {
	device.Device
	armed atomic.Bool
	fail  func(off int64) bool
}

func (d *failingDevice) WriteAt(p []byte, off int64) (int, error) {
	if d.armed.Load() && d.fail(off) {
		return 0, errors.New("injected write error")
	}
	return d.Device.WriteAt(p, off)
}

func TestCheckBlockFormat(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{CheckBlockSize, 24, 100} {
		b := make([]byte, n)
		MakeCheckBlock(b, 8192, 42, rng)
		seq, ok := ParseCheckBlock(b, 8192)
		require.True(t, ok, "size %d", n)
		require.EqualValues(t, 42, seq)
		_, ok = ParseCheckBlock(b, 4096)
		require.False(t, ok, "a block is valid only at its own offset")
		b[n/2] ^= 1
		_, ok = ParseCheckBlock(b, 8192)
		require.False(t, ok, "a flipped bit fails the checksum")
	}
	_, ok := ParseCheckBlock(make([]byte, CheckBlockSize), 0)
	require.False(t, ok, "zeroes are not a block")
	a, b := make([]byte, CheckBlockSize), make([]byte, CheckBlockSize)
	MakeCheckBlock(a, 0, 1, nil)
	MakeCheckBlock(b, 0, 1, nil)
	require.NotEqual(t, a, b, "random fill")
}

// One export, nothing in the way: every answered write is read back.
func TestCheckPlain(t *testing.T) {
	url, _ := serveCheck(t, device.NewMemory(checkTestBlocks*CheckBlockSize))
	cfg := checkTestConfig(500*time.Millisecond, url)
	cfg.FlushEvery = 16
	res, err := RunCheck(context.Background(), cfg)
	require.NoError(t, err)
	logCheck(t, res)
	require.NoError(t, res.Err())
	require.Positive(t, res.Answered)
	require.Equal(t, res.Answered, res.PerURL[0].Answered)
	require.Positive(t, res.Flushes)
	require.Zero(t, res.Failed)
	require.Zero(t, res.Switches)
	require.EqualValues(t, checkTestBlocks, res.BlocksRead)
	require.Equal(t, []string{url}, res.ReadFrom)
	require.Zero(t, res.Lost+res.Corrupt+res.OldPrimaryAnswers)
	require.InDelta(t, 500*time.Millisecond, res.Duration, float64(200*time.Millisecond))
}

// Cancelling the context ends the write phase early; the check still runs.
func TestCheckCancelStillChecks(t *testing.T) {
	url, _ := serveCheck(t, device.NewMemory(checkTestBlocks*CheckBlockSize))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	res, err := RunCheck(ctx, checkTestConfig(time.Minute, url))
	require.NoError(t, err)
	require.Less(t, res.Duration, 5*time.Second)
	require.NoError(t, res.Err())
	require.EqualValues(t, checkTestBlocks, res.BlocksRead)
}

// Two exports over the same device; A goes away (listener and connections
// closed after its requests are answered) and the workers move to B.
func TestCheckFailover(t *testing.T) {
	mem := device.NewMemory(checkTestBlocks * CheckBlockSize)
	urlA, srvA := serveCheck(t, mem)
	urlB, _ := serveCheck(t, mem)
	cfg := checkTestConfig(time.Second, urlA, urlB)
	// A long pause makes the failover the longest gap by far.
	cfg.RetryPause = 100 * time.Millisecond
	time.AfterFunc(300*time.Millisecond, func() { _ = srvA.Shutdown(context.Background()) })
	res, err := RunCheck(context.Background(), cfg)
	require.NoError(t, err)
	logCheck(t, res)
	require.NoError(t, res.Err())
	require.Positive(t, res.PerURL[0].Answered)
	require.Positive(t, res.PerURL[1].Answered)
	require.Positive(t, res.PerURL[0].Failures)
	require.Equal(t, 1, res.Switches)
	require.Less(t, res.PerURL[0].LastAnswer, res.PerURL[1].FirstAnswer)
	require.Zero(t, res.OldPrimaryAnswers)
	require.Equal(t, urlB, res.ReadFrom[0])
	require.Zero(t, res.Lost)
	require.GreaterOrEqual(t, res.LongestGap, 80*time.Millisecond)
	require.Equal(t, urlA, res.LongestGapFrom)
	require.Equal(t, urlB, res.LongestGapTo)
	require.InDelta(t, 300*time.Millisecond, res.LongestGapAt, float64(150*time.Millisecond))
}

// An export that acknowledges writes it drops: the check finds lost writes
// and fails.
func TestCheckLossyExportFails(t *testing.T) {
	dev := &lossyDevice{Device: device.NewMemory(checkTestBlocks * CheckBlockSize)}
	url, _ := serveCheck(t, dev)
	time.AfterFunc(200*time.Millisecond, func() { dev.drop.Store(true) })
	res, err := RunCheck(context.Background(), checkTestConfig(600*time.Millisecond, url))
	require.NoError(t, err)
	logCheck(t, res)
	require.Positive(t, res.Lost)
	require.Len(t, res.Failures, checkMaxFailures)
	for _, f := range res.Failures {
		require.Equal(t, "lost", f.Kind)
		require.Equal(t, url, f.AnsweredBy)
		require.Greater(t, f.Answered, f.Found)
	}
	require.ErrorIs(t, res.Err(), ErrCheckFailed)
	require.Contains(t, res.Err().Error(), "lost writes")
}

// Split brain: A fails the writes of worker 0 only, which moves to B (its
// own device) while the other workers keep writing to A. A answering
// writes issued after B's first answer is two writers.
func TestCheckTwoWritersFail(t *testing.T) {
	const workers = 8
	devA := &failingDevice{Device: device.NewMemory(checkTestBlocks * CheckBlockSize),
		fail: func(off int64) bool { return (off/CheckBlockSize)%workers == 0 }}
	urlA, _ := serveCheck(t, devA)
	urlB, _ := serveCheck(t, device.NewMemory(checkTestBlocks*CheckBlockSize))
	time.AfterFunc(200*time.Millisecond, func() { devA.armed.Store(true) })
	cfg := checkTestConfig(600*time.Millisecond, urlA, urlB)
	cfg.Workers = workers
	res, err := RunCheck(context.Background(), cfg)
	require.NoError(t, err)
	logCheck(t, res)
	require.Positive(t, res.PerURL[1].Answered)
	require.Positive(t, res.OldPrimaryAnswers)
	require.NotEmpty(t, res.OldPrimaryDetails)
	require.Contains(t, res.Err().Error(), "answers from the old Primary after the new one started")
}

// The answer bookkeeping: gaps, switches, late and old-Primary answers.
func TestCheckAnswerAccounting(t *testing.T) {
	r := &checkRun{
		targets: []checkTarget{{url: "A"}, {url: "B"}},
		urls:    []CheckURLStats{{URL: "A"}, {URL: "B"}},
		lastURL: -1, gapFrom: -1, gapTo: -1, newest: -1, end: -1, firstSeq: 1,
	}
	ms := time.Millisecond
	r.noteAnswerLocked(0, 1*ms, 5*ms, 0, 1)
	r.noteAnswerLocked(0, 5*ms, 6*ms, 0, 2)
	r.noteAnswerLocked(1, 40*ms, 50*ms, 0, 3) // failover: gap 6..50 ms
	r.noteAnswerLocked(0, 45*ms, 51*ms, 0, 4) // in flight at the switch: late
	r.noteAnswerLocked(0, 52*ms, 53*ms, 0, 5) // issued after B answered: two writers
	r.noteAnswerLocked(1, 53*ms, 54*ms, 0, 6)
	r.end = 60 * ms
	res := r.result()
	require.Equal(t, 1, res.Switches)
	require.Equal(t, 44*ms, res.LongestGap)
	require.Equal(t, 6*ms, res.LongestGapAt)
	require.Equal(t, "A", res.LongestGapFrom)
	require.Equal(t, "B", res.LongestGapTo)
	require.EqualValues(t, 1, res.LateAnswers)
	require.EqualValues(t, 1, res.OldPrimaryAnswers)
	require.True(t, strings.HasPrefix(res.OldPrimaryDetails[0], "A answered write #5 (block 0)"), res.OldPrimaryDetails[0])
	require.EqualValues(t, 6, res.Answered)

	// The tail counts: nothing answered after 54 ms of a 200 ms run.
	r.end = 200 * ms
	res = r.result()
	require.Equal(t, 146*ms, res.LongestGap)
	require.Equal(t, "B", res.LongestGapFrom)
	require.Empty(t, res.LongestGapTo)
}

// volatileDevice has a volatile write cache: WriteAt lands in data, which
// reads see; Flush copies everything to durable, WriteAtFUA copies its own
// range (unless lieFUA: a device that answers FUA without making it
// durable); Crash (a power failure) drops whatever is not durable.
type volatileDevice struct {
	mu            sync.Mutex
	data, durable []byte
	fuaWrites     atomic.Int64
	lieFUA        bool
}

func newVolatileDevice(size int64) *volatileDevice {
	return &volatileDevice{data: make([]byte, size), durable: make([]byte, size)}
}

func (d *volatileDevice) Size() int64  { return int64(len(d.data)) }
func (d *volatileDevice) Close() error { return nil }

func (d *volatileDevice) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return copy(p, d.data[off:]), nil
}

func (d *volatileDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return copy(d.data[off:], p), nil
}

func (d *volatileDevice) WriteAtFUA(p []byte, off int64) (int, error) {
	d.fuaWrites.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	n := copy(d.data[off:], p)
	if !d.lieFUA {
		copy(d.durable[off:], p)
	}
	return n, nil
}

func (d *volatileDevice) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.durable, d.data)
	return nil
}

func (d *volatileDevice) Crash() {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.data, d.durable)
}

// runUntilCrash runs a Checker against dev for d, pauses it, crashes dev
// and verifies.
func runUntilCrash(t *testing.T, dev *volatileDevice, cfg CheckConfig, d time.Duration) *CheckResult {
	t.Helper()
	url, _ := serveCheck(t, dev)
	cfg.URLs = []string{url}
	k, err := StartChecker(context.Background(), cfg)
	require.NoError(t, err)
	defer k.Stop()
	time.Sleep(d)
	k.Pause()
	dev.Crash()
	res, err := k.Verify(context.Background(), 0)
	require.NoError(t, err)
	logCheck(t, res)
	return res
}

// FUA writes: a fraction of the writes carry NBD_CMD_FLAG_FUA (the server
// sees exactly those), and a power failure that drops every write not made
// durable loses answered writes (the check finds them) but no durable one.
func TestCheckerFUAWritesSurvivePowerFailure(t *testing.T) {
	dev := newVolatileDevice(checkTestBlocks * CheckBlockSize)
	cfg := checkTestConfig(0)
	cfg.FUA = 0.25
	res := runUntilCrash(t, dev, cfg, 300*time.Millisecond)
	require.Positive(t, res.FUAWrites)
	require.Equal(t, dev.fuaWrites.Load(), res.FUAWrites, "the server saw FUA on exactly the FUA writes")
	require.InDelta(t, 0.25, float64(res.FUAWrites)/float64(res.Answered), 0.05)
	require.Positive(t, res.Durable)
	require.Positive(t, res.Lost, "the crash dropped answered volatile writes")
	require.Zero(t, res.LostDurable, "no FUA write was lost")
	for _, f := range res.Failures {
		require.False(t, f.DurableLost, f.String())
	}
}

// FLUSH: a write answered before an answered FLUSH is durable; a device
// that only pretends to persist FUA writes loses durable writes, and the
// check says so.
func TestCheckerDurableLostIsCaught(t *testing.T) {
	cfg := checkTestConfig(0)
	cfg.FlushEvery = 4
	res := runUntilCrash(t, newVolatileDevice(checkTestBlocks*CheckBlockSize), cfg, 300*time.Millisecond)
	require.Positive(t, res.Flushes)
	require.Positive(t, res.Durable)
	require.Zero(t, res.LostDurable, "every flushed write survived")

	liar := newVolatileDevice(checkTestBlocks * CheckBlockSize)
	liar.lieFUA = true
	cfg = checkTestConfig(0)
	cfg.FUA = 1
	res = runUntilCrash(t, liar, cfg, 300*time.Millisecond)
	require.Positive(t, res.LostDurable)
	require.Equal(t, res.Lost, res.LostDurable, "every write was FUA")
	require.True(t, res.Failures[0].DurableLost)
	require.Contains(t, res.Failures[0].Detail, "with FUA (durable)")
	require.Contains(t, res.Err().Error(), "lost writes")
	_, err := StartChecker(context.Background(), CheckConfig{URLs: []string{"x:1"}, Workers: 1, Blocks: 8, FUA: 1.5})
	require.ErrorIs(t, err, ErrConfig)
}

// SetVolatile: while set, no FUA and no FLUSH reaches the export, so a
// power failure then drops answered writes; the check reports them as
// lost, none of them durable.
func TestCheckerVolatileWindow(t *testing.T) {
	dev := newVolatileDevice(checkTestBlocks * CheckBlockSize)
	url, _ := serveCheck(t, dev)
	cfg := checkTestConfig(0, url)
	cfg.FUA, cfg.FlushEvery = 0.5, 2
	k, err := StartChecker(context.Background(), cfg)
	require.NoError(t, err)
	defer k.Stop()
	time.Sleep(100 * time.Millisecond)
	k.Pause()
	fua := dev.fuaWrites.Load()
	require.Positive(t, fua)
	k.SetVolatile(true)
	k.Resume()
	time.Sleep(200 * time.Millisecond)
	k.Pause()
	require.Equal(t, fua, dev.fuaWrites.Load(), "no FUA while volatile")
	dev.Crash()
	res, err := k.Verify(context.Background(), 0)
	require.NoError(t, err)
	logCheck(t, res)
	require.Positive(t, res.Lost, "the writes of the window were volatile")
	require.Zero(t, res.LostDurable)
}
