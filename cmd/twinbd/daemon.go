package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/twinbd/twinbd/daemon"
)

type daemonOpts struct {
	up       []string
	logLevel string
	metrics  string
	faults   bool
	stale    bool // --test-only-promote-stale
}

func newDaemonCmd(g *globalOpts) *cobra.Command {
	o := &daemonOpts{}
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run this node's daemon in the foreground",
		Long: `Run this node's daemon in the foreground. It serves the control socket
(RUN-DIR/NODE.sock, root-only) that the other verbs talk to, and on SIGTERM or
SIGINT brings every resource down cleanly: demote, drain, flush.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			if o.stale {
				log.Warn("--test-only-promote-stale: automatic promotion may promote stale data (invariant 6 broken on purpose; tests only)")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return daemon.New(daemon.Options{
				ConfigPath: g.config, Node: g.node, RunDir: g.runDir, Logger: log, Up: o.up, Metrics: o.metrics,
				FaultInjection: o.faults, TestOnlyPromoteStale: o.stale,
			}).Run(ctx)
		},
	}
	cmd.Flags().StringSliceVar(&o.up, "up", nil, "resources to bring up at start (or all)")
	cmd.Flags().StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.Flags().StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9942)")
	cmd.Flags().BoolVar(&o.faults, "fault-injection", false, "let `twinbd debug disk-fault` fail the backing disks (tests only)")
	cmd.Flags().MarkHidden("fault-injection")
	cmd.Flags().BoolVar(&o.stale, "test-only-promote-stale", false, "BREAKS invariant 6: let automatic promotion promote Outdated or Inconsistent data (tests only: the chaos harness must catch it)")
	cmd.Flags().MarkHidden("test-only-promote-stale")
	return cmd
}

// call sends one verb to this node's daemon and turns its answer into
// output and an exit code.
func call(cmd *cobra.Command, g *globalOpts, req daemon.Request) (daemon.Response, error) {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	resp, err := daemon.Call(ctx, daemon.SocketPath(g.runDir, g.node), req)
	if err != nil {
		return resp, &exitError{code: 20, err: err}
	}
	cmd.OutOrStdout().Write([]byte(resp.Output))
	if resp.Code != daemon.CodeOK {
		return resp, &exitError{code: resp.Code, err: errors.New(resp.Error)}
	}
	return resp, nil
}
