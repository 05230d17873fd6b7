package nbd

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Limits on option haggling.
const (
	// maxOptionLen is the largest option payload the server reads; a larger
	// one is discarded and answered NBD_REP_ERR_TOO_BIG.
	maxOptionLen = 64 << 10
	// maxOptionDiscard is the largest option payload the server is willing
	// to skip; beyond it the client is treated as hostile and dropped.
	maxOptionDiscard = 16 << 20
	// blockSizePreferred is advertised in NBD_INFO_BLOCK_SIZE.
	blockSizePreferred = 4096
)

var (
	errClientFlags   = errors.New("nbd: client did not negotiate fixed newstyle or sent unknown flags")
	errOptionMagic   = errors.New("nbd: bad option magic")
	errOptionTooBig  = errors.New("nbd: option payload too large")
	errAbort         = errors.New("nbd: client aborted the handshake")
	errUnknownExport = errors.New("nbd: EXPORT_NAME for an unknown export")
	errStopping      = errors.New("nbd: server shutting down")
	errTLSRequired   = errors.New("nbd: TLS required")
)

// handshake runs the fixed-newstyle negotiation and returns the export the
// client chose (by EXPORT_NAME or GO). Any error means: close the connection.
func (c *conn) handshake() (Export, error) {
	cfg := &c.srv.cfg
	if err := c.nc.SetDeadline(time.Now().Add(cfg.HandshakeTimeout)); err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(c.rw, 4096)
	var b [18]byte
	binary.BigEndian.PutUint64(b[0:], MagicNBD)
	binary.BigEndian.PutUint64(b[8:], MagicOption)
	binary.BigEndian.PutUint16(b[16:], FlagFixedNewstyle|FlagNoZeroes)
	bw.Write(b[:18])
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(c.br, b[:4]); err != nil {
		return nil, err
	}
	cflags := binary.BigEndian.Uint32(b[:4])
	// The spec: the server MUST close if it does not recognize the flags.
	// A client without FIXED_NEWSTYLE speaks plain newstyle, which the spec
	// lets a server accept; we do, because go-nbd's client sends no flags
	// and then haggles with OPT_GO like a fixed one.
	if cflags&^(ClientFlagFixedNewstyle|ClientFlagNoZeroes) != 0 {
		return nil, fmt.Errorf("%w: %#x", errClientFlags, cflags)
	}
	if cfg.TLS == TLSRequire && cflags&ClientFlagFixedNewstyle == 0 {
		// Without fixed newstyle the client cannot understand TLS_REQD.
		c.srv.refusal("nbd: client refused: TLS required but the client does not speak fixed newstyle",
			"remote", c.nc.RemoteAddr().String())
		return nil, fmt.Errorf("%w: client did not negotiate fixed newstyle", errTLSRequired)
	}
	h := optionHaggler{c: c, bw: bw, noZeroes: cflags&ClientFlagNoZeroes != 0}
	for {
		if c.stopping.Load() {
			return nil, errStopping
		}
		exp, err := h.option()
		if err != nil || exp != nil {
			return exp, err
		}
		if err := bw.Flush(); err != nil {
			return nil, err
		}
	}
}

type optionHaggler struct {
	c        *conn
	bw       *bufio.Writer
	noZeroes bool
	buf      []byte // option payload, reused
}

// option reads and answers one option. It returns the export when the
// client entered transmission, an error when the connection must close.
func (h *optionHaggler) option() (Export, error) {
	var hdr [16]byte
	if _, err := io.ReadFull(h.c.br, hdr[:]); err != nil {
		return nil, err
	}
	if binary.BigEndian.Uint64(hdr[0:]) != MagicOption {
		return nil, errOptionMagic
	}
	opt := binary.BigEndian.Uint32(hdr[8:])
	length := binary.BigEndian.Uint32(hdr[12:])
	if length > maxOptionDiscard {
		return nil, fmt.Errorf("%w: option %d length %d", errOptionTooBig, opt, length)
	}
	if length > maxOptionLen {
		if _, err := h.c.br.Discard(int(length)); err != nil {
			return nil, err
		}
		if opt == OptExportName {
			// EXPORT_NAME has no error reply: the spec says terminate.
			return nil, fmt.Errorf("%w: export name length %d", errOptionTooBig, length)
		}
		return nil, h.reply(opt, RepErrTooBig, []byte("option payload too large"))
	}
	if cap(h.buf) < int(length) {
		h.buf = make([]byte, length)
	}
	data := h.buf[:length]
	if _, err := io.ReadFull(h.c.br, data); err != nil {
		return nil, err
	}

	if h.c.srv.cfg.TLS == TLSRequire && !h.c.tls {
		// Before STARTTLS only ABORT and STARTTLS itself are served.
		switch opt {
		case OptExportName:
			// EXPORT_NAME has no error reply: the spec says close.
			h.c.srv.refusal("nbd: plain client refused: TLS required (EXPORT_NAME before STARTTLS)",
				"remote", h.c.nc.RemoteAddr().String())
			return nil, fmt.Errorf("%w: EXPORT_NAME before STARTTLS", errTLSRequired)
		case OptAbort, OptStartTLS:
		default:
			if opt == OptGo || opt == OptInfo {
				h.c.srv.refusal("nbd: plain client refused: TLS required",
					"remote", h.c.nc.RemoteAddr().String())
			}
			return nil, h.reply(opt, RepErrTLSReqd, []byte("TLS required: send NBD_OPT_STARTTLS first"))
		}
	}

	switch opt {
	case OptExportName:
		return h.exportName(string(data))
	case OptAbort:
		// A soft disconnect: acknowledge, then close (the client closes too).
		h.reply(opt, RepAck, nil)
		h.bw.Flush()
		return nil, errAbort
	case OptList:
		if length != 0 {
			return nil, h.reply(opt, RepErrInvalid, []byte("LIST takes no data"))
		}
		for _, name := range h.c.srv.cfg.Exports.Names() {
			p := make([]byte, 4+len(name))
			binary.BigEndian.PutUint32(p, uint32(len(name)))
			copy(p[4:], name)
			if err := h.reply(opt, RepServer, p); err != nil {
				return nil, err
			}
		}
		return nil, h.reply(opt, RepAck, nil)
	case OptInfo, OptGo:
		return h.infoGo(opt, data)
	case OptStructuredReply:
		// Answered honestly: this server sends simple replies only.
		return nil, h.reply(opt, RepErrUnsup, []byte("structured replies are not supported"))
	case OptStartTLS:
		return nil, h.startTLS(length)
	default:
		return nil, h.reply(opt, RepErrUnsup, nil)
	}
}

// startTLS answers NBD_OPT_STARTTLS: ACK, then the TLS handshake on the
// same socket (bounded by the handshake deadline already set); option
// haggling then starts over inside TLS. The certificate files are read on
// every STARTTLS, so renewed certificates apply to the next client.
func (h *optionHaggler) startTLS(length uint32) error {
	c := h.c
	const opt = OptStartTLS
	switch {
	case c.srv.cfg.TLS != TLSOffer && c.srv.cfg.TLS != TLSRequire:
		return h.reply(opt, RepErrUnsup, []byte("TLS is not enabled on this export"))
	case c.tls:
		return h.reply(opt, RepErrInvalid, []byte("TLS is already negotiated"))
	case length != 0:
		return h.reply(opt, RepErrInvalid, []byte("STARTTLS takes no data"))
	}
	tc, err := c.srv.cfg.tlsConfig()
	if err != nil {
		c.srv.log.Error("nbd: STARTTLS refused: the server's TLS configuration does not load", "err", err)
		return h.reply(opt, RepErrPolicy, []byte("TLS is not available on this server (see its log)"))
	}
	// A client may not send anything before it has read the ACK: bytes
	// already buffered would be plaintext injected into the TLS session.
	if c.br.Buffered() > 0 {
		return errors.New("nbd: data after STARTTLS before the ACK")
	}
	h.reply(opt, RepAck, nil)
	if err := h.bw.Flush(); err != nil {
		return err
	}
	conn := tls.Server(c.nc, tc)
	if err := conn.Handshake(); err != nil {
		c.srv.refusal("nbd: TLS handshake failed", "remote", c.nc.RemoteAddr().String(), "err", err)
		return fmt.Errorf("nbd: tls handshake: %w", err)
	}
	c.tls = true
	c.rw = conn
	c.br.Reset(conn)
	h.bw.Reset(conn)
	return nil
}

// tlsConfig loads the server certificate and, with TLSCA, the CA client
// certificates must chain to.
func (cfg *ServerConfig) tlsConfig() (*tls.Config, error) {
	if cfg.TLSCert == "" || cfg.TLSKey == "" {
		return nil, errors.New("nbd: tls: no server certificate and key configured")
	}
	certPEM, err := os.ReadFile(cfg.TLSCert)
	if err != nil {
		return nil, fmt.Errorf("nbd: tls: tls-cert: %w", err)
	}
	keyPEM, err := os.ReadFile(cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("nbd: tls: tls-key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("nbd: tls: tls-cert %s / tls-key %s: %w", cfg.TLSCert, cfg.TLSKey, err)
	}
	tc := &tls.Config{
		MinVersion:             tls.VersionTLS12,
		Certificates:           []tls.Certificate{cert},
		SessionTicketsDisabled: true,
	}
	if cfg.TLSCA != "" {
		caPEM, err := os.ReadFile(cfg.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("nbd: tls: tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("nbd: tls: tls-ca %s: no PEM certificate found", cfg.TLSCA)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// reply queues one option reply (flushed after the option is handled).
func (h *optionHaggler) reply(opt, typ uint32, data []byte) error {
	var b [20]byte
	binary.BigEndian.PutUint64(b[0:], MagicOptionReply)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	h.bw.Write(b[:])
	_, err := h.bw.Write(data)
	return err
}

func (h *optionHaggler) exportName(name string) (Export, error) {
	exp, err := h.c.srv.cfg.Exports.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", errUnknownExport, name, err)
	}
	var b [10 + 124]byte
	binary.BigEndian.PutUint64(b[0:], uint64(exp.Size()))
	binary.BigEndian.PutUint16(b[8:], transmissionFlags(exp))
	n := len(b)
	if h.noZeroes {
		n = 10
	}
	h.bw.Write(b[:n])
	return exp, h.bw.Flush()
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO:
//
//	32 bits name length, name, 16 bits number of requests, 16 bits each
func (h *optionHaggler) infoGo(opt uint32, data []byte) (Export, error) {
	invalid := func(msg string) (Export, error) {
		return nil, h.reply(opt, RepErrInvalid, []byte(msg))
	}
	if len(data) < 6 {
		return invalid("option too short")
	}
	nameLen := binary.BigEndian.Uint32(data)
	if uint64(nameLen) > uint64(len(data)-6) {
		return invalid("name length exceeds the option")
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nreq := int(binary.BigEndian.Uint16(rest))
	if len(rest)-2 != 2*nreq {
		return invalid("information request count does not match the option length")
	}
	exp, err := h.c.srv.cfg.Exports.Lookup(name)
	if err != nil {
		if errors.Is(err, ErrShutdown) {
			return nil, h.reply(opt, RepErrShutdown, []byte("export shutting down"))
		}
		return nil, h.reply(opt, RepErrUnknown, []byte("unknown export"))
	}

	var b [18]byte
	binary.BigEndian.PutUint16(b[0:], InfoExport)
	binary.BigEndian.PutUint64(b[2:], uint64(exp.Size()))
	binary.BigEndian.PutUint16(b[10:], transmissionFlags(exp))
	h.reply(opt, RepInfo, b[:12])
	for i := range nreq {
		switch binary.BigEndian.Uint16(rest[2+2*i:]) {
		case InfoName:
			h.reply(opt, RepInfo, append([]byte{0, byte(InfoName)}, name...))
		case InfoDescription:
			if d, ok := exp.(Describer); ok && d.Description() != "" {
				h.reply(opt, RepInfo, append([]byte{0, byte(InfoDescription)}, d.Description()...))
			}
		}
	}
	// Always sent: a client that did not ask may ignore it, and the kernel
	// client uses it when present.
	maxReq := uint32(h.c.srv.cfg.MaxRequest)
	pref := uint32(blockSizePreferred)
	for pref > maxReq {
		pref /= 2
	}
	binary.BigEndian.PutUint16(b[0:], InfoBlockSize)
	binary.BigEndian.PutUint32(b[2:], 1)
	binary.BigEndian.PutUint32(b[6:], pref)
	binary.BigEndian.PutUint32(b[10:], maxReq)
	h.reply(opt, RepInfo, b[:14])
	if err := h.reply(opt, RepAck, nil); err != nil {
		return nil, err
	}
	if opt == OptInfo {
		return nil, nil
	}
	return exp, h.bw.Flush()
}

// Describer is an optional Export capability: a human-readable description
// sent as NBD_INFO_DESCRIPTION when the client asks for it.
type Describer interface {
	Description() string
}

// transmissionFlags are exactly what the server implements. CAN_MULTI_CONN
// holds because Export.Flush covers writes answered on every connection.
func transmissionFlags(exp Export) uint16 {
	f := TFlagHasFlags | TFlagSendFlush | TFlagSendFUA | TFlagSendTrim |
		TFlagSendWriteZeroes | TFlagCanMultiConn
	if exp.ReadOnly() {
		f |= TFlagReadOnly
	}
	return f
}
