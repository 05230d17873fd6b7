package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// drbdTypical is a typical DRBD 9 resource file (issue 7).
const drbdTypical = `global { usage-count no; udev-always-use-vnr; }
common {
  handlers { fence-peer "/usr/lib/drbd/crm-fence-peer.9.sh"; unfence-peer "/usr/lib/drbd/crm-unfence-peer.9.sh"; }
  startup { wfc-timeout 15; degr-wfc-timeout 60; }
  net { protocol C; cram-hmac-alg sha1; shared-secret "secret"; after-sb-0pri discard-zero-changes; fencing resource-only; rr-conflict disconnect; }
  disk { resync-rate 100M; on-io-error detach; c-plan-ahead 20; }
  options { auto-promote no; }
}
resource r0 {
  device /dev/drbd0 minor 0;     # or: device minor 0;
  disk /dev/vg/r0;
  meta-disk internal;
  options { quorum majority; on-no-quorum io-error; }
  on alpha { node-id 0; address 10.1.1.31:7788; }
  on bob   { node-id 1; address ipv4 10.1.1.32:7788; }
  connection-mesh { hosts alpha bob; }
}
`

func parseDRBD(t *testing.T, src string) (*Resource, []string) {
	t.Helper()
	cfg, err := Parse("r0.res", []byte(src))
	require.NoError(t, err)
	require.Len(t, cfg.Resources, 1)
	var ws []string
	for _, w := range cfg.Warnings {
		ws = append(ws, w.String())
	}
	return cfg.Resources[0], ws
}

func TestFromDRBDTypical(t *testing.T) {
	r, ws := parseDRBD(t, drbdTypical)
	want := []string{
		"r0.res:1:10: warning: global { usage-count } is DRBD-only and ignored (",
		"r0.res:1:26: warning: global { udev-always-use-vnr } is DRBD-only and ignored (",
		"r0.res:4:13: warning: startup { wfc-timeout } is DRBD-only and ignored (twinbd's wait-connect --timeout does this)",
		"r0.res:4:29: warning: startup { degr-wfc-timeout } is DRBD-only and ignored (twinbd's wait-connect --timeout does this)",
		"r0.res:5:124: warning: net { rr-conflict } is DRBD-only and ignored (",
		"r0.res:7:13: warning: options { auto-promote } is DRBD-only and ignored (",
		"r0.res:10:3: warning: device /dev/drbd0 minor 0 is DRBD's kernel device and ignored: twinbd has no /dev/drbdN; its kernel device is /dev/nbdN",
		"r0.res:16:3: warning: connection-mesh is DRBD-only and ignored (",
	}
	// on-io-error detach and c-plan-ahead 20 are twinbd's defaults: no warning
	// (twinbd's own canonical file, which prints every default, loads clean).
	require.Len(t, ws, len(want), "%s", strings.Join(ws, "\n"))
	for i := range want {
		require.True(t, strings.HasPrefix(ws[i], want[i]), "warning %d:\ngot  %s\nwant %s...", i, ws[i], want[i])
	}

	// Honoured: what twinbd knows, and the resource-level disk and meta-disk.
	require.Equal(t, "sha1", r.Net.CramHMACAlg)
	require.Equal(t, "resource-only", r.Net.Fencing)
	require.Equal(t, "discard-zero-changes", r.Net.AfterSB0Pri)
	require.Equal(t, int64(100<<20), r.Disk.ResyncRate)
	require.Equal(t, "/usr/lib/drbd/crm-fence-peer.9.sh", r.Handlers.FencePeer)
	require.Equal(t, Options{Quorum: "majority", OnNoQuorum: "io-error"}, r.Options)
	require.Len(t, r.Hosts, 2)
	for _, h := range r.Hosts {
		require.Equal(t, "/dev/vg/r0", h.Disk, h.Name)
		require.Equal(t, "internal", h.MetaDisk, h.Name)
		require.Equal(t, "", h.Device, h.Name) // /dev/drbd0 is not twinbd's device
	}
	require.Equal(t, "10.1.1.32:7788", r.Hosts[1].Address)

	// dump's output is twinbd's own file, and loads again.
	requireRoundTrip(t, r)
}

func TestFromDRBDShapes(t *testing.T) {
	t.Run("per-host style", func(t *testing.T) {
		r, ws := parseDRBD(t, `resource r0 {
  on alpha { device /dev/drbd0; disk /dev/vg/r0; address 10.1.1.31:7788; meta-disk internal; node-id 0; }
  on bob { device minor 0; disk /dev/vg/r1; address 10.1.1.32:7788; meta-disk /dev/md; node-id 1; }
}`)
		require.Equal(t, []string{"/dev/vg/r0", "/dev/vg/r1"}, []string{r.Hosts[0].Disk, r.Hosts[1].Disk})
		require.Equal(t, "/dev/md", r.Hosts[1].MetaDisk)
		require.Len(t, ws, 2)
		require.True(t, strings.HasPrefix(ws[0], "r0.res:2:14: warning: device /dev/drbd0 is DRBD's kernel device"), ws[0])
		require.True(t, strings.HasPrefix(ws[1], "r0.res:3:12: warning: device minor 0 is DRBD's kernel device"), ws[1])
	})
	t.Run("resource-level defaults, the host's own value wins", func(t *testing.T) {
		r, ws := parseDRBD(t, `resource r0 {
  disk /dev/vg/r0; meta-disk internal; device /dev/nbd3;
  on alpha { node-id 0; address 10.1.1.31:7788; disk /dev/sdb; }
  on bob { node-id 1; address 10.1.1.32:7788; meta-disk /dev/md; device /dev/nbd4; }
}`)
		require.Empty(t, ws)
		require.Equal(t, Host{Name: "alpha", Pos: Pos{"r0.res", 3, 3}, NodeID: 0, Address: "10.1.1.31:7788",
			Disk: "/dev/sdb", MetaDisk: "internal", Device: "/dev/nbd3"}, *r.Hosts[0])
		require.Equal(t, Host{Name: "bob", Pos: Pos{"r0.res", 4, 3}, NodeID: 1, Address: "10.1.1.32:7788",
			Disk: "/dev/vg/r0", MetaDisk: "/dev/md", Device: "/dev/nbd4"}, *r.Hosts[1])
		requireRoundTrip(t, r)
	})
	t.Run("volume 0 at resource level and in on", func(t *testing.T) {
		r, ws := parseDRBD(t, `resource r0 {
  volume 0 { device /dev/drbd1 minor 1; disk /dev/vg/r0; meta-disk internal; }
  on alpha { node-id 0; address 10.1.1.31:7788; }
  on bob { node-id 1; address 10.1.1.32:7788; volume 0 { disk /dev/vg/other; device /dev/nbd0; } }
}`)
		require.Len(t, ws, 1)
		require.Contains(t, ws[0], "r0.res:2:14: warning: device /dev/drbd1 minor 1 is DRBD's kernel device")
		require.Equal(t, "/dev/vg/r0", r.Hosts[0].Disk)
		require.Equal(t, "/dev/vg/other", r.Hosts[1].Disk)
		require.Equal(t, "internal", r.Hosts[1].MetaDisk)
		require.Equal(t, "/dev/nbd0", r.Hosts[1].Device)
	})
	t.Run("connection gives the addresses", func(t *testing.T) {
		r, ws := parseDRBD(t, `resource r0 {
  disk /dev/vg/r0; meta-disk internal;
  on alpha { node-id 0; }
  on bob { node-id 1; }
  connection { host alpha address 10.1.1.31:7788; host bob address ipv4 10.1.1.32:7788; }
}`)
		require.Empty(t, ws)
		require.Equal(t, []string{"10.1.1.31:7788", "10.1.1.32:7788"}, []string{r.Hosts[0].Address, r.Hosts[1].Address})
		r, _ = parseDRBD(t, `resource r0 {
  disk /dev/vg/r0; meta-disk internal;
  on alpha { node-id 0; address 10.1.1.31:7788; }
  on bob { node-id 1; }
  connection c1 { path { host alpha address 10.1.1.31:7788; host bob address 10.1.1.32:7788; } }
}`)
		require.Equal(t, "10.1.1.32:7788", r.Hosts[1].Address)
	})
	t.Run("allow-two-primaries warns loudly", func(t *testing.T) {
		_, ws := parseDRBD(t, res("net { allow-two-primaries yes; protocol C; }"))
		require.Len(t, ws, 1)
		require.True(t, strings.HasPrefix(ws[0], "r0.res:2:7: warning: net { allow-two-primaries } is DRBD-only and ignored (twinbd NEVER allows two Primaries"), ws[0])
	})
	t.Run("controller knobs and handlers twinbd does not run", func(t *testing.T) {
		_, ws := parseDRBD(t, res(`disk { c-fill-target 1M; c-min-rate 10M; c-delay-target 30; c-max-rate 100M; c-plan-ahead 20; on-io-error detach; }
handlers { pri-lost "x"; split-brain "y"; }`))
		require.Len(t, ws, 4, "%s", strings.Join(ws, "\n"))
		for i, k := range []string{"disk { c-fill-target }", "disk { c-min-rate }", "disk { c-delay-target }", "handlers { pri-lost }"} {
			require.Contains(t, ws[i], k+" is accepted but has no effect")
		}
	})
	t.Run("keys twinbd acts on do not warn", func(t *testing.T) {
		_, ws := parseDRBD(t, res(`disk { on-io-error pass_on; on-no-data-accessible suspend-io; }
net { verify-alg sha256; csums-alg crc32c; }`))
		require.Empty(t, ws)
	})
	t.Run("twinbd's own file warns about nothing", func(t *testing.T) {
		_, ws := parseDRBD(t, designExample)
		require.Empty(t, ws)
	})
}

func TestFromDRBDErrors(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"unknown net key", res("net { protocol C; frobnicate yes; }"), `e.res:2:19: unknown key "frobnicate" in net section (expected one of: protocol,`},
		{"unknown startup key", "common { startup { wfc-timeout 5; frob 1; } }", `e.res:1:35: unknown key "frob" in startup section`},
		{"unknown global key", "global { usage-count no; dialog-refresh 1; frob; }", `e.res:1:44: unknown key "frob" in global section`},
		{"two volumes", `resource r0 {
  volume 0 { disk /dev/a; meta-disk internal; }
  volume 1 { disk /dev/b; meta-disk internal; }
  on a { node-id 0; address 10.0.0.1:7788; }
}`, `e.res:3:10: second volume 1 in resource r0 (volume 0 at e.res:2:10): twinbd replicates one volume per resource`},
		{"two volumes across on sections", `resource r0 {
  on a { node-id 0; address 10.0.0.1:7788; volume 0 { disk /d; meta-disk internal; } }
  on b { node-id 1; address 10.0.0.2:7788; volume 1 { disk /d; meta-disk internal; } }
}`, `e.res:3:51: second volume 1 in resource r0 (volume 0 at e.res:2:51)`},
		{"volume key", res("volume 0 { resync-after r1; }"), `e.res:2:12: unknown key "resync-after" in volume 0 (expected one of: device, disk, meta-disk)`},
		{"resource-level bad device", res("device /dev/sda;"), `e.res:2:8: invalid device "/dev/sda"`},
		{"resource-level duplicate disk", res("disk /a; disk /b;"), `e.res:2:10: duplicate key "disk" in resource r0 (first at e.res:2:1)`},
		{"connection net", res("connection { net { protocol A; } }"), `e.res:2:14: net section in connection: twinbd has one connection per resource`},
		{"connection unknown host", res("connection { host x address 10.0.0.9:7788; }"), `e.res:2:19: connection names host "x", which has no on section in resource r0`},
		{"connection address differs", res("connection { host a address 10.0.0.9:7788; }"), `e.res:3:19: address of "on a" differs from the one its connection section gives at e.res:2:14 (10.0.0.9:7788)`},
		{"two connections", res("connection { } connection { }"), `e.res:2:16: second connection section in resource r0`},
		{"two paths", res("connection { path { } path { } }"), `e.res:2:23: second path in connection section`},
		{"mesh net", res("connection-mesh { hosts a b; net { protocol C; } }"), `e.res:2:30: "net" in connection-mesh`},
		{"nested block in global", "global { usage-count { } }", `e.res:1:10: unknown key "usage-count" in global section`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("e.res", []byte(tc.src))
			require.Error(t, err)
			require.True(t, strings.HasPrefix(err.Error(), tc.want), "got  %s\nwant %s", err, tc.want)
		})
	}
}
