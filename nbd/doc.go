// Package nbd is twinbd's NBD (Network Block Device) server, plus a
// userspace client and kernel attach helpers. The server speaks the
// fixed-newstyle protocol of NetworkBlockDevice/nbd doc/proto.md with simple
// replies only, and serves any Export (the replicated resource, or a
// DeviceExport over a plain device).
//
// # A connection's life
//
//	accept ──(AllowList refuses: close)
//	   │
//	   ▼
//	handshake ── S: NBDMAGIC IHAVEOPT flags(FIXED_NEWSTYLE|NO_ZEROES)
//	   │         C: client flags (FIXED_NEWSTYLE required, else close)
//	   │         options, in a loop, each answered:
//	   │           LIST → SERVER per name, ACK     INFO → INFO…, ACK (loop on)
//	   │           STARTTLS → ACK, TLS handshake, options go on inside TLS
//	   │             (ERR_UNSUP when TLS is off; TLS required: before it every
//	   │             option but ABORT → ERR_TLS_REQD, EXPORT_NAME → close)
//	   │           STRUCTURED_REPLY, others → ERR_UNSUP
//	   │           ABORT → ACK, close   bad magic / option > 16 MiB → close
//	   │         GO → INFO…, ACK ─┐   EXPORT_NAME → size, flags[, zeroes] ─┐
//	   ▼                          ▼                                        ▼
//	transmission ── reader ─► handlers (≤ MaxInflight) ─► reply writer ─► socket
//	   │  DISC, EOF, socket error, bad request magic, or Shutdown
//	   ▼
//	drain ── no more requests are read; every request already read is
//	   │     served and answered
//	   ▼
//	close
//
// The handshake as a whole is bounded by HandshakeTimeout. Server.Shutdown
// closes listeners and connections still in the handshake, interrupts each
// reader, and waits for the drains. CloseConnections drops every connection
// at once (answers still in flight are lost).
//
// # Concurrency contract
//
// Per connection: one reader goroutine parses headers and validates them
// before allocating anything; WRITE payloads are read by the reader into a
// pooled buffer. Each accepted request then takes one of MaxInflight slots
// (the reader blocks when none is free: backpressure on the client) and runs
// in its own goroutine against the Export, so requests complete and are
// answered out of order, matched by cookie. Exactly one writer goroutine per
// connection owns the socket's write side: it gathers every queued reply into
// one writev, so under load many replies share a syscall. A READ reply is
// queued only after the read completed, header and data together, so a
// header is never sent for data that is not known good. A slot is released
// after its reply is written, bounding both concurrency and buffer memory.
// No lock is held across network or disk I/O.
//
// FLUSH calls Export.Flush when dispatched. A write is answered only after
// Export.WriteAt returned, so every write answered before the FLUSH arrived
// is covered (writes still in flight need not be). Export.Flush covers writes
// from every connection, so NBD_FLAG_CAN_MULTI_CONN is advertised.
//
// Transmission flags are exactly HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
// SEND_WRITE_ZEROES, CAN_MULTI_CONN, plus READ_ONLY for read-only exports.
// NBD_INFO_BLOCK_SIZE is always sent: minimum 1, preferred 4096, maximum
// MaxRequest. With a minimum of 1 every offset and length is aligned, so the
// server never rejects a request as misaligned.
//
// # Errors on the wire
//
// One bad request never ends the connection; only a bad request magic (the
// stream cannot be resynchronized) or a socket error does. Checks, in order:
//
//	command unknown or not advertised (CACHE, BLOCK_STATUS, RESIZE, …) → EINVAL
//	  (such commands carry no payload, so nothing is skipped)
//	flag not valid for the command                                  → EINVAL
//	  FUA is accepted on every command, as the spec requires once SEND_FUA
//	  is advertised (old qemu sets it on FLUSH); NO_HOLE only on
//	  WRITE_ZEROES; DF, REQ_ONE and FAST_ZERO were never negotiated
//	READ/WRITE length > MaxRequest                                   → EOVERFLOW
//	WRITE/TRIM/WRITE_ZEROES on a read-only export                    → EPERM
//	range outside the export (offset+length computed without overflow):
//	  READ                                                           → EINVAL
//	  WRITE, WRITE_ZEROES, TRIM                                      → ENOSPC
//	zero length (READ, WRITE, TRIM, WRITE_ZEROES)                    → success,
//	  without calling the export
//
// proto.md says a server SHOULD return ENOSPC for a write beyond the end and
// leaves reads open; EINVAL for reads matches nbdkit and the kernel's view of
// an invalid request. TRIM modifies the export, so it is treated as a write
// (nbdkit answers EINVAL there; both are allowed). FLUSH's offset and length
// "MUST be zero" but are ignored rather than refused. A refused WRITE's
// payload is still read off the socket (and discarded without a large
// allocation) so the next request is in step.
//
// Export errors map as export.go states: ErrReadOnly → EPERM, ErrOutOfRange →
// ENOSPC (EINVAL for READ), ErrNoSpace → ENOSPC, ErrShutdown → ESHUTDOWN, a
// syscall.Errno to its NBD value (EDQUOT and EFBIG → ENOSPC, EROFS and EACCES
// → EPERM), anything else → EIO. A panicking Export is answered EIO.
package nbd
