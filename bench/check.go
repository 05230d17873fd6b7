package bench

// check.go is `twinbd bench check`: a write workload that follows the
// Primary across a failover, then reads everything back and proves that no
// acknowledged write was lost.
//
// # Model
//
// Workers own disjoint blocks (block b belongs to worker b mod Workers) and
// keep one write in flight each, so per block the answer order is the write
// order and the expected content is known exactly: a block must hold the
// last answered version of it, or a later one that was issued but whose
// answer never came (the write may or may not have landed). Every block
// identifies itself (MakeCheckBlock): its offset, a run-wide sequence
// number, random fill and an xxhash64 of the rest.
//
// A worker whose dial or request fails closes its client and tries the
// candidate exports in turn (round robin, RetryPause between tries) until
// one accepts a write: that is how it follows the Primary across a
// failover. It never gives up before the write phase ends.
//
// After the write phase every block is read back from the export that
// answered last (the others are tried if it fails) and checked.
//
// # Durable writes
//
// A fraction of the writes (FUA) carry NBD_CMD_FLAG_FUA, and every
// FlushEvery answered writes a worker sends a FLUSH. A write is durable
// once it was answered with FUA, or once a FLUSH sent after its answer, on
// the same connection, was answered (NBD: FLUSH covers every write the
// server completed before it; the check does not rely on CAN_MULTI_CONN).
// Per block the bookkeeping keeps the last durable version beside the last
// answered one. The read-back requires the last answered version (a process
// kill keeps the page cache, so even volatile answered writes must
// survive) and says, for each lost write, whether a durable version was
// lost too (CheckResult.LostDurable): that is the property that must hold
// across a power failure, which may drop what was never made durable.
//
// # What "two writers" means here
//
// The exports are ordered by their first answer; the one that answered
// first most recently is the current Primary. An answer from any other
// export to a write issued after the current Primary's first answer means
// two exports accepted writes at the same time (split brain): that fails
// the check. An answer from the old Primary to a write that was already in
// flight when the new one first answered is only reported ("late"): the
// old Primary may have completed it before it stepped down. A run should
// fail over in one direction: switching back to an export that answered
// earlier in the run counts as the old Primary answering again.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/twinbd/twinbd/nbd"
)

// CheckBlockSize is the size of one check block (and of every request).
const CheckBlockSize = 4096

const (
	checkMaxBlocks   = 1 << 24 // 64 GiB; bookkeeping: 56 bytes a block
	checkMaxFailures = 10      // described in the result
	checkReadChunk   = 64      // blocks per read-back request (256 KiB)
	checkHeader      = 16      // offset + seq
)

// MakeCheckBlock fills b (at least 24 bytes; CheckBlockSize in a check run)
// with a self-identifying block for offset off and sequence seq:
//
//	0        8        16                      len-8     len
//	+--------+--------+-------- ... ----------+---------+
//	| offset |  seq   | random fill           | xxh64   |
//	+--------+--------+-------- ... ----------+---------+
//
// big-endian; xxh64 covers everything before it. rng supplies the fill
// (nil: the global math/rand/v2 source).
func MakeCheckBlock(b []byte, off int64, seq uint64, rng *rand.Rand) {
	n := len(b) - 8
	binary.BigEndian.PutUint64(b[0:], uint64(off))
	binary.BigEndian.PutUint64(b[8:], seq)
	next := rand.Uint64
	if rng != nil {
		next = rng.Uint64
	}
	i := checkHeader
	for ; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], next())
	}
	for v := next(); i < n; i++ {
		b[i] = byte(v)
		v >>= 8
	}
	binary.BigEndian.PutUint64(b[n:], xxhash.Sum64(b[:n]))
}

// ParseCheckBlock returns the sequence of b, or ok=false when b is not a
// valid block for offset off (bad checksum: never written, torn or
// corrupt; or the block of another offset: misdirected).
func ParseCheckBlock(b []byte, off int64) (seq uint64, ok bool) {
	n := len(b) - 8
	if n < checkHeader || binary.BigEndian.Uint64(b[n:]) != xxhash.Sum64(b[:n]) ||
		int64(binary.BigEndian.Uint64(b[0:])) != off {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[8:]), true
}

// CheckConfig is one `bench check` run.
type CheckConfig struct {
	// URLs are the candidate exports, tried in this order (ParseTarget
	// syntax: nbd://HOST[:PORT][/EXPORT], HOST:PORT,
	// nbd+unix:///EXPORT?socket=PATH).
	URLs []string
	// Duration is the write phase; cancelling the context of RunCheck ends
	// it early.
	Duration time.Duration
	// Workers write one block at a time each.
	Workers int
	// Blocks is the working set: the first Blocks blocks of CheckBlockSize.
	// Its previous content is overwritten.
	Blocks int64
	// FlushEvery sends a FLUSH after every N answered writes of a worker
	// (0: never).
	FlushEvery int
	// FUA is the fraction of writes sent with NBD_CMD_FLAG_FUA (0..1; 0:
	// none). Drawn from the seed, so a seed gives the same FUA writes.
	FUA float64
	// Readers read random runs of blocks while the writes run and check
	// each block at once (checkread.go: no stale read, nothing never
	// written, reads never go backwards). 0: none. ReadPause is each
	// reader's pause between reads (0: none), so they leave the writers
	// most of the CPU.
	Readers   int
	ReadPause time.Duration
	// Seed drives block choice and fill (0: pick one; the result has it).
	Seed uint64
	// DialTimeout bounds connect + handshake (0: 2 s).
	DialTimeout time.Duration
	// RequestTimeout abandons a request (closing its connection, which
	// then counts as failed) after this long (0: never).
	RequestTimeout time.Duration
	// ReadTimeout is how long the read-back keeps retrying the exports
	// without progress before giving up (0: 30 s).
	ReadTimeout time.Duration
	// RetryPause is the pause before trying the next export (0: 20 ms).
	RetryPause time.Duration
}

// CheckDefaults are the command's defaults.
func CheckDefaults() CheckConfig {
	return CheckConfig{
		Duration:       10 * time.Second,
		Workers:        8,
		Blocks:         4096,
		DialTimeout:    2 * time.Second,
		RequestTimeout: 10 * time.Second,
		ReadTimeout:    30 * time.Second,
		RetryPause:     20 * time.Millisecond,
	}
}

// CheckURLStats is what one export did in the run.
type CheckURLStats struct {
	URL      string `json:"url"`
	Answered int64  `json:"writes_answered"`
	Flushes  int64  `json:"flushes_answered"`
	// Dials counts connections established; Failures the dials and
	// requests that failed during the write phase.
	Dials      int64  `json:"dials"`
	Failures   int64  `json:"failures"`
	FirstError string `json:"first_error,omitempty"`
	// FirstAnswer and LastAnswer are since the start (valid when Answered > 0).
	FirstAnswer time.Duration `json:"first_answer_ns"`
	LastAnswer  time.Duration `json:"last_answer_ns"`
	// Timeline counts the writes answered in each TimelineStep since the
	// start (for --plot).
	Timeline []int64 `json:"timeline,omitempty"`
}

// TimelineStep is the width of a CheckURLStats.Timeline bucket.
const TimelineStep = 50 * time.Millisecond

// CheckFailure is one block that does not hold what it must.
type CheckFailure struct {
	Block  int64  `json:"block"`
	Offset int64  `json:"offset"`
	Kind   string `json:"kind"` // "lost" or "corrupt"
	// Found is the sequence the block holds (valid when FoundValid).
	Found      uint64 `json:"found_seq"`
	FoundValid bool   `json:"found_valid"`
	Zero       bool   `json:"found_zeroes"`
	Answered   uint64 `json:"answered_seq"` // 0: none
	Issued     uint64 `json:"issued_seq"`
	// Detail names writes "write #N": sequence FirstSeq+N-1.
	// AnsweredBy and AnsweredAt say who answered Answered, and when
	// (since the start).
	AnsweredBy string        `json:"answered_by,omitempty"`
	AnsweredAt time.Duration `json:"answered_at_ns"`
	// Durable is the last durable version (0: none); DurableLost says the
	// block holds something older than it.
	Durable     uint64 `json:"durable_seq"`
	DurableLost bool   `json:"durable_lost"`
	Detail      string `json:"detail"`
}

func (f CheckFailure) String() string {
	return fmt.Sprintf("block %d (offset %d): %s: %s", f.Block, f.Offset, f.Kind, f.Detail)
}

// CheckResult is what a check run found.
type CheckResult struct {
	URLs       []string      `json:"urls"`
	Workers    int           `json:"workers"`
	Blocks     int64         `json:"blocks"`
	BlockSize  int           `json:"bs"`
	FlushEvery int           `json:"flush_every"`
	Seed       uint64        `json:"seed"`
	Start      time.Time     `json:"start"`
	Duration   time.Duration `json:"duration_ns"` // the write phase as it ran
	// FirstSeq is the first sequence of the run (the start time in ns, so
	// blocks of earlier runs hold smaller ones).
	FirstSeq uint64 `json:"first_seq"`

	Issued   int64 `json:"writes_issued"`
	Answered int64 `json:"writes_answered"`
	Failed   int64 `json:"writes_failed"`
	Flushes  int64 `json:"flushes_answered"`
	// FUAWrites counts the answered writes that carried FUA; Durable the
	// blocks whose last durable version (FUA or flushed) is known.
	FUA       float64 `json:"fua"`
	FUAWrites int64   `json:"fua_writes_answered"`
	Durable   int64   `json:"blocks_durable"`
	// Switches counts exports answering for the first time after another
	// one had (client-visible failovers).
	Switches int             `json:"switches"`
	PerURL   []CheckURLStats `json:"per_url"`

	// LongestGap is the longest time no write was answered by anyone
	// (the client-visible failover time), counting from the start of the
	// write phase and up to its end. It began at LongestGapStart
	// (LongestGapAt since the start), after an answer from LongestGapFrom,
	// and ended with an answer from LongestGapTo ("" for the start / the
	// end of the write phase).
	LongestGap      time.Duration `json:"longest_gap_ns"`
	LongestGapAt    time.Duration `json:"longest_gap_at_ns"`
	LongestGapStart time.Time     `json:"longest_gap_start"`
	LongestGapFrom  string        `json:"longest_gap_from,omitempty"`
	LongestGapTo    string        `json:"longest_gap_to,omitempty"`

	// OldPrimaryAnswers counts answers from an export other than the
	// current Primary to writes issued after the current Primary first
	// answered: two writers. LateAnswers counts such answers to writes
	// already in flight then (reported, not a failure).
	OldPrimaryAnswers int64    `json:"old_primary_answers"`
	OldPrimaryDetails []string `json:"old_primary_details,omitempty"`
	LateAnswers       int64    `json:"late_answers"`

	// ReadFrom lists the exports the read-back used, in order.
	ReadFrom []string `json:"read_from"`
	// BlocksRead counts blocks read back and checked (all of Blocks unless
	// ReadError); Untouched those never written in this run (only checked
	// for not holding a block of this run).
	BlocksRead int64  `json:"blocks_read"`
	Untouched  int64  `json:"blocks_untouched"`
	ReadError  string `json:"read_error,omitempty"`

	// Readers is the number of live readers; Reads the reads they got
	// answered, ReadBlocks the blocks in them, ReadsFailed the dials and
	// reads that failed. StaleReads, BackwardReads and CorruptReads break
	// checkread.go's properties; VanishedReads counts versions of writes
	// never answered that a read saw and a later one did not (allowed),
	// TornReads blocks read while a write to them was in flight that were
	// a mix (allowed: NBD leaves overlapping requests undefined).
	Readers       int           `json:"readers"`
	Reads         int64         `json:"reads"`
	ReadBlocks    int64         `json:"read_blocks"`
	ReadsFailed   int64         `json:"reads_failed"`
	StaleReads    int64         `json:"stale_reads"`
	BackwardReads int64         `json:"backward_reads"`
	CorruptReads  int64         `json:"corrupt_reads"`
	VanishedReads int64         `json:"vanished_reads"`
	TornReads     int64         `json:"torn_reads"`
	ReadFailures  []ReadFailure `json:"read_failures,omitempty"` // the first ones

	// Lost counts blocks missing an answered write (older version,
	// zeroes, or garbage); LostDurable those of them missing a durable one
	// too (an answered FUA write, or one answered before an answered
	// FLUSH); Corrupt blocks without an answered write that hold something
	// no write of this run explains.
	Lost        int64          `json:"lost"`
	LostDurable int64          `json:"lost_durable"`
	Corrupt     int64          `json:"corrupt"`
	Failures    []CheckFailure `json:"failures,omitempty"` // the first ones
}

// ErrCheckFailed is wrapped by CheckResult.Err.
var ErrCheckFailed = errors.New("bench check failed")

// Err is nil when the run proved what it should: writes were answered,
// every block was read back, nothing answered was lost, nothing is
// corrupt and no old Primary answered after the new one started.
func (r *CheckResult) Err() error {
	var why []string
	if r.Answered == 0 {
		why = append(why, "no write was answered")
	}
	if r.ReadError != "" {
		why = append(why, fmt.Sprintf("read back %d of %d blocks: %s", r.BlocksRead, r.Blocks, r.ReadError))
	}
	if r.Lost > 0 {
		why = append(why, fmt.Sprintf("%d lost writes (%d of them durable)", r.Lost, r.LostDurable))
	}
	if r.Corrupt > 0 {
		why = append(why, fmt.Sprintf("%d corrupt blocks", r.Corrupt))
	}
	if n := r.StaleReads + r.BackwardReads + r.CorruptReads; n > 0 {
		why = append(why, fmt.Sprintf("%d bad reads during the load (%d stale, %d backward, %d corrupt)", n, r.StaleReads, r.BackwardReads, r.CorruptReads))
	}
	if r.OldPrimaryAnswers > 0 {
		why = append(why, fmt.Sprintf("%d answers from the old Primary after the new one started (two writers)", r.OldPrimaryAnswers))
	}
	if len(why) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrCheckFailed, strings.Join(why, "; "))
}

// WriteJSON prints the result as one JSON object.
func (r *CheckResult) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText prints the result for people. Times are since the start.
func (r *CheckResult) WriteText(w io.Writer) error {
	var b strings.Builder
	sec := func(d time.Duration) string { return fmt.Sprintf("%.3fs", d.Seconds()) }
	fmt.Fprintf(&b, "check:     %d export(s), %d workers, %d blocks of %s (%s), flush-every %d, fua %g, seed %d\n",
		len(r.URLs), r.Workers, r.Blocks, FormatSize(int64(r.BlockSize)), humanBytes(r.Blocks*int64(r.BlockSize)), r.FlushEvery, r.FUA, r.Seed)
	fmt.Fprintf(&b, "start:     %s, write phase %s\n", r.Start.Format(time.RFC3339Nano), sec(r.Duration))
	fmt.Fprintf(&b, "writes:    %d issued, %d answered (%d with FUA), %d failed; %d flushes answered; %d failover(s) seen\n",
		r.Issued, r.Answered, r.FUAWrites, r.Failed, r.Flushes, r.Switches)
	fmt.Fprintf(&b, "durable:   %d blocks hold a durable version (answered with FUA, or before an answered FLUSH)\n", r.Durable)
	for _, u := range r.PerURL {
		span := "never answered"
		if u.Answered > 0 {
			span = fmt.Sprintf("answered %s .. %s", sec(u.FirstAnswer), sec(u.LastAnswer))
		}
		fmt.Fprintf(&b, "  %s: %d writes, %d flushes answered; %d connections, %d failures; %s\n",
			u.URL, u.Answered, u.Flushes, u.Dials, u.Failures, span)
		if u.FirstError != "" {
			fmt.Fprintf(&b, "    first failure: %s\n", u.FirstError)
		}
	}
	from, to := "last answer by "+r.LongestGapFrom, "until "+r.LongestGapTo+" answered"
	if r.LongestGapFrom == "" {
		from = "the start of the run"
	}
	if r.LongestGapTo == "" {
		to = "until the end of the write phase"
	}
	fmt.Fprintf(&b, "gap:       longest %s without an answered write: from %s (%s, %s) %s\n",
		sec(r.LongestGap), sec(r.LongestGapAt), r.LongestGapStart.Format("15:04:05.000"), from, to)
	fmt.Fprintf(&b, "overlap:   %d answers from the old Primary after the new one started (%d late answers to writes in flight at the switch)\n",
		r.OldPrimaryAnswers, r.LateAnswers)
	for _, d := range r.OldPrimaryDetails {
		fmt.Fprintf(&b, "  %s\n", d)
	}
	if r.Readers > 0 {
		fmt.Fprintf(&b, "reads:     %d readers: %d reads answered (%d blocks), %d failed; %d stale, %d backward, %d corrupt; %d unanswered versions vanished, %d torn by a write in flight\n",
			r.Readers, r.Reads, r.ReadBlocks, r.ReadsFailed, r.StaleReads, r.BackwardReads, r.CorruptReads, r.VanishedReads, r.TornReads)
		for _, f := range r.ReadFailures {
			fmt.Fprintf(&b, "  %s\n", f)
		}
	}
	switch {
	case r.Answered == 0:
		fmt.Fprintf(&b, "read back: nothing (no write was answered)\n")
	case len(r.ReadFrom) == 0:
		fmt.Fprintf(&b, "read back: 0 of %d blocks: no export could be read\n", r.Blocks)
	default:
		fmt.Fprintf(&b, "read back: %d of %d blocks from %s (%d never written in this run)\n",
			r.BlocksRead, r.Blocks, strings.Join(r.ReadFrom, ", "), r.Untouched)
	}
	if r.ReadError != "" {
		fmt.Fprintf(&b, "  read error: %s\n", r.ReadError)
	}
	fmt.Fprintf(&b, "lost:      %d answered write(s) missing, %d of them durable\n", r.Lost, r.LostDurable)
	fmt.Fprintf(&b, "corrupt:   %d blocks\n", r.Corrupt)
	for _, f := range r.Failures {
		fmt.Fprintf(&b, "  %s\n", f)
	}
	if err := r.Err(); err != nil {
		fmt.Fprintf(&b, "result:    FAILED: %s\n", strings.TrimPrefix(err.Error(), ErrCheckFailed.Error()+": "))
	} else {
		fmt.Fprintf(&b, "result:    OK: every answered write is there\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// checkTarget is one parsed candidate export.
type checkTarget struct {
	url, network, addr, export string
}

// checkRec is the bookkeeping of one block, written only by its worker
// (under checkRun.recMu, which the readers take to read it).
type checkRec struct {
	inflight         bool          // a write of issued is in flight
	issued, answered uint64        // sequences; 0: none
	at               time.Duration // when answered was answered
	url              int32         // who answered it
	durableFUA       bool          // durable came from a FUA write (else a FLUSH)
	durable          uint64        // the last durable version; 0: none
	durableAt        time.Duration // when it became durable
}

// unflushed is a write answered on a worker's current connection that no
// answered FLUSH has covered yet.
type unflushed struct {
	block int64
	seq   uint64
}

// checkRun is the state of one RunCheck.
type checkRun struct {
	cfg      CheckConfig
	targets  []checkTarget
	recs     []checkRec
	start    time.Time
	seq      atomic.Uint64 // the last sequence handed out
	firstSeq uint64        // the first one

	issued, failed atomic.Int64
	// volatile: no FLUSH and no FUA while set (Checker.SetVolatile).
	volatile atomic.Bool

	mu         sync.Mutex // guards everything below
	urls       []CheckURLStats
	answered   int64
	fuaWrites  int64
	flushes    int64
	lastAnswer time.Duration // since the start
	lastURL    int           // -1: none yet
	gap        time.Duration
	gapAt      time.Duration
	gapFrom    int // -1: the start
	gapTo      int // -1: the end
	newest     int // the current Primary: -1 none yet
	newestAt   time.Duration
	switches   int
	oldAnswers int64
	oldDetails []string
	late       int64
	end        time.Duration // the write phase ended; -1 while it runs
	fatal      error
	// epochSeen says which exports answered since the last NewEpoch (a
	// first answer in an epoch is a switch of Primary); RunCheck never
	// starts a new epoch, so there it means "answered at all".
	epochSeen []bool

	// gate: workers hold it shared around each write (and its flush),
	// readers around each read, so Checker.Pause (exclusive) waits for the
	// requests in flight and holds new ones back.
	gate sync.RWMutex

	// recMu guards recs, seen, failedSeqs and rd: workers write their
	// blocks' records under it, readers read them under it.
	recMu      sync.Mutex
	seen       []checkSeen        // per block; nil without readers
	failedSeqs map[int64][]uint64 // per block: versions whose write failed
	rd         checkReads
}

// RunCheck writes for cfg.Duration (or until ctx is done), then reads every
// block back and checks it. The error is for a run that could not be made
// (bad config, an export too small); what the check found is in the result
// (CheckResult.Err). When ctx ends the write phase early the read-back
// still runs, bounded by cfg.ReadTimeout; when ctx ends during the
// read-back, the read-back stops (CheckResult.ReadError). It is skipped
// when no write was answered.
func RunCheck(ctx context.Context, cfg CheckConfig) (*CheckResult, error) {
	cfg, err := checkConfig(cfg)
	if err != nil {
		return nil, err
	}
	r, err := newCheckRun(cfg)
	if err != nil {
		return nil, err
	}
	r.start = time.Now()
	r.firstSeq = max(uint64(r.start.UnixNano()), 1)
	r.seq.Store(r.firstSeq - 1)
	wctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	ended := make(chan struct{})
	go func() {
		<-wctx.Done()
		r.mu.Lock()
		r.end = time.Since(r.start)
		r.mu.Unlock()
		close(ended)
	}()
	var wg sync.WaitGroup
	for w := range cfg.Workers {
		wg.Go(func() { r.worker(wctx, cancel, w) })
	}
	for i := range cfg.Readers {
		wg.Go(func() { r.reader(wctx, i) })
	}
	wg.Wait()
	cancel()
	<-ended

	r.mu.Lock()
	fatal := r.fatal
	r.mu.Unlock()
	if fatal != nil {
		return nil, fatal
	}

	res := r.result()
	if res.Answered > 0 { // else there is nothing to prove, and maybe no export to read
		if ctx.Err() != nil {
			// ctx ended the write phase; the check still runs.
			ctx = context.WithoutCancel(ctx)
		}
		r.readBack(ctx, res, max(r.lastURL, 0))
	}
	return res, nil
}

// checkConfig fills in defaults and validates cfg.
func checkConfig(cfg CheckConfig) (CheckConfig, error) {
	d := CheckDefaults()
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = d.DialTimeout
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = d.ReadTimeout
	}
	if cfg.RetryPause <= 0 {
		cfg.RetryPause = d.RetryPause
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, a...)...)
	}
	switch {
	case len(cfg.URLs) == 0:
		return cfg, bad("no export URL")
	case cfg.Duration <= 0:
		return cfg, bad("--duration must be positive")
	case cfg.Workers <= 0 || cfg.Workers > 4096:
		return cfg, bad("--workers %d (want 1..4096)", cfg.Workers)
	case cfg.Blocks < int64(cfg.Workers) || cfg.Blocks > checkMaxBlocks:
		return cfg, bad("--blocks %d (want --workers (%d) .. %d)", cfg.Blocks, cfg.Workers, checkMaxBlocks)
	case cfg.FlushEvery < 0:
		return cfg, bad("--flush-every %d", cfg.FlushEvery)
	case !(cfg.FUA >= 0 && cfg.FUA <= 1): // NaN too
		return cfg, bad("--fua %g (want 0..1)", cfg.FUA)
	case cfg.Readers < 0 || cfg.Readers > 4096:
		return cfg, bad("--readers %d (want 0..4096)", cfg.Readers)
	case cfg.ReadPause < 0:
		return cfg, bad("negative read pause")
	case cfg.RequestTimeout < 0:
		return cfg, bad("negative request timeout")
	}
	return cfg, nil
}

// newCheckRun parses the targets of a checked cfg.
func newCheckRun(cfg CheckConfig) (*checkRun, error) {
	r := &checkRun{cfg: cfg, lastURL: -1, gapFrom: -1, gapTo: -1, newest: -1, end: -1}
	for _, u := range cfg.URLs {
		network, addr, export, err := ParseTarget(u)
		if err != nil {
			return nil, err
		}
		r.targets = append(r.targets, checkTarget{url: u, network: network, addr: addr, export: export})
		r.urls = append(r.urls, CheckURLStats{URL: u})
	}
	r.epochSeen = make([]bool, len(r.targets))
	if r.cfg.Seed == 0 {
		r.cfg.Seed = rand.Uint64() | 1
	}
	r.recs = make([]checkRec, cfg.Blocks)
	r.failedSeqs = map[int64][]uint64{}
	if cfg.Readers > 0 {
		r.seen = make([]checkSeen, cfg.Blocks)
	}
	return r, nil
}

// dial connects to target i and checks the export can hold the working set.
func (r *checkRun) dial(ctx context.Context, i int) (*nbd.Client, error) {
	t := r.targets[i]
	c, err := nbd.Dial(ctx, t.network, t.addr, nbd.ClientOptions{ExportName: t.export, Timeout: r.cfg.DialTimeout})
	if err != nil {
		return nil, err
	}
	if need := r.cfg.Blocks * CheckBlockSize; c.Size() < need {
		_ = c.Close()
		return nil, fmt.Errorf("%w: %s: export of %d bytes cannot hold --blocks %d (%d bytes)", ErrConfig, t.url, c.Size(), r.cfg.Blocks, need)
	}
	return c, nil
}

// guard runs one request on c, closing c (which fails the request) when
// ctx ends or the request timeout passes. Close lets a request already
// being answered finish, so a healthy export still answers it.
func (r *checkRun) guard(ctx context.Context, c *nbd.Client, f func() error) error {
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	if r.cfg.RequestTimeout > 0 {
		t := time.AfterFunc(r.cfg.RequestTimeout, func() { _ = c.Close() })
		defer t.Stop()
	}
	return f()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// worker writes its blocks (b ≡ w mod Workers) one at a time until ctx
// ends, moving to the next export whenever a dial or request fails.
func (r *checkRun) worker(ctx context.Context, cancel context.CancelFunc, w int) {
	cfg := &r.cfg
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(w)))
	workers := int64(cfg.Workers)
	owned := (cfg.Blocks - int64(w) + workers - 1) / workers
	buf := make([]byte, CheckBlockSize)
	var c *nbd.Client
	defer func() {
		if c != nil {
			_ = c.Close()
		}
	}()
	// pending: writes answered on c since its last answered FLUSH. A
	// FLUSH on another connection is not counted as covering them.
	var pending []unflushed
	url := 0
	next := func(err error) {
		r.failure(ctx, url, err)
		if c != nil {
			_ = c.Close()
			c = nil
		}
		pending = pending[:0]
		url = (url + 1) % len(r.targets)
		sleepCtx(ctx, cfg.RetryPause)
	}
	writes := 0
	for ctx.Err() == nil {
		if c == nil {
			nc, err := r.dial(ctx, url)
			if errors.Is(err, ErrConfig) {
				r.setFatal(err)
				cancel()
				return
			}
			if err != nil {
				next(err)
				continue
			}
			c = nc
			r.mu.Lock()
			r.urls[url].Dials++
			r.mu.Unlock()
		}
		r.gate.RLock()
		if ctx.Err() != nil {
			r.gate.RUnlock()
			break
		}
		b := rng.Int64N(owned)*workers + int64(w)
		off := b * CheckBlockSize
		seq := r.seq.Add(1)
		rec := &r.recs[b]
		r.recMu.Lock()
		rec.issued, rec.inflight = seq, true
		r.recMu.Unlock()
		MakeCheckBlock(buf, off, seq, rng)
		// Drawn only with a FUA fraction, so a seed without one writes
		// what it always wrote.
		var flags uint16
		if cfg.FUA > 0 && rng.Float64() < cfg.FUA && !r.volatile.Load() {
			flags = nbd.CmdFlagFUA
		}
		r.issued.Add(1)
		started := time.Since(r.start)
		cl := c
		err := r.guard(ctx, cl, func() error { return cl.WriteAtFlags(buf, off, flags) })
		if err != nil {
			r.recMu.Lock()
			rec.inflight = false
			r.writeDoneLocked(b, seq, false)
			r.recMu.Unlock()
		}
		if errors.Is(err, nbd.ErrUnsupported) && flags != 0 {
			r.gate.RUnlock()
			r.setFatal(fmt.Errorf("%w: --fua: %s does not support FUA", ErrConfig, r.targets[url].url))
			cancel()
			return
		}
		if err != nil {
			r.failed.Add(1)
			r.gate.RUnlock()
			next(fmt.Errorf("write: %w", err))
			continue
		}
		at := r.answer(url, started, b, seq, flags != 0)
		r.recMu.Lock()
		rec.answered, rec.url, rec.at, rec.inflight = seq, int32(url), at, false
		if flags != 0 {
			rec.durable, rec.durableAt, rec.durableFUA = seq, at, true
		}
		r.writeDoneLocked(b, seq, true)
		r.recMu.Unlock()
		if flags == 0 {
			pending = append(pending, unflushed{b, seq})
		}
		writes++
		if cfg.FlushEvery > 0 && writes%cfg.FlushEvery == 0 && !r.volatile.Load() {
			err := r.guard(ctx, cl, cl.Flush)
			if errors.Is(err, nbd.ErrUnsupported) {
				r.gate.RUnlock()
				r.setFatal(fmt.Errorf("%w: --flush-every: %s does not support FLUSH", ErrConfig, r.targets[url].url))
				cancel()
				return
			}
			if err != nil {
				r.gate.RUnlock()
				next(fmt.Errorf("flush: %w", err))
				continue
			}
			at := time.Since(r.start)
			// Every write in pending was answered before this FLUSH was
			// sent, on this connection: durable now (unless a later
			// version of the block already is).
			r.recMu.Lock()
			for _, u := range pending {
				if rec := &r.recs[u.block]; rec.durable < u.seq {
					rec.durable, rec.durableAt, rec.durableFUA = u.seq, at, false
				}
			}
			r.recMu.Unlock()
			pending = pending[:0]
			r.mu.Lock()
			r.flushes++
			r.urls[url].Flushes++
			r.mu.Unlock()
		}
		r.gate.RUnlock()
	}
}

func (r *checkRun) setFatal(err error) {
	r.mu.Lock()
	if r.fatal == nil {
		r.fatal = err
	}
	r.mu.Unlock()
}

// failure counts a failed dial or request of export i (not those caused
// by the end of the write phase).
func (r *checkRun) failure(ctx context.Context, i int, err error) {
	if ctx.Err() != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	u := &r.urls[i]
	u.Failures++
	if u.FirstError == "" {
		u.FirstError = fmt.Sprintf("at %.3fs: %v", time.Since(r.start).Seconds(), err)
	}
}

// answer records that export i answered the write of seq to block b issued
// at started, and returns when (since the start). The time is taken under
// the lock, so answers are recorded in time order.
func (r *checkRun) answer(i int, started time.Duration, b int64, seq uint64, fua bool) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	at := time.Since(r.start)
	r.noteAnswerLocked(i, started, at, b, seq)
	if fua {
		r.fuaWrites++
	}
	return at
}

func (r *checkRun) noteAnswerLocked(i int, started, at time.Duration, b int64, seq uint64) {
	if gap := at - r.lastAnswer; gap > r.gap {
		r.gap, r.gapAt, r.gapFrom, r.gapTo = gap, r.lastAnswer, r.lastURL, i
	}
	r.lastAnswer, r.lastURL = at, i
	r.answered++
	u := &r.urls[i]
	first := u.Answered == 0
	u.Answered++
	if first {
		u.FirstAnswer = at
	}
	u.LastAnswer = at
	if k := int(at / TimelineStep); k < 1<<20 {
		for len(u.Timeline) <= k {
			u.Timeline = append(u.Timeline, 0)
		}
		u.Timeline[k]++
	}
	for len(r.epochSeen) <= i {
		r.epochSeen = append(r.epochSeen, false)
	}
	seen := r.epochSeen[i]
	r.epochSeen[i] = true
	switch {
	case !seen && i != r.newest:
		if r.newest >= 0 {
			r.switches++
		}
		r.newest, r.newestAt = i, at
	case i == r.newest:
	case started > r.newestAt:
		r.oldAnswers++
		if len(r.oldDetails) < checkMaxFailures {
			r.oldDetails = append(r.oldDetails, fmt.Sprintf(
				"%s answered %s (block %d) at %.3fs, issued at %.3fs, after %s first answered at %.3fs",
				r.urls[i].URL, r.writeName(seq), b, at.Seconds(), started.Seconds(), r.urls[r.newest].URL, r.newestAt.Seconds()))
		}
	default:
		r.late++
	}
}

// result builds the write-phase part of the result.
func (r *checkRun) result() *CheckResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	// The time between the last answer and the end of the write phase is
	// a gap too: an export that never came back.
	if tail := r.end - r.lastAnswer; tail > r.gap {
		r.gap, r.gapAt, r.gapFrom, r.gapTo = tail, r.lastAnswer, r.lastURL, -1
	}
	name := func(i int) string {
		if i < 0 {
			return ""
		}
		return r.targets[i].url
	}
	var durable int64
	r.recMu.Lock()
	for i := range r.recs {
		if r.recs[i].durable != 0 {
			durable++
		}
	}
	r.recMu.Unlock()
	res := &CheckResult{
		Durable:           durable,
		URLs:              append([]string(nil), r.cfg.URLs...),
		Workers:           r.cfg.Workers,
		Blocks:            r.cfg.Blocks,
		BlockSize:         CheckBlockSize,
		FlushEvery:        r.cfg.FlushEvery,
		FUA:               r.cfg.FUA,
		Seed:              r.cfg.Seed,
		Start:             r.start,
		Duration:          r.end,
		FirstSeq:          r.firstSeq,
		Issued:            r.issued.Load(),
		Answered:          r.answered,
		Failed:            r.failed.Load(),
		Flushes:           r.flushes,
		FUAWrites:         r.fuaWrites,
		Switches:          r.switches,
		PerURL:            append([]CheckURLStats(nil), r.urls...),
		LongestGap:        r.gap,
		LongestGapAt:      r.gapAt,
		LongestGapStart:   r.start.Add(r.gapAt),
		LongestGapFrom:    name(r.gapFrom),
		LongestGapTo:      name(r.gapTo),
		OldPrimaryAnswers: r.oldAnswers,
		OldPrimaryDetails: append([]string(nil), r.oldDetails...),
		LateAnswers:       r.late,
	}
	r.fillReads(res)
	return res
}

// readBack reads every block from export url (the one that answered
// last; the others in turn when it fails) and checks it.
func (r *checkRun) readBack(ctx context.Context, res *CheckResult, url int) {
	buf := make([]byte, checkReadChunk*CheckBlockSize)
	var c *nbd.Client
	defer func() {
		if c != nil {
			_ = c.Close()
		}
	}()
	var lastErr error
	progress := time.Now()
	next := func(err error) {
		lastErr = err
		if c != nil {
			_ = c.Close()
			c = nil
		}
		url = (url + 1) % len(r.targets)
		sleepCtx(ctx, r.cfg.RetryPause)
	}
	for b := int64(0); b < r.cfg.Blocks; {
		if ctx.Err() != nil {
			res.ReadError = fmt.Sprintf("interrupted at block %d: %v", b, ctx.Err())
			return
		}
		if c == nil {
			if time.Since(progress) > r.cfg.ReadTimeout {
				res.ReadError = fmt.Sprintf("gave up at block %d after %s without progress: %v", b, r.cfg.ReadTimeout, lastErr)
				return
			}
			nc, err := r.dial(ctx, url)
			if err != nil {
				next(fmt.Errorf("%s: %w", r.targets[url].url, err))
				continue
			}
			c = nc
			if n := len(res.ReadFrom); n == 0 || res.ReadFrom[n-1] != r.targets[url].url {
				res.ReadFrom = append(res.ReadFrom, r.targets[url].url)
			}
		}
		k := min(checkReadChunk, r.cfg.Blocks-b)
		p := buf[:k*CheckBlockSize]
		cl := c
		if err := r.guard(ctx, cl, func() error { _, err := cl.ReadAt(p, b*CheckBlockSize); return err }); err != nil {
			next(fmt.Errorf("%s: read: %w", r.targets[url].url, err))
			continue
		}
		r.recMu.Lock()
		for j := range k {
			r.checkBlock(res, b+j, p[j*CheckBlockSize:(j+1)*CheckBlockSize])
		}
		r.recMu.Unlock()
		b += k
		progress = time.Now()
	}
}

var zeroBlock [CheckBlockSize]byte

// writeName names a sequence for people: "write #N" counting from the
// first write of the run, or the raw sequence of an earlier run.
func (r *checkRun) writeName(seq uint64) string {
	if seq < r.firstSeq {
		return fmt.Sprintf("seq %d (from before this run)", seq)
	}
	return fmt.Sprintf("write #%d", seq-r.firstSeq+1)
}

// checkBlock checks block b's content against its bookkeeping: it must
// hold a version in [answered, issued]; with nothing answered it may also
// hold zeroes (the write never landed). A lost write is also a lost
// durable one when the block holds something older than its last durable
// version.
func (r *checkRun) checkBlock(res *CheckResult, b int64, data []byte) {
	res.BlocksRead++
	rec := r.recs[b]
	off := b * CheckBlockSize
	seq, ok := ParseCheckBlock(data, off)
	zero := bytes.Equal(data, zeroBlock[:])
	f := CheckFailure{Block: b, Offset: off, Found: seq, FoundValid: ok, Zero: zero, Answered: rec.answered, Issued: rec.issued,
		Durable: rec.durable}
	if rec.answered != 0 {
		f.AnsweredBy = r.targets[rec.url].url
		f.AnsweredAt = rec.at
	}
	answeredBy := func() string {
		s := fmt.Sprintf("%s was answered by %s at %.3fs", r.writeName(rec.answered), f.AnsweredBy, f.AnsweredAt.Seconds())
		switch {
		case rec.durable == 0:
			s += "; no durable version"
		case rec.durable == rec.answered && rec.durableFUA:
			s += " with FUA (durable)"
		case rec.durable == rec.answered:
			s += fmt.Sprintf(" and flushed at %.3fs (durable)", rec.durableAt.Seconds())
		default:
			how := "flushed"
			if rec.durableFUA {
				how = "FUA"
			}
			s += fmt.Sprintf("; the last durable one is %s (%s at %.3fs)", r.writeName(rec.durable), how, rec.durableAt.Seconds())
		}
		return s
	}
	switch {
	case rec.issued == 0:
		// Never written in this run: whatever was there before may stay,
		// but not a block of this run.
		res.Untouched++
		if !ok || seq < res.FirstSeq {
			return
		}
		f.Kind, f.Detail = "corrupt", fmt.Sprintf("holds %s, but this run never wrote this block (another writer?)", r.writeName(seq))
	case ok && seq >= rec.answered && seq <= rec.issued:
		return
	case !ok && zero && rec.answered == 0:
		return // the only write(s) never got an answer and never landed
	case ok && seq < rec.answered:
		f.Kind, f.Detail = "lost", fmt.Sprintf("holds %s, older than the answered one: %s", r.writeName(seq), answeredBy())
		f.DurableLost = seq < rec.durable
	case ok: // seq > issued
		f.Kind, f.Detail = "corrupt", fmt.Sprintf("holds %s, newer than the last one issued, %s (another writer?)", r.writeName(seq), r.writeName(rec.issued))
	case rec.answered != 0 && zero:
		f.Kind, f.Detail = "lost", "holds zeroes: "+answeredBy()
		f.DurableLost = rec.durable != 0
	case rec.answered != 0:
		f.Kind, f.Detail = "lost", "fails its checksum or offset (torn, corrupt or misdirected): "+answeredBy()
		f.DurableLost = rec.durable != 0
	default:
		f.Kind, f.Detail = "corrupt", fmt.Sprintf("fails its checksum or offset and is not zeroes; no write to it was answered (last issued: %s)", r.writeName(rec.issued))
	}
	if f.Kind == "lost" {
		res.Lost++
		if f.DurableLost {
			res.LostDurable++
		}
	} else {
		res.Corrupt++
	}
	if len(res.Failures) < checkMaxFailures {
		res.Failures = append(res.Failures, f)
	}
}

// Checker is a check that writes until Stop and can be checked at any
// point in between (the chaos harness, `twinbd chaos`): Pause waits for
// the writes in flight and holds new ones back, Verify reads every block
// back and checks it against everything answered since the start, Resume
// lets the writers go on. Its bookkeeping spans the whole run, so a write
// answered early and lost later is still found.
type Checker struct {
	r      *checkRun
	cancel context.CancelFunc
	wg     sync.WaitGroup
	paused bool
}

// StartChecker starts cfg's writers (cfg.Duration is ignored: they run
// until Stop).
func StartChecker(ctx context.Context, cfg CheckConfig) (*Checker, error) {
	cfg.Duration = time.Hour // validated, not used
	cfg, err := checkConfig(cfg)
	if err != nil {
		return nil, err
	}
	r, err := newCheckRun(cfg)
	if err != nil {
		return nil, err
	}
	r.start = time.Now()
	r.firstSeq = max(uint64(r.start.UnixNano()), 1)
	r.seq.Store(r.firstSeq - 1)
	wctx, cancel := context.WithCancel(ctx)
	k := &Checker{r: r, cancel: cancel}
	for w := range cfg.Workers {
		k.wg.Go(func() { r.worker(wctx, cancel, w) })
	}
	for i := range cfg.Readers {
		k.wg.Go(func() { r.reader(wctx, i) })
	}
	return k, nil
}

// Start is when the writers started (the origin of the result's times).
func (k *Checker) Start() time.Time { return k.r.start }

// Pause returns once no write is in flight; no new one starts until
// Resume. A write to an export that does not answer holds it up to
// RequestTimeout.
func (k *Checker) Pause() {
	if !k.paused {
		k.r.gate.Lock()
		k.paused = true
	}
}

// SetVolatile(true) makes the writers send no FLUSH and no FUA until
// SetVolatile(false): a window in which every answered write is volatile
// on the disks (before a simulated power failure, so that it has
// something to drop). The FUA draws still happen, so the write pattern
// stays the seed's.
func (k *Checker) SetVolatile(on bool) { k.r.volatile.Store(on) }

// Resume lets the writers go on after Pause.
func (k *Checker) Resume() {
	if k.paused {
		k.paused = false
		k.r.gate.Unlock()
	}
}

// NewEpoch (while paused) forgets which exports answered so far: the next
// export to answer first is a new Primary, even one that answered in an
// earlier epoch (a failover back). Answers from another export to writes
// issued after that still count as two writers.
func (k *Checker) NewEpoch() {
	k.r.mu.Lock()
	clear(k.r.epochSeen)
	k.r.mu.Unlock()
}

// Verify (while paused) reads every block back, starting with export
// prefer (an index into cfg.URLs; -1: the one that answered last), and
// checks it. The result's counters are since the start.
func (k *Checker) Verify(ctx context.Context, prefer int) (*CheckResult, error) {
	r := k.r
	r.mu.Lock()
	fatal := r.fatal
	r.mu.Unlock()
	if fatal != nil {
		return nil, fatal
	}
	res := r.result()
	res.Duration = time.Since(r.start)
	if res.Answered == 0 {
		return res, nil
	}
	if prefer < 0 || prefer >= len(r.targets) {
		r.mu.Lock()
		prefer = max(r.lastURL, 0)
		r.mu.Unlock()
	}
	r.readBack(ctx, res, prefer)
	return res, nil
}

// Stop ends the writers (the ones in flight fail or finish).
func (k *Checker) Stop() {
	k.Resume()
	k.cancel()
	k.wg.Wait()
}
