package replication

import (
	"bytes"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// The frameWriter's zero-copy Data frames are byte for byte what
// WriteFrame writes, and concurrent senders never interleave frames.
func TestFrameWriterFramesAndBatching(t *testing.T) {
	var want bytes.Buffer
	m := &DataMsg{Seq: 7, Offset: 4096, Flags: DataFUA, Payload: bytes.Repeat([]byte("x"), 5000)}
	require.NoError(t, WriteMessage(&want, 3, m))
	var got bytes.Buffer
	w := newFrameWriter(&got, 1024)
	require.NoError(t, w.send(3, m))
	require.Equal(t, want.Bytes(), got.Bytes())

	got.Reset()
	var mu sync.Mutex
	w = newFrameWriter(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return got.Write(p)
	}), 4096)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				if i%2 == 0 {
					require.NoError(t, w.send(uint64(g), &WriteAckMsg{Seq: uint64(i)}))
				} else {
					require.NoError(t, w.send(uint64(g), &DataMsg{Seq: uint64(i), Payload: bytes.Repeat([]byte{byte(g)}, 100*i)}))
				}
			}
		})
	}
	wg.Wait()
	n := 0
	for {
		f, _, err := ReadFrame(&got, nil)
		if err != nil {
			break
		}
		_, err = DecodeMessage(f)
		require.NoError(t, err)
		n++
	}
	require.Equal(t, 8*200, n, "every frame intact and flushed")
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
