package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/twinbd/twinbd/nbd"
)

// Snapshot is the live view handed to the progress callback (once a second
// by default).
type Snapshot struct {
	Elapsed time.Duration // since the start, ramp included
	Ramping bool          // still in the unmeasured warm-up
	Ops     int64         // completed requests since the start
	Bytes   int64
	Errors  int64
	IOPS    float64 // over the last interval
	MiBps   float64 // over the last interval
}

func (s Snapshot) String() string {
	ramp := ""
	if s.Ramping {
		ramp = " (ramp)"
	}
	return fmt.Sprintf("%5.0fs%s  IOPS %9.0f  MiB/s %8.1f  errors %d",
		s.Elapsed.Seconds(), ramp, s.IOPS, s.MiBps, s.Errors)
}

// Result is what one run measured. Counts and latencies cover only the
// measured window (after the ramp, requests completed by the deadline).
type Result struct {
	Target     string `json:"target"`
	Mode       Mode   `json:"rw"`
	BlockSize  int    `json:"bs"`
	IODepth    int    `json:"iodepth"`
	Conns      int    `json:"conns"`
	FUA        bool   `json:"fua"`
	FlushEvery int    `json:"flush_every"`
	RWMixRead  int    `json:"rwmix_read"`
	ExportSize int64  `json:"export_size"`
	Offset     int64  `json:"offset"`
	Size       int64  `json:"size"` // working set actually used
	Seed       uint64 `json:"seed"`

	Duration time.Duration `json:"duration_ns"` // measured window
	Ramp     time.Duration `json:"ramp_ns"`

	Ops        int64   `json:"ops"` // reads + writes (flushes apart)
	ReadOps    int64   `json:"read_ops"`
	WriteOps   int64   `json:"write_ops"`
	Flushes    int64   `json:"flushes"`
	ReadBytes  int64   `json:"read_bytes"`
	WriteBytes int64   `json:"write_bytes"`
	IOPS       float64 `json:"iops"`
	MiBps      float64 `json:"mib_per_s"`

	Latency      LatencySummary  `json:"latency"` // reads and writes
	ReadLatency  *LatencySummary `json:"read_latency,omitempty"`
	WriteLatency *LatencySummary `json:"write_latency,omitempty"`
	FlushLatency *LatencySummary `json:"flush_latency,omitempty"`

	// Errors counts NBD error replies (the run goes on after one).
	Errors     int64  `json:"errors"`
	FirstError string `json:"first_error,omitempty"`

	Verify *VerifyResult `json:"verify,omitempty"`

	// Quantiles is the latency distribution of reads and writes (for
	// --plot): the latency at each quantile in QuantilePoints.
	Quantiles []QuantilePoint `json:"quantiles,omitempty"`
}

// QuantilePoint is one point of a latency distribution.
type QuantilePoint struct {
	Q       float64       `json:"q"`
	Latency time.Duration `json:"latency_ns"`
}

// quantileGrid is where the distribution is sampled: evenly to 0.9, then
// ever finer into the tail.
func quantileGrid() []float64 {
	var qs []float64
	for i := 0; i <= 90; i++ {
		qs = append(qs, float64(i)/100)
	}
	return append(qs, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1)
}

// liveCounters are what the progress line reads while workers run; padded
// so workers do not share cache lines.
type liveCounters struct {
	ops, bytes, errors atomic.Int64
	_                  [40]byte
}

// run is the state shared by the workers of one Run.
type run struct {
	cfg          Config
	clients      []*nbd.Client
	nblocks      int64 // blocks in the working set
	workers      int
	readPct      int
	writeFlags   uint16
	measureStart time.Time
	deadline     time.Time
	cancel       context.CancelFunc

	cursor  atomic.Int64  // sequential modes without --verify
	seq     atomic.Uint64 // --verify write sequence
	runID   uint64
	lastSeq []uint64 // --verify: last acknowledged seq per block; block i is written only by worker i % workers

	live []liveCounters

	mu    sync.Mutex // guards fatal
	fatal error      // a transport error: ends the run
}

// worker is one request stream: a goroutine with one request in flight.
type worker struct {
	r      *run
	id     int
	c      *nbd.Client
	rng    *rand.Rand
	digest xxhash.Digest

	hRead, hWrite, hFlush Histogram
	readBytes, writeBytes int64
	errors                int64
	firstErr              error
	verify                VerifyResult
	k                     int64 // sequential --verify: this worker's next block
}

// Run benchmarks the export cfg names until cfg.Ramp+cfg.Duration has
// passed or ctx is done, calling progress (if not nil) every
// cfg.ProgressInterval (1 s) from another goroutine. A transport failure ends the run: Run returns the
// partial Result with the error. NBD error replies are counted in Result
// and the run goes on.
func Run(ctx context.Context, cfg Config, progress func(Snapshot)) (Result, error) {
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64() | 1
	}
	if cfg.Target == "" {
		cfg.Target = cfg.Network + "://" + cfg.Addr + "/" + cfg.ExportName
	}

	clients := make([]*nbd.Client, 0, cfg.Conns)
	defer func() {
		for _, c := range clients {
			_ = c.Close()
		}
	}()
	for range cfg.Conns {
		c, err := nbd.Dial(ctx, cfg.Network, cfg.Addr, nbd.ClientOptions{ExportName: cfg.ExportName, Timeout: cfg.DialTimeout})
		if err != nil {
			return Result{}, fmt.Errorf("bench: %w", err)
		}
		clients = append(clients, c)
	}

	r := &run{cfg: cfg, clients: clients, workers: cfg.Conns * cfg.IODepth, readPct: cfg.Mode.readPercent(cfg.RWMixRead)}
	if err := r.plan(clients[0]); err != nil {
		return Result{}, err
	}
	r.live = make([]liveCounters, r.workers)
	workers := make([]*worker, r.workers)
	for i := range workers {
		workers[i] = &worker{r: r, id: i, c: clients[i/cfg.IODepth], rng: rand.New(rand.NewPCG(cfg.Seed, uint64(i)))}
	}

	start := time.Now()
	r.measureStart = start.Add(cfg.Ramp)
	r.deadline = r.measureStart.Add(cfg.Duration)
	r.runID = cfg.Seed ^ uint64(start.UnixNano())*0x9e3779b97f4a7c15
	rctx, cancel := context.WithDeadline(ctx, r.deadline)
	defer cancel()
	r.cancel = cancel

	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() { w.loop(rctx) })
	}
	stopProgress := make(chan struct{})
	var pwg sync.WaitGroup
	if progress != nil {
		pwg.Go(func() { r.report(start, stopProgress, progress) })
	}
	wg.Wait()
	close(stopProgress)
	pwg.Wait()

	end := time.Now()
	if end.After(r.deadline) {
		end = r.deadline
	}
	res := r.result(workers, max(end.Sub(r.measureStart), 0))

	if cfg.Verify && r.fatal == nil && ctx.Err() == nil {
		res.Verify = r.readBack(ctx, workers)
	} else if cfg.Verify {
		res.Verify = mergeVerify(workers)
	}
	if r.fatal != nil {
		return res, fmt.Errorf("bench: %w", r.fatal)
	}
	return res, nil
}

// plan checks the export against the config and sizes the working set.
func (r *run) plan(c *nbd.Client) error {
	cfg := &r.cfg
	bs := int64(cfg.BlockSize)
	if r.readPct < 100 && c.Flags()&nbd.TFlagReadOnly != 0 {
		return fmt.Errorf("%w: export is read-only and --rw %s writes", ErrConfig, cfg.Mode)
	}
	if cfg.FUA {
		if c.Flags()&nbd.TFlagSendFUA == 0 {
			return fmt.Errorf("%w: --fua: the server does not support FUA", ErrConfig)
		}
		r.writeFlags |= nbd.CmdFlagFUA
	}
	if cfg.FlushEvery > 0 && c.Flags()&nbd.TFlagSendFlush == 0 {
		return fmt.Errorf("%w: --flush-every: the server does not support FLUSH", ErrConfig)
	}
	if _, _, maxb := c.BlockSize(); int64(maxb) < bs {
		// The client splits such requests; say so rather than mislead.
		return fmt.Errorf("%w: --bs %d exceeds the server's maximum request of %d", ErrConfig, bs, maxb)
	}
	size := c.Size()
	if cfg.Offset >= size {
		return fmt.Errorf("%w: --offset %d is past the end of the export (%d bytes)", ErrConfig, cfg.Offset, size)
	}
	span := cfg.Size
	if span == 0 {
		span = size - cfg.Offset
	}
	if cfg.Offset+span > size {
		return fmt.Errorf("%w: --offset %d + --size %d exceeds the export (%d bytes)", ErrConfig, cfg.Offset, span, size)
	}
	r.nblocks = span / bs
	if r.nblocks == 0 {
		return fmt.Errorf("%w: working set of %d bytes holds no %d-byte block", ErrConfig, span, bs)
	}
	cfg.Size = r.nblocks * bs
	if cfg.Verify {
		if r.nblocks < int64(r.workers) {
			return fmt.Errorf("%w: --verify needs at least one block per worker (%d blocks, %d workers)", ErrConfig, r.nblocks, r.workers)
		}
		if r.nblocks > maxVerifyBlocks {
			return fmt.Errorf("%w: --verify tracks at most %d blocks; working set has %d (use --size)", ErrConfig, maxVerifyBlocks, r.nblocks)
		}
		r.lastSeq = make([]uint64, r.nblocks)
	}
	return nil
}

func (r *run) setFatal(err error) {
	r.mu.Lock()
	if r.fatal == nil {
		r.fatal = err
	}
	r.mu.Unlock()
	r.cancel()
}

// nextBlock picks the next block index. With --verify each worker keeps to
// its own blocks (i ≡ id mod workers), so every block has one writer and
// its expected content is known.
func (w *worker) nextBlock() int64 {
	r := w.r
	if r.cfg.Verify {
		per := r.nblocks / int64(r.workers)
		var k int64
		if r.cfg.Mode.random() {
			k = w.rng.Int64N(per)
		} else {
			k = w.k % per
			w.k++
		}
		return int64(w.id) + int64(r.workers)*k
	}
	if r.cfg.Mode.random() {
		return w.rng.Int64N(r.nblocks)
	}
	return (r.cursor.Add(1) - 1) % r.nblocks
}

func (w *worker) loop(ctx context.Context) {
	r := w.r
	bs := r.cfg.BlockSize
	wbuf := make([]byte, bs)
	rbuf := make([]byte, bs)
	for i := 0; i+8 <= bs; i += 8 {
		// Incompressible data: a server that compresses or dedups must
		// not look faster than it is.
		v := w.rng.Uint64()
		for j := range 8 {
			wbuf[i+j] = byte(v >> (8 * j))
		}
	}
	live := &r.live[w.id]
	sinceFlush := 0
	for ctx.Err() == nil {
		read := r.readPct == 100 || (r.readPct > 0 && w.rng.IntN(100) < r.readPct)
		idx := w.nextBlock()
		off := r.cfg.Offset + idx*int64(bs)
		var seq uint64
		if !read && r.cfg.Verify {
			seq = r.seq.Add(1)
			stampBlock(wbuf, r.runID, off, seq, &w.digest)
		}

		st := time.Now()
		var err error
		if read {
			_, err = w.c.ReadAt(rbuf, off)
		} else {
			err = w.c.WriteAtFlags(wbuf, off, r.writeFlags)
		}
		en := time.Now()
		measured := !st.Before(r.measureStart) && !en.After(r.deadline)

		if err != nil {
			var nerr *nbd.Error
			if !errors.As(err, &nerr) {
				r.setFatal(err)
				return
			}
			live.errors.Add(1)
			w.errors++
			if w.firstErr == nil {
				w.firstErr = err
			}
			if !read && r.cfg.Verify {
				r.lastSeq[idx] = seqUnknown
			}
			continue
		}
		live.ops.Add(1)
		live.bytes.Add(int64(bs))
		if r.cfg.Verify {
			if read {
				w.check(rbuf, idx, off)
			} else {
				r.lastSeq[idx] = seq
			}
		}
		if measured {
			if read {
				w.hRead.Record(en.Sub(st))
				w.readBytes += int64(bs)
			} else {
				w.hWrite.Record(en.Sub(st))
				w.writeBytes += int64(bs)
			}
		}
		if !read && r.cfg.FlushEvery > 0 {
			sinceFlush++
			if sinceFlush >= r.cfg.FlushEvery {
				sinceFlush = 0
				st := time.Now()
				if err := w.c.Flush(); err != nil {
					var nerr *nbd.Error
					if !errors.As(err, &nerr) {
						r.setFatal(err)
						return
					}
					w.errors++
					live.errors.Add(1)
					if w.firstErr == nil {
						w.firstErr = err
					}
					continue
				}
				if en := time.Now(); !st.Before(r.measureStart) && !en.After(r.deadline) {
					w.hFlush.Record(en.Sub(st))
				}
			}
		}
	}
}

// check verifies a block read against the last write of this run (blocks
// not written in this run hold unknown data and are skipped).
func (w *worker) check(b []byte, idx, off int64) {
	seq := w.r.lastSeq[idx]
	if seq == 0 || seq == seqUnknown {
		return
	}
	w.verify.Blocks++
	if err := checkBlock(b, w.r.runID, off, seq, &w.digest); err != nil {
		w.verify.Errors++
		if len(w.verify.Failures) < maxVerifyFailures {
			w.verify.Failures = append(w.verify.Failures, err.Error())
		}
	}
}

// readBack reads every block written in the run and checks it, each worker
// its own blocks, in parallel.
func (r *run) readBack(ctx context.Context, workers []*worker) *VerifyResult {
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() {
			buf := make([]byte, r.cfg.BlockSize)
			for idx := int64(w.id); idx < r.nblocks && ctx.Err() == nil; idx += int64(r.workers) {
				if s := r.lastSeq[idx]; s == 0 || s == seqUnknown {
					continue
				}
				off := r.cfg.Offset + idx*int64(r.cfg.BlockSize)
				w.verify.ReadBack++
				if _, err := w.c.ReadAt(buf, off); err != nil {
					w.verify.Blocks++
					w.verify.Errors++
					if len(w.verify.Failures) < maxVerifyFailures {
						w.verify.Failures = append(w.verify.Failures, fmt.Sprintf("block at %d: read back: %v", off, err))
					}
					var nerr *nbd.Error
					if !errors.As(err, &nerr) {
						r.setFatal(err)
						return
					}
					continue
				}
				w.check(buf, idx, off)
			}
		})
	}
	wg.Wait()
	return mergeVerify(workers)
}

func mergeVerify(workers []*worker) *VerifyResult {
	v := &VerifyResult{}
	for _, w := range workers {
		v.Blocks += w.verify.Blocks
		v.ReadBack += w.verify.ReadBack
		v.Errors += w.verify.Errors
		for _, f := range w.verify.Failures {
			if len(v.Failures) < maxVerifyFailures {
				v.Failures = append(v.Failures, f)
			}
		}
	}
	return v
}

// report calls progress once a second until stop is closed.
func (r *run) report(start time.Time, stop <-chan struct{}, progress func(Snapshot)) {
	every := r.cfg.ProgressInterval
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var lastOps, lastBytes int64
	last := start
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			var s Snapshot
			for i := range r.live {
				s.Ops += r.live[i].ops.Load()
				s.Bytes += r.live[i].bytes.Load()
				s.Errors += r.live[i].errors.Load()
			}
			s.Elapsed = now.Sub(start)
			s.Ramping = now.Before(r.measureStart)
			if dt := now.Sub(last).Seconds(); dt > 0 {
				s.IOPS = float64(s.Ops-lastOps) / dt
				s.MiBps = float64(s.Bytes-lastBytes) / dt / (1 << 20)
			}
			lastOps, lastBytes, last = s.Ops, s.Bytes, now
			progress(s)
		}
	}
}

func (r *run) result(workers []*worker, elapsed time.Duration) Result {
	cfg := r.cfg
	res := Result{
		Target: cfg.Target, Mode: cfg.Mode, BlockSize: cfg.BlockSize, IODepth: cfg.IODepth,
		Conns: cfg.Conns, FUA: cfg.FUA, FlushEvery: cfg.FlushEvery, ExportSize: r.clients[0].Size(),
		Offset: cfg.Offset, Size: cfg.Size, Seed: cfg.Seed, Duration: elapsed, Ramp: cfg.Ramp,
	}
	if cfg.Mode == RandRW {
		res.RWMixRead = cfg.RWMixRead
	}
	var all, rd, wr, fl Histogram
	for _, w := range workers {
		rd.Merge(&w.hRead)
		wr.Merge(&w.hWrite)
		fl.Merge(&w.hFlush)
		res.ReadBytes += w.readBytes
		res.WriteBytes += w.writeBytes
		res.Errors += w.errors
		if w.firstErr != nil && res.FirstError == "" {
			res.FirstError = w.firstErr.Error()
		}
	}
	all.Merge(&rd)
	all.Merge(&wr)
	res.ReadOps, res.WriteOps, res.Flushes = rd.Count(), wr.Count(), fl.Count()
	res.Ops = res.ReadOps + res.WriteOps
	res.Latency = all.Summary()
	if all.Count() > 0 {
		for _, q := range quantileGrid() {
			res.Quantiles = append(res.Quantiles, QuantilePoint{Q: q, Latency: all.Quantile(q)})
		}
	}
	if rd.Count() > 0 && wr.Count() > 0 {
		rs, ws := rd.Summary(), wr.Summary()
		res.ReadLatency, res.WriteLatency = &rs, &ws
	}
	if fl.Count() > 0 {
		fs := fl.Summary()
		res.FlushLatency = &fs
	}
	if s := elapsed.Seconds(); s > 0 {
		res.IOPS = float64(res.Ops) / s
		res.MiBps = float64(res.ReadBytes+res.WriteBytes) / s / (1 << 20)
	}
	return res
}
