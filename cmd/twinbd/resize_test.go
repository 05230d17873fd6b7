package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestResizeParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"": 0, "2048": 2048 * 512, "8s": 4096, "64K": 64 << 10, "64k": 64 << 10,
		"100M": 100 << 20, "3G": 3 << 30, "2T": 2 << 40,
	} {
		got, err := parseSize(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, bad := range []string{"lots", "M", "-5G", "0", "1.5G", "99999999999T"} {
		_, err := parseSize(bad)
		require.ErrorContains(t, err, "--size", bad)
	}
}
