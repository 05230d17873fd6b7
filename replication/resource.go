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
}

// Resource is one resource brought up on this node.
type Resource struct {
	res    *config.Resource
	host   *config.Host
	peers  []*config.Host
	log    *slog.Logger
	data   device.Device     // the replicated data area
	local  *nbd.DeviceExport // NBD operations on data
	closer []device.Device
	meta   *bitmap.Meta
	size   int64

	writable atomic.Bool // true only while Primary and serving

	// statistics (bytes)
	readBytes, writtenBytes atomic.Int64
	pending                 atomic.Int64

	mu      sync.Mutex // guards role, disk, server, ln, down
	role    Role
	disk    DiskState
	server  *nbd.Server
	ln      net.Listener
	serveWG sync.WaitGroup
	down    bool
}

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
	data, md, closers, lay, err := openBacking(opts.Res, host)
	if err != nil {
		return nil, err
	}
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
		data: data, local: nbd.NewDeviceExport(data, false), closer: closers,
		meta: meta, size: size, role: RoleSecondary,
	}
	sb := meta.Superblock()
	r.disk = diskStateFromFlags(sb.Flags)
	if sb.Flags&bitmap.FlagPrimaryInd != 0 {
		// We were Primary and did not demote cleanly: remember it (DRBD's
		// crashed-primary), which later decides resync after a crash.
		if err := meta.Update(func(s *bitmap.Superblock) {
			s.Flags = s.Flags&^bitmap.FlagPrimaryInd | bitmap.FlagCrashedPrimary
		}); err != nil {
			return fail(fmt.Errorf("replication: %s: record crashed primary: %w", opts.Res.Name, err))
		}
		log.Warn("node was Primary when it stopped without demoting (crashed primary)")
	}
	log.Info("resource up", "disk", r.disk, "size", size, "backing", host.Disk, "meta", host.MetaDisk)
	return r, nil
}

// openBacking opens the backing disk (and external metadata device) and
// computes the metadata layout.
func openBacking(res *config.Resource, host *config.Host) (data, md device.Device, closers []device.Device, lay bitmap.Layout, err error) {
	gran := res.Disk.BitmapGranularity
	if gran == 0 {
		gran = bitmap.DefaultGranularity
	}
	backing, err := device.OpenFile(host.Disk)
	if err != nil {
		return nil, nil, nil, lay, fmt.Errorf("replication: backing disk: %w", err)
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
		}
	}
	if err == nil {
		data, err = device.NewRegion(backing, 0, lay.DataSize)
	}
	if err != nil {
		for _, c := range closers {
			c.Close()
		}
		return nil, nil, nil, lay, fmt.Errorf("replication: %s: %w", host.Disk, err)
	}
	return data, md, closers, lay, nil
}

func metaHint(res string, host *config.Host, err error) string {
	switch {
	case errors.Is(err, bitmap.ErrNoMetadata):
		hint := fmt.Sprintf("no twinbd metadata on %s (meta-disk %s): run `twinbd create-md %s` first", host.Disk, host.MetaDisk, res)
		if host.MetaDisk == "internal" {
			hint += fmt.Sprintf("; if %s was grown since create-md, internal metadata is no longer at its end: restore the old size (online resize is not supported yet)", host.Disk)
		}
		return hint
	case errors.Is(err, bitmap.ErrCorrupt):
		return fmt.Sprintf("metadata on %s is corrupt: restore it, or run `twinbd create-md --force %s` (its data generation is forgotten and a full sync follows)", host.Disk, res)
	case errors.Is(err, bitmap.ErrWrongSize):
		return fmt.Sprintf("metadata on %s does not match the device size (was the device resized?)", host.Disk)
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
	upToDate := r.disk == DiskUpToDate || (r.disk == DiskConsistent && len(r.peers) == 0)
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
	if err := r.meta.Update(func(s *bitmap.Superblock) {
		s.Flags |= bitmap.FlagConsistent | bitmap.FlagWasUpToDate | bitmap.FlagPrimaryInd
		s.Flags &^= bitmap.FlagOutdated | bitmap.FlagCrashedPrimary
		g := NewCurrentUUID(Generation{Current: s.Current, Bitmap: s.Bitmap, History: s.History}, randomUUID())
		s.Current, s.Bitmap, s.History = g.Current, g.Bitmap, g.History
	}); err != nil {
		ln.Close()
		return fmt.Errorf("replication: %s: write metadata: %w", r.res.Name, err)
	}
	r.disk = DiskUpToDate
	r.server = nbd.NewServer(nbd.ServerConfig{
		Exports: nbd.StaticResolver{r.res.Name: r},
		Logger:  r.log,
	})
	r.ln = ln
	r.role = RolePrimary
	r.writable.Store(true)
	srv := r.server
	r.serveWG.Go(func() {
		if err := srv.Serve(ln); err != nil {
			r.log.Error("nbd server stopped", "err", err)
		}
	})
	r.log.Info("promoted to Primary", "export", ln.Addr().String())
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
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.secondaryLocked(force)
}

func (r *Resource) secondaryLocked(force bool) error {
	if r.role != RolePrimary {
		return nil
	}
	if n := r.server.Connections(); n > 0 && !force {
		return fmt.Errorf("%w: %d NBD client(s) connected to %s; disconnect them (nbd-client -d /dev/nbdX, unmount first) or use `twinbd secondary --force %s`", ErrInUse, n, r.ln.Addr(), r.res.Name)
	}
	// Shutdown stops reading, answers what was read, then closes every
	// connection; only a drain stuck past the timeout drops answers.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.server.Shutdown(ctx); err != nil {
		r.log.Warn("nbd shutdown: drain timed out, connections dropped", "err", err)
	}
	r.serveWG.Wait()
	r.writable.Store(false)
	r.server, r.ln = nil, nil
	r.role = RoleSecondary
	if err := r.data.Flush(); err != nil {
		return fmt.Errorf("replication: %s: flush on demotion: %w", r.res.Name, err)
	}
	if err := r.meta.Update(func(s *bitmap.Superblock) { s.Flags &^= bitmap.FlagPrimaryInd }); err != nil {
		return fmt.Errorf("replication: %s: write metadata: %w", r.res.Name, err)
	}
	r.log.Info("demoted to Secondary")
	return nil
}

// Down demotes (refusing while clients are connected unless force), flushes
// and closes the disk. Idempotent.
func (r *Resource) Down(force bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return nil
	}
	if err := r.secondaryLocked(force); err != nil {
		return err
	}
	if err := r.data.Flush(); err != nil {
		return fmt.Errorf("replication: %s: flush: %w", r.res.Name, err)
	}
	r.down = true
	var first error
	for _, c := range r.closer {
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
