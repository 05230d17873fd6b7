// Package daemon is the node process: it owns the resources brought up on
// this node, serves the per-node control socket the drbdadm-style verbs talk
// to, and shuts everything down cleanly on SIGTERM/SIGINT.
//
// Control protocol: one JSON Request per connection on a unix socket
// (RunDir/NODE.sock, mode 0600 in a 0700 directory: root-only), answered by
// one JSON Response. The resource file is re-read by `up` (as drbdadm reads
// it on every call), so an edited file takes effect for newly upped resources.
//
// Concurrency: requests are served concurrently; d.mu guards the resource
// map and is held while a resource is brought up or down, never across NBD
// I/O (role changes lock inside the resource).
package daemon
