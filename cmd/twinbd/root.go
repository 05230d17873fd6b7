package main

import (
	"errors"
	"os"

	"github.com/spf13/cobra"
)

// globalOpts are the flags every command sees.
type globalOpts struct {
	config string // resource file
	node   string // this node's name (selects the `on NAME` block)
	runDir string // where control sockets live
}

func defaultNode() string {
	h, err := os.Hostname()
	if err != nil {
		return "localhost"
	}
	return h
}

func newRootCmd() *cobra.Command {
	g := &globalOpts{}
	root := &cobra.Command{
		Use:           "twinbd",
		Short:         "Block-level replication over NBD: DRBD in userspace",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.config, "config", envOr("TWINBD_CONFIG", "/etc/twinbd/twinbd.conf"), "resource file ($TWINBD_CONFIG)")
	pf.StringVar(&g.node, "node", envOr("TWINBD_NODE", defaultNode()), "this node's name, as in the resource file's \"on NAME\" ($TWINBD_NODE)")
	pf.StringVar(&g.runDir, "run-dir", envOr("TWINBD_RUN_DIR", "/run/twinbd"), "directory of the per-node control sockets ($TWINBD_RUN_DIR)")
	root.AddCommand(newDaemonCmd(g), newCreateMDCmd(g), newDumpCmd(g), newBenchCmd(), newWitnessCmd(g), newEventsCmd(g), newGenManCmd())
	root.AddCommand(newVerbCmds(g)...)
	root.AddCommand(newChaosCmd())
	return root
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// exitError carries a specific process exit code (drbdadm's, where it has one).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}
