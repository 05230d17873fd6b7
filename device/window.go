package device

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
)

// Resizer is a Device whose underlying storage can grow under it (a file
// extended with truncate, a logical volume extended with lvextend). Refresh
// reads the current size and makes Size report it; the size never goes down
// (ErrShrunk, and Size keeps the old value), since data past the new end
// would be gone.
type Resizer interface {
	Refresh() (int64, error)
}

// ErrShrunk: the storage under a Resizer is smaller than it was.
var ErrShrunk = errors.New("device: the underlying storage shrank")

// Refresh implements Resizer: the current size of the file (for a block
// device, its capacity).
func (d *File) Refresh() (int64, error) {
	size, err := d.f.Seek(0, io.SeekEnd)
	if err != nil {
		return d.Size(), fmt.Errorf("device: size of %s: %w", d.path, err)
	}
	if old := d.Size(); size < old {
		return old, fmt.Errorf("%w: %s is %d bytes, it was %d while open", ErrShrunk, d.path, size, old)
	}
	d.size.Store(size)
	return size, nil
}

// Window is the window [0, Size()) of a parent device, like a Region at
// offset 0, whose size can change while it is in use (SetSize): the data
// area of a replicated device, which an online resize grows. Optional
// capabilities of the parent are passed through. Close does not close the
// parent.
type Window struct {
	parent Device
	size   atomic.Int64
}

// NewWindow returns the window [0, size) of parent.
func NewWindow(parent Device, size int64) (*Window, error) {
	w := &Window{parent: parent}
	if err := w.SetSize(size); err != nil {
		return nil, err
	}
	return w, nil
}

// SetSize moves the end of the window; it must stay inside the parent.
// I/O already checked against the old size completes against the parent
// as it was issued.
func (w *Window) SetSize(size int64) error {
	if err := CheckRange(w.parent.Size(), 0, size); err != nil {
		return err
	}
	w.size.Store(size)
	return nil
}

// Parent is the device the window looks into.
func (w *Window) Parent() Device { return w.parent }

func (w *Window) Size() int64  { return w.size.Load() }
func (w *Window) Flush() error { return w.parent.Flush() }
func (w *Window) Close() error { return nil }

func (w *Window) ReadAt(p []byte, off int64) (int, error) {
	if err := CheckRange(w.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	return w.parent.ReadAt(p, off)
}

func (w *Window) WriteAt(p []byte, off int64) (int, error) {
	if err := CheckRange(w.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	return w.parent.WriteAt(p, off)
}

// WriteAtFUA passes through to the parent's FUAWriter or writes and flushes.
func (w *Window) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := CheckRange(w.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	return WriteFUA(w.parent, p, off)
}

func (w *Window) Trim(off, length int64) error {
	if err := CheckRange(w.Size(), off, length); err != nil {
		return err
	}
	return Trim(w.parent, off, length)
}

func (w *Window) WriteZeroes(off, length int64, mayTrim bool) error {
	if err := CheckRange(w.Size(), off, length); err != nil {
		return err
	}
	return WriteZeroes(w.parent, off, length, mayTrim)
}

// Refresh passes a Resizer's Refresh through (a disk grown under fault
// injection); a device that cannot grow reports its fixed size.
func (f *Faulty) Refresh() (int64, error) {
	if rz, ok := f.dev.(Resizer); ok {
		return rz.Refresh()
	}
	return f.dev.Size(), nil
}
