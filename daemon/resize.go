package daemon

import (
	"context"
	"fmt"

	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/replication"
)

// resize serves `resize`: each named resource grows on both nodes, or
// with a smaller --size and --force shrinks on both (replication.Resize),
// and the answer says what happened and what follows (a resync, a
// reconnect of NBD clients).
func (d *Daemon) resize(ctx context.Context, req Request) Response {
	// The file as it is now: a raised `disk { size }` counts at once (it
	// caps what the next up exports), without a down and up.
	cfg, err := config.Load(d.opts.ConfigPath)
	if err != nil {
		return Response{Code: CodeFailed, Error: fmt.Sprintf("resize reads the resource file again: %v", err)}
	}
	return d.forEach(req.Resource, func(r *replication.Resource) (string, error) {
		var cfgSize int64
		if rc, err := cfg.Resource(r.Name()); err == nil {
			cfgSize = rc.Disk.Size
		}
		res, err := r.Resize(ctx, replication.ResizeOptions{Size: req.Size, AssumeClean: req.AssumeClean, Force: req.Force, ConfigSize: cfgSize})
		if err != nil {
			return "", err
		}
		return resizeReport(r, res), nil
	})
}

// resizeReport is the output line(s) of one resource's resize.
func resizeReport(r *replication.Resource, res replication.ResizeResult) string {
	name := r.Name()
	if res.New == res.Old {
		return fmt.Sprintf("%s: %s\n", name, res.Note)
	}
	verb := "grown"
	if res.New < res.Old {
		verb = "shrunk"
	}
	out := fmt.Sprintf("%s: %s from %d KiB to %d KiB", name, verb, res.Old/1024, res.New/1024)
	switch {
	case res.Note != "":
		out += "; " + res.Note
	case res.SyncLen > 0:
		out += fmt.Sprintf("; resyncing %d KiB from offset %d KiB to the peer (`twinbd wait-sync %s` waits)", res.SyncLen/1024, res.SyncOff/1024, name)
	}
	out += ".\n"
	if r.ExportAddr() != "" {
		if res.New < res.Old {
			out += fmt.Sprintf("%s: NBD clients connected now keep the old size, and their requests past the new end get an error (EINVAL for a read, ENOSPC for a write); a new connection (nbdinfo, or nbd-client after `nbd-client -d`) sees the new one.\n", name)
		} else {
			out += fmt.Sprintf("%s: NBD clients connected now keep the old size; a new connection (nbdinfo, or nbd-client after `nbd-client -d`) sees the new one.\n", name)
		}
	}
	return out
}
