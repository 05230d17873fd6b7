package failover

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeClock is a settable clock for the witness.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func startWitness(t *testing.T, state string, clk *fakeClock) (string, *Witness) {
	t.Helper()
	opts := WitnessOptions{
		Resources: map[string]WitnessResource{"r0": {Secret: "s3cret", Nodes: []int{0, 1}}},
		StateFile: state, Logger: slog.New(slog.DiscardHandler),
	}
	if clk != nil {
		opts.Now = clk.now
	}
	w, err := NewWitness(opts)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String(), w
}

func client(addr string, node int, secret string) *WitnessClient {
	return &WitnessClient{Addr: addr, Resource: "r0", Node: node, Secret: secret, Timeout: 2 * time.Second}
}

func call(t *testing.T, c *WitnessClient, req WitnessRequest) WitnessReply {
	t.Helper()
	if req.LeaseMS == 0 {
		req.LeaseMS = 1500
	}
	rep, err := c.Call(context.Background(), req)
	require.NoError(t, err)
	return rep
}

func TestWitnessGrantsOnlyAfterTheLeaseExpires(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	addr, _ := startWitness(t, "", clk)
	a, b := client(addr, 0, "s3cret"), client(addr, 1, "s3cret")
	defer a.Close()
	defer b.Close()
	// Both report; a is Primary with its peer connected.
	require.True(t, call(t, a, WitnessRequest{Op: OpRenew, Peer: 1, Role: "Primary", Disk: "UpToDate", PeerUp: true}).OK)
	require.True(t, call(t, b, WitnessRequest{Op: OpRenew, Peer: 0, Role: "Secondary", Disk: "UpToDate", PeerUp: true}).OK)
	// A fresh witness grants nothing until a lease it never saw has ended.
	rep := call(t, b, WitnessRequest{Op: OpPromote, Peer: 0})
	require.False(t, rep.OK)
	require.Contains(t, rep.Reason, "just started")
	clk.add(3 * time.Second)
	require.True(t, call(t, a, WitnessRequest{Op: OpRenew, Peer: 1, Role: "Primary", Disk: "UpToDate"}).OK)
	// a's lease is alive: b is refused.
	clk.add(1500 * time.Millisecond)
	rep = call(t, b, WitnessRequest{Op: OpPromote, Peer: 0})
	require.False(t, rep.OK, "granted while the Primary's lease (1.5s + margin) is alive")
	require.Equal(t, 0, rep.Primary)
	// After lease + margin: granted, and a is Outdated.
	clk.add(WitnessMargin + time.Millisecond)
	rep = call(t, b, WitnessRequest{Op: OpPromote, Peer: 0})
	require.True(t, rep.OK, rep.Reason)
	require.Equal(t, 1, rep.Primary)
	rep = call(t, a, WitnessRequest{Op: OpRenew, Peer: 1, Role: "Primary", Disk: "UpToDate"})
	require.False(t, rep.OK, "the old Primary keeps its lease after the peer was granted")
	require.True(t, rep.Outdated)
	// The old Primary cannot outdate the new one.
	require.False(t, call(t, a, WitnessRequest{Op: OpOutdate, Peer: 1}).OK)
	// Once b reports a connected and UpToDate, a is no longer Outdated.
	require.True(t, call(t, b, WitnessRequest{Op: OpRenew, Peer: 0, Role: "Primary", Disk: "UpToDate", PeerUp: true}).OK)
	require.False(t, call(t, a, WitnessRequest{Op: OpRenew, Peer: 1, Role: "Secondary", Disk: "UpToDate", PeerUp: true}).Outdated)
}

func TestWitnessOutdatedPeerIsNeverGranted(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	addr, _ := startWitness(t, "", clk)
	a, b := client(addr, 0, "s3cret"), client(addr, 1, "s3cret")
	defer a.Close()
	defer b.Close()
	clk.add(5 * time.Second)
	call(t, b, WitnessRequest{Op: OpRenew, Peer: 0, Role: "Secondary", Disk: "UpToDate"})
	require.True(t, call(t, a, WitnessRequest{Op: OpRenew, Peer: 1, Role: "Primary", Disk: "UpToDate"}).OK)
	// The link broke: the Primary outdates b before writing on.
	require.True(t, call(t, a, WitnessRequest{Op: OpOutdate, Peer: 1}).OK)
	// a dies: its lease ends, but b is Outdated: never granted.
	clk.add(10 * time.Second)
	rep := call(t, b, WitnessRequest{Op: OpPromote, Peer: 0})
	require.False(t, rep.OK)
	require.True(t, rep.Outdated)
	require.Contains(t, rep.Reason, "Outdated")
}

func TestWitnessStateFileAndFreshStart(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "w.json")
	clk := &fakeClock{t: time.Unix(1000, 0)}
	addr, _ := startWitness(t, state, clk)
	a := client(addr, 0, "s3cret")
	clk.add(5 * time.Second)
	call(t, a, WitnessRequest{Op: OpRenew, Peer: 1, Role: "Primary", Disk: "UpToDate"})
	require.True(t, call(t, a, WitnessRequest{Op: OpOutdate, Peer: 1}).OK)
	a.Close()
	b, err := os.ReadFile(state)
	require.NoError(t, err)
	require.Contains(t, string(b), `"outdated": [`)

	// A restarted witness with the state file still refuses b.
	clk2 := &fakeClock{t: time.Unix(5000, 0)}
	addr2, _ := startWitness(t, state, clk2)
	clk2.add(5 * time.Second)
	nb := client(addr2, 1, "s3cret")
	defer nb.Close()
	rep := call(t, nb, WitnessRequest{Op: OpPromote, Peer: 0})
	require.False(t, rep.OK)
	require.True(t, rep.Outdated)

	// Without a state file, a restarted witness grants nothing until every
	// node reported.
	clk3 := &fakeClock{t: time.Unix(9000, 0)}
	addr3, _ := startWitness(t, "", clk3)
	clk3.add(5 * time.Second)
	c := client(addr3, 1, "s3cret")
	defer c.Close()
	rep = call(t, c, WitnessRequest{Op: OpPromote, Peer: 0})
	require.False(t, rep.OK)
	require.Contains(t, rep.Reason, "has not heard from every node")
}

func TestWitnessRefusesWrongSecretAndStrangers(t *testing.T) {
	addr, _ := startWitness(t, "", nil)
	_, err := client(addr, 0, "wrong").Call(context.Background(), WitnessRequest{Op: OpRenew})
	require.ErrorIs(t, err, ErrWitnessAuth)
	require.Contains(t, err.Error(), "wrong shared-secret")
	c := client(addr, 7, "s3cret")
	_, err = c.Call(context.Background(), WitnessRequest{Op: OpRenew})
	require.ErrorIs(t, err, ErrWitnessAuth)
	c = &WitnessClient{Addr: addr, Resource: "r9", Node: 0, Secret: "s3cret"}
	_, err = c.Call(context.Background(), WitnessRequest{Op: OpRenew})
	require.ErrorIs(t, err, ErrWitnessAuth)
	// Garbage does not crash it; a good client still works.
	g, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	g.Write([]byte("\x00\x01garbage\n{not json\n"))
	g.Close()
	ok := client(addr, 0, "s3cret")
	defer ok.Close()
	require.True(t, call(t, ok, WitnessRequest{Op: OpRenew, Peer: 1, Role: "Secondary"}).OK)
	// A witness that is not there is "unreachable".
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	_, err = client(dead, 0, "s3cret").Call(context.Background(), WitnessRequest{Op: OpRenew})
	require.True(t, errors.Is(err, ErrWitnessUnreachable), "%v", err)
}
