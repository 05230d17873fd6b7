package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/twinbd/twinbd/bench"
	"github.com/twinbd/twinbd/chaos"
)

// chaosOpts are the flags `twinbd chaos` and `twinbd chaos soak` share:
// what one run (scenario) is.
type chaosOpts struct {
	cfg         chaos.Config
	kinds, size string
}

func (o *chaosOpts) flags(cmd *cobra.Command) {
	f, cfg := cmd.Flags(), &o.cfg
	f.Uint64Var(&cfg.Seed, "seed", 0, "schedule and load seed (0: pick one; printed)")
	f.StringVar(&o.kinds, "kinds", "all", "comma-separated fault kinds to draw from: "+fmt.Sprint(chaos.AllKinds))
	f.StringVar(&cfg.Protocol, "protocol", "C", "replication protocol (A, B or C)")
	f.StringVar(&o.size, "size", "64M", "size of each backing file")
	f.IntVar(&cfg.Workers, "workers", 4, "writers of the load, one write in flight each")
	f.Int64Var(&cfg.Blocks, "blocks", 4096, "working set of the load in 4 KiB blocks")
	f.IntVar(&cfg.FlushEvery, "flush-every", 16, "FLUSH after every N answered writes of each worker")
	f.Float64Var(&cfg.FUA, "fua", 0.1, "fraction of the load's writes sent with FUA (0..1)")
	f.IntVar(&cfg.Readers, "readers", 2, "readers that read blocks during the load and check each one (no stale read, reads never go backwards)")
	f.DurationVar(&cfg.SettleTimeout, "settle-timeout", 90*time.Second, "how long a healed pair may take to be connected, in sync, with one Primary")
	f.BoolVar(&cfg.KeepGoing, "keep-going", false, "go on after a failed check")
	f.StringVar(&cfg.Binary, "bin", "", "twinbd binary for the daemons (default: this one)")
}

// finish turns the flags into a chaos.Config.
func (o *chaosOpts) finish() (chaos.Config, error) {
	cfg := o.cfg
	var err error
	if cfg.Kinds, err = chaos.ParseKinds(o.kinds); err != nil {
		return cfg, err
	}
	if cfg.Size, err = bench.ParseSize(o.size); err != nil {
		return cfg, err
	}
	if cfg.FUA == 0 {
		cfg.FUA = -1 // none (chaos.Config's 0 is the default)
	}
	if cfg.Readers == 0 {
		cfg.Readers = -1
	}
	if cfg.Binary == "" {
		if cfg.Binary, err = os.Executable(); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// newChaosCmd is `twinbd chaos`: the randomized fault-injection harness
// (docs/chaos.md).
func newChaosCmd() *cobra.Command {
	var o chaosOpts
	var asJSON bool
	var duration time.Duration
	var faults int
	var dir string
	cmd := &cobra.Command{
		Use:   "chaos [flags]",
		Short: "Inject random faults into a local pair and check no acknowledged write is ever lost",
		Long: `Run a pair (alpha, beta) and a witness on loopback from this binary, with
file-backed disks in a run directory and every link (the peer link, each
node's witness link) through an in-process fault proxy. A write load of
self-identifying blocks (as bench check: FLUSH every --flush-every writes,
a --fua fraction of the writes with FUA) runs all the time and follows the
Primary; --readers read blocks meanwhile and check each one at once: no
read returns older than a write answered before it was sent, and no read
goes back from a version an earlier read returned once that version's
write is answered. A schedule of faults drawn from --seed is injected one
at a time, each held for a random time and then healed: kill -9 of a node
(restarted: daemon + up) or of the witness (restarted), SIGSTOP/SIGCONT of
a node, partitions of a link in one direction or both (the peer link
whole, or only its data or its meta connection), delay and loss on a link,
a planned switchover under load, a stalled replication stream followed
by kill -9 of the Primary, a node's disk failing writes (then replaced and
attached), a node losing power (its disk drops every unflushed write;
the daemons run with --fault-injection for these two), and kill -9 of the
Primary while the Secondary is stale: in the middle of its resync
(kill-during-resync) or once the witness records it Outdated
(kill-after-outdate).

After every fault, once the pair is connected, in sync and has one Primary,
the load pauses and the harness checks: every acknowledged write is there
(read back through the Primary), no read during the load went backwards,
no old Primary answered a write issued after the new one answered (two
writers), both backing files hold the same data, no stale node (Outdated,
Inconsistent or witness-outdated) promoted itself while its peer was
dead, and no daemon exited on
its own. It prints one line per fault and a summary; the run stops at the
first failure (--keep-going: runs on).

Exit status 0 only when every property held. The run directory (resource
files, backing files, daemon and witness logs) is removed after a passing
run in a temporary directory and kept, with its path printed, otherwise.

'twinbd chaos soak' runs many such runs, each with its own seed, and
writes a report.`,
		Example: `  twinbd chaos                          # 2 minutes of faults, a fresh seed
  twinbd chaos --seed 42 --faults 8     # replay seed 42's first 8 faults
  twinbd chaos --kinds partition-meta --json > report.json
  twinbd chaos --kinds stall-kill --protocol A   # see it catch protocol A losing writes
  twinbd chaos soak --duration 1h       # independent scenarios and a report (make soak)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := o.finish()
			if err != nil {
				return err
			}
			cfg.Duration, cfg.Faults, cfg.Dir = duration, faults, dir
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var out io.Writer = cmd.OutOrStdout()
			if asJSON {
				out = cmd.ErrOrStderr()
			}
			cfg.Out = out
			rep, err := chaos.Run(ctx, cfg)
			if rep != nil && asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if jerr := enc.Encode(rep); jerr != nil {
					return jerr
				}
			}
			return err
		},
	}
	o.flags(cmd)
	f := cmd.Flags()
	f.DurationVar(&duration, "duration", 2*time.Minute, "no new fault starts after this long (0: only --faults)")
	f.IntVar(&faults, "faults", 0, "stop after N faults (0: only --duration)")
	f.StringVar(&dir, "dir", "", "run directory (kept; default: a temporary one, removed when the run passes)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON on stdout (the fault lines go to stderr)")
	cmd.AddCommand(newChaosSoakCmd())
	return cmd
}

// newChaosSoakCmd is `twinbd chaos soak` (make soak).
func newChaosSoakCmd() *cobra.Command {
	var o chaosOpts
	var scfg chaos.SoakConfig
	cmd := &cobra.Command{
		Use:   "soak [flags]",
		Short: "Run independent chaos scenarios for a long time and write a report",
		Long: `Run chaos scenarios one after the other until --duration is spent (the
scenario running then finishes): each is a fresh pair and witness with a
schedule of --faults faults drawn from its own seed, derived from --seed
(printed), so a failing scenario replays on its own with
'twinbd chaos --seed N --faults F'. Every other flag is the scenario's,
as for 'twinbd chaos'.

A passing scenario's run directory is removed; a failing one's (logs,
resource files, both backing files) is kept under --dir, and the soak goes
on with the next scenario. At the end (also after Ctrl-C) the report is
written as text and JSON (--report BASE: BASE.txt and BASE.json; default
DIR/soak-report): scenarios run, passed and failed, faults injected by
kind, properties checked and how often, the load's totals, and each
failure with its seed, replay command, problems and kept directory.

Exit status 0 only when every scenario passed.`,
		Example: `  twinbd chaos soak                              # an hour, a fresh seed
  twinbd chaos soak --duration 10m --seed 7 --dir /var/tmp/soak
  twinbd chaos soak --kinds partition-data,partition-meta,kill-node --faults 3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := o.finish()
			if err != nil {
				return err
			}
			cfg.Faults = scfg.Scenario.Faults
			scfg.Scenario = cfg
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			scfg.Out = cmd.OutOrStdout()
			_, err = chaos.Soak(ctx, scfg)
			return err
		},
	}
	o.flags(cmd)
	f := cmd.Flags()
	f.DurationVar(&scfg.Duration, "duration", time.Hour, "no scenario starts after this long")
	f.IntVar(&scfg.Scenario.Faults, "faults", 5, "faults per scenario")
	f.StringVar(&scfg.Dir, "dir", "", "soak directory: the report, failed scenarios' run directories (default: a new temporary one, kept)")
	f.StringVar(&scfg.Report, "report", "", "write the report to BASE.txt and BASE.json (default: DIR/soak-report)")
	return cmd
}
