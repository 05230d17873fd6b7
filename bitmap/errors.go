package bitmap

import "errors"

// Sentinel errors, always wrapped with what was being done and, where the
// operator must act, with what to do; match them with errors.Is.
var (
	// ErrNoMetadata: no superblock magic where the metadata should be.
	ErrNoMetadata = errors.New("bitmap: no metadata")
	// ErrCorrupt: the magic is there but the contents are not valid
	// (checksum mismatch, impossible field, torn write).
	ErrCorrupt = errors.New("bitmap: corrupt metadata")
	// ErrVersion: metadata written in a format version this build does not know.
	ErrVersion = errors.New("bitmap: unknown metadata format version")
	// ErrExists: Create found valid metadata and was not forced.
	ErrExists = errors.New("bitmap: metadata exists")
	// ErrTooSmall: the device cannot hold the data area or the metadata area.
	ErrTooSmall = errors.New("bitmap: device too small")
	// ErrWrongSize: the metadata describes a device of another size or layout.
	ErrWrongSize = errors.New("bitmap: metadata is for a different device size")
	// ErrWrongResource: the metadata belongs to another resource.
	ErrWrongResource = errors.New("bitmap: metadata belongs to another resource")
	// ErrWrongNode: the metadata belongs to another node-id.
	ErrWrongNode = errors.New("bitmap: metadata belongs to another node")
	// ErrInvalid: a bad argument (granularity, layout, superblock field).
	ErrInvalid = errors.New("bitmap: invalid argument")
)
