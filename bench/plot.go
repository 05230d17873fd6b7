package bench

// Pictures of what the harness measured, drawn with gonum.org/v1/plot (the
// maintained Go plotting library; SVG, PNG or PDF by the file's extension):
//
//   - PlotLatency: latency distributions (quantile against latency, log
//     scale) of one or more runs, so targets can be compared by shape and
//     tail, not only by a few percentiles;
//   - PlotCompare: a bar per target with the median of repeated runs and a
//     min–max whisker (what docs/benchmarks.md's tables say, drawn);
//   - PlotCheck: a failover timeline from `bench check`: writes answered
//     per second by each export over time, with the longest stall marked.

import (
	"fmt"
	"image/color"
	"math"
	"slices"
	"sort"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Labeled is a run with the name to show for it.
type Labeled struct {
	Label  string
	Result *Result
}

var plotColors = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
}

func plotColor(i int) color.Color { return plotColors[i%len(plotColors)] }

// PlotLatency draws the latency distribution of each run into path.
func PlotLatency(runs []Labeled, title, path string) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "latency (ms, log scale)"
	p.Y.Label.Text = "fraction of requests answered within"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	p.Legend.Top = true // the top left stays empty: curves start low
	p.Legend.Left = true
	n := 0
	for i, r := range runs {
		var pts plotter.XYs
		for _, q := range r.Result.Quantiles {
			ms := float64(q.Latency) / 1e6
			if ms <= 0 {
				continue
			}
			pts = append(pts, plotter.XY{X: ms, Y: q.Q})
		}
		if len(pts) == 0 {
			continue
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		l.Color = plotColor(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s (p50 %s, p99 %s)", r.Label, roundDur(r.Result.Latency.P50), roundDur(r.Result.Latency.P99)), l)
		n++
	}
	if n == 0 {
		return fmt.Errorf("plot: no latency distribution in the results (run them with this version of twinbd bench)")
	}
	p.Add(plotter.NewGrid())
	return p.Save(7*vg.Inch, 4.5*vg.Inch, path)
}

// roundDur keeps three significant figures or so.
func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	case d >= time.Microsecond:
		return d.Round(100 * time.Nanosecond)
	}
	return d
}

// CompareGroup is one bar of PlotCompare: repeated measurements of one
// target.
type CompareGroup struct {
	Label  string
	Values []float64
}

// PlotCompare draws, per group, a bar at the median of its values and a
// whisker from the minimum to the maximum.
func PlotCompare(groups []CompareGroup, title, unit, path string) error {
	if len(groups) == 0 {
		return fmt.Errorf("plot: nothing to compare")
	}
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = unit
	p.Y.Min = 0
	med := make(plotter.Values, len(groups))
	names := make([]string, len(groups))
	var errs plotter.YErrors
	var centers plotter.XYs
	for i, g := range groups {
		if len(g.Values) == 0 {
			return fmt.Errorf("plot: %s has no values", g.Label)
		}
		v := slices.Clone(g.Values)
		sort.Float64s(v)
		m := v[len(v)/2]
		if len(v)%2 == 0 {
			m = (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		med[i] = m
		names[i] = fmt.Sprintf("%s (n=%d)", g.Label, len(v))
		centers = append(centers, plotter.XY{X: float64(i), Y: m})
		errs = append(errs, struct{ Low, High float64 }{m - v[0], v[len(v)-1] - m})
	}
	bars, err := plotter.NewBarChart(med, vg.Points(40))
	if err != nil {
		return err
	}
	bars.Color = plotColor(0)
	bars.LineStyle.Width = 0
	p.Add(bars)
	whiskers, err := plotter.NewYErrorBars(struct {
		plotter.XYer
		plotter.YErrorer
	}{centers, errs})
	if err != nil {
		return err
	}
	whiskers.LineStyle.Width = vg.Points(1.5)
	whiskers.CapWidth = vg.Points(12)
	p.Add(whiskers)
	p.NominalX(names...)
	p.Add(plotter.NewGrid())
	return p.Save(vg.Length(1.5+2.6*float64(len(groups)))*vg.Inch, 4*vg.Inch, path)
}

// PlotCheck draws a failover timeline: writes answered per second by each
// export, in TimelineStep buckets, and the longest stall.
func PlotCheck(res *CheckResult, title, path string) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "time since the start (s)"
	p.Y.Label.Text = "writes answered per second"
	p.Y.Min = 0
	step := TimelineStep.Seconds()
	peak := 0.0
	lines := 0
	for i, u := range res.PerURL {
		if len(u.Timeline) == 0 {
			continue
		}
		var pts plotter.XYs
		for k, n := range u.Timeline {
			rate := float64(n) / step
			peak = math.Max(peak, rate)
			pts = append(pts, plotter.XY{X: float64(k) * step, Y: rate})
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		l.Color = plotColor(i)
		l.Width = vg.Points(1.2)
		p.Add(l)
		p.Legend.Add(u.URL, l)
		lines++
	}
	if lines == 0 {
		return fmt.Errorf("plot: no answered writes to draw")
	}
	if res.LongestGap > 0 {
		from, to := res.LongestGapAt.Seconds(), (res.LongestGapAt + res.LongestGap).Seconds()
		stall, err := plotter.NewPolygon(plotter.XYs{{X: from, Y: 0}, {X: to, Y: 0}, {X: to, Y: peak}, {X: from, Y: peak}})
		if err != nil {
			return err
		}
		stall.Color = color.RGBA{R: 0xcc, G: 0xcc, B: 0xcc, A: 0x80}
		stall.LineStyle.Width = 0
		p.Add(stall)
		p.Legend.Add(fmt.Sprintf("longest stall: %.3f s", res.LongestGap.Seconds()), stall)
	}
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	return p.Save(8*vg.Inch, 4*vg.Inch, path)
}
