package replication

// Messages of an online resize and of a resync started mid-session
// (resize.go). Payloads, big-endian:
//
//	Resize       size u64 | mark offset u64 | mark length u64 | flags u32
//	ResizeReply  size u64 | capacity u64 | md offset u64 | md end u64 |
//	             failed u8 | reason (u16 length + UTF-8)
//	SyncStart    offset u64 | length u64

import (
	"encoding/binary"
)

const (
	resizeSize       = 8 + 8 + 8 + 4
	resizeReplyFixed = 8 + 8 + 8 + 8 + 1 + 2
)

// ResizeMsg flags.
const (
	// ResizeProbe: change nothing, answer with the capacity.
	ResizeProbe uint32 = 1 << iota
	// ResizeAssumeClean: the operator said the new area is identical on
	// both nodes (for the log; the marks already say what to sync).
	ResizeAssumeClean
	// ResizeShrink: Size is smaller than now and the operator forced it
	// (--force): the peer drops everything past it (shrink.go).
	ResizeShrink
	resizeKnownFlags = ResizeProbe | ResizeAssumeClean | ResizeShrink
)

// ResizeMsg asks the peer to grow to Size bytes, marking [MarkOff,
// MarkOff+MarkLen) out of sync as it does, to shrink to Size bytes
// (ResizeShrink, no marks), or (ResizeProbe) only for its capacity. It travels on the data channel, after every write sent before
// it; the peer answers with a ResizeReplyMsg on the meta channel.
type ResizeMsg struct {
	Size             int64
	MarkOff, MarkLen int64
	Flags            uint32
}

func (*ResizeMsg) Type() MsgType { return MsgResize }

func (m *ResizeMsg) check() error {
	switch {
	case m.Size < 0 || !validRange(m.MarkOff, m.MarkLen):
		return malformed(MsgResize, "size %d mark [%d, +%d)", m.Size, m.MarkOff, m.MarkLen)
	case m.Flags&^resizeKnownFlags != 0:
		return malformed(MsgResize, "unknown flags %#x", m.Flags)
	}
	return nil
}

func (m *ResizeMsg) AppendBinary(b []byte) ([]byte, error) {
	if err := m.check(); err != nil {
		return b, err
	}
	b = binary.BigEndian.AppendUint64(b, uint64(m.Size))
	b = binary.BigEndian.AppendUint64(b, uint64(m.MarkOff))
	b = binary.BigEndian.AppendUint64(b, uint64(m.MarkLen))
	return binary.BigEndian.AppendUint32(b, m.Flags), nil
}

func (m *ResizeMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	var v ResizeMsg
	v.Size = int64(d.u64())
	v.MarkOff = int64(d.u64())
	v.MarkLen = int64(d.u64())
	v.Flags = d.u32()
	if !d.done() {
		return malformed(MsgResize, "%d bytes, want %d", len(p), resizeSize)
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// ResizeReplyMsg answers a ResizeMsg: the sender's exported size now, the
// largest it can grow to, where its internal metadata area lies now
// ([MDOffset, MDEnd), zero for external metadata), and, if Failed, why; a
// probe's Reason says what limits the capacity, if anything does.
type ResizeReplyMsg struct {
	Size, Capacity  int64
	MDOffset, MDEnd int64
	Failed          bool
	Reason          string
}

func (*ResizeReplyMsg) Type() MsgType { return MsgResizeReply }

func (m *ResizeReplyMsg) check() error {
	if m.Size < 0 || m.Capacity < 0 || m.MDOffset < 0 || m.MDEnd < m.MDOffset {
		return malformed(MsgResizeReply, "size %d capacity %d metadata [%d, %d)", m.Size, m.Capacity, m.MDOffset, m.MDEnd)
	}
	return nil
}

func (m *ResizeReplyMsg) AppendBinary(b []byte) ([]byte, error) {
	if err := m.check(); err != nil {
		return b, err
	}
	b = binary.BigEndian.AppendUint64(b, uint64(m.Size))
	b = binary.BigEndian.AppendUint64(b, uint64(m.Capacity))
	b = binary.BigEndian.AppendUint64(b, uint64(m.MDOffset))
	b = binary.BigEndian.AppendUint64(b, uint64(m.MDEnd))
	b = putBool(b, m.Failed)
	return putStr(MsgResizeReply, b, m.Reason)
}

func (m *ResizeReplyMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	var v ResizeReplyMsg
	v.Size = int64(d.u64())
	v.Capacity = int64(d.u64())
	v.MDOffset = int64(d.u64())
	v.MDEnd = int64(d.u64())
	v.Failed = d.boolean()
	v.Reason = d.str()
	if !d.done() {
		return malformed(MsgResizeReply, "%d bytes", len(p))
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// SyncStartMsg tells the peer that the sender, SyncSource from now on, has
// marked [Offset, Offset+Length) out of sync: the peer marks it too and is
// SyncTarget (Inconsistent) until the resync-done State. It travels on the
// data channel, before any resync data of that range.
type SyncStartMsg struct{ Offset, Length int64 }

func (*SyncStartMsg) Type() MsgType { return MsgSyncStart }

func (m *SyncStartMsg) AppendBinary(b []byte) ([]byte, error) {
	return rangeAppend(MsgSyncStart, b, m.Offset, m.Length)
}

func (m *SyncStartMsg) UnmarshalBinary(p []byte) error {
	d := dec{b: p, ok: true}
	off, length := int64(d.u64()), int64(d.u64())
	if !d.done() || !validRange(off, length) {
		return malformed(MsgSyncStart, "%d bytes, range %d+%d", len(p), off, length)
	}
	m.Offset, m.Length = off, length
	return nil
}
