package device

import (
	"fmt"
	"sync"
	"syscall"
)

// FaultMode says which I/O a Faulty device fails.
type FaultMode int

const (
	FaultNone  FaultMode = 0
	FaultRead  FaultMode = 1 << iota // reads fail with EIO
	FaultWrite                       // writes, trims, zeroing and flushes fail with EIO
	FaultRW    = FaultRead | FaultWrite
)

func (m FaultMode) String() string {
	switch m {
	case FaultNone:
		return "none"
	case FaultRead:
		return "read-error"
	case FaultWrite:
		return "write-error"
	case FaultRW:
		return "rw-error"
	}
	return fmt.Sprintf("FaultMode(%d)", int(m))
}

// ParseFaultMode parses the names String returns.
func ParseFaultMode(s string) (FaultMode, error) {
	for _, m := range []FaultMode{FaultNone, FaultRead, FaultWrite, FaultRW} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown disk fault %q (none, read-error, write-error, rw-error)", s)
}

// faultBlock is the unit in which Faulty remembers durable contents.
const faultBlock = 4096

// Faulty wraps a Device for fault injection (tests, and a daemon started
// with --fault-injection: `twinbd debug disk-fault`). It can fail reads
// and/or writes with EIO, on the whole device or on one byte range, and it
// can simulate a power failure: it keeps, for every 4 KiB block written
// since the last Flush, the block's durable contents, and PowerFail writes
// them back, so exactly what a real disk may lose is lost (writes not
// covered by a Flush; a FUA write is durable at once). The saved copies
// cost memory in proportion to the data written between two flushes.
type Faulty struct {
	dev Device

	mu     sync.Mutex
	mode   FaultMode
	off    int64 // fault range; length 0: the whole device
	length int64
	saved  map[int64][]byte // block index -> durable contents
	failed int64            // I/O requests failed so far
}

// NewFaulty wraps dev; no faults until SetFault.
func NewFaulty(dev Device) *Faulty {
	return &Faulty{dev: dev, saved: map[int64][]byte{}}
}

// SetFault fails the I/O of mode on [off, off+length) from now on (length
// 0: the whole device, flushes included). FaultNone heals.
func (f *Faulty) SetFault(mode FaultMode, off, length int64) {
	f.mu.Lock()
	f.mode, f.off, f.length = mode, off, length
	f.mu.Unlock()
}

// Fault is the current fault and its range.
func (f *Faulty) Fault() (mode FaultMode, off, length, failed int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mode, f.off, f.length, f.failed
}

// Unflushed is the number of bytes (in 4 KiB blocks) a power failure
// would revert now.
func (f *Faulty) Unflushed() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.saved)) * faultBlock
}

// check returns EIO when the fault covers [off, off+length) for mode
// (f.mu held).
func (f *Faulty) check(mode FaultMode, off, length int64) error {
	if f.mode&mode == 0 {
		return nil
	}
	if f.length > 0 && (off+length <= f.off || off >= f.off+f.length) {
		return nil
	}
	f.failed++
	return fmt.Errorf("device: injected %v at offset %d: %w", mode, off, syscall.EIO)
}

// save records the durable contents of every block in [off, off+length)
// not saved since the last Flush (f.mu held).
func (f *Faulty) save(off, length int64) error {
	for b := off / faultBlock; b*faultBlock < off+length; b++ {
		if _, ok := f.saved[b]; ok {
			continue
		}
		n := min(int64(faultBlock), f.dev.Size()-b*faultBlock)
		buf := make([]byte, n)
		if _, err := f.dev.ReadAt(buf, b*faultBlock); err != nil {
			return err
		}
		f.saved[b] = buf
	}
	return nil
}

// patch makes p at off part of the saved durable contents (a FUA write).
func (f *Faulty) patch(p []byte, off int64) {
	end := off + int64(len(p))
	for b := off / faultBlock; b*faultBlock < end; b++ {
		s, ok := f.saved[b]
		if !ok {
			continue
		}
		lo, hi := max(off, b*faultBlock), min(end, b*faultBlock+int64(len(s)))
		copy(s[lo-b*faultBlock:hi-b*faultBlock], p[lo-off:hi-off])
	}
}

// begin checks the fault and saves the durable contents before a change
// of [off, off+length).
func (f *Faulty) begin(off, length int64) error {
	if err := CheckRange(f.dev.Size(), off, length); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(FaultWrite, off, length); err != nil {
		return err
	}
	return f.save(off, length)
}

func (f *Faulty) Size() int64  { return f.dev.Size() }
func (f *Faulty) Close() error { return f.dev.Close() }

func (f *Faulty) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	err := f.check(FaultRead, off, int64(len(p)))
	f.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return f.dev.ReadAt(p, off)
}

func (f *Faulty) WriteAt(p []byte, off int64) (int, error) {
	if err := f.begin(off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.dev.WriteAt(p, off)
}

// WriteAtFUA writes p durably: the saved durable contents take it too.
func (f *Faulty) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := f.begin(off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := WriteFUA(f.dev, p, off)
	if err == nil {
		f.mu.Lock()
		f.patch(p, off)
		f.mu.Unlock()
	}
	return n, err
}

func (f *Faulty) Trim(off, length int64) error {
	if err := f.begin(off, length); err != nil {
		return err
	}
	return Trim(f.dev, off, length)
}

func (f *Faulty) WriteZeroes(off, length int64, mayTrim bool) error {
	if err := f.begin(off, length); err != nil {
		return err
	}
	return WriteZeroes(f.dev, off, length, mayTrim)
}

// Flush makes everything written so far durable (unless writes fail).
func (f *Faulty) Flush() error {
	// Blocks saved after the swap belong to writes that may complete
	// after the flush: only what was saved before it is dropped.
	f.mu.Lock()
	if f.length == 0 { // a ranged fault fails only the I/O that touches it
		if err := f.check(FaultWrite, 0, f.dev.Size()); err != nil {
			f.mu.Unlock()
			return err
		}
	}
	before := f.saved
	f.saved = map[int64][]byte{}
	f.mu.Unlock()
	if err := f.dev.Flush(); err != nil {
		f.mu.Lock()
		for b, s := range before {
			if _, ok := f.saved[b]; !ok {
				f.saved[b] = s
			}
		}
		f.mu.Unlock()
		return err
	}
	return nil
}

// PowerFail simulates losing power: every later I/O fails, and every block
// written since the last Flush gets its durable contents back (written to
// the underlying device and flushed), as if the writes never reached the
// platter. It returns the bytes reverted. The device is unusable afterwards.
func (f *Faulty) PowerFail() (int64, error) {
	f.mu.Lock()
	f.mode, f.off, f.length = FaultRW, 0, 0
	saved := f.saved
	f.saved = map[int64][]byte{}
	f.mu.Unlock()
	var n int64
	for b, s := range saved {
		if _, err := f.dev.WriteAt(s, b*faultBlock); err != nil {
			return n, err
		}
		n += int64(len(s))
	}
	return n, f.dev.Flush()
}
