package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Config is a parsed, validated resource file with its includes.
type Config struct {
	Resources []*Resource // in file order (includes spliced in where they stand)
	// Warnings name the DRBD-only keys the file sets that twinbd ignores, and
	// keys twinbd accepts but does not act on (see fromdrbd.go), in the order
	// they were read. They do not make Parse fail.
	Warnings []Warning
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
	// Promoter is the `promoter { }` section (what runs on top of the device
	// while this node is Primary), nil when the resource has none.
	Promoter *Promoter
	// NBD is the `nbd { }` section: who may use the export, and TLS.
	NBD NBD
}

// NBD is the `nbd { }` section: the export's TLS and allow-list.
type NBD struct {
	// TLS is "no" (default), "yes" (NBD_OPT_STARTTLS offered) or
	// "required" (plain clients refused).
	TLS     string
	TLSCert string // PEM server certificate (chain)
	TLSKey  string // PEM key of TLSCert
	TLSCA   string // PEM CA; set: clients need a certificate it signed (tls required only)
	// Allow lists the client addresses served (`allow CIDR|IP;`, repeatable,
	// a bare IP is a /32 or /128), in file order; nil serves everyone.
	Allow []netip.Prefix
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

// Promoter is the `promoter { }` section, drbd-reactor's promoter in drbd.conf
// grammar: the start list runs in order after this node became Primary and is
// stopped in reverse before it demotes.
type Promoter struct {
	Start         []Service     // the start list, in file order
	StartTimeout  time.Duration // bound on each start (and the device attach), seconds in the file
	StopTimeout   time.Duration // bound on each stop (and the device detach), seconds in the file
	OnStopFailure string        // shell command run once when a stop fails, "" for none
	AttachDevice  bool          // attach this host's `device` to the local export before the start list
}

// ServiceKind says how a start-list entry is started and stopped.
type ServiceKind string

const (
	ServiceSystemd ServiceKind = "systemd" // systemctl start|stop UNIT
	ServiceOCF     ServiceKind = "ocf"     // OCF_ROOT/resource.d/PROVIDER/AGENT start|stop
	ServiceCommand ServiceKind = "command" // a pair of shell commands
)

// Service is one entry of the promoter's start list.
type Service struct {
	Kind ServiceKind
	Unit string // ServiceSystemd: the unit name with its suffix (mariadb.service)
	// ServiceOCF: `ocf:PROVIDER:AGENT [INSTANCE] NAME=VALUE...`. Instance is
	// "" when not given; Params keep the file's order.
	Provider, Agent, Instance string
	Params                    []OCFParam
	// ServiceCommand: `start "COMMAND" stop "COMMAND"`, run with /bin/sh -c.
	StartCommand, StopCommand string
}

// OCFParam is one NAME=VALUE of an OCF agent entry; the agent sees it as
// OCF_RESKEY_NAME=VALUE.
type OCFParam struct {
	Name, Value string
}

// String names the entry for logs and errors: the unit, the OCF line as
// Format prints it, or the start command.
func (s Service) String() string {
	switch s.Kind {
	case ServiceSystemd:
		return s.Unit
	case ServiceOCF:
		parts := []string{"ocf:" + s.Provider + ":" + s.Agent}
		if s.Instance != "" {
			parts = append(parts, s.Instance)
		}
		for _, p := range s.Params {
			parts = append(parts, p.Name+"="+shellQuote(p.Value))
		}
		return strings.Join(parts, " ")
	}
	return s.StartCommand
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

// defaultPromoter is what an empty `promoter { }` section means. 90 s is
// systemd's DefaultTimeoutStartSec/DefaultTimeoutStopSec.
func defaultPromoter() Promoter {
	return Promoter{StartTimeout: 90 * time.Second, StopTimeout: 90 * time.Second, AttachDevice: true}
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
	if r.Promoter != nil {
		p := *r.Promoter
		p.Start = make([]Service, len(r.Promoter.Start))
		for i, sv := range r.Promoter.Start {
			sv.Params = slices.Clone(sv.Params)
			p.Start[i] = sv
		}
		c.Promoter = &p
	}
	c.NBD.Allow = slices.Clone(r.NBD.Allow)
	if c.Net.SharedSecret != "" {
		c.Net.SharedSecret = "<redacted>"
	}
	return &c
}
