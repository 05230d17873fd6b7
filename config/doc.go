// Package config parses and validates twinbd resource files.
//
// The grammar is the subset of drbd.conf(5) that twinbd uses:
//
//	file      = { statement } .
//	statement = "include" VALUE ";"
//	          | "common" "{" { section } "}"
//	          | "resource" NAME "{" { section | host | reskey | promoter | nbd } "}" .
//	section   = ( "net" | "disk" | "handlers" | "options" ) "{" { KEY VALUE ";" } "}" .
//	promoter  = "promoter" "{" { "start" VALUE [ "stop" VALUE ] ";" | KEY VALUE ";" } "}" .
//	nbd       = "nbd" "{" { KEY VALUE ";" } "}" .
//	host      = "on" NAME "{" { KEY VALUE ";" } "}" .
//	reskey    = ( "witness" | "export" ) VALUE ";" .
//	VALUE     = WORD | STRING .
//	WORD      = a run of characters other than white space, control characters,
//	            and { } ; " # .
//	STRING    = `"` { character other than a newline, or \" or \\ } `"` .
//
// A # starts a comment that runs to the end of the line. An include pattern is a
// filepath.Glob relative to the directory of the file that contains it; the matches
// are read in sorted order and spliced in where the include stands. A pattern without
// wildcards must name an existing file; a wildcard that matches nothing is fine (an
// empty twinbd.d/). Include cycles are an error. The common section's values apply to
// every resource; a resource's own values override them.
//
// Numbers are whole decimal numbers. Sizes and rates accept a K, M or G suffix
// (binary: ×1024, ×1024², ×1024³ bytes). Without a suffix a number counts in the unit
// drbd.conf uses for that key: KiB/s for resync-rate, c-max-rate and c-min-rate,
// 512-byte sectors for size and c-fill-target, bytes for sndbuf-size, rcvbuf-size
// and bitmap-granularity. Times are whole seconds (ping-int, connect-int) or tenths
// of a second (ping-timeout, timeout, c-plan-ahead, c-delay-target), as in DRBD.
// Booleans are yes or no.
//
// The promoter section (resource level only, not in common) is drbd-reactor's
// promoter: `start` repeats, once per entry of the start list, in order. An entry
// is a systemd unit (a name with a unit suffix: var-lib-mysql.mount,
// mariadb.service), an OCF agent line ("ocf:heartbeat:IPaddr2 ip_mysql
// ip=10.9.42.1 cidr_netmask=24", split with shell quoting rules, no expansion), or
// a command pair: start "COMMAND" stop "COMMAND". The other keys are
// start-timeout and stop-timeout (seconds, each entry), on-stop-failure (a shell
// command) and attach-device (yes or no).
//
// The nbd section (resource level only) protects the export: tls no|yes|required
// (yes offers NBD_OPT_STARTTLS, required refuses plain clients), tls-cert and
// tls-key (PEM, needed unless tls no), tls-ca (PEM; client certificates become
// mandatory and must chain to it; only with tls required) and allow IP|CIDR,
// repeatable, the client addresses served (none: everyone). See docs/security.md.
//
// A DRBD resource file loads too (fromdrbd.go, docs/from-drbd.md): resource-level
// disk, meta-disk and device are defaults for the on sections; one volume N { }
// (at resource level or in an on section) holds device, disk and meta-disk; a
// connection { host NAME address IP:PORT; } gives the on sections' addresses.
// drbd.conf's keys that have no effect in twinbd (the global and startup
// sections, connection-mesh, /dev/drbdN devices, net keys such as rr-conflict
// and allow-two-primaries, ...) and the keys twinbd parses without acting on
// them (c-plan-ahead, pri-lost, ...) are Config.Warnings with FILE:LINE:COL.
//
// Nothing else is silently ignored: an unknown section or key, a duplicate key, a value
// out of range, a missing required key in an on section, or a third on section is an
// *Error carrying FILE:LINE:COL and a message that says what was found and what was
// expected. Every resource comes back with defaults filled in; Format prints it back
// as canonical text that parses to an equal Resource.
//
// The package is pure apart from reading files in Load and for includes: no
// goroutines, no global state. A parsed *Config is not modified by its methods and
// may be read from several goroutines at once.
package config
