// Peer-link frame codec.
//
// Every message between two twinbd nodes, on either of the two TCP
// connections of a peer link (bulk data; acks, pings and state), travels in
// one frame: a fixed 40-byte header followed by the payload. All integers are
// big-endian.
//
//	 0       4       8      12      16      20      24      28      32      36      40
//	 +-------+---+---+---+---+-------+---------------+---------------+---------------+
//	 | magic |ver|typ|flg|rsv|length |   sequence    | payload sum   |  header sum   |
//	 +-------+---+---+---+---+-------+---------------+---------------+---------------+
//	 | payload (length bytes, encoded per message type)                ...
//	 +----------------------------------------------------------------
//
//	 off size field
//	   0   4  magic        "TWB1" (0x54574231)
//	   4   2  version      ProtocolVersion; anything else is ErrBadVersion
//	   6   2  type         MsgType; unknown types are ErrUnknownType
//	   8   2  flags        frame flags; no bit is defined yet, so must be 0
//	  10   2  reserved     must be 0
//	  12   4  length       payload length, <= the type's maximum (<= MaxPayload)
//	  16   8  sequence     per-connection frame sequence number
//	  24   8  payload sum  xxhash64(payload)
//	  32   8  header sum   xxhash64(header[0:32])
//
// The header sum covers the payload sum, so one corrupt byte anywhere in a
// frame is caught. Checks run in this order, each before anything is
// allocated for the payload: magic, version, header sum, reserved and flags,
// type, length. The payload buffer then grows with the bytes that actually
// arrive, so a peer that claims a large payload and sends none cannot make
// us allocate it. The checksums catch corruption, not forgery: a peer is
// trusted only after the Hello/Auth HMAC exchange (and TLS, if configured).
//
// Payloads are fixed fields first, then variable parts; a variable part at
// the end runs to the end of the payload (no length prefix), any other one
// carries a uint16 length. Decoding is strict: exact sizes, booleans 0 or 1,
// no unknown flag bits, no negative offsets or lengths. A payload that
// decodes re-encodes to the same bytes.
//
// Concurrency: the codec keeps no state; WriteFrame and ReadFrame may be
// called from any goroutine, but each io.Writer/io.Reader needs its own
// caller-side serialisation. After any error from ReadFrame other than
// io.EOF the stream position is unknown and the connection must be dropped.

package replication

import (
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"sync"
	"unicode/utf8"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

// Wire-format constants.
const (
	FrameMagic      uint32 = 0x54574231 // "TWB1"
	ProtocolVersion uint16 = 1
	HeaderSize             = 40

	// MaxDataSize is the largest block payload a Data or ResyncData message
	// carries.
	MaxDataSize = 128 << 20
	// MaxPayload bounds every frame's payload: a Data message of MaxDataSize
	// plus its fixed fields, rounded up.
	MaxPayload = MaxDataSize + 64

	// MaxStringLen bounds Hello.Resource and Disconnect.Reason.
	MaxStringLen = 1024
	// MaxBitmapChunkWords bounds the 64-bit words one BitmapChunk decodes to
	// (16 MiB of bitmap, 512 GiB of device at 4 KiB per bit).
	MaxBitmapChunkWords = 1 << 21
)

// Sentinel errors of the wire codec; returned errors wrap them with context.
var (
	ErrBadMagic      = errors.New("replication: bad frame magic")
	ErrBadVersion    = errors.New("replication: unsupported protocol version")
	ErrBadChecksum   = errors.New("replication: frame checksum mismatch")
	ErrFrameTooLarge = errors.New("replication: frame too large")
	ErrUnknownType   = errors.New("replication: unknown message type")
	// ErrTruncated also matches io.ErrUnexpectedEOF.
	ErrTruncated = fmt.Errorf("replication: truncated frame: %w", io.ErrUnexpectedEOF)
	ErrMalformed = errors.New("replication: malformed message")
)

// MsgType identifies a peer message.
type MsgType uint16

// Message types. Zero is never valid.
const (
	MsgHello MsgType = iota + 1
	MsgAuth
	MsgAuthOK
	MsgState
	MsgData
	MsgRecvAck
	MsgWriteAck
	MsgNegAck
	MsgBarrier
	MsgBarrierAck
	MsgTrim
	MsgBitmapChunk
	MsgResyncRequest
	MsgResyncData
	MsgChecksumRequest
	MsgChecksumReply
	MsgPing
	MsgPingAck
	MsgOutdatePeer
	MsgDisconnect
	MsgReadRequest
	MsgReadReply
	MsgResize      // wire_resize.go
	MsgResizeReply // wire_resize.go
	MsgSyncStart   // wire_resize.go
	msgTypeEnd
)

var msgNames = [...]string{
	MsgHello:           "Hello",
	MsgAuth:            "Auth",
	MsgAuthOK:          "AuthOK",
	MsgState:           "State",
	MsgData:            "Data",
	MsgRecvAck:         "RecvAck",
	MsgWriteAck:        "WriteAck",
	MsgNegAck:          "NegAck",
	MsgBarrier:         "Barrier",
	MsgBarrierAck:      "BarrierAck",
	MsgTrim:            "Trim",
	MsgBitmapChunk:     "BitmapChunk",
	MsgResyncRequest:   "ResyncRequest",
	MsgResyncData:      "ResyncData",
	MsgChecksumRequest: "ChecksumRequest",
	MsgChecksumReply:   "ChecksumReply",
	MsgPing:            "Ping",
	MsgPingAck:         "PingAck",
	MsgOutdatePeer:     "OutdatePeer",
	MsgDisconnect:      "Disconnect",
	MsgReadRequest:     "ReadRequest",
	MsgReadReply:       "ReadReply",
	MsgResize:          "Resize",
	MsgResizeReply:     "ResizeReply",
	MsgSyncStart:       "SyncStart",
}

func (t MsgType) String() string {
	if t.Valid() {
		return msgNames[t]
	}
	return fmt.Sprintf("MsgType(%d)", uint16(t))
}

// Valid reports whether t is a known message type.
func (t MsgType) Valid() bool { return t > 0 && t < msgTypeEnd }

// Fixed payload sizes; variable-size types list their fixed part.
const (
	helloFixed     = 2 + 4 + 32 + 2
	stateSize      = 1 + 1 + 8 + 4 + 8 + 8 + 16 + 4 + 8
	dataFixed      = 8 + 8 + 4
	seqSize        = 8
	negAckSize     = 8 + 4
	trimSize       = 8 + 8 + 8 + 1
	bitmapFixed    = 8 + 4 + 1
	rangeSize      = 8 + 8
	resyncFixed    = 8 + 8 + 8 + 4
	csumReqSize    = 8 + 8 + 8 + 1
	csumReplySize  = 8 + 8 + 1
	disconnectFix  = 2
	maxBitmapBytes = 1 + 8*MaxBitmapChunkWords // see EncodeBitmapRuns
)

// maxPayloadFor is the largest payload each type may carry, checked against
// the header's length before any payload byte is read.
var maxPayloadFor = [...]uint32{
	MsgHello:           helloFixed + MaxStringLen,
	MsgAuth:            authMaxResponse,
	MsgAuthOK:          0,
	MsgState:           stateSize,
	MsgData:            dataFixed + MaxDataSize,
	MsgRecvAck:         seqSize,
	MsgWriteAck:        seqSize,
	MsgNegAck:          negAckSize,
	MsgBarrier:         8,
	MsgBarrierAck:      8,
	MsgTrim:            trimSize,
	MsgBitmapChunk:     bitmapFixed + maxBitmapBytes + 1024, // zstd framing slack
	MsgResyncRequest:   rangeSize,
	MsgResyncData:      resyncFixed + MaxDataSize,
	MsgChecksumRequest: csumReqSize,
	MsgChecksumReply:   csumReplySize,
	MsgPing:            0,
	MsgPingAck:         0,
	MsgOutdatePeer:     0,
	MsgDisconnect:      disconnectFix + MaxStringLen,
	MsgReadRequest:     rangeSize,
	MsgReadReply:       4 + MaxDataSize,
	MsgResize:          resizeSize,
	MsgResizeReply:     resizeReplyFixed + MaxStringLen,
	MsgSyncStart:       rangeSize,
	msgTypeEnd:         0,
}

// Frame is one decoded frame. Payload is the raw, still-encoded message.
type Frame struct {
	Type    MsgType
	Flags   uint16
	Seq     uint64
	Payload []byte
}

// WriteFrame writes f's header and payload to w (one writev on a
// *net.TCPConn). It refuses frames ReadFrame would refuse.
func WriteFrame(w io.Writer, f *Frame) error {
	if !f.Type.Valid() {
		return fmt.Errorf("replication: write frame: %w: %d", ErrUnknownType, uint16(f.Type))
	}
	if f.Flags != 0 {
		return fmt.Errorf("replication: write %v frame: %w: flags %#x", f.Type, ErrMalformed, f.Flags)
	}
	if uint64(len(f.Payload)) > uint64(maxPayloadFor[f.Type]) {
		return fmt.Errorf("replication: write %v frame: %w: %d bytes", f.Type, ErrFrameTooLarge, len(f.Payload))
	}
	var hdr [HeaderSize]byte
	binary.BigEndian.PutUint32(hdr[0:], FrameMagic)
	binary.BigEndian.PutUint16(hdr[4:], ProtocolVersion)
	binary.BigEndian.PutUint16(hdr[6:], uint16(f.Type))
	binary.BigEndian.PutUint16(hdr[8:], f.Flags)
	binary.BigEndian.PutUint32(hdr[12:], uint32(len(f.Payload)))
	binary.BigEndian.PutUint64(hdr[16:], f.Seq)
	binary.BigEndian.PutUint64(hdr[24:], xxhash.Sum64(f.Payload))
	binary.BigEndian.PutUint64(hdr[32:], xxhash.Sum64(hdr[:32]))
	bufs := net.Buffers{hdr[:]}
	if len(f.Payload) > 0 {
		bufs = append(bufs, f.Payload)
	}
	if _, err := bufs.WriteTo(w); err != nil {
		return fmt.Errorf("replication: write %v frame: %w", f.Type, err)
	}
	return nil
}

// readChunk is how far the payload buffer grows ahead of the bytes read.
const readChunk = 1 << 20

// ReadFrame reads one frame from r. The payload is read into buf when it
// fits (else into a new buffer); the buffer used is returned for reuse, and
// f.Payload aliases it, so it is valid only until the next ReadFrame with
// that buffer. A clean end of stream before the first header byte is
// io.EOF; any other short read is ErrTruncated.
func ReadFrame(r io.Reader, buf []byte) (Frame, []byte, error) {
	var hdr [HeaderSize]byte
	if n, err := io.ReadFull(r, hdr[:]); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return Frame{}, buf, io.EOF
		}
		return Frame{}, buf, readErr("header", err)
	}
	if m := binary.BigEndian.Uint32(hdr[0:]); m != FrameMagic {
		return Frame{}, buf, fmt.Errorf("replication: read frame: %w: %#08x", ErrBadMagic, m)
	}
	if v := binary.BigEndian.Uint16(hdr[4:]); v != ProtocolVersion {
		return Frame{}, buf, fmt.Errorf("replication: read frame: %w: %d (want %d)", ErrBadVersion, v, ProtocolVersion)
	}
	if got, want := xxhash.Sum64(hdr[:32]), binary.BigEndian.Uint64(hdr[32:]); got != want {
		return Frame{}, buf, fmt.Errorf("replication: read frame: header: %w", ErrBadChecksum)
	}
	f := Frame{
		Type:  MsgType(binary.BigEndian.Uint16(hdr[6:])),
		Flags: binary.BigEndian.Uint16(hdr[8:]),
		Seq:   binary.BigEndian.Uint64(hdr[16:]),
	}
	if rsv := binary.BigEndian.Uint16(hdr[10:]); rsv != 0 || f.Flags != 0 {
		return Frame{}, buf, fmt.Errorf("replication: read frame: %w: flags %#x reserved %#x", ErrMalformed, f.Flags, rsv)
	}
	if !f.Type.Valid() {
		return Frame{}, buf, fmt.Errorf("replication: read frame: %w: %d", ErrUnknownType, uint16(f.Type))
	}
	n := binary.BigEndian.Uint32(hdr[12:])
	if n > maxPayloadFor[f.Type] {
		return Frame{}, buf, fmt.Errorf("replication: read %v frame: %w: %d bytes (max %d)", f.Type, ErrFrameTooLarge, n, maxPayloadFor[f.Type])
	}
	length := int(n)
	if cap(buf) >= length {
		buf = buf[:length]
		if _, err := io.ReadFull(r, buf); err != nil {
			return Frame{}, buf, readErr("payload", err)
		}
	} else {
		// Grow with what arrives, not with what the header claims.
		buf = buf[:0]
		for len(buf) < length {
			step := min(length-len(buf), max(len(buf), readChunk))
			if cap(buf)-len(buf) < step {
				nb := make([]byte, len(buf), len(buf)+step)
				copy(nb, buf)
				buf = nb
			}
			old := len(buf)
			buf = buf[:old+step]
			if _, err := io.ReadFull(r, buf[old:]); err != nil {
				return Frame{}, buf, readErr("payload", err)
			}
		}
	}
	if xxhash.Sum64(buf) != binary.BigEndian.Uint64(hdr[24:]) {
		return Frame{}, buf, fmt.Errorf("replication: read %v frame: payload: %w", f.Type, ErrBadChecksum)
	}
	f.Payload = buf
	return f, buf, nil
}

func readErr(part string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("replication: read frame %s: %w", part, ErrTruncated)
	}
	return fmt.Errorf("replication: read frame %s: %w", part, err)
}

// Message is a typed payload. UnmarshalBinary of a message with a byte-slice
// payload (Data, BitmapChunk, ResyncData) aliases its input.
type Message interface {
	Type() MsgType
	encoding.BinaryAppender
	encoding.BinaryUnmarshaler
}

// NewMessage returns an empty message of type t.
func NewMessage(t MsgType) (Message, error) {
	switch t {
	case MsgHello:
		return new(HelloMsg), nil
	case MsgAuth:
		return new(AuthMsg), nil
	case MsgAuthOK:
		return new(AuthOKMsg), nil
	case MsgState:
		return new(StateMsg), nil
	case MsgData:
		return new(DataMsg), nil
	case MsgRecvAck:
		return new(RecvAckMsg), nil
	case MsgWriteAck:
		return new(WriteAckMsg), nil
	case MsgNegAck:
		return new(NegAckMsg), nil
	case MsgBarrier:
		return new(BarrierMsg), nil
	case MsgBarrierAck:
		return new(BarrierAckMsg), nil
	case MsgTrim:
		return new(TrimMsg), nil
	case MsgBitmapChunk:
		return new(BitmapChunkMsg), nil
	case MsgResyncRequest:
		return new(ResyncRequestMsg), nil
	case MsgResyncData:
		return new(ResyncDataMsg), nil
	case MsgChecksumRequest:
		return new(ChecksumRequestMsg), nil
	case MsgChecksumReply:
		return new(ChecksumReplyMsg), nil
	case MsgPing:
		return new(PingMsg), nil
	case MsgPingAck:
		return new(PingAckMsg), nil
	case MsgOutdatePeer:
		return new(OutdatePeerMsg), nil
	case MsgDisconnect:
		return new(DisconnectMsg), nil
	case MsgReadRequest:
		return new(ReadRequestMsg), nil
	case MsgReadReply:
		return new(ReadReplyMsg), nil
	case MsgResize:
		return new(ResizeMsg), nil
	case MsgResizeReply:
		return new(ResizeReplyMsg), nil
	case MsgSyncStart:
		return new(SyncStartMsg), nil
	}
	return nil, fmt.Errorf("replication: %w: %d", ErrUnknownType, uint16(t))
}

// DecodeMessage decodes f's payload according to f.Type.
func DecodeMessage(f Frame) (Message, error) {
	m, err := NewMessage(f.Type)
	if err != nil {
		return nil, err
	}
	if err := m.UnmarshalBinary(f.Payload); err != nil {
		return nil, err
	}
	return m, nil
}

// EncodeMessage returns a frame carrying m with sequence number seq.
func EncodeMessage(seq uint64, m Message) (Frame, error) {
	p, err := m.AppendBinary(nil)
	if err != nil {
		return Frame{}, err
	}
	return Frame{Type: m.Type(), Seq: seq, Payload: p}, nil
}

// WriteMessage encodes m and writes it as one frame.
func WriteMessage(w io.Writer, seq uint64, m Message) error {
	f, err := EncodeMessage(seq, m)
	if err != nil {
		return err
	}
	return WriteFrame(w, &f)
}

func malformed(t MsgType, format string, args ...any) error {
	return fmt.Errorf("replication: %v: %w: %s", t, ErrMalformed, fmt.Sprintf(format, args...))
}

// dec reads big-endian fields; after a short read every later read returns
// zero and ok is false, so a decoder checks once at the end.
type dec struct {
	b  []byte
	ok bool
}

func (d *dec) take(n int) []byte {
	if !d.ok || len(d.b) < n {
		d.ok = false
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *dec) u8() uint8 {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *dec) u16() uint16 {
	if p := d.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (d *dec) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *dec) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

// boolean accepts only 0 and 1, so a decoded message re-encodes identically.
func (d *dec) boolean() bool {
	switch d.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	d.ok = false
	return false
}

func (d *dec) str() string {
	n := d.u16()
	p := d.take(int(n))
	if n > MaxStringLen || !utf8.Valid(p) {
		d.ok = false
	}
	return string(p)
}

// rest returns the remaining bytes (aliased).
func (d *dec) rest() []byte {
	if !d.ok {
		return nil
	}
	p := d.b
	d.b = nil
	return p
}

// done reports whether every read succeeded and the input is used up.
func (d *dec) done() bool { return d.ok && len(d.b) == 0 }

func putBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

func putStr(t MsgType, b []byte, s string) ([]byte, error) {
	if len(s) > MaxStringLen || !utf8.ValidString(s) {
		return b, malformed(t, "string of %d bytes", len(s))
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...), nil
}

// validRange checks a byte range on the device: non-negative, no overflow.
func validRange(off, length int64) bool {
	return off >= 0 && length >= 0 && off <= math.MaxInt64-length
}

// HelloMsg opens a connection. Challenge is random; the peer answers with
// an AuthMsg whose HMAC binds both challenges, its node-id and the
// resource (see Authenticate in linkauth.go).
type HelloMsg struct {
	Version   uint16
	Resource  string
	NodeID    uint32
	Challenge [32]byte
}

func (*HelloMsg) Type() MsgType { return MsgHello }

func (m *HelloMsg) AppendBinary(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint16(b, m.Version)
	b = binary.BigEndian.AppendUint32(b, m.NodeID)
	b = append(b, m.Challenge[:]...)
	return putStr(MsgHello, b, m.Resource)
}

func (m *HelloMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	var v HelloMsg
	v.Version = d.u16()
	v.NodeID = d.u32()
	copy(v.Challenge[:], d.take(32))
	v.Resource = d.str()
	if !d.done() {
		return malformed(MsgHello, "%d bytes", len(p))
	}
	*m = v
	return nil
}

// AuthMsg answers the peer's HelloMsg challenge with an HMAC over both
// challenges (see Authenticate in linkauth.go). Response is the whole
// payload and is exactly one HMAC output long: 20 (sha1), 32 (sha256) or 64
// (sha512) bytes; any other length is ErrMalformed. UnmarshalBinary copies
// its input.
type AuthMsg struct {
	Response []byte
}

// authMaxResponse is the longest AuthMsg.Response (HMAC-SHA512).
const authMaxResponse = 64

// validAuthResponseLen reports whether n is the output size of a supported
// cram-hmac-alg.
func validAuthResponseLen(n int) bool { return n == 20 || n == 32 || n == 64 }

func (*AuthMsg) Type() MsgType { return MsgAuth }

func (m *AuthMsg) AppendBinary(b []byte) ([]byte, error) {
	if !validAuthResponseLen(len(m.Response)) {
		return b, malformed(MsgAuth, "%d-byte response, want 20, 32 or 64", len(m.Response))
	}
	return append(b, m.Response...), nil
}

func (m *AuthMsg) UnmarshalBinary(p []byte) error {
	if !validAuthResponseLen(len(p)) {
		return malformed(MsgAuth, "%d bytes, want 20, 32 or 64", len(p))
	}
	m.Response = append([]byte(nil), p...)
	return nil
}

// emptyUnmarshal decodes the (empty) payload of messages without fields.
func emptyUnmarshal(t MsgType, p []byte) error {
	if len(p) != 0 {
		return malformed(t, "%d bytes, want 0", len(p))
	}
	return nil
}

// AuthOKMsg tells the peer its AuthMsg was accepted.
type AuthOKMsg struct{}

func (*AuthOKMsg) Type() MsgType                         { return MsgAuthOK }
func (*AuthOKMsg) AppendBinary(b []byte) ([]byte, error) { return b, nil }
func (*AuthOKMsg) UnmarshalBinary(p []byte) error        { return emptyUnmarshal(MsgAuthOK, p) }

// PingMsg asks for a PingAckMsg (failure detector).
type PingMsg struct{}

func (*PingMsg) Type() MsgType                         { return MsgPing }
func (*PingMsg) AppendBinary(b []byte) ([]byte, error) { return b, nil }
func (*PingMsg) UnmarshalBinary(p []byte) error        { return emptyUnmarshal(MsgPing, p) }

// PingAckMsg answers a PingMsg.
type PingAckMsg struct{}

func (*PingAckMsg) Type() MsgType                         { return MsgPingAck }
func (*PingAckMsg) AppendBinary(b []byte) ([]byte, error) { return b, nil }
func (*PingAckMsg) UnmarshalBinary(p []byte) error        { return emptyUnmarshal(MsgPingAck, p) }

// OutdatePeerMsg tells the receiver to mark its disk Outdated.
type OutdatePeerMsg struct{}

func (*OutdatePeerMsg) Type() MsgType                         { return MsgOutdatePeer }
func (*OutdatePeerMsg) AppendBinary(b []byte) ([]byte, error) { return b, nil }
func (*OutdatePeerMsg) UnmarshalBinary(p []byte) error        { return emptyUnmarshal(MsgOutdatePeer, p) }

// StateMsg flags.
const (
	StateCrashedPrimary uint32 = 1 << iota // sender was Primary when it crashed
	StateDiscardMyData                     // sender volunteers as split-brain victim
	// StateResyncDone: sent by the sync source on the data channel after
	// the last resync data; the target adopts the UUIDs and is UpToDate.
	StateResyncDone
	// StateHandover: the sender demoted because its start list failed
	// and asks the peer to take over (auto-failover).
	StateHandover
	// StateAttached: the sender attached a new disk (Inconsistent, every
	// block out of sync) while connected; an UpToDate receiver becomes its
	// sync source for the whole device.
	StateAttached
	stateKnownFlags = StateCrashedPrimary | StateDiscardMyData | StateResyncDone | StateHandover | StateAttached
)

// StateMsg carries a node's role, disk state and generation UUIDs.
type StateMsg struct {
	Role        uint8 // Role
	Disk        uint8 // DiskState
	Size        int64 // usable device size in bytes
	Granularity uint32
	Current     uint64
	Bitmap      uint64
	History     [2]uint64
	Flags       uint32
	Dirty       int64 // bits set in the sender's bitmap
}

func (*StateMsg) Type() MsgType { return MsgState }

func (m *StateMsg) AppendBinary(b []byte) ([]byte, error) {
	if err := m.check(); err != nil {
		return b, err
	}
	b = append(b, m.Role, m.Disk)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Size))
	b = binary.BigEndian.AppendUint32(b, m.Granularity)
	b = binary.BigEndian.AppendUint64(b, m.Current)
	b = binary.BigEndian.AppendUint64(b, m.Bitmap)
	b = binary.BigEndian.AppendUint64(b, m.History[0])
	b = binary.BigEndian.AppendUint64(b, m.History[1])
	b = binary.BigEndian.AppendUint32(b, m.Flags)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Dirty))
	return b, nil
}

func (m *StateMsg) check() error {
	switch {
	case m.Size < 0 || m.Dirty < 0:
		return malformed(MsgState, "size %d dirty %d", m.Size, m.Dirty)
	case m.Granularity != 0 && bits.OnesCount32(m.Granularity) != 1:
		return malformed(MsgState, "granularity %d not a power of two", m.Granularity)
	case m.Flags&^stateKnownFlags != 0:
		return malformed(MsgState, "unknown flags %#x", m.Flags)
	}
	return nil
}

func (m *StateMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	var v StateMsg
	v.Role = d.u8()
	v.Disk = d.u8()
	v.Size = int64(d.u64())
	v.Granularity = d.u32()
	v.Current = d.u64()
	v.Bitmap = d.u64()
	v.History[0] = d.u64()
	v.History[1] = d.u64()
	v.Flags = d.u32()
	v.Dirty = int64(d.u64())
	if !d.done() {
		return malformed(MsgState, "%d bytes, want %d", len(p), stateSize)
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// DataMsg flags.
const (
	DataFUA       uint32 = 1 << iota // durable on the peer before its WriteAck
	dataKnownFlag        = DataFUA
)

// DataMsg is one replicated application write.
type DataMsg struct {
	Seq     uint64
	Offset  int64
	Flags   uint32
	Payload []byte
}

func (*DataMsg) Type() MsgType { return MsgData }

func (m *DataMsg) AppendBinary(b []byte) ([]byte, error) {
	if err := checkData(MsgData, m.Offset, m.Flags, m.Payload); err != nil {
		return b, err
	}
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Offset))
	b = binary.BigEndian.AppendUint32(b, m.Flags)
	return append(b, m.Payload...), nil
}

func checkData(t MsgType, off int64, flags uint32, p []byte) error {
	switch {
	case len(p) > MaxDataSize:
		return malformed(t, "%d data bytes", len(p))
	case !validRange(off, int64(len(p))):
		return malformed(t, "offset %d", off)
	case flags&^dataKnownFlag != 0:
		return malformed(t, "unknown flags %#x", flags)
	}
	return nil
}

func (m *DataMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	var v DataMsg
	v.Seq = d.u64()
	v.Offset = int64(d.u64())
	v.Flags = d.u32()
	v.Payload = d.rest()
	if !d.ok {
		return malformed(MsgData, "%d bytes", len(p))
	}
	if err := checkData(MsgData, v.Offset, v.Flags, v.Payload); err != nil {
		return err
	}
	*m = v
	return nil
}

func u64Unmarshal(t MsgType, p []byte, v *uint64) error {
	if len(p) != 8 {
		return malformed(t, "%d bytes, want 8", len(p))
	}
	*v = binary.BigEndian.Uint64(p)
	return nil
}

// RecvAckMsg: the peer received DataMsg Seq (protocol B).
type RecvAckMsg struct{ Seq uint64 }

func (*RecvAckMsg) Type() MsgType { return MsgRecvAck }
func (m *RecvAckMsg) AppendBinary(b []byte) ([]byte, error) {
	return binary.BigEndian.AppendUint64(b, m.Seq), nil
}
func (m *RecvAckMsg) UnmarshalBinary(p []byte) error { return u64Unmarshal(MsgRecvAck, p, &m.Seq) }

// WriteAckMsg: the peer wrote DataMsg or TrimMsg Seq (protocol C).
type WriteAckMsg struct{ Seq uint64 }

func (*WriteAckMsg) Type() MsgType { return MsgWriteAck }
func (m *WriteAckMsg) AppendBinary(b []byte) ([]byte, error) {
	return binary.BigEndian.AppendUint64(b, m.Seq), nil
}
func (m *WriteAckMsg) UnmarshalBinary(p []byte) error { return u64Unmarshal(MsgWriteAck, p, &m.Seq) }

// BarrierMsg asks the peer to make everything before it durable.
type BarrierMsg struct{ Epoch uint64 }

func (*BarrierMsg) Type() MsgType { return MsgBarrier }
func (m *BarrierMsg) AppendBinary(b []byte) ([]byte, error) {
	return binary.BigEndian.AppendUint64(b, m.Epoch), nil
}
func (m *BarrierMsg) UnmarshalBinary(p []byte) error { return u64Unmarshal(MsgBarrier, p, &m.Epoch) }

// BarrierAckMsg: everything before barrier Epoch is durable on the peer.
type BarrierAckMsg struct{ Epoch uint64 }

func (*BarrierAckMsg) Type() MsgType { return MsgBarrierAck }
func (m *BarrierAckMsg) AppendBinary(b []byte) ([]byte, error) {
	return binary.BigEndian.AppendUint64(b, m.Epoch), nil
}
func (m *BarrierAckMsg) UnmarshalBinary(p []byte) error {
	return u64Unmarshal(MsgBarrierAck, p, &m.Epoch)
}

// NegAckMsg: the peer failed to write Seq; Errno is a Linux errno.
type NegAckMsg struct {
	Seq   uint64
	Errno uint32
}

func (*NegAckMsg) Type() MsgType { return MsgNegAck }

func (m *NegAckMsg) AppendBinary(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	return binary.BigEndian.AppendUint32(b, m.Errno), nil
}

func (m *NegAckMsg) UnmarshalBinary(p []byte) error {
	if len(p) != negAckSize {
		return malformed(MsgNegAck, "%d bytes, want %d", len(p), negAckSize)
	}
	m.Seq = binary.BigEndian.Uint64(p)
	m.Errno = binary.BigEndian.Uint32(p[8:])
	return nil
}

// TrimMsg replicates a TRIM (Zero false) or WRITE_ZEROES (Zero true).
type TrimMsg struct {
	Seq    uint64
	Offset int64
	Length int64
	Zero   bool
}

func (*TrimMsg) Type() MsgType { return MsgTrim }

func (m *TrimMsg) AppendBinary(b []byte) ([]byte, error) {
	if !validRange(m.Offset, m.Length) {
		return b, malformed(MsgTrim, "range %d+%d", m.Offset, m.Length)
	}
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Offset))
	b = binary.BigEndian.AppendUint64(b, uint64(m.Length))
	return putBool(b, m.Zero), nil
}

func (m *TrimMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	var v TrimMsg
	v.Seq = d.u64()
	v.Offset = int64(d.u64())
	v.Length = int64(d.u64())
	v.Zero = d.boolean()
	if !d.done() || !validRange(v.Offset, v.Length) {
		return malformed(MsgTrim, "%d bytes, range %d+%d", len(p), v.Offset, v.Length)
	}
	*m = v
	return nil
}

// BitmapChunkMsg carries part of the dirty bitmap: Words 64-bit words
// starting at bit Offset (a multiple of 64), encoded by EncodeBitmapRuns.
type BitmapChunkMsg struct {
	Offset  int64 // bit offset
	Words   uint32
	Last    bool
	Payload []byte
}

func (*BitmapChunkMsg) Type() MsgType { return MsgBitmapChunk }

func (m *BitmapChunkMsg) check() error {
	switch {
	case m.Offset < 0 || m.Offset%64 != 0:
		return malformed(MsgBitmapChunk, "bit offset %d", m.Offset)
	case m.Words > MaxBitmapChunkWords:
		return malformed(MsgBitmapChunk, "%d words", m.Words)
	case len(m.Payload) > maxBitmapBytes+1024:
		return malformed(MsgBitmapChunk, "%d payload bytes", len(m.Payload))
	}
	return nil
}

func (m *BitmapChunkMsg) AppendBinary(b []byte) ([]byte, error) {
	if err := m.check(); err != nil {
		return b, err
	}
	b = binary.BigEndian.AppendUint64(b, uint64(m.Offset))
	b = binary.BigEndian.AppendUint32(b, m.Words)
	b = putBool(b, m.Last)
	return append(b, m.Payload...), nil
}

func (m *BitmapChunkMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	var v BitmapChunkMsg
	v.Offset = int64(d.u64())
	v.Words = d.u32()
	v.Last = d.boolean()
	v.Payload = d.rest()
	if !d.ok {
		return malformed(MsgBitmapChunk, "%d bytes", len(p))
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

func rangeAppend(t MsgType, b []byte, off, length int64) ([]byte, error) {
	if !validRange(off, length) {
		return b, malformed(t, "range %d+%d", off, length)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(off))
	return binary.BigEndian.AppendUint64(b, uint64(length)), nil
}

// ResyncRequestMsg asks the peer (the sync source) for a range.
type ResyncRequestMsg struct{ Offset, Length int64 }

func (*ResyncRequestMsg) Type() MsgType { return MsgResyncRequest }

func (m *ResyncRequestMsg) AppendBinary(b []byte) ([]byte, error) {
	return rangeAppend(MsgResyncRequest, b, m.Offset, m.Length)
}

func (m *ResyncRequestMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	off, length := int64(d.u64()), int64(d.u64())
	if !d.done() || !validRange(off, length) {
		return malformed(MsgResyncRequest, "%d bytes, range %d+%d", len(p), off, length)
	}
	m.Offset, m.Length = off, length
	return nil
}

// ResyncDataMsg flags.
const (
	// ResyncZero: the range is all zeros; no payload.
	ResyncZero uint32 = 1 << iota
	// ResyncZstd: Payload is the zstd encoding of Length bytes.
	ResyncZstd
	resyncKnownFlags = ResyncZero | ResyncZstd
)

// ResyncDataMsg carries resync data for [Offset, Offset+Length). Plain: the
// payload is Length bytes. ResyncZero: no payload. ResyncZstd: the payload
// decompresses to Length bytes (DecodeResyncPayload checks that). The
// target acknowledges Seq with a WriteAck once the data is on its disk.
type ResyncDataMsg struct {
	Seq     uint64
	Offset  int64
	Length  int64
	Flags   uint32
	Payload []byte
}

func (*ResyncDataMsg) Type() MsgType { return MsgResyncData }

func (m *ResyncDataMsg) check() error {
	switch {
	case m.Length < 0 || m.Length > MaxDataSize || !validRange(m.Offset, m.Length):
		return malformed(MsgResyncData, "range [%d, +%d)", m.Offset, m.Length)
	case m.Flags&^resyncKnownFlags != 0 || m.Flags == ResyncZero|ResyncZstd:
		return malformed(MsgResyncData, "flags %#x", m.Flags)
	case m.Flags&ResyncZero != 0 && len(m.Payload) != 0:
		return malformed(MsgResyncData, "zero range with %d payload bytes", len(m.Payload))
	case m.Flags == 0 && int64(len(m.Payload)) != m.Length:
		return malformed(MsgResyncData, "%d payload bytes for length %d", len(m.Payload), m.Length)
	case len(m.Payload) > MaxDataSize:
		return malformed(MsgResyncData, "%d payload bytes", len(m.Payload))
	}
	return nil
}

func (m *ResyncDataMsg) AppendBinary(b []byte) ([]byte, error) {
	if err := m.check(); err != nil {
		return b, err
	}
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Offset))
	b = binary.BigEndian.AppendUint64(b, uint64(m.Length))
	b = binary.BigEndian.AppendUint32(b, m.Flags)
	return append(b, m.Payload...), nil
}

func (m *ResyncDataMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	var v ResyncDataMsg
	v.Seq = d.u64()
	v.Offset = int64(d.u64())
	v.Length = int64(d.u64())
	v.Flags = d.u32()
	v.Payload = d.rest()
	if !d.ok {
		return malformed(MsgResyncData, "%d bytes", len(p))
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// DecodeResyncPayload returns the Length bytes m stands for, using buf when
// it is large enough. A zstd payload that does not decode to exactly Length
// bytes is ErrMalformed.
func DecodeResyncPayload(m *ResyncDataMsg, buf []byte) ([]byte, error) {
	if int64(cap(buf)) < m.Length {
		buf = make([]byte, m.Length)
	}
	buf = buf[:m.Length]
	switch {
	case m.Flags&ResyncZero != 0:
		clear(buf)
		return buf, nil
	case m.Flags&ResyncZstd != 0:
		out, err := zDec().DecodeAll(m.Payload, buf[:0])
		if err != nil || int64(len(out)) != m.Length {
			return nil, malformed(MsgResyncData, "zstd payload does not decode to %d bytes", m.Length)
		}
		return out, nil
	}
	copy(buf, m.Payload)
	return buf, nil
}

// ChecksumRequestMsg (csums resync, online verify): Sum is the sender's
// digest of the range under Alg (digest.go); the peer answers whether its
// copy matches.
type ChecksumRequestMsg struct {
	Offset, Length int64
	Sum            uint64
	Alg            uint8
}

func (*ChecksumRequestMsg) Type() MsgType { return MsgChecksumRequest }

func (m *ChecksumRequestMsg) AppendBinary(b []byte) ([]byte, error) {
	b, err := rangeAppend(MsgChecksumRequest, b, m.Offset, m.Length)
	if err != nil {
		return b, err
	}
	if m.Alg > digestMax {
		return b, malformed(MsgChecksumRequest, "digest algorithm %d", m.Alg)
	}
	b = binary.BigEndian.AppendUint64(b, m.Sum)
	return append(b, m.Alg), nil
}

func (m *ChecksumRequestMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	off, length, sum, alg := int64(d.u64()), int64(d.u64()), d.u64(), d.u8()
	if !d.done() || !validRange(off, length) {
		return malformed(MsgChecksumRequest, "%d bytes, range %d+%d", len(p), off, length)
	}
	if alg > digestMax {
		return malformed(MsgChecksumRequest, "unknown digest algorithm %d", alg)
	}
	m.Offset, m.Length, m.Sum, m.Alg = off, length, sum, alg
	return nil
}

// ChecksumReplyMsg answers a ChecksumRequestMsg.
type ChecksumReplyMsg struct {
	Offset, Length int64
	Same           bool
}

func (*ChecksumReplyMsg) Type() MsgType { return MsgChecksumReply }

func (m *ChecksumReplyMsg) AppendBinary(b []byte) ([]byte, error) {
	b, err := rangeAppend(MsgChecksumReply, b, m.Offset, m.Length)
	if err != nil {
		return b, err
	}
	return putBool(b, m.Same), nil
}

func (m *ChecksumReplyMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	off, length, same := int64(d.u64()), int64(d.u64()), d.boolean()
	if !d.done() || !validRange(off, length) {
		return malformed(MsgChecksumReply, "%d bytes, range %d+%d", len(p), off, length)
	}
	m.Offset, m.Length, m.Same = off, length, same
	return nil
}

// DisconnectMsg announces an orderly disconnect; Reason is for the log.
type DisconnectMsg struct{ Reason string }

func (*DisconnectMsg) Type() MsgType { return MsgDisconnect }

func (m *DisconnectMsg) AppendBinary(b []byte) ([]byte, error) {
	return putStr(MsgDisconnect, b, m.Reason)
}

func (m *DisconnectMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	s := d.str()
	if !d.done() {
		return malformed(MsgDisconnect, "%d bytes", len(p))
	}
	m.Reason = s
	return nil
}

// Bitmap run encoding.
//
// EncodeBitmapRuns output is zstd(body), where body is one format byte and:
//
//	'R' runs: uvarint run lengths of alternating clear and set bits, starting
//	    with clear; bit i is bit i%64 (LSB first) of word i/64. Only the
//	    first run may be 0 and the runs add up to exactly 64*nwords bits.
//	'W' words: nwords big-endian uint64, used when runs would be larger.
//
// So body is never longer than 1+8*nwords, which bounds decompression.
const (
	bitmapRuns  = 'R'
	bitmapWords = 'W'
)

var (
	zEnc = sync.OnceValue(func() *zstd.Encoder {
		e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
		if err != nil {
			panic(err) // only on invalid options
		}
		return e
	})
	zDec = sync.OnceValue(func() *zstd.Decoder {
		d, err := zstd.NewReader(nil,
			zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderMaxMemory(maxBitmapBytes),
			zstd.WithDecoderConcurrency(0))
		if err != nil {
			panic(err) // only on invalid options
		}
		return d
	})
)

// EncodeBitmapRuns encodes bitmap words as run lengths (or raw words,
// whichever is smaller) compressed with zstd.
func EncodeBitmapRuns(words []uint64) []byte {
	body := make([]byte, 1, 64)
	body[0] = bitmapRuns
	limit := 1 + 8*len(words)
	total := uint64(len(words)) * 64
	var pos uint64
	set := false
	for pos < total && len(body) <= limit {
		end := nextBitChange(words, pos, set)
		body = binary.AppendUvarint(body, end-pos)
		pos = end
		set = !set
	}
	if len(body) > limit {
		body = body[:1]
		body[0] = bitmapWords
		for _, w := range words {
			body = binary.BigEndian.AppendUint64(body, w)
		}
	}
	return zEnc().EncodeAll(body, nil)
}

// nextBitChange returns the first bit index >= pos whose value is not set
// (as a bool), or the total number of bits.
func nextBitChange(words []uint64, pos uint64, set bool) uint64 {
	for i := pos / 64; i < uint64(len(words)); i++ {
		w := words[i]
		if set {
			w = ^w
		}
		if i == pos/64 {
			w &^= (1 << (pos % 64)) - 1
		}
		if w != 0 {
			return i*64 + uint64(bits.TrailingZeros64(w))
		}
	}
	return uint64(len(words)) * 64
}

// DecodeBitmapRuns decodes EncodeBitmapRuns output into exactly nwords
// words. Input that decodes to any other number of bits, or that is not
// in the canonical form, is ErrMalformed.
func DecodeBitmapRuns(b []byte, nwords int) ([]uint64, error) {
	if nwords < 0 || nwords > MaxBitmapChunkWords {
		return nil, fmt.Errorf("replication: bitmap runs: %w: %d words", ErrMalformed, nwords)
	}
	body, err := zDec().DecodeAll(b, make([]byte, 0, 1+8*nwords))
	if err != nil {
		return nil, fmt.Errorf("replication: bitmap runs: %w: %w", ErrMalformed, err)
	}
	if len(body) == 0 {
		return nil, fmt.Errorf("replication: bitmap runs: %w: empty", ErrMalformed)
	}
	words := make([]uint64, nwords)
	switch body[0] {
	case bitmapWords:
		if len(body) != 1+8*nwords {
			return nil, fmt.Errorf("replication: bitmap words: %w: %d bytes for %d words", ErrMalformed, len(body), nwords)
		}
		for i := range words {
			words[i] = binary.BigEndian.Uint64(body[1+8*i:])
		}
		return words, nil
	case bitmapRuns:
	default:
		return nil, fmt.Errorf("replication: bitmap runs: %w: format %#x", ErrMalformed, body[0])
	}
	total := uint64(nwords) * 64
	var pos uint64
	set := false
	for p, first := body[1:], true; len(p) > 0; first = false {
		n, k := binary.Uvarint(p)
		if k <= 0 || (n == 0 && !first) || n > total-pos {
			return nil, fmt.Errorf("replication: bitmap runs: %w: bad run at bit %d", ErrMalformed, pos)
		}
		p = p[k:]
		if set {
			setBits(words, pos, n)
		}
		pos += n
		set = !set
	}
	if pos != total {
		return nil, fmt.Errorf("replication: bitmap runs: %w: %d bits for %d words", ErrMalformed, pos, nwords)
	}
	return words, nil
}

// setBits sets n bits starting at bit pos.
func setBits(words []uint64, pos, n uint64) {
	for n > 0 {
		i, off := pos/64, pos%64
		span := min(64-off, n)
		mask := ^uint64(0)
		if span < 64 {
			mask = (1<<span - 1) << off
		}
		words[i] |= mask
		pos += span
		n -= span
	}
}

// EncodeResyncData fills m's Flags and Payload for the Length bytes in p
// (len(p) == m.Length): an all-zero range becomes ResyncZero, data that
// zstd shrinks by at least an eighth is sent compressed, anything else
// plain (aliasing p).
func EncodeResyncData(m *ResyncDataMsg, p []byte) {
	m.Length = int64(len(p))
	if isZero(p) {
		m.Flags, m.Payload = ResyncZero, nil
		return
	}
	z := zEnc().EncodeAll(p, make([]byte, 0, len(p)/2))
	if len(z) <= len(p)-len(p)/8 {
		m.Flags, m.Payload = ResyncZstd, z
		return
	}
	m.Flags, m.Payload = 0, p
}

func isZero(p []byte) bool {
	for len(p) >= 8 {
		if binary.LittleEndian.Uint64(p) != 0 {
			return false
		}
		p = p[8:]
	}
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}

// ReadRequestMsg asks the peer for a range of its data (a Diskless node
// serving a read through its UpToDate peer); the frame's Seq pairs it with
// the ReadReplyMsg.
type ReadRequestMsg struct{ Offset, Length int64 }

func (*ReadRequestMsg) Type() MsgType { return MsgReadRequest }

func (m *ReadRequestMsg) AppendBinary(b []byte) ([]byte, error) {
	if m.Length > MaxDataSize {
		return b, malformed(MsgReadRequest, "%d bytes", m.Length)
	}
	return rangeAppend(MsgReadRequest, b, m.Offset, m.Length)
}

func (m *ReadRequestMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	off, length := int64(d.u64()), int64(d.u64())
	if !d.done() || !validRange(off, length) || length > MaxDataSize {
		return malformed(MsgReadRequest, "%d bytes, range %d+%d", len(p), off, length)
	}
	m.Offset, m.Length = off, length
	return nil
}

// ReadReplyMsg answers a ReadRequestMsg (same frame Seq): the data, or an
// errno (then no data).
type ReadReplyMsg struct {
	Errno   uint32
	Payload []byte
}

func (*ReadReplyMsg) Type() MsgType { return MsgReadReply }

func (m *ReadReplyMsg) AppendBinary(b []byte) ([]byte, error) {
	if len(m.Payload) > MaxDataSize || (m.Errno != 0 && len(m.Payload) > 0) {
		return b, malformed(MsgReadReply, "errno %d with %d bytes", m.Errno, len(m.Payload))
	}
	b = binary.BigEndian.AppendUint32(b, m.Errno)
	return append(b, m.Payload...), nil
}

func (m *ReadReplyMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	errno := d.u32()
	rest := d.rest()
	if !d.ok || len(rest) > MaxDataSize || (errno != 0 && len(rest) > 0) {
		return malformed(MsgReadReply, "%d bytes", len(p))
	}
	m.Errno, m.Payload = errno, rest
	return nil
}
