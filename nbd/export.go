package nbd

import (
	"errors"

	"github.com/twinbd/twinbd/device"
)

// Export is what the server serves: one block device behind an export name.
// The replicated resource implements it; tests use a file-backed export.
//
// Contract (the server relies on it):
//   - Every method may be called concurrently from many connections.
//   - The server has already checked ranges against Size() and alignment;
//     an Export may still return ErrOutOfRange (e.g. after a resize race).
//   - WriteAt with fua=true returns only when the data is durable on every
//     copy the export keeps (FUA). Flush returns only when every write that
//     completed before Flush was called is durable (so FLUSH covers writes
//     answered on any connection: that is what makes CAN_MULTI_CONN true).
//   - Errors map to NBD errnos: ErrReadOnly → EPERM, ErrOutOfRange → ENOSPC,
//     ErrNoSpace → ENOSPC, ErrSuspended / ErrShutdown → ESHUTDOWN, a
//     syscall.Errno → itself where NBD has it, anything else → EIO.
type Export interface {
	Size() int64
	ReadOnly() bool
	ReadAt(p []byte, off int64) error
	WriteAt(p []byte, off int64, fua bool) error
	Flush() error
	Trim(off, length int64, fua bool) error
	WriteZeroes(off, length int64, fua, noHole bool) error
}

// Resolver finds exports by name. The empty name maps to the default export
// when there is exactly one.
type Resolver interface {
	// Lookup returns the export for name, or ErrUnknownExport.
	Lookup(name string) (Export, error)
	// Names lists the export names (one NBD_REP_SERVER each for OPT_LIST).
	Names() []string
}

// Sentinel errors an Export returns; the server maps them to errnos.
var (
	ErrReadOnly      = errors.New("nbd: export is read-only")
	ErrOutOfRange    = device.ErrOutOfRange
	ErrNoSpace       = errors.New("nbd: no space")
	ErrShutdown      = errors.New("nbd: export shutting down")
	ErrUnknownExport = errors.New("nbd: unknown export")
)
