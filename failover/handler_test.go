package failover

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestHandlerEnvironment(t *testing.T) {
	env := HandlerEnv{Resource: "r0", Peer: "bob", PeerNodeID: 1, MyNodeID: 0, ConfPath: "/etc/twinbd/twinbd.conf",
		CState: "Connecting", Nodes: map[int]string{1: "bob", 0: "alice"}}
	res, err := RunHandler(context.Background(), `echo "$DRBD_RESOURCE $DRBD_PEER $DRBD_PEER_NODE_ID $DRBD_MY_NODE_ID $DRBD_MINOR $DRBD_VOLUME $DRBD_CONF $DRBD_CSTATE $DRBD_NODE_ID_0 $DRBD_NODE_ID_1"; exit 4`, env, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, 4, res.ExitCode)
	require.Equal(t, "r0 bob 1 0 0 0 /etc/twinbd/twinbd.conf Connecting alice bob\n", string(res.Output))
	require.Equal(t, FencePeerOutdated, InterpretFencePeer(res.ExitCode))
}

func TestHandlerTimeoutKillsProcessGroup(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "child-survived")
	start := time.Now()
	// The child sleeps past the timeout and would then leave a marker.
	res, err := RunHandler(context.Background(), "(sleep 1; touch "+marker+") & sleep 30", HandlerEnv{}, 300*time.Millisecond)
	require.ErrorIs(t, err, ErrHandlerTimeout)
	require.Equal(t, -1, res.ExitCode)
	require.Less(t, time.Since(start), 5*time.Second)
	time.Sleep(1500 * time.Millisecond) // past the child's own sleep: it must be gone
	_, statErr := os.Stat(marker)
	require.True(t, os.IsNotExist(statErr), "the handler's child outlived the kill")
}

func TestHandlerOutputLimitedAndErrors(t *testing.T) {
	res, err := RunHandler(context.Background(), "head -c 200000 /dev/zero; exit 1", HandlerEnv{}, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, 1, res.ExitCode)
	require.Len(t, res.Output, maxHandlerOutput)
	_, err = RunHandler(context.Background(), "", HandlerEnv{}, time.Second)
	require.Error(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = RunHandler(ctx, "sleep 5", HandlerEnv{}, 0)
	require.ErrorIs(t, err, context.Canceled)
}

func TestFencePeerExitCodes(t *testing.T) {
	for code, want := range map[int]FenceOutcome{
		0: FenceFailed, 1: FenceFailed, 2: FenceFailed, 3: FencePeerInconsistent, 4: FencePeerOutdated,
		5: FencePeerUnreachable, 6: FencePeerPrimary, 7: FencePeerStonithed, 8: FenceFailed, 127: FenceFailed,
	} {
		got := InterpretFencePeer(code)
		require.Equal(t, want, got, "exit %d", code)
		require.Equal(t, code >= 3 && code <= 7 && code != 6, got.PeerFenced(), "exit %d", code)
	}
	require.True(t, strings.Contains(FencePeerPrimary.String(), "primary"))
}
