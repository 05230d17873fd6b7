package config

import (
	"fmt"
	"strings"
	"time"
)

// Config is a parsed, validated resource file with its includes.
type Config struct {
	Resources []*Resource // in file order (includes spliced in where they stand)
}

// Resource is one replicated resource: common settings already merged in, defaults
// filled in, every value validated.
type Resource struct {
	Name     string
	Pos      Pos
	Net      Net
	Disk     Disk
	Handlers Handlers
	Options  Options
	Witness  string  // "host:port" or ""
	Export   string  // resource-level floating export "host:port" or ""
	Hosts    []*Host // one or two, in file order
}

// Host is one `on NAME { }` section.
type Host struct {
	Name     string
	Pos      Pos
	NodeID   int    // 0..31, unique within the resource
	Address  string // replication link, "host:port" or "[v6]:port"
	Disk     string // backing device or file
	MetaDisk string // "internal" or an absolute path
	Export   string // NBD listen address while Primary, "host:port" or ""
	Device   string // "/dev/nbdN" to attach on promotion, or ""
}

// Net is the `net { }` section.
type Net struct {
	Protocol            string // "A", "B" or "C"
	SharedSecret        string
	CramHMACAlg         string // sha1, sha256, sha512
	Fencing             string // dont-care, resource-only, resource-and-stonith
	AfterSB0Pri         string
	AfterSB1Pri         string
	AfterSB2Pri         string
	PingInt             time.Duration // ping-int, seconds in the file
	PingTimeout         time.Duration // ping-timeout, tenths of a second in the file
	Timeout             time.Duration // timeout, tenths of a second in the file
	ConnectInt          time.Duration // connect-int, seconds in the file
	KoCount             int
	MaxBuffers          int
	MaxEpochSize        int
	SndBufSize          int64  // bytes, 0 = auto
	RcvBufSize          int64  // bytes, 0 = auto
	VerifyAlg           string // "" or xxhash64, sha256, crc32c
	CsumsAlg            string // "" or xxhash64, sha256, crc32c
	CsumsAfterCrashOnly bool
	TLS                 bool
	TLSCert             string
	TLSKey              string
	TLSCA               string
}

// Disk is the `disk { }` section.
type Disk struct {
	Size               int64         // bytes, 0 = whole backing device
	ResyncRate         int64         // bytes per second, 0 = dynamic controller
	CPlanAhead         time.Duration // tenths in the file
	CFillTarget        int64         // bytes
	CMaxRate           int64         // bytes per second, 0 = unlimited
	CMinRate           int64         // bytes per second
	CDelayTarget       time.Duration // tenths in the file
	OnIOError          string        // detach, pass_on, call-local-io-error
	ALExtents          int
	DiskFlushes        bool
	MDFlushes          bool
	BitmapGranularity  int64  // bytes per bitmap bit, power of two in [4096, 1M]
	OnNoDataAccessible string // io-error, suspend-io
}

// Handlers is the `handlers { }` section: shell commands, "" when not configured.
type Handlers struct {
	FencePeer          string
	UnfencePeer        string
	SplitBrain         string
	OutOfSync          string
	LocalIOError       string
	QuorumLost         string
	PriLost            string
	PriLostAfterSB     string
	PriOnInconDegr     string
	BeforeResyncTarget string
	AfterResyncTarget  string
	InitialSplitBrain  string
}

// Options is the `options { }` section.
type Options struct {
	Quorum       string // off, majority
	OnNoQuorum   string // suspend-io, io-error
	AutoFailover bool
}

// Defaults. Where twinbd differs from DRBD the comment says so.
func defaultNet() Net {
	return Net{
		Protocol:     "C",
		CramHMACAlg:  "sha256",
		Fencing:      "dont-care",
		AfterSB0Pri:  "disconnect",
		AfterSB1Pri:  "disconnect",
		AfterSB2Pri:  "disconnect",
		PingInt:      1 * time.Second, // DRBD: 10s; twinbd wants fast failover
		PingTimeout:  500 * time.Millisecond,
		Timeout:      6 * time.Second,
		ConnectInt:   10 * time.Second,
		KoCount:      7,
		MaxBuffers:   2048,
		MaxEpochSize: 2048,
	}
}

func defaultDisk() Disk {
	return Disk{
		CPlanAhead:         2 * time.Second,
		CFillTarget:        100 * 512, // DRBD: 100 sectors
		CMinRate:           250 << 10,
		CDelayTarget:       1 * time.Second,
		OnIOError:          "detach",
		ALExtents:          1014, // DRBD: 1237; twinbd logs at most 1014 extents (one 4 KiB transaction)
		DiskFlushes:        true,
		MDFlushes:          true,
		BitmapGranularity:  4096,
		OnNoDataAccessible: "io-error",
	}
}

func defaultOptions() Options {
	return Options{Quorum: "off", OnNoQuorum: "suspend-io"}
}

// Load reads the resource file at path, follows its includes and validates it.
func Load(path string) (*Config, error) {
	src, err := osFS{}.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, src)
}

// Parse parses src as the content of filename. Includes are resolved relative to
// filepath.Dir(filename) and read from the file system.
func Parse(filename string, src []byte) (*Config, error) {
	return parse(filename, src, osFS{})
}

func parse(filename string, src []byte, fsys fileSystem) (*Config, error) {
	ld := &loader{fs: fsys}
	stmts, err := ld.load(filename, src)
	if err != nil {
		return nil, err
	}
	return build(stmts)
}

// Resource returns the resource called name.
func (c *Config) Resource(name string) (*Resource, error) {
	for _, r := range c.Resources {
		if r.Name == name {
			return r, nil
		}
	}
	if len(c.Resources) == 0 {
		return nil, fmt.Errorf("%w: %q (the configuration defines no resources)", ErrNoResource, name)
	}
	names := make([]string, len(c.Resources))
	for i, r := range c.Resources {
		names[i] = r.Name
	}
	return nil, fmt.Errorf("%w: %q (known resources: %s)", ErrNoResource, name, strings.Join(names, ", "))
}

// Host returns the `on` section called name.
func (r *Resource) Host(name string) (*Host, error) {
	for _, h := range r.Hosts {
		if h.Name == name {
			return h, nil
		}
	}
	names := make([]string, len(r.Hosts))
	for i, h := range r.Hosts {
		names[i] = h.Name
	}
	return nil, fmt.Errorf("%w: %q in resource %s (its on sections are: %s; --node NAME selects one)",
		ErrNoHost, name, r.Name, strings.Join(names, ", "))
}

// Peers returns every host of the resource except the one called name.
func (r *Resource) Peers(name string) []*Host {
	var out []*Host
	for _, h := range r.Hosts {
		if h.Name != name {
			out = append(out, h)
		}
	}
	return out
}

// ExportFor returns where h exports the device while Primary: its own export address
// if it has one, else the resource-level floating one ("" if neither is set).
func (r *Resource) ExportFor(h *Host) string {
	if h != nil && h.Export != "" {
		return h.Export
	}
	return r.Export
}

// Redacted returns a deep copy of r safe for logs: the shared secret is replaced by
// "<redacted>" when one is set.
func (r *Resource) Redacted() *Resource {
	c := *r
	c.Hosts = make([]*Host, len(r.Hosts))
	for i, h := range r.Hosts {
		hc := *h
		c.Hosts[i] = &hc
	}
	if c.Net.SharedSecret != "" {
		c.Net.SharedSecret = "<redacted>"
	}
	return &c
}
