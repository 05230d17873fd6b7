package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/failover"
)

func newWitnessCmd(g *globalOpts) *cobra.Command {
	var listen, state, logLevel string
	cmd := &cobra.Command{
		Use:   "witness --listen ADDR",
		Short: "Run a data-less witness (tiebreaker) for the resources of the config",
		Long: `Run a data-less witness in the foreground: the third vote that gives a
two-node resource a majority (like Galera's garbd or DRBD's diskless
tiebreaker). Every resource of the config (--config) that names a witness is
served; nodes authenticate with the resource's shared-secret.

The witness holds the primary lease (which node may answer I/O) and records
nodes Outdated when their peer wrote on without them, so a later automatic
promotion never picks stale data. With --state FILE the Outdated records
survive a restart; without it a restarted witness grants no promotion until
every node of a resource has reported to it again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			if listen == "" {
				return fmt.Errorf("witness needs --listen ADDR (the `witness` address the resource file names)")
			}
			cfg, err := config.Load(g.config)
			if err != nil {
				return err
			}
			res := map[string]failover.WitnessResource{}
			for _, r := range cfg.Resources {
				if r.Witness == "" {
					continue
				}
				wr := failover.WitnessResource{Secret: r.Net.SharedSecret}
				for _, h := range r.Hosts {
					wr.Nodes = append(wr.Nodes, h.NodeID)
				}
				res[r.Name] = wr
			}
			if len(res) == 0 {
				return fmt.Errorf("witness: no resource in %s names a witness (add `witness %s;` at resource level)", g.config, listen)
			}
			w, err := failover.NewWitness(failover.WitnessOptions{Resources: res, StateFile: state, Logger: log})
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("witness: %w", err)
			}
			names := make([]string, 0, len(res))
			for n := range res {
				names = append(names, n)
			}
			log.Info("witness serving", "listen", ln.Addr().String(), "resources", names, "state", state)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return w.Serve(ctx, ln)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "address to listen on (IP:PORT)")
	cmd.Flags().StringVar(&state, "state", "", "file that keeps Outdated records across restarts")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
