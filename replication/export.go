package replication

import (
	"github.com/twinbd/twinbd/device"
	"github.com/twinbd/twinbd/nbd"
)

// Resource implements nbd.Export. The NBD server has checked ranges and
// flags; every write re-checks that this node is still Primary.

var _ nbd.Export = (*Resource)(nil)

// Size is the exported size in bytes.
func (r *Resource) Size() int64 { return r.size }

// ReadOnly is false: the export only exists while Primary.
func (r *Resource) ReadOnly() bool { return false }

func (r *Resource) ReadAt(p []byte, off int64) error {
	if err := device.CheckRange(r.size, off, int64(len(p))); err != nil {
		return err
	}
	r.pending.Add(1)
	_, err := r.data.ReadAt(p, off)
	r.pending.Add(-1)
	r.readBytes.Add(int64(len(p)))
	return err
}

func (r *Resource) WriteAt(p []byte, off int64, fua bool) error {
	if err := r.checkWrite(off, int64(len(p))); err != nil {
		return err
	}
	r.pending.Add(1)
	var err error
	if fua {
		_, err = device.WriteFUA(r.data, p, off)
	} else {
		_, err = r.data.WriteAt(p, off)
	}
	r.pending.Add(-1)
	r.writtenBytes.Add(int64(len(p)))
	return err
}

// Flush makes every completed write durable. Writes answered on any NBD
// connection have completed on the shared data device, so one fdatasync
// covers all connections (what CAN_MULTI_CONN promises).
func (r *Resource) Flush() error {
	if !r.writable.Load() {
		return nbd.ErrReadOnly
	}
	return r.data.Flush()
}

func (r *Resource) Trim(off, length int64, fua bool) error {
	if err := r.checkWrite(off, length); err != nil {
		return err
	}
	if err := device.Trim(r.data, off, length); err != nil {
		return err
	}
	if fua {
		return r.data.Flush()
	}
	return nil
}

func (r *Resource) WriteZeroes(off, length int64, fua, noHole bool) error {
	if err := r.checkWrite(off, length); err != nil {
		return err
	}
	if err := device.WriteZeroes(r.data, off, length, !noHole); err != nil {
		return err
	}
	r.writtenBytes.Add(length)
	if fua {
		return r.data.Flush()
	}
	return nil
}

func (r *Resource) checkWrite(off, length int64) error {
	if !r.writable.Load() {
		return nbd.ErrReadOnly
	}
	return device.CheckRange(r.size, off, length)
}
