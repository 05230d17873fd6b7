package bench

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestHistogramBucketsCoverEveryValue(t *testing.T) {
	// Bucket bounds are contiguous and every value lands in the bucket
	// whose bounds hold it.
	var prevHi uint64
	for i := range histBuckets {
		lo, hi := histBounds(i)
		if i > 0 {
			require.Equal(t, prevHi+1, lo, "bucket %d", i)
		}
		require.LessOrEqual(t, lo, hi)
		require.Equal(t, i, histBucket(lo))
		require.Equal(t, i, histBucket(hi))
		prevHi = hi
	}
	require.Equal(t, uint64(math.MaxUint64), prevHi)
	require.Equal(t, histBuckets-1, histBucket(math.MaxUint64))
	// Relative bucket width stays under 1/128.
	for i := 2 * histSub; i < histBuckets; i += 97 {
		lo, hi := histBounds(i)
		require.Less(t, float64(hi-lo+1)/float64(lo), 1.0/127, "bucket %d", i)
	}
}

func TestHistogramQuantilesKnownData(t *testing.T) {
	var h Histogram
	// 1 µs .. 10 ms in 1 µs steps: the q-quantile is q·10 ms.
	for i := 1; i <= 10000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	require.EqualValues(t, 10000, h.Count())
	require.Equal(t, time.Microsecond, h.Min())
	require.Equal(t, 10*time.Millisecond, h.Max())
	require.InDelta(t, float64(5000500*time.Nanosecond), float64(h.Mean()), 1)
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 5 * time.Millisecond},
		{0.9, 9 * time.Millisecond},
		{0.99, 9900 * time.Microsecond},
		{0.999, 9990 * time.Microsecond},
		{1, 10 * time.Millisecond},
	} {
		got := h.Quantile(c.q)
		require.GreaterOrEqual(t, got, c.want, "q=%v", c.q)
		require.InEpsilon(t, float64(c.want), float64(got), 1.0/128, "q=%v", c.q)
	}
	require.Equal(t, time.Microsecond, h.Quantile(0))

	s := h.Summary()
	require.Equal(t, h.Quantile(0.999), s.P999)
	require.Equal(t, h.Max(), s.Max)
}

func TestHistogramSmallValuesExact(t *testing.T) {
	var h Histogram
	for _, v := range []time.Duration{3, 1, 2, 200, 100} {
		h.Record(v)
	}
	require.Equal(t, time.Duration(1), h.Quantile(0.2))
	require.Equal(t, time.Duration(3), h.Quantile(0.6))
	require.Equal(t, time.Duration(100), h.Quantile(0.8))
	require.Equal(t, time.Duration(200), h.Quantile(1))
	h.Record(-5)
	require.Equal(t, time.Duration(0), h.Min())
}

func TestHistogramMergeMatchesSingle(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var all, a, b Histogram
	vals := make([]float64, 0, 20000)
	for i := range 20000 {
		// Log-normal-ish latencies from ~10 µs to ~100 ms.
		v := time.Duration(math.Exp(rng.NormFloat64()*1.5+11.5)) + 1
		vals = append(vals, float64(v))
		all.Record(v)
		if i%3 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
	}
	var m Histogram
	m.Merge(&a)
	m.Merge(&b)
	m.Merge(&Histogram{})
	require.Equal(t, all.Summary(), m.Summary())

	sort.Float64s(vals)
	for _, q := range []float64{0.5, 0.99, 0.999} {
		exact := vals[int(math.Ceil(q*float64(len(vals))))-1]
		require.InEpsilon(t, exact, float64(m.Quantile(q)), 1.0/128, "q=%v", q)
	}
	var empty Histogram
	require.Zero(t, empty.Quantile(0.5))
	require.Zero(t, empty.Mean())
}

func BenchmarkHistogramRecord(b *testing.B) {
	var h Histogram
	b.ReportAllocs()
	for i := range b.N {
		h.Record(time.Duration(i*7919) % time.Second)
	}
}
