package chaos

// soak.go is `twinbd chaos soak` (make soak): many independent scenarios,
// each a Run of a few faults on a fresh pair with its own seed derived
// from the soak's seed, until the soak's duration is spent. A failure
// therefore has a short, replayable seed, and its run directory is kept.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// SoakConfig is one soak.
type SoakConfig struct {
	// Scenario is the template of every scenario: Binary, Kinds,
	// Protocol, the load's shape, SettleTimeout, KeepGoing. Its Seed is
	// the soak's seed (0: pick one) and Faults the faults per scenario
	// (0: 5); its Dir, Duration and Out are set per scenario.
	Scenario Config
	// Dir holds the report and the kept run directories of failed
	// scenarios ("": a new temporary directory, kept).
	Dir string
	// Duration: no scenario starts after it (0: an hour). The scenario
	// running then finishes.
	Duration time.Duration
	// Report is where the report goes: Report.txt and Report.json (""
	// : DIR/soak-report).
	Report string
	// Out gets the scenarios' fault lines and the summary (nil: discarded).
	Out io.Writer
}

// SoakScenario is one scenario of a soak.
type SoakScenario struct {
	N       int           `json:"n"`
	Seed    uint64        `json:"seed"`
	Faults  int           `json:"faults"`
	Elapsed time.Duration `json:"elapsed_ns"`
	OK      bool          `json:"ok"`
	// Interrupted: the soak was stopped during it (not a failure).
	Interrupted bool     `json:"interrupted,omitempty"`
	Problems    []string `json:"problems,omitempty"`
	// Dir is kept when the scenario failed.
	Dir    string `json:"dir,omitempty"`
	Replay string `json:"replay"`
}

// SoakReport is a whole soak.
type SoakReport struct {
	Seed     uint64        `json:"seed"`
	Dir      string        `json:"dir"`
	Start    time.Time     `json:"start"`
	Duration time.Duration `json:"duration_ns"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	Protocol string        `json:"protocol"`
	Kinds    []string      `json:"kinds"`
	// Scenarios run (Interrupted ones included), Passed, Failed.
	Scenarios int `json:"scenarios"`
	Passed    int `json:"passed"`
	Failed    int `json:"failed"`
	// FaultsByKind counts the faults injected; Checks the properties
	// checked (Report.Checks summed).
	Faults       int            `json:"faults"`
	FaultsByKind map[string]int `json:"faults_by_kind"`
	Checks       map[string]int `json:"checks"`
	// Load totals over the scenarios' final checks.
	WritesAnswered int64 `json:"writes_answered"`
	FUAWrites      int64 `json:"fua_writes_answered"`
	Flushes        int64 `json:"flushes_answered"`
	BlocksReadLive int64 `json:"blocks_read_live"`
	Failovers      int   `json:"failovers_seen"`
	// Failures are the failed scenarios; All every scenario.
	Failures []SoakScenario `json:"failures"`
	All      []SoakScenario `json:"scenarios_run"`
	// ReportText and ReportJSON are the files written.
	ReportText string `json:"report_text"`
	ReportJSON string `json:"report_json"`
}

// OK says whether every scenario passed.
func (r *SoakReport) OK() bool { return r.Failed == 0 }

// ScenarioSeed is the seed of scenario n (from 1) of the soak with seed
// seed: a splitmix64 step, never 0.
func ScenarioSeed(seed uint64, n int) uint64 {
	z := seed + uint64(n)*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	if z == 0 {
		z = 1
	}
	return z
}

// replayArgs is the command line that replays scenario seed.
func replayArgs(c Config, seed uint64) string {
	s := fmt.Sprintf("twinbd chaos --seed %d --faults %d", seed, c.Faults)
	if len(c.Kinds) > 0 {
		s += " --kinds " + strings.Join(c.Kinds, ",")
	}
	if c.Protocol != "" && c.Protocol != "C" {
		s += " --protocol " + c.Protocol
	}
	// The load's shape, where it is not the default (Config's zero values
	// are defaults, negative ones "none"; the CLI's 0 is none).
	if c.Workers > 0 && c.Workers != 4 {
		s += fmt.Sprintf(" --workers %d", c.Workers)
	}
	if c.Blocks > 0 && c.Blocks != 4096 {
		s += fmt.Sprintf(" --blocks %d", c.Blocks)
	}
	if c.FlushEvery > 0 && c.FlushEvery != 16 {
		s += fmt.Sprintf(" --flush-every %d", c.FlushEvery)
	}
	switch {
	case c.FUA < 0:
		s += " --fua 0"
	case c.FUA > 0 && c.FUA != 0.1:
		s += fmt.Sprintf(" --fua %g", c.FUA)
	}
	if c.Readers < 0 {
		s += " --readers 0"
	} else if c.Readers > 0 && c.Readers != 2 {
		s += fmt.Sprintf(" --readers %d", c.Readers)
	}
	return s
}

// Soak runs scenarios until cfg.Duration is spent or ctx ends, then writes
// the report. err wraps ErrFailed when a scenario failed; other errors
// mean the soak could not run or its report could not be written.
func Soak(ctx context.Context, cfg SoakConfig) (*SoakReport, error) {
	if cfg.Scenario.Binary == "" {
		return nil, errors.New("chaos: no twinbd binary")
	}
	if cfg.Duration <= 0 {
		cfg.Duration = time.Hour
	}
	sc := cfg.Scenario
	if sc.Seed == 0 {
		sc.Seed = uint64(time.Now().UnixNano())
	}
	if sc.Faults <= 0 {
		sc.Faults = 5
	}
	if sc.Protocol == "" {
		sc.Protocol = "C"
	}
	sc.Duration = 0
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	dir := cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "twinbd-soak-")
		if err != nil {
			return nil, err
		}
		dir = d
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	dir, _ = filepath.Abs(dir)
	base := cfg.Report
	if base == "" {
		base = filepath.Join(dir, "soak-report")
	}
	rep := &SoakReport{Seed: sc.Seed, Dir: dir, Start: time.Now(), Duration: cfg.Duration, Protocol: sc.Protocol,
		Kinds: sc.Kinds, FaultsByKind: map[string]int{}, Checks: map[string]int{},
		ReportText: base + ".txt", ReportJSON: base + ".json"}
	if len(rep.Kinds) == 0 {
		rep.Kinds = AllKinds
	}
	for _, p := range Properties {
		rep.Checks[p] = 0
	}
	fmt.Fprintf(out, "soak: seed %d, %s, scenarios of %d faults (seeds derived from %d), protocol %s, dir %s\n",
		sc.Seed, cfg.Duration, sc.Faults, sc.Seed, sc.Protocol, dir)
	for n := 1; ctx.Err() == nil && time.Since(rep.Start) < cfg.Duration; n++ {
		c := sc
		c.Seed = ScenarioSeed(sc.Seed, n)
		c.Dir = filepath.Join(dir, fmt.Sprintf("scenario-%04d-seed-%d", n, c.Seed))
		c.Out = out
		c.removePassed = true
		s := SoakScenario{N: n, Seed: c.Seed, Replay: replayArgs(c, c.Seed)}
		fmt.Fprintf(out, "soak: scenario %d at %s, seed %d (%s)\n", n, time.Since(rep.Start).Round(time.Second), c.Seed, s.Replay)
		t0 := time.Now()
		r, err := Run(ctx, c)
		s.Elapsed = time.Since(t0)
		rep.Scenarios++
		if r != nil {
			s.Faults = len(r.Faults)
			for _, f := range r.Faults {
				rep.FaultsByKind[f.Kind]++
			}
			rep.Faults += len(r.Faults)
			for k, v := range r.Checks {
				rep.Checks[k] += v
			}
			if f := r.Final; f != nil {
				rep.WritesAnswered += f.Answered
				rep.FUAWrites += f.FUAWrites
				rep.Flushes += f.Flushes
				rep.BlocksReadLive += f.ReadBlocks
				rep.Failovers += f.Switches
			}
		}
		switch {
		case ctx.Err() != nil:
			s.Interrupted = true
			s.Dir = c.Dir
		case err == nil:
			s.OK = true
			rep.Passed++
		default:
			rep.Failed++
			s.Dir = c.Dir
			if r != nil {
				s.Problems = r.Problems
			} else {
				s.Problems = []string{err.Error()}
			}
			rep.Failures = append(rep.Failures, s)
		}
		rep.All = append(rep.All, s)
	}
	rep.Elapsed = time.Since(rep.Start)
	werr := rep.write()
	rep.summary(out)
	if werr != nil {
		return rep, werr
	}
	if !rep.OK() {
		return rep, fmt.Errorf("%w: %d of %d scenarios failed", ErrFailed, rep.Failed, rep.Scenarios)
	}
	return rep, nil
}

// WriteText prints the report for people.
func (r *SoakReport) WriteText(w io.Writer) error {
	var b strings.Builder
	verdict := "PASS"
	if !r.OK() {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "twinbd chaos soak: %s\n", verdict)
	fmt.Fprintf(&b, "seed:       %d (scenario seeds derived from it: chaos.ScenarioSeed)\n", r.Seed)
	fmt.Fprintf(&b, "started:    %s, ran %s of %s\n", r.Start.Format(time.RFC3339), r.Elapsed.Round(time.Second), r.Duration)
	fmt.Fprintf(&b, "protocol:   %s; kinds: %s\n", r.Protocol, strings.Join(r.Kinds, ", "))
	fmt.Fprintf(&b, "scenarios:  %d run, %d passed, %d failed\n", r.Scenarios, r.Passed, r.Failed)
	fmt.Fprintf(&b, "faults:     %d injected\n", r.Faults)
	for _, k := range slices.Sorted(maps.Keys(r.FaultsByKind)) {
		fmt.Fprintf(&b, "  %-20s %d\n", k, r.FaultsByKind[k])
	}
	fmt.Fprintf(&b, "properties checked:\n")
	for _, k := range Properties {
		fmt.Fprintf(&b, "  %-30s %d\n", k, r.Checks[k])
	}
	fmt.Fprintf(&b, "load:       %d writes answered (%d with FUA), %d flushes, %d blocks read and checked during the load, %d failovers seen by the client\n",
		r.WritesAnswered, r.FUAWrites, r.Flushes, r.BlocksReadLive, r.Failovers)
	if len(r.Failures) == 0 {
		fmt.Fprintf(&b, "failures:   none\n")
	} else {
		fmt.Fprintf(&b, "failures:\n")
	}
	for _, f := range r.Failures {
		fmt.Fprintf(&b, "  scenario %d, seed %d: replay with `%s`; kept %s\n", f.N, f.Seed, f.Replay, f.Dir)
		for _, p := range f.Problems {
			fmt.Fprintf(&b, "    %s\n", p)
		}
	}
	for _, s := range r.All {
		if s.Interrupted {
			fmt.Fprintf(&b, "interrupted: scenario %d, seed %d, after %d faults (not counted as failed); its dir %s\n", s.N, s.Seed, s.Faults, s.Dir)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// write writes ReportText and ReportJSON.
func (r *SoakReport) write() error {
	if err := os.MkdirAll(filepath.Dir(r.ReportText), 0o755); err != nil {
		return err
	}
	var t strings.Builder
	if err := r.WriteText(&t); err != nil {
		return err
	}
	if err := os.WriteFile(r.ReportText, []byte(t.String()), 0o644); err != nil {
		return err
	}
	j, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(r.ReportJSON, append(j, '\n'), 0o644)
}

func (r *SoakReport) summary(out io.Writer) {
	fmt.Fprintf(out, "soak: %d scenarios in %s: %d passed, %d failed; %d faults\n", r.Scenarios, r.Elapsed.Round(time.Second), r.Passed, r.Failed, r.Faults)
	for _, f := range r.Failures {
		fmt.Fprintf(out, "soak: FAIL: scenario %d, seed %d: %s; kept %s\n", f.N, f.Seed, f.Replay, f.Dir)
	}
	fmt.Fprintf(out, "soak: report: %s, %s\n", r.ReportText, r.ReportJSON)
}
