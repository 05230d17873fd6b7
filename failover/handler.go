package failover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// ErrHandlerTimeout means the handler did not exit within its timeout and
// was killed.
var ErrHandlerTimeout = errors.New("failover: handler timed out")

// HandlerEnv is what a handler learns about the resource, in DRBD's
// variable names.
type HandlerEnv struct {
	Resource   string         // DRBD_RESOURCE
	Peer       string         // DRBD_PEER (the peer's `on` name)
	PeerNodeID int            // DRBD_PEER_NODE_ID
	MyNodeID   int            // DRBD_MY_NODE_ID
	Minor      int            // DRBD_MINOR (twinbd: the NBD device number, 0 without one)
	Volume     int            // DRBD_VOLUME
	ConfPath   string         // DRBD_CONF
	CState     string         // DRBD_CSTATE (connection state when the handler is called)
	Nodes      map[int]string // DRBD_NODE_ID_n = name, for every node of the resource
}

// Environ returns the handler's environment variables (KEY=value).
func (e HandlerEnv) Environ() []string {
	env := []string{
		"DRBD_RESOURCE=" + e.Resource,
		"DRBD_PEER=" + e.Peer,
		"DRBD_PEER_NODE_ID=" + strconv.Itoa(e.PeerNodeID),
		"DRBD_MY_NODE_ID=" + strconv.Itoa(e.MyNodeID),
		"DRBD_MINOR=" + strconv.Itoa(e.Minor),
		"DRBD_VOLUME=" + strconv.Itoa(e.Volume),
		"DRBD_CONF=" + e.ConfPath,
		"DRBD_CSTATE=" + e.CState,
	}
	ids := make([]int, 0, len(e.Nodes))
	for id := range e.Nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		env = append(env, fmt.Sprintf("DRBD_NODE_ID_%d=%s", id, e.Nodes[id]))
	}
	return env
}

// HandlerResult is how a handler ended.
type HandlerResult struct {
	ExitCode int    // -1 when it did not exit normally (killed, not started)
	Output   []byte // combined stdout and stderr, truncated to 64 KiB
	Duration time.Duration
}

const maxHandlerOutput = 64 << 10

// RunHandler runs command with /bin/sh -c (as drbdadm does), with the
// process's environment plus env's variables, in its own process group. A
// non-zero exit is not an error: the caller interprets ExitCode. err is set
// when the handler could not run, timed out (ErrHandlerTimeout) or ctx
// ended; the process group is killed then.
func RunHandler(ctx context.Context, command string, env HandlerEnv, timeout time.Duration) (HandlerResult, error) {
	res := HandlerResult{ExitCode: -1}
	if command == "" {
		return res, errors.New("failover: empty handler command")
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(), env.Environ()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &limitedBuffer{max: maxHandlerOutput}
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("failover: start handler: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		// Kill the whole group: a handler script's children go too.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		err = ctx.Err()
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w after %v: %s", ErrHandlerTimeout, timeout, command)
		}
		res.Duration, res.Output = time.Since(start), out.Bytes()
		return res, err
	}
	res.Duration, res.Output = time.Since(start), out.Bytes()
	var ee *exec.ExitError
	switch {
	case err == nil:
		res.ExitCode = 0
	case errors.As(err, &ee) && ee.Exited():
		res.ExitCode = ee.ExitCode()
	default:
		return res, fmt.Errorf("failover: handler %q: %w", command, err)
	}
	return res, nil
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	buf bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) Bytes() []byte { return b.buf.Bytes() }

// FenceOutcome is what a fence-peer handler's exit code means.
type FenceOutcome int

const (
	FenceFailed           FenceOutcome = iota // any other code: fencing did not happen
	FencePeerInconsistent                     // 3: peer already Inconsistent or Outdated
	FencePeerOutdated                         // 4: peer was outdated by the handler
	FencePeerUnreachable                      // 5: peer unreachable, assumed dead
	FencePeerPrimary                          // 6: peer is Primary: outdate yourself
	FencePeerStonithed                        // 7: peer fenced (STONITH)
)

var fenceNames = [...]string{"failed", "peer-inconsistent", "peer-outdated", "peer-unreachable", "peer-is-primary", "peer-fenced"}

func (f FenceOutcome) String() string {
	if f < 0 || int(f) >= len(fenceNames) {
		return "failed"
	}
	return fenceNames[f]
}

// InterpretFencePeer maps a fence-peer exit code to its meaning (DRBD's
// codes 3–7; everything else, 0 included, is failure).
func InterpretFencePeer(code int) FenceOutcome {
	switch code {
	case 3:
		return FencePeerInconsistent
	case 4:
		return FencePeerOutdated
	case 5:
		return FencePeerUnreachable
	case 6:
		return FencePeerPrimary
	case 7:
		return FencePeerStonithed
	}
	return FenceFailed
}

// PeerFenced reports whether the outcome lets this node go on writing
// without its peer: the peer can no longer become Primary with stale data.
// 6 (peer is Primary) means the opposite: this node must outdate itself.
func (f FenceOutcome) PeerFenced() bool {
	switch f {
	case FencePeerInconsistent, FencePeerOutdated, FencePeerUnreachable, FencePeerStonithed:
		return true
	}
	return false
}
