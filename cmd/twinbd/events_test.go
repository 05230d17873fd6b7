package main

import (
	"bufio"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// events2 prints drbdsetup's lines for the current state (--now), JSON
// lines with --json, and change lines as states change.
func TestEvents2(t *testing.T) {
	p := newPair(t)
	defer p.logs()
	p.upAndSync()

	out := p.ok("alpha", "events2", "--now", "r0")
	for _, want := range []string{
		"exists resource name:r0 role:Primary suspended:no may_promote:no promotion_score:10000\n",
		"exists connection name:r0 peer-node-id:1 conn-name:beta connection:Connected role:Secondary\n",
		"exists device name:r0 volume:0 minor:0 disk:UpToDate client:no quorum:yes\n",
		"exists peer-device name:r0 peer-node-id:1 conn-name:beta volume:0 replication:Established peer-disk:UpToDate peer-client:no resync-suspended:no\n",
		"exists -\n",
	} {
		require.Contains(t, out, want)
	}
	require.True(t, strings.HasSuffix(out, "exists -\n"), out)
	out = p.ok("beta", "events2", "--now", "--statistics", "r0")
	require.Contains(t, out, "exists resource name:r0 role:Secondary suspended:no may_promote:no promotion_score:10000")
	require.Regexp(t, `exists device name:r0 volume:0 minor:0 disk:UpToDate client:no quorum:yes size:\d+ read:0 written:0 al-writes:\d+ bm-writes:\d+ upper-pending:0 lower-pending:0`, out)
	require.Regexp(t, `exists peer-device .* received:\d+ sent:\d+ out-of-sync:0 pending:0 unacked:0`, out)

	out = p.ok("alpha", "events2", "--now", "--json", "--timestamps", "r0")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 5)
	var first map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &first))
	require.Equal(t, "exists", first["type"])
	require.Equal(t, "resource", first["object"])
	require.Equal(t, "Primary", first["role"])
	require.NotEmpty(t, first["timestamp"])

	// Streaming: a disconnect shows as change lines.
	cmd := exec.Command(twinbdBin, p.args("alpha", "events2", "r0")...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	lineCh := make(chan string, 100)
	go func() {
		for sc.Scan() {
			lineCh <- sc.Text()
		}
		close(lineCh)
	}()
	waitLine := func(want string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case l, ok := <-lineCh:
				require.True(t, ok, "events2 ended before %q", want)
				if strings.HasPrefix(l, want) {
					return
				}
			case <-deadline:
				t.Fatalf("no line %q", want)
			}
		}
	}
	waitLine("exists -")
	p.ok("alpha", "disconnect", "r0")
	waitLine("change connection name:r0 peer-node-id:1 conn-name:beta connection:StandAlone")
	p.ok("alpha", "connect", "r0")
	waitLine("change connection name:r0 peer-node-id:1 conn-name:beta connection:Connected")
}
