package replication

import (
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/stretchr/testify/require"
)

func TestDigest(t *testing.T) {
	in := []byte("123456789")
	for _, tc := range []struct {
		name string
		alg  uint8
		want uint64
	}{
		{"", DigestXXHash64, xxhash.Sum64(in)},
		{"xxhash64", DigestXXHash64, xxhash.Sum64(in)},
		{"crc32c", DigestCRC32C, 0xe3069283},         // the CRC-32C check value
		{"sha256", DigestSHA256, 0x15e2b0d3c33891eb}, // sha256("123456789") = 15e2b0d3c33891eb...
		{"sha1", DigestSHA1, 0xf7c3bc1d808e0473},     // sha1("123456789") = f7c3bc1d808e0473...
		{"md5", DigestMD5, 0x25f9e794323b4538},       // md5("123456789") = 25f9e794323b4538...
	} {
		alg, err := digestAlg(tc.name)
		require.NoError(t, err)
		require.Equal(t, tc.alg, alg, tc.name)
		require.Equal(t, tc.want, digest(alg, in), tc.name)
	}
	_, err := digestAlg("sha512")
	require.Error(t, err)

	// A request names its algorithm; an unknown one is malformed.
	m := &ChecksumRequestMsg{Offset: 0, Length: 4096, Sum: 1, Alg: DigestSHA256}
	b, err := m.AppendBinary(nil)
	require.NoError(t, err)
	b[len(b)-1] = 9
	require.ErrorIs(t, new(ChecksumRequestMsg).UnmarshalBinary(b), ErrMalformed)
	_, err = (&ChecksumRequestMsg{Length: 4096, Alg: 9}).AppendBinary(nil)
	require.ErrorIs(t, err, ErrMalformed)
}
