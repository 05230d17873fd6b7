package bench

// checkread.go: the readers of a check, which read blocks while the writes
// run and check every block they get back, so a lost write or a read that
// goes backwards is seen when it happens, not only by the read-back.
//
// # The properties
//
// Times are those of the client. A read is sent at ts and answered at ta;
// for block b, A(t) is the last version of b whose write was answered by
// time t, and I(t) the last version issued. A read of b that returns
// version v must satisfy:
//
//  1. No lost write (stale): v ≥ A(ts). Zeroes (a block never written)
//     count as version 0. A read therefore never returns something older
//     than a write answered before it was sent, whichever node answered
//     that write and whichever node serves the read.
//  2. Nothing never written (corrupt): v is a valid block for b's offset
//     (checksum and offset), or zeroes, and v ≤ I(ta). A read that
//     overlaps a write to b (one was in flight at ts, or at ta, or was
//     issued in between) may return a mix of the two: NBD leaves
//     overlapping requests undefined, so such a block is only counted
//     (torn overlap), not failed.
//  3. Reads never go backwards (backward): let R be an earlier read of b,
//     answered before ts, that returned v' > v (the newest version any
//     read of b has returned so far). If the write of v' was answered
//     (before R, after R, or even after this read), this read went
//     backwards: it fails. If the write of v' was never answered (it was
//     in flight when R saw it and then failed, e.g. its node died before
//     the peer had it), v' may vanish: that is what protocol C allows for
//     a write it never acknowledged, and it is only counted (vanished);
//     property 1 still requires v ≥ A(ts). While the write of v' is still
//     in flight the verdict waits for its answer or failure.
//
// Whether a version's write was answered is known exactly: a block's
// writes are issued one at a time by its worker, each is answered or
// fails, and the failed ones are recorded.
//
// The readers share the Pause gate with the writers: Pause also waits for
// the reads in flight.

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/twinbd/twinbd/nbd"
)

// checkLiveRead is the number of consecutive blocks one live read covers.
const checkLiveRead = 8

// The kinds of a ReadFailure.
const (
	ReadStale    = "stale"    // older than a write answered before the read was sent
	ReadBackward = "backward" // older than what an earlier read returned, whose write was answered
	ReadCorrupt  = "corrupt"  // not a block of this offset, not zeroes, or newer than anything issued
)

// ReadFailure is one read during the load that returned what it must not.
type ReadFailure struct {
	Block  int64  `json:"block"`
	Offset int64  `json:"offset"`
	Kind   string `json:"kind"`
	// Found is the version returned (0 with Zero: zeroes; FoundValid
	// false: not a valid block).
	Found      uint64 `json:"found_seq"`
	FoundValid bool   `json:"found_valid"`
	Zero       bool   `json:"found_zeroes"`
	// Expected is the version it had to be at least (the answered one, or
	// the one an earlier read returned).
	Expected uint64 `json:"expected_seq"`
	// By served the read, sent at SentAt and answered at At (since the
	// start).
	By     string        `json:"read_by"`
	SentAt time.Duration `json:"sent_at_ns"`
	At     time.Duration `json:"at_ns"`
	Detail string        `json:"detail"`
}

func (f ReadFailure) String() string {
	return fmt.Sprintf("block %d (offset %d): %s read: %s", f.Block, f.Offset, f.Kind, f.Detail)
}

// checkSeen is the newest version live reads returned for a block.
type checkSeen struct {
	seq  uint64        // 0: none, or zeroes
	at   time.Duration // when the read that returned it was answered
	url  int32
	back *checkBackward // a read went back from seq while its write was in flight
}

// checkBackward is a read that returned older than an earlier one while
// the newer version's write was still in flight: a failure if that write
// is answered, a vanished version if it fails.
type checkBackward struct {
	ReadFailure
	newer uint64
}

// readSnap is a block's bookkeeping when a read of it is sent.
type readSnap struct {
	answered, issued uint64
	inflight         bool
	seen             checkSeen
}

// answeredLocked says whether version v of block b was answered (r.recMu
// held). 0 (zeroes) counts as answered: nothing is older.
func (r *checkRun) answeredLocked(b int64, v uint64) bool {
	rec := &r.recs[b]
	if v > rec.answered {
		return false
	}
	for _, f := range r.failedSeqs[b] {
		if f == v {
			return false
		}
	}
	return true
}

// reader reads random runs of checkLiveRead blocks until ctx ends, from
// the export that last answered it (the next one when a dial or read
// fails), and checks each block.
func (r *checkRun) reader(ctx context.Context, i int) {
	cfg := &r.cfg
	rng := rand.New(rand.NewPCG(cfg.Seed, 1<<32|uint64(i)))
	buf := make([]byte, checkLiveRead*CheckBlockSize)
	snaps := make([]readSnap, checkLiveRead)
	var c *nbd.Client
	defer func() {
		if c != nil {
			_ = c.Close()
		}
	}()
	url := 0
	next := func() {
		if ctx.Err() == nil {
			r.recMu.Lock()
			r.rd.failed++
			r.recMu.Unlock()
		}
		if c != nil {
			_ = c.Close()
			c = nil
		}
		url = (url + 1) % len(r.targets)
		sleepCtx(ctx, cfg.RetryPause)
	}
	for ctx.Err() == nil {
		if c == nil {
			nc, err := r.dial(ctx, url)
			if err != nil {
				next()
				continue
			}
			c = nc
		}
		r.gate.RLock()
		if ctx.Err() != nil {
			r.gate.RUnlock()
			break
		}
		b0 := rng.Int64N(cfg.Blocks)
		k := min(int64(checkLiveRead), cfg.Blocks-b0)
		p := buf[:k*CheckBlockSize]
		r.recMu.Lock()
		sent := time.Since(r.start)
		for j := range k {
			rec := &r.recs[b0+j]
			snaps[j] = readSnap{answered: rec.answered, issued: rec.issued, inflight: rec.inflight, seen: r.seen[b0+j]}
		}
		r.recMu.Unlock()
		cl := c
		if err := r.guard(ctx, cl, func() error { _, err := cl.ReadAt(p, b0*CheckBlockSize); return err }); err != nil {
			r.gate.RUnlock()
			next()
			continue
		}
		r.recMu.Lock()
		at := time.Since(r.start)
		r.rd.reads++
		for j := range k {
			r.observeLocked(b0+j, p[j*CheckBlockSize:(j+1)*CheckBlockSize], &snaps[j], int32(url), sent, at)
		}
		r.recMu.Unlock()
		r.gate.RUnlock()
		if cfg.ReadPause > 0 {
			sleepCtx(ctx, cfg.ReadPause)
		}
	}
}

// observeLocked checks what a live read returned for block b (r.recMu
// held): the properties of the file comment.
func (r *checkRun) observeLocked(b int64, data []byte, snap *readSnap, url int32, sent, at time.Duration) {
	rec, sn := &r.recs[b], &r.seen[b]
	r.rd.blocks++
	off := b * CheckBlockSize
	seq, ok := ParseCheckBlock(data, off)
	zero := !ok && bytes.Equal(data, zeroBlock[:])
	f := ReadFailure{Block: b, Offset: off, Found: seq, FoundValid: ok, Zero: zero, By: r.targets[url].url, SentAt: sent, At: at}
	var v uint64
	switch {
	case ok && seq >= r.firstSeq:
		v = seq
	case ok || zero:
		v = 0 // zeroes, or a block of an earlier run: nothing of this run
	case snap.inflight || rec.inflight || rec.issued != snap.issued:
		r.rd.torn++
		return
	default:
		f.Kind, f.Detail = ReadCorrupt, "not a valid block for its offset and not zeroes, and no write to it was in flight"
		r.readFailLocked(f)
		return
	}
	found := "zeroes"
	if ok {
		found = r.writeName(seq)
	}
	read := fmt.Sprintf("returned %s; read of %s sent at %.3fs, answered at %.3fs", found, f.By, sent.Seconds(), at.Seconds())
	switch {
	case v > rec.issued:
		f.Kind, f.Expected = ReadCorrupt, rec.issued
		f.Detail = fmt.Sprintf("%s, newer than the last write issued, %s (another writer?)", read, r.writeName(rec.issued))
		r.readFailLocked(f)
		return
	case v < snap.answered:
		f.Kind, f.Expected = ReadStale, snap.answered
		f.Detail = fmt.Sprintf("%s, older than %s, answered by %s at %.3fs before the read was sent",
			read, r.writeName(snap.answered), r.targets[rec.url].url, rec.at.Seconds())
		if rec.answered != snap.answered {
			f.Detail = fmt.Sprintf("%s, older than %s, answered before the read was sent", read, r.writeName(snap.answered))
		}
		r.readFailLocked(f)
	case v < sn.seq && sn.at < sent:
		// An earlier read, answered before this one was sent, returned
		// something newer.
		f.Expected = sn.seq
		f.Detail = fmt.Sprintf("%s, older than %s, which %s returned to a read answered at %.3fs",
			read, r.writeName(sn.seq), r.targets[sn.url].url, sn.at.Seconds())
		switch {
		case r.answeredLocked(b, sn.seq):
			f.Kind = ReadBackward
			if rec.answered == sn.seq {
				f.Detail += fmt.Sprintf(" (its write was answered by %s at %.3fs)", r.targets[rec.url].url, rec.at.Seconds())
			} else {
				f.Detail += fmt.Sprintf(" (its write was answered; the last answered one is %s)", r.writeName(rec.answered))
			}
			r.readFailLocked(f)
		case rec.inflight && rec.issued == sn.seq:
			if sn.back == nil {
				f.Kind = ReadBackward
				sn.back = &checkBackward{ReadFailure: f, newer: sn.seq}
			}
		default:
			r.rd.vanished++ // never answered: it may vanish
		}
	}
	if v > sn.seq || (v < sn.seq && sn.at < sent) {
		back := sn.back
		*sn = checkSeen{seq: v, at: at, url: url, back: back}
	}
}

func (r *checkRun) readFailLocked(f ReadFailure) {
	switch f.Kind {
	case ReadStale:
		r.rd.stale++
	case ReadBackward:
		r.rd.backward++
	default:
		r.rd.corrupt++
	}
	if len(r.rd.failures) < checkMaxFailures {
		r.rd.failures = append(r.rd.failures, f)
	}
}

// writeDoneLocked settles a write of block b (r.recMu held): a read that
// went back from this version while it was in flight is a failure if the
// write was answered, a vanished version if it failed.
func (r *checkRun) writeDoneLocked(b int64, seq uint64, answered bool) {
	if !answered {
		r.failedSeqs[b] = append(r.failedSeqs[b], seq)
	}
	if r.seen == nil {
		return
	}
	sn := &r.seen[b]
	if sn.back == nil || sn.back.newer != seq {
		return
	}
	if answered {
		f := sn.back.ReadFailure
		f.Detail += fmt.Sprintf(" (its write was in flight then, and was answered at %.3fs)", r.recs[b].at.Seconds())
		r.readFailLocked(f)
	} else {
		r.rd.vanished++
	}
	sn.back = nil
}

// checkReads is what the readers found (guarded by r.recMu).
type checkReads struct {
	reads, blocks, failed    int64
	stale, backward, corrupt int64
	vanished, torn           int64
	failures                 []ReadFailure
}

// fillReads copies the readers' counters into res.
func (r *checkRun) fillReads(res *CheckResult) {
	r.recMu.Lock()
	defer r.recMu.Unlock()
	d := &r.rd
	res.Readers = r.cfg.Readers
	res.Reads, res.ReadBlocks, res.ReadsFailed = d.reads, d.blocks, d.failed
	res.StaleReads, res.BackwardReads, res.CorruptReads = d.stale, d.backward, d.corrupt
	res.VanishedReads, res.TornReads = d.vanished, d.torn
	res.ReadFailures = append([]ReadFailure(nil), d.failures...)
}
