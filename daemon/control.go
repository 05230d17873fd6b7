package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/twinbd/twinbd/replication"
)

// Request is one verb sent to the daemon.
type Request struct {
	Verb     string `json:"verb"`
	Resource string `json:"resource"`
	Force    bool   `json:"force,omitempty"`
}

// Response is the daemon's answer. Code is the exit code the CLI uses.
type Response struct {
	Code     int                  `json:"code"`
	Error    string               `json:"error,omitempty"`
	Output   string               `json:"output,omitempty"`
	Statuses []replication.Status `json:"statuses,omitempty"`
}

// Exit codes (drbdadm's where it has one).
const (
	CodeOK         = 0
	CodeFailed     = 1
	CodeNoResource = 10 // drbdsetup: no such resource / not up
	CodeStateFail  = 11 // state change refused (device in use)
	CodeNoUpToDate = 17 // drbdadm primary without UpToDate data
)

// ErrNoDaemon means nothing listens on the node's control socket.
var ErrNoDaemon = errors.New("no twinbd daemon")

// SocketPath is the control socket of node under runDir.
func SocketPath(runDir, node string) string {
	return filepath.Join(runDir, node+".sock")
}

// Call sends req to the daemon listening on sock and returns its response.
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
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return resp, fmt.Errorf("control socket %s: send: %w", sock, err)
	}
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return resp, fmt.Errorf("control socket %s: no answer from the daemon: %w", sock, err)
	}
	return resp, nil
}

// serveConn answers one request.
func (d *Daemon) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var req Request
	if err := json.NewDecoder(conn).Decode(&req); err != nil {
		json.NewEncoder(conn).Encode(Response{Code: CodeFailed, Error: "bad request: " + err.Error()})
		return
	}
	conn.SetReadDeadline(time.Time{})
	resp := d.handle(ctx, req)
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := json.NewEncoder(conn).Encode(resp); err != nil {
		d.log.Warn("control: reply", "verb", req.Verb, "err", err)
	}
}
