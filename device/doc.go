// Package device is the block-device layer under every other package: a small
// Device interface (ReaderAt + WriterAt + Flush + Size), optional capabilities
// as separate interfaces (Trimmer, Zeroer, FUAWriter), a file/block-device
// implementation, a Region that exposes a window of another device, and a
// Window whose end can move (the data area in front of internal metadata,
// which an online resize grows).
//
// Invariant: writes never grow a Device. Reads and writes outside
// [0, Size()) fail with ErrOutOfRange and touch nothing. A device the
// operator grew shows its new size only after Refresh (Resizer), which
// never lowers it; a Window's size changes only by SetSize.
//
// Concurrency: all methods are safe for concurrent use; ReadAt/WriteAt map to
// pread/pwrite and carry no shared state. Flush makes every write that
// completed before Flush was called durable (fdatasync).
package device
