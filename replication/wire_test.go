package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/stretchr/testify/require"
)

// wireSamples has at least one message of every type, with non-zero fields
// where the type has any.
func wireSamples() []Message {
	var ch, resp [32]byte
	for i := range ch {
		ch[i] = byte(i + 1)
		resp[i] = byte(255 - i)
	}
	return []Message{
		&HelloMsg{Version: 1, Resource: "r0", NodeID: 7, Challenge: ch},
		&HelloMsg{Resource: ""},
		&AuthMsg{Response: resp[:]},
		&AuthMsg{Response: bytes.Repeat([]byte{0x5a}, 20)},
		&AuthMsg{Response: bytes.Repeat([]byte{0xa5}, 64)},
		&AuthOKMsg{},
		&StateMsg{Role: 2, Disk: 8, Size: 1 << 40, Granularity: 4096, Current: 0xdeadbeef,
			Bitmap: 0xfeed, History: [2]uint64{3, 4}, Flags: StateCrashedPrimary | StateDiscardMyData, Dirty: 12345},
		&DataMsg{Seq: 99, Offset: 4096, Flags: DataFUA, Payload: bytes.Repeat([]byte{0xab}, 4096)},
		&DataMsg{Seq: 1, Offset: 0, Payload: []byte{}},
		&RecvAckMsg{Seq: 5},
		&WriteAckMsg{Seq: math.MaxUint64},
		&NegAckMsg{Seq: 6, Errno: 5},
		&BarrierMsg{Epoch: 10},
		&BarrierAckMsg{Epoch: 11},
		&TrimMsg{Seq: 12, Offset: 8192, Length: 1 << 20, Zero: true},
		&TrimMsg{Seq: 13, Offset: 0, Length: 4096},
		&BitmapChunkMsg{Offset: 128, Words: 3, Last: true, Payload: EncodeBitmapRuns([]uint64{1, 0, math.MaxUint64})},
		&ResyncRequestMsg{Offset: 1 << 30, Length: 1 << 20},
		&ResyncDataMsg{Seq: 9, Offset: 512, Length: 6, Payload: []byte("resync")},
		&ResyncDataMsg{Seq: 10, Offset: 4096, Length: 1 << 20, Flags: ResyncZero, Payload: []byte{}},
		&ChecksumRequestMsg{Offset: 4096, Length: 4096, Sum: 0x1234},
		&ChecksumRequestMsg{Offset: 4096, Length: 4096, Sum: 0x1234, Alg: DigestSHA256},
		&ChecksumReplyMsg{Offset: 4096, Length: 4096, Same: true},
		&PingMsg{},
		&PingAckMsg{},
		&OutdatePeerMsg{},
		&DisconnectMsg{Reason: "operator said so ✓"},
		&ReadRequestMsg{Offset: 8192, Length: 65536},
		&ReadReplyMsg{Payload: []byte("peer data")},
		&ReadReplyMsg{Errno: 5, Payload: []byte{}},
		&ResizeMsg{Size: 1 << 40, MarkOff: 1 << 30, MarkLen: 1 << 20, Flags: ResizeAssumeClean},
		&ResizeMsg{Flags: ResizeProbe},
		&ResizeReplyMsg{Size: 64 << 20, Capacity: 1 << 40, MDOffset: 67 << 20, MDEnd: 68 << 20, Reason: "metadata device too small"},
		&ResizeReplyMsg{Size: 1, Failed: true, Reason: "I/O error"},
		&SyncStartMsg{Offset: 4096, Length: 1 << 30},
	}
}

func TestWireMsgTypeString(t *testing.T) {
	for ty := MsgHello; ty < msgTypeEnd; ty++ {
		require.NotEmpty(t, msgNames[ty], "type %d has no name", ty)
		require.Equal(t, msgNames[ty], ty.String())
		require.LessOrEqual(t, maxPayloadFor[ty], uint32(MaxPayload))
	}
	require.Equal(t, "MsgType(0)", MsgType(0).String())
	require.Equal(t, "MsgType(999)", MsgType(999).String())
}

func TestWireRoundTripEveryType(t *testing.T) {
	seen := map[MsgType]bool{}
	var stream bytes.Buffer
	samples := wireSamples()
	for i, m := range samples {
		seen[m.Type()] = true
		t.Run(m.Type().String(), func(t *testing.T) {
			var b bytes.Buffer
			require.NoError(t, WriteMessage(&b, uint64(i), m))
			require.NoError(t, WriteMessage(&stream, uint64(i), m))
			enc := bytes.Clone(b.Bytes())

			f, _, err := ReadFrame(&b, nil)
			require.NoError(t, err)
			require.Equal(t, m.Type(), f.Type)
			require.Equal(t, uint64(i), f.Seq)
			got, err := DecodeMessage(f)
			require.NoError(t, err)
			require.Equal(t, m, got)

			// Re-encoding gives the same bytes.
			var b2 bytes.Buffer
			require.NoError(t, WriteMessage(&b2, uint64(i), got))
			require.Equal(t, enc, b2.Bytes())
		})
	}
	for ty := MsgHello; ty < msgTypeEnd; ty++ {
		require.True(t, seen[ty], "no sample for %v", ty)
	}

	// A stream of frames reads back in order with one reused buffer, then EOF.
	buf := make([]byte, 0, 16)
	for i, m := range samples {
		var f Frame
		var err error
		f, buf, err = ReadFrame(&stream, buf)
		require.NoError(t, err)
		require.Equal(t, uint64(i), f.Seq)
		got, err := DecodeMessage(f)
		require.NoError(t, err)
		require.Equal(t, m, got)
	}
	_, _, err := ReadFrame(&stream, buf)
	require.ErrorIs(t, err, io.EOF)
}

func sampleFrame(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, WriteMessage(&b, 42, &DataMsg{Seq: 3, Offset: 512, Flags: DataFUA, Payload: []byte("hello, peer")}))
	return b.Bytes()
}

func TestWireFrameCorruptionEveryByte(t *testing.T) {
	good := sampleFrame(t)
	for i := range good {
		for _, mask := range []byte{0x01, 0x80, 0xff} {
			bad := bytes.Clone(good)
			bad[i] ^= mask
			_, _, err := ReadFrame(bytes.NewReader(bad), nil)
			require.Error(t, err, "byte %d mask %#x accepted", i, mask)
			switch {
			case i < 4:
				require.ErrorIs(t, err, ErrBadMagic, "byte %d", i)
			case i < 6:
				require.ErrorIs(t, err, ErrBadVersion, "byte %d", i)
			default:
				require.ErrorIs(t, err, ErrBadChecksum, "byte %d", i)
			}
		}
	}
}

// frameHeader builds a header with a valid header checksum, so tests can
// reach the checks behind it.
func frameHeader(ty MsgType, flags, reserved uint16, length uint32, payloadSum uint64) []byte {
	hdr := make([]byte, HeaderSize)
	binary.BigEndian.PutUint32(hdr[0:], FrameMagic)
	binary.BigEndian.PutUint16(hdr[4:], ProtocolVersion)
	binary.BigEndian.PutUint16(hdr[6:], uint16(ty))
	binary.BigEndian.PutUint16(hdr[8:], flags)
	binary.BigEndian.PutUint16(hdr[10:], reserved)
	binary.BigEndian.PutUint32(hdr[12:], length)
	binary.BigEndian.PutUint64(hdr[24:], payloadSum)
	binary.BigEndian.PutUint64(hdr[32:], xxhash.Sum64(hdr[:32]))
	return hdr
}

func TestWireFrameHeaderFields(t *testing.T) {
	empty := xxhash.Sum64(nil)
	cases := []struct {
		name string
		hdr  []byte
		want error
	}{
		{"unknown type 0", frameHeader(0, 0, 0, 0, empty), ErrUnknownType},
		{"unknown type", frameHeader(msgTypeEnd, 0, 0, 0, empty), ErrUnknownType},
		{"flags", frameHeader(MsgPing, 1, 0, 0, empty), ErrMalformed},
		{"reserved", frameHeader(MsgPing, 0, 0x100, 0, empty), ErrMalformed},
		{"ping with payload", frameHeader(MsgPing, 0, 0, 1, empty), ErrFrameTooLarge},
		{"state too long", frameHeader(MsgState, 0, 0, stateSize+1, empty), ErrFrameTooLarge},
		{"payload sum", frameHeader(MsgPing, 0, 0, 0, empty+1), ErrBadChecksum},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ReadFrame(bytes.NewReader(tc.hdr), nil)
			require.ErrorIs(t, err, tc.want)
		})
	}
	f, _, err := ReadFrame(bytes.NewReader(frameHeader(MsgPing, 0, 0, 0, empty)), nil)
	require.NoError(t, err)
	require.Equal(t, MsgPing, f.Type)
}

func TestWireFrameTruncatedEveryOffset(t *testing.T) {
	good := sampleFrame(t)
	_, _, err := ReadFrame(bytes.NewReader(nil), nil)
	require.ErrorIs(t, err, io.EOF, "empty stream is a clean EOF")
	require.NotErrorIs(t, err, ErrTruncated)
	for n := 1; n < len(good); n++ {
		_, _, err := ReadFrame(bytes.NewReader(good[:n]), nil)
		require.ErrorIs(t, err, ErrTruncated, "cut at %d", n)
		require.ErrorIs(t, err, io.ErrUnexpectedEOF, "cut at %d", n)
	}
	_, _, err = ReadFrame(bytes.NewReader(good), nil)
	require.NoError(t, err)
}

// countingReader records how many bytes were asked for and returned.
type countingReader struct {
	r    io.Reader
	read int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += n
	return n, err
}

func TestWireFrameTooLargeBeforeAllocation(t *testing.T) {
	for _, ty := range []MsgType{MsgData, MsgResyncData, MsgPing} {
		// 4 GiB - 1 claimed, and an endless stream behind it.
		hdr := frameHeader(ty, 0, 0, math.MaxUint32, 0)
		cr := &countingReader{r: io.MultiReader(bytes.NewReader(hdr), zeroReader{})}
		start := time.Now()
		ms1 := memAlloc()
		_, _, err := ReadFrame(cr, nil)
		ms2 := memAlloc()
		require.ErrorIs(t, err, ErrFrameTooLarge, "%v", ty)
		require.Equal(t, HeaderSize, cr.read, "read past the header")
		require.Less(t, time.Since(start), time.Second)
		require.Less(t, ms2-ms1, uint64(1<<20), "allocated %d bytes", ms2-ms1)
	}

	// The largest allowed claim with a short stream allocates with what
	// arrives, not with the claim.
	hdr := frameHeader(MsgData, 0, 0, dataFixed+MaxDataSize, 0)
	before := memAlloc()
	_, _, err := ReadFrame(io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(make([]byte, 100))), nil)
	after := memAlloc()
	require.ErrorIs(t, err, ErrTruncated)
	require.Less(t, after-before, uint64(8<<20), "allocated %d bytes for a 100-byte payload", after-before)

	// WriteFrame refuses what ReadFrame would refuse.
	err = WriteFrame(io.Discard, &Frame{Type: MsgPing, Payload: []byte{1}})
	require.ErrorIs(t, err, ErrFrameTooLarge)
	err = WriteFrame(io.Discard, &Frame{Type: 0})
	require.ErrorIs(t, err, ErrUnknownType)
	err = WriteFrame(io.Discard, &Frame{Type: MsgPing, Flags: 1})
	require.ErrorIs(t, err, ErrMalformed)
}

func TestWireFrameLargeData(t *testing.T) {
	// A payload bigger than the growth step exercises the chunked read.
	data := make([]byte, 3*readChunk+17)
	for i := range data {
		data[i] = byte(i * 7)
	}
	var b bytes.Buffer
	require.NoError(t, WriteMessage(&b, 1, &DataMsg{Seq: 1, Offset: 1 << 20, Payload: data}))
	f, _, err := ReadFrame(&b, make([]byte, 0, 10))
	require.NoError(t, err)
	m, err := DecodeMessage(f)
	require.NoError(t, err)
	require.Equal(t, data, m.(*DataMsg).Payload)
}

// memAlloc is the cumulative bytes allocated by the process so far.
func memAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestWireFrameReadError(t *testing.T) {
	boom := errors.New("boom")
	_, _, err := ReadFrame(io.MultiReader(bytes.NewReader(sampleFrame(t)[:10]), errReader{boom}), nil)
	require.ErrorIs(t, err, boom)
	require.NotErrorIs(t, err, ErrTruncated)
	err = WriteFrame(errWriter{boom}, &Frame{Type: MsgPing})
	require.ErrorIs(t, err, boom)
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

type errWriter struct{ err error }

func (e errWriter) Write([]byte) (int, error) { return 0, e.err }

func TestWireMalformedPayloads(t *testing.T) {
	stateOK, err := (&StateMsg{Granularity: 4096}).AppendBinary(nil)
	require.NoError(t, err)
	stateBadFlags := bytes.Clone(stateOK)
	binary.BigEndian.PutUint32(stateBadFlags[stateSize-12:], 1<<31)
	stateBadGran := bytes.Clone(stateOK)
	binary.BigEndian.PutUint32(stateBadGran[10:], 4095)
	trimOK, err := (&TrimMsg{Offset: 1, Length: 2}).AppendBinary(nil)
	require.NoError(t, err)
	trimBadBool := bytes.Clone(trimOK)
	trimBadBool[len(trimBadBool)-1] = 2
	negOff := binary.BigEndian.AppendUint64(nil, 1)
	negOff = binary.BigEndian.AppendUint64(negOff, uint64(1<<63))
	negOff = append(negOff, 0, 0, 0, 0)
	overflow := binary.BigEndian.AppendUint64(nil, math.MaxInt64)
	overflow = binary.BigEndian.AppendUint64(overflow, 2)
	hello, err := (&HelloMsg{Resource: "abc"}).AppendBinary(nil)
	require.NoError(t, err)
	helloBadUTF8 := bytes.Clone(hello)
	helloBadUTF8[len(helloBadUTF8)-1] = 0xff
	bitmapBad := binary.BigEndian.AppendUint64(nil, 65)
	bitmapBad = append(bitmapBad, 0, 0, 0, 1, 0)

	cases := []struct {
		name string
		ty   MsgType
		p    []byte
	}{
		{"ping with byte", MsgPing, []byte{0}},
		{"authok with byte", MsgAuthOK, []byte{0}},
		{"auth empty", MsgAuth, nil},
		{"auth 19", MsgAuth, make([]byte, 19)},
		{"auth 21", MsgAuth, make([]byte, 21)},
		{"auth short", MsgAuth, make([]byte, 31)},
		{"auth long", MsgAuth, make([]byte, 33)},
		{"auth 48", MsgAuth, make([]byte, 48)},
		{"auth 63", MsgAuth, make([]byte, 63)},
		{"auth 65", MsgAuth, make([]byte, 65)},
		{"state short", MsgState, stateOK[:stateSize-1]},
		{"state long", MsgState, append(bytes.Clone(stateOK), 0)},
		{"state unknown flag", MsgState, stateBadFlags},
		{"state granularity", MsgState, stateBadGran},
		{"data short", MsgData, make([]byte, dataFixed-1)},
		{"data negative offset", MsgData, negOff},
		{"data unknown flag", MsgData, append(make([]byte, 16), 0, 0, 0, 2)},
		{"recvack short", MsgRecvAck, make([]byte, 7)},
		{"writeack long", MsgWriteAck, make([]byte, 9)},
		{"negack short", MsgNegAck, make([]byte, 11)},
		{"barrier short", MsgBarrier, nil},
		{"barrierack long", MsgBarrierAck, make([]byte, 16)},
		{"trim bool 2", MsgTrim, trimBadBool},
		{"trim short", MsgTrim, trimOK[:len(trimOK)-1]},
		{"bitmap unaligned", MsgBitmapChunk, bitmapBad},
		{"bitmap short", MsgBitmapChunk, make([]byte, bitmapFixed-1)},
		{"resync request overflow", MsgResyncRequest, overflow},
		{"resync data short", MsgResyncData, make([]byte, resyncFixed-1)},
		{"checksum request short", MsgChecksumRequest, make([]byte, 23)},
		{"checksum reply bool", MsgChecksumReply, append(make([]byte, 16), 3)},
		{"hello short", MsgHello, hello[:len(hello)-1]},
		{"hello long", MsgHello, append(bytes.Clone(hello), 0)},
		{"hello bad utf8", MsgHello, helloBadUTF8},
		{"disconnect empty", MsgDisconnect, nil},
		{"disconnect length past end", MsgDisconnect, []byte{0, 5, 'a'}},
		{"disconnect too long", MsgDisconnect, append([]byte{0xff, 0xff}, make([]byte, 0xffff)...)},
		{"read request short", MsgReadRequest, make([]byte, 15)},
		{"read request too large", MsgReadRequest, binary.BigEndian.AppendUint64(make([]byte, 8), MaxDataSize+1)},
		{"read reply short", MsgReadReply, []byte{0, 0, 5}},
		{"read reply errno with data", MsgReadReply, []byte{0, 0, 0, 5, 'x'}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeMessage(Frame{Type: tc.ty, Payload: tc.p})
			require.ErrorIs(t, err, ErrMalformed)
		})
	}
	_, err = DecodeMessage(Frame{Type: 0})
	require.ErrorIs(t, err, ErrUnknownType)

	// Encoding refuses what decoding would refuse.
	bad := []Message{
		&StateMsg{Size: -1},
		&StateMsg{Granularity: 3},
		&StateMsg{Flags: 1 << 30},
		&DataMsg{Offset: -1},
		&DataMsg{Flags: 1 << 5},
		&TrimMsg{Offset: math.MaxInt64, Length: 1},
		&BitmapChunkMsg{Offset: 3},
		&BitmapChunkMsg{Words: MaxBitmapChunkWords + 1},
		&ResyncRequestMsg{Length: -1},
		&ResyncDataMsg{Offset: -5},
		&ResyncDataMsg{Length: 3, Payload: []byte("ab")},
		&ResyncDataMsg{Length: 3, Flags: ResyncZero, Payload: []byte("abc")},
		&ResyncDataMsg{Length: 3, Flags: ResyncZero | ResyncZstd},
		&ResyncDataMsg{Length: MaxDataSize + 1, Flags: ResyncZero},
		&ChecksumRequestMsg{Offset: -1},
		&ChecksumReplyMsg{Length: -1},
		&HelloMsg{Resource: string(make([]byte, MaxStringLen+1))},
		&AuthMsg{},
		&AuthMsg{Response: make([]byte, 48)},
		&AuthMsg{Response: make([]byte, 65)},
		&DisconnectMsg{Reason: "\xff"},
		&ReadRequestMsg{Offset: -1, Length: 1},
		&ReadRequestMsg{Length: MaxDataSize + 1},
		&ReadReplyMsg{Errno: 5, Payload: []byte("x")},
	}
	for _, m := range bad {
		_, err := EncodeMessage(0, m)
		require.ErrorIs(t, err, ErrMalformed, "%#v", m)
	}
}

func bitmapCases(r *rand.Rand) map[string][]uint64 {
	random := make([]uint64, 1000)
	sparse := make([]uint64, 5000)
	for i := range random {
		random[i] = r.Uint64()
	}
	for range 50 {
		sparse[r.IntN(len(sparse))] |= 1 << r.IntN(64)
	}
	ones := make([]uint64, 777)
	alt := make([]uint64, 300)
	altWords := make([]uint64, 301)
	for i := range ones {
		ones[i] = math.MaxUint64
	}
	for i := range alt {
		alt[i] = 0xaaaaaaaaaaaaaaaa
	}
	for i := range altWords {
		if i%2 == 1 {
			altWords[i] = math.MaxUint64
		}
	}
	return map[string][]uint64{
		"empty":           {},
		"one zero word":   {0},
		"one one word":    {math.MaxUint64},
		"top bit":         {1 << 63},
		"random":          random,
		"sparse":          sparse,
		"all zero":        make([]uint64, 4096),
		"all one":         ones,
		"alternating":     alt,
		"alternate words": altWords,
	}
}

func TestWireBitmapRunsRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for name, words := range bitmapCases(r) {
		t.Run(name, func(t *testing.T) {
			enc := EncodeBitmapRuns(words)
			got, err := DecodeBitmapRuns(enc, len(words))
			require.NoError(t, err)
			require.Len(t, got, len(words))
			require.Equal(t, words, got[:len(words):len(words)])
			if len(words) > 0 {
				_, err = DecodeBitmapRuns(enc, len(words)-1)
				require.ErrorIs(t, err, ErrMalformed, "fewer words")
			}
			_, err = DecodeBitmapRuns(enc, len(words)+1)
			require.ErrorIs(t, err, ErrMalformed, "more words")
		})
	}
	// The largest chunk, incompressible, still decodes within the bounds.
	big := make([]uint64, MaxBitmapChunkWords)
	for i := range big {
		big[i] = r.Uint64()
	}
	enc := EncodeBitmapRuns(big)
	got, err := DecodeBitmapRuns(enc, len(big))
	require.NoError(t, err)
	require.Equal(t, big, got)
	m := &BitmapChunkMsg{Words: MaxBitmapChunkWords, Payload: enc}
	var b bytes.Buffer
	require.NoError(t, WriteMessage(&b, 1, m))
	f, _, err := ReadFrame(&b, nil)
	require.NoError(t, err)
	_, err = DecodeMessage(f)
	require.NoError(t, err)

	zeros := EncodeBitmapRuns(make([]uint64, 1<<16))
	require.Less(t, len(zeros), 64, "all-zero bitmap compresses")
}

// rawBody zstd-compresses a hand-made body for DecodeBitmapRuns.
func rawBody(body []byte) []byte { return zEnc().EncodeAll(body, nil) }

func TestWireBitmapRunsRejects(t *testing.T) {
	runs := func(format byte, ns ...uint64) []byte {
		b := []byte{format}
		for _, n := range ns {
			b = binary.AppendUvarint(b, n)
		}
		return rawBody(b)
	}
	cases := []struct {
		name   string
		b      []byte
		nwords int
	}{
		{"not zstd", []byte("hello"), 1},
		{"empty input", nil, 1},
		{"empty body", rawBody(nil), 0},
		{"unknown format", rawBody([]byte{'X'}), 0},
		{"run past end", runs('R', 65), 1},
		{"runs past end", runs('R', 60, 5), 1},
		{"runs short", runs('R', 0, 63), 1},
		{"huge run", runs('R', math.MaxUint64), 1},
		{"zero run not first", runs('R', 10, 0, 54), 1},
		{"bad uvarint", rawBody([]byte{'R', 0x80}), 1},
		{"words short", rawBody([]byte{'W', 1, 2, 3}), 1},
		{"words long", rawBody(append([]byte{'W'}, make([]byte, 16)...)), 1},
		{"negative nwords", runs('R'), -1},
		{"nwords too large", runs('R'), MaxBitmapChunkWords + 1},
		// Decompresses past 1+8*nwords: refused by the size bound.
		{"body too large", rawBody(append([]byte{'R'}, bytes.Repeat([]byte{1}, 1000)...)), 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeBitmapRuns(tc.b, tc.nwords)
			require.ErrorIs(t, err, ErrMalformed)
			require.Nil(t, got)
		})
	}
	// Hand-made runs that are valid decode as expected.
	got, err := DecodeBitmapRuns(runs('R', 0, 1, 62, 1), 1)
	require.NoError(t, err)
	require.Equal(t, []uint64{1 | 1<<63}, got)
	got, err = DecodeBitmapRuns(runs('R', 64, 64), 2)
	require.NoError(t, err)
	require.Equal(t, []uint64{0, math.MaxUint64}, got)
}

func TestResyncDataEncoding(t *testing.T) {
	zero := make([]byte, 64<<10)
	text := bytes.Repeat([]byte("twinbd resync "), 4096)
	random := make([]byte, 64<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	for _, tc := range []struct {
		name  string
		p     []byte
		flags uint32
	}{{"zero", zero, ResyncZero}, {"text", text, ResyncZstd}, {"random", random, 0}} {
		m := ResyncDataMsg{Seq: 1, Offset: 8192}
		EncodeResyncData(&m, tc.p)
		if m.Flags != tc.flags {
			t.Fatalf("%s: flags %#x, want %#x", tc.name, m.Flags, tc.flags)
		}
		f, err := EncodeMessage(1, &m)
		if err != nil {
			t.Fatal(err)
		}
		dm, err := DecodeMessage(f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeResyncPayload(dm.(*ResyncDataMsg), nil)
		if err != nil || !bytes.Equal(got, tc.p) {
			t.Fatalf("%s: round trip differs (err %v)", tc.name, err)
		}
	}
	// A zstd payload that decodes to a different length is refused.
	m := ResyncDataMsg{Length: int64(len(text))}
	EncodeResyncData(&m, text)
	m.Length--
	if _, err := DecodeResyncPayload(&m, nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short length: %v", err)
	}
}
