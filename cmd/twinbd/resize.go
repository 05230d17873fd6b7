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
		Short: "Grow the replicated device on both nodes after their backing devices grew, or shrink it with --size and --force (online)",
		Long: `Grow the replicated device on both nodes, while clients keep working, after
the backing devices (or files) of both nodes were grown (lvextend, truncate)
with the resource up. Run it on the Primary (on either node when both are
Secondary); the peer must be connected. The new size is the largest both
nodes offer, or --size. Internal metadata moves to the new end of each
device; the new area is resynced to the peer (which is Inconsistent until
then) unless --assume-clean. NBD clients see the new size on their next
connection.

Shrinking: a --size smaller than now is refused unless --force is given.
Everything past the new size is discarded on both nodes, so first shrink
the filesystem (or whatever uses the device) on top to at most that size,
then run resize --size S --force on the Primary with the peer connected.
This node stops serving past S first, then the peer shrinks, then this
node. Requests past S on an NBD connection opened before get an error
(EINVAL for a read, ENOSPC for a write); a new connection sees S (a kernel
client: nbd-client -d, then attach again). The backing devices keep their
size: internal metadata stays at the end of the device, and the space
between S and it is unused until create-md on a smaller device; with
external metadata the data device may be cut to S after the next down.

If a resize was interrupted, the next connect refuses with "size
mismatch": after an interrupted grow run resize on the smaller node, after
an interrupted shrink run resize --size S --force on the bigger one; though
disconnected, it finishes the resize (to exactly the peer's size).`,
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
	f.BoolVar(&o.force, "force", false, "allow a --size smaller than now: shrink, discarding everything past it on both nodes")
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
