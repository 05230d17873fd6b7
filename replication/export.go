package replication

import (
	"github.com/twinbd/twinbd/device"
	"github.com/twinbd/twinbd/nbd"
)

// Resource implements nbd.Export. The NBD server has checked ranges and
// flags; every write re-checks that this node is still Primary, then the
// local disk is served by an nbd.DeviceExport over the data area (FUA as a
// durable write, trim, zeroes, and a flush after them when FUA is set).

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
	err := r.local.ReadAt(p, off)
	r.pending.Add(-1)
	if err == nil {
		r.readBytes.Add(int64(len(p)))
	}
	return err
}

func (r *Resource) WriteAt(p []byte, off int64, fua bool) error {
	if err := r.checkWrite(off, int64(len(p))); err != nil {
		return err
	}
	r.pending.Add(1)
	err := r.local.WriteAt(p, off, fua)
	r.pending.Add(-1)
	if err == nil {
		r.writtenBytes.Add(int64(len(p)))
	}
	return err
}

// Flush makes every completed write durable. Writes answered on any NBD
// connection have completed on the shared data device, so one fdatasync
// covers all connections (what CAN_MULTI_CONN promises).
func (r *Resource) Flush() error {
	if !r.writable.Load() {
		return nbd.ErrReadOnly
	}
	return r.local.Flush()
}

func (r *Resource) Trim(off, length int64, fua bool) error {
	if err := r.checkWrite(off, length); err != nil {
		return err
	}
	return r.local.Trim(off, length, fua)
}

func (r *Resource) WriteZeroes(off, length int64, fua, noHole bool) error {
	if err := r.checkWrite(off, length); err != nil {
		return err
	}
	err := r.local.WriteZeroes(off, length, fua, noHole)
	if err == nil {
		r.writtenBytes.Add(length)
	}
	return err
}

func (r *Resource) checkWrite(off, length int64) error {
	if !r.writable.Load() {
		return nbd.ErrReadOnly
	}
	return device.CheckRange(r.size, off, length)
}
