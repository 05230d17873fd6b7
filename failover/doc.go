// Package failover decides and carries out role changes: the failure
// detector, witness and quorum, fencing, automatic promotion and the
// services started on promotion.
//
// This first part is the handler runner: DRBD-compatible handlers
// (fence-peer, split-brain, local-io-error, …) run through /bin/sh -c with
// DRBD's environment (DRBD_RESOURCE, DRBD_PEER, DRBD_PEER_NODE_ID, …) so
// existing scripts such as crm-fence-peer.9.sh work unchanged, and
// fence-peer's exit codes 3–7 are interpreted as DRBD does.
//
// Concurrency: RunHandler is safe for concurrent use; it blocks until the
// handler exits, its timeout expires (the whole process group is killed) or
// ctx is done.
package failover
