package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/twinbd/twinbd/bench"
)

// benchOpts are the flags of `twinbd bench`.
type benchOpts struct {
	rw         string
	bs         string
	iodepth    int
	conns      int
	fua        bool
	flushEvery int
	rwmixRead  int
	size       string
	offset     string
	duration   time.Duration
	ramp       time.Duration
	seed       uint64
	json       bool
	plot       string
	noProgress bool
	progress   bool
	verify     bool
	timeout    time.Duration
}

func newBenchCmd() *cobra.Command {
	o := &benchOpts{}
	d := bench.Defaults()
	cmd := &cobra.Command{
		Use:   "bench [flags] nbd://HOST:PORT[/EXPORT] | HOST:PORT | nbd+unix:///EXPORT?socket=PATH",
		Short: "Benchmark an NBD export (IOPS, MiB/s, latency percentiles)",
		Long: `Drive a workload through NBD against any export (a twinbd Primary, nbdkit,
qemu-nbd, ...) and report IOPS, MiB/s and latency p50/p90/p99/p99.9/max.
iodepth is per connection; --verify writes self-identifying blocks and
checks them. Sizes take k/m/g/t suffixes (powers of 1024).`,
		Example: `  twinbd bench --rw randwrite --bs 4k --iodepth 32 --duration 10s nbd://127.0.0.1:10809/r0
  twinbd bench --rw randwrite --fua --iodepth 1 --json 127.0.0.1:10809
  twinbd bench --rw randrw --rwmix-read 70 --verify --size 256m nbd://node-a/r0`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := o.config(args[0])
			if err != nil {
				return err
			}
			return o.run(cmd, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.rw, "rw", string(d.Mode), "workload: randread|randwrite|randrw|read|write")
	f.StringVar(&o.bs, "bs", bench.FormatSize(int64(d.BlockSize)), "request size")
	f.IntVar(&o.iodepth, "iodepth", d.IODepth, "requests in flight per connection")
	f.IntVar(&o.conns, "conns", d.Conns, "NBD connections")
	f.BoolVar(&o.fua, "fua", false, "set FUA on every write")
	f.IntVar(&o.flushEvery, "flush-every", 0, "FLUSH after every N writes of each worker (0: never)")
	f.IntVar(&o.rwmixRead, "rwmix-read", d.RWMixRead, "percentage of reads in randrw")
	f.StringVar(&o.size, "size", "0", "working set from --offset (0: to the end of the export)")
	f.StringVar(&o.offset, "offset", "0", "start of the working set")
	f.DurationVar(&o.duration, "duration", d.Duration, "measured time")
	f.DurationVar(&o.ramp, "ramp", 0, "unmeasured warm-up before the measured time")
	f.Uint64Var(&o.seed, "seed", 0, "random seed (0: pick one; the result reports it)")
	f.BoolVar(&o.json, "json", false, "print the result as one JSON object")
	f.StringVar(&o.plot, "plot", "", "draw the latency distribution into FILE.svg|png|pdf (compare runs with `twinbd bench plot`)")
	f.BoolVar(&o.noProgress, "no-progress", false, "no progress line")
	f.BoolVar(&o.progress, "progress", false, "progress line even when stderr is not a terminal")
	f.BoolVar(&o.verify, "verify", false, "write self-identifying blocks, check reads, read everything back at the end")
	f.DurationVar(&o.timeout, "timeout", 10*time.Second, "connect + handshake timeout")
	cmd.MarkFlagsMutuallyExclusive("progress", "no-progress")
	cmd.AddCommand(newBenchCheckCmd(), newBenchPlotCmd())
	return cmd
}

// config turns the flags and the target argument into a bench.Config.
func (o *benchOpts) config(target string) (bench.Config, error) {
	cfg := bench.Defaults()
	network, addr, export, err := bench.ParseTarget(target)
	if err != nil {
		return cfg, err
	}
	bs, err := bench.ParseSize(o.bs)
	if err != nil {
		return cfg, fmt.Errorf("--bs: %w", err)
	}
	size, err := bench.ParseSize(o.size)
	if err != nil {
		return cfg, fmt.Errorf("--size: %w", err)
	}
	offset, err := bench.ParseSize(o.offset)
	if err != nil {
		return cfg, fmt.Errorf("--offset: %w", err)
	}
	cfg.Network, cfg.Addr, cfg.ExportName, cfg.Target = network, addr, export, target
	cfg.Mode = bench.Mode(o.rw)
	cfg.BlockSize = int(bs)
	cfg.IODepth = o.iodepth
	cfg.Conns = o.conns
	cfg.FUA = o.fua
	cfg.FlushEvery = o.flushEvery
	cfg.RWMixRead = o.rwmixRead
	cfg.Size = size
	cfg.Offset = offset
	cfg.Duration = o.duration
	cfg.Ramp = o.ramp
	cfg.Seed = o.seed
	cfg.Verify = o.verify
	cfg.DialTimeout = o.timeout
	return cfg, nil
}

func (o *benchOpts) run(cmd *cobra.Command, cfg bench.Config) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	stderr := cmd.ErrOrStderr()
	var progress func(bench.Snapshot)
	if o.progress || (!o.noProgress && isTerminal(stderr)) {
		progress = func(s bench.Snapshot) { fmt.Fprintf(stderr, "\r\x1b[K%s", s) }
	}
	res, runErr := bench.Run(ctx, cfg, progress)
	if progress != nil {
		fmt.Fprint(stderr, "\r\x1b[K")
	}
	if res.Mode == "" { // nothing ran
		return runErr
	}
	out := cmd.OutOrStdout()
	var err error
	if o.json {
		err = res.WriteJSON(out)
	} else {
		err = res.WriteText(out)
	}
	if runErr != nil {
		return runErr
	}
	if err != nil {
		return err
	}
	if o.plot != "" {
		if err := bench.PlotLatency([]bench.Labeled{{Label: res.Target, Result: &res}}, fmt.Sprintf("twinbd bench %s bs=%d iodepth=%d", res.Mode, res.BlockSize, res.IODepth), o.plot); err != nil {
			return err
		}
	}
	if res.Verify != nil && res.Verify.Errors > 0 {
		return fmt.Errorf("bench: verify failed: %d errors", res.Verify.Errors)
	}
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
