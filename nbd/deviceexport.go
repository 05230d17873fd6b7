package nbd

import (
	"fmt"
	"slices"

	"github.com/twinbd/twinbd/device"
)

// DeviceExport serves a device.Device directly, without replication: for
// tests, benchmarks and standalone serving.
type DeviceExport struct {
	dev      device.Device
	readOnly bool
}

var _ Export = (*DeviceExport)(nil)

// NewDeviceExport returns an Export over d.
func NewDeviceExport(d device.Device, readOnly bool) *DeviceExport {
	return &DeviceExport{dev: d, readOnly: readOnly}
}

// Size implements Export.
func (e *DeviceExport) Size() int64 { return e.dev.Size() }

// ReadOnly implements Export.
func (e *DeviceExport) ReadOnly() bool { return e.readOnly }

// ReadAt implements Export.
func (e *DeviceExport) ReadAt(p []byte, off int64) error {
	n, err := e.dev.ReadAt(p, off)
	if n == len(p) {
		return nil // io.ReaderAt may report io.EOF with a full read
	}
	if err == nil {
		err = fmt.Errorf("nbd: short read at %d: %d of %d bytes", off, n, len(p))
	}
	return err
}

// WriteAt implements Export; fua uses the device's durable write.
func (e *DeviceExport) WriteAt(p []byte, off int64, fua bool) error {
	if e.readOnly {
		return ErrReadOnly
	}
	var err error
	if fua {
		_, err = device.WriteFUA(e.dev, p, off)
	} else {
		_, err = e.dev.WriteAt(p, off)
	}
	return err
}

// Flush implements Export.
func (e *DeviceExport) Flush() error { return e.dev.Flush() }

// Trim implements Export.
func (e *DeviceExport) Trim(off, length int64, fua bool) error {
	if e.readOnly {
		return ErrReadOnly
	}
	if err := device.Trim(e.dev, off, length); err != nil {
		return err
	}
	if fua {
		return e.dev.Flush()
	}
	return nil
}

// WriteZeroes implements Export. Without noHole the range may be
// deallocated.
func (e *DeviceExport) WriteZeroes(off, length int64, fua, noHole bool) error {
	if e.readOnly {
		return ErrReadOnly
	}
	if err := device.WriteZeroes(e.dev, off, length, !noHole); err != nil {
		return err
	}
	if fua {
		return e.dev.Flush()
	}
	return nil
}

// StaticResolver is a fixed set of exports by name.
type StaticResolver map[string]Export

var _ Resolver = StaticResolver(nil)

// Lookup implements Resolver: the empty name is the only export when there
// is exactly one (unless an export is literally named "").
func (r StaticResolver) Lookup(name string) (Export, error) {
	if e, ok := r[name]; ok {
		return e, nil
	}
	if name == "" && len(r) == 1 {
		for _, e := range r {
			return e, nil
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownExport, name)
}

// Names implements Resolver, sorted.
func (r StaticResolver) Names() []string {
	names := make([]string, 0, len(r))
	for n := range r {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
