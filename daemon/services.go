package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/failover"
	"github.com/twinbd/twinbd/nbd"
	"github.com/twinbd/twinbd/replication"
)

var _ replication.Services = (*failover.Promoter)(nil)

// servicesFor returns what runs on top of rc while this node is Primary: nil
// without a `promoter { }` section, else a failover.Promoter with rc's
// handler environment. When attach-device is yes and this node's `on`
// section has a `device`, the promoter attaches that kernel NBD device to
// this node's own export (export name = resource name) before the start
// list and detaches it after the stop list.
func (d *Daemon) servicesFor(rc *config.Resource) replication.Services {
	if rc.Promoter == nil {
		return nil // a nil *Promoter in the interface would not be nil
	}
	p := failover.NewPromoter(rc.Promoter, d.handlerEnv(rc))
	p.Logger = d.log.With("resource", rc.Name)
	host, err := rc.Host(d.opts.Node)
	if err != nil || host.Device == "" {
		return p
	}
	p.Device = host.Device
	if rc.Promoter.AttachDevice {
		export := rc.ExportFor(host)
		p.Attach = func(ctx context.Context) (func() error, error) {
			if export == "" {
				return nil, fmt.Errorf("attach %s: resource %s has no export address for this node (export IP:PORT in \"on %s\" or at resource level)",
					host.Device, rc.Name, host.Name)
			}
			return nbd.AttachKernel(ctx, host.Device, "tcp", dialAddr(export), rc.Name)
		}
	}
	return p
}

// dialAddr turns a listen address into one this host can dial: a wildcard
// (0.0.0.0, ::) becomes the loopback address of its family.
func dialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		if ip.Is4() {
			host = "127.0.0.1"
		} else {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}
