package replication

// The peer loop: one goroutine per resource that (re)establishes the peer
// link, runs a session on it until it breaks, and tries again with back-off.
//
// Who dials: the node with the lower node-id dials, the other one accepts.
// That makes connection establishment deterministic (DRBD resolves two
// crossing connects with a tie-break; twinbd avoids the crossing). Both
// nodes still need their `address`: the higher node listens on its own, the
// lower one dials it.
//
// Refusals that only an operator can fix (wrong secret, wrong resource or
// node, unrelated data, a split brain no policy resolves, a size mismatch)
// put the dialing side StandAlone with the reason in `status`; `twinbd
// connect` tries again. The accepting side records the reason and keeps
// listening, so an unauthenticated stranger cannot switch replication off.
// Network errors only back off and retry, from 100ms up to connect-int.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// errStandAlone wraps session errors after which the peer loop stops
// retrying until `connect`.
var errStandAlone = errors.New("replication: connection refused")

func standAlone(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errStandAlone, fmt.Sprintf(format, args...))
}

// errOperatorDisconnect ends a session on `disconnect`. Disconnect itself
// records StandAlone; the peer loop must not record it again, since by the
// time the loop sees this error a `connect` may already have run.
var errOperatorDisconnect = errors.New("replication: disconnected by the operator")

// isRefusal reports whether err is one an operator must fix.
func isRefusal(err error) bool {
	return errors.Is(err, errStandAlone) || errors.Is(err, ErrAuthFailed) ||
		errors.Is(err, ErrWrongResource) || errors.Is(err, ErrWrongNode) ||
		errors.Is(err, ErrPeerRefused) || errors.Is(err, ErrBadVersion)
}

// dialer reports whether this node dials the peer.
func (r *Resource) dialer() bool { return r.host.NodeID < r.peer.NodeID }

// runPeer is the peer loop; it returns when ctx ends.
func (r *Resource) runPeer(ctx context.Context) {
	defer close(r.peerDone)
	backoff := 100 * time.Millisecond
	maxBackoff := r.res.Net.ConnectInt
	if maxBackoff <= 0 {
		maxBackoff = 10 * time.Second
	}
	var ln Listener
	defer func() {
		if ln != nil {
			ln.Close()
		}
	}()
	for ctx.Err() == nil {
		if r.isStandAlone() {
			if ln != nil {
				ln.Close()
				ln = nil
			}
			select {
			case <-ctx.Done():
				return
			case <-r.connectCh:
			}
			continue
		}
		if r.fo.fencing.Load() {
			// A Primary reconnects only once the peer is fenced and the
			// new generation started (quorum.go).
			if !sleepCtx(ctx, r.connectCh, 100*time.Millisecond) {
				return
			}
			continue
		}
		r.setConn(ConnConnecting, "")
		if !r.dialer() && ln == nil {
			var err error
			if ln, err = r.tr.Listen(ctx); err != nil {
				r.setConn(ConnConnecting, fmt.Sprintf("cannot listen on %s: %v", r.host.Address, err))
				r.log.Error("peer link: listen", "addr", r.host.Address, "err", err)
				if !sleepCtx(ctx, r.connectCh, maxBackoff) {
					return
				}
				continue
			}
		}
		data, meta, err := r.establish(ctx, ln)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.noteFailure(err, r.dialer() && isRefusal(err))
			if !sleepCtx(ctx, r.connectCh, backoff) {
				return
			}
			backoff = min(backoff*2, maxBackoff)
			continue
		}
		start := time.Now()
		err = r.runSession(ctx, data, meta)
		if ctx.Err() != nil {
			return
		}
		r.noteFailure(err, isRefusal(err))
		if time.Since(start) > maxBackoff {
			backoff = 100 * time.Millisecond
		}
		if !sleepCtx(ctx, r.connectCh, backoff) {
			return
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// noteFailure logs a failed connection and records it for status.
func (r *Resource) noteFailure(err error, refuse bool) {
	if err == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.disconnectReq || errors.Is(err, errOperatorDisconnect) {
		return
	}
	r.link.reason = err.Error()
	if refuse {
		r.link.standAlone = true
		r.link.conn = ConnStandAlone
		r.log.Error("peer link refused: StandAlone until `twinbd connect`", "peer", r.peer.Name, "err", err)
		return
	}
	r.link.conn = ConnConnecting
	r.log.Warn("peer link failed; retrying", "peer", r.peer.Name, "err", err)
}

func sleepCtx(ctx context.Context, wake <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-wake:
	case <-t.C:
	}
	return true
}

func (r *Resource) authConfig() AuthConfig {
	return AuthConfig{
		Resource:   r.res.Name,
		NodeID:     uint32(r.host.NodeID),
		PeerNodeID: uint32(r.peer.NodeID),
		Secret:     r.res.Net.SharedSecret,
		HMACAlg:    r.res.Net.CramHMACAlg,
		Timeout:    handshakeTimeout,
	}
}

const handshakeTimeout = 10 * time.Second

// secure runs TLS (if configured) and authentication on a fresh connection.
func (r *Resource) secure(c net.Conn, server bool) (net.Conn, error) {
	tc, err := LinkTLS(c, &r.res.Net, server, handshakeTimeout)
	if err != nil {
		c.Close()
		return nil, err
	}
	if _, err := Authenticate(tc, r.authConfig()); err != nil {
		tc.Close()
		return nil, err
	}
	return tc, nil
}

// establish returns an authenticated data and meta connection.
func (r *Resource) establish(ctx context.Context, ln Listener) (data, meta net.Conn, err error) {
	if r.dialer() {
		for _, ch := range []Channel{ChannelData, ChannelMeta} {
			c, err := r.tr.Dial(ctx, ch)
			if err == nil {
				c, err = r.secure(c, false)
			}
			if err != nil {
				if data != nil {
					data.Close()
				}
				return nil, nil, fmt.Errorf("%s channel to %s: %w", ch, r.peer.Address, err)
			}
			if ch == ChannelData {
				data = c
			} else {
				meta = c
			}
		}
		return data, meta, nil
	}
	closeAll := func() {
		if data != nil {
			data.Close()
		}
		if meta != nil {
			meta.Close()
		}
	}
	for data == nil || meta == nil {
		actx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(ctx, cancel)
		c, ch, err := ln.Accept(actx)
		stop()
		cancel()
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		sc, err := r.secure(c, true)
		if err != nil {
			// A stranger or a misconfigured peer: log, remember, keep
			// listening (see the top of this file).
			r.mu.Lock()
			r.link.reason = fmt.Sprintf("refused a connection from %s: %v", c.RemoteAddr(), err)
			r.mu.Unlock()
			r.log.Warn("peer link: refused inbound connection", "from", c.RemoteAddr().String(), "err", err)
			continue
		}
		// A newer connection for a channel replaces an older one (the
		// dialer gave up on it and tried again).
		if ch == ChannelData {
			if data != nil {
				data.Close()
			}
			data = sc
		} else {
			if meta != nil {
				meta.Close()
			}
			meta = sc
		}
	}
	return data, meta, nil
}

func (r *Resource) isStandAlone() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.link.standAlone
}

func (r *Resource) setConn(c ConnState, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.link.conn = c
	if reason != "" {
		r.link.reason = reason
	}
}

// Connect leaves StandAlone and lets the peer loop connect again
// (`twinbd connect`). discardMyData volunteers this node as the victim of a
// split brain found on that connect (`--discard-my-data`).
func (r *Resource) Connect(discardMyData bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.needPeer(); err != nil {
		return err
	}
	r.link.standAlone = false
	r.disconnectReq = false
	r.discardMyData = discardMyData
	if r.link.conn == ConnStandAlone {
		r.link.conn = ConnConnecting
	}
	select {
	case r.connectCh <- struct{}{}:
	default:
	}
	return nil
}

// Disconnect closes the peer link and stays StandAlone until Connect
// (`twinbd disconnect`). A Primary keeps serving and records what the peer
// misses in the bitmap.
func (r *Resource) Disconnect() error {
	r.mu.Lock()
	if err := r.needPeer(); err != nil {
		r.mu.Unlock()
		return err
	}
	r.link.standAlone = true
	r.disconnectReq = true
	r.link.reason = "disconnected by the operator"
	s := r.sess.Load()
	hs := r.handshaking
	r.mu.Unlock()
	if s != nil {
		s.drain()
		s.sendMeta(&DisconnectMsg{Reason: "peer disconnected by its operator"})
		s.fail(errOperatorDisconnect)
		<-s.finished
	}
	if hs != nil {
		hs()
	}
	r.mu.Lock()
	r.link.conn = ConnStandAlone
	r.mu.Unlock()
	select {
	case r.connectCh <- struct{}{}: // wake a sleeping loop so it closes its listener
	default:
	}
	return nil
}

// WaitConnected waits until the peer link is up and, with sync, until no
// resync is running (`wait-connect`, `wait-sync`).
func (r *Resource) WaitConnected(ctx context.Context, sync bool) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		st := r.Status()
		if len(st.Connections) == 0 {
			return fmt.Errorf("replication: %s has no peer", r.res.Name)
		}
		c := st.Connections[0]
		// A session that is already dead (a forced promotion or an
		// invalidate reconnects to resync) does not count.
		if s := r.sess.Load(); s != nil && !s.isDead() && c.ConnectionState == ConnConnected.String() {
			pd := c.PeerDevices[0]
			// A finished resync is done when the target has said it is
			// UpToDate (its State follows the source's ResyncDone).
			caughtUp := pd.PeerDiskState != DiskInconsistent.String() || st.Devices[0].DiskState != DiskUpToDate.String()
			if !sync || (pd.ReplicationState == ReplEstablished.String() && caughtUp) {
				return nil
			}
		}
		if c.ConnectionState == ConnStandAlone.String() {
			return fmt.Errorf("replication: %s is StandAlone: %s", r.res.Name, c.Reason)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// drain makes what the peer acknowledged durable there (a barrier, waited
// for at most a few seconds) before an orderly disconnect, so the teardown
// does not have to mark those writes out of sync.
func (s *session) drain() {
	select {
	case <-s.barrier():
	case <-s.deadCh:
	case <-time.After(5 * time.Second):
	}
}
