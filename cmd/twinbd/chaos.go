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

// newChaosCmd is `twinbd chaos`: the randomized fault-injection harness
// (docs/chaos.md).
func newChaosCmd() *cobra.Command {
	cfg := chaos.Config{Duration: 2 * time.Minute, Protocol: "C", FUA: 0.1}
	var asJSON bool
	var kinds, size string
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
write is answered. A schedule of faults drawn from --seed is injected one at a time,
each held for a random time and then healed: kill -9 of a node (restarted:
daemon + up) or of the witness (restarted), SIGSTOP/SIGCONT of a node,
partitions of a link in one direction or both (the peer link whole, or
only its data or its meta connection), delay and loss on a link,
a planned switchover under load, and a stalled replication stream followed
by kill -9 of the Primary.

After every fault, once the pair is connected, in sync and has one Primary,
the load pauses and the harness checks: every acknowledged write is there
(read back through the Primary), no old Primary answered a write issued
after the new one answered (two writers), both backing files hold the same
data, no node that was not UpToDate promoted itself while its peer was
dead, and no daemon exited on its own. It prints one line per fault and a
summary; the run stops at the first failure (--keep-going: runs on).

Exit status 0 only when every property held. The run directory (resource
files, backing files, daemon and witness logs) is removed after a passing
run in a temporary directory and kept, with its path printed, otherwise.`,
		Example: `  twinbd chaos                          # 2 minutes of faults, a fresh seed
  twinbd chaos --seed 42 --faults 8     # replay seed 42's first 8 faults
  twinbd chaos --duration 20m --json    # a soak run (make soak)
  twinbd chaos --kinds kill-node,switchover --protocol A   # see it catch protocol A losing writes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if cfg.Kinds, err = chaos.ParseKinds(kinds); err != nil {
				return err
			}
			if cfg.Size, err = bench.ParseSize(size); err != nil {
				return err
			}
			if cfg.FUA == 0 {
				cfg.FUA = -1 // none (chaos.Config's 0 is the default)
			}
			if cfg.Readers == 0 {
				cfg.Readers = -1
			}
			if cfg.Binary == "" {
				if cfg.Binary, err = os.Executable(); err != nil {
					return err
				}
			}
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
	f := cmd.Flags()
	f.Uint64Var(&cfg.Seed, "seed", 0, "schedule and load seed (0: pick one; printed)")
	f.DurationVar(&cfg.Duration, "duration", cfg.Duration, "no new fault starts after this long (0: only --faults)")
	f.IntVar(&cfg.Faults, "faults", 0, "stop after N faults (0: only --duration)")
	f.StringVar(&kinds, "kinds", "all", "comma-separated fault kinds to draw from: "+fmt.Sprint(chaos.AllKinds))
	f.StringVar(&cfg.Protocol, "protocol", cfg.Protocol, "replication protocol (A, B or C)")
	f.StringVar(&cfg.Dir, "dir", "", "run directory (kept; default: a temporary one, removed when the run passes)")
	f.StringVar(&size, "size", "64M", "size of each backing file")
	f.IntVar(&cfg.Workers, "workers", 4, "writers of the load, one write in flight each")
	f.Int64Var(&cfg.Blocks, "blocks", 4096, "working set of the load in 4 KiB blocks")
	f.IntVar(&cfg.FlushEvery, "flush-every", 16, "FLUSH after every N answered writes of each worker")
	f.Float64Var(&cfg.FUA, "fua", cfg.FUA, "fraction of the load's writes sent with FUA (0..1)")
	f.IntVar(&cfg.Readers, "readers", 2, "readers that read blocks during the load and check each one (no stale read, reads never go backwards)")
	f.DurationVar(&cfg.SettleTimeout, "settle-timeout", 90*time.Second, "how long a healed pair may take to be connected, in sync, with one Primary")
	f.BoolVar(&cfg.KeepGoing, "keep-going", false, "go on after a failed check")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON on stdout (the fault lines go to stderr)")
	f.StringVar(&cfg.Binary, "bin", "", "twinbd binary for the daemons (default: this one)")
	return cmd
}
