package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/twinbd/twinbd/daemon"
)

type resizeOpts struct {
	size        string
	assumeClean bool
	force       bool
}

func newResizeCmd(g *globalOpts) *cobra.Command {
	o := &resizeOpts{}
	cmd := &cobra.Command{
		Use:   "resize RESOURCE|all",
		Short: "Grow the replicated device on both nodes after their backing devices grew (online)",
		Long: `Grow the replicated device on both nodes, while clients keep working, after
the backing devices (or files) of both nodes were grown (lvextend, truncate)
with the resource up. Run it on the Primary (on either node when both are
Secondary); the peer must be connected. The new size is the largest both
nodes offer, or --size. Internal metadata moves to the new end of each
device; the new area is resynced to the peer (which is Inconsistent until
then) unless --assume-clean. NBD clients see the new size on their next
connection.

Shrinking is refused, with or without --force: twinbd does not implement it.

If a resize was interrupted after the peer grew, the next connect refuses
with "size mismatch"; running resize on the smaller node, though
disconnected, finishes it (to exactly the peer's size).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := parseSize(o.size)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			_, err = call(cmd, g, daemon.Request{Verb: "resize", Resource: args[0], Size: size, AssumeClean: o.assumeClean, Force: o.force})
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.size, "size", "", "the new size (K, M, G or T suffix; a plain number counts 512-byte sectors, as in drbd.conf); default: as large as both nodes allow")
	f.BoolVar(&o.assumeClean, "assume-clean", false, "the new area is identical on both nodes (e.g. zeroed): do not resync it")
	f.BoolVar(&o.force, "force", false, "what DRBD needs to shrink; twinbd refuses to shrink anyway")
	return cmd
}

// parseSize parses --size: a number with an optional K, M, G or T suffix
// (powers of 1024 bytes), or s for 512-byte sectors; a plain number counts
// sectors as in drbd.conf. "" is 0 (as large as possible).
func parseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := int64(512)
	num := s
	switch strings.ToUpper(s[len(s)-1:]) {
	case "S":
		mult, num = 512, s[:len(s)-1]
	case "K":
		mult, num = 1<<10, s[:len(s)-1]
	case "M":
		mult, num = 1<<20, s[:len(s)-1]
	case "G":
		mult, num = 1<<30, s[:len(s)-1]
	case "T":
		mult, num = 1<<40, s[:len(s)-1]
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("--size %q: want a positive number with an optional K, M, G or T suffix (a plain number counts 512-byte sectors)", s)
	}
	return n * mult, nil
}
