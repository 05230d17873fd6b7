package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/twinbd/twinbd/daemon"
)

// newVerbCmd builds a command that sends one verb for a resource (or all)
// to the node daemon.
func newVerbCmd(g *globalOpts, verb, short, forceHelp string) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   verb + " RESOURCE|all",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := call(cmd, g, daemon.Request{Verb: verb, Resource: args[0], Force: force})
			return err
		},
	}
	if forceHelp != "" {
		cmd.Flags().BoolVar(&force, "force", false, forceHelp)
	}
	return cmd
}

func newVerbCmds(g *globalOpts) []*cobra.Command {
	return []*cobra.Command{
		newVerbCmd(g, "up", "Attach the disk and bring the resource up", ""),
		newVerbCmd(g, "down", "Demote if Primary, flush and take the resource down", "disconnect NBD clients if Primary"),
		newVerbCmd(g, "primary", "Promote this node and serve the NBD export", "promote without UpToDate data, quorum or the witness's grant: declares local data UpToDate (initial sync source, disaster recovery); may discard the peer's newer writes, and if the peer is alive and Primary, makes two Primaries"),
		newVerbCmd(g, "secondary", "Demote this node (stops the NBD export)", "disconnect NBD clients that are still connected"),
		newConnectCmd(g),
		newVerbCmd(g, "disconnect", "Close the peer link and stay StandAlone until connect", ""),
		newVerbCmd(g, "invalidate", "Discard this node's data: a full sync from the peer follows", ""),
		newVerbCmd(g, "invalidate-remote", "Overwrite the peer's data with this node's: a full sync to the peer follows", ""),
		newVerbCmd(g, "attach", "Attach a replaced disk (after create-md) to a Diskless node: it resyncs from the peer", ""),
		newVerbCmd(g, "detach", "Take the local disk out of service (Diskless): I/O goes through the UpToDate peer", "detach a Primary whose peer is not Connected and UpToDate (its I/O then fails or suspends per on-no-data-accessible)"),
		newDebugCmd(g),
		newVerbCmd(g, "outdate", "Mark this node's data Outdated (no promotion without --force)", ""),
		newVerbCmd(g, "resume-io", "Declare the lost peer fenced: writes frozen for fencing go on (not for lost quorum)", ""),
		newVerbCmd(g, "verify", "Compare every block with the peer (online verify); prints checked and out-of-sync KiB", ""),
		newWaitCmd(g, "wait-connect", "Wait until the peer link is Connected"),
		newWaitCmd(g, "wait-sync", "Wait until Connected and no resync runs (progress bar while it does)"),
		newResizeCmd(g),
		newVerbCmd(g, "role", "Print this node's role", ""),
		newVerbCmd(g, "dstate", "Print the disk states (local/peer)", ""),
		newVerbCmd(g, "cstate", "Print the connection state", ""),
		newStatusCmd(g),
	}
}

func newConnectCmd(g *globalOpts) *cobra.Command {
	var discard bool
	cmd := &cobra.Command{
		Use:   "connect RESOURCE|all",
		Short: "Leave StandAlone and connect to the peer",
		Long: `Leave StandAlone and connect to the peer (the node with the lower node-id
dials, the other listens). Returns at once; twinbd wait-connect waits.

Split-brain recovery, as with DRBD: on the node whose changes are to be
thrown away run "twinbd disconnect R; twinbd secondary R; twinbd connect
--discard-my-data R", on the survivor "twinbd connect R".`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := call(cmd, g, daemon.Request{Verb: "connect", Resource: args[0], DiscardMyData: discard})
			return err
		},
	}
	cmd.Flags().BoolVar(&discard, "discard-my-data", false, "volunteer as the victim of a split brain found on this connect: this node's divergent writes are overwritten by the peer's")
	return cmd
}

type statusOpts struct {
	json, verbose, statistics bool
}

func newStatusCmd(g *globalOpts) *cobra.Command {
	o := &statusOpts{}
	cmd := &cobra.Command{
		Use:   "status [RESOURCE|all]",
		Short: "Show resource status (drbdadm status layout; --json has drbdsetup's keys)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res := "all"
			if len(args) == 1 {
				res = args[0]
			}
			resp, err := call(cmd, g, daemon.Request{Verb: "status", Resource: res})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if o.json {
				b, err := json.MarshalIndent(resp.Statuses, "", "  ")
				if err != nil {
					return err
				}
				fmt.Fprintln(out, string(b))
				return nil
			}
			if len(resp.Statuses) == 0 {
				fmt.Fprintln(out, "# No resources are up on this node.")
			}
			for _, st := range resp.Statuses {
				st.WriteText(out, o.verbose || o.statistics)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&o.json, "json", false, "JSON with drbdsetup status --json's keys")
	cmd.Flags().BoolVarP(&o.verbose, "verbose", "v", false, "add node-ids and states")
	cmd.Flags().BoolVarP(&o.statistics, "statistics", "s", false, "add I/O statistics (KiB)")
	return cmd
}

// newDebugCmd is `debug disk-fault`: fault injection into a daemon started
// with --fault-injection (tests, the chaos harness). Hidden.
func newDebugCmd(g *globalOpts) *cobra.Command {
	debug := &cobra.Command{Use: "debug", Short: "Fault injection for tests", Hidden: true}
	var off, length int64
	fault := &cobra.Command{
		Use:   "disk-fault RESOURCE none|read-error|write-error|rw-error|power-fail",
		Short: "Make the backing disk fail I/O (or lose power) in a daemon started with --fault-injection",
		Long: `Make the resource's backing disk fail reads, writes or both with EIO, on the
whole disk or on --offset/--length (bytes, from the start of the backing
device), or heal it (none). power-fail reverts every write the disk had not
flushed and ends the daemon at once, like a node losing power.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := call(cmd, g, daemon.Request{Verb: "disk-fault", Resource: args[0], Fault: args[1], FaultOffset: off, FaultLength: length})
			if args[1] == "power-fail" {
				var ee *exitError
				if errors.As(err, &ee) && ee.code == 20 {
					// The daemon exited before answering: that is the point.
					fmt.Fprintf(cmd.OutOrStdout(), "%s: power failure simulated; the daemon has exited\n", args[0])
					return nil
				}
			}
			return err
		},
	}
	fault.Flags().Int64Var(&off, "offset", 0, "first byte of the failing range")
	fault.Flags().Int64Var(&length, "length", 0, "bytes in the failing range (0: the whole disk)")
	debug.AddCommand(fault)
	return debug
}
