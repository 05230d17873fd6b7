package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/twinbd/twinbd/bench"
)

func newBenchPlotCmd() *cobra.Command {
	var out, metric, title string
	var latency bool
	cmd := &cobra.Command{
		Use:   "plot --out FILE.svg LABEL=RESULT.json[,RESULT.json...] ...",
		Short: "Draw saved `twinbd bench --json` results: a comparison with min–max ranges, or latency distributions",
		Long: `Draw results saved with ` + "`twinbd bench --json > FILE`" + `. Each argument is a label and
one or more result files of repeated runs of that target:

  twinbd bench plot --out iops.svg --metric iops twinbd=a1.json,a2.json,a3.json nbdkit=b1.json,b2.json,b3.json
  twinbd bench plot --out lat.svg --latency twinbd=a1.json nbdkit=b1.json

Without --latency: one bar per label at the median of its runs, with a
whisker from the lowest to the highest (--metric iops, mibps, p50, p99 in
ms). With --latency: the latency distribution of each label's first file.
The format follows the extension (svg, png, pdf).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return fmt.Errorf("bench plot: --out FILE.svg|png|pdf is required")
			}
			var groups []bench.CompareGroup
			var runs []bench.Labeled
			for _, a := range args {
				label, files, ok := strings.Cut(a, "=")
				if !ok || label == "" || files == "" {
					return fmt.Errorf("bench plot: %q: want LABEL=RESULT.json[,RESULT.json...]", a)
				}
				g := bench.CompareGroup{Label: label}
				for i, f := range strings.Split(files, ",") {
					b, err := os.ReadFile(f)
					if err != nil {
						return fmt.Errorf("bench plot: %w", err)
					}
					var r bench.Result
					if err := json.Unmarshal(b, &r); err != nil {
						return fmt.Errorf("bench plot: %s is not a `twinbd bench --json` result: %v", f, err)
					}
					if i == 0 {
						runs = append(runs, bench.Labeled{Label: label, Result: &r})
					}
					var v float64
					switch metric {
					case "iops":
						v = r.IOPS
					case "mibps":
						v = r.MiBps
					case "p50":
						v = float64(r.Latency.P50) / 1e6
					case "p99":
						v = float64(r.Latency.P99) / 1e6
					default:
						return fmt.Errorf("bench plot: --metric %q: want iops, mibps, p50 or p99", metric)
					}
					g.Values = append(g.Values, v)
				}
				groups = append(groups, g)
			}
			if latency {
				t := title
				if t == "" {
					t = "latency distribution"
				}
				return bench.PlotLatency(runs, t, out)
			}
			unit := map[string]string{"iops": "IOPS", "mibps": "MiB/s", "p50": "p50 latency (ms)", "p99": "p99 latency (ms)"}[metric]
			t := title
			if t == "" {
				t = unit + ": median of runs, min–max whiskers"
			}
			return bench.PlotCompare(groups, t, unit, out)
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "output file (.svg, .png or .pdf)")
	f.StringVar(&metric, "metric", "iops", "iops, mibps, p50 or p99")
	f.StringVar(&title, "title", "", "plot title")
	f.BoolVar(&latency, "latency", false, "draw latency distributions instead of a comparison")
	return cmd
}
