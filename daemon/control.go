package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/twinbd/twinbd/replication"
)

// Request is one verb sent to the daemon.
type Request struct {
	Verb     string `json:"verb"`
	Resource string `json:"resource"`
	Force    bool   `json:"force,omitempty"`
	// DiscardMyData is connect's --discard-my-data: this node volunteers
	// as the victim of a split brain found on that connect.
	DiscardMyData bool `json:"discard-my-data,omitempty"`
	// Timeout bounds wait-connect and wait-sync (for "all": every resource
	// together). Zero waits until the condition holds, the resource goes
	// StandAlone, or the client hangs up.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Fault is `debug disk-fault`'s mode (none, read-error, write-error,
	// rw-error, power-fail) and byte range (length 0: the whole disk).
	Fault       string `json:"fault,omitempty"`
	FaultOffset int64  `json:"fault-offset,omitempty"`
	FaultLength int64  `json:"fault-length,omitempty"`
	// Size and AssumeClean are resize's --size (bytes; 0: as large as
	// both nodes allow) and --assume-clean.
	Size        int64 `json:"size,omitempty"`
	AssumeClean bool  `json:"assume-clean,omitempty"`
}

// Response is the daemon's answer. Code is the exit code the CLI uses.
type Response struct {
	Code     int                  `json:"code"`
	Error    string               `json:"error,omitempty"`
	Output   string               `json:"output,omitempty"`
	Statuses []replication.Status `json:"statuses,omitempty"`
	// Verify holds one result per verified resource.
	Verify []VerifyResult `json:"verify,omitempty"`
}

// VerifyResult is the outcome of `verify` for one resource (bytes).
type VerifyResult struct {
	Resource  string        `json:"resource"`
	Checked   int64         `json:"checked"`
	OutOfSync int64         `json:"out-of-sync"`
	Took      time.Duration `json:"took"`
}

// Exit codes (drbdadm's where it has one).
const (
	CodeOK     = 0
	CodeFailed = 1
	// CodeTimeout: wait-connect / wait-sync gave up after --timeout.
	CodeTimeout    = 5
	CodeNoResource = 10 // drbdsetup: no such resource / not up
	CodeStateFail  = 11 // state change refused (device in use)
	// CodeNotConnected: the verb needs a connected peer (verify), or a
	// wait ended because the resource is StandAlone. drbdsetup reports
	// "Need a connection" as a refused state change, so it shares 11.
	CodeNotConnected = 11
	CodeNoUpToDate   = 17 // drbdadm primary without UpToDate data
)

// ErrNoDaemon means nothing listens on the node's control socket.
var ErrNoDaemon = errors.New("no twinbd daemon")

// ErrDaemonSilent means the daemon stopped sending keepalives while a
// request was in progress.
var ErrDaemonSilent = errors.New("the daemon stopped answering")

// keepaliveInterval is how often the daemon writes a keepalive (a bare
// newline, which JSON decoding skips) while a request is in progress;
// clientIdleTimeout is how long the client waits for any byte.
// (Variables for tests.)
var (
	keepaliveInterval = 2 * time.Second
	clientIdleTimeout = 30 * time.Second
)

// SocketPath is the control socket of node under runDir.
func SocketPath(runDir, node string) string {
	return filepath.Join(runDir, node+".sock")
}

// Call sends req to the daemon listening on sock and returns its response.
// It waits as long as ctx allows (forever without a deadline) while the
// daemon keeps the connection alive, and fails with ErrDaemonSilent when
// nothing arrives for 30 s.
func Call(ctx context.Context, sock string, req Request) (Response, error) {
	var resp Response
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "unix", sock)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
			return resp, fmt.Errorf("%w at %s: start it with `twinbd daemon` (same --node and --run-dir)", ErrNoDaemon, sock)
		case errors.Is(err, os.ErrPermission):
			return resp, fmt.Errorf("control socket %s is root-only: run this command as root", sock)
		}
		return resp, fmt.Errorf("control socket %s: %w", sock, err)
	}
	defer conn.Close()
	// Cancelling ctx (Ctrl-C, --timeout) ends the call at once; the daemon
	// sees the hang-up and stops waiting on our behalf.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	conn.SetWriteDeadline(time.Now().Add(clientIdleTimeout))
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return resp, callErr(ctx, sock, "send", err)
	}
	if err := json.NewDecoder(&idleReader{conn: conn, ctx: ctx}).Decode(&resp); err != nil {
		return resp, callErr(ctx, sock, "no answer from the daemon", err)
	}
	return resp, nil
}

func callErr(ctx context.Context, sock, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("control socket %s: %w", sock, context.Cause(ctx))
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		// The read deadline was ctx's, and it fired first.
		return fmt.Errorf("control socket %s: %w", sock, context.DeadlineExceeded)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("control socket %s: %w for %v (is it stuck? see its log)", sock, ErrDaemonSilent, clientIdleTimeout)
	}
	return fmt.Errorf("control socket %s: %s: %w", sock, what, err)
}

// idleReader gives every read clientIdleTimeout, or less when ctx's
// deadline comes first: keepalives extend the wait, silence ends it.
type idleReader struct {
	conn net.Conn
	ctx  context.Context
}

func (r *idleReader) Read(p []byte) (int, error) {
	if r.ctx.Err() != nil {
		return 0, r.ctx.Err()
	}
	dl := time.Now().Add(clientIdleTimeout)
	if d, ok := r.ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	r.conn.SetReadDeadline(dl)
	return r.conn.Read(p)
}

// serveConn answers one request. While the verb runs, a keepalive newline
// goes out every keepaliveInterval, and a client that hangs up cancels the
// request's context (a wait-sync interrupted with Ctrl-C stops waiting).
func (d *Daemon) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	dec := json.NewDecoder(conn)
	var req Request
	if err := dec.Decode(&req); err != nil {
		json.NewEncoder(conn).Encode(Response{Code: CodeFailed, Error: "bad request: " + err.Error()})
		return
	}
	conn.SetReadDeadline(time.Time{})

	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		// The client sends nothing after its request: any read result is
		// its hang-up (or our own Close below).
		io.Copy(io.Discard, io.MultiReader(dec.Buffered(), conn))
		cancel(errClientGone)
	}()

	var wmu sync.Mutex // one writer at a time: keepalives, then the answer
	done := make(chan struct{})
	var kw sync.WaitGroup
	kw.Go(func() {
		t := time.NewTicker(keepaliveInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				wmu.Lock()
				conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
				_, err := conn.Write([]byte{'\n'})
				wmu.Unlock()
				if err != nil {
					cancel(errClientGone)
					return
				}
			}
		}
	})
	resp := d.handle(rctx, req)
	close(done)
	kw.Wait()
	wmu.Lock()
	defer wmu.Unlock()
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if errors.Is(context.Cause(rctx), errClientGone) {
		d.log.Debug("control: the client hung up before the answer", "verb", req.Verb, "resource", req.Resource, "answer", resp.Error)
		return
	}
	if err := json.NewEncoder(conn).Encode(resp); err != nil {
		d.log.Warn("control: reply", "verb", req.Verb, "err", err)
	}
}

// errClientGone cancels a request whose client hung up.
var errClientGone = errors.New("the client hung up")
