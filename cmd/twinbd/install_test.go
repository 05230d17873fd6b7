package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// make install puts the static binary, the OCF agent, the systemd units,
// the example resource file, man pages and completions under DESTDIR, and
// the installed binary parses the example.
func TestMakeInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds with make")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	dest := t.TempDir()
	// Its own BIN: bin/twinbd may be running in another test.
	cmd := exec.Command("make", "-C", "../..", "install", "DESTDIR="+dest, "BIN="+filepath.Join(t.TempDir(), "twinbd"))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, f := range []string{
		"usr/sbin/twinbd", "usr/lib/ocf/resource.d/twinbd/twinbd",
		"lib/systemd/system/twinbd.service", "lib/systemd/system/twinbd@.service", "lib/systemd/system/twinbd-witness.service",
		"etc/twinbd/twinbd.conf.example", "usr/share/man/man8/twinbd.8", "usr/share/man/man8/twinbd-primary.8",
		"usr/share/man/man8/twinbd-witness.8", "usr/share/bash-completion/completions/twinbd",
		"usr/share/zsh/vendor-completions/_twinbd", "usr/share/twinbd/prometheus/twinbd-alerts.yml",
	} {
		st, err := os.Stat(filepath.Join(dest, f))
		require.NoError(t, err, f)
		require.Positive(t, st.Size(), f)
	}
	bin := filepath.Join(dest, "usr/sbin/twinbd")
	st, _ := os.Stat(bin)
	require.NotZero(t, st.Mode()&0o111, "binary not executable")
	// Static: no ELF interpreter.
	b, err := os.ReadFile(bin)
	require.NoError(t, err)
	require.False(t, strings.Contains(string(b[:4096]), "/lib64/ld-linux"), "the binary is dynamically linked")
	dump, err := exec.Command(bin, "--config", filepath.Join(dest, "etc/twinbd/twinbd.conf.example"), "--node", "alpha", "dump", "r0").CombinedOutput()
	require.NoError(t, err, "%s", dump)
	require.Contains(t, string(dump), "auto-failover yes")
	man, err := os.ReadFile(filepath.Join(dest, "usr/share/man/man8/twinbd-primary.8"))
	require.NoError(t, err)
	require.Contains(t, string(man), "Promote this node")
}
