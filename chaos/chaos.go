// Package chaos is `twinbd chaos`: a randomized fault-injection harness.
// It runs a pair and a witness on loopback (the current binary, re-executed)
// with every link through an in-process fault proxy, keeps a load running
// that follows the Primary (bench.Checker: writers with FLUSH and FUA, and
// readers that check what they read), injects a seeded schedule of faults
// (kill -9 of a node or the witness, SIGSTOP of a node, partitions of the
// peer link whole or of one of its two channels and of the witness links,
// delay, loss, planned switchovers, a stalled replication stream followed
// by kill -9 of the Primary, a disk failing writes, a power failure), and
// after every fault, once it is healed and
// the pair is connected and in sync, checks that no acknowledged write was
// lost, that no read went backwards, that two nodes never answered writes
// at the same time, that the replicas are byte-for-byte identical, that no
// stale node promoted itself and that no daemon exited on its own.
// docs/chaos.md describes it.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/twinbd/twinbd/bench"
	"github.com/twinbd/twinbd/replication"
)

// Config is one chaos run.
type Config struct {
	// Binary is the twinbd binary to run (the daemons, the witness, the
	// verbs). Required.
	Binary string
	// Dir is the run directory (resource files, backing files, logs);
	// "": a new temporary one, removed when the run passes.
	Dir string
	// Seed drives the schedule and the write load (0: pick one).
	Seed uint64
	// Duration bounds the run (no new fault starts after it); Faults
	// bounds the number of faults (0: only Duration).
	Duration time.Duration
	Faults   int
	// Kinds restricts the fault kinds (nil: AllKinds).
	Kinds []string
	// Protocol is the replication protocol ("C"; "A" to see the harness
	// catch lost writes).
	Protocol string
	// Size of each backing file (0: 64 MiB); Workers, Blocks (4 KiB),
	// FlushEvery and FUA (the fraction of writes with FUA) shape the write
	// load (0: 4, 4096, 16, 0.1; a negative FUA: none).
	Size       int64
	Workers    int
	Blocks     int64
	FlushEvery int
	FUA        float64
	// Readers read blocks during the load and check every one at once
	// (bench/checkread.go; 0: 2, negative: none).
	Readers int
	// SettleTimeout bounds how long a healed pair may take to be
	// connected, in sync and with one Primary (0: 90 s).
	SettleTimeout time.Duration
	// KeepGoing runs on after a failed check (the default stops at the
	// first one, while the logs are closest to it).
	KeepGoing bool
	// Out gets one line per fault and the summary (nil: discarded).
	Out io.Writer

	// removePassed removes Dir after a passing run (Soak's scenarios).
	removePassed bool
	// daemonArgs are extra `twinbd daemon` flags (tests: the hidden
	// --test-only-promote-stale).
	daemonArgs []string
}

// FaultResult is what one fault did and what the checks said.
type FaultResult struct {
	Fault
	// Node is the resolved target ("alpha", "beta", "witness", a link).
	Node string `json:"node"`
	// Start is since the run started; Settle how long after the heal the
	// pair was connected, in sync, with one Primary.
	Start   time.Duration `json:"start_ns"`
	Settle  time.Duration `json:"settle_ns"`
	Primary string        `json:"primary_after"`
	// Answered is the check's total at this point; Lost the most lost
	// writes a check of this fault found.
	Answered int64    `json:"writes_answered"`
	Lost     int64    `json:"lost"`
	Notes    []string `json:"notes,omitempty"`
	Problems []string `json:"problems,omitempty"`
	// Reverted is what a power-fail dropped from the node's disk (bytes;
	// -1: not found in its log).
	Reverted int64 `json:"reverted_bytes,omitempty"`
	// Diskless: a disk-write-error detached the disk (it was replaced).
	Diskless bool `json:"went_diskless,omitempty"`
	// Stale is the stale survivor watched while its peer was dead and
	// its state then ("beta: Inconsistent"); "" when none was.
	Stale string `json:"stale_survivor,omitempty"`
}

// OK says whether every property held after this fault.
func (f *FaultResult) OK() bool { return len(f.Problems) == 0 }

// Report is a whole run.
type Report struct {
	Seed     uint64        `json:"seed"`
	Dir      string        `json:"dir"`
	Kept     bool          `json:"dir_kept"`
	Protocol string        `json:"protocol"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	Faults   []FaultResult `json:"faults"`
	// Final is the last check (counters since the start of the load).
	Final    *bench.CheckResult    `json:"final_check,omitempty"`
	Problems []string              `json:"problems,omitempty"`
	Proxies  map[string]ProxyStats `json:"proxies"`
	// Checks counts how often each property (the Prop* names) was
	// checked: a read-back, a replica comparison, a settle, a watched
	// stale survivor.
	Checks map[string]int `json:"checks"`
}

// The properties a run checks (Report.Checks keys).
const (
	PropNoLostWrite = "no acknowledged write lost"   // a read-back of every block
	PropReads       = "reads never go backwards"     // the live readers' verdicts, at each read-back
	PropOneWriter   = "at most one writer"           // the answers, at each read-back
	PropReplicas    = "replicas identical"           // the backing files compared after healing
	PropConverged   = "pair converges after healing" // connected, in sync, one Primary within the settle timeout
	PropNoStale     = "no stale node promoted"       // a stale survivor watched while its peer was dead
	PropNoCrash     = "no daemon crash"              // no daemon or witness exited by itself
)

// Properties are the Prop* names, in the order docs/chaos.md lists them.
var Properties = []string{PropNoLostWrite, PropReads, PropOneWriter, PropReplicas, PropNoStale, PropNoCrash, PropConverged}

// verified counts the properties a read-back checks.
func (r *runner) verified() {
	for _, p := range []string{PropNoLostWrite, PropReads, PropOneWriter} {
		r.rep.Checks[p]++
	}
}

// OK says whether every property held throughout.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// ErrFailed is returned (wrapped) when a property did not hold.
var ErrFailed = errors.New("chaos: a property did not hold")

type runner struct {
	cfg     Config
	c       *cluster
	k       *bench.Checker
	start   time.Time
	primary string
	out     io.Writer
	rep     *Report
	seen    seenSoFar // what earlier checks already reported
	ctx     context.Context
}

func other(n string) string {
	if n == "alpha" {
		return "beta"
	}
	return "alpha"
}

func nodeIndex(n string) int {
	if n == "beta" {
		return 1
	}
	return 0
}

// readPause is the readers' pause between two reads of 8 blocks. Measured
// here with two readers: about 4400 blocks a second in all (the default
// working set about once a second), and the writers answer about half
// the writes they answer without readers (a third with unpaced ones).
const readPause = 2 * time.Millisecond

// Run runs cfg. The report is returned even when err != nil (err wraps
// ErrFailed when a property did not hold; other errors mean the run
// could not be made).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Binary == "" {
		return nil, errors.New("chaos: no twinbd binary")
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	if cfg.Protocol == "" {
		cfg.Protocol = "C"
	}
	if cfg.Size == 0 {
		cfg.Size = 64 << 20
	}
	if cfg.Workers == 0 {
		cfg.Workers = 4
	}
	if cfg.Blocks == 0 {
		cfg.Blocks = 4096
	}
	if cfg.FlushEvery == 0 {
		cfg.FlushEvery = 16
	}
	switch {
	case cfg.FUA == 0:
		cfg.FUA = 0.1
	case cfg.FUA < 0:
		cfg.FUA = 0
	}
	switch {
	case cfg.Readers == 0:
		cfg.Readers = 2
	case cfg.Readers < 0:
		cfg.Readers = 0
	}
	if cfg.SettleTimeout == 0 {
		cfg.SettleTimeout = 90 * time.Second
	}
	if cfg.Duration == 0 && cfg.Faults == 0 {
		cfg.Duration = 2 * time.Minute
	}
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	tempDir := cfg.Dir == ""
	dir := cfg.Dir
	if tempDir {
		d, err := os.MkdirTemp("", "twinbd-chaos-")
		if err != nil {
			return nil, err
		}
		dir = d
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	dir, _ = filepath.Abs(dir)
	rep := &Report{Seed: cfg.Seed, Dir: dir, Protocol: cfg.Protocol, Proxies: map[string]ProxyStats{}, Checks: map[string]int{}}
	for _, p := range Properties {
		rep.Checks[p] = 0 // a property never checked shows as 0
	}
	fmt.Fprintf(out, "chaos: seed %d (--seed %d replays this schedule), protocol %s, run dir %s\n", cfg.Seed, cfg.Seed, cfg.Protocol, dir)

	r := &runner{cfg: cfg, out: out, rep: rep, start: time.Now(), ctx: ctx}
	err := r.run(ctx, dir)
	rep.Elapsed = time.Since(r.start)
	if err != nil {
		rep.Problems = append(rep.Problems, "run: "+err.Error())
	}
	rep.Kept = !(tempDir || cfg.removePassed) || !rep.OK()
	if !rep.Kept {
		_ = os.RemoveAll(dir)
	}
	r.summary()
	if !rep.OK() {
		return rep, fmt.Errorf("%w: %s", ErrFailed, strings.Join(rep.Problems, "; "))
	}
	return rep, nil
}

func (r *runner) since() time.Duration { return time.Since(r.start) }

func (r *runner) run(ctx context.Context, dir string) error {
	c, err := newCluster(r.cfg.Binary, dir, r.cfg.Size, r.cfg.Protocol, r.cfg.Seed)
	if err != nil {
		return err
	}
	r.c = c
	c.daemonArgs = r.cfg.daemonArgs
	defer func() {
		c.shutdown()
		for _, p := range c.proxies() {
			r.rep.Proxies[p.Name] = p.Stats()
		}
	}()
	if err := r.setup(); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	k, err := bench.StartChecker(ctx, bench.CheckConfig{
		URLs: []string{c.url("alpha"), c.url("beta")}, Workers: r.cfg.Workers, Blocks: r.cfg.Blocks,
		FlushEvery: r.cfg.FlushEvery, FUA: r.cfg.FUA, Readers: r.cfg.Readers, ReadPause: readPause, Seed: r.cfg.Seed | 1, DialTimeout: time.Second,
		RequestTimeout: 5 * time.Second, ReadTimeout: 20 * time.Second, RetryPause: 50 * time.Millisecond,
	})
	if err != nil {
		return err
	}
	r.k = k
	defer k.Stop()
	fmt.Fprintf(r.out, "chaos: pair up and in sync after %.1fs; alpha is Primary; load running (%d writers, %d blocks, flush every %d, FUA %g; %d readers)\n",
		r.since().Seconds(), r.cfg.Workers, r.cfg.Blocks, r.cfg.FlushEvery, r.cfg.FUA, r.cfg.Readers)

	n := r.cfg.Faults
	if n <= 0 {
		n = 100000
	}
	for _, f := range Schedule(r.cfg.Seed, n, r.cfg.Kinds) {
		if ctx.Err() != nil || (r.cfg.Duration > 0 && r.since() >= r.cfg.Duration) {
			break
		}
		fr := r.fault(ctx, f)
		r.rep.Faults = append(r.rep.Faults, fr)
		r.line(&fr)
		if !fr.OK() {
			for _, p := range fr.Problems {
				r.rep.Problems = append(r.rep.Problems, fmt.Sprintf("fault #%d (%s): %s", f.N, f.Kind, p))
			}
			if !r.cfg.KeepGoing {
				break
			}
		}
	}
	// The final check (also when a fault failed: the report has it).
	k.Pause()
	res, err := k.Verify(context.WithoutCancel(ctx), nodeIndex(r.primary))
	if err == nil {
		r.verified()
		r.rep.Final = res
		if ps := checkProblems(res, r.seen); len(ps) > 0 && r.rep.OK() { // else the fault's problems already say it
			r.rep.Problems = append(r.rep.Problems, "final check: "+ps[0])
		}
	} else {
		r.rep.Problems = append(r.rep.Problems, "final check: "+err.Error())
	}
	r.rep.Checks[PropNoCrash]++
	for _, cr := range c.takeCrashes() {
		r.rep.Problems = append(r.rep.Problems, "daemon crash: "+cr)
	}
	return nil
}

// setup: witness, create-md, daemons, up, primary --force on alpha, wait-sync.
func (r *runner) setup() error {
	c := r.c
	if err := c.startWitness(); err != nil {
		return err
	}
	for _, n := range Nodes {
		if _, err := c.twinbd(30*time.Second, n, "create-md", "--force", "r0"); err != nil {
			return err
		}
		if err := c.startDaemon(n); err != nil {
			return err
		}
	}
	for _, n := range Nodes {
		if err := c.up(n); err != nil {
			return err
		}
	}
	if _, err := c.twinbd(30*time.Second, "alpha", "wait-connect", "--timeout", "25s", "r0"); err != nil {
		return err
	}
	if _, err := c.twinbd(10*time.Second, "alpha", "primary", "--force", "r0"); err != nil {
		return err
	}
	if _, err := c.twinbd(130*time.Second, "alpha", "wait-sync", "--timeout", "120s", "r0"); err != nil {
		return err
	}
	r.primary = "alpha"
	_, _, err := r.settle(60 * time.Second)
	return err
}

// settle waits until both daemons run, are Connected and Established,
// both UpToDate with nothing out of sync, and exactly one is Primary (and
// not suspended). It returns the Primary and how long it took. A pair in
// sync where nobody promoted itself for 20 s is promoted by hand (noted).
func (r *runner) settle(timeout time.Duration) (time.Duration, []string, error) {
	c := r.c
	t0 := time.Now()
	var notes []string
	var why string
	promoted := false
	for time.Since(t0) < timeout {
		if r.ctx.Err() != nil {
			return time.Since(t0), notes, fmt.Errorf("interrupted while settling: %s", why)
		}
		why = ""
		var sts [2]*replication.Status
		for i, n := range Nodes {
			if !c.running(n) {
				why = n + " is not running"
				break
			}
			st, err := c.status(n)
			if err != nil {
				why = err.Error()
				break
			}
			sts[i] = st
		}
		if why == "" {
			why = inSync(sts)
		}
		prim := ""
		if why == "" {
			for i, st := range sts {
				if st.Role == "Primary" {
					if prim != "" {
						why = "both nodes are Primary"
					}
					prim = Nodes[i]
					if st.Suspended {
						why = prim + " is Primary but suspended (" + st.SuspendedReason + ")"
					}
				}
			}
			if why == "" && prim == "" {
				why = "no Primary"
				if !promoted && time.Since(t0) > 20*time.Second {
					promoted = true
					if _, err := c.twinbd(10*time.Second, r.primary, "primary", "r0"); err == nil {
						notes = append(notes, "nobody promoted itself; promoted "+r.primary+" by hand")
					} else {
						notes = append(notes, "nobody promoted itself; primary by hand failed: "+err.Error())
					}
				}
			}
		}
		if why == "" {
			r.primary = prim
			return time.Since(t0), notes, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return time.Since(t0), notes, fmt.Errorf("not converged after %s: %s", timeout, why)
}

// inSync says what keeps two statuses from a connected pair in sync ("": nothing).
func inSync(sts [2]*replication.Status) string {
	for i, st := range sts {
		n := Nodes[i]
		if st.Devices[0].DiskState != "UpToDate" {
			return n + " is " + st.Devices[0].DiskState
		}
		if len(st.Connections) != 1 || len(st.Connections[0].PeerDevices) != 1 {
			return n + " has no connection"
		}
		cn, pd := st.Connections[0], st.Connections[0].PeerDevices[0]
		switch {
		case cn.ConnectionState != "Connected":
			return n + " is " + cn.ConnectionState
		case pd.ReplicationState != "Established":
			return n + " is " + pd.ReplicationState
		case pd.PeerDiskState != "UpToDate":
			return n + " sees its peer " + pd.PeerDiskState
		case pd.OutOfSync != 0:
			return fmt.Sprintf("%s: %d KiB out of sync", n, pd.OutOfSync)
		}
	}
	return ""
}

// link resolves a link target to its proxy and the proxy direction for
// dir given from the Primary's (or the node's) side.
func (r *runner) link(target, dir string) (*Proxy, string, Direction) {
	d := Both
	switch dir {
	case "up":
		d = Up
	case "down":
		d = Down
	}
	if target == "peer" {
		// The proxy's Up is alpha → beta; dir is from the Primary's side.
		if r.primary == "beta" && d != Both {
			d ^= Both
		}
		return r.c.peer, "peer link", d
	}
	n := r.primary
	if target == "secondary" {
		n = other(n)
	}
	return r.c.wlink[n], n + "'s witness link", d
}

// fault applies f, holds it, heals it, waits for the pair to settle and checks.
func (r *runner) fault(ctx context.Context, f Fault) FaultResult {
	c := r.c
	fr := FaultResult{Fault: f}
	sleepCtx(ctx, f.Load)
	fr.Start = r.since()
	prim, sec := r.primary, other(r.primary)
	problem := func(format string, a ...any) { fr.Problems = append(fr.Problems, fmt.Sprintf(format, a...)) }
	note := func(format string, a ...any) { fr.Notes = append(fr.Notes, fmt.Sprintf(format, a...)) }
	// States before the fault: a node that was not UpToDate (or that the
	// witness records Outdated) must not become Primary by itself while
	// the other one is dead.
	pre := map[string]*replication.Status{}
	for _, n := range Nodes {
		if st, err := c.status(n); err == nil {
			pre[n] = st
		}
	}
	var watch *staleWatch // a stale survivor to watch during the hold
	watchStale := func(n, was string) {
		watch = &staleWatch{node: n, was: was}
		fr.Stale = n + ": " + was
		r.rep.Checks[PropNoStale]++
	}
	hold := func(d time.Duration) {
		end := time.Now().Add(d)
		for time.Now().Before(end) && ctx.Err() == nil {
			if watch != nil {
				st, _ := c.status(watch.node)
				if p := watch.observe(st); p != "" {
					problem("%s", p)
				}
			}
			sleepCtx(ctx, min(250*time.Millisecond, time.Until(end)))
		}
	}
	restart := func(n string) {
		if err := c.startDaemon(n); err != nil {
			problem("restart %s: %v", n, err)
			return
		}
		if err := c.up(n); err != nil {
			problem("up %s: %v", n, err)
		}
	}
	switch f.Kind {
	case KillNode, PowerFail:
		n := prim
		if f.Target == "secondary" {
			n = sec
		}
		fr.Node = n
		if was := staleState(pre[other(n)]); was != "" {
			watchStale(other(n), was)
			note("%s was %s before the kill: watched, it must not promote itself", other(n), was)
		}
		if f.Kind == KillNode {
			if err := c.signal(n, syscall.SIGKILL); err != nil {
				problem("%v", err)
			}
		} else {
			// A window without FLUSH or FUA, so that the disk holds
			// unflushed answered writes when the power goes.
			r.k.SetVolatile(true)
			sleepCtx(ctx, f.Delay)
			reverted, err := c.powerFail(n)
			r.k.SetVolatile(false)
			fr.Reverted = reverted
			if err != nil {
				problem("power-fail %s: %v", n, err)
			} else {
				note("%s lost power after %s without FLUSH or FUA: %d bytes of unflushed writes reverted on its disk", n, f.Delay, reverted)
			}
		}
		t0 := time.Now()
		if n == prim && watch == nil {
			fr.Problems = append(fr.Problems, r.midCheck(ctx, &fr, sec)...)
		}
		hold(f.Hold - time.Since(t0))
		restart(n)
	case DiskWriteError:
		n := prim
		if f.Target == "secondary" {
			n = sec
		}
		fr.Node = n
		if _, err := c.twinbd(10*time.Second, n, "debug", "disk-fault", "r0", "write-error"); err != nil {
			problem("disk fault on %s: %v", n, err)
			break
		}
		hold(f.Hold)
		// The operator's disk replacement (docs/operations.md, "When a
		// disk fails"): a new disk behind the same path, create-md on the
		// Diskless resource, attach: a full resync under load.
		if _, err := c.twinbd(10*time.Second, n, "debug", "disk-fault", "r0", "none"); err != nil {
			problem("heal disk fault on %s: %v", n, err)
		}
		st, err := c.status(n)
		switch {
		case err != nil:
			problem("%v", err)
		case st.Devices[0].DiskState != "Diskless":
			note("%s's disk is %s after the fault (no write hit it?): not replaced", n, st.Devices[0].DiskState)
		default:
			fr.Diskless = true
			note("%s went Diskless (%s); replaced and attached", n, st.Devices[0].DiskReason)
			if err := c.replaceDisk(n); err != nil {
				problem("replace %s's disk: %v", n, err)
			}
		}
	case KillWitness:
		fr.Node = "witness"
		if err := c.signal("witness", syscall.SIGKILL); err != nil {
			problem("%v", err)
		}
		hold(f.Hold)
		if err := c.startWitness(); err != nil {
			problem("restart witness: %v", err)
		}
	case StopNode:
		n := prim
		if f.Target == "secondary" {
			n = sec
		}
		fr.Node = n
		if err := c.signal(n, syscall.SIGSTOP); err != nil {
			problem("%v", err)
		}
		hold(f.Hold)
		if err := c.signal(n, syscall.SIGCONT); err != nil {
			problem("%v", err)
		}
	case PartitionPeer, PartitionWitness, DelayLink, LossLink:
		target := f.Target
		p, name, d := r.link(target, f.Dir)
		fr.Node = name
		switch {
		case f.Kind == DelayLink:
			p.Delay(d, f.Delay)
		case f.Kind == LossLink:
			p.Loss(d, f.Loss)
		case d == Both:
			p.Cut()
		default:
			p.Block(d)
		}
		hold(f.Hold)
		p.Heal()
	case PartitionData, PartitionMeta:
		class := DataChannel
		if f.Kind == PartitionMeta {
			class = MetaChannel
		}
		p, name, d := r.link("peer", f.Dir)
		fr.Node = name + ", " + class + " channel"
		if d == Both {
			p.CutClass(class)
		} else {
			p.BlockClass(class, d)
		}
		hold(f.Hold)
		p.Heal()
	case Switchover:
		fr.Node = prim + " -> " + sec
		if _, err := c.twinbd(20*time.Second, prim, "secondary", "--force", "r0"); err != nil {
			problem("switchover: %v", err)
			break
		}
		hold(f.Hold)
		var err error
		for range 50 {
			if _, err = c.twinbd(10*time.Second, sec, "primary", "r0"); err == nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			problem("switchover: %v", err)
		}
	case KillDuringResync:
		fr.Node = prim
		// The Secondary falls behind: killed while the load writes on,
		// restarted over a peer link slowed down (so that the resync takes
		// seconds), and the Primary is killed as soon as the Secondary is
		// seen SyncTarget. A resync missed (done before it was seen) is
		// tried again.
		var seen bool
		for attempt := 1; attempt <= 3 && !seen && ctx.Err() == nil; attempt++ {
			if err := c.signal(sec, syscall.SIGKILL); err != nil {
				problem("%v", err)
				break
			}
			sleepCtx(ctx, f.Delay)
			c.peer.Delay(Both, resyncSlowdown)
			restart(sec)
			var last string
			seen, last = r.waitFor(ctx, 30*time.Second, sec, func(st *replication.Status) bool {
				return replState(st) == "SyncTarget"
			})
			if !seen {
				c.peer.Heal()
				note("attempt %d: %s was not seen SyncTarget (last: %s)", attempt, sec, last)
			}
		}
		if !seen {
			problem("did not take effect: %s was never seen SyncTarget in 3 attempts", sec)
			break
		}
		r.killStale(ctx, &fr, prim, sec, "SyncTarget", watchStale, note, problem)
		c.peer.Heal()
		hold(f.Hold)
		restart(prim)
	case KillAfterOutdate:
		fr.Node = prim
		// The peer link cut under load: the Primary records the Secondary
		// Outdated at the witness and answers writes the Secondary does
		// not have; then it dies.
		c.peer.Cut()
		var pst *replication.Status
		seen, last := r.waitFor(ctx, 30*time.Second, sec, func(st *replication.Status) bool {
			if staleState(st) == "" {
				return false
			}
			var err error
			pst, err = c.status(prim)
			return err == nil && !pst.Suspended && outOfSync(pst) > 0
		})
		if !seen {
			problem("did not take effect: 30 s after the peer link was cut, %s is %s, and %s %s", sec, last, prim, primaryAhead(pst))
			c.peer.Heal()
			break
		}
		note("%s is %s; %s %s", sec, staleState(mustStatus(c, sec)), prim, primaryAhead(pst))
		sleepCtx(ctx, f.Delay) // the Primary writes on
		r.killStale(ctx, &fr, prim, sec, "Outdated", watchStale, note, problem)
		hold(f.Hold)
		c.peer.Heal()
		restart(prim)
	case StallKill:
		fr.Node = prim
		p, _, d := r.link("peer", "up")
		p.Block(d) // the Primary's replication stream stops
		hold(f.Hold)
		if err := c.signal(prim, syscall.SIGKILL); err != nil {
			problem("%v", err)
		}
		p.Cut() // what was held in the network dies with the connection
		t0 := time.Now()
		fr.Problems = append(fr.Problems, r.midCheck(ctx, &fr, sec)...)
		hold(3*time.Second - time.Since(t0))
		p.Heal()
		restart(prim)
	}

	settle, notes, err := r.settle(r.cfg.SettleTimeout)
	r.rep.Checks[PropConverged]++
	fr.Settle = settle
	fr.Notes = append(fr.Notes, notes...)
	fr.Primary = r.primary
	if err != nil {
		problem("%v", err)
	}
	fr.Problems = append(fr.Problems, r.check(ctx, &fr)...)
	return fr
}

// resyncSlowdown is the peer link's delay per chunk (each way) while a
// kill-during-resync restarts the Secondary: at most 32 KiB per chunk, so
// the resync runs at a few MiB/s at most and is SyncTarget for seconds.
const resyncSlowdown = 10 * time.Millisecond

// killStale kills prim (kill -9) while sec is stale (want: what it was
// seen as just before), and checks that sec still was stale with its
// peer dead: then it is watched for the hold (watchStale). If it was not
// (the resync ended first), the fault is a plain kill of the Primary and
// the survivor is checked right after the failover, as for kill-node.
func (r *runner) killStale(ctx context.Context, fr *FaultResult, prim, sec, want string, watchStale func(n, was string),
	note, problem func(string, ...any)) {
	if err := r.c.signal(prim, syscall.SIGKILL); err != nil {
		problem("%v", err)
		return
	}
	st, err := r.c.status(sec)
	if err != nil {
		problem("status of the survivor: %v", err)
		return
	}
	if was := staleState(st); was != "" {
		watchStale(sec, was)
		note("%s killed while %s was %s (%s): watched, it must not promote itself", prim, sec, want, was)
		return
	}
	note("did not take effect: %s was already UpToDate when %s died (a plain kill of the Primary)", sec, prim)
	fr.Problems = append(fr.Problems, r.midCheck(ctx, fr, sec)...)
}

// waitFor polls node's status until ok says so (true) or timeout; it
// returns the last state seen.
func (r *runner) waitFor(ctx context.Context, timeout time.Duration, node string, ok func(*replication.Status) bool) (bool, string) {
	deadline := time.Now().Add(timeout)
	last := "no status"
	for time.Now().Before(deadline) && ctx.Err() == nil {
		st, err := r.c.status(node)
		if err == nil {
			last = st.Role + "/" + st.Devices[0].DiskState + "/" + replState(st)
			if st.WitnessOutdated {
				last += " (witness-outdated)"
			}
			if ok(st) {
				return true, last
			}
		} else {
			last = err.Error()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false, last
}

func mustStatus(c *cluster, n string) *replication.Status {
	st, _ := c.status(n)
	return st
}

// replState is the replication state towards the peer ("": no connection).
func replState(st *replication.Status) string {
	if st == nil || len(st.Connections) != 1 || len(st.Connections[0].PeerDevices) != 1 {
		return ""
	}
	if cs := st.Connections[0].ConnectionState; cs != "Connected" {
		return cs
	}
	return st.Connections[0].PeerDevices[0].ReplicationState
}

// outOfSync is what a node knows its peer lacks (KiB).
func outOfSync(st *replication.Status) int64 {
	if st == nil || len(st.Connections) != 1 || len(st.Connections[0].PeerDevices) != 1 {
		return 0
	}
	return st.Connections[0].PeerDevices[0].OutOfSync
}

func primaryAhead(st *replication.Status) string {
	if st == nil {
		return "gave no status"
	}
	s := fmt.Sprintf("has %d KiB its peer lacks", outOfSync(st))
	if st.Suspended {
		s += ", suspended (" + st.SuspendedReason + ")"
	}
	return s
}

// staleState says why a node's status makes its data possibly stale: its
// disk is neither UpToDate nor Consistent (Outdated, Inconsistent, ...),
// or the witness records it Outdated. "": not stale, or no status
// (nothing known). Consistent is a Secondary that was UpToDate when it
// lost its peer: it may promote with the witness's grant (the witness
// refuses it once the Primary recorded it Outdated there). A stale node
// must never promote itself (invariant 6).
func staleState(st *replication.Status) string {
	if st == nil || len(st.Devices) == 0 {
		return ""
	}
	d := st.Devices[0].DiskState
	bad := d != "UpToDate" && d != "Consistent"
	switch {
	case bad && st.WitnessOutdated:
		return d + ", witness-outdated"
	case bad:
		return d
	case st.WitnessOutdated:
		return d + " but witness-outdated"
	}
	return ""
}

// staleWatch is a stale survivor watched while its peer is dead.
type staleWatch struct {
	node, was string // the node and its stale state (staleState)
	promoted  bool
}

// observe is the problem when st (the watched node's status) shows it
// Primary: said once; "" otherwise (also for no status).
func (w *staleWatch) observe(st *replication.Status) string {
	if w.promoted || st == nil || st.Role != "Primary" {
		return ""
	}
	w.promoted = true
	return fmt.Sprintf("stale node promoted: %s was %s while its peer was dead, and became Primary", w.node, w.was)
}

// midCheck runs right after the Primary died: it pauses the load, waits
// for survivor to be a serving Primary and reads everything back from it
// before later writes can overwrite (and so hide) a lost one.
func (r *runner) midCheck(ctx context.Context, fr *FaultResult, survivor string) []string {
	k := r.k
	k.Pause()
	defer k.Resume()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := r.c.status(survivor)
		if err == nil && st.Role == "Primary" && !st.Suspended {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			fr.Notes = append(fr.Notes, survivor+" did not take over within 20 s: no check before the heal")
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	res, err := k.Verify(context.WithoutCancel(ctx), nodeIndex(survivor))
	if err != nil {
		return []string{"check after failover: " + err.Error()}
	}
	r.verified()
	var out []string
	for _, p := range checkProblems(res, r.seen) {
		out = append(out, "right after failover to "+survivor+": "+p)
	}
	r.seen = seenIn(res)
	fr.Lost = res.Lost
	fr.Notes = append(fr.Notes, fmt.Sprintf("checked on %s right after the failover: %d lost", survivor, res.Lost))
	return out
}

// check pauses the load and checks the properties: the replicas are
// identical, every answered write is there, no two writers, no crash.
func (r *runner) check(ctx context.Context, fr *FaultResult) []string {
	c, k := r.c, r.k
	k.Pause()
	defer func() {
		k.NewEpoch()
		k.Resume()
	}()
	var problems []string
	// Replicas: once the load is paused and the pair in sync, byte for byte
	// (a last write may still be on its way to the Secondary: retry a bit).
	if st, err := c.status(r.primary); err != nil {
		problems = append(problems, "replicas: "+err.Error())
	} else {
		n := st.Devices[0].Size * 1024
		var diff string
		for try := 0; try < 20; try++ {
			if diff, err = c.sameData(n); err != nil || diff == "" {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		switch {
		case err != nil:
			problems = append(problems, "replicas: "+err.Error())
		case diff != "":
			r.rep.Checks[PropReplicas]++
			problems = append(problems, "replicas differ after healing: "+diff)
		default:
			r.rep.Checks[PropReplicas]++
		}
	}
	res, err := k.Verify(context.WithoutCancel(ctx), nodeIndex(r.primary))
	if err != nil {
		return append(problems, "check: "+err.Error())
	}
	r.verified()
	r.rep.Checks[PropNoCrash]++
	fr.Answered, fr.Lost = res.Answered, max(fr.Lost, res.Lost)
	problems = append(problems, checkProblems(res, r.seen)...)
	r.seen = seenIn(res)
	for _, cr := range c.takeCrashes() {
		problems = append(problems, "daemon crash: "+cr)
	}
	return problems
}

// seenSoFar is what the checks so far counted of the run-wide counters
// (the checker's counters are since the start; a check reports what is new).
type seenSoFar struct {
	oldPrimary int64 // two-writer answers
	badReads   int64 // stale, backward and corrupt live reads
}

func seenIn(res *bench.CheckResult) seenSoFar {
	return seenSoFar{oldPrimary: res.OldPrimaryAnswers, badReads: badReads(res)}
}

func badReads(res *bench.CheckResult) int64 {
	return res.StaleReads + res.BackwardReads + res.CorruptReads
}

// checkProblems says what a check found wrong (two-writer answers and bad
// live reads are counted from prev on).
func checkProblems(res *bench.CheckResult, prev seenSoFar) []string {
	var out []string
	if res.ReadError != "" {
		out = append(out, fmt.Sprintf("read back %d of %d blocks: %s", res.BlocksRead, res.Blocks, res.ReadError))
	}
	if res.Lost > 0 {
		s := fmt.Sprintf("%d acknowledged writes lost (%d of them durable)", res.Lost, res.LostDurable)
		if len(res.Failures) > 0 {
			s += " (first: " + res.Failures[0].String() + ")"
		}
		out = append(out, s)
	}
	if res.Corrupt > 0 {
		out = append(out, fmt.Sprintf("%d corrupt blocks", res.Corrupt))
	}
	if res.OldPrimaryAnswers > prev.oldPrimary {
		s := fmt.Sprintf("two writers: %d answers from the old Primary after the new one answered", res.OldPrimaryAnswers-prev.oldPrimary)
		if len(res.OldPrimaryDetails) > 0 {
			s += " (" + res.OldPrimaryDetails[len(res.OldPrimaryDetails)-1] + ")"
		}
		out = append(out, s)
	}
	if n := badReads(res); n > prev.badReads {
		s := fmt.Sprintf("%d bad reads during the load (%d stale, %d backward, %d corrupt since the start)",
			n-prev.badReads, res.StaleReads, res.BackwardReads, res.CorruptReads)
		if len(res.ReadFailures) > 0 {
			s += " (" + res.ReadFailures[len(res.ReadFailures)-1].String() + ")"
		}
		out = append(out, s)
	}
	return out
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// line prints one fault.
func (r *runner) line(fr *FaultResult) {
	verdict := "OK"
	if !fr.OK() {
		verdict = "FAIL: " + strings.Join(fr.Problems, "; ")
	}
	target := fr.Node
	if fr.Target != "" && fr.Target != "peer" && fr.Target != "witness" {
		target += " (" + fr.Target + ")"
	}
	fmt.Fprintf(r.out, "#%-3d %7.1fs  %-24s %-32s hold %5.2fs  settled %5.1fs  primary %-5s  %7d answered, %d lost  %s\n",
		fr.N, fr.Start.Seconds(), fr.Kind+dirSuffix(fr.Fault), target, fr.Hold.Seconds(), fr.Settle.Seconds(), fr.Primary, fr.Answered, fr.Lost, verdict)
	for _, n := range fr.Notes {
		fmt.Fprintf(r.out, "       note: %s\n", n)
	}
}

func dirSuffix(f Fault) string {
	s := ""
	if f.Dir != "" {
		s += " " + f.Dir
	}
	if f.Delay > 0 {
		s += fmt.Sprintf(" %dms", f.Delay.Milliseconds())
	}
	if f.Loss > 0 {
		s += fmt.Sprintf(" p=%.2f", f.Loss)
	}
	return s
}

func (r *runner) summary() {
	rep := r.rep
	fmt.Fprintf(r.out, "chaos: %d faults in %.1fs, seed %d, protocol %s\n", len(rep.Faults), rep.Elapsed.Seconds(), rep.Seed, rep.Protocol)
	if f := rep.Final; f != nil {
		fmt.Fprintf(r.out, "chaos: writes %d issued, %d answered (%d with FUA), %d failed, %d flushes; %d failovers seen by the client; longest gap %.3fs\n",
			f.Issued, f.Answered, f.FUAWrites, f.Failed, f.Flushes, f.Switches, f.LongestGap.Seconds())
		fmt.Fprintf(r.out, "chaos: reads during the load %d (%d blocks): %d stale, %d backward, %d corrupt; %d unanswered versions vanished, %d torn by a write in flight\n",
			f.Reads, f.ReadBlocks, f.StaleReads, f.BackwardReads, f.CorruptReads, f.VanishedReads, f.TornReads)
		fmt.Fprintf(r.out, "chaos: final read-back %d blocks: %d lost (%d durable), %d corrupt; %d two-writer answers, %d late answers\n",
			f.BlocksRead, f.Lost, f.LostDurable, f.Corrupt, f.OldPrimaryAnswers, f.LateAnswers)
	}
	if rep.OK() {
		fmt.Fprintf(r.out, "chaos: PASS: no acknowledged write lost, no read went backwards, never two writers, replicas identical after every fault, no stale promotion, no daemon crash\n")
	} else {
		for _, p := range rep.Problems {
			fmt.Fprintf(r.out, "chaos: FAIL: %s\n", p)
		}
		fmt.Fprintf(r.out, "chaos: replay with --seed %d\n", rep.Seed)
	}
	if rep.Kept {
		fmt.Fprintf(r.out, "chaos: run dir kept: %s (alpha.log, beta.log, witness.log, resource files, backing files)\n", rep.Dir)
	}
}
