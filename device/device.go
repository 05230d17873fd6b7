package device

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Sentinel errors.
var (
	ErrOutOfRange = errors.New("device: range outside the device")
	ErrClosed     = errors.New("device: closed")
)

// Device is a fixed-size block store.
type Device interface {
	io.ReaderAt
	io.WriterAt
	// Flush makes every write completed before the call durable.
	Flush() error
	// Size is the device size in bytes. It never changes by itself; a
	// device the operator grew shows its new size only after Refresh
	// (Resizer).
	Size() int64
	Close() error
}

// Trimmer can discard a range (reads of it return zeroes afterwards).
type Trimmer interface {
	Trim(off, length int64) error
}

// Zeroer can write zeroes over a range without a payload. mayTrim allows
// deallocating the range (NBD WRITE_ZEROES without NO_HOLE).
type Zeroer interface {
	WriteZeroes(off, length int64, mayTrim bool) error
}

// FUAWriter writes a block durably in one call, which a device may do more
// cheaply than WriteAt followed by Flush (File shares the sync among
// concurrent FUA writes and flushes).
type FUAWriter interface {
	WriteAtFUA(p []byte, off int64) (int, error)
}

// CheckRange reports ErrOutOfRange unless [off, off+length) lies inside a
// device of the given size. It never overflows.
func CheckRange(size, off, length int64) error {
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrOutOfRange, off, length, size)
	}
	return nil
}

// File is a Device over a regular file or a block device.
type File struct {
	f      *os.File
	size   atomic.Int64 // the size as of open or the last Refresh
	path   string
	closed atomic.Bool
	syncs  groupSync // concurrent Flush and FUA writes share fdatasyncs
}

// OpenFile opens path read-write. The size is the file's current size (for a
// block device, its capacity); the file is never extended by writes.
func OpenFile(path string) (*File, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("device: open %s: %w", path, err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("device: size of %s: %w", path, err)
	}
	d := &File{f: f, path: path}
	d.size.Store(size)
	return d, nil
}

// Path is the file's path.
func (d *File) Path() string { return d.path }

// Size implements Device.
func (d *File) Size() int64 { return d.size.Load() }

// Fd is the file descriptor (for tests and diagnostics).
func (d *File) Fd() uintptr { return d.f.Fd() }

// ReadAt implements io.ReaderAt; reads outside the device fail.
func (d *File) ReadAt(p []byte, off int64) (int, error) {
	if err := CheckRange(d.size.Load(), off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := d.f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	return n, err
}

// WriteAt implements io.WriterAt; writes outside the device fail and never
// grow the file.
func (d *File) WriteAt(p []byte, off int64) (int, error) {
	if err := CheckRange(d.size.Load(), off, int64(len(p))); err != nil {
		return 0, err
	}
	return d.f.WriteAt(p, off)
}

// WriteAtFUA writes p durably: pwrite, then an fdatasync shared with the
// concurrent FUA writes and flushes of this file (group commit: at queue
// depth 32, one fdatasync answers many writes instead of one journal commit
// and cache flush each).
func (d *File) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := CheckRange(d.size.Load(), off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := d.f.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, d.Flush()
}

// Flush implements Device with fdatasync. Concurrent callers share one: each
// returns after an fdatasync that started after it called Flush.
func (d *File) Flush() error {
	return d.syncs.Sync(d.fdatasync)
}

func (d *File) fdatasync() error {
	if err := unix.Fdatasync(int(d.f.Fd())); err != nil {
		return fmt.Errorf("device: fdatasync %s: %w", d.path, err)
	}
	return nil
}

// Trim punches a hole (regular files) or issues BLKDISCARD (block devices).
// Where neither is supported it writes zeroes, so reads return zeroes either way.
func (d *File) Trim(off, length int64) error {
	if err := CheckRange(d.size.Load(), off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	err := unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if err == nil {
		return nil
	}
	return d.writeZeroBuf(off, length)
}

// WriteZeroes implements Zeroer: FALLOC_FL_ZERO_RANGE (or a hole if mayTrim),
// falling back to writing a zero buffer.
func (d *File) WriteZeroes(off, length int64, mayTrim bool) error {
	if err := CheckRange(d.size.Load(), off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	mode := uint32(unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE)
	if mayTrim {
		mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	if err := unix.Fallocate(int(d.f.Fd()), mode, off, length); err == nil {
		return nil
	}
	return d.writeZeroBuf(off, length)
}

var zeroBuf [1 << 20]byte

func (d *File) writeZeroBuf(off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(zeroBuf)))
		if _, err := d.f.WriteAt(zeroBuf[:n], off); err != nil {
			return fmt.Errorf("device: zero %s at %d: %w", d.path, off, err)
		}
		off += n
		length -= n
	}
	return nil
}

// Close implements Device; it is idempotent.
func (d *File) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	return d.f.Close()
}
