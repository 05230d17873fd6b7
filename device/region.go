package device

// Region is a window [Off, Off+Len) of another Device, for example the data
// area in front of internal metadata. Optional capabilities of the parent are
// passed through (and emulated with zero writes where the parent lacks them).
// Close does not close the parent.
type Region struct {
	Parent Device
	Off    int64
	Len    int64
}

// NewRegion returns the window [off, off+length) of parent.
func NewRegion(parent Device, off, length int64) (*Region, error) {
	if err := CheckRange(parent.Size(), off, length); err != nil {
		return nil, err
	}
	return &Region{Parent: parent, Off: off, Len: length}, nil
}

func (r *Region) Size() int64  { return r.Len }
func (r *Region) Flush() error { return r.Parent.Flush() }
func (r *Region) Close() error { return nil }

func (r *Region) ReadAt(p []byte, off int64) (int, error) {
	if err := CheckRange(r.Len, off, int64(len(p))); err != nil {
		return 0, err
	}
	return r.Parent.ReadAt(p, r.Off+off)
}

func (r *Region) WriteAt(p []byte, off int64) (int, error) {
	if err := CheckRange(r.Len, off, int64(len(p))); err != nil {
		return 0, err
	}
	return r.Parent.WriteAt(p, r.Off+off)
}

// WriteAtFUA passes through to the parent's FUAWriter or writes and flushes.
func (r *Region) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := CheckRange(r.Len, off, int64(len(p))); err != nil {
		return 0, err
	}
	return WriteFUA(r.Parent, p, r.Off+off)
}

func (r *Region) Trim(off, length int64) error {
	if err := CheckRange(r.Len, off, length); err != nil {
		return err
	}
	return Trim(r.Parent, r.Off+off, length)
}

func (r *Region) WriteZeroes(off, length int64, mayTrim bool) error {
	if err := CheckRange(r.Len, off, length); err != nil {
		return err
	}
	return WriteZeroes(r.Parent, r.Off+off, length, mayTrim)
}

// WriteFUA writes p durably on d, using FUAWriter when d has it.
func WriteFUA(d Device, p []byte, off int64) (int, error) {
	if f, ok := d.(FUAWriter); ok {
		return f.WriteAtFUA(p, off)
	}
	n, err := d.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, d.Flush()
}

// Trim discards [off, off+length) on d, or writes zeroes if d cannot trim.
func Trim(d Device, off, length int64) error {
	if t, ok := d.(Trimmer); ok {
		return t.Trim(off, length)
	}
	return zeroFill(d, off, length)
}

// WriteZeroes zeroes [off, off+length) on d with its Zeroer, or by writing zeroes.
func WriteZeroes(d Device, off, length int64, mayTrim bool) error {
	if z, ok := d.(Zeroer); ok {
		return z.WriteZeroes(off, length, mayTrim)
	}
	return zeroFill(d, off, length)
}

func zeroFill(d Device, off, length int64) error {
	if err := CheckRange(d.Size(), off, length); err != nil {
		return err
	}
	for length > 0 {
		n := min(length, int64(len(zeroBuf)))
		if _, err := d.WriteAt(zeroBuf[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}
