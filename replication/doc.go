// Package replication is one replicated resource on one node: its local disk
// and metadata, its role, and the NBD export it serves while Primary.
//
// This first cut has no peer link yet: a resource runs StandAlone, its
// generation UUIDs and flags live in the metadata superblock, and writes go to
// the local disk only. Pieces of the replication work are here but not yet
// wired to a link: DecideSync/ResolveSplitBrain (syncdecision.go, DRBD's
// generation-UUID table and after-sb policies), the peer-link frame codec
// (wire.go, its format diagram at the top of the file) and the Transport
// (transport.go: TCP, and an in-memory network with partitions, delay and
// loss for simulation tests). The link itself, the dirty bitmap and the
// activity log (bitmap/al.go) on the write path, and resync come next.
//
// Invariants kept here:
//   - A Secondary serves no writes: the export listens only while Primary, and
//     every write re-checks the role.
//   - Promotion needs UpToDate data (or --force, which makes the local disk
//     UpToDate and starts a new data generation); the "primary indicator"
//     flag is durable before the first write is served, so a crash while
//     Primary is visible at the next start.
//   - Demotion drains in-flight requests and flushes the disk before the
//     role changes, so everything answered is durable.
//
// Concurrency: Resource methods are safe for concurrent use. r.mu guards the
// role, disk state and server fields; it is held across the (rare) role
// transitions, which also do disk I/O — no write path takes r.mu.
package replication
