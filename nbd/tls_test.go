package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/twinbd/twinbd/device"
)

// testPKI is a throwaway CA with a server certificate (127.0.0.1, localhost)
// and a client certificate, plus a client certificate from another CA. The
// file names in Dir are libnbd's (ca-cert.pem, client-cert.pem,
// client-key.pem), so Dir works as nbds://…?tls-certificates=Dir.
type testPKI struct {
	Dir                   string
	CACert                string // PEM file
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	RogueDir              string // libnbd layout: a client certificate from another CA
	pool                  *x509.CertPool
	client, rogue         tls.Certificate
}

// newTestPKI writes a throwaway PKI under a fresh directory.
func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	dir := t.TempDir()
	p := &testPKI{Dir: dir, CACert: filepath.Join(dir, "ca-cert.pem"),
		ServerCert: filepath.Join(dir, "server-cert.pem"), ServerKey: filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client-cert.pem"), ClientKey: filepath.Join(dir, "client-key.pem"),
		RogueDir: filepath.Join(dir, "rogue")}
	require.NoError(t, os.Mkdir(p.RogueDir, 0o700))

	caCert, caKey, caPEM := pkiCA(t, "twinbd test CA")
	write := func(path string, data []byte) { require.NoError(t, os.WriteFile(path, data, 0o600)) }
	write(p.CACert, caPEM)
	p.pool = x509.NewCertPool()
	p.pool.AddCert(caCert)
	certPEM, keyPEM := pkiLeaf(t, caCert, caKey, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	write(p.ServerCert, certPEM)
	write(p.ServerKey, keyPEM)
	certPEM, keyPEM = pkiLeaf(t, caCert, caKey, "client", x509.ExtKeyUsageClientAuth)
	write(p.ClientCert, certPEM)
	write(p.ClientKey, keyPEM)
	var err error
	p.client, err = tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)

	// The rogue directory trusts the right CA (so the server is accepted)
	// but presents a client certificate from a CA the server does not know.
	rogueCA, rogueKey, _ := pkiCA(t, "rogue CA")
	certPEM, keyPEM = pkiLeaf(t, rogueCA, rogueKey, "client", x509.ExtKeyUsageClientAuth)
	write(filepath.Join(p.RogueDir, "ca-cert.pem"), caPEM)
	write(filepath.Join(p.RogueDir, "client-cert.pem"), certPEM)
	write(filepath.Join(p.RogueDir, "client-key.pem"), keyPEM)
	p.rogue, err = tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	return p
}

func pkiKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return k
}

func pkiSerial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	require.NoError(t, err)
	return n
}

func pkiCA(t testing.TB, name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	key := pkiKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          pkiSerial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func pkiLeaf(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	key := pkiKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: pkiSerial(t),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	require.NoError(t, err)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

// clientTLS is a client configuration trusting the test CA, presenting cert
// when non-nil.
func (p *testPKI) clientTLS(cert *tls.Certificate) *tls.Config {
	tc := &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return tc
}

func (p *testPKI) serverConfig(mode TLSMode, withCA bool, exp Export) ServerConfig {
	cfg := ServerConfig{Exports: StaticResolver{"r0": exp}, TLS: mode, TLSCert: p.ServerCert, TLSKey: p.ServerKey}
	if withCA {
		cfg.TLSCA = p.CACert
	}
	return cfg
}

// logBuffer is a goroutine-safe slog sink for asserting on log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestTLSRequiredRefusesPlainOptions(t *testing.T) {
	p := newTestPKI(t)
	var logs logBuffer
	cfg := p.serverConfig(TLSRequire, false, memExport(t))
	cfg.Logger = logs.logger()
	_, addr := srvStart(t, cfg)

	rc := rawDial(t, addr, ClientFlagFixedNewstyle|ClientFlagNoZeroes)
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{
		{OptList, nil},
		{OptInfo, rawInfoGoData("r0")},
		{OptGo, rawInfoGoData("r0")},
		{OptStructuredReply, nil},
		{42, []byte("junk")},
	} {
		rc.sendOpt(o.opt, o.data)
		typ, msg := rc.readOptReply(o.opt)
		require.Equal(t, RepErrTLSReqd, typ, "option %d", o.opt)
		require.Contains(t, string(msg), "TLS required")
	}
	// EXPORT_NAME has no error reply: the connection closes.
	rc.sendOpt(OptExportName, []byte("r0"))
	rc.expectClosed()
	require.Contains(t, logs.String(), "TLS required")

	// A client without fixed newstyle could not read TLS_REQD: closed.
	rc = rawDial(t, addr, 0)
	rc.expectClosed()

	// ABORT is still answered.
	rc = rawDial(t, addr, ClientFlagFixedNewstyle)
	rc.sendOpt(OptAbort, nil)
	typ, _ := rc.readOptReply(OptAbort)
	require.Equal(t, RepAck, typ)

	// The repo's client reports the refusal by name.
	_, err := Dial(context.Background(), "tcp", addr, ClientOptions{ExportName: "r0"})
	require.ErrorIs(t, err, ErrOptionRefused)
	require.Contains(t, err.Error(), "ERR_TLS_REQD")
}

func TestTLSClientRoundTrip(t *testing.T) {
	p := newTestPKI(t)
	m := device.NewMemory(rawExportSize)
	for _, tc := range []struct {
		name   string
		mode   TLSMode
		withCA bool
	}{{"required+ca", TLSRequire, true}, {"required", TLSRequire, false}, {"offered", TLSOffer, false}} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := srvStart(t, p.serverConfig(tc.mode, tc.withCA, NewDeviceExport(m, false)))
			c, err := Dial(context.Background(), "tcp", addr, ClientOptions{ExportName: "r0", TLS: p.clientTLS(&p.client)})
			require.NoError(t, err)
			want := bytes.Repeat([]byte(tc.name[:1]), 8192)
			_, err = c.WriteAt(want, 4096)
			require.NoError(t, err)
			require.NoError(t, c.Flush())
			got := make([]byte, len(want))
			_, err = c.ReadAt(got, 4096)
			require.NoError(t, err)
			require.Equal(t, want, got)
			require.NoError(t, c.Close())
			onDisk := make([]byte, len(want))
			_, err = m.ReadAt(onDisk, 4096)
			require.NoError(t, err)
			require.Equal(t, want, onDisk)
		})
	}
}

func TestTLSOfferedAcceptsPlain(t *testing.T) {
	p := newTestPKI(t)
	_, addr := srvStart(t, p.serverConfig(TLSOffer, false, memExport(t)))
	c, err := Dial(context.Background(), "tcp", addr, ClientOptions{ExportName: "r0"})
	require.NoError(t, err)
	require.EqualValues(t, rawExportSize, c.Size())
	require.NoError(t, c.Close())
}

func TestTLSClientCertificateChecked(t *testing.T) {
	p := newTestPKI(t)
	var logs logBuffer
	cfg := p.serverConfig(TLSRequire, true, memExport(t))
	cfg.Logger = logs.logger()
	_, addr := srvStart(t, cfg)

	// A certificate from another CA, and none at all.
	_, err := Dial(context.Background(), "tcp", addr, ClientOptions{ExportName: "r0", TLS: p.clientTLS(&p.rogue)})
	require.Error(t, err)
	time.Sleep(refusalLogEvery) // the refusal log is rate-limited
	_, err = Dial(context.Background(), "tcp", addr, ClientOptions{ExportName: "r0", TLS: p.clientTLS(nil)})
	require.Error(t, err)
	require.Eventually(t, func() bool {
		return strings.Count(logs.String(), "TLS handshake failed") == 2
	}, 5*time.Second, 10*time.Millisecond, "logs:\n%s", logs.String())
	require.Contains(t, logs.String(), "remote=127.0.0.1:")

	// The client checks the server too: an unknown CA is refused.
	other := newTestPKI(t)
	_, err = Dial(context.Background(), "tcp", addr, ClientOptions{ExportName: "r0", TLS: other.clientTLS(&other.client)})
	require.Error(t, err)
	require.Contains(t, err.Error(), "certificate")
}

func TestTLSStartTLSEdgeCases(t *testing.T) {
	p := newTestPKI(t)
	var logs logBuffer
	cfg := p.serverConfig(TLSOffer, false, memExport(t))
	cfg.Logger = logs.logger()
	_, addr := srvStart(t, cfg)

	// STARTTLS with a payload is invalid.
	rc := rawDial(t, addr, ClientFlagFixedNewstyle|ClientFlagNoZeroes)
	rc.sendOpt(OptStartTLS, []byte("x"))
	typ, _ := rc.readOptReply(OptStartTLS)
	require.Equal(t, RepErrInvalid, typ)

	// Plaintext sent behind STARTTLS, before the ACK was read, would be
	// injected into the TLS session: the server closes instead.
	b := binary.BigEndian.AppendUint64(nil, MagicOption)
	b = binary.BigEndian.AppendUint32(b, OptStartTLS)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = append(b, b...) // a second option in the same segment
	rc.write(b)
	rc.expectClosed()

	// STARTTLS inside TLS is invalid; options then work inside TLS.
	rc = rawDial(t, addr, ClientFlagFixedNewstyle|ClientFlagNoZeroes)
	rc.sendOpt(OptStartTLS, nil)
	typ, _ = rc.readOptReply(OptStartTLS)
	require.Equal(t, RepAck, typ)
	tconn := tls.Client(rc.nc, p.clientTLS(nil))
	require.NoError(t, tconn.Handshake())
	rc.nc, rc.br = tconn, bufio.NewReader(tconn)
	rc.sendOpt(OptStartTLS, nil)
	typ, _ = rc.readOptReply(OptStartTLS)
	require.Equal(t, RepErrInvalid, typ)
	info := rc.infoGo(OptGo, "r0")
	require.EqualValues(t, rawExportSize, info.size)

	// TLS off: STARTTLS is unsupported.
	_, addr2 := srvStart(t, ServerConfig{Exports: StaticResolver{"r0": memExport(t)}})
	rc = rawDial(t, addr2, ClientFlagFixedNewstyle)
	rc.sendOpt(OptStartTLS, nil)
	typ, _ = rc.readOptReply(OptStartTLS)
	require.Equal(t, RepErrUnsup, typ)

	// An unreadable key: STARTTLS is refused, the cause logged, the
	// client told to look there.
	bad := p.serverConfig(TLSRequire, false, memExport(t))
	bad.TLSKey = filepath.Join(t.TempDir(), "missing-key.pem")
	bad.Logger = logs.logger()
	_, addr3 := srvStart(t, bad)
	rc = rawDial(t, addr3, ClientFlagFixedNewstyle)
	rc.sendOpt(OptStartTLS, nil)
	typ, _ = rc.readOptReply(OptStartTLS)
	require.Equal(t, RepErrPolicy, typ)
	require.Contains(t, logs.String(), "missing-key.pem")
}

func TestAllowListRefusalLogged(t *testing.T) {
	var logs logBuffer
	_, addr := srvStart(t, ServerConfig{
		Exports:   StaticResolver{"": memExport(t)},
		AllowList: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
		Logger:    logs.logger(),
	})
	// From 127.0.0.1: closed before any protocol byte, five times; the
	// log says so once (rate limit) with the address.
	for range 5 {
		nc, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		n, err := io.Copy(io.Discard, nc)
		require.NoError(t, err)
		require.Zero(t, n)
		nc.Close()
	}
	out := logs.String()
	require.Equal(t, 1, strings.Count(out, "refused by allow-list"), out)
	require.Contains(t, out, "remote=127.0.0.1:")

	// From 127.0.0.2: served.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	c, err := NewClient(nc, ClientOptions{})
	require.NoError(t, err)
	require.EqualValues(t, rawExportSize, c.Size())
	require.NoError(t, c.Close())
}

// libnbd's nbdinfo and nbdcopy against a TLS-required export: nbds:// with
// the test PKI works; plain nbd:// is refused with nothing written; a
// client certificate from another CA is refused.
func TestTLSLibnbd(t *testing.T) {
	needBinary(t, "nbdinfo", "libnbd-bin")
	needBinary(t, "nbdcopy", "libnbd-bin")
	p := newTestPKI(t)
	path := filepath.Join(t.TempDir(), "export.img")
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	require.NoError(t, os.Truncate(path, 1<<20))
	d, err := device.OpenFile(path)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	cfg := p.serverConfig(TLSRequire, true, NewDeviceExport(d, false))
	cfg.MaxRequest = DefaultMaxRequest
	_, addr := srvStart(t, cfg)

	out := run(t, 20*time.Second, "nbdinfo", "nbds://"+addr+"/r0?tls-certificates="+p.Dir)
	require.Contains(t, out, "export-size: 1048576")

	src := filepath.Join(t.TempDir(), "src.img")
	require.NoError(t, os.WriteFile(src, bytes.Repeat([]byte{0xA5}, 1<<20), 0o600))

	// Plain: refused, with libnbd naming TLS; the export stays zero.
	for _, args := range [][]string{
		{"nbdinfo", "nbd://" + addr + "/r0"},
		{"nbdcopy", src, "nbd://" + addr + "/r0"},
		{"nbdcopy", src, "nbds://" + addr + "/r0?tls-certificates=" + p.RogueDir},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		msg, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		cancel()
		require.Error(t, err, "%v succeeded: %s", args, msg)
		t.Logf("%v: %s", args, strings.TrimSpace(string(msg)))
		if strings.HasPrefix(args[len(args)-1], "nbd://") {
			require.Contains(t, strings.ToLower(string(msg)), "tls", "%v", args)
		}
	}
	require.Equal(t, make([]byte, 1<<20), mustRead(t, path))

	run(t, 20*time.Second, "nbdcopy", src, "nbds://"+addr+"/r0?tls-certificates="+p.Dir)
	require.Equal(t, bytes.Repeat([]byte{0xA5}, 1<<20), mustRead(t, path))
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}
