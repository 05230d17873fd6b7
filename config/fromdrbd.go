package config

import (
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// Coming from DRBD: a DRBD 9 resource file loads. Keys that mean the same are
// honoured; the DRBD-only keys below, which have no effect in twinbd, give a
// Warning naming them; anything else unknown stays an *Error. The shapes
// drbd.conf allows besides twinbd's own are read here too: resource-level
// disk, meta-disk and device as defaults for the on sections, one `volume N
// { }` (at resource level or in an on section), `connection { host NAME
// address ADDR; }`, and the /dev/drbdN forms of device (ignored: twinbd's
// kernel device is /dev/nbdN). docs/from-drbd.md is the user's side of this.

// Warning is a key twinbd reads but ignores: a DRBD-only key, or one twinbd
// accepts and does not act on.
type Warning struct {
	Pos Pos
	Msg string
}

// String is "FILE:LINE:COL: warning: MSG".
func (w Warning) String() string { return fmt.Sprintf("%s: warning: %s", w.Pos, w.Msg) }

func (b *rbuilder) warnf(p Pos, format string, args ...any) {
	if b.warns != nil {
		*b.warns = append(*b.warns, Warning{Pos: p, Msg: fmt.Sprintf(format, args...)})
	}
}

// drbdOnly lists, per section, the drbd.conf keys that have no effect in
// twinbd, with the reason the warning gives. global and startup are sections
// twinbd does not have at all.
var drbdOnly = map[string]map[string]string{
	"global": {
		"usage-count":             "twinbd reports usage to nobody",
		"minor-count":             "twinbd has no kernel module and no /dev/drbdN minors",
		"dialog-refresh":          "twinbd wait-connect and wait-sync print their own progress",
		"disable-ip-verification": "twinbd picks its on section by --node, not by a local address",
		"udev-always-use-vnr":     "twinbd creates no /dev/drbd/by-res links; its kernel device is /dev/nbdN",
		"cmd-timeout-short":       "twinbd's waiting verbs take --timeout",
		"cmd-timeout-medium":      "twinbd's waiting verbs take --timeout",
		"cmd-timeout-long":        "twinbd's waiting verbs take --timeout",
	},
	"startup": {
		"wfc-timeout":          "twinbd's wait-connect --timeout does this",
		"degr-wfc-timeout":     "twinbd's wait-connect --timeout does this",
		"outdated-wfc-timeout": "twinbd's wait-connect --timeout does this",
		"wait-after-sb":        "twinbd's wait-connect gives up with exit code 11 on StandAlone",
		"become-primary-on":    "twinbd promotes by `twinbd primary`, options { auto-failover yes; } or Pacemaker",
		"stacked-timeouts":     "twinbd has no stacked resources",
	},
	"net": {
		"allow-two-primaries":  "twinbd NEVER allows two Primaries: `primary` is refused while the peer is Primary, so no dual-primary setups and no cluster file systems on top",
		"rr-conflict":          "twinbd has no rr-conflict policy: a split brain whose victim is Primary goes StandAlone",
		"always-asbp":          "twinbd has no such switch; the after-sb-* policies apply as docs/replication.md says",
		"discard-my-data":      "use `twinbd connect --discard-my-data RES` on the split brain's victim",
		"data-integrity-alg":   "twinbd has no per-request digests; the link is authenticated (cram-hmac-alg) and can use TLS (tls yes)",
		"use-rle":              "a detail of DRBD's bitmap exchange; twinbd's wire format is its own",
		"tcp-cork":             "a kernel socket option of DRBD's link; twinbd's link is a userspace TCP connection",
		"congestion-fill":      "twinbd has no Ahead/Behind mode",
		"congestion-extents":   "twinbd has no Ahead/Behind mode",
		"on-congestion":        "twinbd has no Ahead/Behind mode",
		"sock-check-timeo":     "twinbd's link has one connection per channel; connect-int and timeout apply",
		"socket-check-timeout": "twinbd's link has one connection per channel; connect-int and timeout apply",
		"transport":            "twinbd has one transport: TCP, optionally with TLS (tls yes)",
		"load-balance-paths":   "twinbd uses one path per connection",
		"allow-remote-read":    "twinbd reads from the local disk",
	},
	"disk": {
		"disk-barrier":              "DRBD's write-ordering method; twinbd's is its own",
		"disk-drain":                "DRBD's write-ordering method; twinbd's is its own",
		"disk-timeout":              "twinbd has no timeout on the backing device",
		"al-updates":                "twinbd always keeps its activity log",
		"read-balancing":            "twinbd reads from the local disk",
		"rs-discard-granularity":    "twinbd sends all-zero resync runs as holes by itself",
		"discard-zeroes-if-aligned": "a kernel block-layer setting of /dev/drbdN; twinbd has no /dev/drbdN",
		"disable-write-same":        "a kernel block-layer setting of /dev/drbdN; twinbd has no /dev/drbdN",
		"max-bio-bvecs":             "a kernel block-layer setting of /dev/drbdN; twinbd has no /dev/drbdN",
		"resync-after":              "twinbd resyncs each resource independently",
	},
	"options": {
		"auto-promote":                  "twinbd does not promote when a device is opened: promote by `twinbd primary`, options { auto-failover yes; } or Pacemaker",
		"auto-promote-timeout":          "twinbd does not promote when a device is opened",
		"cpu-mask":                      "DRBD's kernel threads; twinbd is one process (systemd's CPUAffinity= pins it)",
		"quorum-minimum-redundancy":     "twinbd's quorum is the two nodes and the witness (docs/failover.md)",
		"peer-ack-window":               "a detail of DRBD 9's multi-peer protocol; twinbd has one peer",
		"peer-ack-delay":                "a detail of DRBD 9's multi-peer protocol; twinbd has one peer",
		"twopc-timeout":                 "DRBD 9's cluster-wide two-phase state changes; twinbd has one peer",
		"twopc-retry-timeout":           "DRBD 9's cluster-wide two-phase state changes; twinbd has one peer",
		"max-io-depth":                  "a kernel queue limit of /dev/drbdN; twinbd has no /dev/drbdN",
		"on-suspended-primary-outdated": "twinbd does not implement it",
	},
	"handlers": {
		"before-resync-source": "twinbd runs only the resync-target handlers (before-resync-target, after-resync-target)",
	},
}

// noEffect lists the keys twinbd parses (and dump prints) but does not act on
// today; setting one gives a warning. Keep it in step with the code that
// reads Resource: a key that starts to matter leaves this table.
var noEffect = map[string]string{
	"disk.c-plan-ahead":            "DRBD's dynamic resync controller is not implemented: resync-rate, else c-max-rate, is a fixed cap",
	"disk.c-fill-target":           "DRBD's dynamic resync controller is not implemented: resync-rate, else c-max-rate, is a fixed cap",
	"disk.c-delay-target":          "DRBD's dynamic resync controller is not implemented: resync-rate, else c-max-rate, is a fixed cap",
	"disk.c-min-rate":              "DRBD's dynamic resync controller is not implemented: resync-rate, else c-max-rate, is a fixed cap",
	"disk.disk-flushes":            "twinbd does not act on it yet",
	"disk.md-flushes":              "twinbd does not act on it yet",
	"net.csums-after-crash-only":   "twinbd uses checksums after a Primary crash anyway, and for every resync when csums-alg is set",
	"handlers.pri-lost":            "twinbd never runs this handler",
	"handlers.pri-lost-after-sb":   "twinbd never runs this handler; a split brain whose victim is Primary goes StandAlone",
	"handlers.pri-on-incon-degr":   "twinbd never runs this handler",
	"handlers.initial-split-brain": "twinbd never runs this handler; split-brain runs on every split brain",
}

// drbdOnlyKey warns about kv, a key section does not know, if DRBD has it and
// it has no effect in twinbd; it reports false for a key DRBD does not know
// either, which the caller turns into an error.
func drbdOnlyKey(b *rbuilder, section string, kv *stmt) bool {
	why, ok := drbdOnly[section][kv.key.text]
	if !ok {
		return false
	}
	b.warnf(kv.key.pos, "%s { %s } is DRBD-only and ignored (%s)", section, kv.key.text, why)
	return true
}

// noEffectKey warns that key, just set in section to v, does nothing in
// twinbd, unless v is twinbd's default: Format prints every default, and
// twinbd's own canonical file must load without warnings.
func noEffectKey(b *rbuilder, section string, k *keyDef, v token, p Pos) {
	why, ok := noEffect[section+"."+k.name]
	if !ok {
		return
	}
	def := func() *rbuilder {
		return &rbuilder{r: Resource{Net: defaultNet(), Disk: defaultDisk(), Options: defaultOptions()}, where: map[string]Pos{}}
	}
	set := def()
	if err := k.set(set, v); err == nil && reflect.DeepEqual(set.r, def().r) {
		return
	}
	b.warnf(p, "%s { %s } is accepted but has no effect (%s)", section, k.name, why)
}

// ignoreSection reads a section twinbd does not have (global, startup): each
// key DRBD knows is a warning, any other key an error.
func ignoreSection(b *rbuilder, st *stmt) error {
	name := st.key.text
	if err := header(st, name, 0); err != nil {
		return err
	}
	for _, kv := range st.block {
		if kv.hasBlock || !drbdOnlyKey(b, name, kv) {
			known := make([]string, 0, len(drbdOnly[name]))
			for k := range drbdOnly[name] {
				known = append(known, k)
			}
			sort.Strings(known)
			return errorf(kv.key.pos, "unknown key %q in %s section (twinbd has no %s section; it ignores DRBD's keys there with a warning: %s)",
				kv.key.text, name, name, strings.Join(known, ", "))
		}
	}
	return nil
}

// hostDefaults is what a resource gives its on sections: resource-level
// disk, meta-disk and device (as drbd.conf: an on section's own value wins),
// and the addresses of a connection section.
type hostDefaults struct {
	keys   map[string]*stmt // "disk", "meta-disk", "device" -> the statement to copy
	addrs  map[string]*stmt // host name -> an `address VALUE;` statement
	volume *token           // the one volume number seen, nil if none
}

var drbdDevice = regexp.MustCompile(`^(/dev/)?drbd[0-9]+$`)

// deviceStmt reads `device ...;`: twinbd's /dev/nbdN (keep), or one of
// drbd.conf's /dev/drbdN forms (`device /dev/drbd0;`, `device /dev/drbd0
// minor 0;`, `device minor 0;`), which warn and are dropped. Anything else is
// kept for buildHost to reject.
func deviceStmt(b *rbuilder, st *stmt) (keep bool) {
	a := st.args
	if st.hasBlock || len(a) == 0 {
		return true
	}
	drbd := drbdDevice.MatchString(a[0].text)
	if drbd {
		a = a[1:]
	}
	if len(a) == 2 && a[0].text == "minor" && isDigits(a[1].text) {
		drbd, a = true, nil
	}
	if !drbd || len(a) != 0 {
		return true
	}
	b.warnf(st.key.pos, "device %s is DRBD's kernel device and ignored: twinbd has no /dev/drbdN; its kernel device is /dev/nbdN (`device /dev/nbdN;` attaches one on promotion, docs/promoter.md)", headerText(st, len(st.args))[len("device "):])
	return false
}

// volumeKeys reads `volume N { device ...; disk ...; meta-disk ...; }` and
// returns its statements. Only one volume number is allowed per resource.
func (d *hostDefaults) volumeKeys(st *stmt, res string) ([]*stmt, error) {
	if err := header(st, "volume", 1); err != nil {
		return nil, err
	}
	n := st.args[0]
	if _, err := integer(n, "volume number", 0, 65535); err != nil {
		return nil, err
	}
	if d.volume != nil && d.volume.text != n.text {
		return nil, errorf(n.pos, "second volume %s in resource %s (volume %s at %s): twinbd replicates one volume per resource; make each further volume a resource of its own",
			n.text, res, d.volume.text, d.volume.pos)
	}
	d.volume = &n
	for _, kv := range st.block {
		switch {
		case kv.key.text == "disk" && kv.hasBlock:
			return nil, errorf(kv.key.pos, "disk section in volume %s: twinbd has one volume per resource; put the disk options in the resource's disk section", n.text)
		case kv.key.text == "disk", kv.key.text == "meta-disk", kv.key.text == "device":
		default:
			return nil, errorf(kv.key.pos, "unknown key %q in volume %s (expected one of: device, disk, meta-disk)", kv.key.text, n.text)
		}
	}
	return st.block, nil
}

// resourceDefaults reads the resource-level statements drbd.conf has and
// twinbd takes from it: disk, meta-disk, device, volume, connection,
// connection-mesh and startup. buildResource skips them afterwards.
func resourceDefaults(b *rbuilder, s *stmt) (*hostDefaults, error) {
	d := &hostDefaults{keys: map[string]*stmt{}, addrs: map[string]*stmt{}}
	hosts := map[string]bool{}
	for _, st := range s.block {
		if st.key.text == "on" && len(st.args) > 0 {
			hosts[st.args[0].text] = true
		}
	}
	res := s.args[0].text
	var conn *stmt
	key := func(st *stmt) error {
		k := st.key.text
		if k == "device" && !deviceStmt(b, st) {
			return nil
		}
		if first, dup := d.keys[k]; dup {
			return errorf(st.key.pos, "duplicate key %q in resource %s (first at %s)", k, res, first.key.pos)
		}
		v, err := oneValue(st)
		if err != nil {
			return err
		}
		switch {
		case k == "disk" && v.text == "":
			return errorf(v.pos, "empty disk (expected the path of the backing device or file)")
		case k == "meta-disk" && v.text != "internal" && !strings.HasPrefix(v.text, "/"):
			return errorf(v.pos, "invalid meta-disk %q (expected internal or an absolute path)", v.text)
		case k == "device" && !nbdDevice.MatchString(v.text):
			return errorf(v.pos, "invalid device %q (expected /dev/nbdN, or DRBD's /dev/drbdN [minor N], which twinbd ignores)", v.text)
		}
		d.keys[k] = st
		return nil
	}
	for _, st := range s.block {
		switch st.key.text {
		case "disk", "meta-disk", "device":
			if st.hasBlock {
				continue // disk { }: the disk section
			}
			if err := key(st); err != nil {
				return nil, err
			}
		case "volume":
			kvs, err := d.volumeKeys(st, res)
			if err != nil {
				return nil, err
			}
			for _, kv := range kvs {
				if err := key(kv); err != nil {
					return nil, err
				}
			}
		case "startup":
			if err := ignoreSection(b, st); err != nil {
				return nil, err
			}
		case "connection-mesh":
			if err := header(st, "connection-mesh", 0); err != nil {
				return nil, err
			}
			for _, kv := range st.block {
				if kv.key.text != "hosts" {
					return nil, errorf(kv.key.pos, "%q in connection-mesh: twinbd has one connection per resource; put it in the resource itself (net options in its net section)", kv.key.text)
				}
			}
			b.warnf(st.key.pos, "connection-mesh is DRBD-only and ignored (twinbd has two nodes and one connection between them; the on sections say who they are)")
		case "connection":
			if conn != nil {
				return nil, errorf(st.key.pos, "second connection section in resource %s (first at %s): twinbd has two nodes and one connection", res, conn.key.pos)
			}
			conn = st
			if err := d.connection(st, res, hosts); err != nil {
				return nil, err
			}
		}
	}
	return d, nil
}

// connection reads `connection [NAME] { host A address [ipv4] IP:PORT; host
// B address ...; }` (or the same hosts in one `path { }`): the addresses go to
// the on sections.
func (d *hostDefaults) connection(st *stmt, res string, hosts map[string]bool) error {
	if len(st.args) > 1 || !st.hasBlock {
		return header(st, "connection", min(len(st.args), 1))
	}
	var path *stmt
	hostStmt := func(h *stmt) error {
		a := h.args
		if h.hasBlock || len(a) == 0 {
			return errorf(h.key.pos, "expected host NAME address IP:PORT; in connection section")
		}
		name := a[0]
		if !hosts[name.text] {
			return errorf(name.pos, "connection names host %q, which has no on section in resource %s", name.text, res)
		}
		if len(a) == 1 {
			return nil // host NAME; : the address is in the on section
		}
		if a[1].text != "address" {
			return errorf(a[1].pos, "expected \"address\" after host %s in connection section, found %s (twinbd takes host NAME address IP:PORT; or the address in the on section)", name.text, a[1].describe())
		}
		a = a[2:]
		if len(a) == 2 && (a[0].text == "ipv4" || a[0].text == "ipv6") {
			a = a[1:]
		}
		if len(a) != 1 {
			return errorf(h.end.pos, "expected host NAME address IP:PORT; in connection section")
		}
		if _, err := address(a[0], "address"); err != nil {
			return err
		}
		if first, dup := d.addrs[name.text]; dup {
			return errorf(h.key.pos, "duplicate address for host %s in connection section (first at %s)", name.text, first.key.pos)
		}
		d.addrs[name.text] = &stmt{key: token{kind: tWord, text: "address", pos: h.key.pos}, args: a, end: h.end}
		return nil
	}
	for _, kv := range st.block {
		switch kv.key.text {
		case "host":
			if err := hostStmt(kv); err != nil {
				return err
			}
		case "path":
			if path != nil {
				return errorf(kv.key.pos, "second path in connection section (first at %s): twinbd uses one path per connection", path.key.pos)
			}
			path = kv
			if err := header(kv, "path", 0); err != nil {
				return err
			}
			for _, h := range kv.block {
				if h.key.text != "host" {
					return errorf(h.key.pos, "unknown key %q in path section (expected host NAME address IP:PORT;)", h.key.text)
				}
				if err := hostStmt(h); err != nil {
					return err
				}
			}
		case "net", "disk", "options", "handlers", "volume":
			return errorf(kv.key.pos, "%s section in connection: twinbd has one connection per resource; put it in the resource itself", kv.key.text)
		default:
			return errorf(kv.key.pos, "unknown key %q in connection section (expected host NAME address IP:PORT; or use address in the on sections)", kv.key.text)
		}
	}
	return nil
}

// hostStmt returns on as buildHost reads it: volume N { } flattened into it,
// DRBD's /dev/drbdN device dropped, and the resource's defaults (disk,
// meta-disk, device, a connection's address) added where on lacks them.
func (d *hostDefaults) hostStmt(b *rbuilder, on *stmt, res string) (*stmt, error) {
	out := *on
	out.block = nil
	has := map[string]bool{}
	add := func(kv *stmt) {
		has[kv.key.text] = true
		if kv.key.text == "device" && !kv.hasBlock && !deviceStmt(b, kv) {
			return
		}
		out.block = append(out.block, kv)
	}
	for _, kv := range on.block {
		if kv.key.text != "volume" {
			add(kv)
			continue
		}
		kvs, err := d.volumeKeys(kv, res)
		if err != nil {
			return nil, err
		}
		for _, v := range kvs {
			add(v)
		}
	}
	for _, k := range []string{"disk", "meta-disk", "device"} {
		if kv := d.keys[k]; kv != nil && !has[k] {
			out.block = append(out.block, kv)
		}
	}
	if a := d.addrs[on.args[0].text]; a != nil {
		i := slices.IndexFunc(out.block, func(kv *stmt) bool { return kv.key.text == "address" })
		if i < 0 {
			out.block = append(out.block, a)
		} else if own := out.block[i]; len(own.args) == 0 || own.args[len(own.args)-1].text != a.args[0].text {
			return nil, errorf(own.key.pos, "address of \"on %s\" differs from the one its connection section gives at %s (%s)", on.args[0].text, a.key.pos, a.args[0].text)
		}
	}
	return &out, nil
}
