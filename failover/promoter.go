package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twinbd/twinbd/config"
)

// Promoter errors; the error Start or Stop returns wraps one of them.
var (
	// ErrStartFailed: an entry of the start list (or the device attach)
	// failed; what had been started was stopped again.
	ErrStartFailed = errors.New("promoter: start failed")
	// ErrStopFailed: an entry (or the device detach) did not stop; the
	// on-stop-failure escalation ran if one is configured.
	ErrStopFailed = errors.New("promoter: stop failed")
)

// Defaults of the fields that name outside programs.
const (
	DefaultSystemctl = "systemctl"
	DefaultOCFRoot   = "/usr/lib/ocf"
)

// OCF exit codes the promoter interprets.
const (
	ocfSuccess    = 0
	ocfNotRunning = 7
)

// Promoter runs the services on top of a resource while this node is
// Primary: drbd-reactor's promoter, driven by the `promoter { }` section. It
// implements replication.Services.
//
// Start attaches the kernel NBD device (when Attach is set), then starts the
// entries in order, each bounded by StartTimeout; when one fails, the ones
// before it are stopped in reverse, the device is detached, and the error
// names the entry and carries the end of its output. Stop stops every
// started entry in reverse, each bounded by StopTimeout, then detaches the
// device; when an entry does not stop, the others are still stopped, the
// device stays attached (the failed service may still use it), and
// OnStopFailure runs once.
//
// Entries: a systemd unit runs `Systemctl start|stop UNIT`; an OCF agent runs
// `OCFRoot/resource.d/PROVIDER/AGENT start|stop` with OCF_ROOT,
// OCF_RESOURCE_INSTANCE and OCF_RESKEY_NAME=VALUE (stop accepts 0 and 7, not
// running); a command pair runs its start or stop command. Everything runs
// through RunHandler (/bin/sh -c, own process group, killed with the group on
// timeout) with Env's DRBD variables plus TWINBD_ACTION (start, stop or
// on-stop-failure), TWINBD_SERVICE (the entry; for on-stop-failure the
// entries that did not stop, one per line) and TWINBD_DEVICE (Device).
//
// Start and Stop may be called from several goroutines; they run one at a
// time. Start skips entries that are already running; Stop retries entries
// that failed to stop before.
type Promoter struct {
	Services      []config.Service
	StartTimeout  time.Duration // each entry's start and the attach; 0 = no limit
	StopTimeout   time.Duration // each entry's stop, the detach and the escalation; 0 = no limit
	OnStopFailure string        // shell command run once when a stop fails; "" = none
	Env           HandlerEnv    // DRBD_RESOURCE etc. for every command
	Device        string        // this host's `device` (TWINBD_DEVICE), "" if none

	// Attach, if set, attaches the kernel NBD device to this node's export
	// before the start list; the detach function it returns runs after the
	// stop list. The daemon sets it to nbd.AttachKernel when attach-device
	// is yes and the host has a device; tests pass a fake.
	Attach func(ctx context.Context) (detach func() error, err error)

	Systemctl string       // systemctl to run; "" = DefaultSystemctl (from PATH)
	OCFRoot   string       // OCF_ROOT; "" = DefaultOCFRoot
	Logger    *slog.Logger // nil = slog.Default()

	mu     sync.Mutex
	up     []bool       // up[i]: Services[i] was started and not stopped since
	detach func() error // non-nil while the device is attached
}

// NewPromoter returns the promoter of a `promoter { }` section with the
// handler environment env. Attach and Device are left to the caller (they
// depend on this host's `on` section and its export).
func NewPromoter(cfg *config.Promoter, env HandlerEnv) *Promoter {
	return &Promoter{
		Services:      append([]config.Service(nil), cfg.Start...),
		StartTimeout:  cfg.StartTimeout,
		StopTimeout:   cfg.StopTimeout,
		OnStopFailure: cfg.OnStopFailure,
		Env:           env,
	}
}

func (p *Promoter) log() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}

// Start attaches the device and starts the entries in order. On error,
// whatever it started is stopped again (even if ctx ended: each stop is
// bounded by StopTimeout) and the error wraps ErrStartFailed.
func (p *Promoter) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.up) != len(p.Services) {
		p.up = make([]bool, len(p.Services))
	}
	log := p.log()
	t0 := time.Now()
	if p.Attach != nil && p.detach == nil {
		log.Info("promoter: attaching device", "device", p.Device, "timeout", p.StartTimeout)
		actx, cancel := ctx, context.CancelFunc(func() {})
		if p.StartTimeout > 0 {
			actx, cancel = context.WithTimeout(ctx, p.StartTimeout)
		}
		detach, err := p.Attach(actx)
		cancel()
		if err != nil {
			log.Error("promoter: attach failed", "device", p.Device, "err", err)
			return fmt.Errorf("%w: attach %s: %w", ErrStartFailed, p.Device, err)
		}
		p.detach = detach
		log.Info("promoter: device attached", "device", p.Device)
	}
	for i, sv := range p.Services {
		if p.up[i] {
			continue
		}
		if err := p.run(ctx, sv, "start", p.StartTimeout); err != nil {
			err = fmt.Errorf("%w: %w", ErrStartFailed, err)
			log.Error("promoter: start failed, stopping what was started", "service", sv.String(), "err", err)
			if serr := p.stopAll(context.WithoutCancel(ctx)); serr != nil {
				return errors.Join(err, serr)
			}
			return err
		}
		p.up[i] = true
	}
	log.Info("promoter: services started", "count", len(p.Services), "took", time.Since(t0))
	return nil
}

// Stop stops the started entries in reverse and detaches the device. ctx
// bounds the whole list: when it ends, the remaining entries are left
// running, the escalation does not run, and the error wraps ctx's error.
// Any other failure runs OnStopFailure once; the error wraps ErrStopFailed.
func (p *Promoter) Stop(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	t0 := time.Now()
	if err := p.stopAll(ctx); err != nil {
		return err
	}
	p.log().Info("promoter: services stopped", "took", time.Since(t0))
	return nil
}

// Cleanup stops every entry of the list in reverse, whether or not this
// process started it: after the daemon died while Primary (kill -9, a
// crash), the services it had started may still run — a mount on a dead
// NBD device, a database, a virtual IP that the new Primary also holds.
// Stops must therefore be harmless for what is not running (systemctl
// stop and OCF stop are; command pairs' stop commands should be). A kernel
// device attached by the dead process is not detached here.
func (p *Promoter) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.log().Warn("promoter: the daemon stopped while Primary: stopping the whole start list in case it still runs")
	p.up = make([]bool, len(p.Services))
	for i := range p.up {
		p.up[i] = true
	}
	return p.stopAll(ctx)
}

// stopAll stops every running entry in reverse, then detaches the device if
// all of them stopped; on failure it runs the escalation once. p.mu is held.
func (p *Promoter) stopAll(ctx context.Context) error {
	log := p.log()
	var errs []error
	var failed []string
	for i := len(p.up) - 1; i >= 0; i-- {
		if !p.up[i] {
			continue
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w: interrupted before stopping %s (left running, no escalation): %w",
				ErrStopFailed, p.Services[i], context.Cause(ctx))
		}
		sv := p.Services[i]
		if err := p.run(ctx, sv, "stop", p.StopTimeout); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%w: interrupted while stopping %s (no escalation): %w", ErrStopFailed, sv, err)
			}
			log.Error("promoter: stop failed", "service", sv.String(), "err", err)
			errs = append(errs, err)
			failed = append(failed, sv.String())
			continue
		}
		p.up[i] = false
	}
	if len(errs) == 0 && p.detach != nil {
		log.Info("promoter: detaching device", "device", p.Device)
		if err := p.runDetach(); err != nil {
			log.Error("promoter: detach failed", "device", p.Device, "err", err)
			errs = append(errs, fmt.Errorf("detach %s: %w", p.Device, err))
			failed = append(failed, "detach "+p.Device)
		} else {
			p.detach = nil
		}
	} else if p.detach != nil {
		log.Warn("promoter: device left attached: a service did not stop", "device", p.Device)
	}
	if len(errs) == 0 {
		return nil
	}
	err := fmt.Errorf("%w: %w", ErrStopFailed, errors.Join(errs...))
	return errors.Join(err, p.escalate(context.WithoutCancel(ctx), failed))
}

// runDetach calls p.detach, bounded by StopTimeout.
func (p *Promoter) runDetach() error {
	done := make(chan error, 1)
	detach := p.detach
	go func() { done <- detach() }()
	if p.StopTimeout <= 0 {
		return <-done
	}
	t := time.NewTimer(p.StopTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("%w: detach still running after %v", ErrHandlerTimeout, p.StopTimeout)
	}
}

// escalate runs OnStopFailure for the entries that did not stop. The
// returned error is about the escalation itself (nil when it ran and exited 0).
func (p *Promoter) escalate(ctx context.Context, failed []string) error {
	log := p.log()
	if p.OnStopFailure == "" {
		log.Warn("promoter: no on-stop-failure configured; the device may still be in use", "failed", failed)
		return nil
	}
	log.Warn("promoter: running on-stop-failure", "command", p.OnStopFailure, "failed", failed)
	script := exports(map[string]string{
		"TWINBD_ACTION": "on-stop-failure", "TWINBD_SERVICE": strings.Join(failed, "\n"), "TWINBD_DEVICE": p.Device,
	}) + p.OnStopFailure
	res, err := RunHandler(ctx, script, p.Env, p.StopTimeout)
	out := tail(res.Output)
	switch {
	case err != nil:
		log.Error("promoter: on-stop-failure failed", "err", err, "output", out)
		return fmt.Errorf("on-stop-failure %q: %w", p.OnStopFailure, cleanRunErr(ctx, err, p.StopTimeout))
	case res.ExitCode != 0:
		log.Error("promoter: on-stop-failure exited non-zero", "exit", res.ExitCode, "output", out)
		return fmt.Errorf("on-stop-failure %q: exit code %d%s", p.OnStopFailure, res.ExitCode, withOutput(out))
	}
	log.Info("promoter: on-stop-failure done", "took", res.Duration, "output", out)
	return nil
}

// run starts or stops one entry and interprets its exit code.
func (p *Promoter) run(ctx context.Context, sv config.Service, action string, timeout time.Duration) error {
	log := p.log()
	vars := map[string]string{"TWINBD_ACTION": action, "TWINBD_SERVICE": sv.String(), "TWINBD_DEVICE": p.Device}
	var script string
	ok := func(code int) bool { return code == 0 }
	switch sv.Kind {
	case config.ServiceSystemd:
		systemctl := p.Systemctl
		if systemctl == "" {
			systemctl = DefaultSystemctl
		}
		script = exports(vars) + "exec " + shellWord(systemctl) + " " + action + " " + shellWord(sv.Unit)
	case config.ServiceOCF:
		root := p.OCFRoot
		if root == "" {
			root = DefaultOCFRoot
		}
		agent := filepath.Join(root, "resource.d", sv.Provider, sv.Agent)
		if fi, err := os.Stat(agent); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%s %s: OCF agent %s is not installed or not executable (Debian: apt-get install resource-agents)", action, sv, agent)
		}
		instance := sv.Instance
		if instance == "" {
			instance = sv.Agent + "_" + p.Env.Resource
		}
		vars["OCF_ROOT"] = root
		vars["OCF_RA_VERSION_MAJOR"] = "1"
		vars["OCF_RA_VERSION_MINOR"] = "1"
		vars["OCF_RESOURCE_INSTANCE"] = instance
		vars["OCF_RESOURCE_TYPE"] = sv.Agent
		vars["OCF_RESOURCE_PROVIDER"] = sv.Provider
		if timeout > 0 {
			vars["OCF_RESKEY_CRM_meta_timeout"] = strconv.FormatInt(timeout.Milliseconds(), 10)
		}
		for _, kv := range sv.Params {
			vars["OCF_RESKEY_"+kv.Name] = kv.Value
		}
		script = exports(vars) + "exec " + shellWord(agent) + " " + action
		if action == "stop" {
			ok = func(code int) bool { return code == ocfSuccess || code == ocfNotRunning }
		}
	case config.ServiceCommand:
		command := sv.StartCommand
		if action == "stop" {
			command = sv.StopCommand
		}
		script = exports(vars) + command
	default:
		return fmt.Errorf("%s %s: unknown kind %q", action, sv, sv.Kind)
	}
	what := sv.String() // what errors name: the unit, the OCF line, the command that ran
	if sv.Kind == config.ServiceCommand {
		what = strconv.Quote(sv.StartCommand)
		if action == "stop" {
			what = strconv.Quote(sv.StopCommand)
		}
	}
	log.Info("promoter: "+action, "service", sv.String(), "kind", string(sv.Kind), "run", what, "timeout", timeout)
	res, err := RunHandler(ctx, script, p.Env, timeout)
	out := tail(res.Output)
	switch {
	case err != nil:
		return fmt.Errorf("%s %s: %w%s", action, what, cleanRunErr(ctx, err, timeout), withOutput(out))
	case !ok(res.ExitCode):
		return fmt.Errorf("%s %s: exit code %d%s", action, what, res.ExitCode, withOutput(out))
	}
	log.Info("promoter: "+action+" done", "service", sv.String(), "exit", res.ExitCode, "took", res.Duration, "output", out)
	return nil
}

// cleanRunErr tells the caller's ctx ending from the command's own timeout
// (RunHandler reports both as ErrHandlerTimeout, quoting the whole script).
func cleanRunErr(ctx context.Context, err error, timeout time.Duration) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("killed, interrupted: %w", context.Cause(ctx))
	case errors.Is(err, ErrHandlerTimeout):
		return fmt.Errorf("%w: killed after %v", ErrHandlerTimeout, timeout)
	}
	return err
}

// exports renders vars as one `export K='v' ...` line (sorted by name) that
// precedes the command: RunHandler adds only the DRBD variables itself.
func exports(vars map[string]string) string {
	names := make([]string, 0, len(vars))
	for k := range vars {
		names = append(names, k)
	}
	slices.Sort(names)
	var b strings.Builder
	b.WriteString("export")
	for _, k := range names {
		b.WriteString(" " + k + "=" + shellWord(vars[k]))
	}
	b.WriteString("\n")
	return b.String()
}

// shellWord quotes s for /bin/sh: single quotes, an embedded single quote
// written as quote, backslash-quote, quote.
func shellWord(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// maxErrOutput is how much of a failed command's output an error carries
// (the end of it, where the reason usually is); the log has up to 64 KiB.
const maxErrOutput = 512

// tail returns the trimmed output, at most maxErrOutput bytes from its end.
func tail(out []byte) string {
	s := strings.TrimSpace(string(out))
	if len(s) > maxErrOutput {
		s = "..." + strings.ToValidUTF8(s[len(s)-maxErrOutput:], "")
	}
	return s
}

func withOutput(out string) string {
	if out == "" {
		return " (no output)"
	}
	return ": " + strings.ReplaceAll(out, "\n", " / ")
}
