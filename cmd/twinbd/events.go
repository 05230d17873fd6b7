package main

// events2: drbdsetup's event stream, derived from status snapshots. The
// daemon is polled (every 100 ms for states, every second for
// statistics); each object (resource, connection, device, peer-device)
// is printed as an "exists" line first, then "exists -", then "create",
// "change" and "destroy" lines as objects appear, change and disappear.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/twinbd/twinbd/daemon"
	"github.com/twinbd/twinbd/replication"
)

type eventsOpts struct {
	now, statistics, timestamps, json bool
	interval                          time.Duration
}

func newEventsCmd(g *globalOpts) *cobra.Command {
	o := &eventsOpts{}
	cmd := &cobra.Command{
		Use:   "events2 [RESOURCE|all]",
		Short: "Print state changes as they happen (drbdsetup events2 lines; --json for JSON lines)",
		Long: `Print the state of every resource, connection, device and peer device as
"exists" lines, then "exists -", then a "create", "change" or "destroy" line
whenever one appears, changes or goes away, in drbdsetup events2's format:

  exists resource name:r0 role:Primary suspended:no may_promote:no promotion_score:10000
  exists connection name:r0 peer-node-id:1 conn-name:beta connection:Connected role:Secondary
  exists device name:r0 volume:0 minor:0 disk:UpToDate client:no quorum:yes
  exists peer-device name:r0 peer-node-id:1 conn-name:beta volume:0 replication:Established peer-disk:UpToDate peer-client:no resync-suspended:no
  exists -
  change connection name:r0 peer-node-id:1 conn-name:beta connection:Connecting

--now stops after "exists -". --statistics adds the I/O counters (KiB) and
reports their changes once a second; --timestamps prefixes each line with the
time; --json prints one JSON object per event instead (twinbd's addition).
States are sampled every 100 ms (--interval), so a change that is undone
within one interval may not show.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res := "all"
			if len(args) == 1 {
				res = args[0]
			}
			return runEvents(cmd, g, o, res)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.now, "now", false, "print the current state and exit")
	f.BoolVarP(&o.statistics, "statistics", "s", false, "add I/O statistics")
	f.BoolVar(&o.timestamps, "timestamps", false, "prefix every line with the time")
	f.BoolVar(&o.json, "json", false, "JSON lines instead of drbdsetup's format")
	f.DurationVar(&o.interval, "interval", 100*time.Millisecond, "how often the state is sampled")
	return cmd
}

// eventObj is one object's identity and fields, in print order.
type eventObj struct {
	kind   string   // resource, connection, device, peer-device
	id     []string // key:value that name the object
	fields []string // key:value of its state (and statistics)
	stats  int      // how many trailing fields are statistics
	// size is a device's size (KiB): a statistic, but a change of it (an
	// online resize) is reported at once, with or without --statistics.
	size int64
}

func (e eventObj) key() string { return e.kind + " " + strings.Join(e.id, " ") }

func yn(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// objects flattens statuses into event objects.
func objects(sts []replication.Status, stats bool) []eventObj {
	var out []eventObj
	kv := func(k string, v any) string { return fmt.Sprintf("%s:%v", k, v) }
	for _, st := range sts {
		susp := "no"
		if st.Suspended {
			susp = st.SuspendedReason
		}
		out = append(out, eventObj{kind: "resource", id: []string{kv("name", st.Name)},
			fields: []string{kv("role", st.Role), kv("suspended", susp), kv("may_promote", yn(st.MayPromote)), kv("promotion_score", st.PromotionScore)}})
		for _, c := range st.Connections {
			o := eventObj{kind: "connection", id: []string{kv("name", st.Name), kv("peer-node-id", c.PeerNodeID), kv("conn-name", c.Name)},
				fields: []string{kv("connection", c.ConnectionState), kv("role", c.PeerRole)}}
			if stats {
				o.fields = append(o.fields, kv("ap-in-flight", c.APInFlight), kv("rs-in-flight", c.RSInFlight))
				o.stats = 2
			}
			out = append(out, o)
		}
		for _, d := range st.Devices {
			o := eventObj{kind: "device", id: []string{kv("name", st.Name), kv("volume", d.Volume), kv("minor", d.Minor)},
				fields: []string{kv("disk", d.DiskState), kv("client", yn(d.Client)), kv("quorum", yn(d.Quorum))}, size: d.Size}
			if stats {
				o.fields = append(o.fields, kv("size", d.Size), kv("read", d.Read), kv("written", d.Written), kv("al-writes", d.ALWrites),
					kv("bm-writes", d.BMWrites), kv("upper-pending", d.UpperPending), kv("lower-pending", d.LowerPending))
				o.stats = 7
			}
			out = append(out, o)
		}
		for _, c := range st.Connections {
			for _, p := range c.PeerDevices {
				o := eventObj{kind: "peer-device", id: []string{kv("name", st.Name), kv("peer-node-id", c.PeerNodeID), kv("conn-name", c.Name), kv("volume", p.Volume)},
					fields: []string{kv("replication", p.ReplicationState), kv("peer-disk", p.PeerDiskState), kv("peer-client", yn(p.PeerClient)), kv("resync-suspended", p.ResyncSuspended)}}
				if p.RSTotal > 0 {
					o.fields = append(o.fields, kv("done", fmt.Sprintf("%.2f", p.DonePercent)))
				}
				if stats {
					o.fields = append(o.fields, kv("received", p.Received), kv("sent", p.Sent), kv("out-of-sync", p.OutOfSync), kv("pending", p.Pending), kv("unacked", p.Unacked))
					o.stats = 5
				}
				out = append(out, o)
			}
		}
	}
	return out
}

// eventWriter prints events in either format.
type eventWriter struct {
	w io.Writer
	o *eventsOpts
}

func (ew eventWriter) emit(verb string, e *eventObj, fields []string) {
	now := time.Now()
	if ew.o.json {
		m := map[string]any{"type": verb}
		if e != nil {
			m["object"] = e.kind
			for _, f := range append(append([]string(nil), e.id...), fields...) {
				k, v, _ := strings.Cut(f, ":")
				m[k] = v
			}
		}
		if ew.o.timestamps {
			m["timestamp"] = now.Format(time.RFC3339Nano)
		}
		b, _ := json.Marshal(m)
		fmt.Fprintln(ew.w, string(b))
		return
	}
	var b strings.Builder
	if ew.o.timestamps {
		b.WriteString(now.Format("2006-01-02T15:04:05.000000-07:00 "))
	}
	b.WriteString(verb)
	if e == nil {
		b.WriteString(" -")
	} else {
		b.WriteString(" " + e.kind + " " + strings.Join(e.id, " "))
		if len(fields) > 0 {
			b.WriteString(" " + strings.Join(fields, " "))
		}
	}
	fmt.Fprintln(ew.w, b.String())
}

func runEvents(cmd *cobra.Command, g *globalOpts, o *eventsOpts, res string) error {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ew := eventWriter{w: cmd.OutOrStdout(), o: o}
	sock := daemon.SocketPath(g.runDir, g.node)
	fetch := func() ([]replication.Status, error) {
		resp, err := daemon.Call(ctx, sock, daemon.Request{Verb: "status", Resource: res})
		if err != nil {
			return nil, &exitError{code: 20, err: err}
		}
		if resp.Code != daemon.CodeOK {
			return nil, &exitError{code: resp.Code, err: fmt.Errorf("%s", resp.Error)}
		}
		return resp.Statuses, nil
	}
	sts, err := fetch()
	if err != nil {
		return err
	}
	prev := map[string]eventObj{}
	var order []string
	for _, e := range objects(sts, o.statistics) {
		ew.emit("exists", &e, e.fields)
		prev[e.key()] = e
		order = append(order, e.key())
	}
	ew.emit("exists", nil, nil)
	if o.now {
		return nil
	}
	interval := o.interval
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	lastStats := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		sts, err := fetch()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		withStats := o.statistics && time.Since(lastStats) >= time.Second
		if withStats {
			lastStats = time.Now()
		}
		cur := map[string]eventObj{}
		var curOrder []string
		for _, e := range objects(sts, o.statistics) {
			cur[e.key()] = e
			curOrder = append(curOrder, e.key())
		}
		// Destroy in reverse order (peer devices before their resource).
		for i := len(order) - 1; i >= 0; i-- {
			if _, ok := cur[order[i]]; !ok {
				e := prev[order[i]]
				ew.emit("destroy", &e, nil)
			}
		}
		for _, k := range curOrder {
			e := cur[k]
			old, ok := prev[k]
			if !ok {
				ew.emit("create", &e, e.fields)
				continue
			}
			var changed []string
			nstate := len(e.fields) - e.stats
			stateChanged := false
			for i, f := range e.fields {
				if i < len(old.fields) && old.fields[i] == f {
					continue
				}
				if i < nstate {
					stateChanged = true
					changed = append(changed, f)
				} else if withStats {
					changed = append(changed, f)
				}
			}
			if e.size != old.size {
				stateChanged = true
				if f := fmt.Sprintf("size:%d", e.size); !slices.Contains(changed, f) {
					changed = append(changed, f)
				}
			}
			if stateChanged || (withStats && len(changed) > 0) {
				ew.emit("change", &e, changed)
				prev[k] = e
			} else if !withStats {
				// Keep the last printed statistics for the next report.
				e.fields = append(e.fields[:nstate:nstate], old.fields[nstate:]...)
			}
			cur[k] = e
		}
		prev, order = cur, curOrder
	}
}
