package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func fakeResult(scale time.Duration) *Result {
	var h Histogram
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * scale)
	}
	r := &Result{Latency: h.Summary(), IOPS: 1e9 / float64(scale)}
	for _, q := range quantileGrid() {
		r.Quantiles = append(r.Quantiles, QuantilePoint{Q: q, Latency: h.Quantile(q)})
	}
	return r
}

func TestPlots(t *testing.T) {
	dir := t.TempDir()
	for _, ext := range []string{"svg", "png"} {
		lat := filepath.Join(dir, "lat."+ext)
		require.NoError(t, PlotLatency([]Labeled{{"twinbd", fakeResult(time.Microsecond)}, {"nbdkit", fakeResult(2 * time.Microsecond)}}, "latency", lat))
		cmp := filepath.Join(dir, "cmp."+ext)
		require.NoError(t, PlotCompare([]CompareGroup{{"twinbd", []float64{10, 12, 11}}, {"nbdkit", []float64{9, 13}}}, "IOPS", "IOPS", cmp))
		res := &CheckResult{PerURL: []CheckURLStats{
			{URL: "nbd://a", Timeline: []int64{10, 12, 11, 0}},
			{URL: "nbd://b", Timeline: []int64{0, 0, 0, 0, 0, 9, 10}},
		}, LongestGap: 200 * time.Millisecond, LongestGapAt: 150 * time.Millisecond}
		tl := filepath.Join(dir, "tl."+ext)
		require.NoError(t, PlotCheck(res, "failover", tl))
		for _, f := range []string{lat, cmp, tl} {
			st, err := os.Stat(f)
			require.NoError(t, err)
			require.Greater(t, st.Size(), int64(1000), f)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "tl.svg"))
	require.NoError(t, err)
	require.True(t, strings.Contains(string(b), "<svg"))
	require.Contains(t, string(b), "longest stall: 0.200 s")
	b, err = os.ReadFile(filepath.Join(dir, "cmp.svg"))
	require.NoError(t, err)
	require.Contains(t, string(b), "twinbd (n=3)")

	require.Error(t, PlotCompare(nil, "", "", filepath.Join(dir, "x.svg")))
	require.Error(t, PlotLatency([]Labeled{{"empty", &Result{}}}, "", filepath.Join(dir, "y.svg")))
	require.Error(t, PlotCheck(&CheckResult{}, "", filepath.Join(dir, "z.svg")))
}
