package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// WriteText prints the result for people.
func (r *Result) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "target:    %s (export %s, working set %s at offset %d)\n",
		r.Target, humanBytes(r.ExportSize), humanBytes(r.Size), r.Offset)
	mix := ""
	if r.Mode == RandRW {
		mix = fmt.Sprintf(" rwmix-read=%d", r.RWMixRead)
	}
	fmt.Fprintf(&b, "workload:  %s%s bs=%s iodepth=%d conns=%d fua=%t flush-every=%d duration=%s ramp=%s seed=%d\n",
		r.Mode, mix, FormatSize(int64(r.BlockSize)), r.IODepth, r.Conns, r.FUA, r.FlushEvery,
		r.Duration.Round(time.Millisecond), r.Ramp, r.Seed)
	fmt.Fprintf(&b, "ops:       %d (read %d, write %d, flush %d), errors %d\n",
		r.Ops, r.ReadOps, r.WriteOps, r.Flushes, r.Errors)
	if r.FirstError != "" {
		fmt.Fprintf(&b, "first err: %s\n", r.FirstError)
	}
	fmt.Fprintf(&b, "IOPS:      %.1f\n", r.IOPS)
	fmt.Fprintf(&b, "MiB/s:     %.2f\n", r.MiBps)
	fmt.Fprintf(&b, "latency:   %s\n", r.Latency)
	if r.ReadLatency != nil {
		fmt.Fprintf(&b, "  read:    %s\n", *r.ReadLatency)
	}
	if r.WriteLatency != nil {
		fmt.Fprintf(&b, "  write:   %s\n", *r.WriteLatency)
	}
	if r.FlushLatency != nil {
		fmt.Fprintf(&b, "  flush:   %s\n", *r.FlushLatency)
	}
	if v := r.Verify; v != nil {
		status := "OK"
		if v.Errors > 0 {
			status = "FAILED"
		}
		fmt.Fprintf(&b, "verify:    %s: %d block reads checked (%d read back at the end), %d errors\n",
			status, v.Blocks, v.ReadBack, v.Errors)
		for _, f := range v.Failures {
			fmt.Fprintf(&b, "  %s\n", f)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the result as one JSON object.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func (l LatencySummary) String() string {
	if l.Count == 0 {
		return "no requests"
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (mean %s, min %s, n=%d)",
		fmtLatency(l.P50), fmtLatency(l.P90), fmtLatency(l.P99), fmtLatency(l.P999),
		fmtLatency(l.Max), fmtLatency(l.Mean), fmtLatency(l.Min), l.Count)
}

// fmtLatency keeps about three significant digits.
func fmtLatency(d time.Duration) string {
	switch {
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	case d < time.Millisecond:
		return sig3(float64(d)/float64(time.Microsecond)) + "µs"
	case d < time.Second:
		return sig3(float64(d)/float64(time.Millisecond)) + "ms"
	}
	return sig3(d.Seconds()) + "s"
}

func sig3(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
