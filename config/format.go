package config

import (
	"strconv"
	"strings"
	"time"
)

// Format returns r as canonical drbd.conf text: every value, defaults included, in
// the file's units (seconds or tenths; sizes with the largest exact K/M/G suffix).
// Parsing the text gives a Resource equal to r except for positions. The shared
// secret is printed as it is, as drbdadm dump does; use Redacted for logs.
func (r *Resource) Format() string {
	w := &writer{}
	w.open("resource " + r.Name)

	n := &r.Net
	w.open("net")
	w.kv("protocol", n.Protocol)
	if n.SharedSecret != "" {
		w.kv("shared-secret", quote(n.SharedSecret))
	}
	w.kv("cram-hmac-alg", n.CramHMACAlg)
	w.kv("fencing", n.Fencing)
	w.kv("after-sb-0pri", n.AfterSB0Pri)
	w.kv("after-sb-1pri", n.AfterSB1Pri)
	w.kv("after-sb-2pri", n.AfterSB2Pri)
	w.kv("ping-int", units(n.PingInt, time.Second))
	w.kv("ping-timeout", units(n.PingTimeout, tenth))
	w.kv("timeout", units(n.Timeout, tenth))
	w.kv("connect-int", units(n.ConnectInt, time.Second))
	w.kv("ko-count", strconv.Itoa(n.KoCount))
	w.kv("max-buffers", strconv.Itoa(n.MaxBuffers))
	w.kv("max-epoch-size", strconv.Itoa(n.MaxEpochSize))
	w.kv("sndbuf-size", formatSize(n.SndBufSize, 1))
	w.kv("rcvbuf-size", formatSize(n.RcvBufSize, 1))
	if n.VerifyAlg != "" {
		w.kv("verify-alg", n.VerifyAlg)
	}
	if n.CsumsAlg != "" {
		w.kv("csums-alg", n.CsumsAlg)
	}
	w.kv("csums-after-crash-only", yn(n.CsumsAfterCrashOnly))
	w.kv("tls", yn(n.TLS))
	for _, kv := range [][2]string{{"tls-cert", n.TLSCert}, {"tls-key", n.TLSKey}, {"tls-ca", n.TLSCA}} {
		if kv[1] != "" {
			w.kv(kv[0], word(kv[1]))
		}
	}
	w.close()

	d := &r.Disk
	w.open("disk")
	w.kv("size", formatSize(d.Size, sector))
	w.kv("resync-rate", formatSize(d.ResyncRate, 1024))
	w.kv("c-plan-ahead", units(d.CPlanAhead, tenth))
	w.kv("c-fill-target", formatSize(d.CFillTarget, sector))
	w.kv("c-max-rate", formatSize(d.CMaxRate, 1024))
	w.kv("c-min-rate", formatSize(d.CMinRate, 1024))
	w.kv("c-delay-target", units(d.CDelayTarget, tenth))
	w.kv("on-io-error", d.OnIOError)
	w.kv("al-extents", strconv.Itoa(d.ALExtents))
	w.kv("disk-flushes", yn(d.DiskFlushes))
	w.kv("md-flushes", yn(d.MDFlushes))
	w.kv("bitmap-granularity", formatSize(d.BitmapGranularity, 1))
	w.kv("on-no-data-accessible", d.OnNoDataAccessible)
	w.close()

	h := &r.Handlers
	handlers := [][2]string{
		{"fence-peer", h.FencePeer}, {"unfence-peer", h.UnfencePeer}, {"split-brain", h.SplitBrain},
		{"out-of-sync", h.OutOfSync}, {"local-io-error", h.LocalIOError}, {"quorum-lost", h.QuorumLost},
		{"pri-lost", h.PriLost}, {"pri-lost-after-sb", h.PriLostAfterSB}, {"pri-on-incon-degr", h.PriOnInconDegr},
		{"before-resync-target", h.BeforeResyncTarget}, {"after-resync-target", h.AfterResyncTarget},
		{"initial-split-brain", h.InitialSplitBrain},
	}
	if *h != (Handlers{}) {
		w.open("handlers")
		for _, kv := range handlers {
			if kv[1] != "" {
				w.kv(kv[0], quote(kv[1]))
			}
		}
		w.close()
	}

	w.open("options")
	w.kv("quorum", r.Options.Quorum)
	w.kv("on-no-quorum", r.Options.OnNoQuorum)
	w.kv("auto-failover", yn(r.Options.AutoFailover))
	w.close()

	if p := r.Promoter; p != nil {
		w.open("promoter")
		for _, sv := range p.Start {
			if sv.Kind == ServiceCommand {
				w.kv("start", quote(sv.StartCommand)+" stop "+quote(sv.StopCommand))
			} else {
				w.kv("start", word(sv.String()))
			}
		}
		w.kv("start-timeout", units(p.StartTimeout, time.Second))
		w.kv("stop-timeout", units(p.StopTimeout, time.Second))
		if p.OnStopFailure != "" {
			w.kv("on-stop-failure", quote(p.OnStopFailure))
		}
		w.kv("attach-device", yn(p.AttachDevice))
		w.close()
	}

	if nb := &r.NBD; nb.TLS != "no" || nb.TLSCert != "" || nb.TLSKey != "" || nb.TLSCA != "" || nb.Allow != nil {
		w.open("nbd")
		w.kv("tls", nb.TLS)
		for _, kv := range [][2]string{{"tls-cert", nb.TLSCert}, {"tls-key", nb.TLSKey}, {"tls-ca", nb.TLSCA}} {
			if kv[1] != "" {
				w.kv(kv[0], word(kv[1]))
			}
		}
		for _, p := range nb.Allow {
			w.kv("allow", word(p.String()))
		}
		w.close()
	}

	if r.Witness != "" {
		w.kv("witness", word(r.Witness))
	}
	if r.Export != "" {
		w.kv("export", word(r.Export))
	}
	for _, h := range r.Hosts {
		w.open("on " + h.Name)
		w.kv("node-id", strconv.Itoa(h.NodeID))
		w.kv("address", word(h.Address))
		if h.Export != "" {
			w.kv("export", word(h.Export))
		}
		w.kv("disk", word(h.Disk))
		w.kv("meta-disk", word(h.MetaDisk))
		if h.Device != "" {
			w.kv("device", word(h.Device))
		}
		w.close()
	}
	w.close()
	return w.b.String()
}

type writer struct {
	b     strings.Builder
	depth int
}

func (w *writer) indent() {
	for range w.depth {
		w.b.WriteString("    ")
	}
}

func (w *writer) open(header string) {
	w.indent()
	w.b.WriteString(header + " {\n")
	w.depth++
}

func (w *writer) close() {
	w.depth--
	w.indent()
	w.b.WriteString("}\n")
}

func (w *writer) kv(key, value string) {
	w.indent()
	w.b.WriteString(key + " " + value + ";\n")
}

func yn(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// units prints d as a whole number of unit (seconds or tenths).
func units(d, unit time.Duration) string {
	return strconv.FormatInt(int64(d/unit), 10)
}

// formatSize prints n bytes with the largest exact K/M/G suffix, else as a plain number
// of unit bytes (the key's unit in drbd.conf).
func formatSize(n, unit int64) string {
	if n == 0 {
		return "0"
	}
	for _, s := range []struct {
		shift  uint
		suffix string
	}{{30, "G"}, {20, "M"}, {10, "K"}} {
		if n%(1<<s.shift) == 0 {
			return strconv.FormatInt(n>>s.shift, 10) + s.suffix
		}
	}
	return strconv.FormatInt(n/unit, 10)
}

// quote returns s as a double-quoted string with \" and \\ escaped.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		if r == '"' || r == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}

// word returns s bare when it lexes as a single word, else quoted.
func word(s string) string {
	if s == "" {
		return quote(s)
	}
	for _, r := range s {
		if !isWordRune(r) {
			return quote(s)
		}
	}
	return s
}

// shellQuote returns s as one shell word for an OCF parameter value: bare when
// nothing in it needs quoting, else in single quotes (an embedded single quote
// closes the quoting, is escaped with a backslash and reopens it).
func shellQuote(s string) string {
	if !strings.ContainsAny(s, " \t'\"\\") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
