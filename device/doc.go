// Package device is the block-device layer under every other package: a small
// Device interface (ReaderAt + WriterAt + Flush + Size), optional capabilities
// as separate interfaces (Trimmer, Zeroer, FUAWriter), a file/block-device
// implementation, and a Region that exposes a window of another device (the
// data area in front of internal metadata).
//
// Invariant: a Device never grows. Reads and writes outside [0, Size()) fail
// with ErrOutOfRange and touch nothing.
//
// Concurrency: all methods are safe for concurrent use; ReadAt/WriteAt map to
// pread/pwrite and carry no shared state. Flush makes every write that
// completed before Flush was called durable (fdatasync).
package device
