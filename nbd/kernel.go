package nbd

// The kernel attach: connect /dev/nbdN to an export the way nbd-client does
// in ioctl mode. The handshake runs in userspace (NBD_OPT_GO, the same code
// as Client); then the socket and what the handshake told us go to the
// kernel:
//
//	NBD_SET_BLKSIZE, NBD_SET_SIZE_BLOCKS   geometry
//	NBD_SET_FLAGS                          the transmission flags: SEND_FLUSH
//	                                       and SEND_FUA turn on the queue's
//	                                       write cache, so the kernel sends
//	                                       FLUSH and FUA (without them an
//	                                       fsync reaches no disk)
//	NBD_SET_SOCK                           the connected socket
//	NBD_DO_IT                              starts the device and blocks until
//	                                       it is disconnected
//	NBD_CLEAR_SOCK                         drops the socket after DO_IT
//
// No NBD_SET_TIMEOUT: requests never time out, so I/O that the export holds
// (suspend-io, frozen for fencing) waits instead of failing.
//
// go-nbd's client.Connect used to do this. It sends NBD_OPT_GO with an
// option length of 0 followed by the name, which a spec-conforming server
// (ours) rejects with NBD_REP_ERR_INVALID, and it never calls
// NBD_SET_FLAGS. TestKernelTwinbdInGuest (e2e) runs this code in a VM.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Kernel attach errors.
var (
	// ErrNoKernelModule means the /dev/nbdN node is missing: the nbd kernel
	// module is not loaded (or the kernel has none).
	ErrNoKernelModule = errors.New("load the nbd kernel module (modprobe nbd)")
	// ErrNotNBDDevice means the path exists but is not an NBD block device.
	ErrNotNBDDevice = errors.New("not an NBD block device")
	// ErrExportNameRequired means the export name was empty and the server
	// does not list exactly one export.
	ErrExportNameRequired = errors.New("export name required")
)

// ioctl numbers from linux/nbd.h (_IO(0xab, n)).
const (
	ioctlSetSock       = 0xab00
	ioctlSetBlkSize    = 0xab01
	ioctlDoIt          = 0xab03
	ioctlClearSock     = 0xab04
	ioctlClearQue      = 0xab05
	ioctlSetSizeBlocks = 0xab07
	ioctlDisconnect    = 0xab08
	ioctlSetFlags      = 0xab0a
)

// openNBDDevice opens /dev/nbdN read-write with errors an operator can act on.
func openNBDDevice(devPath string) (*os.File, error) {
	fi, err := os.Stat(devPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("nbd: no %s: %w: %w", devPath, ErrNoKernelModule, err)
	}
	if err != nil {
		return nil, fmt.Errorf("nbd: %s: %w", devPath, err)
	}
	if fi.Mode()&fs.ModeDevice == 0 || fi.Mode()&fs.ModeCharDevice != 0 {
		return nil, fmt.Errorf("nbd: %s: %w", devPath, ErrNotNBDDevice)
	}
	f, err := os.OpenFile(devPath, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("nbd: open %s: %w", devPath, err)
	}
	return f, nil
}

// kernelExport is what the kernel is told about the export.
type kernelExport struct {
	blockSize uint32 // a power of two, 512 to 4096 (the kernel's limits)
	blocks    uint64 // size in blockSize units
	flags     uint16 // transmission flags, as the server sent them
}

// kernelBlockSize picks the block size for the kernel: the server's
// preferred size within what the kernel accepts (512 up to the page size,
// 4096 on the machines twinbd runs on) and the server's minimum, halved
// until it divides the export size (so no tail is lost) but not below
// 512 or the minimum.
func kernelBlockSize(size int64, minimum, preferred uint32) (uint32, error) {
	lo := max(minimum, 512)
	bs := min(max(preferred, lo), 4096)
	if bs < lo || bs&(bs-1) != 0 {
		return 0, fmt.Errorf("%w: no block size the kernel accepts (server minimum %d, preferred %d)", ErrProtocol, minimum, preferred)
	}
	for bs > lo && size%int64(bs) != 0 {
		bs /= 2
	}
	return bs, nil
}

// kernelHandshake negotiates exportName on conn (fixed newstyle, NBD_OPT_GO)
// and returns the export's geometry and flags. Nothing may be left in the
// read buffer: the socket goes to the kernel next.
func kernelHandshake(conn net.Conn, exportName string, timeout time.Duration) (kernelExport, error) {
	c, err := newClientConn(conn, exportName, timeout, nil)
	if err != nil {
		return kernelExport{}, err
	}
	if rc, ok := c.conn.(*clientReaderConn); ok && rc.r.Buffered() > 0 {
		return kernelExport{}, fmt.Errorf("%w: %d bytes after the handshake", ErrProtocol, rc.r.Buffered())
	}
	bs, err := kernelBlockSize(c.size, c.minBlock, c.prefBlock)
	if err != nil {
		return kernelExport{}, err
	}
	return kernelExport{blockSize: bs, blocks: uint64(c.size) / uint64(bs), flags: c.flags}, nil
}

func ioctl(f *os.File, req, arg uintptr) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), req, arg); errno != 0 {
		return errno
	}
	return nil
}

// doIt runs NBD_DO_IT on a thread of its own with every signal blocked:
// the kernel shuts the device's sockets down when a signal interrupts
// DO_IT, and a process-directed signal (SIGCHLD of a start-list command)
// may land on any thread that does not block it. The thread is never
// unlocked, so it exits with the goroutine and the mask dies with it.
// (syscall.Setuid and friends signal every thread and wait for each: do not
// call them in a process that holds a device attached.)
// After DO_IT returns, NBD_CLEAR_QUE and NBD_CLEAR_SOCK release the device,
// as nbd-client does.
func doIt(dev *os.File) error {
	runtime.LockOSThread()
	var all unix.Sigset_t
	for i := range all.Val {
		all.Val[i] = ^all.Val[i]
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &all, nil); err != nil {
		return fmt.Errorf("block signals: %w", err)
	}
	err := ioctl(dev, ioctlDoIt, 0)
	_ = ioctl(dev, ioctlClearQue, 0)
	_ = ioctl(dev, ioctlClearSock, 0)
	return err
}

// sysfsSize reads /sys/block/NAME/size (512-byte sectors).
func sysfsSize(name string) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/sys/block", name, "size"))
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// AttachKernel connects the kernel NBD device devPath (/dev/nbdN) to the
// export exportName served at network/addr (see the top of this file). It
// returns once the device is ready (its size is visible in
// /sys/block/nbdN/size). detach disconnects the device and waits for the
// kernel to let go of the socket; it is idempotent. Cancelling ctx before
// the device is ready aborts the attach.
//
// An empty exportName is resolved with NBD_OPT_LIST when the server offers
// exactly one export.
func AttachKernel(ctx context.Context, devPath, network, addr, exportName string) (detach func() error, err error) {
	dev, err := openNBDDevice(devPath)
	if err != nil {
		return nil, err
	}
	name := devPath
	if p, err := filepath.EvalSymlinks(devPath); err == nil {
		name = p
	}
	name = filepath.Base(name)
	fail := func(format string, args ...any) (func() error, error) {
		dev.Close()
		return nil, fmt.Errorf("nbd: attach %s to %s: "+format, append([]any{devPath, addr}, args...)...)
	}
	if exportName == "" {
		names, lerr := List(ctx, network, addr)
		if lerr != nil || len(names) != 1 || names[0] == "" {
			if lerr != nil {
				return fail("%w: %w", ErrExportNameRequired, lerr)
			}
			return fail("%w (server lists %q)", ErrExportNameRequired, names)
		}
		exportName = names[0]
	}

	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return fail("dial: %w", err)
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	deadline, _ := hctx.Deadline()
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(hctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	exp, err := kernelHandshake(conn, exportName, 10*time.Second)
	stop()
	if err != nil {
		conn.Close()
		if cerr := hctx.Err(); cerr != nil {
			return fail("handshake: %w (%w)", err, cerr)
		}
		return fail("handshake: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	// The kernel takes its own reference to the socket: a duplicate of the
	// descriptor that Go's poller does not watch.
	var sock *os.File
	switch c := conn.(type) {
	case *net.TCPConn:
		sock, err = c.File()
	case *net.UnixConn:
		sock, err = c.File()
	default:
		err = fmt.Errorf("%T is not a socket", conn)
	}
	conn.Close()
	if err != nil {
		return fail("%w", err)
	}
	for _, s := range []struct {
		name     string
		req, arg uintptr
	}{
		{"NBD_SET_BLKSIZE", ioctlSetBlkSize, uintptr(exp.blockSize)},
		{"NBD_SET_SIZE_BLOCKS", ioctlSetSizeBlocks, uintptr(exp.blocks)},
		{"NBD_SET_FLAGS", ioctlSetFlags, uintptr(exp.flags)},
		{"NBD_SET_SOCK", ioctlSetSock, sock.Fd()},
	} {
		if err := ioctl(dev, s.req, s.arg); err != nil {
			_ = ioctl(dev, ioctlClearSock, 0)
			sock.Close()
			return fail("%s: %w", s.name, err)
		}
	}

	done := make(chan error, 1) // DO_IT's result: it returns when the device is disconnected
	go func() { done <- doIt(dev) }()
	var once sync.Once
	var detachErr error
	detach = func() error {
		once.Do(func() {
			derr := ioctl(dev, ioctlDisconnect, 0)
			cerr := <-done
			sock.Close()
			dev.Close()
			switch {
			case derr != nil:
				detachErr = fmt.Errorf("nbd: detach %s: NBD_DISCONNECT: %w", devPath, derr)
			case cerr != nil:
				detachErr = fmt.Errorf("nbd: %s: NBD_DO_IT: %w", devPath, cerr)
			}
		})
		return detachErr
	}

	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if sectors, err := sysfsSize(name); err == nil && sectors > 0 {
			return detach, nil
		}
		select {
		case cerr := <-done:
			sock.Close()
			dev.Close()
			if cerr == nil {
				cerr = errors.New("disconnected before ready")
			}
			return nil, fmt.Errorf("nbd: attach %s to %s: NBD_DO_IT: %w", devPath, addr, cerr)
		case <-ctx.Done():
			_ = detach()
			return nil, fmt.Errorf("nbd: attach %s to %s: %w", devPath, addr, ctx.Err())
		case <-tick.C:
		}
	}
}

// DetachKernel disconnects the kernel NBD device devPath, whoever attached
// it (like `nbd-client -d`).
func DetachKernel(devPath string) error {
	dev, err := openNBDDevice(devPath)
	if err != nil {
		return err
	}
	defer dev.Close()
	for _, s := range []struct {
		name string
		req  uintptr
	}{{"NBD_CLEAR_QUE", ioctlClearQue}, {"NBD_DISCONNECT", ioctlDisconnect}, {"NBD_CLEAR_SOCK", ioctlClearSock}} {
		if err := ioctl(dev, s.req, 0); err != nil {
			return fmt.Errorf("nbd: detach %s: %s: %w", devPath, s.name, err)
		}
	}
	return nil
}
