package replication

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twinbd/twinbd/bitmap"
	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/device"
	"github.com/twinbd/twinbd/failover"
	"github.com/twinbd/twinbd/nbd"
)

// Sentinel errors; the daemon maps them to drbdadm-style exit codes.
var (
	ErrNoUpToDate = errors.New("no UpToDate data")
	ErrInUse      = errors.New("export in use")
	ErrNotPrimary = errors.New("not Primary")
	ErrDown       = errors.New("resource is down")
	ErrMetadata   = errors.New("metadata refused")
)

// Options configure a resource on this node.
type Options struct {
	Res    *config.Resource
	Node   string // this node's `on` name
	Logger *slog.Logger
	// Transport, if set, replaces the TCP peer link (simulation tests).
	Transport Transport
	// Disk, if set, is the backing device instead of the host's `disk`
	// (with internal metadata); simulation tests use crashable memory.
	Disk device.Device
	// Handler, if set, runs a `handlers { }` command (the daemon passes
	// failover.RunHandler with DRBD's environment); nil only logs.
	Handler func(name, command string)
	// FencePeer, if set, runs the fence-peer handler synchronously and
	// returns its exit code (DRBD's 3-7 meanings, failover.InterpretFencePeer);
	// err when it could not run or timed out. nil: fencing by handler is
	// unavailable and only the witness can outdate the peer.
	FencePeer func(ctx context.Context, command string) (exitCode int, err error)
	// Services, if set, is the promotion start list (drbd-reactor's
	// promoter): Start runs after this node became Primary and its export
	// listens; Stop runs before it demotes. A failed Start demotes the
	// node again (and releases the witness lease, so the peer may take
	// over).
	Services Services
	// FaultInjection wraps the backing disk in a device.Faulty that
	// DiskFault and PowerFail control (tests, `twinbd debug disk-fault`).
	FaultInjection bool
	// TestOnlyPromoteStale breaks invariant 6 on purpose: automatic
	// promotion ignores this node's own Outdated/Inconsistent state (the
	// chaos harness's proof that it catches a stale promotion). Tests only.
	TestOnlyPromoteStale bool
}

// Services is what runs on top of the device while this node is Primary.
type Services interface {
	// Start brings the services up in order; on error, whatever it
	// started is stopped again before it returns.
	Start(ctx context.Context) error
	// Stop brings them down in reverse order; an error means the
	// configured escalation ran (or none was configured) and the device
	// may still be in use.
	Stop(ctx context.Context) error
}

// linkState is what status shows about the peer link; guarded by r.mu
// except the atomic counters.
type linkState struct {
	conn       ConnState
	repl       ReplState
	peerRole   Role
	peerDisk   DiskState
	reason     string // why the link is not up (last refusal or error)
	standAlone bool   // stay StandAlone until Connect

	syncTotal int64 // bits out of sync when the resync started
	syncStart time.Time
	peerSize  int64 // the peer's size at the last state exchange (resize.go)

	syncedBytes atomic.Int64 // resynced bytes (either side) in this resync
	resyncWire  atomic.Int64 // resync bytes put on the wire (source)
	sentBytes   atomic.Int64 // application bytes sent to the peer
	recvBytes   atomic.Int64 // bytes received on the data channel
	verifyDone  atomic.Int64 // runs compared by the running verify
}

// Resource is one resource brought up on this node.
type Resource struct {
	res   *config.Resource
	host  *config.Host
	peers []*config.Host
	log   *slog.Logger
	bk    atomic.Pointer[backing] // the local disk (attach swaps it)
	size  atomic.Int64            // the exported size, read on every I/O; an online resize grows it (resize.go)

	writable atomic.Bool // true only while Primary and serving

	// local disk failure (disk.go)
	detached      atomic.Bool // the disk failed or was detached: Diskless
	partial       atomic.Bool // Primary attaching a new disk: out-of-sync blocks are read from the peer
	ioErrorCalled atomic.Bool // local-io-error ran for this disk (call-local-io-error)

	// statistics (bytes)
	readBytes, writtenBytes atomic.Int64
	pending                 atomic.Int64
	latLocal, latPeer       latencyHist

	// replication
	bm     *bitmap.Bitmap // out-of-sync blocks; nil without a peer
	lock   rangeLock      // orders overlapping writes (invariant 3)
	peer   *config.Host   // nil without a peer
	tr     Transport      // nil without a peer
	sess   atomic.Pointer[session]
	handle func(name, command string)

	// failover (quorum.go)
	fo            foState
	fencePeerHook func(ctx context.Context, command string) (int, error)
	services      Services
	bg            sync.WaitGroup // witness and auto-failover loops
	testOnlyStale bool           // Options.TestOnlyPromoteStale

	stopPeer context.CancelFunc
	peerDone chan struct{}

	mu            sync.Mutex // guards role, disk, server, ln, down, link and the fields below
	role          Role
	disk          DiskState
	diskReason    string // why the disk is Failed/Diskless
	server        *nbd.Server
	ln            net.Listener
	serveWG       sync.WaitGroup
	down          bool
	link          linkState
	connectCh     chan struct{}
	discardMyData bool   // connect --discard-my-data, until the next handshake
	disconnectReq bool   // the operator said disconnect
	handshaking   func() // aborts a handshake in progress

	resizeMu sync.Mutex // one resize at a time (resize.go)
	// shrinkTo is the size a shrink lowered the exported size to while
	// this node's metadata still has the old one (shrink.go); 0: none.
	shrinkTo atomic.Int64
}

// backing is the local disk: its data area, metadata and activity log.
// It is replaced whole when a new disk is attached, and read through r.b()
// without a lock.
type backing struct {
	data   device.Device     // the replicated data area
	local  *nbd.DeviceExport // NBD operations on data
	closer []device.Device
	faulty *device.Faulty // the backing disk's fault injector, or nil
	meta   *bitmap.Meta
	al     *bitmap.ActivityLog // nil without a peer
}

// b is the local disk now.
func (r *Resource) b() *backing { return r.bk.Load() }

// Up opens the local disk and its metadata and refuses a disk whose metadata
// is missing, corrupt, or belongs to another resource, node or size.
func Up(opts Options) (*Resource, error) {
	host, err := opts.Res.Host(opts.Node)
	if err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("resource", opts.Res.Name)
	data, md, closers, lay, faulty, err := openBacking(opts.Res, host, opts.Disk, opts.FaultInjection, true)
	if err != nil {
		return nil, err
	}
	lay = locateMetadata(log, data, md, lay) // after a resize (resize.go)
	fail := func(err error) (*Resource, error) {
		for _, c := range closers {
			c.Close()
		}
		return nil, err
	}
	meta, err := bitmap.Open(md, lay)
	if err != nil {
		return fail(fmt.Errorf("%w: %s: %w", ErrMetadata, metaHint(opts.Res.Name, host, err), err))
	}
	if err := meta.Check(opts.Res.Name, host.NodeID, lay.DataSize); err != nil {
		return fail(fmt.Errorf("%w: %s: %w", ErrMetadata, host.Disk, err))
	}
	size := lay.DataSize
	if s := opts.Res.Disk.Size; s > 0 {
		if s > size {
			return fail(fmt.Errorf("%w: disk size %d in the resource file exceeds the %d bytes available on %s", ErrMetadata, s, size, host.Disk))
		}
		size = s
	}
	r := &Resource{
		res: opts.Res, host: host, peers: opts.Res.Peers(opts.Node), log: log,
		role: RoleSecondary,
	}
	r.size.Store(size)
	r.bk.Store(&backing{data: data, local: nbd.NewDeviceExport(data, false), closer: closers, meta: meta, faulty: faulty})
	sb := meta.Superblock()
	r.disk = diskStateFromFlags(sb.Flags)
	r.handle = opts.Handler
	r.fencePeerHook = opts.FencePeer
	r.services = opts.Services
	r.testOnlyStale = opts.TestOnlyPromoteStale
	r.fo.epoch = time.Now()
	r.fo.renewNow = make(chan struct{}, 1)
	resumed := make(chan struct{})
	r.fo.resumed.Store(&resumed)
	r.link = linkState{conn: ConnStandAlone, peerRole: RoleUnknown, peerDisk: DiskDUnknown}
	if len(r.peers) > 1 {
		return fail(fmt.Errorf("replication: %s: %d peers; twinbd replicates between two nodes", opts.Res.Name, len(r.peers)))
	}
	if len(r.peers) == 1 {
		if err := r.openReplication(opts, lay); err != nil {
			return fail(err)
		}
	}
	if sb.Flags&bitmap.FlagPrimaryInd != 0 {
		// We were Primary and did not demote cleanly: remember it (DRBD's
		// crashed-primary), which later decides resync after a crash.
		if err := meta.Update(func(s *bitmap.Superblock) {
			s.Flags = s.Flags&^bitmap.FlagPrimaryInd | bitmap.FlagCrashedPrimary
		}); err != nil {
			return fail(fmt.Errorf("replication: %s: record crashed primary: %w", opts.Res.Name, err))
		}
		log.Warn("node was Primary when it stopped without demoting (crashed primary)")
		// Its services may still run (the daemon alone died): stop them
		// before anything else, so a virtual IP or a mount on a dead device
		// does not outlive the role.
		if c, ok := opts.Services.(interface{ Cleanup(context.Context) error }); ok {
			if err := c.Cleanup(context.Background()); err != nil {
				log.Error("stopping the start list of the crashed Primary", "err", err)
			}
		}
	}
	log.Info("resource up", "disk", r.disk, "size", size, "backing", host.Disk, "backing-size", closers[0].Size(), "meta", host.MetaDisk)
	if r.peer != nil {
		ctx, cancel := context.WithCancel(context.Background())
		r.stopPeer = cancel
		r.peerDone = make(chan struct{})
		r.link.conn = ConnConnecting
		go r.runPeer(ctx)
		if opts.Res.Witness != "" {
			r.fo.wc = &failover.WitnessClient{
				Addr: opts.Res.Witness, Resource: opts.Res.Name, Node: host.NodeID,
				Secret: opts.Res.Net.SharedSecret, Timeout: r.renewEvery(),
			}
			r.bg.Go(func() { r.runWitness(ctx) })
		}
		if opts.Res.Options.AutoFailover {
			r.bg.Go(func() { r.runAutoFailover(ctx) })
		}
		if r.quorumEnforced() {
			r.bg.Go(func() { r.runQuorumWatch(ctx) })
		}
	}
	return r, nil
}

// openReplication loads the bitmap and the activity log. Extents the
// activity log still holds (writes that may have been in flight when a
// Primary stopped) are marked out of sync and written to the bitmap before
// anything else happens.
func (r *Resource) openReplication(opts Options, lay bitmap.Layout) error {
	r.peer = r.peers[0]
	bm, err := r.b().meta.ReadBitmap()
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrMetadata, r.host.Disk, err)
	}
	r.bm = bm
	al, err := r.openAL(r.b(), lay)
	if err != nil {
		return err
	}
	if rec := al.Recovered(); len(rec) > 0 {
		es := al.ExtentSize()
		for _, e := range rec {
			bm.SetRange(e*es, es)
		}
		if err := r.b().meta.WriteBitmap(bm); err != nil {
			return fmt.Errorf("replication: %s: write bitmap: %w", r.res.Name, err)
		}
		r.log.Warn("activity log held extents: marked out of sync", "extents", len(rec), "out-of-sync", bm.Bytes())
	}
	r.tr = opts.Transport
	if r.tr == nil {
		r.tr = NewTCPTransport(r.host.Address, r.peer.Address, TCPOptions{
			DialTimeout: r.res.Net.ConnectInt,
			SndBuf:      int(r.res.Net.SndBufSize), RcvBuf: int(r.res.Net.RcvBufSize),
		})
	}
	r.connectCh = make(chan struct{}, 1)
	return nil
}

// openAL opens the activity log on bk's metadata device and sets bk.al; an
// extent it evicts has its bits written to bk's bitmap area.
func (r *Resource) openAL(bk *backing, lay bitmap.Layout) (*bitmap.ActivityLog, error) {
	ext := r.res.Disk.ALExtents
	if ext <= 0 || ext > bitmap.MaxALExtents {
		if ext > bitmap.MaxALExtents {
			r.log.Warn("al-extents larger than one activity-log transaction holds; using the maximum", "al-extents", ext, "max", bitmap.MaxALExtents)
		}
		ext = bitmap.MaxALExtents
	}
	md := bk.closer[0]
	if len(bk.closer) > 1 {
		md = bk.closer[1]
	}
	meta := bk.meta
	al, err := bitmap.OpenActivityLog(md, lay, 0, ext, bitmap.ALOptions{
		OnEvict: func(e int64) error {
			es := int64(bitmap.DefaultExtentSize)
			return meta.WriteBitmapRange(r.bm, e*es, es)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %s: activity log: %w", ErrMetadata, r.host.Disk, err)
	}
	bk.al = al
	return al, nil
}

// runHandler runs a configured handler (nothing if command is empty).
func (r *Resource) runHandler(name, command string) {
	if command == "" {
		return
	}
	if r.handle == nil {
		r.log.Info("handler not run (no handler runner)", "handler", name)
		return
	}
	r.handle(name, command)
}

func (r *Resource) maxEpoch() int {
	if n := r.res.Net.MaxEpochSize; n > 0 {
		return n
	}
	return 2048
}

func (r *Resource) setDisk(d DiskState) {
	r.mu.Lock()
	r.disk = d
	r.mu.Unlock()
}

// ReplState is the replication state with the peer.
func (r *Resource) ReplState() ReplState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.link.repl
}

// markUpToDate records that the local data is current (connected to a
// peer at the same generation, or a finished resync).
func (r *Resource) markUpToDate() error {
	if err := r.b().meta.Update(func(sb *bitmap.Superblock) {
		sb.Flags |= bitmap.FlagConsistent | bitmap.FlagWasUpToDate
		sb.Flags &^= bitmap.FlagOutdated
	}); err != nil {
		return fmt.Errorf("replication: %s: write metadata: %w", r.res.Name, err)
	}
	r.setDisk(DiskUpToDate)
	return nil
}

// openBacking opens the backing disk (and external metadata device) and
// computes the metadata layout for the largest data area. inject wraps the
// backing disk in a device.Faulty. With fit (up), an external metadata
// device too small for all of the data device gives the layout for what it
// holds (Locate then reads the recorded size).
func openBacking(res *config.Resource, host *config.Host, dev device.Device, inject, fit bool) (data, md device.Device, closers []device.Device, lay bitmap.Layout, faulty *device.Faulty, err error) {
	gran := res.Disk.BitmapGranularity
	if gran == 0 {
		gran = bitmap.DefaultGranularity
	}
	var backing device.Device = dev
	if dev == nil {
		f, err := device.OpenFile(host.Disk)
		if err != nil {
			return nil, nil, nil, lay, nil, fmt.Errorf("replication: backing disk: %w", err)
		}
		backing = f
	} else if host.MetaDisk != "internal" {
		return nil, nil, nil, lay, nil, fmt.Errorf("replication: an injected disk needs internal metadata")
	}
	if inject {
		faulty = device.NewFaulty(backing)
		backing = faulty
	}
	closers = []device.Device{backing}
	if host.MetaDisk == "internal" {
		lay, err = bitmap.InternalLayout(backing.Size(), gran)
		md = backing
	} else {
		var mf *device.File
		mf, err = device.OpenFile(host.MetaDisk)
		if err == nil {
			closers = append(closers, mf)
			md = mf
			lay, err = bitmap.ExternalLayout(backing.Size(), mf.Size(), gran)
			if fit && errors.Is(err, bitmap.ErrTooSmall) {
				lay, err = bitmap.ExternalFit(backing.Size(), mf.Size(), gran)
			}
		}
	}
	if err == nil {
		data, err = device.NewWindow(backing, lay.DataSize)
	}
	if err != nil {
		for _, c := range closers {
			c.Close()
		}
		return nil, nil, nil, lay, nil, fmt.Errorf("replication: %s: %w", host.Disk, err)
	}
	return data, md, closers, lay, faulty, nil
}

func metaHint(res string, host *config.Host, err error) string {
	switch {
	case errors.Is(err, bitmap.ErrNoMetadata):
		hint := fmt.Sprintf("no twinbd metadata on %s (meta-disk %s): run `twinbd create-md %s` first", host.Disk, host.MetaDisk, res)
		if host.MetaDisk == "internal" {
			hint += fmt.Sprintf("; if %s was grown while the resource was not up (or this node stopped during `twinbd resize` before it moved the metadata), the internal metadata is still at the old end: restore the old size (the last \"resource up\" log line shows backing-size), bring the resource up, then grow the device while it is up and run `twinbd resize %s` (docs/operations.md, \"Growing the device\"). If the old size is unknown, `twinbd create-md --force %s` and a full sync from the peer recover it", host.Disk, res, res)
		}
		return hint
	case errors.Is(err, bitmap.ErrCorrupt):
		return fmt.Sprintf("metadata on %s is corrupt: restore it, or run `twinbd create-md --force %s` (its data generation is forgotten and a full sync follows)", host.Disk, res)
	case errors.Is(err, bitmap.ErrWrongSize):
		return fmt.Sprintf("metadata on %s does not match this device or the resource file (a device smaller than the metadata says: restore its size (twinbd never shrinks a backing device: `resize --size S --force` shrinks the replicated device, its metadata stays where it is); or a changed bitmap-granularity)", host.Disk)
	}
	return fmt.Sprintf("cannot read metadata on %s", host.Disk)
}

// diskStateFromFlags derives the disk state at attach time. With no peer
// connected a disk that was UpToDate is only known to be Consistent: the
// peer may have moved on meanwhile.
func diskStateFromFlags(f bitmap.Flags) DiskState {
	switch {
	case f&bitmap.FlagConsistent == 0:
		return DiskInconsistent
	case f&bitmap.FlagOutdated != 0:
		return DiskOutdated
	case f&bitmap.FlagWasUpToDate != 0:
		return DiskConsistent
	}
	return DiskOutdated
}

// Name is the resource name.
func (r *Resource) Name() string { return r.res.Name }

// Config is the resource's parsed configuration.
func (r *Resource) Config() *config.Resource { return r.res }

// Role is the current role.
func (r *Resource) Role() Role {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.role
}

// DiskState is the local disk state.
func (r *Resource) DiskState() DiskState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.disk
}

// Primary promotes this node and starts serving the NBD export. Without
// force it needs UpToDate data; a Consistent disk counts as UpToDate only
// when the resource has no peer (it is then the only copy). With force an
// Inconsistent, Outdated or Consistent disk is declared UpToDate and a new
// data generation starts: that is how the initial sync source is chosen,
// and how an operator recovers from losing the other node.
func (r *Resource) Primary(force bool) error {
	return r.promote(context.Background(), force, false)
}

// promote is Primary; auto is an automatic promotion (runAutoFailover):
// the peer was Primary and vanished while this node's data was UpToDate.
//
// Without a connected peer and without force, a resource with a witness
// needs the witness's grant (which also records the peer Outdated), and a
// resource with `quorum majority` but no witness has no quorum at all.
// Then the start list (Services) runs; if it fails, the node demotes.
func (r *Resource) promote(ctx context.Context, force, auto bool) error {
	r.mu.Lock()
	if r.down {
		r.mu.Unlock()
		return ErrDown
	}
	if r.role == RolePrimary {
		r.mu.Unlock()
		return nil
	}
	disconnected := r.peer != nil && r.sess.Load() == nil
	r.mu.Unlock()
	granted := false
	if disconnected && !force {
		switch {
		case r.fo.wc != nil:
			if err := r.askWitnessPromote(ctx); err != nil {
				return fmt.Errorf("%w; the peer is not connected. If the peer's data is gone, `twinbd primary --force %s` promotes anyway (and risks a split brain if the peer is alive)", err, r.res.Name)
			}
			granted = true
		case r.quorumEnforced():
			return fmt.Errorf("%w: the peer is not connected and no witness is configured (quorum majority of 2 needs both nodes); `twinbd primary --force %s` promotes anyway if the peer is gone", ErrNoQuorum, r.res.Name)
		}
	}
	if force && disconnected {
		r.forceWitness()
	}
	if err := r.promoteLocked(force, auto || granted); err != nil {
		if granted {
			r.releaseWitness()
		}
		return err
	}
	if disconnected && !force && r.fenceRequired() {
		r.startFencing(granted, auto)
	}
	if r.services != nil {
		if err := r.services.Start(ctx); err != nil {
			r.log.Error("services did not start: demoting and handing over to the peer", "err", err)
			r.fo.startFailedAt.Store(r.stamp())
			if derr := r.demote(true, true); derr != nil {
				r.log.Error("demotion after failed start", "err", derr)
			} else if s := r.sess.Load(); s != nil {
				s.sendMeta(r.myState(StateHandover))
			}
			return fmt.Errorf("replication: %s: promoted, but the start list failed, so it demoted again (a connected peer with auto-failover takes over): %w", r.res.Name, err)
		}
	}
	return nil
}

// promoteLocked takes r.mu and does the promotion; known: the data is
// known current though only Consistent (witness grant, or automatic
// failover from an UpToDate state).
func (r *Resource) promoteLocked(force, known bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return ErrDown
	}
	if r.role == RolePrimary {
		return nil
	}
	addr := r.res.ExportFor(r.host)
	if addr == "" {
		return fmt.Errorf("replication: %s: no `export IP:PORT;` for node %s or the resource: nowhere to serve NBD", r.res.Name, r.host.Name)
	}
	if r.detached.Load() {
		// Even forced: a Diskless node has no data to declare UpToDate.
		return fmt.Errorf("%w: %s has no disk (Diskless: %s); replace it, run `twinbd create-md %s` and `twinbd attach %s`, or promote the peer", ErrNoUpToDate, r.res.Name, r.diskReason, r.res.Name, r.res.Name)
	}
	sess := r.sess.Load()
	if sess != nil && r.link.peerRole == RolePrimary {
		return fmt.Errorf("%w: the peer %s is Primary; demote it first (twinbd secondary %s on %s): two Primaries are never allowed", ErrInUse, r.peer.Name, r.res.Name, r.peer.Name)
	}
	upToDate := r.disk == DiskUpToDate || (r.disk == DiskConsistent && (len(r.peers) == 0 || known))
	if r.link.repl == ReplSyncTarget {
		return fmt.Errorf("%w: local disk is SyncTarget (Inconsistent) of a running resync; wait for it (twinbd wait-sync %s)", ErrNoUpToDate, r.res.Name)
	}
	if !upToDate && !force {
		return fmt.Errorf("%w: local disk is %s; promote it anyway with `twinbd primary --force %s` only if the peer's data is gone or this node is the initial sync source", ErrNoUpToDate, r.disk, r.res.Name)
	}
	// Bind the export first: a port in use fails the promotion before any
	// metadata changes. Nothing is served until the metadata is durable.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("replication: %s: cannot serve NBD on %s: %w", r.res.Name, addr, err)
	}
	if !upToDate {
		r.log.Warn("forced promotion: local data declared UpToDate", "was", r.disk)
	}
	// The primary indicator and the new generation are durable before the
	// first write is served. No peer is connected (there is no peer link
	// yet), and DRBD starts a new current UUID whenever a disconnected node
	// is promoted: the old one becomes the bitmap UUID, which is how a peer
	// still at the old generation is later recognised as behind.
	// Connected to a peer that holds the same UpToDate data, the
	// generation does not change (DRBD); a forced promotion over a peer
	// that is not UpToDate starts a generation and reconnects, so the
	// handshake starts the sync towards the peer.
	//
	// Without a peer, a bitmap UUID that is already set means this node
	// already left the peer's generation behind (the peer is at the bitmap
	// UUID and the bitmap holds every change since): keep it, as DRBD's
	// promote does, so the next connect is a bitmap resync however often
	// this node restarts and is promoted meanwhile. Rotating again would
	// push the peer's generation down the two-slot history and end in a
	// full sync, then "unrelated data" (found by TestPairRandomFaults).
	// Inconsistent or Outdated data declared UpToDate by --force always
	// starts one (it may be older than what the peer holds).
	sb := r.b().meta.Superblock()
	stale := r.disk == DiskInconsistent || r.disk == DiskOutdated || sb.Current == 0
	rotate := stale || (sess == nil && sb.Bitmap == 0) || (sess != nil && !upToDate)
	if err := r.b().meta.Update(func(s *bitmap.Superblock) {
		s.Flags |= bitmap.FlagConsistent | bitmap.FlagWasUpToDate | bitmap.FlagPrimaryInd
		s.Flags &^= bitmap.FlagOutdated | bitmap.FlagCrashedPrimary
		if rotate {
			g := NewCurrentUUID(Generation{Current: s.Current, Bitmap: s.Bitmap, History: s.History}, randomUUID())
			s.Current, s.Bitmap, s.History = g.Current, g.Bitmap, g.History
		}
	}); err != nil {
		ln.Close()
		return fmt.Errorf("replication: %s: write metadata: %w", r.res.Name, err)
	}
	r.disk = DiskUpToDate
	r.server = nbd.NewServer(nbd.ServerConfig{
		Exports:   nbd.StaticResolver{r.res.Name: r},
		Logger:    r.log,
		AllowList: r.res.NBD.Allow,
		TLS:       nbd.TLSMode(r.res.NBD.TLS),
		TLSCert:   r.res.NBD.TLSCert,
		TLSKey:    r.res.NBD.TLSKey,
		TLSCA:     r.res.NBD.TLSCA,
	})
	r.ln = ln
	r.role = RolePrimary
	r.fo.failIO.Store(false)
	r.writable.Store(true)
	srv := r.server
	r.serveWG.Go(func() {
		if err := srv.Serve(ln); err != nil {
			r.log.Error("nbd server stopped", "err", err)
		}
	})
	r.log.Info("promoted to Primary", "export", ln.Addr().String())
	r.pokeWitness()
	if sess != nil {
		if rotate {
			sess.fail(errors.New("forced promotion started a new data generation: reconnecting to resync the peer"))
		} else {
			go func() { sess.sendMeta(r.myState(0)) }()
		}
	}
	return nil
}

// ExportAddr is the address the export listens on while Primary ("" otherwise).
func (r *Resource) ExportAddr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln == nil {
		return ""
	}
	return r.ln.Addr().String()
}

// Secondary demotes this node. It refuses while NBD clients are connected
// unless force, which disconnects them. Either way no further request is
// read, every request already read is answered, and the disk is flushed
// before the role changes.
func (r *Resource) Secondary(force bool) error {
	return r.demote(force, true)
}

// demote stops the services (when this node is Primary), demotes, and
// with release gives the witness lease up so the peer can take over at
// once.
func (r *Resource) demote(force, release bool) error {
	if r.Role() != RolePrimary {
		return nil
	}
	if r.services != nil {
		if err := r.services.Stop(context.Background()); err != nil {
			if !force {
				return fmt.Errorf("replication: %s: the start list did not stop cleanly, still Primary: %w", r.res.Name, err)
			}
			r.log.Error("services did not stop cleanly; demoting anyway (--force)", "err", err)
		}
	}
	r.mu.Lock()
	err := r.secondaryLocked(force)
	r.mu.Unlock()
	if err == nil && release {
		r.releaseWitness()
	}
	return err
}

func (r *Resource) secondaryLocked(force bool) error {
	if r.role != RolePrimary {
		return nil
	}
	if n := r.server.Connections(); n > 0 && !force {
		return fmt.Errorf("%w: %d NBD client(s) connected to %s; disconnect them (nbd-client -d /dev/nbdX, unmount first) or use `twinbd secondary --force %s`", ErrInUse, n, r.ln.Addr(), r.res.Name)
	}
	// Requests waiting for quorum or fencing fail now; Shutdown stops
	// reading, answers what was read, then closes every connection; only
	// a drain stuck past the timeout drops answers.
	if force {
		r.fo.failIO.Store(true)
		r.wakeIO()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.server.Shutdown(ctx); err != nil {
		r.log.Warn("nbd shutdown: drain timed out, connections dropped", "err", err)
	}
	r.serveWG.Wait()
	r.writable.Store(false)
	r.fo.fencing.Store(false)
	r.server, r.ln = nil, nil
	r.role = RoleSecondary
	if err := r.b().data.Flush(); err != nil && !r.detached.Load() {
		return fmt.Errorf("replication: %s: flush on demotion: %w", r.res.Name, err)
	}
	if err := r.b().meta.Update(func(s *bitmap.Superblock) { s.Flags &^= bitmap.FlagPrimaryInd }); err != nil {
		return fmt.Errorf("replication: %s: write metadata: %w", r.res.Name, err)
	}
	r.log.Info("demoted to Secondary")
	r.pokeWitness()
	if s := r.sess.Load(); s != nil {
		go func() { s.sendMeta(r.myState(0)) }()
	}
	return nil
}

// Down demotes (refusing while clients are connected unless force), stops
// the peer link, writes the bitmap out, flushes and closes the disk.
// Idempotent.
func (r *Resource) Down(force bool) error {
	r.mu.Lock()
	down := r.down
	r.mu.Unlock()
	if down {
		return nil
	}
	if err := r.demote(force, true); err != nil {
		return err
	}
	if r.stopPeer != nil {
		if s := r.sess.Load(); s != nil {
			s.drain()
			s.sendMeta(&DisconnectMsg{Reason: "peer is going down"})
		}
		r.stopPeer()
		<-r.peerDone
		r.bg.Wait()
		r.tr.Close()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return nil
	}
	if err := r.b().data.Flush(); err != nil && !r.detached.Load() {
		return fmt.Errorf("replication: %s: flush: %w", r.res.Name, err)
	}
	if r.bm != nil && !r.detached.Load() {
		// The bitmap on disk is now complete, so the activity log can be
		// emptied: a restart finds exactly the recorded bits.
		if err := r.b().meta.WriteBitmap(r.bm); err != nil {
			return fmt.Errorf("replication: %s: write bitmap: %w", r.res.Name, err)
		}
		if err := r.b().al.Clean(); err != nil {
			r.log.Warn("activity log not cleaned; its extents will be resynced after the next start", "err", err)
		}
	}
	r.down = true
	r.link.conn = ConnStandAlone
	var first error
	for _, c := range r.b().closer {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}
	r.log.Info("resource down")
	return first
}

// Generation holds the generation UUIDs (DRBD's current, bitmap, history).
type Generation struct {
	Current, Bitmap uint64
	History         [2]uint64
}

// NewCurrentUUID starts a new data generation (DRBD's drbd_uuid_new_current):
// the old current UUID becomes the bitmap UUID, so a peer still at the old
// generation can later be synced by bitmap; an older bitmap UUID moves into
// the history. A fresh disk (current 0) just gets its first UUID.
func NewCurrentUUID(g Generation, fresh uint64) Generation {
	if g.Current == 0 {
		g.Current = fresh
		return g
	}
	if g.Bitmap != 0 {
		g.History[1], g.History[0] = g.History[0], g.Bitmap
	}
	g.Bitmap, g.Current = g.Current, fresh
	return g
}

// randomUUID returns a nonzero random generation UUID. The lowest bit is
// reserved (DRBD uses it for the primary flag) and kept clear.
func randomUUID() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(err) // crypto/rand never fails on Linux
		}
		if v := binary.BigEndian.Uint64(b[:]) &^ 1; v != 0 {
			return v
		}
	}
}
