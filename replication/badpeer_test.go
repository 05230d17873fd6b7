package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/config"
)

// TestBadPeerInput: strangers and broken peers talk to the accepting node
// over real TCP. Each is dropped; the node keeps running, nothing reaches
// its disk, and the real peer still connects afterwards.
func TestBadPeerInput(t *testing.T) {
	dir := t.TempDir()
	imgA, imgB := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, img := range []string{imgA, imgB} {
		require.NoError(t, os.WriteFile(img, nil, 0o600))
		require.NoError(t, os.Truncate(img, pairSize))
	}
	addrA, addrB := freeAddr(t), freeAddr(t)
	src := fmt.Sprintf(`resource r0 {
  net { shared-secret "right"; ping-int 1; connect-int 1; }
  on a { node-id 0; address %s; export %s; disk %s; meta-disk internal; }
  on b { node-id 1; address %s; export %s; disk %s; meta-disk internal; }
}
`, addrA, freeAddr(t), imgA, addrB, freeAddr(t), imgB)
	cfg, err := config.Parse(filepath.Join(dir, "t.conf"), []byte(src))
	require.NoError(t, err)
	res, err := cfg.Resource("r0")
	require.NoError(t, err)
	for _, n := range []string{"a", "b"} {
		_, err := CreateMetadata(res, n, false)
		require.NoError(t, err)
	}
	b, err := Up(Options{Res: res, Node: "b"})
	require.NoError(t, err)
	defer b.Down(true)
	before, err := os.ReadFile(imgB)
	require.NoError(t, err)

	preamble := func(ch Channel) []byte { return appendPreamble(nil, ch) }
	hdr := func(typ MsgType, length uint32) []byte {
		h := make([]byte, HeaderSize)
		binary.BigEndian.PutUint32(h[0:], FrameMagic)
		binary.BigEndian.PutUint16(h[4:], ProtocolVersion)
		binary.BigEndian.PutUint16(h[6:], uint16(typ))
		binary.BigEndian.PutUint32(h[12:], length)
		return h
	}
	var wrongSecret bytes.Buffer
	wrongSecret.Write(preamble(ChannelData))
	cases := map[string][]byte{
		"garbage":           bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 64),
		"preamble+garbage":  append(preamble(ChannelData), bytes.Repeat([]byte{0xff}, 4096)...),
		"truncated frame":   append(preamble(ChannelMeta), hdr(MsgHello, 100)[:20]...),
		"oversized length":  append(preamble(ChannelData), hdr(MsgData, 1<<31)...),
		"bad header sum":    append(preamble(ChannelData), hdr(MsgHello, 0)...),
		"bad preamble chan": append(appendPreamble(nil, 9), 0),
	}
	for name, payload := range cases {
		c, err := net.Dial("tcp", addrB)
		require.NoError(t, err, name)
		c.Write(payload)
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		// The node hangs up (after its own Hello at most).
		_, err = readUntilClosed(c)
		require.NoError(t, err, "%s: connection not dropped", name)
		c.Close()
		require.Nil(t, b.sess.Load(), name)
	}
	// A peer with the wrong secret, speaking the protocol correctly.
	bad := *res
	bad.Net.SharedSecret = "wrong"
	c, err := net.Dial("tcp", addrB)
	require.NoError(t, err)
	c.Write(preamble(ChannelData))
	cfgA := AuthConfig{Resource: "r0", NodeID: 0, PeerNodeID: 1, Secret: "wrong", Timeout: 5 * time.Second}
	_, err = Authenticate(c, cfgA)
	require.ErrorIs(t, err, ErrAuthFailed)
	c.Close()
	eventually(t, "b records the refusal", func() bool {
		return bytes.Contains([]byte(b.Status().Connections[0].Reason), []byte("authentication failed"))
	})
	require.NotContains(t, b.Status().Connections[0].Reason, "right")

	after, err := os.ReadFile(imgB)
	require.NoError(t, err)
	require.True(t, bytes.Equal(before[:b.size.Load()], after[:b.size.Load()]), "b's data changed")

	// The real peer still gets in.
	a, err := Up(Options{Res: res, Node: "a"})
	require.NoError(t, err)
	defer a.Down(true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, a.WaitConnected(ctx, true))
}

func readUntilClosed(c net.Conn) (int, error) {
	buf := make([]byte, 4096)
	n := 0
	for {
		k, err := c.Read(buf)
		n += k
		if err != nil {
			if isTimeout(err) {
				return n, err
			}
			return n, nil
		}
	}
}
