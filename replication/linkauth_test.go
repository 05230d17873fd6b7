package replication

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"hash"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/twinbd/twinbd/config"
)

// authTestTimeout keeps the failure tests quick; successful exchanges on
// loopback take far less.
const authTestTimeout = 2 * time.Second

func authCfgPair(secret string) (AuthConfig, AuthConfig) {
	a := AuthConfig{Resource: "r0", NodeID: 1, PeerNodeID: 2, Secret: secret, Timeout: authTestTimeout}
	b := AuthConfig{Resource: "r0", NodeID: 2, PeerNodeID: 1, Secret: secret, Timeout: authTestTimeout}
	return a, b
}

// authPipe returns the two ends of a net.Pipe: unbuffered, so a write
// waits for the peer's read.
func authPipe(t *testing.T) (net.Conn, net.Conn) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// authTCP returns both ends of a loopback TCP connection (dialer first).
func authTCP(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	r := <-ch
	require.NoError(t, r.err)
	t.Cleanup(func() { d.Close(); r.c.Close() })
	return d, r.c
}

var authConns = map[string]func(*testing.T) (net.Conn, net.Conn){"pipe": authPipe, "tcp": authTCP}

type authResult struct {
	hello *HelloMsg
	err   error
	took  time.Duration
}

// authBoth runs Authenticate on both ends at once. Like the session code, a
// side closes its connection when Authenticate fails.
func authBoth(ca, cb net.Conn, a, b AuthConfig) (ra, rb authResult) {
	var wg sync.WaitGroup
	run := func(c net.Conn, cfg AuthConfig, r *authResult) {
		defer wg.Done()
		start := time.Now()
		r.hello, r.err = Authenticate(c, cfg)
		r.took = time.Since(start)
		if r.err != nil {
			c.Close()
		}
	}
	wg.Add(2)
	go run(ca, a, &ra)
	go run(cb, b, &rb)
	wg.Wait()
	return ra, rb
}

func TestAuthenticateOK(t *testing.T) {
	for name, conns := range authConns {
		for _, alg := range []string{"sha1", "sha256", "sha512", ""} {
			t.Run(name+"/"+alg, func(t *testing.T) {
				a, b := authCfgPair("s3cret")
				a.HMACAlg, b.HMACAlg = alg, alg
				a.Timeout, b.Timeout = 300*time.Millisecond, 300*time.Millisecond
				ca, cb := conns(t)
				ra, rb := authBoth(ca, cb, a, b)
				require.NoError(t, ra.err)
				require.NoError(t, rb.err)
				require.Equal(t, uint32(2), ra.hello.NodeID)
				require.Equal(t, uint32(1), rb.hello.NodeID)
				require.Equal(t, "r0", ra.hello.Resource)
				require.Equal(t, "r0", rb.hello.Resource)
				require.Equal(t, ProtocolVersion, ra.hello.Version)
				require.NotEqual(t, ra.hello.Challenge, rb.hello.Challenge)
				require.NotEqual(t, [32]byte{}, ra.hello.Challenge)

				// The deadlines are cleared, and the stream is positioned
				// right after the handshake: frames still flow once the
				// handshake timeout has passed.
				time.Sleep(400 * time.Millisecond)
				authExchangePing(t, ca, cb)
			})
		}
	}
}

// authExchangePing sends a Ping each way and reads it back (writes and
// reads run concurrently: a pipe write waits for the peer's read).
func authExchangePing(t *testing.T, ca, cb net.Conn) {
	t.Helper()
	errs := make(chan error, 4)
	for _, c := range []net.Conn{ca, cb} {
		go func() { errs <- WriteMessage(c, 3, &PingMsg{}) }()
		go func() {
			f, _, err := ReadFrame(c, nil)
			if err == nil && (f.Type != MsgPing || f.Seq != 3) {
				err = errors.New("unexpected frame " + f.Type.String())
			}
			errs <- err
		}()
	}
	for range 4 {
		require.NoError(t, <-errs)
	}
}

func TestAuthenticateNoSecretBothSides(t *testing.T) {
	a, b := authCfgPair("")
	ca, cb := authPipe(t)
	ra, rb := authBoth(ca, cb, a, b)
	require.NoError(t, ra.err)
	require.NoError(t, rb.err)
}

func TestAuthenticateWrongSecret(t *testing.T) {
	const secretA, secretB = "correct horse battery staple", "Tr0ub4dor&3"
	for name, conns := range authConns {
		t.Run(name, func(t *testing.T) {
			a, _ := authCfgPair(secretA)
			_, b := authCfgPair(secretB)
			ca, cb := conns(t)
			ra, rb := authBoth(ca, cb, a, b)
			for _, r := range []authResult{ra, rb} {
				require.ErrorIs(t, r.err, ErrAuthFailed)
				require.NotContains(t, r.err.Error(), secretA)
				require.NotContains(t, r.err.Error(), secretB)
				require.Less(t, r.took, authTestTimeout)
			}
		})
	}
}

func TestAuthenticateSecretOneSide(t *testing.T) {
	for _, secretOnA := range []bool{true, false} {
		a, b := authCfgPair("")
		if secretOnA {
			a.Secret = "only-here"
		} else {
			b.Secret = "only-here"
		}
		ca, cb := authPipe(t)
		ra, rb := authBoth(ca, cb, a, b)
		require.ErrorIs(t, ra.err, ErrAuthFailed)
		require.ErrorIs(t, rb.err, ErrAuthFailed)
		require.NotContains(t, ra.err.Error(), "only-here")
		require.NotContains(t, rb.err.Error(), "only-here")
	}
}

func TestAuthenticateDifferentAlg(t *testing.T) {
	a, b := authCfgPair("s3cret")
	a.HMACAlg, b.HMACAlg = "sha1", "sha512"
	ca, cb := authPipe(t)
	ra, rb := authBoth(ca, cb, a, b)
	require.ErrorIs(t, ra.err, ErrAuthFailed)
	require.ErrorIs(t, rb.err, ErrAuthFailed)
}

func TestAuthenticateUnknownAlg(t *testing.T) {
	a, _ := authCfgPair("s3cret")
	a.HMACAlg = "md5"
	ca, cb := authPipe(t)
	start := time.Now()
	_, err := Authenticate(ca, a)
	require.ErrorContains(t, err, "md5")
	require.Less(t, time.Since(start), time.Second)
	// Nothing was sent.
	require.NoError(t, cb.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
	n, err := cb.Read(make([]byte, 1))
	require.Zero(t, n)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
}

func TestAuthenticateWrongResource(t *testing.T) {
	for name, conns := range authConns {
		t.Run(name, func(t *testing.T) {
			a, b := authCfgPair("s3cret")
			b.Resource = "r1"
			ca, cb := conns(t)
			ra, rb := authBoth(ca, cb, a, b)
			require.ErrorIs(t, ra.err, ErrWrongResource)
			if !errors.Is(rb.err, ErrWrongResource) {
				require.ErrorIs(t, rb.err, ErrPeerRefused)
			}
		})
	}
}

func TestAuthenticateWrongNode(t *testing.T) {
	a, b := authCfgPair("s3cret")
	a.PeerNodeID = 3 // b is node 2
	ca, cb := authPipe(t)
	ra, rb := authBoth(ca, cb, a, b)
	require.ErrorIs(t, ra.err, ErrWrongNode)
	require.ErrorContains(t, ra.err, "peer is node 2, want 3")
	// b found nothing wrong; a told it why it hung up.
	require.ErrorIs(t, rb.err, ErrPeerRefused)
	require.ErrorContains(t, rb.err, "unexpected node-id")

	// A peer claiming our own node-id.
	a, b = authCfgPair("s3cret")
	b.NodeID = 1
	ca, cb = authPipe(t)
	ra, _ = authBoth(ca, cb, a, b)
	require.ErrorIs(t, ra.err, ErrWrongNode)
}

// authFakePeer is a hand-driven other end of a net.Pipe.
type authFakePeer struct {
	t *testing.T
	c net.Conn
}

func (p *authFakePeer) hello() *HelloMsg {
	p.t.Helper()
	m := p.read()
	h, ok := m.(*HelloMsg)
	require.True(p.t, ok, "got %T", m)
	return h
}

func (p *authFakePeer) read() Message {
	p.t.Helper()
	f, _, err := ReadFrame(p.c, nil)
	require.NoError(p.t, err)
	m, err := DecodeMessage(f)
	require.NoError(p.t, err)
	return m
}

func (p *authFakePeer) write(seq uint64, m Message) {
	p.t.Helper()
	require.NoError(p.t, WriteMessage(p.c, seq, m))
}

// authAgainst runs Authenticate on one end of a pipe and script on the
// other, and returns Authenticate's result.
func authAgainst(t *testing.T, cfg AuthConfig, script func(p *authFakePeer)) authResult {
	t.Helper()
	ca, cb := authPipe(t)
	ch := make(chan authResult, 1)
	go func() {
		start := time.Now()
		h, err := Authenticate(ca, cfg)
		if err != nil {
			ca.Close() // as the session code does; unblocks the script
		}
		ch <- authResult{h, err, time.Since(start)}
	}()
	script(&authFakePeer{t, cb})
	return <-ch
}

// An attacker without the secret answers our Hello with our own challenge
// and then replays our Auth response.
func TestAuthenticateReflectedChallenge(t *testing.T) {
	a, _ := authCfgPair("s3cret")
	r := authAgainst(t, a, func(p *authFakePeer) {
		h := p.hello()
		p.write(0, &HelloMsg{Version: ProtocolVersion, Resource: "r0", NodeID: 2, Challenge: h.Challenge})
		d, ok := p.read().(*DisconnectMsg)
		require.True(t, ok)
		require.Equal(t, "authentication failed", d.Reason)
	})
	require.ErrorIs(t, r.err, ErrAuthFailed)
}

func TestAuthenticateReplayedAuth(t *testing.T) {
	a, _ := authCfgPair("s3cret")
	r := authAgainst(t, a, func(p *authFakePeer) {
		p.hello()
		var ch [32]byte
		rand.Read(ch[:])
		p.write(0, &HelloMsg{Version: ProtocolVersion, Resource: "r0", NodeID: 2, Challenge: ch})
		auth, ok := p.read().(*AuthMsg)
		require.True(t, ok)
		p.write(1, auth) // our own response, echoed
		d, ok := p.read().(*DisconnectMsg)
		require.True(t, ok)
		require.Equal(t, "authentication failed", d.Reason)
	})
	require.ErrorIs(t, r.err, ErrAuthFailed)
}

// The attacker opens two connections to the same node and makes each
// answer the other's challenge, relaying the responses crosswise. Without
// the responder's node-id in the HMAC input both would be accepted.
func TestAuthenticateReflectionAcrossConnections(t *testing.T) {
	a, _ := authCfgPair("s3cret")
	c1, x1 := authPipe(t)
	c2, x2 := authPipe(t)
	results := make(chan error, 2)
	for _, c := range []net.Conn{c1, c2} {
		go func() {
			_, err := Authenticate(c, a)
			results <- err
		}()
	}
	p1, p2 := &authFakePeer{t, x1}, &authFakePeer{t, x2}
	h1, h2 := p1.hello(), p2.hello()
	p1.write(0, &HelloMsg{Version: ProtocolVersion, Resource: "r0", NodeID: 2, Challenge: h2.Challenge})
	p2.write(0, &HelloMsg{Version: ProtocolVersion, Resource: "r0", NodeID: 2, Challenge: h1.Challenge})
	a1, ok := p1.read().(*AuthMsg)
	require.True(t, ok)
	a2, ok := p2.read().(*AuthMsg)
	require.True(t, ok)
	// Crosswise: each is an HMAC over (the other connection's) challenges.
	p1.write(1, a2)
	p2.write(1, a1)
	for _, p := range []*authFakePeer{p1, p2} {
		d, ok := p.read().(*DisconnectMsg)
		require.True(t, ok)
		require.Equal(t, "authentication failed", d.Reason)
	}
	for range 2 {
		require.ErrorIs(t, <-results, ErrAuthFailed)
	}
}

func TestAuthenticatePeerDisconnects(t *testing.T) {
	a, _ := authCfgPair("s3cret")
	r := authAgainst(t, a, func(p *authFakePeer) {
		p.hello()
		p.write(0, &DisconnectMsg{Reason: "go away"})
	})
	require.ErrorIs(t, r.err, ErrPeerRefused)
	require.ErrorContains(t, r.err, "go away")

	// After a good Auth, a Disconnect instead of AuthOK.
	_, b := authCfgPair("s3cret")
	r = authAgainst(t, a, func(p *authFakePeer) {
		h := p.hello()
		my := &HelloMsg{Version: ProtocolVersion, Resource: "r0", NodeID: 2}
		rand.Read(my.Challenge[:])
		p.write(0, my)
		resp := authResponse(authMustHash(t, ""), b.Secret, &h.Challenge, 2, &my.Challenge, "r0")
		_, ok := p.read().(*AuthMsg)
		require.True(t, ok)
		p.write(1, &AuthMsg{Response: resp})
		_, ok = p.read().(*AuthOKMsg) // ours was accepted by a
		require.True(t, ok)
		p.write(2, &DisconnectMsg{Reason: "changed my mind"})
	})
	require.ErrorIs(t, r.err, ErrPeerRefused)
	require.ErrorContains(t, r.err, "changed my mind")
}

func authMustHash(t *testing.T, alg string) func() hash.Hash {
	t.Helper()
	h, err := authHash(alg)
	require.NoError(t, err)
	return h
}

func TestAuthenticateProtocolErrors(t *testing.T) {
	a, _ := authCfgPair("s3cret")

	// A message out of turn.
	r := authAgainst(t, a, func(p *authFakePeer) {
		p.hello()
		p.write(0, &AuthOKMsg{})
		d, ok := p.read().(*DisconnectMsg)
		require.True(t, ok)
		require.Equal(t, "protocol error", d.Reason)
	})
	require.ErrorIs(t, r.err, ErrMalformed)

	// Another protocol version inside the Hello.
	r = authAgainst(t, a, func(p *authFakePeer) {
		p.hello()
		p.write(0, &HelloMsg{Version: ProtocolVersion + 1, Resource: "r0", NodeID: 2})
		_, ok := p.read().(*DisconnectMsg)
		require.True(t, ok)
	})
	require.ErrorIs(t, r.err, ErrBadVersion)
}

// authDrain reads and discards everything c receives until it is closed.
func authDrain(c net.Conn) { go io.Copy(io.Discard, c) }

func TestAuthenticateGarbage(t *testing.T) {
	a, _ := authCfgPair("s3cret")
	a.Timeout = 500 * time.Millisecond
	var hello bytes.Buffer
	require.NoError(t, WriteMessage(&hello, 0, &HelloMsg{Version: ProtocolVersion, Resource: "r0", NodeID: 2}))
	for _, tc := range []struct {
		name  string
		bytes []byte
		close bool
		want  error
	}{
		{"text", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + strings.Repeat("x", 100)), false, ErrBadMagic},
		{"zeros", make([]byte, 200), false, ErrBadMagic},
		{"truncated then close", hello.Bytes()[:hello.Len()-3], true, ErrTruncated},
		{"truncated header then close", hello.Bytes()[:HeaderSize-1], true, ErrTruncated},
		{"truncated then silence", hello.Bytes()[:hello.Len()-3], false, os.ErrDeadlineExceeded},
		{"corrupt payload", append(bytes.Clone(hello.Bytes()[:hello.Len()-1]), hello.Bytes()[hello.Len()-1]^1), false, ErrBadChecksum},
		// A Data frame larger than any handshake frame: cut off, never
		// buffered whole.
		{"large frame", append(frameHeader(MsgData, 0, 0, 1<<20, 0), make([]byte, 1<<20)...), true, ErrTruncated},
		{"close at once", nil, true, io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := authAgainst(t, a, func(p *authFakePeer) {
				if tc.close {
					// Take our Hello first, so that it is our read, not
					// our write, that meets the close.
					p.hello()
				} else {
					authDrain(p.c)
				}
				// The write may fail once Authenticate has given up.
				_, _ = p.c.Write(tc.bytes)
				if tc.close {
					p.c.Close()
				}
			})
			require.Error(t, r.err)
			require.ErrorIs(t, r.err, tc.want)
			require.Less(t, r.took, a.Timeout+time.Second)
		})
	}
}

func TestAuthenticateSilentPeer(t *testing.T) {
	a, _ := authCfgPair("s3cret")
	a.Timeout = 300 * time.Millisecond
	// One peer reads our Hello but says nothing; the other does not even
	// read (on a pipe our first write blocks).
	for _, reads := range []bool{true, false} {
		for name, conns := range authConns {
			ca, cb := conns(t)
			if reads {
				authDrain(cb)
			}
			start := time.Now()
			_, err := Authenticate(ca, a)
			took := time.Since(start)
			require.ErrorIs(t, err, os.ErrDeadlineExceeded, "%s reads=%v", name, reads)
			require.GreaterOrEqual(t, took, a.Timeout)
			require.Less(t, took, a.Timeout+time.Second)
		}
	}
}

// --- TLS ---

type authTestCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
}

func authWritePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
}

var authSerial = big.NewInt(0)
var authSerialMu sync.Mutex

func authNextSerial() *big.Int {
	authSerialMu.Lock()
	defer authSerialMu.Unlock()
	authSerial.Add(authSerial, big.NewInt(1))
	return new(big.Int).Set(authSerial)
}

func newAuthTestCA(t *testing.T, dir, name string) *authTestCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          authNextSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	file := filepath.Join(dir, name+".crt")
	authWritePEM(t, file, "CERTIFICATE", der)
	return &authTestCA{cert, key, file}
}

// leaf issues a node certificate (for 127.0.0.1, though no side checks
// the address) and returns a config.Net using it with caFile as tls-ca.
func (ca *authTestCA) leaf(t *testing.T, dir, name, caFile string) *config.Net {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: authNextSerial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	n := &config.Net{TLS: true,
		TLSCert: filepath.Join(dir, name+".crt"),
		TLSKey:  filepath.Join(dir, name+".key"),
		TLSCA:   caFile}
	authWritePEM(t, n.TLSCert, "CERTIFICATE", der)
	authWritePEM(t, n.TLSKey, "PRIVATE KEY", keyDER)
	return n
}

type linkTLSResult struct {
	c   net.Conn
	err error
}

// linkTLSBoth runs LinkTLS on both ends of a loopback TCP connection, the
// dialer as client; a side that fails closes its connection.
func linkTLSBoth(t *testing.T, client, server *config.Net, timeout time.Duration) (rc, rs linkTLSResult) {
	t.Helper()
	cc, sc := authTCP(t)
	var wg sync.WaitGroup
	run := func(c net.Conn, n *config.Net, isServer bool, r *linkTLSResult) {
		defer wg.Done()
		r.c, r.err = LinkTLS(c, n, isServer, timeout)
		if r.err != nil {
			c.Close()
		}
	}
	wg.Add(2)
	go run(cc, client, false, &rc)
	go run(sc, server, true, &rs)
	wg.Wait()
	return rc, rs
}

func TestLinkTLSAuthenticate(t *testing.T) {
	dir := t.TempDir()
	ca := newAuthTestCA(t, dir, "ca")
	n1 := ca.leaf(t, dir, "node1", ca.file)
	n2 := ca.leaf(t, dir, "node2", ca.file)
	rc, rs := linkTLSBoth(t, n1, n2, authTestTimeout)
	require.NoError(t, rc.err)
	require.NoError(t, rs.err)
	for _, r := range []linkTLSResult{rc, rs} {
		tc, ok := r.c.(*tls.Conn)
		require.True(t, ok)
		st := tc.ConnectionState()
		require.Equal(t, uint16(tls.VersionTLS13), st.Version)
		require.Len(t, st.PeerCertificates, 1)
	}
	require.Equal(t, "node2", rc.c.(*tls.Conn).ConnectionState().PeerCertificates[0].Subject.CommonName)
	require.Equal(t, "node1", rs.c.(*tls.Conn).ConnectionState().PeerCertificates[0].Subject.CommonName)

	a, b := authCfgPair("s3cret")
	ra, rb := authBoth(rc.c, rs.c, a, b)
	require.NoError(t, ra.err)
	require.NoError(t, rb.err)
	authExchangePing(t, rc.c, rs.c)
}

func TestLinkTLSOtherCA(t *testing.T) {
	dir := t.TempDir()
	ca := newAuthTestCA(t, dir, "ca")
	rogue := newAuthTestCA(t, dir, "rogue")
	good := ca.leaf(t, dir, "node1", ca.file)
	// Signed by another CA, but trusting ours: it would accept us.
	bad := rogue.leaf(t, dir, "mallory", ca.file)

	t.Run("client with foreign cert", func(t *testing.T) {
		rc, rs := linkTLSBoth(t, bad, good, authTestTimeout)
		require.Error(t, rs.err)
		require.ErrorContains(t, rs.err, "certificate")
		if rc.err == nil {
			// TLS 1.3: the client finishes first and learns of the
			// refusal on its first read.
			a, _ := authCfgPair("s3cret")
			a.NodeID, a.PeerNodeID = 2, 1
			_, err := Authenticate(rc.c, a)
			require.Error(t, err)
		}
	})
	t.Run("server with foreign cert", func(t *testing.T) {
		rc, rs := linkTLSBoth(t, good, bad, authTestTimeout)
		require.Error(t, rc.err)
		require.ErrorContains(t, rc.err, "certificate")
		require.Error(t, rs.err)
	})
}

func TestLinkTLSPlainPeer(t *testing.T) {
	dir := t.TempDir()
	ca := newAuthTestCA(t, dir, "ca")
	n := ca.leaf(t, dir, "node1", ca.file)
	cc, sc := authTCP(t)
	a, _ := authCfgPair("s3cret")
	a.Timeout = time.Second
	errc := make(chan error, 1)
	go func() {
		_, err := Authenticate(cc, a) // plain TCP
		errc <- err
	}()
	start := time.Now()
	_, err := LinkTLS(sc, n, true, time.Second)
	require.Error(t, err)
	require.Less(t, time.Since(start), time.Second)
	sc.Close()
	require.Error(t, <-errc)
	require.Less(t, time.Since(start), 2*time.Second)

	// And a plain server facing a TLS client: the client's handshake fails.
	cc, sc = authTCP(t)
	authDrain(sc)
	go func() {
		time.Sleep(100 * time.Millisecond)
		_ = WriteMessage(sc, 0, &HelloMsg{Version: ProtocolVersion, Resource: "r0", NodeID: 2})
	}()
	_, err = LinkTLS(cc, n, false, time.Second)
	require.Error(t, err)
}

func TestLinkTLSSilentPeer(t *testing.T) {
	dir := t.TempDir()
	ca := newAuthTestCA(t, dir, "ca")
	n := ca.leaf(t, dir, "node1", ca.file)
	cc, sc := authTCP(t)
	authDrain(cc)
	start := time.Now()
	_, err := LinkTLS(sc, n, true, 200*time.Millisecond)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.Less(t, time.Since(start), time.Second)
}

func TestLinkTLSOff(t *testing.T) {
	c, _ := authPipe(t)
	got, err := LinkTLS(c, &config.Net{TLSCert: "/nonexistent"}, true, 0)
	require.NoError(t, err)
	require.Same(t, c, got)
	got, err = LinkTLS(c, nil, false, 0)
	require.NoError(t, err)
	require.Same(t, c, got)
}

func TestLinkTLSBadFiles(t *testing.T) {
	dir := t.TempDir()
	ca := newAuthTestCA(t, dir, "ca")
	n := ca.leaf(t, dir, "node1", ca.file)
	other := ca.leaf(t, dir, "node2", ca.file)
	garbage := filepath.Join(dir, "garbage.pem")
	require.NoError(t, os.WriteFile(garbage, []byte("not a certificate\n"), 0o600))
	missing := filepath.Join(dir, "missing.pem")

	for _, tc := range []struct {
		name  string
		edit  func(n *config.Net)
		names []string // in the error
	}{
		{"missing cert", func(n *config.Net) { n.TLSCert = missing }, []string{missing}},
		{"missing key", func(n *config.Net) { n.TLSKey = missing }, []string{missing}},
		{"missing ca", func(n *config.Net) { n.TLSCA = missing }, []string{missing}},
		{"garbage cert", func(n *config.Net) { n.TLSCert = garbage }, []string{garbage}},
		{"garbage key", func(n *config.Net) { n.TLSKey = garbage }, []string{garbage}},
		{"garbage ca", func(n *config.Net) { n.TLSCA = garbage }, []string{garbage}},
		{"key of another cert", func(n *config.Net) { n.TLSKey = other.TLSKey }, []string{n.TLSCert, other.TLSKey}},
		{"no ca", func(n *config.Net) { n.TLSCA = "" }, []string{"tls-ca"}},
		{"no cert", func(n *config.Net) { n.TLSCert = "" }, []string{"tls-cert"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nn := *n
			tc.edit(&nn)
			c, _ := authPipe(t)
			_, err := LinkTLS(c, &nn, false, time.Second)
			require.Error(t, err)
			for _, s := range tc.names {
				require.ErrorContains(t, err, s)
			}
			key, rerr := os.ReadFile(n.TLSKey)
			require.NoError(t, rerr)
			require.NotContains(t, err.Error(), string(key))
		})
	}
}

// A 65-byte Auth response is refused from its header alone.
func TestAuthFrameTooLarge(t *testing.T) {
	hdr := frameHeader(MsgAuth, 0, 0, authMaxResponse+1, 0)
	_, _, err := ReadFrame(io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(make([]byte, 100))), nil)
	require.ErrorIs(t, err, ErrFrameTooLarge)
	err = WriteFrame(io.Discard, &Frame{Type: MsgAuth, Payload: make([]byte, authMaxResponse+1)})
	require.ErrorIs(t, err, ErrFrameTooLarge)
}
