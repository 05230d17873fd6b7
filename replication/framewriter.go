package replication

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
)

// frameWriter serializes frames from concurrent senders onto one
// connection and batches them: each sender encodes its frame into a shared
// buffer under the lock, and the last sender in line flushes. Under load a
// flush carries many frames (one syscall for many acks or small writes);
// alone, a sender flushes its own frame at once. Once a write fails every
// later send fails with the same error.
type frameWriter struct {
	waiting atomic.Int32
	mu      sync.Mutex
	bw      *bufio.Writer
	err     error
}

func newFrameWriter(w io.Writer, size int) *frameWriter {
	return &frameWriter{bw: bufio.NewWriterSize(w, size)}
}

// send writes m as one frame with sequence seq. When it returns without
// error the frame is in the socket, or a sender queued behind it will
// flush it.
func (w *frameWriter) send(seq uint64, m Message) error {
	var fixed [dataFixed]byte
	var head, payload []byte
	if d, ok := m.(*DataMsg); ok {
		// Data payloads are not copied: header, fixed fields, payload.
		if err := checkData(MsgData, d.Offset, d.Flags, d.Payload); err != nil {
			return err
		}
		binary.BigEndian.PutUint64(fixed[0:], d.Seq)
		binary.BigEndian.PutUint64(fixed[8:], uint64(d.Offset))
		binary.BigEndian.PutUint32(fixed[16:], d.Flags)
		head, payload = fixed[:], d.Payload
	} else {
		p, err := m.AppendBinary(nil)
		if err != nil {
			return err
		}
		payload = p
	}
	w.waiting.Add(1)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = writeFrameParts(w.bw, m.Type(), seq, head, payload)
	}
	if w.waiting.Add(-1) == 0 && w.err == nil {
		w.err = w.bw.Flush()
	}
	return w.err
}

// queue writes m into the buffer without flushing (unless the buffer
// fills). The caller owes a flush: the Secondary's receiver queues acks
// while more input is buffered and flushes before it waits for the network.
func (w *frameWriter) queue(seq uint64, m Message) error {
	p, err := m.AppendBinary(nil)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = writeFrameParts(w.bw, m.Type(), seq, nil, p)
	}
	return w.err
}

// flush writes out whatever is buffered.
func (w *frameWriter) flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil && w.bw.Buffered() > 0 {
		w.err = w.bw.Flush()
	}
	return w.err
}

// writeFrameParts writes one frame whose payload is head followed by
// payload (the same bytes WriteFrame would write for their concatenation).
func writeFrameParts(w io.Writer, t MsgType, seq uint64, head, payload []byte) error {
	n := len(head) + len(payload)
	if uint64(n) > uint64(maxPayloadFor[t]) {
		return fmt.Errorf("replication: write %v frame: %w: %d bytes", t, ErrFrameTooLarge, n)
	}
	d := xxhash.New()
	d.Write(head)
	d.Write(payload)
	var hdr [HeaderSize]byte
	binary.BigEndian.PutUint32(hdr[0:], FrameMagic)
	binary.BigEndian.PutUint16(hdr[4:], ProtocolVersion)
	binary.BigEndian.PutUint16(hdr[6:], uint16(t))
	binary.BigEndian.PutUint32(hdr[12:], uint32(n))
	binary.BigEndian.PutUint64(hdr[16:], seq)
	binary.BigEndian.PutUint64(hdr[24:], d.Sum64())
	binary.BigEndian.PutUint64(hdr[32:], xxhash.Sum64(hdr[:32]))
	for _, b := range [][]byte{hdr[:], head, payload} {
		if len(b) == 0 {
			continue
		}
		if _, err := w.Write(b); err != nil {
			return fmt.Errorf("replication: write %v frame: %w", t, err)
		}
	}
	return nil
}
