package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/device"
	"github.com/twinbd/twinbd/failover"
	"github.com/twinbd/twinbd/replication"
)

// errWaitTimeout: wait-connect / wait-sync ran out of --timeout.
var errWaitTimeout = errors.New("timed out")

// wait serves wait-connect and wait-sync: it blocks until every named
// resource is Connected (and, for wait-sync, no resync runs), the
// request's timeout passes, a resource goes StandAlone, or the client
// hangs up.
func (d *Daemon) wait(ctx context.Context, req Request) Response {
	sync := req.Verb == "wait-sync"
	if req.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, req.Timeout)
		defer cancel()
	}
	return d.forEach(req.Resource, func(r *replication.Resource) (string, error) {
		err := r.WaitConnected(ctx, sync)
		switch {
		case err == nil:
			return "", nil
		case errors.Is(err, context.DeadlineExceeded):
			return "", fmt.Errorf("%s %w after %v (%s); raise --timeout, or see `twinbd status %s`",
				req.Verb, errWaitTimeout, req.Timeout, linkSummary(r), r.Name())
		case ctx.Err() != nil:
			return "", fmt.Errorf("%s interrupted: %v", req.Verb, context.Cause(ctx))
		}
		return "", fmt.Errorf("%w: %v; fix the cause, then run `twinbd connect %s`", replication.ErrNotConnected, err, r.Name())
	})
}

// linkSummary is the state a timed-out wait reports.
func linkSummary(r *replication.Resource) string {
	st := r.Status()
	if len(st.Connections) == 0 {
		return "no peer"
	}
	c := st.Connections[0]
	parts := []string{"connection:" + c.ConnectionState}
	if c.ConnectionState == replication.ConnConnected.String() {
		pd := c.PeerDevices[0]
		parts = append(parts, "replication:"+pd.ReplicationState, fmt.Sprintf("out-of-sync:%d KiB", pd.OutOfSync))
	} else if c.Reason != "" {
		parts = append(parts, "reason: "+c.Reason)
	}
	return strings.Join(parts, " ")
}

// handlerEnv is the DRBD environment of rc's handlers on this node.
func (d *Daemon) handlerEnv(rc *config.Resource) failover.HandlerEnv {
	env := failover.HandlerEnv{Resource: rc.Name, ConfPath: d.opts.ConfigPath, Nodes: map[int]string{}}
	for _, h := range rc.Hosts {
		env.Nodes[h.NodeID] = h.Name
	}
	if host, err := rc.Host(d.opts.Node); err == nil {
		env.MyNodeID = host.NodeID
		env.Minor = nbdMinor(host.Device)
	}
	if peers := rc.Peers(d.opts.Node); len(peers) > 0 {
		env.Peer, env.PeerNodeID = peers[0].Name, peers[0].NodeID
	}
	return env
}

// cstate is DRBD_CSTATE: the connection state when a handler starts.
func cstate(self *atomic.Pointer[replication.Resource]) string {
	if r := self.Load(); r != nil {
		if st := r.Status(); len(st.Connections) > 0 {
			return st.Connections[0].ConnectionState
		}
	}
	return "Unknown"
}

// handlerFor returns the resource's Handler: each `handlers { }` command
// runs asynchronously with DRBD's environment, bounded by HandlerTimeout,
// and its outcome is logged. self is the resource once Up has returned
// (for DRBD_CSTATE).
func (d *Daemon) handlerFor(rc *config.Resource, self *atomic.Pointer[replication.Resource]) func(name, command string) {
	env := d.handlerEnv(rc)
	return func(name, command string) {
		log := d.log.With("resource", rc.Name, "handler", name)
		d.handlerMu.Lock()
		if d.handlersClosed {
			d.handlerMu.Unlock()
			log.Warn("handler not run: the daemon is shutting down", "command", command)
			return
		}
		d.handlers.Add(1)
		d.handlerMu.Unlock()
		go func() {
			defer d.handlers.Done()
			e := env
			e.CState = cstate(self)
			log.Info("handler: running", "command", command, "cstate", e.CState)
			res, err := failover.RunHandler(d.handlerCtx, command, e, d.handlerTimeout)
			out := strings.TrimSpace(string(res.Output))
			switch {
			case err != nil:
				log.Error("handler failed", "command", command, "err", err, "output", out)
			case res.ExitCode != 0:
				log.Warn("handler exited non-zero", "command", command, "exit", res.ExitCode, "took", res.Duration, "output", out)
			default:
				log.Info("handler done", "command", command, "exit", 0, "took", res.Duration, "output", out)
			}
		}()
	}
}

// fencePeerFor returns the resource's FencePeer: the fence-peer handler
// run synchronously (the caller waits for its verdict), with DRBD's
// environment, bounded by HandlerTimeout and ctx.
func (d *Daemon) fencePeerFor(rc *config.Resource, self *atomic.Pointer[replication.Resource]) func(ctx context.Context, command string) (int, error) {
	env := d.handlerEnv(rc)
	return func(ctx context.Context, command string) (int, error) {
		log := d.log.With("resource", rc.Name, "handler", "fence-peer")
		e := env
		e.CState = cstate(self)
		ctx, stop := context.WithCancel(ctx)
		defer stop()
		defer context.AfterFunc(d.handlerCtx, stop)()
		log.Info("handler: running", "command", command, "cstate", e.CState)
		res, err := failover.RunHandler(ctx, command, e, d.handlerTimeout)
		out := strings.TrimSpace(string(res.Output))
		if err != nil {
			log.Error("fence-peer failed", "command", command, "err", err, "output", out)
			return res.ExitCode, err
		}
		log.Info("fence-peer done", "command", command, "exit", res.ExitCode,
			"outcome", failover.InterpretFencePeer(res.ExitCode).String(), "took", res.Duration, "output", out)
		return res.ExitCode, nil
	}
}

// nbdMinor is N of "/dev/nbdN" (DRBD_MINOR), 0 without a device.
func nbdMinor(dev string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(dev, "/dev/nbd"))
	if err != nil || !strings.HasPrefix(dev, "/dev/nbd") {
		return 0
	}
	return n
}

// diskFault serves `debug disk-fault` (daemon started with
// --fault-injection). power-fail reverts the unflushed writes of the
// resource's disk and ends the process at once, like a node losing power:
// no answer, no demotion, no flush.
func (d *Daemon) diskFault(req Request) Response {
	if !d.opts.FaultInjection {
		return Response{Code: CodeFailed, Error: "fault injection is off: start the daemon with --fault-injection (tests only)"}
	}
	return d.forEach(req.Resource, func(r *replication.Resource) (string, error) {
		if req.Fault == "power-fail" {
			n, err := r.PowerFail()
			if err != nil {
				return "", err
			}
			d.log.Warn("simulated power failure: unflushed writes reverted, exiting now", "resource", r.Name(), "reverted", n)
			os.Exit(137)
		}
		mode, err := device.ParseFaultMode(req.Fault)
		if err != nil {
			return "", err
		}
		return "", r.DiskFault(mode, req.FaultOffset, req.FaultLength)
	})
}
