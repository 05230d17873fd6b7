package replication

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/cespare/xxhash/v2"
)

// Digest algorithms of a ChecksumRequest (csums-alg for a checksum resync,
// verify-alg for online verify). The request names its algorithm, so the
// peer computes the same one whatever its own resource file says.
const (
	DigestXXHash64 uint8 = iota // xxhash64, the default
	DigestCRC32C                // CRC-32C (Castagnoli), zero-extended
	DigestSHA256                // the first 8 bytes of SHA-256, big-endian
	DigestSHA1                  // the first 8 bytes of SHA-1 (DRBD files often name it)
	DigestMD5                   // the first 8 bytes of MD5 (the same)

	digestMax = DigestMD5
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// digestAlg maps a resource file's csums-alg / verify-alg ("" is the
// default, xxhash64) to its wire code.
func digestAlg(name string) (uint8, error) {
	switch name {
	case "", "xxhash64":
		return DigestXXHash64, nil
	case "crc32c":
		return DigestCRC32C, nil
	case "sha256":
		return DigestSHA256, nil
	case "sha1":
		return DigestSHA1, nil
	case "md5":
		return DigestMD5, nil
	}
	return 0, fmt.Errorf("replication: unknown digest algorithm %q", name)
}

// digest is buf's checksum under alg, folded into 64 bits (a ChecksumRequest
// carries 8 bytes). Unknown codes are refused by the message decoder.
func digest(alg uint8, buf []byte) uint64 {
	switch alg {
	case DigestCRC32C:
		return uint64(crc32.Checksum(buf, castagnoli))
	case DigestSHA256:
		s := sha256.Sum256(buf)
		return binary.BigEndian.Uint64(s[:8])
	case DigestSHA1:
		s := sha1.Sum(buf)
		return binary.BigEndian.Uint64(s[:8])
	case DigestMD5:
		s := md5.Sum(buf)
		return binary.BigEndian.Uint64(s[:8])
	}
	return xxhash.Sum64(buf)
}
