// Peer-link authentication and optional TLS.
//
// Every new peer connection (after the transport's preamble, and after the
// TLS handshake when net.tls is on) starts with a symmetric exchange; both
// sides speak at once and neither waits for the other:
//
//	A -> B  Hello{Version, Resource, NodeID A, Challenge cA}
//	B -> A  Hello{Version, Resource, NodeID B, Challenge cB}
//	A -> B  Auth{HMAC(secret, tag | cB | NodeID A | cA | Resource)}
//	B -> A  Auth{HMAC(secret, tag | cA | NodeID B | cB | Resource)}
//	A -> B  AuthOK
//	B -> A  AuthOK
//
// tag is "twinbd-auth-v1", node-ids are 4 bytes big-endian, challenges are 32
// random bytes, and the HMAC is the resource's cram-hmac-alg. A response is
// bound to the responder's node-id and to both challenges, so an attacker
// cannot answer our challenge by reflecting it back to us (on this or a
// second connection): our own response carries our node-id, not the one we
// expect from the peer. With no shared-secret on either side the exchange
// still runs with an empty key, so a secret configured on one side only is
// an authentication failure rather than a silently unauthenticated link.
//
// A side that refuses the connection (wrong resource, node-id, version or
// response) sends a DisconnectMsg with a short reason before giving up; the
// other side then reports ErrPeerRefused. The handshake frames carry
// sequence numbers 0 (Hello), 1 (Auth) and 2 (AuthOK, or the Disconnect);
// incoming sequence numbers are not checked.
//
// The HMAC proves both sides know the secret but neither encrypts nor
// protects the frames that follow; LinkTLS does, when configured.

package replication

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"os"
	"time"

	"github.com/twinbd/twinbd/config"
)

// Sentinel errors of Authenticate; returned errors wrap them with context.
var (
	// ErrAuthFailed: the peer's HMAC response does not match (wrong secret,
	// different cram-hmac-alg, or a secret configured on one side only).
	ErrAuthFailed = errors.New("replication: peer authentication failed")
	// ErrWrongResource: the peer's Hello names another resource.
	ErrWrongResource = errors.New("replication: peer serves another resource")
	// ErrWrongNode: the peer's node-id is not the one configured for it (or
	// is our own).
	ErrWrongNode = errors.New("replication: unexpected peer node-id")
	// ErrPeerRefused: the peer sent a DisconnectMsg during the exchange; the
	// error text includes its reason.
	ErrPeerRefused = errors.New("replication: peer refused the connection")
)

// AuthConfig describes this side of a peer-link connection.
type AuthConfig struct {
	Resource   string
	NodeID     uint32        // this node
	PeerNodeID uint32        // the node-id we expect on the other side
	Secret     string        // shared-secret; "" means no authentication configured
	HMACAlg    string        // cram-hmac-alg: sha1, sha256, sha512 ("" = sha256)
	Timeout    time.Duration // bounds the whole exchange (0 = 10s); use conn deadlines, clear them at the end
}

const (
	defaultLinkTimeout = 10 * time.Second
	// authTag domain-separates the HMAC input.
	authTag = "twinbd-auth-v1"
	// authFrames is how many frames the exchange reads: Hello, Auth, AuthOK.
	authFrames = 3
	// authMaxFrame bounds one handshake frame on the wire, so a peer that
	// has not authenticated cannot make us buffer a large Data frame.
	authMaxFrame = HeaderSize + helloFixed + MaxStringLen
	// disconnectGrace bounds the best-effort DisconnectMsg on refusal.
	disconnectGrace = time.Second
)

// authHash returns the hash for a cram-hmac-alg.
func authHash(alg string) (func() hash.Hash, error) {
	switch alg {
	case "sha1":
		return sha1.New, nil
	case "", "sha256":
		return sha256.New, nil
	case "sha512":
		return sha512.New, nil
	}
	return nil, fmt.Errorf("replication: auth: unknown cram-hmac-alg %q (want sha1, sha256 or sha512)", alg)
}

// authResponse is responder's answer to challenge (the other side's
// challenge), bound to the responder's node-id and own challenge.
func authResponse(h func() hash.Hash, secret string, challenge *[32]byte, responder uint32, own *[32]byte, resource string) []byte {
	mac := hmac.New(h, []byte(secret))
	mac.Write([]byte(authTag))
	mac.Write(challenge[:])
	var id [4]byte
	binary.BigEndian.PutUint32(id[:], responder)
	mac.Write(id[:])
	mac.Write(own[:])
	mac.Write([]byte(resource))
	return mac.Sum(nil)
}

// Authenticate runs the symmetric Hello/Auth/AuthOK exchange on a fresh
// connection (both sides call it; neither waits for the other to speak
// first). It returns the peer's Hello. On refusal it sends a DisconnectMsg
// with the reason (best effort) before returning an error wrapping one of
// ErrAuthFailed, ErrWrongResource, ErrWrongNode, ErrBadVersion; a
// DisconnectMsg from the peer is ErrPeerRefused, a message out of turn
// ErrMalformed, and a peer that stays silent fails with the connection's
// deadline error (os.ErrDeadlineExceeded) after cfg.Timeout.
//
// The whole exchange runs under a deadline on c, which is cleared before
// Authenticate returns. It reads exactly the handshake's frames from c, so
// on success the connection is positioned at the peer's first frame after
// its AuthOK. On error the connection's state is unknown: close it.
func Authenticate(c net.Conn, cfg AuthConfig) (*HelloMsg, error) {
	h, err := authHash(cfg.HMACAlg)
	if err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = defaultLinkTimeout
	}
	a := &authRun{
		c:        c,
		cfg:      &cfg,
		hash:     h,
		deadline: time.Now().Add(timeout),
		frames:   make(chan authFrame, authFrames),
		done:     make(chan struct{}),
	}
	if err := c.SetDeadline(a.deadline); err != nil {
		return nil, fmt.Errorf("replication: auth: set deadline: %w", err)
	}
	go a.readLoop()
	peer, err := a.run()
	if err != nil {
		// Stop the reader if it is still waiting for a frame.
		_ = c.SetReadDeadline(time.Now())
	}
	<-a.done
	_ = c.SetDeadline(time.Time{})
	if err != nil {
		return nil, err
	}
	return peer, nil
}

// authRun is one Authenticate call. A reader goroutine receives the peer's
// frames while run writes ours, so the exchange works on unbuffered
// connections (net.Pipe) where a write waits for the peer's read.
type authRun struct {
	c        net.Conn
	cfg      *AuthConfig
	hash     func() hash.Hash
	deadline time.Time
	seq      uint64

	frames chan authFrame // from readLoop; buffered for every frame it sends
	done   chan struct{}  // closed when readLoop returns
}

type authFrame struct {
	m   Message
	err error
}

// readLoop reads up to authFrames frames, stopping after an error or a
// DisconnectMsg.
func (a *authRun) readLoop() {
	defer close(a.done)
	for range authFrames {
		f, _, err := ReadFrame(io.LimitReader(a.c, authMaxFrame), nil)
		var m Message
		if err == nil {
			m, err = DecodeMessage(f)
		}
		if err != nil {
			a.frames <- authFrame{err: err}
			return
		}
		a.frames <- authFrame{m: m}
		if _, ok := m.(*DisconnectMsg); ok {
			// The peer gives up: fail a write of ours that waits for it.
			_ = a.c.SetWriteDeadline(time.Now())
			return
		}
	}
}

func (a *authRun) run() (*HelloMsg, error) {
	cfg := a.cfg
	my := &HelloMsg{Version: ProtocolVersion, Resource: cfg.Resource, NodeID: cfg.NodeID}
	if _, err := rand.Read(my.Challenge[:]); err != nil {
		return nil, fmt.Errorf("replication: auth: challenge: %w", err)
	}
	if err := a.send(my); err != nil {
		return nil, err
	}

	m, err := a.recv(MsgHello)
	if err != nil {
		return nil, err
	}
	peer := m.(*HelloMsg)
	switch {
	case peer.Version != ProtocolVersion:
		return nil, a.refuse(fmt.Sprintf("protocol version %d not supported", peer.Version),
			fmt.Errorf("replication: auth: peer hello: %w: %d (want %d)", ErrBadVersion, peer.Version, ProtocolVersion))
	case peer.Resource != cfg.Resource:
		return nil, a.refuse("wrong resource",
			fmt.Errorf("%w: peer has %q, we have %q", ErrWrongResource, peer.Resource, cfg.Resource))
	case peer.NodeID == cfg.NodeID:
		return nil, a.refuse("node-id conflict",
			fmt.Errorf("%w: peer claims our own node-id %d", ErrWrongNode, peer.NodeID))
	case peer.NodeID != cfg.PeerNodeID:
		return nil, a.refuse("unexpected node-id",
			fmt.Errorf("%w: peer is node %d, want %d", ErrWrongNode, peer.NodeID, cfg.PeerNodeID))
	case peer.Challenge == my.Challenge:
		// Our own challenge echoed back: a reflection attempt (the
		// response binding defeats it anyway; fail early and clearly).
		return nil, a.refuse("authentication failed",
			fmt.Errorf("%w: peer echoed our challenge (resource %s, peer node %d)", ErrAuthFailed, cfg.Resource, peer.NodeID))
	}

	resp := authResponse(a.hash, cfg.Secret, &peer.Challenge, cfg.NodeID, &my.Challenge, cfg.Resource)
	if err := a.send(&AuthMsg{Response: resp}); err != nil {
		return nil, err
	}
	m, err = a.recv(MsgAuth)
	if err != nil {
		return nil, err
	}
	want := authResponse(a.hash, cfg.Secret, &my.Challenge, peer.NodeID, &peer.Challenge, cfg.Resource)
	// hmac.Equal is constant-time and false for different lengths (another
	// cram-hmac-alg on the peer).
	if !hmac.Equal(want, m.(*AuthMsg).Response) {
		return nil, a.refuse("authentication failed",
			fmt.Errorf("%w: HMAC response mismatch (resource %s, peer node %d; check shared-secret and cram-hmac-alg on both nodes)",
				ErrAuthFailed, cfg.Resource, peer.NodeID))
	}

	if err := a.send(&AuthOKMsg{}); err != nil {
		return nil, err
	}
	if _, err := a.recv(MsgAuthOK); err != nil {
		return nil, err
	}
	return peer, nil
}

// send writes m as the next handshake frame. A failed write may be the
// peer hanging up after a DisconnectMsg, which is reported instead.
func (a *authRun) send(m Message) error {
	seq := a.seq
	a.seq++
	err := WriteMessage(a.c, seq, m)
	if err == nil {
		return nil
	}
	werr := fmt.Errorf("replication: auth: send %v: %w", m.Type(), err)
	// Give the reader a moment to see why; then stop it and look.
	_ = a.c.SetReadDeadline(earliest(a.deadline, time.Now().Add(disconnectGrace)))
	<-a.done
	for {
		select {
		case f := <-a.frames:
			if d, ok := f.m.(*DisconnectMsg); ok {
				return refused(d)
			}
		default:
			return werr
		}
	}
}

// recv returns the peer's next frame, which must be of type want.
func (a *authRun) recv(want MsgType) (Message, error) {
	f, ok := <-a.frames
	if !ok {
		return nil, fmt.Errorf("replication: auth: waiting for %v: reader stopped", want)
	}
	if f.err != nil {
		return nil, fmt.Errorf("replication: auth: waiting for %v: %w", want, f.err)
	}
	if d, ok := f.m.(*DisconnectMsg); ok {
		return nil, refused(d)
	}
	if f.m.Type() != want {
		return nil, a.refuse("protocol error",
			fmt.Errorf("replication: auth: %w: got %v, want %v", ErrMalformed, f.m.Type(), want))
	}
	return f.m, nil
}

func refused(d *DisconnectMsg) error {
	return fmt.Errorf("%w: %q", ErrPeerRefused, d.Reason)
}

// refuse tells the peer why (best effort, briefly) and returns err.
func (a *authRun) refuse(reason string, err error) error {
	_ = a.c.SetWriteDeadline(earliest(a.deadline, time.Now().Add(disconnectGrace)))
	_ = WriteMessage(a.c, a.seq, &DisconnectMsg{Reason: reason})
	a.seq++
	return err
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// LinkTLS wraps c (after the transport's preamble) in TLS when n.TLS is set,
// else returns c unchanged. server is true on the accepting side. Both sides
// present n.TLSCert/n.TLSKey; each verifies the other's certificate chain
// against n.TLSCA (PEM file) — peers are addressed by IP, so verify the
// chain with a custom VerifyPeerCertificate/VerifyConnection rather than host
// names; require a client certificate on the server side. TLS 1.3 minimum.
// The handshake is bounded by timeout (0 = 10s).
//
// Host names are not checked: any certificate that chains to tls-ca (with
// an extended key usage allowing server or client auth, or none) is a
// peer, so tls-ca should be a CA dedicated to the cluster. tls-ca is
// required: verifying against the system roots without host names would
// accept anyone's public certificate. Files are read on every call, so
// renewed certificates take effect on the next connection. On error c is
// left open for the caller to close, and its deadline is cleared.
func LinkTLS(c net.Conn, n *config.Net, server bool, timeout time.Duration) (net.Conn, error) {
	if n == nil || !n.TLS {
		return c, nil
	}
	tc, err := linkTLSConfig(n, server)
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = defaultLinkTimeout
	}
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, fmt.Errorf("replication: tls: set deadline: %w", err)
	}
	var conn *tls.Conn
	side := "client"
	if server {
		conn, side = tls.Server(c, tc), "server"
	} else {
		conn = tls.Client(c, tc)
	}
	err = conn.Handshake()
	_ = c.SetDeadline(time.Time{})
	if err != nil {
		return nil, fmt.Errorf("replication: tls %s handshake with %v: %w", side, c.RemoteAddr(), err)
	}
	return conn, nil
}

// linkTLSConfig loads n's certificate, key and CA into a tls.Config for one
// side of a peer link.
func linkTLSConfig(n *config.Net, server bool) (*tls.Config, error) {
	switch {
	case n.TLSCert == "" || n.TLSKey == "":
		return nil, errors.New("replication: tls: tls yes needs tls-cert and tls-key")
	case n.TLSCA == "":
		return nil, errors.New("replication: tls: tls yes needs tls-ca to verify the peer's certificate")
	}
	certPEM, err := os.ReadFile(n.TLSCert)
	if err != nil {
		return nil, fmt.Errorf("replication: tls: tls-cert: %w", err)
	}
	keyPEM, err := os.ReadFile(n.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("replication: tls: tls-key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("replication: tls: tls-cert %s / tls-key %s: %w", n.TLSCert, n.TLSKey, err)
	}
	caPEM, err := os.ReadFile(n.TLSCA)
	if err != nil {
		return nil, fmt.Errorf("replication: tls: tls-ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("replication: tls: tls-ca %s: no PEM certificate found", n.TLSCA)
	}
	verify := func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("replication: tls: peer presented no certificate")
		}
		opts := x509.VerifyOptions{
			Roots:         roots,
			Intermediates: x509.NewCertPool(),
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}
		for _, ic := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(ic)
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return fmt.Errorf("replication: tls: peer certificate: %w", err)
		}
		return nil
	}
	tc := &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{cert},
		SessionTicketsDisabled: true,
		VerifyConnection:       verify,
	}
	if server {
		// Demand a certificate; the chain is checked by verify.
		tc.ClientAuth = tls.RequireAnyClientCert
	} else {
		// No host name to check (peers are addressed by IP): the default
		// verification is replaced by verify, which still checks the chain.
		tc.InsecureSkipVerify = true
	}
	return tc, nil
}
