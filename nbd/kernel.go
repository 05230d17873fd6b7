package nbd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"sync"
	"time"

	nbdclient "github.com/pojntfx/go-nbd/pkg/client"
)

// Kernel attach errors.
var (
	// ErrNoKernelModule means the /dev/nbdN node is missing: the nbd kernel
	// module is not loaded (or the kernel has none).
	ErrNoKernelModule = errors.New("load the nbd kernel module (modprobe nbd)")
	// ErrNotNBDDevice means the path exists but is not an NBD block device.
	ErrNotNBDDevice = errors.New("not an NBD block device")
	// ErrExportNameRequired means the export name was empty and the server
	// does not list exactly one export (go-nbd cannot send an empty name).
	ErrExportNameRequired = errors.New("export name required")
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

// AttachKernel connects the kernel NBD device devPath (/dev/nbdN) to the
// export exportName served at network/addr, through go-nbd's client (which
// hands the socket to the kernel with ioctls). It returns once the device is
// ready (its size is visible in /sys/block/nbdN/size). detach disconnects
// the device and waits for the kernel to let go of the socket; it is
// idempotent. Cancelling ctx before the device is ready aborts the attach.
//
// An empty exportName is resolved with NBD_OPT_LIST when the server offers
// exactly one export: go-nbd would otherwise send the name "default".
func AttachKernel(ctx context.Context, devPath, network, addr, exportName string) (detach func() error, err error) {
	dev, err := openNBDDevice(devPath)
	if err != nil {
		return nil, err
	}
	if exportName == "" {
		names, lerr := List(ctx, network, addr)
		if lerr != nil || len(names) != 1 || names[0] == "" {
			dev.Close()
			if lerr != nil {
				return nil, fmt.Errorf("nbd: attach %s: %w: %w", devPath, ErrExportNameRequired, lerr)
			}
			return nil, fmt.Errorf("nbd: attach %s: %w (server lists %q)", devPath, ErrExportNameRequired, names)
		}
		exportName = names[0]
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("nbd: attach %s: dial %s: %w", devPath, addr, err)
	}

	ready := make(chan struct{})
	var readyOnce sync.Once
	done := make(chan error, 1) // Connect's result: it returns when the device is disconnected
	go func() {
		done <- nbdclient.Connect(conn, dev, &nbdclient.Options{
			ExportName:             exportName,
			OnConnected:            func() { readyOnce.Do(func() { close(ready) }) },
			ReadyCheckPollInterval: 5 * time.Millisecond,
		})
	}()

	var once sync.Once
	var detachErr error
	detach = func() error {
		once.Do(func() {
			derr := nbdclient.Disconnect(dev)
			cerr := <-done
			conn.Close()
			dev.Close()
			if derr != nil {
				detachErr = fmt.Errorf("nbd: detach %s: %w", devPath, derr)
			} else if cerr != nil {
				detachErr = fmt.Errorf("nbd: %s: %w", devPath, cerr)
			}
		})
		return detachErr
	}

	select {
	case <-ready:
		return detach, nil
	case cerr := <-done:
		conn.Close()
		dev.Close()
		if cerr == nil {
			cerr = errors.New("disconnected before ready")
		}
		return nil, fmt.Errorf("nbd: attach %s to %s: %w", devPath, addr, cerr)
	case <-ctx.Done():
		_ = detach()
		return nil, fmt.Errorf("nbd: attach %s to %s: %w", devPath, addr, ctx.Err())
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
	if err := nbdclient.Disconnect(dev); err != nil {
		return fmt.Errorf("nbd: detach %s: %w", devPath, err)
	}
	return nil
}
