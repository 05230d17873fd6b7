package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/daemon"
	"github.com/twinbd/twinbd/replication"
)

func newCreateMDCmd(g *globalOpts) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "create-md RESOURCE",
		Short: "Write fresh metadata on this node's backing disk (or meta-disk)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(g.config)
			if err != nil {
				return err
			}
			printWarnings(cmd.ErrOrStderr(), cfg)
			res, err := cfg.Resource(args[0])
			if err != nil {
				return err
			}
			// Never write metadata under a running resource.
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
			defer cancel()
			// A Diskless one has no disk open: its replacement gets
			// metadata here, then `attach`.
			if resp, err := daemon.Call(ctx, daemon.SocketPath(g.runDir, g.node), daemon.Request{Verb: "dstate", Resource: res.Name}); err == nil && resp.Code == daemon.CodeOK &&
				!strings.HasPrefix(resp.Output, "Diskless") {
				return fmt.Errorf("%s is up on node %s with its disk attached: run `twinbd down %s` first (or, to replace a failed disk, `twinbd detach %s`)", res.Name, g.node, res.Name, res.Name)
			}
			lay, err := replication.CreateMetadata(res, g.node, force)
			if err != nil {
				return err
			}
			kind := "internal"
			if !lay.Internal {
				kind = "external"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: new metadata (%s, %d KiB) for %d KiB of data; the disk is Inconsistent until synced or `primary --force`\n",
				res.Name, kind, lay.MDSize/1024, lay.DataSize/1024)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "overwrite valid metadata (forgets the data generation; a full sync follows)")
	return cmd
}

func newDumpCmd(g *globalOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "dump [RESOURCE|all]",
		Short: "Print the parsed resource file",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(g.config)
			if err != nil {
				return err
			}
			printWarnings(cmd.ErrOrStderr(), cfg)
			name := "all"
			if len(args) == 1 {
				name = args[0]
			}
			out := cmd.OutOrStdout()
			if name != "all" {
				res, err := cfg.Resource(name)
				if err != nil {
					return err
				}
				fmt.Fprint(out, res.Format())
				return nil
			}
			for i, res := range cfg.Resources {
				if i > 0 {
					fmt.Fprintln(out)
				}
				fmt.Fprint(out, res.Format())
			}
			return nil
		},
	}
}
