package config

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// This file gives the generic statements of parser.go their meaning: which keywords
// exist where, what values they take, defaults, and the checks across keys.

// setter stores one value token into the resource being built.
type setter func(b *rbuilder, v token) error

type keyDef struct {
	name string
	set  setter
}

type sectionDef struct {
	name string
	keys []keyDef
}

func (s *sectionDef) lookup(name string) *keyDef {
	for i := range s.keys {
		if s.keys[i].name == name {
			return &s.keys[i]
		}
	}
	return nil
}

func (s *sectionDef) keyNames() string {
	names := make([]string, len(s.keys))
	for i, k := range s.keys {
		names[i] = k.name
	}
	return strings.Join(names, ", ")
}

// rbuilder accumulates one resource (or the common template) and remembers where
// each key was set, for checks that involve more than one key.
type rbuilder struct {
	r     Resource
	where map[string]Pos // "net.tls" -> position of the value
	warns *[]Warning     // shared by the clones: Config.Warnings
}

func (b *rbuilder) clone() *rbuilder {
	c := &rbuilder{r: b.r, where: make(map[string]Pos, len(b.where)), warns: b.warns}
	for k, v := range b.where {
		c.where[k] = v
	}
	return c
}

var sections = []*sectionDef{netSection, diskSection, handlersSection, optionsSection}

func sectionByName(name string) *sectionDef {
	for _, s := range sections {
		if s.name == name {
			return s
		}
	}
	return nil
}

var netSection = &sectionDef{name: "net", keys: []keyDef{
	{"protocol", func(b *rbuilder, v token) (err error) {
		b.r.Net.Protocol, err = enum(v, "protocol", "A", "B", "C")
		return err
	}},
	{"shared-secret", func(b *rbuilder, v token) error {
		b.r.Net.SharedSecret = v.text
		return nil
	}},
	{"cram-hmac-alg", func(b *rbuilder, v token) (err error) {
		b.r.Net.CramHMACAlg, err = enum(v, "cram-hmac-alg", "sha1", "sha256", "sha512")
		return err
	}},
	{"fencing", func(b *rbuilder, v token) (err error) {
		b.r.Net.Fencing, err = enum(v, "fencing", "dont-care", "resource-only", "resource-and-stonith")
		return err
	}},
	{"after-sb-0pri", func(b *rbuilder, v token) error {
		if name, ok := strings.CutPrefix(v.text, "discard-node-"); ok && name != "" {
			// The name is checked against the on sections once they are known.
			b.r.Net.AfterSB0Pri = v.text
			return nil
		}
		var err error
		b.r.Net.AfterSB0Pri, err = enum(v, "after-sb-0pri", "disconnect", "discard-younger-primary",
			"discard-older-primary", "discard-zero-changes", "discard-least-changes", "discard-node-NAME")
		return err
	}},
	{"after-sb-1pri", func(b *rbuilder, v token) (err error) {
		b.r.Net.AfterSB1Pri, err = enum(v, "after-sb-1pri", "disconnect", "consensus", "violently-as0p",
			"discard-secondary", "call-pri-lost-after-sb")
		return err
	}},
	{"after-sb-2pri", func(b *rbuilder, v token) (err error) {
		b.r.Net.AfterSB2Pri, err = enum(v, "after-sb-2pri", "disconnect", "violently-as0p", "call-pri-lost-after-sb")
		return err
	}},
	{"ping-int", func(b *rbuilder, v token) (err error) {
		b.r.Net.PingInt, err = duration(v, "ping-int", time.Second, 1, 120)
		return err
	}},
	{"ping-timeout", func(b *rbuilder, v token) (err error) {
		b.r.Net.PingTimeout, err = duration(v, "ping-timeout", tenth, 1, 300)
		return err
	}},
	{"timeout", func(b *rbuilder, v token) (err error) {
		b.r.Net.Timeout, err = duration(v, "timeout", tenth, 1, 600)
		return err
	}},
	{"connect-int", func(b *rbuilder, v token) (err error) {
		b.r.Net.ConnectInt, err = duration(v, "connect-int", time.Second, 1, 120)
		return err
	}},
	{"ko-count", func(b *rbuilder, v token) (err error) {
		b.r.Net.KoCount, err = integer(v, "ko-count", 0, 200)
		return err
	}},
	{"max-buffers", func(b *rbuilder, v token) (err error) {
		b.r.Net.MaxBuffers, err = integer(v, "max-buffers", 32, 131072)
		return err
	}},
	{"max-epoch-size", func(b *rbuilder, v token) (err error) {
		b.r.Net.MaxEpochSize, err = integer(v, "max-epoch-size", 1, 20000)
		return err
	}},
	{"sndbuf-size", func(b *rbuilder, v token) (err error) {
		b.r.Net.SndBufSize, err = size(v, "sndbuf-size", 1, 0, 128<<20)
		return err
	}},
	{"rcvbuf-size", func(b *rbuilder, v token) (err error) {
		b.r.Net.RcvBufSize, err = size(v, "rcvbuf-size", 1, 0, 128<<20)
		return err
	}},
	{"verify-alg", func(b *rbuilder, v token) (err error) {
		b.r.Net.VerifyAlg, err = enum(v, "verify-alg", "xxhash64", "sha256", "crc32c", "sha1", "md5")
		return err
	}},
	{"csums-alg", func(b *rbuilder, v token) (err error) {
		b.r.Net.CsumsAlg, err = enum(v, "csums-alg", "xxhash64", "sha256", "crc32c", "sha1", "md5")
		return err
	}},
	{"csums-after-crash-only", func(b *rbuilder, v token) (err error) {
		b.r.Net.CsumsAfterCrashOnly, err = yesNo(v, "csums-after-crash-only")
		return err
	}},
	{"tls", func(b *rbuilder, v token) (err error) {
		b.r.Net.TLS, err = yesNo(v, "tls")
		return err
	}},
	{"tls-cert", func(b *rbuilder, v token) (err error) {
		b.r.Net.TLSCert, err = path(v, "tls-cert")
		return err
	}},
	{"tls-key", func(b *rbuilder, v token) (err error) {
		b.r.Net.TLSKey, err = path(v, "tls-key")
		return err
	}},
	{"tls-ca", func(b *rbuilder, v token) (err error) {
		b.r.Net.TLSCA, err = path(v, "tls-ca")
		return err
	}},
}}

var diskSection = &sectionDef{name: "disk", keys: []keyDef{
	{"size", func(b *rbuilder, v token) (err error) {
		b.r.Disk.Size, err = size(v, "size", sector, 0, 1<<60)
		return err
	}},
	{"resync-rate", func(b *rbuilder, v token) (err error) {
		b.r.Disk.ResyncRate, err = size(v, "resync-rate", 1024, 0, 1<<40)
		return err
	}},
	{"c-plan-ahead", func(b *rbuilder, v token) (err error) {
		b.r.Disk.CPlanAhead, err = duration(v, "c-plan-ahead", tenth, 0, 300)
		return err
	}},
	{"c-fill-target", func(b *rbuilder, v token) (err error) {
		b.r.Disk.CFillTarget, err = size(v, "c-fill-target", sector, 0, 1<<30)
		return err
	}},
	{"c-max-rate", func(b *rbuilder, v token) (err error) {
		b.r.Disk.CMaxRate, err = size(v, "c-max-rate", 1024, 0, 1<<40)
		return err
	}},
	{"c-min-rate", func(b *rbuilder, v token) (err error) {
		b.r.Disk.CMinRate, err = size(v, "c-min-rate", 1024, 0, 1<<40)
		return err
	}},
	{"c-delay-target", func(b *rbuilder, v token) (err error) {
		b.r.Disk.CDelayTarget, err = duration(v, "c-delay-target", tenth, 1, 100)
		return err
	}},
	{"on-io-error", func(b *rbuilder, v token) (err error) {
		b.r.Disk.OnIOError, err = enum(v, "on-io-error", "detach", "pass_on", "call-local-io-error")
		return err
	}},
	{"al-extents", func(b *rbuilder, v token) (err error) {
		b.r.Disk.ALExtents, err = integer(v, "al-extents", 67, 65534)
		return err
	}},
	{"disk-flushes", func(b *rbuilder, v token) (err error) {
		b.r.Disk.DiskFlushes, err = yesNo(v, "disk-flushes")
		return err
	}},
	{"md-flushes", func(b *rbuilder, v token) (err error) {
		b.r.Disk.MDFlushes, err = yesNo(v, "md-flushes")
		return err
	}},
	{"bitmap-granularity", func(b *rbuilder, v token) error {
		n, err := size(v, "bitmap-granularity", 1, 4096, 1<<20)
		if err != nil {
			return err
		}
		if n&(n-1) != 0 {
			return errorf(v.pos, "invalid bitmap-granularity %q (expected a power of two between 4K and 1M)", v.text)
		}
		b.r.Disk.BitmapGranularity = n
		return nil
	}},
	{"on-no-data-accessible", func(b *rbuilder, v token) (err error) {
		b.r.Disk.OnNoDataAccessible, err = enum(v, "on-no-data-accessible", "io-error", "suspend-io")
		return err
	}},
}}

func handler(name string, field func(h *Handlers) *string) keyDef {
	return keyDef{name, func(b *rbuilder, v token) error {
		*field(&b.r.Handlers) = v.text
		return nil
	}}
}

var handlersSection = &sectionDef{name: "handlers", keys: []keyDef{
	handler("fence-peer", func(h *Handlers) *string { return &h.FencePeer }),
	handler("unfence-peer", func(h *Handlers) *string { return &h.UnfencePeer }),
	handler("split-brain", func(h *Handlers) *string { return &h.SplitBrain }),
	handler("out-of-sync", func(h *Handlers) *string { return &h.OutOfSync }),
	handler("local-io-error", func(h *Handlers) *string { return &h.LocalIOError }),
	handler("quorum-lost", func(h *Handlers) *string { return &h.QuorumLost }),
	handler("pri-lost", func(h *Handlers) *string { return &h.PriLost }),
	handler("pri-lost-after-sb", func(h *Handlers) *string { return &h.PriLostAfterSB }),
	handler("pri-on-incon-degr", func(h *Handlers) *string { return &h.PriOnInconDegr }),
	handler("before-resync-target", func(h *Handlers) *string { return &h.BeforeResyncTarget }),
	handler("after-resync-target", func(h *Handlers) *string { return &h.AfterResyncTarget }),
	handler("initial-split-brain", func(h *Handlers) *string { return &h.InitialSplitBrain }),
}}

var optionsSection = &sectionDef{name: "options", keys: []keyDef{
	{"quorum", func(b *rbuilder, v token) (err error) {
		b.r.Options.Quorum, err = enum(v, "quorum", "off", "majority")
		return err
	}},
	{"on-no-quorum", func(b *rbuilder, v token) (err error) {
		b.r.Options.OnNoQuorum, err = enum(v, "on-no-quorum", "suspend-io", "io-error")
		return err
	}},
	{"auto-failover", func(b *rbuilder, v token) (err error) {
		b.r.Options.AutoFailover, err = yesNo(v, "auto-failover")
		return err
	}},
	// DRBD 9 moved it from disk to options; both are accepted.
	{"on-no-data-accessible", func(b *rbuilder, v token) (err error) {
		b.r.Disk.OnNoDataAccessible, err = enum(v, "on-no-data-accessible", "io-error", "suspend-io")
		return err
	}},
}}

const (
	tenth  = 100 * time.Millisecond
	sector = 512
)

// build turns the statements of a file (includes spliced in) into a Config.
func build(stmts []*stmt) (*Config, error) {
	tmpl := &rbuilder{where: map[string]Pos{}, warns: &[]Warning{}}
	tmpl.r.Net = defaultNet()
	tmpl.r.Disk = defaultDisk()
	tmpl.r.Options = defaultOptions()
	tmpl.r.NBD = NBD{TLS: "no"}

	var common *stmt
	var resources []*stmt
	for _, s := range stmts {
		switch s.key.text {
		case "common":
			if common != nil {
				return nil, errorf(s.key.pos, "duplicate common section (first at %s)", common.key.pos)
			}
			if err := header(s, "common", 0); err != nil {
				return nil, err
			}
			common = s
		case "resource":
			if err := header(s, "resource", 1); err != nil {
				return nil, err
			}
			resources = append(resources, s)
		case "global":
			if err := ignoreSection(tmpl, s); err != nil { // fromdrbd.go
				return nil, err
			}
		default:
			return nil, errorf(s.key.pos, "unknown top-level keyword %q (expected one of: include, common, resource)", s.key.text)
		}
	}
	// common applies to every resource wherever it stands in the file.
	if common != nil {
		if err := applySections(tmpl, common, "common section"); err != nil {
			return nil, err
		}
	}
	cfg := &Config{}
	seen := map[string]Pos{}
	for _, s := range resources {
		name := s.args[0]
		if err := checkName(name, "resource"); err != nil {
			return nil, err
		}
		if name.text == "all" {
			return nil, errorf(name.pos, "invalid resource name \"all\" (reserved: drbdadm verbs take \"all\" to mean every resource)")
		}
		if first, dup := seen[name.text]; dup {
			return nil, errorf(name.pos, "duplicate resource %q (first defined at %s)", name.text, first)
		}
		seen[name.text] = name.pos
		r, err := buildResource(tmpl.clone(), s)
		if err != nil {
			return nil, err
		}
		cfg.Resources = append(cfg.Resources, r)
	}
	cfg.Warnings = *tmpl.warns
	return cfg, nil
}

// applySections applies the common section: only net, disk, handlers and options.
func applySections(b *rbuilder, s *stmt, what string) error {
	seen := map[string]Pos{}
	for _, st := range s.block {
		if st.key.text == "startup" { // DRBD's; fromdrbd.go
			if err := ignoreSection(b, st); err != nil {
				return err
			}
			continue
		}
		sec := sectionByName(st.key.text)
		if sec == nil {
			return errorf(st.key.pos, "unknown section %q in %s (expected one of: net, disk, handlers, options)", st.key.text, what)
		}
		if err := applySection(b, sec, st, seen); err != nil {
			return err
		}
	}
	return nil
}

func applySection(b *rbuilder, sec *sectionDef, st *stmt, seen map[string]Pos) error {
	if first, dup := seen[sec.name]; dup {
		return errorf(st.key.pos, "duplicate %s section (first at %s)", sec.name, first)
	}
	seen[sec.name] = st.key.pos
	if err := header(st, sec.name, 0); err != nil {
		return err
	}
	keys := map[string]Pos{}
	for _, kv := range st.block {
		k := sec.lookup(kv.key.text)
		if k == nil && !kv.hasBlock && drbdOnlyKey(b, sec.name, kv) {
			continue // fromdrbd.go
		}
		if k == nil {
			return errorf(kv.key.pos, "unknown key %q in %s section (expected one of: %s)", kv.key.text, sec.name, sec.keyNames())
		}
		if first, dup := keys[k.name]; dup {
			return errorf(kv.key.pos, "duplicate key %q in %s section (first at %s)", k.name, sec.name, first)
		}
		keys[k.name] = kv.key.pos
		v, err := oneValue(kv)
		if err != nil {
			return err
		}
		if err := k.set(b, v); err != nil {
			return err
		}
		b.where[sec.name+"."+k.name] = v.pos
		noEffectKey(b, sec.name, k, v, kv.key.pos)
	}
	return nil
}

var resourceKeys = "net, disk, handlers, options, promoter, nbd, on, witness, export"

func buildResource(b *rbuilder, s *stmt) (*Resource, error) {
	name := s.args[0]
	b.r.Name = name.text
	b.r.Pos = s.key.pos
	secSeen := map[string]Pos{}
	keys := map[string]Pos{}
	hostsAt := map[string]Pos{}
	dflt, err := resourceDefaults(b, s) // drbd.conf's resource-level disk, volume, connection...: fromdrbd.go
	if err != nil {
		return nil, err
	}
	for _, st := range s.block {
		if sec := sectionByName(st.key.text); sec != nil && (st.hasBlock || sec != diskSection) {
			if err := applySection(b, sec, st, secSeen); err != nil {
				return nil, err
			}
			continue
		}
		switch st.key.text {
		case "on":
			if err := header(st, "on", 1); err != nil {
				return nil, err
			}
			hn := st.args[0]
			if err := checkName(hn, "host"); err != nil {
				return nil, err
			}
			if first, dup := hostsAt[hn.text]; dup {
				return nil, errorf(hn.pos, "duplicate \"on %s\" section (first at %s)", hn.text, first)
			}
			hostsAt[hn.text] = hn.pos
			if len(b.r.Hosts) == 2 {
				return nil, errorf(st.key.pos, "third \"on\" section (%s): twinbd supports two nodes per resource", hn.text)
			}
			hs, err := dflt.hostStmt(b, st, b.r.Name)
			if err != nil {
				return nil, err
			}
			h, err := buildHost(hs)
			if err != nil {
				return nil, err
			}
			for _, o := range b.r.Hosts {
				if o.NodeID == h.NodeID {
					return nil, errorf(st.key.pos, "duplicate node-id %d in \"on %s\" (already used by \"on %s\" at %s)", h.NodeID, h.Name, o.Name, o.Pos)
				}
				if o.Address == h.Address {
					return nil, errorf(st.key.pos, "duplicate address %s in \"on %s\" (already used by \"on %s\" at %s)", h.Address, h.Name, o.Name, o.Pos)
				}
			}
			b.r.Hosts = append(b.r.Hosts, h)
		case "witness", "export":
			if first, dup := keys[st.key.text]; dup {
				return nil, errorf(st.key.pos, "duplicate key %q in resource %s (first at %s)", st.key.text, b.r.Name, first)
			}
			keys[st.key.text] = st.key.pos
			v, err := oneValue(st)
			if err != nil {
				return nil, err
			}
			a, err := address(v, st.key.text)
			if err != nil {
				return nil, err
			}
			if st.key.text == "witness" {
				b.r.Witness = a
			} else {
				b.r.Export = a
			}
		case "promoter":
			if first, dup := secSeen["promoter"]; dup {
				return nil, errorf(st.key.pos, "duplicate promoter section (first at %s)", first)
			}
			secSeen["promoter"] = st.key.pos
			p, err := buildPromoter(st)
			if err != nil {
				return nil, err
			}
			b.r.Promoter = p
		case "nbd":
			if first, dup := secSeen["nbd"]; dup {
				return nil, errorf(st.key.pos, "duplicate nbd section (first at %s)", first)
			}
			secSeen["nbd"] = st.key.pos
			n, err := buildNBD(st, b.r.Name)
			if err != nil {
				return nil, err
			}
			b.r.NBD = *n
		case "disk", "meta-disk", "device", "volume", "connection", "connection-mesh", "startup":
			// read by resourceDefaults
		case "include":
			return nil, errorf(st.key.pos, "include is only allowed at top level, not inside resource %s", b.r.Name)
		default:
			return nil, errorf(st.key.pos, "unknown key %q in resource %s (expected one of: %s)", st.key.text, b.r.Name, resourceKeys)
		}
	}
	if len(b.r.Hosts) == 0 {
		return nil, errorf(s.key.pos, "resource %s has no \"on\" section (expected one or two: on NAME { node-id N; address IP:PORT; disk PATH; meta-disk internal; })", b.r.Name)
	}
	if node, ok := strings.CutPrefix(b.r.Net.AfterSB0Pri, "discard-node-"); ok {
		if _, err := b.r.Host(node); err != nil {
			return nil, errorf(b.where["net.after-sb-0pri"], "invalid after-sb-0pri %q in resource %s: no \"on %s\" section (expected discard-node- followed by one of: %s)",
				b.r.Net.AfterSB0Pri, b.r.Name, node, hostNames(b.r.Hosts))
		}
	}
	if b.r.Net.TLS && (b.r.Net.TLSCert == "" || b.r.Net.TLSKey == "" || b.r.Net.TLSCA == "") {
		return nil, errorf(b.where["net.tls"], "tls yes in resource %s needs tls-cert, tls-key and tls-ca (the CA that signed the peer's certificate) in its net section", b.r.Name)
	}
	if b.r.Options.AutoFailover && len(b.r.Hosts) > 1 && b.r.Witness == "" &&
		(b.r.Net.Fencing == "dont-care" || b.r.Handlers.FencePeer == "") {
		return nil, errorf(b.where["options.auto-failover"], "auto-failover yes in resource %s needs a witness (witness IP:PORT;) or fencing resource-only/resource-and-stonith with a fence-peer handler: otherwise a partition would promote the Secondary while the Primary writes on", b.r.Name)
	}
	if b.r.Options.AutoFailover && b.r.Witness != "" && b.r.Options.Quorum != "majority" {
		return nil, errorf(b.where["options.auto-failover"], "auto-failover yes with a witness in resource %s needs quorum majority in options: without it a Primary cut off from its peer and the witness would go on answering reads after the peer took over", b.r.Name)
	}
	r := b.r
	return &r, nil
}

func hostNames(hs []*Host) string {
	names := make([]string, len(hs))
	for i, h := range hs {
		names[i] = h.Name
	}
	return strings.Join(names, ", ")
}

var hostKeys = "node-id, address, disk, meta-disk, export, device"

var nbdDevice = regexp.MustCompile(`^/dev/nbd[0-9]+$`)

func buildHost(s *stmt) (*Host, error) {
	h := &Host{Name: s.args[0].text, Pos: s.key.pos}
	seen := map[string]Pos{}
	for _, st := range s.block {
		k := st.key.text
		if !strings.Contains(", "+hostKeys+",", ", "+k+",") {
			return nil, errorf(st.key.pos, "unknown key %q in \"on %s\" section (expected one of: %s)", k, h.Name, hostKeys)
		}
		if first, dup := seen[k]; dup {
			return nil, errorf(st.key.pos, "duplicate key %q in \"on %s\" section (first at %s)", k, h.Name, first)
		}
		seen[k] = st.key.pos
		if k == "address" && !st.hasBlock && len(st.args) == 2 &&
			(st.args[0].text == "ipv4" || st.args[0].text == "ipv6") {
			// drbd.conf's "address ipv4 10.1.1.31:7788;" form; the family is implied.
			st = &stmt{key: st.key, args: st.args[1:], end: st.end}
		}
		v, err := oneValue(st)
		if err != nil {
			return nil, err
		}
		switch k {
		case "node-id":
			h.NodeID, err = integer(v, "node-id", 0, 31)
		case "address":
			h.Address, err = address(v, "address")
		case "disk":
			if v.text == "" {
				err = errorf(v.pos, "empty disk (expected the path of the backing device or file)")
			}
			h.Disk = v.text
		case "meta-disk":
			h.MetaDisk = v.text
			if v.text != "internal" && !strings.HasPrefix(v.text, "/") {
				err = errorf(v.pos, "invalid meta-disk %q (expected internal or an absolute path)", v.text)
			}
		case "export":
			h.Export, err = address(v, "export")
		case "device":
			h.Device = v.text
			if !nbdDevice.MatchString(v.text) {
				err = errorf(v.pos, "invalid device %q (expected /dev/nbdN)", v.text)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	for _, req := range []string{"node-id", "address", "disk", "meta-disk"} {
		if _, ok := seen[req]; !ok {
			return nil, errorf(s.key.pos, "missing %s in \"on %s\" section (required: node-id, address, disk, meta-disk)", req, h.Name)
		}
	}
	return h, nil
}

// header checks "KEYWORD [args] {" with exactly n name arguments.
func header(s *stmt, what string, n int) error {
	if len(s.args) < n {
		return errorf(s.end.pos, "expected a name after %q, found %s", what, s.end.describe())
	}
	if len(s.args) > n {
		return errorf(s.args[n].pos, "expected \"{\" after %q, found %s", headerText(s, n), s.args[n].describe())
	}
	if !s.hasBlock {
		return errorf(s.end.pos, "expected \"{\" after %q, found %s", headerText(s, n), s.end.describe())
	}
	return nil
}

func headerText(s *stmt, n int) string {
	parts := []string{s.key.text}
	for _, a := range s.args[:n] {
		parts = append(parts, a.text)
	}
	return strings.Join(parts, " ")
}

// oneValue checks "KEY VALUE;" and returns the value.
func oneValue(s *stmt) (token, error) {
	switch {
	case len(s.args) == 0:
		return token{}, errorf(s.end.pos, "expected a value after %q, found %s", s.key.text, s.end.describe())
	case len(s.args) > 1:
		return token{}, errorf(s.args[1].pos, "expected \";\" after value of %q, found %s", s.key.text, s.args[1].describe())
	case s.hasBlock:
		return token{}, errorf(s.end.pos, "expected \";\" after value of %q, found \"{\"", s.key.text)
	}
	return s.args[0], nil
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

func checkName(v token, what string) error {
	if !namePattern.MatchString(v.text) {
		return errorf(v.pos, "invalid %s name %q (expected letters, digits, '_', '.' or '-', at most 128 characters, not starting with '.' or '-')", what, v.text)
	}
	return nil
}

func enum(v token, key string, allowed ...string) (string, error) {
	for _, a := range allowed {
		if v.text == a {
			return a, nil
		}
	}
	return "", errorf(v.pos, "invalid %s %q (expected %s)", key, v.text, orList(allowed))
}

func orList(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

func yesNo(v token, key string) (bool, error) {
	switch v.text {
	case "yes":
		return true, nil
	case "no":
		return false, nil
	}
	return false, errorf(v.pos, "invalid %s %q (expected yes or no)", key, v.text)
}

func path(v token, key string) (string, error) {
	if !strings.HasPrefix(v.text, "/") {
		return "", errorf(v.pos, "invalid %s %q (expected an absolute path)", key, v.text)
	}
	return v.text, nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func integer(v token, key string, lo, hi int) (int, error) {
	if isDigits(v.text) {
		if n, err := strconv.ParseInt(v.text, 10, 64); err == nil && n >= int64(lo) && n <= int64(hi) {
			return int(n), nil
		}
	}
	return 0, errorf(v.pos, "invalid %s %q (expected a whole number between %d and %d)", key, v.text, lo, hi)
}

func duration(v token, key string, unit time.Duration, lo, hi int) (time.Duration, error) {
	u := "seconds"
	if unit == tenth {
		u = "tenths of a second"
	}
	if isDigits(v.text) {
		if n, err := strconv.ParseInt(v.text, 10, 64); err == nil && n >= int64(lo) && n <= int64(hi) {
			return time.Duration(n) * unit, nil
		}
	}
	return 0, errorf(v.pos, "invalid %s %q (expected a whole number of %s between %d and %d)", key, v.text, u, lo, hi)
}

// size parses a number with an optional K, M or G suffix (×1024, ×1024², ×1024³ bytes).
// A plain number counts in unit bytes: 1 for byte sizes, 512 for sector sizes, 1024 for
// rates in KiB/s, as in drbd.conf. lo and hi bound the result in bytes.
func size(v token, key string, unit, lo, hi int64) (int64, error) {
	s := v.text
	mult := unit
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'K', 'k':
			mult, s = 1<<10, s[:n-1]
		case 'M', 'm':
			mult, s = 1<<20, s[:n-1]
		case 'G', 'g':
			mult, s = 1<<30, s[:n-1]
		}
	}
	if isDigits(s) {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n <= hi/mult {
			if b := n * mult; b >= lo && b <= hi {
				return b, nil
			}
		}
	}
	plain := "bytes"
	switch unit {
	case sector:
		plain = "512-byte sectors"
	case 1024:
		plain = "KiB"
	}
	return 0, errorf(v.pos, "invalid %s %q (expected a whole number of %s or a number with a K, M or G suffix, between %s and %s)",
		key, v.text, plain, formatSize(lo, 1), formatSize(hi, 1))
}

// address checks "host:port" / "[v6]:port" with a numeric port.
func address(v token, key string) (string, error) {
	host, port, err := net.SplitHostPort(v.text)
	if err != nil || host == "" {
		return "", errorf(v.pos, "invalid %s %q (expected IP:PORT or [IPv6]:PORT)", key, v.text)
	}
	if _, err := netip.ParseAddr(host); err != nil && !hostnamePattern.MatchString(host) {
		return "", errorf(v.pos, "invalid host %q in %s %q (expected an IP address or a host name)", host, key, v.text)
	}
	if !isDigits(port) {
		return "", errorf(v.pos, "invalid port %q in %s %q (expected a number between 1 and 65535)", port, key, v.text)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", errorf(v.pos, "invalid port %q in %s %q (expected a number between 1 and 65535)", port, key, v.text)
	}
	return v.text, nil
}

var hostnamePattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$`)

var nbdKeys = "tls, tls-cert, tls-key, tls-ca, allow"

// buildNBD reads `nbd { }`: `allow` may repeat (kept in file order), every
// other key stands at most once.
func buildNBD(s *stmt, res string) (*NBD, error) {
	if err := header(s, "nbd", 0); err != nil {
		return nil, err
	}
	n := NBD{TLS: "no"}
	seen := map[string]Pos{}
	allowed := map[netip.Prefix]Pos{}
	var tlsAt Pos
	for _, st := range s.block {
		k := st.key.text
		if !strings.Contains(", "+nbdKeys+",", ", "+k+",") {
			return nil, errorf(st.key.pos, "unknown key %q in nbd section (expected one of: %s)", k, nbdKeys)
		}
		if first, dup := seen[k]; dup && k != "allow" {
			return nil, errorf(st.key.pos, "duplicate key %q in nbd section (first at %s)", k, first)
		}
		seen[k] = st.key.pos
		v, err := oneValue(st)
		if err != nil {
			return nil, err
		}
		switch k {
		case "tls":
			n.TLS, err = enum(v, k, "no", "yes", "required")
			tlsAt = v.pos
		case "tls-cert":
			n.TLSCert, err = path(v, k)
		case "tls-key":
			n.TLSKey, err = path(v, k)
		case "tls-ca":
			n.TLSCA, err = path(v, k)
		case "allow":
			var p netip.Prefix
			p, err = allowPrefix(v)
			if err == nil {
				if first, dup := allowed[p]; dup {
					err = errorf(v.pos, "duplicate allow %s in nbd section (first at %s)", p, first)
				}
				allowed[p] = v.pos
				n.Allow = append(n.Allow, p)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	if n.TLS != "no" && (n.TLSCert == "" || n.TLSKey == "") {
		return nil, errorf(tlsAt, "tls %s in the nbd section of resource %s needs tls-cert and tls-key (the export's certificate and key)", n.TLS, res)
	}
	if n.TLSCA != "" && n.TLS != "required" {
		return nil, errorf(seen["tls-ca"], "tls-ca in the nbd section of resource %s needs tls required: with tls %s a client without a certificate would still get in over plain NBD", res, n.TLS)
	}
	return &n, nil
}

// allowPrefix parses `allow CIDR|IP`: a bare address is a single host; a
// CIDR must have no host bits set (10.0.0.0/8, not 10.1.2.3/8).
func allowPrefix(v token) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(v.text); err == nil && a.Zone() == "" {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(v.text)
	if err != nil {
		return netip.Prefix{}, errorf(v.pos, "invalid allow %q (expected an IP address or a CIDR prefix such as 10.0.0.0/8)", v.text)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, errorf(v.pos, "invalid allow %q (write IPv4-mapped prefixes as plain IPv4)", v.text)
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, errorf(v.pos, "invalid allow %q (host bits set: did you mean %s?)", v.text, m)
	}
	return p, nil
}

var promoterKeys = "start, start-timeout, stop-timeout, on-stop-failure, attach-device"

// buildPromoter reads `promoter { }`: `start` may repeat (the list, in file
// order), every other key stands at most once.
func buildPromoter(s *stmt) (*Promoter, error) {
	if err := header(s, "promoter", 0); err != nil {
		return nil, err
	}
	p := defaultPromoter()
	seen := map[string]Pos{}
	units := map[string]Pos{}
	for _, st := range s.block {
		k := st.key.text
		if !strings.Contains(", "+promoterKeys+",", ", "+k+",") {
			return nil, errorf(st.key.pos, "unknown key %q in promoter section (expected one of: %s)", k, promoterKeys)
		}
		if k == "start" {
			sv, err := startEntry(st)
			if err != nil {
				return nil, err
			}
			var id string
			switch sv.Kind {
			case ServiceSystemd:
				id = sv.Unit
			case ServiceOCF:
				id = "ocf:" + sv.Provider + ":" + sv.Agent + " " + sv.Instance
			}
			if id != "" {
				if first, dup := units[id]; dup {
					return nil, errorf(st.args[0].pos, "duplicate start %q in promoter section (first at %s; an OCF agent used twice needs two instance names)", sv.String(), first)
				}
				units[id] = st.args[0].pos
			}
			p.Start = append(p.Start, sv)
			continue
		}
		if first, dup := seen[k]; dup {
			return nil, errorf(st.key.pos, "duplicate key %q in promoter section (first at %s)", k, first)
		}
		seen[k] = st.key.pos
		v, err := oneValue(st)
		if err != nil {
			return nil, err
		}
		switch k {
		case "start-timeout":
			p.StartTimeout, err = duration(v, k, time.Second, 1, 86400)
		case "stop-timeout":
			p.StopTimeout, err = duration(v, k, time.Second, 1, 86400)
		case "on-stop-failure":
			if v.text == "" {
				err = errorf(v.pos, "empty on-stop-failure (expected a shell command, or leave the key out)")
			}
			p.OnStopFailure = v.text
		case "attach-device":
			p.AttachDevice, err = yesNo(v, k)
		}
		if err != nil {
			return nil, err
		}
	}
	return &p, nil
}

const startForms = `expected a systemd unit such as mariadb.service, "ocf:PROVIDER:AGENT [INSTANCE] NAME=VALUE ...", or a command pair: start "COMMAND" stop "COMMAND";`

var (
	unitPattern     = regexp.MustCompile(`^[A-Za-z0-9:_\\][A-Za-z0-9:_.\\@-]*\.(service|socket|device|mount|automount|swap|target|path|timer|slice|scope)$`)
	ocfNamePattern  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	ocfParamPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
)

// startEntry reads one `start` statement: a systemd unit, an OCF agent line,
// or `start "COMMAND" stop "COMMAND"`.
func startEntry(st *stmt) (Service, error) {
	if st.hasBlock {
		return Service{}, errorf(st.end.pos, "expected \";\" after start value, found \"{\"")
	}
	if len(st.args) == 0 {
		return Service{}, errorf(st.end.pos, "expected a value after \"start\", found %s (%s)", st.end.describe(), startForms)
	}
	v := st.args[0]
	if len(st.args) > 1 {
		stop := st.args[1]
		if stop.kind != tWord || stop.text != "stop" {
			return Service{}, errorf(stop.pos, "expected \";\" or stop \"COMMAND\" after start value, found %s", stop.describe())
		}
		if len(st.args) == 2 {
			return Service{}, errorf(st.end.pos, "expected a stop command after \"stop\", found %s", st.end.describe())
		}
		if len(st.args) > 3 {
			return Service{}, errorf(st.args[3].pos, "expected \";\" after stop command, found %s (quote a command that has spaces)", st.args[3].describe())
		}
		switch {
		case unitPattern.MatchString(v.text) || strings.HasPrefix(v.text, "ocf:"):
			return Service{}, errorf(stop.pos, "unexpected stop after start %q: systemd units and OCF agents are stopped by twinbd (stop is only for a command pair)", v.text)
		case strings.TrimSpace(v.text) == "":
			return Service{}, errorf(v.pos, "empty start command (%s)", startForms)
		case strings.TrimSpace(st.args[2].text) == "":
			return Service{}, errorf(st.args[2].pos, "empty stop command (expected the shell command that undoes %q)", v.text)
		}
		return Service{Kind: ServiceCommand, StartCommand: v.text, StopCommand: st.args[2].text}, nil
	}
	if strings.HasPrefix(v.text, "ocf:") {
		return ocfEntry(v)
	}
	if unitPattern.MatchString(v.text) && len(v.text) <= 255 {
		return Service{Kind: ServiceSystemd, Unit: v.text}, nil
	}
	return Service{}, errorf(v.pos, "invalid start %q (%s)", v.text, startForms)
}

// ocfEntry parses "ocf:PROVIDER:AGENT [INSTANCE] NAME=VALUE ..." as
// drbd-reactor does: words split with shell rules ('single', "double" and
// backslash quoting, no expansion); a first word after the agent without "="
// is the instance name.
func ocfEntry(v token) (Service, error) {
	words, err := shellSplit(v.text)
	if err != nil {
		return Service{}, errorf(v.pos, "invalid OCF agent %q: %v", v.text, err)
	}
	spec := strings.Split(words[0], ":")
	if len(spec) != 3 || spec[0] != "ocf" || !ocfNamePattern.MatchString(spec[1]) || !ocfNamePattern.MatchString(spec[2]) {
		return Service{}, errorf(v.pos, "invalid OCF agent %q (expected ocf:PROVIDER:AGENT such as ocf:heartbeat:IPaddr2, then an optional instance name and NAME=VALUE parameters)", words[0])
	}
	sv := Service{Kind: ServiceOCF, Provider: spec[1], Agent: spec[2]}
	rest := words[1:]
	if len(rest) > 0 && !strings.Contains(rest[0], "=") {
		if !ocfNamePattern.MatchString(rest[0]) {
			return Service{}, errorf(v.pos, "invalid OCF instance name %q in %q (expected letters, digits, '_', '.' or '-')", rest[0], v.text)
		}
		sv.Instance, rest = rest[0], rest[1:]
	}
	seen := map[string]bool{}
	for _, w := range rest {
		name, value, ok := strings.Cut(w, "=")
		if !ok || !ocfParamPattern.MatchString(name) {
			return Service{}, errorf(v.pos, "invalid OCF parameter %q in %q (expected NAME=VALUE with NAME made of letters, digits and '_'; the instance name comes right after the agent)", w, v.text)
		}
		if seen[name] {
			return Service{}, errorf(v.pos, "duplicate OCF parameter %q in %q", name, v.text)
		}
		seen[name] = true
		sv.Params = append(sv.Params, OCFParam{Name: name, Value: value})
	}
	return sv, nil
}

// shellSplit splits s into words with the shell's quoting rules and no
// expansion: blanks separate words; '...' is literal; "..." is literal except
// for \" and \\; a backslash outside quotes takes the next character as is.
func shellSplit(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated ' quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unterminated \" quote")
			}
			inWord = true
		case c == '\\':
			if i+1 >= len(s) {
				return nil, fmt.Errorf("backslash at the end")
			}
			i++
			cur.WriteByte(s[i])
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	if len(words) == 0 {
		return nil, fmt.Errorf("no agent")
	}
	return words, nil
}
