package replication

import (
	"fmt"

	"github.com/twinbd/twinbd/bitmap"
	"github.com/twinbd/twinbd/config"
	"github.com/twinbd/twinbd/device"
)

// CreateMetadata writes fresh metadata for res on node's backing disk
// (internal or external per meta-disk). It refuses to overwrite valid
// metadata unless force. The disk starts Inconsistent with no generation.
// The caller makes sure the resource is not up.
func CreateMetadata(res *config.Resource, node string, force bool) (bitmap.Layout, error) {
	return createMetadata(res, node, force, nil)
}

func createMetadata(res *config.Resource, node string, force bool, dev device.Device) (bitmap.Layout, error) {
	host, err := res.Host(node)
	if err != nil {
		return bitmap.Layout{}, err
	}
	_, md, closers, lay, _, err := openBacking(res, host, dev, false, false)
	if err != nil {
		return lay, err
	}
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	sb := bitmap.Superblock{Resource: res.Name, NodeID: uint32(host.NodeID)}
	if _, err := bitmap.Create(md, lay, sb, force); err != nil {
		return lay, fmt.Errorf("create-md %s on %s: %w", res.Name, host.Disk, err)
	}
	return lay, nil
}
