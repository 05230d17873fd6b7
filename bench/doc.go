// Package bench is twinbd's benchmark harness: it drives a workload
// through NBD against any export — a twinbd Primary, nbdkit, qemu-nbd, an
// operator's production cluster — and reports what the export delivers, so
// people can see what replication costs them.
//
// # What is measured
//
// Run opens Conns NBD connections (nbd.Client, fixed newstyle) and starts
// IODepth workers per connection. Each worker keeps one request in flight,
// so a connection carries up to IODepth pipelined requests, as fio's
// iodepth does. Offsets are BlockSize-aligned inside the working set
// [Offset, Offset+Size): uniformly random (seeded: a run is reproducible
// with its Seed) or sequential (one cursor shared by all workers). Writes
// carry incompressible data, optionally with FUA or a FLUSH every N writes.
//
// The latency of a request is the time from just before the client writes
// it to the moment its reply has been read (payload included), measured
// with the monotonic clock; it includes client queueing, so it is what an
// application with that queue depth would see. Latencies go to an HDR-style
// log-linear Histogram per worker (≤ 0.8 % quantile error, no allocation,
// merged at the end); the report gives p50/p90/p99/p99.9/max and the mean.
// Only requests that start after the Ramp and complete before the deadline
// count; IOPS and MiB/s are those counts over the measured window.
//
// # Verify mode
//
// With Verify, every written block identifies itself (magic, run ID,
// offset, write sequence number, xxhash64; see verify.go) and each worker
// owns the blocks i ≡ worker (mod workers), so the expected content of
// every block is known. Reads of blocks written in this run are checked
// during the run, and every written block is read back and checked at the
// end. A lost, stale, torn or misdirected write shows up as a failure.
//
// # Concurrency
//
// Run may be called concurrently (runs share nothing). The progress
// callback is called from one goroutine of Run, once a second, and must
// not block for long. A Histogram is single-goroutine.
package bench
