package main

import (
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/twinbd/twinbd/internal/netfault"
)

// newCutProxy forwards to target until Cut (a partition of one link).
func newCutProxy(t *testing.T, target string) *netfault.CutProxy {
	p, err := netfault.NewCutProxy(target)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	return p
}
