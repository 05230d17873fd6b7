package replication

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/bitmap"
	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/nbd"
)

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// testResource writes a one- or two-node resource file and backing files.
func testResource(t *testing.T, withPeer bool) (*config.Resource, string) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a.img")
	require.NoError(t, os.WriteFile(img, nil, 0o600))
	require.NoError(t, os.Truncate(img, 16<<20))
	src := fmt.Sprintf("resource r0 {\n on a { node-id 0; address 127.0.0.1:7788; export %s; disk %s; meta-disk internal; }\n", freeAddr(t), img)
	if withPeer {
		src += " on b { node-id 1; address 127.0.0.1:7789; disk /nonexistent; meta-disk internal; }\n"
	}
	src += "}\n"
	cfg, err := config.Parse(filepath.Join(dir, "t.conf"), []byte(src))
	require.NoError(t, err)
	res, err := cfg.Resource("r0")
	require.NoError(t, err)
	return res, img
}

func TestPromotionRules(t *testing.T) {
	res, _ := testResource(t, true)
	_, err := Up(Options{Res: res, Node: "a"})
	require.ErrorIs(t, err, ErrMetadata)
	require.ErrorIs(t, err, bitmap.ErrNoMetadata)

	_, err = CreateMetadata(res, "a", false)
	require.NoError(t, err)
	r, err := Up(Options{Res: res, Node: "a"})
	require.NoError(t, err)
	require.Equal(t, DiskInconsistent, r.DiskState())
	require.ErrorIs(t, r.Primary(false), ErrNoUpToDate)

	// A Secondary refuses writes even if a request reached it.
	require.ErrorIs(t, r.WriteAt(make([]byte, 4096), 0, false), nbd.ErrReadOnly)
	require.NoError(t, r.Primary(true))
	require.Equal(t, DiskUpToDate, r.DiskState())
	sb := r.b().meta.Superblock()
	require.NotZero(t, sb.Current)
	require.True(t, sb.Has(bitmap.FlagPrimaryInd|bitmap.FlagConsistent|bitmap.FlagWasUpToDate))
	require.NoError(t, r.WriteAt([]byte("hello"), 4096, true))
	buf := make([]byte, 5)
	require.NoError(t, r.ReadAt(buf, 4096))
	require.Equal(t, "hello", string(buf))
	require.ErrorIs(t, r.WriteAt(buf, r.Size()-2, false), nbd.ErrOutOfRange)

	require.NoError(t, r.Secondary(false))
	sbAfter := r.b().meta.Superblock()
	require.False(t, sbAfter.Has(bitmap.FlagPrimaryInd))
	require.ErrorIs(t, r.WriteAt(buf, 0, false), nbd.ErrReadOnly)
	require.NoError(t, r.Down(false))
	require.ErrorIs(t, r.Primary(true), ErrDown)

	// Up again: UpToDate with an unknown peer is only Consistent; a forced
	// promotion starts a new generation with the old one as bitmap UUID.
	r, err = Up(Options{Res: res, Node: "a"})
	require.NoError(t, err)
	defer r.Down(true)
	require.Equal(t, DiskConsistent, r.DiskState())
	require.ErrorIs(t, r.Primary(false), ErrNoUpToDate)
	require.NoError(t, r.Primary(true))
	sb2 := r.b().meta.Superblock()
	require.Equal(t, sb.Current, sb2.Bitmap)
	require.NotEqual(t, sb.Current, sb2.Current)
	require.NoError(t, r.ReadAt(buf, 4096))
	require.Equal(t, "hello", string(buf))
}

func TestSingleNodeConsistentPromotes(t *testing.T) {
	res, _ := testResource(t, false)
	_, err := CreateMetadata(res, "a", false)
	require.NoError(t, err)
	_, err = CreateMetadata(res, "a", false)
	require.ErrorIs(t, err, bitmap.ErrExists)
	r, err := Up(Options{Res: res, Node: "a"})
	require.NoError(t, err)
	require.NoError(t, r.Primary(true))
	gen := r.b().meta.Superblock().Current
	require.NoError(t, r.Down(false))

	r, err = Up(Options{Res: res, Node: "a"})
	require.NoError(t, err)
	defer r.Down(true)
	require.Equal(t, DiskConsistent, r.DiskState())
	require.NoError(t, r.Primary(false), "the only copy of a single-node resource")
	sb := r.b().meta.Superblock()
	require.Equal(t, gen, sb.Bitmap, "promoted while disconnected: new generation, old one kept as bitmap UUID")
	require.NotEqual(t, gen, sb.Current)
}

func TestCrashedPrimaryRecorded(t *testing.T) {
	res, _ := testResource(t, false)
	_, err := CreateMetadata(res, "a", false)
	require.NoError(t, err)
	r, err := Up(Options{Res: res, Node: "a"})
	require.NoError(t, err)
	require.NoError(t, r.Primary(true))
	// Simulate a crash: close the files without demoting.
	r.mu.Lock()
	r.server.CloseConnections()
	r.ln.Close()
	for _, c := range r.b().closer {
		c.Close()
	}
	r.mu.Unlock()
	r.serveWG.Wait()

	r2, err := Up(Options{Res: res, Node: "a"})
	require.NoError(t, err)
	defer r2.Down(true)
	sb := r2.b().meta.Superblock()
	require.True(t, sb.Has(bitmap.FlagCrashedPrimary))
	require.False(t, sb.Has(bitmap.FlagPrimaryInd))
}

func TestNewCurrentUUID(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in, out Generation
	}{
		{"fresh disk gets its first UUID", Generation{}, Generation{Current: 10}},
		{"current becomes bitmap", Generation{Current: 4}, Generation{Current: 10, Bitmap: 4}},
		{"old bitmap moves into history", Generation{Current: 4, Bitmap: 3, History: [2]uint64{2, 1}},
			Generation{Current: 10, Bitmap: 4, History: [2]uint64{3, 2}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.out, NewCurrentUUID(tc.in, 10))
		})
	}
}

func TestStateNames(t *testing.T) {
	require.Equal(t, "UpToDate", DiskUpToDate.String())
	require.Equal(t, "DUnknown", DiskDUnknown.String())
	require.Equal(t, "StandAlone", ConnStandAlone.String())
	require.Equal(t, "SyncSource", ReplSyncSource.String())
	require.Equal(t, "Primary", RolePrimary.String())
	require.Equal(t, "Unknown", RoleUnknown.String())
}

func TestPromotionFailsCleanlyWhenExportPortTaken(t *testing.T) {
	res, _ := testResource(t, true)
	_, err := CreateMetadata(res, "a", false)
	require.NoError(t, err)
	r, err := Up(Options{Res: res, Node: "a"})
	require.NoError(t, err)
	defer r.Down(true)
	host, err := res.Host("a")
	require.NoError(t, err)
	busy, err := net.Listen("tcp", res.ExportFor(host))
	require.NoError(t, err)
	before := r.b().meta.Superblock()

	require.Error(t, r.Primary(true))
	require.Equal(t, RoleSecondary, r.Role())
	require.Equal(t, DiskInconsistent, r.DiskState())
	require.Equal(t, before, r.b().meta.Superblock(), "a promotion that never served must not touch the metadata")

	busy.Close()
	require.NoError(t, r.Primary(true))
	require.Equal(t, RolePrimary, r.Role())
}
