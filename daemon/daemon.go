package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/replication"
)

// Options configure the node daemon.
type Options struct {
	ConfigPath string
	Node       string
	RunDir     string
	Logger     *slog.Logger
	// Up lists resources (or "all") to bring up at start, before READY.
	Up []string
	// Metrics, if set, is where /metrics (Prometheus) is served.
	Metrics string
	// FaultInjection wraps every backing disk in a fault injector that
	// `debug disk-fault` controls (tests and the chaos harness only).
	FaultInjection bool
	// TestOnlyPromoteStale lets a stale node promote itself automatically
	// (replication.Options.TestOnlyPromoteStale): the chaos harness's
	// proof that it catches that. Tests only.
	TestOnlyPromoteStale bool
}

// Daemon is one node's daemon.
type Daemon struct {
	opts Options
	log  *slog.Logger

	mu        sync.Mutex // guards resources
	resources map[string]*replication.Resource

	// Handlers run on handlerCtx (cancelled at shutdown once they had
	// handlerGrace to finish); handlers counts the running ones.
	handlerCtx     context.Context
	stopHandlers   context.CancelFunc
	handlers       sync.WaitGroup
	handlerMu      sync.Mutex // guards handlersClosed against handlers.Add
	handlersClosed bool
	handlerTimeout time.Duration
}

// HandlerTimeout bounds one `handlers { }` command; a handler still running
// then is killed with its process group.
const HandlerTimeout = 5 * time.Minute

// handlerGrace is how long shutdown waits for running handlers.
const handlerGrace = 10 * time.Second

// New returns a daemon; Run starts it.
func New(opts Options) *Daemon {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	hctx, stop := context.WithCancel(context.Background())
	return &Daemon{
		opts: opts, log: log.With("node", opts.Node), resources: map[string]*replication.Resource{},
		handlerCtx: hctx, stopHandlers: stop, handlerTimeout: HandlerTimeout,
	}
}

// Run serves the control socket until ctx is done, then brings every
// resource down (demoting, draining, flushing) and removes the socket.
func (d *Daemon) Run(ctx context.Context) error {
	cfg, err := config.Load(d.opts.ConfigPath)
	if err != nil {
		return err
	}
	d.logWarnings(cfg)
	ln, sock, err := d.listen(ctx)
	if err != nil {
		return err
	}
	defer os.Remove(sock)
	if d.opts.Metrics != "" {
		addr, err := d.serveMetrics(ctx, d.opts.Metrics)
		if err != nil {
			ln.Close()
			return fmt.Errorf("daemon: metrics on %s: %w", d.opts.Metrics, err)
		}
		d.log.Info("metrics", "url", "http://"+addr+"/metrics")
	}
	for _, name := range d.opts.Up {
		if resp := d.handle(ctx, Request{Verb: "up", Resource: name}); resp.Code != CodeOK {
			ln.Close()
			d.downAll()
			return errors.New(resp.Error)
		}
	}
	notifySystemd("READY=1")
	d.log.Info("daemon ready", "socket", sock, "config", d.opts.ConfigPath)

	var wg sync.WaitGroup
	wg.Go(func() {
		<-ctx.Done()
		ln.Close()
	})
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			d.log.Error("control accept", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		wg.Go(func() { d.serveConn(ctx, conn) })
	}
	notifySystemd("STOPPING=1")
	d.log.Info("shutting down")
	d.downAll()
	wg.Wait()
	d.waitHandlers()
	return nil
}

// waitHandlers gives running handlers handlerGrace, then kills them.
func (d *Daemon) waitHandlers() {
	d.handlerMu.Lock()
	d.handlersClosed = true
	d.handlerMu.Unlock()
	done := make(chan struct{})
	go func() { d.handlers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(handlerGrace):
		d.log.Warn("handlers still running at shutdown: killing them")
		d.stopHandlers()
		<-done
	}
	d.stopHandlers()
}

// listen creates the root-only control socket, refusing to start a second
// daemon for the same node.
func (d *Daemon) listen(ctx context.Context) (net.Listener, string, error) {
	if err := os.MkdirAll(d.opts.RunDir, 0o700); err != nil {
		return nil, "", fmt.Errorf("daemon: run dir: %w", err)
	}
	sock := SocketPath(d.opts.RunDir, d.opts.Node)
	if _, err := os.Stat(sock); err == nil {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, cerr := Call(cctx, sock, Request{Verb: "ping"})
		cancel()
		if cerr == nil {
			return nil, "", fmt.Errorf("daemon: a daemon for node %s is already running (socket %s)", d.opts.Node, sock)
		}
		os.Remove(sock) // stale socket of a dead daemon
	}
	old := syscallUmask(0o177)
	ln, err := net.Listen("unix", sock)
	syscallUmask(old)
	if err != nil {
		return nil, "", fmt.Errorf("daemon: control socket: %w", err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return nil, "", fmt.Errorf("daemon: control socket: %w", err)
	}
	return ln, sock, nil
}

func (d *Daemon) downAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, r := range d.resources {
		if err := r.Down(true); err != nil {
			d.log.Error("down", "resource", name, "err", err)
		}
		delete(d.resources, name)
	}
}

// handle executes one verb.
func (d *Daemon) handle(ctx context.Context, req Request) Response {
	switch req.Verb {
	case "ping":
		return Response{}
	case "up":
		return d.up(req.Resource)
	case "down":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) {
			if err := r.Down(req.Force); err != nil {
				return "", err
			}
			d.mu.Lock()
			delete(d.resources, r.Name())
			d.mu.Unlock()
			return "", nil
		})
	case "primary":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) {
			if err := r.Primary(req.Force); err != nil {
				return "", err
			}
			if req.Force {
				return fmt.Sprintf("%s: forced promotion: this node's data is now declared UpToDate; writes the peer holds and this node lacks will be overwritten when they connect, and if the peer is alive and Primary there are now two Primaries (split brain)\n", r.Name()), nil
			}
			return "", nil
		})
	case "secondary":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) { return "", r.Secondary(req.Force) })
	case "role":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) { return r.Role().String() + "\n", nil })
	case "dstate":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) {
			st := r.Status()
			out := st.Devices[0].DiskState
			for _, c := range st.Connections {
				out += "/" + c.PeerDevices[0].PeerDiskState
			}
			return out + "\n", nil
		})
	case "cstate":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) {
			var out []string
			for _, c := range r.Status().Connections {
				out = append(out, c.ConnectionState)
			}
			if len(out) == 0 {
				out = []string{replication.ConnStandAlone.String()}
			}
			return strings.Join(out, "\n") + "\n", nil
		})
	case "connect":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) { return "", r.Connect(req.DiscardMyData) })
	case "disconnect":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) { return "", r.Disconnect() })
	case "invalidate":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) { return "", r.Invalidate() })
	case "invalidate-remote":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) { return "", r.InvalidateRemote() })
	case "outdate":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) { return "", r.Outdate() })
	case "attach":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) { return "", r.Attach() })
	case "detach":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) { return "", r.Detach(req.Force) })
	case "disk-fault":
		return d.diskFault(req)
	case "resume-io":
		return d.forEach(req.Resource, func(r *replication.Resource) (string, error) { return "", r.ResumeIO() })
	case "verify":
		var results []VerifyResult
		resp := d.forEach(req.Resource, func(r *replication.Resource) (string, error) {
			v, err := r.Verify()
			if err != nil {
				return "", err
			}
			results = append(results, VerifyResult{Resource: r.Name(), Checked: v.Checked, OutOfSync: v.OutOfSync, Took: v.Took})
			if v.OutOfSync == 0 {
				return fmt.Sprintf("%s: verified %d KiB in %v: 0 KiB out of sync\n", r.Name(), v.Checked/1024, v.Took.Round(time.Millisecond)), nil
			}
			return fmt.Sprintf("%s: verified %d KiB in %v: %d KiB out of sync (marked; `twinbd disconnect %s; twinbd connect %s` on the Primary resyncs them)\n",
				r.Name(), v.Checked/1024, v.Took.Round(time.Millisecond), v.OutOfSync/1024, r.Name(), r.Name()), nil
		})
		resp.Verify = results
		return resp
	case "wait-connect", "wait-sync":
		return d.wait(ctx, req)
	case "resize":
		return d.resize(ctx, req) // resize.go
	case "status":
		var resp Response
		if req.Resource == "" || req.Resource == "all" {
			for _, r := range d.sorted() {
				resp.Statuses = append(resp.Statuses, r.Status())
			}
			return resp
		}
		var statuses []replication.Status
		resp = d.forEach(req.Resource, func(r *replication.Resource) (string, error) {
			statuses = append(statuses, r.Status())
			return "", nil
		})
		resp.Statuses = statuses
		return resp
	}
	return Response{Code: CodeFailed, Error: fmt.Sprintf("unknown verb %q", req.Verb)}
}

func (d *Daemon) sorted() []*replication.Resource {
	d.mu.Lock()
	defer d.mu.Unlock()
	names := make([]string, 0, len(d.resources))
	for n := range d.resources {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]*replication.Resource, len(names))
	for i, n := range names {
		out[i] = d.resources[n]
	}
	return out
}

// forEach runs fn on the named resource (or every resource that is up, for
// "all") and collects output; the first failure decides the exit code.
func (d *Daemon) forEach(name string, fn func(*replication.Resource) (string, error)) Response {
	var targets []*replication.Resource
	if name == "all" {
		targets = d.sorted()
	} else {
		d.mu.Lock()
		r, ok := d.resources[name]
		d.mu.Unlock()
		if !ok {
			return Response{Code: CodeNoResource, Error: fmt.Sprintf("%s: No such resource (not up on node %s; run `twinbd up %s`)", name, d.opts.Node, name)}
		}
		targets = []*replication.Resource{r}
	}
	var resp Response
	for _, r := range targets {
		out, err := fn(r)
		resp.Output += out
		if err != nil && resp.Code == CodeOK {
			resp.Code, resp.Error = codeFor(err), withHint(r.Name(), err)
		}
	}
	return resp
}

// withHint is the error line for resource name, with what to do where the
// error itself does not say.
func withHint(name string, err error) string {
	msg := fmt.Sprintf("%s: %v", name, err)
	if errors.Is(err, replication.ErrNotConnected) && !strings.Contains(msg, "twinbd connect") {
		msg += fmt.Sprintf("; `twinbd status %s` shows the connection state and why it is not Connected (`twinbd connect %s` leaves StandAlone)", name, name)
	}
	return msg
}

func codeFor(err error) int {
	switch {
	case errors.Is(err, replication.ErrNoUpToDate):
		return CodeNoUpToDate
	case errors.Is(err, replication.ErrInUse), errors.Is(err, replication.ErrNoQuorum), errors.Is(err, replication.ErrNotPrimary):
		return CodeStateFail
	case errors.Is(err, replication.ErrNotConnected):
		return CodeNotConnected
	case errors.Is(err, errWaitTimeout):
		return CodeTimeout
	case errors.Is(err, replication.ErrDown), errors.Is(err, config.ErrNoResource), errors.Is(err, config.ErrNoHost):
		return CodeNoResource
	}
	return CodeFailed
}

// logWarnings logs the resource file's warnings (DRBD-only keys that are
// ignored, keys accepted without effect).
func (d *Daemon) logWarnings(cfg *config.Config) {
	for _, w := range cfg.Warnings {
		d.log.Warn("resource file", "warning", w.String())
	}
}

// up re-reads the resource file and brings up name (or every resource with
// an `on NODE` block, for "all"). Already-up resources are left alone.
func (d *Daemon) up(name string) Response {
	cfg, err := config.Load(d.opts.ConfigPath)
	if err != nil {
		return Response{Code: CodeFailed, Error: err.Error()}
	}
	d.logWarnings(cfg)
	var targets []*config.Resource
	if name == "all" {
		for _, r := range cfg.Resources {
			if _, err := r.Host(d.opts.Node); err == nil {
				targets = append(targets, r)
			}
		}
	} else {
		r, err := cfg.Resource(name)
		if err != nil {
			return Response{Code: CodeNoResource, Error: err.Error()}
		}
		targets = []*config.Resource{r}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, rc := range targets {
		if _, ok := d.resources[rc.Name]; ok {
			continue
		}
		var self atomic.Pointer[replication.Resource]
		r, err := replication.Up(replication.Options{
			Res: rc, Node: d.opts.Node, Logger: d.log,
			Handler:              d.handlerFor(rc, &self),
			FencePeer:            d.fencePeerFor(rc, &self),
			Services:             d.servicesFor(rc),
			FaultInjection:       d.opts.FaultInjection,
			TestOnlyPromoteStale: d.opts.TestOnlyPromoteStale,
		})
		if err != nil {
			return Response{Code: codeFor(err), Error: fmt.Sprintf("%s: %v", rc.Name, err)}
		}
		self.Store(r)
		d.resources[rc.Name] = r
	}
	return Response{}
}

// notifySystemd sends state to systemd's notify socket when run as a
// Type=notify service (sd_notify without libsystemd).
func notifySystemd(state string) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	if strings.HasPrefix(addr, "@") {
		addr = "\x00" + addr[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return
	}
	defer conn.Close()
	conn.Write([]byte(state))
}
