package replication

import (
	"sync/atomic"
	"time"
)

// LatencyBuckets are the upper bounds (seconds) of the write latency
// histograms (local disk and peer acknowledgement).
var LatencyBuckets = []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 10}

// latencyHist is a fixed-bucket histogram, safe for concurrent use and
// cheap enough for every write (three atomic adds).
type latencyHist struct {
	counts [17]atomic.Uint64 // len(LatencyBuckets)+1 (the last is +Inf)
	sumNs  atomic.Int64
}

func (h *latencyHist) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(LatencyBuckets) && s > LatencyBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(int64(d))
}

// Histogram is a snapshot: cumulative counts per upper bound (seconds),
// as Prometheus histograms are exposed.
type Histogram struct {
	Count   uint64
	Sum     float64            // seconds
	Buckets map[float64]uint64 // upper bound -> observations <= bound
}

func (h *latencyHist) snapshot() Histogram {
	out := Histogram{Buckets: make(map[float64]uint64, len(LatencyBuckets)), Sum: float64(h.sumNs.Load()) / 1e9}
	var cum uint64
	for i, b := range LatencyBuckets {
		cum += h.counts[i].Load()
		out.Buckets[b] = cum
	}
	out.Count = cum + h.counts[len(LatencyBuckets)].Load()
	return out
}

// WriteLatency returns the histograms of local disk writes and of peer
// writes: from the start of the local write (the write is already on the
// wire) until the peer's answer that the protocol waits for (WriteAck
// under C, RecvAck under B, nothing under A).
func (r *Resource) WriteLatency() (local, peer Histogram) {
	return r.latLocal.snapshot(), r.latPeer.snapshot()
}
