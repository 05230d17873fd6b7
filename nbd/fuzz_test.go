package nbd

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/twinbd/twinbd/device"
)

// fuzzServe feeds input to a fresh server over net.Pipe after the client
// flags, drains whatever the server answers, and requires the server to end
// the connection within a deadline once the input is exhausted.
func fuzzServe(t *testing.T, input []byte) {
	exp := NewDeviceExport(device.NewMemory(1<<20), false)
	ro := NewDeviceExport(device.NewMemory(64<<10), true)
	s := NewServer(ServerConfig{
		Exports:          StaticResolver{"": exp, "ro": ro, "default": exp},
		MaxInflight:      8,
		MaxRequest:       64 << 10,
		HandshakeTimeout: 5 * time.Second,
	})
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		s.ServeConn(server)
		close(done)
	}()
	drained := make(chan struct{})
	go func() {
		io.Copy(io.Discard, client)
		close(drained)
	}()
	client.SetDeadline(time.Now().Add(5 * time.Second))
	client.Write(input) // fails early if the server hangs up: fine
	client.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not finish the connection")
	}
	<-drained
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func fuzzOpt(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, MagicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func fuzzReq(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, MagicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

var fuzzClientFlags = binary.BigEndian.AppendUint32(nil, ClientFlagFixedNewstyle|ClientFlagNoZeroes)

// FuzzOptions: arbitrary bytes after the greeting (client flags included).
func FuzzOptions(f *testing.F) {
	f.Add(cat(fuzzClientFlags, fuzzOpt(OptList, nil), fuzzOpt(OptAbort, nil)))
	f.Add(cat(fuzzClientFlags, fuzzOpt(OptInfo, rawInfoGoData("ro", InfoName, InfoBlockSize)), fuzzOpt(OptGo, rawInfoGoData("", InfoDescription))))
	f.Add(cat(fuzzClientFlags, fuzzOpt(OptExportName, []byte("default"))))
	f.Add(cat(fuzzClientFlags, fuzzOpt(OptStructuredReply, nil), fuzzOpt(OptStartTLS, nil), fuzzOpt(99, []byte("junk"))))
	f.Add(cat(fuzzClientFlags, fuzzOpt(OptGo, []byte{0, 0, 0, 9, 1, 2})))
	f.Add(cat(fuzzClientFlags, fuzzOpt(OptGo, make([]byte, maxOptionLen+1))))
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, input []byte) { fuzzServe(t, input) })
}

// FuzzRequests: arbitrary bytes in the transmission phase.
func FuzzRequests(f *testing.F) {
	enter := cat(fuzzClientFlags, fuzzOpt(OptGo, rawInfoGoData("")))
	f.Add(fuzzReq(CmdRead, 0, 1, 0, 4096, nil))
	f.Add(cat(fuzzReq(CmdWrite, CmdFlagFUA, 1, 4095, 3, []byte("abc")), fuzzReq(CmdFlush, 0, 2, 0, 0, nil), fuzzReq(CmdDisc, 0, 3, 0, 0, nil)))
	f.Add(cat(fuzzReq(CmdTrim, 0, 1, 0, 1<<20, nil), fuzzReq(CmdWriteZeroes, CmdFlagNoHole, 2, 1<<20-1, 1, nil)))
	f.Add(fuzzReq(CmdWrite, 0, 1, 1<<64-1, 1<<31, nil))
	f.Add(fuzzReq(CmdWrite, 0, 1, 0, 64<<10+1, make([]byte, 100)))
	f.Add(fuzzReq(77, 0xffff, 1, 0, 0, nil))
	f.Add(cat(fuzzReq(CmdRead, 0, 1, 0, 512, nil), []byte("garbage garbage garbage garbage")))
	f.Fuzz(func(t *testing.T, input []byte) { fuzzServe(t, cat(enter, input)) })
}
