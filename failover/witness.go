package failover

// The witness: a data-less third process (like Galera's garbd or DRBD's
// diskless tiebreaker) that gives a two-node resource a majority of three
// and remembers, for each resource, two things a later promotion must see:
//
//   - which node holds the primary lease (the node that may answer I/O),
//     renewed by that node every ping-int;
//   - which nodes are Outdated (a Primary that lost its peer records the
//     peer here before it answers a write the peer does not have).
//
// Promotion is granted to a node only if it is not Outdated and no other
// node's primary lease is alive. Granting outdates the other node (it may
// hold writes that were never acknowledged, and it must resync first).
//
// The timing argument (invariant 5). A node that sends a renew at its time
// s and gets a positive answer holds the lease until s+L on its own clock
// (L = the lease length it asked for). The witness received that renew at
// some r >= s and treats the lease as alive until r+L+Margin. Clocks only
// measure intervals (monotonic time), and their rates differ by far less
// than Margin/L, so the node's lease ends before the witness's view of it
// does: by the time the witness grants the peer, the old Primary has
// stopped answering (its quorum check fails at s+L). A node that cannot
// reach the witness keeps quorum only through its peer, under the same
// rule (see replication's quorum.go).
//
// A restarted witness knows no leases: it grants nothing for L+Margin after
// it starts. Outdated records are kept in the state file (--state) when one
// is given; without one, a restarted witness grants nothing for a resource
// until every node of the resource has renewed since the start (their
// renews re-report what each knows), so it never forgets an Outdated peer
// and promotes it.
//
// Wire protocol: newline-delimited JSON over TCP. The witness speaks first
// with a challenge; the node answers with its resource, node-id, its own
// challenge and an HMAC over both under the resource's shared-secret; the
// witness answers with its HMAC (mutual proof). Then the node sends
// requests, one at a time, and the witness answers each in order.

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"
)

// WitnessMargin is added by the witness to every lease it has seen renewed
// before it considers the lease expired.
const WitnessMargin = 250 * time.Millisecond

// Witness request operations.
const (
	OpRenew   = "renew"   // report state, renew the primary lease if Primary
	OpOutdate = "outdate" // record the peer Outdated (a Primary that lost it)
	OpPromote = "promote" // ask for the primary lease
	OpRelease = "release" // give the primary lease up (clean demotion)
)

// WitnessRequest is one request from a node.
type WitnessRequest struct {
	Op      string `json:"op"`
	Peer    int    `json:"peer"`     // the other node's id
	Role    string `json:"role"`     // Primary, Secondary
	Disk    string `json:"disk"`     // the node's disk state
	PeerUp  bool   `json:"peer_up"`  // connected to the peer, which is UpToDate
	LeaseMS int64  `json:"lease_ms"` // lease length the node uses
	// Force (with OpPromote): `primary --force`: the operator overrides
	// the witness; the node gets the lease and stops being Outdated, and
	// the peer is recorded Outdated (if it holds a lease, its next renew
	// tells it to demote).
	Force bool `json:"force,omitempty"`
}

// WitnessReply answers one request.
type WitnessReply struct {
	OK       bool   `json:"ok"`
	Reason   string `json:"reason,omitempty"`
	Outdated bool   `json:"outdated"` // the requesting node is Outdated here
	Primary  int    `json:"primary"`  // node holding a live primary lease, -1 none
	Known    bool   `json:"known"`    // the witness knows the resource's state
}

// WitnessResource is what the witness needs to know about a resource.
type WitnessResource struct {
	Secret  string
	HMACAlg string // unused for now: the witness always uses HMAC-SHA256
	Nodes   []int  // node-ids of the resource
}

// WitnessOptions configure a witness server.
type WitnessOptions struct {
	Resources map[string]WitnessResource
	StateFile string // "" = state only in memory
	Logger    *slog.Logger
	Now       func() time.Time // tests; default time.Now
}

// Witness is the witness server.
type Witness struct {
	opts  WitnessOptions
	log   *slog.Logger
	start time.Time

	mu  sync.Mutex
	res map[string]*wres
	// maxLease is the longest lease any node asked for, at least 2s: a
	// fresh witness grants nothing for that long (plus the margin).
	maxLease time.Duration
}

type wres struct {
	outdated    map[int]bool
	lease       map[int]time.Time // node -> end of its primary lease (witness view)
	renewed     map[int]bool      // nodes that renewed since the witness started
	fromFile    bool
	lastPrimary int
}

// NewWitness returns a witness; Serve runs it.
func NewWitness(opts WitnessOptions) (*Witness, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	w := &Witness{opts: opts, log: log, start: opts.Now(), res: map[string]*wres{}, maxLease: 2 * time.Second}
	for name := range opts.Resources {
		w.res[name] = &wres{outdated: map[int]bool{}, lease: map[int]time.Time{}, renewed: map[int]bool{}, lastPrimary: -1}
	}
	if opts.StateFile != "" {
		if err := w.load(); err != nil {
			return nil, err
		}
	}
	return w, nil
}

type witnessState struct {
	Resources map[string]struct {
		Outdated    []int `json:"outdated"`
		LastPrimary int   `json:"last_primary"`
	} `json:"resources"`
}

func (w *Witness) load() error {
	b, err := os.ReadFile(w.opts.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		// A new state file: nothing was ever recorded, which is knowledge.
		for _, r := range w.res {
			r.fromFile = true
		}
		return w.saveLocked()
	}
	if err != nil {
		return fmt.Errorf("witness: state file: %w", err)
	}
	var st witnessState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("witness: state file %s is corrupt (%v): move it away to start without state (promotions then wait until every node has reported)", w.opts.StateFile, err)
	}
	for name, r := range w.res {
		r.fromFile = true
		if s, ok := st.Resources[name]; ok {
			for _, n := range s.Outdated {
				r.outdated[n] = true
			}
			r.lastPrimary = s.LastPrimary
		}
	}
	return nil
}

// saveLocked writes the state file atomically (temp file, fsync, rename,
// fsync of the directory). w.mu is held (or no one else runs).
func (w *Witness) saveLocked() error {
	if w.opts.StateFile == "" {
		return nil
	}
	var st witnessState
	st.Resources = map[string]struct {
		Outdated    []int `json:"outdated"`
		LastPrimary int   `json:"last_primary"`
	}{}
	for name, r := range w.res {
		var out []int
		for n, o := range r.outdated {
			if o {
				out = append(out, n)
			}
		}
		slices.Sort(out)
		st.Resources[name] = struct {
			Outdated    []int `json:"outdated"`
			LastPrimary int   `json:"last_primary"`
		}{out, r.lastPrimary}
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(w.opts.StateFile)
	f, err := os.CreateTemp(dir, ".witness-state-*")
	if err != nil {
		return fmt.Errorf("witness: state file: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("witness: state file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("witness: state file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("witness: state file: %w", err)
	}
	if err := os.Rename(f.Name(), w.opts.StateFile); err != nil {
		return fmt.Errorf("witness: state file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Serve accepts nodes on ln until ctx ends.
func (w *Witness) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	defer func() {
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		wg.Go(func() {
			w.serveConn(c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			c.Close()
		})
	}
}

// maxLine bounds one JSON line from a node.
const maxLine = 4096

func (w *Witness) serveConn(c net.Conn) {
	log := w.log.With("remote", c.RemoteAddr().String())
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReaderSize(c, maxLine)
	enc := json.NewEncoder(c)
	resName, node, err := witnessAccept(br, enc, w.opts.Resources)
	if err != nil {
		log.Warn("witness: node refused", "err", err)
		enc.Encode(map[string]string{"error": err.Error()})
		return
	}
	c.SetDeadline(time.Time{})
	log = log.With("resource", resName, "node", node)
	log.Info("witness: node connected")
	for {
		line, err := readLine(br)
		if err != nil {
			log.Info("witness: node disconnected", "err", err)
			return
		}
		var req WitnessRequest
		if err := json.Unmarshal(line, &req); err != nil {
			log.Warn("witness: bad request", "err", err)
			return
		}
		rep := w.handle(resName, node, req, log)
		if err := enc.Encode(rep); err != nil {
			return
		}
	}
}

func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, errors.New("line too long")
	}
	return line, err
}

// handle applies one request under w.mu.
func (w *Witness) handle(resName string, node int, req WitnessRequest, log *slog.Logger) WitnessReply {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.res[resName]
	now := w.opts.Now()
	lease := time.Duration(req.LeaseMS) * time.Millisecond
	if lease <= 0 || lease > time.Minute {
		lease = 2 * time.Second
	}
	r.renewed[node] = true
	known := r.fromFile
	if !known {
		known = true
		for _, n := range w.opts.Resources[resName].Nodes {
			if !r.renewed[n] {
				known = false
			}
		}
	}
	// A lease seen before the witness started may still be alive.
	warm := now.Sub(w.start) > w.maxLease+WitnessMargin
	holder := -1
	for n, end := range r.lease {
		if now.Before(end) {
			holder = n
		}
	}
	rep := WitnessReply{Outdated: r.outdated[node], Primary: holder, Known: known}
	save := false
	switch req.Op {
	case OpRenew:
		rep.OK = true
		if req.Role == "Primary" {
			switch {
			case r.outdated[node]:
				rep.OK, rep.Reason = false, "this node is Outdated at the witness (its peer was promoted): demote and resync"
			case holder >= 0 && holder != node && !req.PeerUp:
				rep.OK, rep.Reason = false, fmt.Sprintf("node %d holds the primary lease", holder)
			default:
				// Connected to its UpToDate peer, the pair itself rules out
				// two Primaries: the lease moves to the node that says so.
				for n := range r.lease {
					if n != node {
						delete(r.lease, n)
					}
				}
				r.lease[node] = now.Add(lease + WitnessMargin)
				rep.Primary = node
				if r.lastPrimary != node {
					r.lastPrimary = node
					save = true
				}
			}
		}
		if req.PeerUp && req.Disk == "UpToDate" && !r.outdated[node] && r.outdated[req.Peer] {
			delete(r.outdated, req.Peer)
			save = true
			log.Info("witness: peer UpToDate again", "peer", req.Peer)
		}
	case OpOutdate:
		switch {
		case r.outdated[node]:
			rep.Reason = "this node is Outdated at the witness: it cannot outdate its peer"
		case holder == req.Peer:
			rep.Reason = fmt.Sprintf("node %d holds the primary lease: this node must not go on writing", req.Peer)
		default:
			rep.OK = true
			if !r.outdated[req.Peer] {
				r.outdated[req.Peer] = true
				save = true
				log.Warn("witness: peer recorded Outdated", "peer", req.Peer)
			}
		}
	case OpPromote:
		switch {
		case req.Force:
			rep.OK = true
			r.lease = map[int]time.Time{node: now.Add(lease + WitnessMargin)}
			rep.Primary = node
			r.lastPrimary = node
			delete(r.outdated, node)
			r.outdated[req.Peer] = true
			save = true
			log.Warn("witness: forced promotion (primary --force): the peer is recorded Outdated", "peer", req.Peer)
		case !known:
			rep.Reason = "the witness restarted without a state file and has not heard from every node since: it cannot tell whether this node is Outdated"
		case !warm:
			rep.Reason = "the witness just started: a lease it has not seen may still be alive"
		case r.outdated[node]:
			rep.Reason = "this node is Outdated: its peer wrote data it does not have"
		case holder >= 0 && holder != node:
			rep.Reason = fmt.Sprintf("node %d's primary lease has not expired yet (the witness heard from it less than a lease ago)", holder)
		default:
			rep.OK = true
			r.lease = map[int]time.Time{node: now.Add(lease + WitnessMargin)}
			rep.Primary = node
			r.lastPrimary = node
			if !r.outdated[req.Peer] {
				r.outdated[req.Peer] = true
			}
			save = true
			log.Warn("witness: promotion granted; peer recorded Outdated", "peer", req.Peer)
		}
	case OpRelease:
		rep.OK = true
		delete(r.lease, node)
		if rep.Primary == node {
			rep.Primary = -1
		}
	default:
		rep.Reason = "unknown op " + strconv.Quote(req.Op)
	}
	if lease > w.maxLease {
		w.maxLease = lease
	}
	if save {
		if err := w.saveLocked(); err != nil {
			// Not durable: refuse what depended on it.
			log.Error("witness: cannot write state", "err", err)
			if req.Op == OpOutdate || req.Op == OpPromote {
				rep.OK, rep.Reason = false, "the witness cannot write its state file"
			}
		}
	}
	rep.Outdated = r.outdated[node]
	return rep
}

// Authentication ------------------------------------------------------------

const witnessTag = "twinbd-witness-v1"

type witnessHello struct {
	Challenge string `json:"challenge"`
}

type witnessAuth struct {
	Resource  string `json:"resource"`
	Node      int    `json:"node"`
	Challenge string `json:"challenge"`
	MAC       string `json:"mac"`
}

type witnessAuthOK struct {
	MAC   string `json:"mac"`
	Error string `json:"error,omitempty"`
}

func witnessMAC(secret, side string, a, b []byte, resource string, node int) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(witnessTag + "/" + side + "/" + resource + "/" + strconv.Itoa(node) + "/"))
	m.Write(a)
	m.Write(b)
	return hex.EncodeToString(m.Sum(nil))
}

func challenge() []byte {
	b := make([]byte, 32)
	rand.Read(b)
	return b
}

// witnessAccept is the witness side of the handshake.
func witnessAccept(br *bufio.Reader, enc *json.Encoder, resources map[string]WitnessResource) (string, int, error) {
	own := challenge()
	if err := enc.Encode(witnessHello{Challenge: hex.EncodeToString(own)}); err != nil {
		return "", 0, err
	}
	line, err := readLine(br)
	if err != nil {
		return "", 0, err
	}
	var a witnessAuth
	if err := json.Unmarshal(line, &a); err != nil {
		return "", 0, fmt.Errorf("bad hello: %v", err)
	}
	res, ok := resources[a.Resource]
	if !ok {
		return "", 0, fmt.Errorf("unknown resource %q (not in the witness's configuration)", a.Resource)
	}
	if !slices.Contains(res.Nodes, a.Node) {
		return "", 0, fmt.Errorf("node-id %d is not a node of resource %s", a.Node, a.Resource)
	}
	theirs, err := hex.DecodeString(a.Challenge)
	if err != nil || len(theirs) != 32 {
		return "", 0, errors.New("bad challenge")
	}
	want := witnessMAC(res.Secret, "node", own, theirs, a.Resource, a.Node)
	if !hmac.Equal([]byte(want), []byte(a.MAC)) {
		return "", 0, fmt.Errorf("authentication failed for node %d of %s (wrong shared-secret)", a.Node, a.Resource)
	}
	if err := enc.Encode(witnessAuthOK{MAC: witnessMAC(res.Secret, "witness", theirs, own, a.Resource, a.Node)}); err != nil {
		return "", 0, err
	}
	return a.Resource, a.Node, nil
}

// ErrWitnessAuth means the witness and the node do not share the secret
// (or the witness does not know the resource or node).
var ErrWitnessAuth = errors.New("witness: refused")
