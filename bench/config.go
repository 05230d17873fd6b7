package bench

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ErrConfig is a bad Config (or a target / size string that does not parse).
var ErrConfig = errors.New("bench: bad configuration")

// Mode is the access pattern, named as fio names it.
type Mode string

// The workloads.
const (
	RandRead  Mode = "randread"
	RandWrite Mode = "randwrite"
	RandRW    Mode = "randrw"
	SeqRead   Mode = "read"
	SeqWrite  Mode = "write"
)

// Modes lists every Mode.
var Modes = []Mode{RandRead, RandWrite, RandRW, SeqRead, SeqWrite}

func (m Mode) valid() bool {
	for _, v := range Modes {
		if m == v {
			return true
		}
	}
	return false
}

func (m Mode) random() bool { return m == RandRead || m == RandWrite || m == RandRW }

// readPercent is the share of reads in the mix.
func (m Mode) readPercent(rwmix int) int {
	switch m {
	case RandRead, SeqRead:
		return 100
	case RandRW:
		return rwmix
	}
	return 0
}

// DefaultPort is the IANA NBD port, used when a target names none.
const DefaultPort = "10809"

// Config is one benchmark run.
type Config struct {
	// Network, Addr and ExportName say where the export is ("tcp" or
	// "unix"); ParseTarget fills them from a URI.
	Network    string
	Addr       string
	ExportName string
	// Target is how the export was named, for the report.
	Target string

	Mode      Mode
	BlockSize int // bytes per request
	IODepth   int // requests in flight per connection
	Conns     int // NBD connections
	FUA       bool
	// FlushEvery sends a FLUSH after every N writes of each worker (0: never).
	FlushEvery int
	// RWMixRead is the percentage of reads in RandRW.
	RWMixRead int
	// Size is the working set in bytes from Offset (0: to the end of the
	// export); rounded down to a multiple of BlockSize.
	Size   int64
	Offset int64

	Duration time.Duration // measured time
	Ramp     time.Duration // unmeasured warm-up before it
	// Seed drives offsets and the mix; 0 picks one (reported in Result).
	Seed uint64
	// Verify writes self-identifying blocks, checks every read of a block
	// written in this run, and reads all written blocks back at the end.
	Verify bool
	// DialTimeout bounds connect + handshake (0: 10 s).
	DialTimeout time.Duration
	// ProgressInterval is how often Run calls progress (0: 1 s).
	ProgressInterval time.Duration
}

// Defaults are the command's defaults.
func Defaults() Config {
	return Config{
		Network:   "tcp",
		Mode:      RandWrite,
		BlockSize: 4096,
		IODepth:   32,
		Conns:     1,
		RWMixRead: 70,
		Duration:  10 * time.Second,
	}
}

func (c *Config) validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, a...)...)
	}
	switch {
	case c.Addr == "":
		return bad("no target address")
	case c.Network != "tcp" && c.Network != "unix":
		return bad("network %q (want tcp or unix)", c.Network)
	case !c.Mode.valid():
		return bad("--rw %q (want one of %v)", c.Mode, Modes)
	case c.BlockSize <= 0 || c.BlockSize > 64<<20:
		return bad("--bs %d (want 1 B .. 64 MiB)", c.BlockSize)
	case c.IODepth <= 0 || c.IODepth > 4096:
		return bad("--iodepth %d (want 1..4096)", c.IODepth)
	case c.Conns <= 0 || c.Conns > 256:
		return bad("--conns %d (want 1..256)", c.Conns)
	case c.FlushEvery < 0:
		return bad("--flush-every %d", c.FlushEvery)
	case c.RWMixRead < 0 || c.RWMixRead > 100:
		return bad("--rwmix-read %d (want 0..100)", c.RWMixRead)
	case c.Size < 0 || c.Offset < 0:
		return bad("negative --size or --offset")
	case c.Offset%int64(c.BlockSize) != 0:
		return bad("--offset %d is not a multiple of --bs %d", c.Offset, c.BlockSize)
	case c.Duration <= 0:
		return bad("--duration must be positive")
	case c.Ramp < 0:
		return bad("--ramp must not be negative")
	case c.Verify && c.BlockSize < verifyMinBlock:
		return bad("--verify needs --bs ≥ %d", verifyMinBlock)
	}
	return nil
}

// ParseTarget reads nbd://HOST[:PORT][/EXPORT], nbd+unix:///EXPORT?socket=PATH
// or plain HOST:PORT.
func ParseTarget(s string) (network, addr, export string, err error) {
	if !strings.Contains(s, "://") {
		host, port, err := net.SplitHostPort(s)
		if err != nil || host == "" || port == "" {
			return "", "", "", fmt.Errorf("%w: target %q: want nbd://HOST:PORT[/EXPORT] or HOST:PORT", ErrConfig, s)
		}
		return "tcp", s, "", nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", "", "", fmt.Errorf("%w: target %q: %w", ErrConfig, s, err)
	}
	export = strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "nbd":
		if u.Hostname() == "" {
			return "", "", "", fmt.Errorf("%w: target %q: no host", ErrConfig, s)
		}
		port := u.Port()
		if port == "" {
			port = DefaultPort
		}
		return "tcp", net.JoinHostPort(u.Hostname(), port), export, nil
	case "nbd+unix":
		sock := u.Query().Get("socket")
		if sock == "" {
			return "", "", "", fmt.Errorf("%w: target %q: nbd+unix needs ?socket=PATH", ErrConfig, s)
		}
		return "unix", sock, export, nil
	}
	return "", "", "", fmt.Errorf("%w: target %q: scheme %q (want nbd or nbd+unix)", ErrConfig, s, u.Scheme)
}

// ParseSize reads a byte count with an optional binary suffix: 512, 4k,
// 4K, 4KiB, 1m, 1g, 1t (powers of 1024).
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "ib"), "b")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'k':
			mult = 1 << 10
		case 'm':
			mult = 1 << 20
		case 'g':
			mult = 1 << 30
		case 't':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%w: size %q", ErrConfig, s)
	}
	return n * mult, nil
}

// FormatSize prints a byte count the way ParseSize reads it back when exact
// ("4k", "1m"), else in bytes.
func FormatSize(n int64) string {
	for _, u := range []struct {
		s string
		v int64
	}{{"t", 1 << 40}, {"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}} {
		if n >= u.v && n%u.v == 0 {
			return strconv.FormatInt(n/u.v, 10) + u.s
		}
	}
	return strconv.FormatInt(n, 10)
}
