package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/twinbd/twinbd/bench"
)

// newBenchCheckCmd is `twinbd bench check`: writes through a failover, then
// proves no answered write was lost.
func newBenchCheckCmd() *cobra.Command {
	cfg := bench.CheckDefaults()
	var asJSON bool
	var plotFile string
	cmd := &cobra.Command{
		Use:   "check [flags] URL [URL...]",
		Short: "Write through a failover and prove no acknowledged write was lost",
		Long: `Write self-identifying 4 KiB blocks to the first --blocks blocks of an
export for --duration while following the Primary across a failover, then
read every block back and check that every write the export answered is
there. The previous content of those blocks is overwritten.

URLs are the candidate exports (nbd://HOST[:PORT][/EXPORT], HOST:PORT or
nbd+unix:///EXPORT?socket=PATH), typically the export of each node. Each
of --workers workers owns the blocks b with b mod workers = its number and
keeps one write in flight; every --flush-every answered writes (0: never)
it sends a FLUSH, and a --fua fraction of its writes carry FUA. A block holds its offset, a run-wide sequence number,
random fill and an xxhash64 of the rest. When a connection or a request
fails, the worker closes its connection and tries the URLs in turn (round
robin, 20 ms apart) until one accepts a write: that is how it follows the
Primary. It never gives up before --duration ends. Ctrl-C ends the write
phase early and still checks; Ctrl-C during the read-back ends it (and
fails the check), and a second Ctrl-C ends the command at once.

Then every block is read from the URL that answered last (the others are
tried if it fails) and must hold the last answered write to it or a later
one that was issued but not answered; a block no answered write reached
may also be all zeroes. A write answered with FUA, or answered before a
FLUSH that was answered on the same connection, is durable; each lost write
is also reported as durable or not (a power failure may drop only
non-durable ones). With --readers, readers read random runs of 8 blocks
during the write phase and check each block at once: it must not be older
than the last write answered before the read was sent (stale), must be a
valid block or zeroes (corrupt), and must not be older than what an
earlier read returned once that version's write is answered (backward; a
version whose write was never answered may vanish). The report gives, per URL, the writes and flushes
answered and the failures; the longest time no write was answered by
anyone (the client-visible failover time) and when it began; the blocks
read back; the lost writes and corrupt blocks (the first 10 described);
and the answers from the old Primary after the new one started: an answer
from any URL other than the one that answered first most recently, to a
write issued after that URL's first answer, means two exports accepted
writes at once. Answers to writes that were already in flight at the
switch are reported as late answers and do not fail the check. Fail over
in one direction per run: switching back to a URL that answered earlier
counts as the old Primary answering.

Exit status 0 when writes were answered, every block was read back,
nothing was lost or corrupt, no read during the load was bad and no old
Primary answered; 1 otherwise.`,
		Example: `  twinbd bench check --duration 30s nbd://node-a:10809/r0 nbd://node-b:10809/r0
  twinbd bench check --workers 16 --blocks 65536 --flush-every 32 --json node-a:10809 node-b:10809`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.URLs = args
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// The first signal ends the write phase (or the read-back);
			// restoring the default handling lets a second one end the
			// command.
			context.AfterFunc(ctx, stop)
			res, err := bench.RunCheck(ctx, cfg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				err = res.WriteJSON(out)
			} else {
				err = res.WriteText(out)
			}
			if err != nil {
				return err
			}
			if plotFile != "" {
				if err := bench.PlotCheck(res, "twinbd bench check: writes answered per export", plotFile); err != nil {
					return err
				}
			}
			return res.Err()
		},
	}
	f := cmd.Flags()
	f.DurationVar(&cfg.Duration, "duration", cfg.Duration, "write phase")
	f.IntVar(&cfg.Workers, "workers", cfg.Workers, "writers, one write in flight each")
	f.Int64Var(&cfg.Blocks, "blocks", cfg.Blocks, "working set: the first N 4 KiB blocks (overwritten)")
	f.IntVar(&cfg.FlushEvery, "flush-every", 0, "FLUSH after every N answered writes of each worker (0: never)")
	f.Float64Var(&cfg.FUA, "fua", 0, "fraction of the writes sent with FUA (0..1)")
	f.IntVar(&cfg.Readers, "readers", 0, "readers that read random blocks during the write phase and check each one at once")
	f.DurationVar(&cfg.ReadPause, "read-pause", 0, "each reader's pause between two reads")
	f.Uint64Var(&cfg.Seed, "seed", 0, "random seed (0: pick one; the result reports it)")
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	f.StringVar(&plotFile, "plot", "", "draw the failover timeline (writes answered per second by each export, the longest stall) into FILE.svg|png|pdf")
	f.DurationVar(&cfg.DialTimeout, "timeout", cfg.DialTimeout, "connect + handshake timeout")
	f.DurationVar(&cfg.RequestTimeout, "request-timeout", cfg.RequestTimeout, "abandon a request (and its connection) after this long (0: never)")
	f.DurationVar(&cfg.ReadTimeout, "read-timeout", cfg.ReadTimeout, "give up the read-back after this long without progress")
	return cmd
}
