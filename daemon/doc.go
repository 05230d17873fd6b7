// Package daemon is the node process: it owns the resources brought up on
// this node, serves the per-node control socket the drbdadm-style verbs talk
// to, runs the resources' `handlers { }` commands, and shuts everything down
// cleanly on SIGTERM/SIGINT.
//
// Control protocol: one JSON Request per connection on a unix socket
// (RunDir/NODE.sock, mode 0600 in a 0700 directory: root-only), answered by
// one JSON Response. While a verb runs (wait-connect and wait-sync may run
// for as long as the client's --timeout, forever by default; verify for as
// long as the disk takes) the daemon writes a bare newline every 2 s, which
// JSON decoding skips: Call treats 30 s without a byte as a stuck daemon,
// and the daemon treats the client's hang-up (Ctrl-C) as the end of the
// wait. The resource file is re-read by `up` (as drbdadm reads it on every
// call), so an edited file takes effect for newly upped resources.
//
// Exit codes (Response.Code): 0 ok, 1 failed, 5 a wait timed out, 10 no
// such resource (not up), 11 state change refused or the verb needs a
// connected peer (drbdsetup reports "Need a connection" as a refused state
// change), 17 no UpToDate data. The CLI adds 20 for no daemon reachable.
//
// Handlers run asynchronously, one goroutine each, through
// failover.RunHandler with DRBD's environment (DRBD_RESOURCE, DRBD_PEER,
// DRBD_PEER_NODE_ID, DRBD_MY_NODE_ID, DRBD_MINOR, DRBD_CONF, DRBD_CSTATE,
// DRBD_NODE_ID_n), bounded by HandlerTimeout; their exit code and output
// are logged. At shutdown running handlers get 10 s, then are killed.
//
// Concurrency: requests are served concurrently; d.mu guards the resource
// map and is held while a resource is brought up or down, never across NBD
// I/O or a wait (role changes lock inside the resource).
package daemon
