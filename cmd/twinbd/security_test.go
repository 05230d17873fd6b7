package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/twinbd/twinbd/nbd"
)

// secPKI is a throwaway CA, one certificate for the nodes (the NBD export
// and the peer link), a client certificate, and a client certificate from
// another CA. Dir and RogueDir use libnbd's file names (ca-cert.pem,
// client-cert.pem, client-key.pem) for nbds://…?tls-certificates=DIR.
type secPKI struct {
	Dir, RogueDir         string
	CA, NodeCert, NodeKey string
	pool                  *x509.CertPool
	client                tls.Certificate
}

func newSecPKI(t *testing.T) *secPKI {
	t.Helper()
	dir := t.TempDir()
	p := &secPKI{Dir: dir, RogueDir: filepath.Join(dir, "rogue"), CA: filepath.Join(dir, "ca-cert.pem"),
		NodeCert: filepath.Join(dir, "node-cert.pem"), NodeKey: filepath.Join(dir, "node-key.pem")}
	require.NoError(t, os.Mkdir(p.RogueDir, 0o700))
	write := func(path string, b []byte) { require.NoError(t, os.WriteFile(path, b, 0o600)) }

	ca, caKey, caPEM := secCert(t, nil, nil, "twinbd test CA")
	write(p.CA, caPEM)
	p.pool = x509.NewCertPool()
	p.pool.AddCert(ca)
	_, nodeKey, certPEM := secCert(t, ca, caKey, "127.0.0.1")
	write(p.NodeCert, certPEM)
	write(p.NodeKey, secKeyPEM(t, nodeKey))
	_, clientKey, certPEM := secCert(t, ca, caKey, "client")
	write(filepath.Join(dir, "client-cert.pem"), certPEM)
	write(filepath.Join(dir, "client-key.pem"), secKeyPEM(t, clientKey))
	var err error
	p.client, err = tls.X509KeyPair(certPEM, secKeyPEM(t, clientKey))
	require.NoError(t, err)

	rogue, rogueKey, _ := secCert(t, nil, nil, "rogue CA")
	_, key, certPEM := secCert(t, rogue, rogueKey, "client")
	write(filepath.Join(p.RogueDir, "ca-cert.pem"), caPEM)
	write(filepath.Join(p.RogueDir, "client-cert.pem"), certPEM)
	write(filepath.Join(p.RogueDir, "client-key.pem"), secKeyPEM(t, key))
	return p
}

// secCert makes a CA (parent nil) or a leaf for server and client auth,
// valid for 127.0.0.1.
func secCert(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	signer, signerKey := tmpl, key
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	} else {
		signer, signerKey = parent, parentKey
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func secKeyPEM(t *testing.T, key *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// failCmd runs a command that must fail and returns its combined output.
func failCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	require.Error(t, err, "%s %v succeeded: %s", name, args, out)
	return string(out)
}

// A pair whose export requires TLS with client certificates and whose peer
// link runs TLS and HMAC auth: plain and wrongly-certified NBD clients are
// refused and write nothing, libnbd's nbds:// and the Go client work; then
// a wrong shared secret fails the link handshake, and neither the daemon
// logs nor status output ever carry the secrets or the private keys.
func TestSecurityNBDTLSAndSecrets(t *testing.T) {
	need(t, "nbdinfo", "nbdcopy")
	pki := newSecPKI(t)
	const secret, wrongSecret = "s3cret-Zq7-never-logged", "wr0ng-Kx9-never-logged"
	p := newPair(t)
	defer p.logs()
	p.netExtra = fmt.Sprintf("tls yes; tls-cert %s; tls-key %s; tls-ca %s;", pki.NodeCert, pki.NodeKey, pki.CA)
	p.resExtra = fmt.Sprintf("nbd { tls required; tls-cert %s; tls-key %s; tls-ca %s; allow 127.0.0.1; allow 10.0.0.0/8; }",
		pki.NodeCert, pki.NodeKey, pki.CA)
	for _, n := range pairNodes {
		p.writeConf(n, secret)
	}
	p.upAndSync()
	addr := fmt.Sprintf("127.0.0.1:%d", p.nbd["alpha"])
	plain, secure := "nbd://"+addr+"/r0", "nbds://"+addr+"/r0?tls-certificates="+pki.Dir

	src := filepath.Join(t.TempDir(), "src.img")
	pattern := bytes.Repeat([]byte{0xA5}, 1<<20)
	require.NoError(t, os.WriteFile(src, pattern, 0o600))
	zero := func() {
		t.Helper()
		f, err := os.Open(p.img["alpha"])
		require.NoError(t, err)
		defer f.Close()
		b := make([]byte, 1<<20)
		_, err = io.ReadFull(f, b)
		require.NoError(t, err)
		require.Equal(t, make([]byte, 1<<20), b, "a refused client wrote")
	}

	// Refused: plain clients, and a certificate from another CA.
	out := failCmd(t, "nbdinfo", plain)
	t.Logf("plain nbdinfo: %s", out)
	require.Contains(t, strings.ToLower(out), "tls")
	out = failCmd(t, "nbdcopy", src, plain)
	require.Contains(t, out, "server requires TLS")
	failCmd(t, "nbdcopy", src, "nbds://"+addr+"/r0?tls-certificates="+pki.RogueDir)
	_, err := nbd.Dial(context.Background(), "tcp", addr, nbd.ClientOptions{ExportName: "r0"})
	require.ErrorContains(t, err, "ERR_TLS_REQD")
	zero()

	// Accepted: libnbd with the right certificates, and the Go client.
	require.Contains(t, secRun(t, "nbdinfo", secure), "export-size:")
	secRun(t, "nbdcopy", src, secure)
	c, err := nbd.Dial(context.Background(), "tcp", addr, nbd.ClientOptions{ExportName: "r0",
		TLS: &tls.Config{RootCAs: pki.pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{pki.client}}})
	require.NoError(t, err)
	got := make([]byte, len(pattern))
	_, err = c.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, pattern, got)
	require.NoError(t, c.Close())
	p.ok("alpha", "wait-sync", "--timeout", "30s", "r0")
	p.sameData()

	// A wrong secret on beta: the link's authentication fails.
	p.ok("beta", "down", "r0")
	p.writeConf("beta", wrongSecret)
	p.ok("beta", "up", "r0")
	p.ok("alpha", "connect", "r0")
	require.Eventually(t, func() bool {
		cs, _ := p.peerDev("alpha")
		return cs.ConnectionState == "StandAlone" && strings.Contains(strings.ToLower(cs.Reason), "auth")
	}, 15*time.Second, 50*time.Millisecond)

	var seen strings.Builder
	for _, n := range pairNodes {
		b, err := os.ReadFile(filepath.Join(p.dir, n+".log"))
		require.NoError(t, err)
		seen.Write(b)
		seen.WriteString(p.ok(n, "status", "r0"))
		seen.WriteString(p.ok(n, "status", "--json", "r0"))
	}
	logs := seen.String()
	require.Contains(t, logs, "refused", "the failed handshake is logged")
	// The refused certificate is logged (at Debug; Warn lines for refusals
	// are rate-limited to one a second).
	require.Contains(t, logs, "tls: client didn't provide a certificate")
	require.Contains(t, logs, "nbd: plain client refused: TLS required")
	keyPEM, err := os.ReadFile(pki.NodeKey)
	require.NoError(t, err)
	keyBody := strings.Split(string(keyPEM), "\n")[1] // a line of the base64 key
	for _, s := range []string{secret, wrongSecret, keyBody} {
		require.NotContains(t, logs, s)
	}
}

// allow 127.0.0.2: a client from 127.0.0.1 is closed before any protocol
// byte and logged with its address; one from 127.0.0.2 is served.
func TestSecurityAllowList(t *testing.T) {
	p := newPair(t)
	defer p.logs()
	p.resExtra = "nbd { allow 127.0.0.2; }"
	p.writeConf("alpha", "s3cret")
	p.ok("alpha", "create-md", "r0")
	p.start("alpha")
	p.ok("alpha", "up", "r0")
	p.ok("alpha", "primary", "--force", "r0")
	addr := fmt.Sprintf("127.0.0.1:%d", p.nbd["alpha"])

	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	n, err := io.Copy(io.Discard, nc)
	nc.Close()
	require.NoError(t, err)
	require.Zero(t, n, "a refused client got a greeting")
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(filepath.Join(p.dir, "alpha.log"))
		return bytes.Contains(b, []byte("refused by allow-list")) && bytes.Contains(b, []byte("remote=127.0.0.1:"))
	}, 5*time.Second, 20*time.Millisecond)

	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
	nc, err = d.Dial("tcp", addr)
	require.NoError(t, err)
	c, err := nbd.NewClient(nc, nbd.ClientOptions{ExportName: "r0"})
	require.NoError(t, err)
	require.Greater(t, c.Size(), int64(0))
	require.NoError(t, c.Close())
}

// The control socket is root-only: a non-root user gets the clear message,
// whether the run directory (0700) or the socket (0600) stops it.
func TestSecurityControlSocketRootOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a command as another user")
	}
	c := newCluster(t, 16<<20, "alpha")
	c.daemon("alpha")
	runDir := filepath.Join(c.dir, "run")
	fi, err := os.Stat(runDir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), "run dir")
	fi, err = os.Stat(filepath.Join(runDir, "alpha.sock"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "control socket")

	// The test binary's directory is root-only: copy it where nobody can
	// run it.
	pub, err := os.MkdirTemp("", "twinbd-nobody")
	require.NoError(t, err)
	defer os.RemoveAll(pub)
	require.NoError(t, os.Chmod(pub, 0o755))
	bin := filepath.Join(pub, "twinbd")
	b, err := os.ReadFile(twinbdBin)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bin, b, 0o755))

	asNobody := func() string {
		cmd := exec.Command(bin, "--node", "alpha", "--run-dir", runDir, "status", "r0")
		cmd.Dir = pub
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		require.Error(t, err, "status as nobody succeeded: %s", out)
		return string(out)
	}
	require.Contains(t, asNobody(), "is root-only: run this command as root")
	// With the directory opened up, the socket's own mode still refuses.
	// (The parent t.TempDir is 0700 too: open the whole path for the check.)
	for _, d := range []string{filepath.Dir(c.dir), c.dir, runDir} {
		require.NoError(t, os.Chmod(d, 0o755))
	}
	require.Contains(t, asNobody(), "is root-only: run this command as root")
}

func secRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	require.NoError(t, err, "%s %v: %s", name, args, out)
	return string(out)
}
