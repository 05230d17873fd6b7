package chaos

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// The fault kinds. Node targets are roles ("primary", "secondary"),
// resolved when the fault starts: the same seed then means the same
// faults even when the run took a different path to get there.
const (
	KillNode         = "kill-node"         // kill -9 of a node daemon; restart (daemon + up) after Hold
	KillWitness      = "kill-witness"      // kill -9 of the witness; restart after Hold
	StopNode         = "stop-node"         // SIGSTOP a node daemon; SIGCONT after Hold (a slow node)
	PartitionPeer    = "partition-peer"    // the peer link stops forwarding (Dir) or is cut (both)
	PartitionData    = "partition-data"    // only the peer link's data connection (writes, resync), the same
	PartitionMeta    = "partition-meta"    // only the peer link's meta connection (acks, pings, state), the same
	PartitionWitness = "partition-witness" // one node's witness link, the same
	DelayLink        = "delay"             // a link holds every chunk for Delay
	LossLink         = "loss"              // a link drops the connection with probability Loss per chunk
	Switchover       = "switchover"        // secondary --force on the Primary, primary on the other, under load
	StallKill        = "stall-kill"        // the Primary's replication stream stalls, then kill -9 of the Primary
	DiskWriteError   = "disk-write-error"  // a node's disk fails writes (EIO); after Hold a new disk is attached
	PowerFail        = "power-fail"        // a node loses power: unflushed writes dropped, daemon gone; restart after Hold
	// KillDuringResync: the Secondary falls behind (kill -9, Delay of load,
	// restart over a slowed peer link), and while it is SyncTarget
	// (Inconsistent) the Primary is killed; the survivor is watched for
	// Hold (it must not promote), then the Primary restarts.
	KillDuringResync = "kill-during-resync"
	// KillAfterOutdate: the peer link is cut under load until the
	// Secondary is Outdated and the Primary has answered writes it does
	// not have, Delay more of load, then kill -9 of the Primary; the
	// Outdated survivor is watched for Hold, then heal and restart.
	KillAfterOutdate = "kill-after-outdate"
)

// AllKinds are the kinds a schedule draws from by default.
var AllKinds = []string{KillNode, KillWitness, StopNode, PartitionPeer, PartitionData, PartitionMeta, PartitionWitness,
	DelayLink, LossLink, Switchover, StallKill, DiskWriteError, PowerFail, KillDuringResync, KillAfterOutdate}

// Fault is one entry of a schedule.
type Fault struct {
	N    int    `json:"n"`
	Kind string `json:"kind"`
	// Target: "primary" or "secondary" (a node, or that node's witness
	// link), "peer" (the peer link), "witness".
	Target string `json:"target"`
	// Dir for partitions, delay and loss, from the Primary's side: up is
	// Primary→Secondary (or node→witness), down the other way, both.
	Dir  string        `json:"dir,omitempty"`
	Load time.Duration `json:"load_ns"` // write load before the fault starts
	Hold time.Duration `json:"hold_ns"` // how long the fault is held before it is healed
	// Delay: a delay fault's delay per chunk; power-fail's window without
	// FLUSH or FUA before the power goes (so it has something to drop);
	// kill-during-resync's time the Secondary is down under load;
	// kill-after-outdate's load after the Secondary is Outdated.
	Delay time.Duration `json:"delay_ns,omitempty"`
	Loss  float64       `json:"loss,omitempty"`
}

func (f Fault) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", f.Kind, f.Target)
	if f.Dir != "" {
		fmt.Fprintf(&b, " dir=%s", f.Dir)
	}
	if f.Delay > 0 {
		fmt.Fprintf(&b, " delay=%s", f.Delay)
	}
	if f.Loss > 0 {
		fmt.Fprintf(&b, " loss=%.2f", f.Loss)
	}
	fmt.Fprintf(&b, " hold=%s", f.Hold.Round(time.Millisecond))
	return b.String()
}

// Schedule is the first n faults drawn from seed (kinds: nil means
// AllKinds). It depends on nothing but its arguments.
func Schedule(seed uint64, n int, kinds []string) []Fault {
	if len(kinds) == 0 {
		kinds = AllKinds
	}
	rng := rand.New(rand.NewPCG(seed, 0x6368616f73))
	ms := func(lo, hi int) time.Duration { return time.Duration(lo+rng.IntN(hi-lo+1)) * time.Millisecond }
	role := func() string { return []string{"primary", "secondary"}[rng.IntN(2)] }
	dir := func() string { return []string{"up", "down", "both"}[rng.IntN(3)] }
	out := make([]Fault, 0, n)
	for i := range n {
		f := Fault{N: i + 1, Kind: kinds[rng.IntN(len(kinds))], Load: ms(1000, 3000)}
		switch f.Kind {
		case KillNode:
			f.Target, f.Hold = role(), ms(1000, 6000)
		case PowerFail:
			f.Target, f.Hold, f.Delay = role(), ms(1000, 6000), ms(200, 800)
		case DiskWriteError:
			f.Target, f.Hold = role(), ms(500, 4000)
		case KillWitness:
			f.Target, f.Hold = "witness", ms(1000, 6000)
		case StopNode:
			f.Target, f.Hold = role(), ms(500, 5000)
		case PartitionPeer, PartitionData, PartitionMeta:
			f.Target, f.Dir, f.Hold = "peer", dir(), ms(1000, 6000)
		case PartitionWitness:
			f.Target, f.Dir, f.Hold = role(), dir(), ms(1000, 6000)
		case DelayLink:
			f.Target, f.Dir, f.Hold, f.Delay = link(rng), dir(), ms(2000, 6000), ms(2, 60)
		case LossLink:
			f.Target, f.Dir, f.Hold = link(rng), dir(), ms(2000, 6000)
			f.Loss = float64(1+rng.IntN(20)) / 100
		case Switchover:
			f.Target, f.Hold = "primary", ms(0, 1000)
		case StallKill:
			f.Target, f.Hold = "primary", ms(200, 400)
		case KillDuringResync:
			// Hold: past the survivor's lease (ping-int + ping-timeout +
			// margin, 6.25 s), when an auto-failover would promote it.
			f.Target, f.Hold, f.Delay = "primary", ms(8000, 12000), ms(1000, 3000)
		case KillAfterOutdate:
			f.Target, f.Hold, f.Delay = "primary", ms(8000, 12000), ms(500, 2000)
		}
		out = append(out, f)
	}
	return out
}

// link draws a link: the peer link or one node's witness link.
func link(rng *rand.Rand) string {
	return []string{"peer", "primary", "secondary"}[rng.IntN(3)]
}

// ParseKinds checks a comma-separated list of kinds ("" or "all": every one).
func ParseKinds(s string) ([]string, error) {
	if s == "" || s == "all" {
		return nil, nil
	}
	var out []string
	for k := range strings.SplitSeq(s, ",") {
		k = strings.TrimSpace(k)
		ok := false
		for _, a := range AllKinds {
			ok = ok || a == k
		}
		if !ok {
			return nil, fmt.Errorf("unknown fault kind %q (known: %s)", k, strings.Join(AllKinds, ", "))
		}
		out = append(out, k)
	}
	return out, nil
}
