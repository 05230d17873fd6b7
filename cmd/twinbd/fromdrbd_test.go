package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDumpFromDRBD: `twinbd dump` on a DRBD 9 resource file exits 0, prints
// twinbd's own file on stdout and the warnings on stderr.
func TestDumpFromDRBD(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "r0.res")
	require.NoError(t, os.WriteFile(conf, []byte(`global { usage-count no; }
common {
  startup { wfc-timeout 15; }
  net { protocol C; allow-two-primaries no; }
}
resource r0 {
  device /dev/drbd0 minor 0;
  disk /dev/vg/r0;
  meta-disk internal;
  on alpha { node-id 0; address 10.1.1.31:7788; }
  on bob   { node-id 1; address ipv4 10.1.1.32:7788; }
  connection-mesh { hosts alpha bob; }
}
`), 0o644))
	r := runBin(t, []string{"--config", conf, "--node", "alpha", "dump", "r0"})
	require.Equal(t, 0, r.code, "stdout:\n%s\nstderr:\n%s", r.out, r.err)
	for _, w := range []string{
		conf + ":1:10: warning: global { usage-count } is DRBD-only and ignored",
		conf + ":3:13: warning: startup { wfc-timeout } is DRBD-only and ignored (twinbd's wait-connect --timeout does this)",
		conf + ":4:21: warning: net { allow-two-primaries } is DRBD-only and ignored (twinbd NEVER allows two Primaries",
		conf + ":7:3: warning: device /dev/drbd0 minor 0 is DRBD's kernel device and ignored",
		conf + ":12:3: warning: connection-mesh is DRBD-only and ignored",
	} {
		require.Contains(t, r.err, w)
	}
	require.Equal(t, 5, strings.Count(r.err, ": warning: "), r.err)
	require.NotContains(t, r.out, "warning")
	require.Contains(t, r.out, "on bob {\n        node-id 1;\n        address 10.1.1.32:7788;\n        disk /dev/vg/r0;\n        meta-disk internal;\n")

	// The dump is twinbd's own resource file: it loads without warnings.
	clean := filepath.Join(dir, "clean.res")
	require.NoError(t, os.WriteFile(clean, []byte(r.out), 0o644))
	r2 := runBin(t, []string{"--config", clean, "--node", "alpha", "dump", "r0"})
	require.Equal(t, 0, r2.code, r2.err)
	require.Equal(t, r.out, r2.out)
}
