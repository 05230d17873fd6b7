package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for ServerConfig fields left zero.
const (
	DefaultMaxInflight      = 64
	DefaultMaxRequest       = 32 << 20
	DefaultHandshakeTimeout = 30 * time.Second
)

// ServerConfig configures a Server. Zero fields take the defaults above.
type ServerConfig struct {
	// Exports resolves export names; required.
	Exports Resolver
	// MaxInflight bounds the requests of one connection being served at
	// once (dispatched, or answered but not yet written). The reader blocks
	// when it is reached: that is the backpressure on the client.
	MaxInflight int
	// MaxRequest is the largest READ/WRITE payload, advertised as the
	// maximum block size in NBD_INFO_BLOCK_SIZE.
	MaxRequest int64
	// HandshakeTimeout bounds the whole option haggling of one connection.
	HandshakeTimeout time.Duration
	// Logger receives connection-level events; nil discards them.
	Logger *slog.Logger
	// AllowList, when non-nil, refuses (closes before the handshake) every
	// client whose address is outside all of its prefixes. Clients without
	// an IP address (unix sockets, pipes) are refused too.
	AllowList []netip.Prefix
	// TLS offers NBD_OPT_STARTTLS (TLSOffer) or demands it (TLSRequire:
	// before STARTTLS every option but ABORT is answered NBD_REP_ERR_TLS_REQD
	// and EXPORT_NAME closes the connection). TLS 1.2 or later.
	TLS TLSMode
	// TLSCert and TLSKey are PEM files: the server certificate (chain) and
	// its key. Read on every STARTTLS, so renewals apply to new clients.
	TLSCert, TLSKey string
	// TLSCA, when set, is a PEM file of the CA(s) client certificates must
	// chain to; clients without such a certificate are refused.
	TLSCA string
}

// TLSMode says whether the server offers or requires TLS. The values are
// the resource file's `nbd { tls no|yes|required; }`.
type TLSMode string

const (
	TLSOff     TLSMode = "no" // also ""
	TLSOffer   TLSMode = "yes"
	TLSRequire TLSMode = "required"
)

// Server serves NBD exports. See the package documentation for the
// connection life cycle and the concurrency contract.
type Server struct {
	cfg ServerConfig
	log *slog.Logger

	mu        sync.Mutex // guards listeners, conns, shutdown
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	shutdown  bool

	connWG  sync.WaitGroup // one per served connection
	active  atomic.Int64   // connections in the transmission phase
	inlined atomic.Int64   // requests served inline (queue-depth-1 clients)

	refuseMu     sync.Mutex // guards the refusal log's rate limit
	refuseLogged time.Time  // last refusal logged
	refuseQuiet  int        // refusals not logged since then
}

// refusalLogEvery rate-limits the log of refused clients, so a scan or a
// flood of connections cannot flood the log.
const refusalLogEvery = time.Second

// refusal logs a refused client at Warn level, at most once per
// refusalLogEvery; the next line counts the ones left out.
func (s *Server) refusal(msg string, args ...any) {
	s.refuseMu.Lock()
	now := time.Now()
	if !s.refuseLogged.IsZero() && now.Sub(s.refuseLogged) < refusalLogEvery {
		s.refuseQuiet++
		s.refuseMu.Unlock()
		return
	}
	quiet := s.refuseQuiet
	s.refuseLogged, s.refuseQuiet = now, 0
	s.refuseMu.Unlock()
	if quiet > 0 {
		args = append(args, "not_logged_since_last", quiet)
	}
	s.log.Warn(msg, args...)
}

// NewServer returns a Server for cfg.
func NewServer(cfg ServerConfig) *Server {
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = DefaultMaxInflight
	}
	if cfg.MaxRequest <= 0 {
		cfg.MaxRequest = DefaultMaxRequest
	}
	// The block-size info carries 32 bits.
	cfg.MaxRequest = min(cfg.MaxRequest, 1<<31)
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	switch cfg.TLS {
	case "", TLSOff:
		cfg.TLS = TLSOff
	case TLSOffer, TLSRequire:
	default:
		// An unknown mode fails closed.
		cfg.TLS = TLSRequire
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		cfg:       cfg,
		log:       log,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
	}
}

// ErrServerClosed is returned by ServeConn after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

// Serve accepts connections on ln and serves each in its own goroutine. It
// returns nil after Shutdown, or the listener's error. ln is closed when
// Serve returns.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			down := s.shutdown
			s.mu.Unlock()
			if down {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		backoff = 0
		if !s.allowed(nc.RemoteAddr()) {
			s.refusal("nbd: client refused by allow-list", "remote", nc.RemoteAddr().String())
			nc.Close()
			continue
		}
		c, ok := s.track(nc)
		if !ok {
			nc.Close()
			return nil
		}
		go func() {
			defer s.connWG.Done()
			c.serve()
		}()
	}
}

// ServeConn serves one already-accepted connection and returns when it is
// closed. The AllowList is not consulted: the caller chose the peer.
func (s *Server) ServeConn(nc net.Conn) error {
	c, ok := s.track(nc)
	if !ok {
		nc.Close()
		return ErrServerClosed
	}
	defer s.connWG.Done()
	c.serve()
	return nil
}

func (s *Server) track(nc net.Conn) (*conn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return nil, false
	}
	c := newConn(s, nc)
	s.conns[c] = struct{}{}
	// Added under mu, so Shutdown's Wait never races a late Add: a
	// connection is either counted before shutdown is set, or refused.
	s.connWG.Add(1)
	return c, true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) allowed(a net.Addr) bool {
	if s.cfg.AllowList == nil {
		return true
	}
	var ip netip.Addr
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.UDPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		return false
	}
	ip = ip.Unmap()
	for _, p := range s.cfg.AllowList {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Shutdown stops accepting, stops reading new requests, lets every request
// already read be served and answered, then closes the connections.
// Connections still in the handshake are closed. If ctx ends first, the
// remaining connections are dropped at once and ctx's error returned. Shutdown is
// idempotent; later calls wait the same way.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.stopReading()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		// Sockets close now; handlers stuck in the export finish (and
		// their connection goroutines exit) whenever the export lets go.
		s.CloseConnections()
		return ctx.Err()
	}
}

// Connections is the number of connections in the transmission phase.
func (s *Server) Connections() int { return int(s.active.Load()) }

// CloseConnections drops every connection at once, without draining.
// Requests being served still complete against the export, but their
// answers are lost. The server keeps accepting new connections.
func (s *Server) CloseConnections() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.nc.Close()
	}
}
