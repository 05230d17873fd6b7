// Package replication is one replicated resource on one node: its local disk
// and metadata, its role, the NBD export it serves while Primary, and the
// peer link that mirrors every write to the other node.
//
// Files, in the order data flows:
//   - resource.go: Up (metadata checks, bitmap and activity log loaded, the
//     peer loop started), Primary/Secondary/Down, generation UUIDs.
//   - export.go: the NBD export and the write path (replicate): range lock,
//     activity log, local write in parallel with the send, protocol A/B/C.
//   - peer.go: the peer loop (the lower node-id dials; back-off; StandAlone
//     on refusals), connect/disconnect.
//   - linkauth.go: optional TLS and the mutual HMAC challenge on each of the
//     two connections of a link.
//   - session.go: one established link: state exchange, DecideSync
//     (syncdecision.go), bitmap exchange, the Secondary's apply path, acks,
//     barriers, pings, teardown (what the peer may lack goes into the bitmap
//     before anything waiting is answered).
//   - cache.go: a Secondary drops its clean page cache after a barrier's
//     flush when the epoch's writes were mostly small.
//   - resync.go: the sync source (bitmap or checksum based, rate limited).
//   - resize.go: online resize (both nodes grow, the peer first) and a
//     resync started mid-session (startSyncSource); wire_resize.go its
//     messages.
//   - verbs.go: invalidate, invalidate-remote, outdate, online verify.
//   - wire.go, framewriter.go, transport*.go: frames, batching, TCP and the
//     in-memory network used by the simulation tests.
//
// Invariants kept here (DESIGN.md numbering):
//   - 1: a write is answered after the local write and the protocol's ack;
//     without a link, its bits are set (under the activity log) first.
//   - 2: FLUSH waits for the local fdatasync and the peer's barrier ack; FUA
//     is durable on the peer before its WriteAck.
//   - 3: the range lock orders overlapping writes on the Primary; the
//     Secondary registers incoming writes in the range lock in stream order.
//   - 4: bits are cleared only on the target's WriteAck (or checksum match).
//   - 7: DecideSync decides the direction; split brain goes StandAlone unless
//     an after-sb policy or connect --discard-my-data picks the victim.
//   - A Secondary serves no writes; promotion needs UpToDate data (or
//     --force) and is refused while the peer is Primary; demotion drains
//     and flushes before the role changes.
//
// Concurrency: Resource methods are safe for concurrent use. r.mu guards the
// role, disk state, link state and server fields; it is held across role
// transitions, which also do disk I/O. The write path takes no r.mu: it
// loads the session pointer atomically. Session teardown takes r.mu, so
// nothing holding r.mu waits for a session to finish.
package replication
