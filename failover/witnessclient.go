package failover

import (
	"bufio"
	"context"
	"crypto/hmac"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// WitnessClient is a node's connection to the witness: one request at a
// time, reconnecting on demand.
type WitnessClient struct {
	Addr     string
	Resource string
	Node     int
	Secret   string
	Timeout  time.Duration // per request (dial + auth + round trip); 0 = 1s

	mu sync.Mutex
	c  net.Conn
	br *bufio.Reader
}

// ErrWitnessUnreachable wraps network errors talking to the witness.
var ErrWitnessUnreachable = errors.New("witness unreachable")

// Call sends req and returns the witness's reply. A network error closes
// the connection (the next Call dials again) and wraps
// ErrWitnessUnreachable.
func (w *WitnessClient) Call(ctx context.Context, req WitnessRequest) (WitnessReply, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	timeout := w.Timeout
	if timeout <= 0 {
		timeout = time.Second
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if w.c == nil {
		if err := w.dial(ctx, deadline); err != nil {
			return WitnessReply{}, err
		}
	}
	fail := func(err error) (WitnessReply, error) {
		w.c.Close()
		w.c, w.br = nil, nil
		return WitnessReply{}, fmt.Errorf("%w: %s: %v", ErrWitnessUnreachable, w.Addr, err)
	}
	c := w.c // fail() clears w.c; the callback may run after it
	c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	b, _ := json.Marshal(req)
	if _, err := w.c.Write(append(b, '\n')); err != nil {
		return fail(err)
	}
	line, err := readLine(w.br)
	if err != nil {
		return fail(err)
	}
	var rep WitnessReply
	if err := json.Unmarshal(line, &rep); err != nil {
		return fail(fmt.Errorf("bad reply: %v", err))
	}
	return rep, nil
}

func (w *WitnessClient) dial(ctx context.Context, deadline time.Time) error {
	d := net.Dialer{Deadline: deadline}
	c, err := d.DialContext(ctx, "tcp", w.Addr)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrWitnessUnreachable, err)
	}
	c.SetDeadline(deadline)
	br := bufio.NewReaderSize(c, maxLine)
	if err := w.auth(c, br); err != nil {
		c.Close()
		var ne net.Error
		if errors.As(err, &ne) {
			return fmt.Errorf("%w: %s: %v", ErrWitnessUnreachable, w.Addr, err)
		}
		return err
	}
	c.SetDeadline(time.Time{})
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	w.c, w.br = c, br
	return nil
}

func (w *WitnessClient) auth(c net.Conn, br *bufio.Reader) error {
	line, err := readLine(br)
	if err != nil {
		return err
	}
	var h witnessHello
	if err := json.Unmarshal(line, &h); err != nil {
		return fmt.Errorf("%w: %s does not speak the witness protocol", ErrWitnessAuth, w.Addr)
	}
	theirs, err := hex.DecodeString(h.Challenge)
	if err != nil || len(theirs) != 32 {
		return fmt.Errorf("%w: bad challenge from %s", ErrWitnessAuth, w.Addr)
	}
	own := challenge()
	b, _ := json.Marshal(witnessAuth{Resource: w.Resource, Node: w.Node, Challenge: hex.EncodeToString(own),
		MAC: witnessMAC(w.Secret, "node", theirs, own, w.Resource, w.Node)})
	if _, err := c.Write(append(b, '\n')); err != nil {
		return err
	}
	line, err = readLine(br)
	if err != nil {
		return err
	}
	var ok witnessAuthOK
	if err := json.Unmarshal(line, &ok); err != nil {
		return fmt.Errorf("%w: bad answer from %s", ErrWitnessAuth, w.Addr)
	}
	if ok.Error != "" {
		return fmt.Errorf("%w: %s", ErrWitnessAuth, ok.Error)
	}
	if !hmac.Equal([]byte(ok.MAC), []byte(witnessMAC(w.Secret, "witness", own, theirs, w.Resource, w.Node))) {
		return fmt.Errorf("%w: %s failed to prove it knows the shared-secret", ErrWitnessAuth, w.Addr)
	}
	return nil
}

// Close drops the connection.
func (w *WitnessClient) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.c != nil {
		w.c.Close()
		w.c, w.br = nil, nil
	}
}
