package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

// knownWireError reports whether err is one of the codec's documented
// outcomes for bad input.
func knownWireError(err error) bool {
	for _, e := range []error{io.EOF, ErrBadMagic, ErrBadVersion, ErrBadChecksum,
		ErrFrameTooLarge, ErrUnknownType, ErrTruncated, ErrMalformed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func addWireSeeds(f *testing.F) {
	for i, m := range wireSamples() {
		var b bytes.Buffer
		require.NoError(f, WriteMessage(&b, uint64(i), m))
		f.Add(b.Bytes())
	}
	f.Add([]byte{})
	f.Add([]byte("TWB1"))
	f.Add(frameHeader(MsgData, 0, 0, math.MaxUint32, 0))
}

// FuzzReadFrame: arbitrary bytes never panic; a frame that reads and decodes
// re-encodes to exactly the bytes consumed.
func FuzzReadFrame(f *testing.F) {
	addWireSeeds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		fr, _, err := ReadFrame(r, nil)
		if err != nil {
			require.True(t, knownWireError(err), "unexpected error %v", err)
			return
		}
		consumed := in[:len(in)-r.Len()]
		var out bytes.Buffer
		require.NoError(t, WriteFrame(&out, &fr))
		require.Equal(t, consumed, out.Bytes())

		m, err := DecodeMessage(fr)
		if err != nil {
			require.ErrorIs(t, err, ErrMalformed)
			return
		}
		require.Equal(t, fr.Type, m.Type())
		p, err := m.AppendBinary(nil)
		require.NoError(t, err)
		require.True(t, bytes.Equal(fr.Payload, p), "re-encoded payload differs")
		if bc, ok := m.(*BitmapChunkMsg); ok {
			words, err := DecodeBitmapRuns(bc.Payload, int(bc.Words))
			if err == nil {
				require.Len(t, words, int(bc.Words))
			}
		}
	})
}

// FuzzUnmarshalMessage reaches the payload decoders directly (ReadFrame's
// checksums keep random bytes from getting that far).
func FuzzUnmarshalMessage(f *testing.F) {
	for _, m := range wireSamples() {
		p, err := m.AppendBinary(nil)
		require.NoError(f, err)
		f.Add(uint16(m.Type()), p)
	}
	// Auth responses of lengths no cram-hmac-alg produces.
	for _, n := range []int{0, 19, 33, 48, 65} {
		f.Add(uint16(MsgAuth), make([]byte, n))
	}
	f.Fuzz(func(t *testing.T, ty uint16, p []byte) {
		m, err := DecodeMessage(Frame{Type: MsgType(ty), Payload: p})
		if err != nil {
			require.True(t, errors.Is(err, ErrMalformed) || errors.Is(err, ErrUnknownType), "%v", err)
			return
		}
		out, err := m.AppendBinary(nil)
		require.NoError(t, err)
		require.True(t, bytes.Equal(p, out), "re-encoded payload differs")
		// The frame carrying it is accepted by both ends.
		var b bytes.Buffer
		require.NoError(t, WriteMessage(&b, 1, m))
		fr, _, err := ReadFrame(&b, nil)
		require.NoError(t, err)
		require.True(t, bytes.Equal(p, fr.Payload), "payload differs after a frame round trip")
	})
}

// FuzzBitmapRuns: arbitrary input never panics and never yields a bitmap of
// another size; arbitrary words round-trip.
func FuzzBitmapRuns(f *testing.F) {
	f.Add(EncodeBitmapRuns([]uint64{1, 2, 3}), uint16(3), []byte{0xff, 0, 0xaa})
	f.Add(EncodeBitmapRuns(make([]uint64, 100)), uint16(100), []byte{})
	f.Add([]byte("garbage"), uint16(1), bytes.Repeat([]byte{0xff}, 64))
	f.Fuzz(func(t *testing.T, enc []byte, nwords uint16, raw []byte) {
		words, err := DecodeBitmapRuns(enc, int(nwords))
		if err != nil {
			require.ErrorIs(t, err, ErrMalformed)
			require.Nil(t, words)
		} else {
			require.Len(t, words, int(nwords))
			again, err := DecodeBitmapRuns(EncodeBitmapRuns(words), int(nwords))
			require.NoError(t, err)
			require.Equal(t, words, again)
		}

		in := make([]uint64, len(raw)/8)
		for i := range in {
			in[i] = binary.LittleEndian.Uint64(raw[8*i:])
		}
		got, err := DecodeBitmapRuns(EncodeBitmapRuns(in), len(in))
		require.NoError(t, err)
		require.Equal(t, in, got)
	})
}
