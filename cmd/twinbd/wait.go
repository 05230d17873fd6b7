package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/twinbd/twinbd/daemon"
	"github.com/twinbd/twinbd/replication"
	"golang.org/x/term"
)

// answerGrace is how much longer than --timeout the client waits for the
// daemon's own timed-out answer (which says what state the link is in).
const answerGrace = 5 * time.Second

// progressPoll is how often wait-sync asks for status while a resync runs.
const progressPoll = 200 * time.Millisecond

func newWaitCmd(g *globalOpts, verb, short string) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   verb + " RESOURCE|all",
		Short: short,
		Long: short + `.

--timeout bounds the wait (for "all": all resources together); 0, the
default, waits forever, like DRBD's wfc-timeout 0. The wait also ends,
with exit code 11, when the resource goes StandAlone (a refused
connection or a disconnect: status shows the reason), and exits 5 when
the timeout passes. Ctrl-C stops waiting; the resource is not affected.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runWait(cmd, g, daemon.Request{Verb: verb, Resource: args[0], Timeout: timeout})
		},
	}
	if verb == "wait-sync" {
		cmd.Long += `

While a resync runs, wait-sync shows a progress bar (percent done, rate,
time left); when stdout is not a terminal it prints a line per 10%.`
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (e.g. 30s, 5m; 0 = wait forever)")
	return cmd
}

func runWait(cmd *cobra.Command, g *globalOpts, req daemon.Request) error {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	if req.Timeout < 0 {
		return fmt.Errorf("--timeout %v: must be 0 (forever) or positive", req.Timeout)
	}
	if req.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, req.Timeout+answerGrace)
		defer cancel()
	}
	sock := daemon.SocketPath(g.runDir, g.node)
	type answer struct {
		resp daemon.Response
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		resp, err := daemon.Call(ctx, sock, req)
		done <- answer{resp, err}
	}()
	out := cmd.OutOrStdout()
	var prog *syncProgress
	if req.Verb == "wait-sync" {
		prog = newSyncProgress(out)
	}
	tick := time.NewTicker(progressPoll)
	defer tick.Stop()
	var a answer
wait:
	for {
		select {
		case a = <-done:
			break wait
		case <-tick.C:
			if prog == nil {
				continue
			}
			// A failed status poll is not the wait's failure: the
			// blocking call reports what went wrong.
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			resp, err := daemon.Call(pctx, sock, daemon.Request{Verb: "status", Resource: req.Resource})
			cancel()
			if err == nil && resp.Code == daemon.CodeOK {
				prog.update(resp.Statuses)
			}
		}
	}
	if prog != nil {
		prog.stop(a.err == nil && a.resp.Code == daemon.CodeOK)
	}
	if a.err != nil {
		if errors.Is(a.err, context.DeadlineExceeded) {
			return &exitError{code: daemon.CodeTimeout, err: fmt.Errorf("%s %s: no answer within --timeout %v", req.Verb, req.Resource, req.Timeout)}
		}
		return &exitError{code: 20, err: a.err}
	}
	out.Write([]byte(a.resp.Output))
	if a.resp.Code != daemon.CodeOK {
		return &exitError{code: a.resp.Code, err: errors.New(a.resp.Error)}
	}
	if prog != nil {
		// Where things stand now that the wait is over.
		resp, err := daemon.Call(ctx, sock, daemon.Request{Verb: "status", Resource: req.Resource})
		if err == nil && resp.Code == daemon.CodeOK {
			for _, st := range resp.Statuses {
				for _, c := range st.Connections {
					disk, peer := st.Devices[0].DiskState, c.PeerDevices[0].PeerDiskState
					state := "in sync with"
					if disk != peer || disk != replication.DiskUpToDate.String() {
						state = c.PeerDevices[0].ReplicationState + " with"
					}
					fmt.Fprintf(out, "%s: %s %s (disk:%s peer-disk:%s)\n", st.Name, state, c.Name, disk, peer)
				}
			}
		}
	}
	return nil
}

// syncProgress shows the resyncs wait-sync is waiting for: a progress bar
// on a terminal, a line per 10% otherwise. One resource at a time (the
// daemon waits for them in name order).
type syncProgress struct {
	out    io.Writer
	tty    bool
	cur    string // resource whose resync is shown
	bar    *progressbar.ProgressBar
	total  int64 // bytes to sync, estimated when the resync was first seen
	decile int   // last 10% step printed (non-terminal)
}

func newSyncProgress(out io.Writer) *syncProgress {
	p := &syncProgress{out: out}
	if f, ok := out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

func syncing(rs string) bool {
	return rs == replication.ReplSyncSource.String() || rs == replication.ReplSyncTarget.String()
}

func (p *syncProgress) update(sts []replication.Status) {
	for _, st := range sts {
		if len(st.Connections) == 0 || len(st.Connections[0].PeerDevices) == 0 {
			continue
		}
		c := st.Connections[0]
		pd := c.PeerDevices[0]
		if st.Name == p.cur && !syncing(pd.ReplicationState) {
			p.finish(true)
			continue
		}
		if !syncing(pd.ReplicationState) || (p.cur != "" && st.Name != p.cur) {
			continue
		}
		dir := "to " + c.Name
		if pd.ReplicationState == replication.ReplSyncTarget.String() {
			dir = "from " + c.Name
		}
		left := pd.OutOfSync * 1024
		if p.cur == "" {
			p.start(st.Name, pd, dir, left)
		}
		p.show(st.Name, pd, dir, left)
	}
}

func (p *syncProgress) start(name string, pd replication.PeerDeviceStatus, dir string, left int64) {
	p.cur, p.decile = name, int(pd.DonePercent/10)
	// rs-total is the amount to sync when the resync started; without it,
	// estimate it from what is left.
	p.total = pd.RSTotal * 1024
	if p.total <= 0 {
		p.total = left
		if pd.DonePercent > 0 && pd.DonePercent < 100 {
			p.total = int64(float64(left) / (1 - pd.DonePercent/100))
		}
	}
	p.total = max(p.total, 1)
	if !p.tty {
		fmt.Fprintf(p.out, "%s: %s %s: %.1f%% done, %d KiB out of sync\n", name, pd.ReplicationState, dir, pd.DonePercent, pd.OutOfSync)
		return
	}
	p.bar = progressbar.NewOptions64(p.total,
		progressbar.OptionSetWriter(p.out),
		progressbar.OptionSetDescription(fmt.Sprintf("%s %s %s", name, pd.ReplicationState, dir)),
		progressbar.OptionShowBytes(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetRenderBlankState(true),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(p.out) }),
	)
}

func (p *syncProgress) show(name string, pd replication.PeerDeviceStatus, dir string, left int64) {
	if p.tty {
		p.bar.Set64(min(int64(float64(p.total)*pd.DonePercent/100), p.total-1))
		return
	}
	if d := int(pd.DonePercent / 10); d > p.decile {
		p.decile = d
		fmt.Fprintf(p.out, "%s: %s %s: %.1f%% done, %d KiB out of sync, about %ds left\n",
			name, pd.ReplicationState, dir, pd.DonePercent, left/1024, pd.ETA)
	}
}

// finish ends the shown resync (complete, or cut short by a failure).
func (p *syncProgress) finish(complete bool) {
	if p.cur == "" {
		return
	}
	switch {
	case p.tty && complete:
		p.bar.Finish()
	case p.tty:
		p.bar.Exit()
	case complete:
		fmt.Fprintf(p.out, "%s: resync done\n", p.cur)
	}
	p.cur, p.bar = "", nil
}

func (p *syncProgress) stop(ok bool) { p.finish(ok) }
