package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// designExample is the minimal two-node example of DESIGN.md ("Operator contract").
const designExample = `resource r0 {
  net { protocol C; shared-secret "change-me"; }
  on alpha { node-id 0; address 127.0.0.1:7788; export 127.0.0.1:10809;
             disk /var/lib/twinbd/alpha.img; meta-disk internal; }
  on beta  { node-id 1; address 127.0.0.1:7789; export 127.0.0.1:10810;
             disk /var/lib/twinbd/beta.img; meta-disk internal; }
}
`

// classicExample is the classic two-node shape of CONVENTIONS.md with the elided
// values filled in.
const classicExample = `# the classic shape
resource r0 {
  net      { protocol C; shared-secret "s3cr\"et"; fencing resource-and-stonith;
             after-sb-0pri discard-zero-changes; after-sb-1pri discard-secondary;
             after-sb-2pri disconnect; ping-int 10; ping-timeout 5; timeout 60; ko-count 7;
             verify-alg sha256; csums-alg xxhash64; }
  disk     { resync-rate 100M; c-max-rate 200M; on-io-error detach; }
  handlers { fence-peer "/usr/lib/drbd/crm-fence-peer.9.sh"; unfence-peer "/usr/lib/drbd/crm-unfence-peer.9.sh";
             split-brain "/usr/lib/drbd/notify-split-brain.sh root"; out-of-sync "/usr/lib/drbd/notify-out-of-sync.sh root";
             local-io-error "/usr/lib/drbd/notify-io-error.sh; echo o > /proc/sysrq-trigger"; quorum-lost "echo lost"; }
  on alpha { node-id 0; address 10.1.1.31:7788; disk /dev/vg/r0; meta-disk internal; }
  on bob   { node-id 1; address 10.1.1.32:7788; disk /dev/vg/r0; meta-disk internal; }
}
`

// fullExample sets every key there is.
const fullExample = `common {
  net { protocol B; ping-int 3; }
  disk { al-extents 3389; }
  handlers { split-brain "common-sb"; }
  options { quorum majority; }
}
resource "db" {
  net {
    shared-secret "x y"; cram-hmac-alg sha512; fencing resource-only;
    after-sb-0pri discard-node-alpha; after-sb-1pri consensus; after-sb-2pri violently-as0p;
    ping-int 2; ping-timeout 7; timeout 40; connect-int 5; ko-count 0;
    max-buffers 8000; max-epoch-size 8000; sndbuf-size 2M; rcvbuf-size 512K;
    verify-alg crc32c; csums-alg sha256; csums-after-crash-only yes;
    tls yes; tls-cert /etc/twinbd/node.crt; tls-key /etc/twinbd/node.key; tls-ca /etc/twinbd/ca.crt;
  }
  disk {
    size 10G; resync-rate 40960; c-plan-ahead 0; c-fill-target 100; c-max-rate 1G; c-min-rate 0;
    c-delay-target 30; on-io-error call-local-io-error; disk-flushes no; md-flushes no;
    bitmap-granularity 64K; on-no-data-accessible suspend-io;
  }
  handlers {
    fence-peer a; unfence-peer b; out-of-sync c; local-io-error d; quorum-lost e; pri-lost f;
    pri-lost-after-sb g; pri-on-incon-degr h; before-resync-target i; after-resync-target j;
    initial-split-brain k;
  }
  options { on-no-quorum io-error; auto-failover yes; }
  witness 10.0.0.3:7790;
  export 10.0.0.100:10809;
  on alpha { node-id 3; address ipv6 [fd00::1]:7788; disk /dev/sdb; meta-disk /dev/sdc1; device /dev/nbd0; }
  on beta { node-id 31; address 10.0.0.2:7788; disk relative.img; meta-disk internal; export 10.0.0.2:10809; }
}
`

func parseOne(t *testing.T, src string) *Resource {
	t.Helper()
	cfg, err := Parse("test.res", []byte(src))
	require.NoError(t, err)
	require.Len(t, cfg.Resources, 1)
	return cfg.Resources[0]
}

func TestParseDesignExample(t *testing.T) {
	r := parseOne(t, designExample)
	require.Equal(t, "r0", r.Name)
	require.Equal(t, Pos{"test.res", 1, 1}, r.Pos)
	want := Net{
		Protocol: "C", SharedSecret: "change-me", CramHMACAlg: "sha256", Fencing: "dont-care",
		AfterSB0Pri: "disconnect", AfterSB1Pri: "disconnect", AfterSB2Pri: "disconnect",
		PingInt: time.Second, PingTimeout: 500 * time.Millisecond, Timeout: 6 * time.Second,
		ConnectInt: 10 * time.Second, KoCount: 7, MaxBuffers: 2048, MaxEpochSize: 2048,
	}
	require.Equal(t, want, r.Net)
	require.Equal(t, Disk{
		CPlanAhead: 2 * time.Second, CFillTarget: 51200, CMinRate: 250 << 10, CDelayTarget: time.Second,
		OnIOError: "detach", ALExtents: 1014, DiskFlushes: true, MDFlushes: true,
		BitmapGranularity: 4096, OnNoDataAccessible: "io-error",
	}, r.Disk)
	require.Equal(t, Options{Quorum: "off", OnNoQuorum: "suspend-io"}, r.Options)
	require.Equal(t, Handlers{}, r.Handlers)
	require.Equal(t, []*Host{
		{Name: "alpha", Pos: Pos{"test.res", 3, 3}, NodeID: 0, Address: "127.0.0.1:7788", Export: "127.0.0.1:10809",
			Disk: "/var/lib/twinbd/alpha.img", MetaDisk: "internal"},
		{Name: "beta", Pos: Pos{"test.res", 5, 3}, NodeID: 1, Address: "127.0.0.1:7789", Export: "127.0.0.1:10810",
			Disk: "/var/lib/twinbd/beta.img", MetaDisk: "internal"},
	}, r.Hosts)
}

func TestParseClassic(t *testing.T) {
	r := parseOne(t, classicExample)
	require.Equal(t, `s3cr"et`, r.Net.SharedSecret)
	require.Equal(t, "resource-and-stonith", r.Net.Fencing)
	require.Equal(t, "discard-zero-changes", r.Net.AfterSB0Pri)
	require.Equal(t, "discard-secondary", r.Net.AfterSB1Pri)
	require.Equal(t, 10*time.Second, r.Net.PingInt)
	require.Equal(t, 500*time.Millisecond, r.Net.PingTimeout)
	require.Equal(t, 6*time.Second, r.Net.Timeout)
	require.Equal(t, "sha256", r.Net.VerifyAlg)
	require.Equal(t, "xxhash64", r.Net.CsumsAlg)
	require.Equal(t, int64(100<<20), r.Disk.ResyncRate)
	require.Equal(t, int64(200<<20), r.Disk.CMaxRate)
	require.Equal(t, "/usr/lib/drbd/notify-io-error.sh; echo o > /proc/sysrq-trigger", r.Handlers.LocalIOError)
	require.Equal(t, "echo lost", r.Handlers.QuorumLost)
	require.Equal(t, []string{"alpha", "bob"}, []string{r.Hosts[0].Name, r.Hosts[1].Name})
}

func TestParseFull(t *testing.T) {
	r := parseOne(t, fullExample)
	require.Equal(t, Net{
		Protocol: "B", SharedSecret: "x y", CramHMACAlg: "sha512", Fencing: "resource-only",
		AfterSB0Pri: "discard-node-alpha", AfterSB1Pri: "consensus", AfterSB2Pri: "violently-as0p",
		PingInt: 2 * time.Second, PingTimeout: 700 * time.Millisecond, Timeout: 4 * time.Second,
		ConnectInt: 5 * time.Second, KoCount: 0, MaxBuffers: 8000, MaxEpochSize: 8000,
		SndBufSize: 2 << 20, RcvBufSize: 512 << 10, VerifyAlg: "crc32c", CsumsAlg: "sha256",
		CsumsAfterCrashOnly: true, TLS: true, TLSCert: "/etc/twinbd/node.crt", TLSKey: "/etc/twinbd/node.key",
		TLSCA: "/etc/twinbd/ca.crt",
	}, r.Net)
	require.Equal(t, Disk{
		Size: 10 << 30, ResyncRate: 40960 << 10, CPlanAhead: 0, CFillTarget: 100 * 512, CMaxRate: 1 << 30,
		CMinRate: 0, CDelayTarget: 3 * time.Second, OnIOError: "call-local-io-error", ALExtents: 3389,
		DiskFlushes: false, MDFlushes: false, BitmapGranularity: 64 << 10, OnNoDataAccessible: "suspend-io",
	}, r.Disk)
	require.Equal(t, Handlers{
		FencePeer: "a", UnfencePeer: "b", SplitBrain: "common-sb", OutOfSync: "c", LocalIOError: "d",
		QuorumLost: "e", PriLost: "f", PriLostAfterSB: "g", PriOnInconDegr: "h", BeforeResyncTarget: "i",
		AfterResyncTarget: "j", InitialSplitBrain: "k",
	}, r.Handlers)
	require.Equal(t, Options{Quorum: "majority", OnNoQuorum: "io-error", AutoFailover: true}, r.Options)
	require.Equal(t, "10.0.0.3:7790", r.Witness)
	require.Equal(t, "10.0.0.100:10809", r.Export)
	a, b := r.Hosts[0], r.Hosts[1]
	require.Equal(t, Host{Name: "alpha", Pos: Pos{"test.res", 29, 3}, NodeID: 3, Address: "[fd00::1]:7788",
		Disk: "/dev/sdb", MetaDisk: "/dev/sdc1", Device: "/dev/nbd0"}, *a)
	require.Equal(t, 31, b.NodeID)
	require.Equal(t, "10.0.0.100:10809", r.ExportFor(a))
	require.Equal(t, "10.0.0.2:10809", r.ExportFor(b))
}

func TestCommonInheritance(t *testing.T) {
	src := `
resource r0 {
  net { ping-int 4; }
  on a { node-id 0; address 1.1.1.1:1; disk /d; meta-disk internal; }
}
common {
  net { protocol A; ping-int 2; shared-secret common; }
  disk { resync-rate 10M; }
  options { auto-failover yes; }
}
resource r1 {
  net { protocol C; }
  options { auto-failover no; }
  on a { node-id 0; address 1.1.1.1:2; disk /d; meta-disk internal; }
}
`
	cfg, err := Parse("c.res", []byte(src))
	require.NoError(t, err)
	r0, err := cfg.Resource("r0")
	require.NoError(t, err)
	r1, err := cfg.Resource("r1")
	require.NoError(t, err)

	require.Equal(t, "A", r0.Net.Protocol)
	require.Equal(t, 4*time.Second, r0.Net.PingInt)
	require.Equal(t, "common", r0.Net.SharedSecret)
	require.Equal(t, int64(10<<20), r0.Disk.ResyncRate)
	require.True(t, r0.Options.AutoFailover)

	require.Equal(t, "C", r1.Net.Protocol)
	require.Equal(t, 2*time.Second, r1.Net.PingInt)
	require.Equal(t, "common", r1.Net.SharedSecret)
	require.False(t, r1.Options.AutoFailover)
	require.Equal(t, int64(2048), int64(r1.Net.MaxBuffers), "defaults survive common")
}

func TestSizesAndUnits(t *testing.T) {
	for _, tc := range []struct {
		kv   string
		get  func(r *Resource) any
		want any
	}{
		{"disk { size 1G; }", func(r *Resource) any { return r.Disk.Size }, int64(1 << 30)},
		{"disk { size 3g; }", func(r *Resource) any { return r.Disk.Size }, int64(3 << 30)},
		{"disk { size 5m; }", func(r *Resource) any { return r.Disk.Size }, int64(5 << 20)},
		{"disk { size 7k; }", func(r *Resource) any { return r.Disk.Size }, int64(7 << 10)},
		{"disk { size 2048; }", func(r *Resource) any { return r.Disk.Size }, int64(2048 * 512)},
		{"disk { resync-rate 100M; }", func(r *Resource) any { return r.Disk.ResyncRate }, int64(100 << 20)},
		{"disk { resync-rate 100; }", func(r *Resource) any { return r.Disk.ResyncRate }, int64(100 << 10)},
		{"disk { resync-rate 0; }", func(r *Resource) any { return r.Disk.ResyncRate }, int64(0)},
		{"disk { c-min-rate 250K; }", func(r *Resource) any { return r.Disk.CMinRate }, int64(250 << 10)},
		{"disk { c-max-rate 4; }", func(r *Resource) any { return r.Disk.CMaxRate }, int64(4 << 10)},
		{"disk { c-fill-target 1M; }", func(r *Resource) any { return r.Disk.CFillTarget }, int64(1 << 20)},
		{"disk { bitmap-granularity 8192; }", func(r *Resource) any { return r.Disk.BitmapGranularity }, int64(8192)},
		{"disk { bitmap-granularity 1M; }", func(r *Resource) any { return r.Disk.BitmapGranularity }, int64(1 << 20)},
		{"net { sndbuf-size 1000; }", func(r *Resource) any { return r.Net.SndBufSize }, int64(1000)},
		{"net { rcvbuf-size 4M; }", func(r *Resource) any { return r.Net.RcvBufSize }, int64(4 << 20)},
		{"net { ping-int 1; }", func(r *Resource) any { return r.Net.PingInt }, time.Second},
		{"net { ping-int 120; }", func(r *Resource) any { return r.Net.PingInt }, 120 * time.Second},
		{"net { ping-timeout 1; }", func(r *Resource) any { return r.Net.PingTimeout }, 100 * time.Millisecond},
		{"net { timeout 600; }", func(r *Resource) any { return r.Net.Timeout }, 60 * time.Second},
		{"net { connect-int 3; }", func(r *Resource) any { return r.Net.ConnectInt }, 3 * time.Second},
		{"disk { c-plan-ahead 15; }", func(r *Resource) any { return r.Disk.CPlanAhead }, 1500 * time.Millisecond},
		{"disk { c-delay-target 1; }", func(r *Resource) any { return r.Disk.CDelayTarget }, 100 * time.Millisecond},
	} {
		t.Run(tc.kv, func(t *testing.T) {
			r := parseOne(t, "resource r {"+tc.kv+" on a { node-id 0; address h:1; disk d; meta-disk internal; } }")
			require.Equal(t, tc.want, tc.get(r))
			// and back
			r2 := parseOne(t, r.Format())
			require.Equal(t, tc.want, tc.get(r2))
		})
	}
}

func TestFormatSize(t *testing.T) {
	for _, tc := range []struct {
		n, unit int64
		want    string
	}{
		{0, 1, "0"}, {1, 1, "1"}, {1023, 1, "1023"}, {1024, 1, "1K"}, {1536, 1, "1536"},
		{3 << 20, 1, "3M"}, {(1 << 30) + (1 << 20), 1, "1025M"}, {5 << 30, 1, "5G"},
		{512, sector, "1"}, {1024 * 100, 1024, "100K"}, {1 << 40, 1, "1024G"},
	} {
		require.Equal(t, tc.want, formatSize(tc.n, tc.unit), "%d", tc.n)
	}
}

func TestFormat(t *testing.T) {
	r := parseOne(t, designExample)
	want := `resource r0 {
    net {
        protocol C;
        shared-secret "change-me";
        cram-hmac-alg sha256;
        fencing dont-care;
        after-sb-0pri disconnect;
        after-sb-1pri disconnect;
        after-sb-2pri disconnect;
        ping-int 1;
        ping-timeout 5;
        timeout 60;
        connect-int 10;
        ko-count 7;
        max-buffers 2048;
        max-epoch-size 2048;
        sndbuf-size 0;
        rcvbuf-size 0;
        csums-after-crash-only no;
        tls no;
    }
    disk {
        size 0;
        resync-rate 0;
        c-plan-ahead 20;
        c-fill-target 50K;
        c-max-rate 0;
        c-min-rate 250K;
        c-delay-target 10;
        on-io-error detach;
        al-extents 1014;
        disk-flushes yes;
        md-flushes yes;
        bitmap-granularity 4K;
        on-no-data-accessible io-error;
    }
    options {
        quorum off;
        on-no-quorum suspend-io;
        auto-failover no;
    }
    on alpha {
        node-id 0;
        address 127.0.0.1:7788;
        export 127.0.0.1:10809;
        disk /var/lib/twinbd/alpha.img;
        meta-disk internal;
    }
    on beta {
        node-id 1;
        address 127.0.0.1:7789;
        export 127.0.0.1:10810;
        disk /var/lib/twinbd/beta.img;
        meta-disk internal;
    }
}
`
	require.Equal(t, want, r.Format())
}

// withoutPos returns a deep copy of r with every position cleared.
func withoutPos(r *Resource) *Resource {
	c := *r
	c.Pos = Pos{}
	c.Hosts = nil
	for _, h := range r.Hosts {
		hc := *h
		hc.Pos = Pos{}
		c.Hosts = append(c.Hosts, &hc)
	}
	return &c
}

func requireRoundTrip(t testing.TB, r *Resource) {
	text := r.Format()
	cfg, err := Parse("formatted.res", []byte(text))
	require.NoError(t, err, "re-parsing Format output:\n%s", text)
	require.Len(t, cfg.Resources, 1)
	require.Equal(t, withoutPos(r), withoutPos(cfg.Resources[0]), "Format output:\n%s", text)
	require.Equal(t, text, cfg.Resources[0].Format(), "Format is not a fixed point")
}

func TestFormatRoundTrip(t *testing.T) {
	for _, src := range []string{designExample, classicExample, fullExample,
		"resource x { on a { node-id 5; address \"h:9\"; disk \"/a b\\\\c\"; meta-disk internal; } handlers { pri-lost \"\"; } }",
		"resource x { net { shared-secret \"#;{}\\\"\\\\\"; } on a { node-id 5; address [::1]:9; disk \"#x\"; meta-disk \"/m d\"; } }",
	} {
		cfg, err := Parse("rt.res", []byte(src))
		require.NoError(t, err)
		for _, r := range cfg.Resources {
			requireRoundTrip(t, r)
		}
	}
}

func TestLookup(t *testing.T) {
	cfg, err := Parse("l.res", []byte(designExample+strings.ReplaceAll(designExample, "r0", "r1")))
	require.NoError(t, err)
	require.Len(t, cfg.Resources, 2)

	_, err = cfg.Resource("nope")
	require.ErrorIs(t, err, ErrNoResource)
	require.EqualError(t, err, `config: no such resource: "nope" (known resources: r0, r1)`)
	_, err = (&Config{}).Resource("r0")
	require.ErrorIs(t, err, ErrNoResource)

	r, err := cfg.Resource("r1")
	require.NoError(t, err)
	h, err := r.Host("beta")
	require.NoError(t, err)
	require.Equal(t, 1, h.NodeID)
	_, err = r.Host("gamma")
	require.ErrorIs(t, err, ErrNoHost)
	require.EqualError(t, err, `config: no such host: "gamma" in resource r1 (its on sections are: alpha, beta; --node NAME selects one)`)

	peers := r.Peers("alpha")
	require.Len(t, peers, 1)
	require.Equal(t, "beta", peers[0].Name)
	require.Len(t, r.Peers("gamma"), 2)

	red := r.Redacted()
	require.Equal(t, "<redacted>", red.Net.SharedSecret)
	require.Equal(t, "change-me", r.Net.SharedSecret, "Redacted must not modify the original")
	red.Hosts[0].Disk = "/changed"
	require.Equal(t, "/var/lib/twinbd/alpha.img", r.Hosts[0].Disk, "Redacted must copy hosts")
	require.Contains(t, red.Format(), `shared-secret "<redacted>";`)

	noSecret := parseOne(t, "resource x { on a { node-id 0; address h:1; disk d; meta-disk internal; } }")
	require.Equal(t, "", noSecret.Redacted().Net.SharedSecret)
	require.Equal(t, "", noSecret.ExportFor(noSecret.Hosts[0]))
}

func TestSingleNode(t *testing.T) {
	r := parseOne(t, "resource bench { on solo { node-id 0; address 127.0.0.1:7788; disk /tmp/x.img; meta-disk internal; } }")
	require.Len(t, r.Hosts, 1)
	require.Empty(t, r.Peers("solo"))
}

func TestEmptyConfig(t *testing.T) {
	cfg, err := Parse("e.res", []byte("# nothing\n\n"))
	require.NoError(t, err)
	require.Empty(t, cfg.Resources)
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "twinbd.conf")
	require.NoError(t, os.WriteFile(p, []byte(designExample), 0o644))
	cfg, err := Load(p)
	require.NoError(t, err)
	require.Equal(t, p, cfg.Resources[0].Pos.File)

	_, err = Load(filepath.Join(dir, "missing.conf"))
	require.ErrorIs(t, err, fs.ErrNotExist)
	var cerr *Error
	require.False(t, errors.As(err, &cerr), "a missing top-level file is not a syntax error")

	_, err = Load(dir)
	require.Error(t, err)
}

func TestAutoFailoverNeedsWitnessOrFencing(t *testing.T) {
	const hosts = `on a { node-id 0; address 127.0.0.1:7788; disk /tmp/a; meta-disk internal; }
  on b { node-id 1; address 127.0.0.1:7789; disk /tmp/b; meta-disk internal; }`
	_, err := Parse("t.conf", []byte("resource r0 {\n  options { auto-failover yes; }\n  "+hosts+"\n}\n"))
	require.Error(t, err)
	require.Contains(t, err.Error(), "t.conf:2:")
	require.Contains(t, err.Error(), "needs a witness")
	_, err = Parse("t.conf", []byte("resource r0 {\n  witness 127.0.0.1:7790;\n  options { auto-failover yes; }\n  "+hosts+"\n}\n"))
	require.ErrorContains(t, err, "needs quorum majority")
	_, err = Parse("t.conf", []byte("resource r0 {\n  witness 127.0.0.1:7790;\n  options { quorum majority; auto-failover yes; }\n  "+hosts+"\n}\n"))
	require.NoError(t, err)
	_, err = Parse("t.conf", []byte("resource r0 {\n  net { fencing resource-and-stonith; }\n  handlers { fence-peer \"/bin/true\"; }\n  options { auto-failover yes; }\n  "+hosts+"\n}\n"))
	require.NoError(t, err)
}
