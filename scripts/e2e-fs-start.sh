#!/usr/bin/env bash
# Promoter start command of the end-to-end tests that put a service's data
# directory on the replicated device (e2e/datadir_test.go,
# e2e/rabbitmq_test.go), for hosts without the nbd kernel module:
#
#   start "scripts/e2e-fs-start.sh BASE URI0 [URI1 ...]" stop "scripts/e2e-fs-stop.sh BASE";
#
# BASE is a directory shared by the nodes of one host; this node works in
# BASE/node$DRBD_MY_NODE_ID (fuse/, mnt/ and the logs) and attaches to
# URI$DRBD_MY_NODE_ID, its own export (nbd://127.0.0.1:PORT/RESOURCE):
#   1. nbdfuse exposes the export as the file fuse/nbd (waits for its pid file);
#   2. losetup --direct-io=on makes it a block device (its name goes to loop);
#   3. first time only: a device with no signature at all (blkid -p exit 2)
#      gets mkfs.ext4. Never point this script at a device with data you
#      keep;
#   4. e2fsck -p (replays the journal after a crash; exit >= 4 fails),
#      mount -o noatime on mnt/.
# Any failure undoes what was done (scripts/e2e-fs-stop.sh) and exits
# non-zero, so the promoter demotes the node. nbdfuse writes only to a file:
# the promoter reads the command's output until EOF.
# (The same steps as scripts/e2e-mariadb-start.sh without the database.)
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
here=$(cd "$(dirname "$0")" && pwd)
base=${1:?usage: e2e-fs-start.sh BASE URI0 [URI1 ...]}
shift
id=${DRBD_MY_NODE_ID:-0}
uris=("$@")
uri=${uris[$id]:?no URI for node $id}
n=$base/node$id
log() { echo "$(date +%T.%3N) fs-start[$id]: $*"; }

# Leftovers of a crash of this node (a fuse mount whose nbdfuse died, a
# loop device) go first; the stop script is idempotent.
"$here/e2e-fs-stop.sh" "$base" >/dev/null 2>&1 || true

mkdir -p "$n/fuse" "$n/mnt"
trap 'rc=$?; if [ $rc != 0 ]; then log "failed ($rc), undoing"; "$here/e2e-fs-stop.sh" "$base" || true; fi' EXIT

log "nbdfuse $uri"
rm -f "$n/nbdfuse.pid"
nbdfuse -P "$n/nbdfuse.pid" "$n/fuse/nbd" "$uri" </dev/null >>"$n/nbdfuse.log" 2>&1 &
for _ in $(seq 200); do [ -s "$n/nbdfuse.pid" ] && break; kill -0 $! 2>/dev/null || break; sleep 0.05; done
[ -s "$n/nbdfuse.pid" ] || { log "nbdfuse did not start: $(tail -3 "$n/nbdfuse.log")"; exit 1; }

loop=$(losetup -f --show --direct-io=on "$n/fuse/nbd")
echo "$loop" >"$n/loop"
log "loop device $loop"

sig=0; blkid -p "$loop" >/dev/null 2>&1 || sig=$?
if [ "$sig" = 2 ]; then
  log "no filesystem on $loop: mkfs.ext4 (first promotion)"
  mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 "$loop"
fi
fsck=0; e2fsck -p "$loop" >>"$n/e2fsck.log" 2>&1 || fsck=$?
[ "$fsck" -lt 4 ] || { log "e2fsck -p exit $fsck: $(tail -3 "$n/e2fsck.log")"; exit 1; }
mount -o noatime "$loop" "$n/mnt"
log "mounted $loop on $n/mnt (e2fsck exit $fsck)"
