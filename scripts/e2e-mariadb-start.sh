#!/usr/bin/env bash
# Promoter start command for the MariaDB end-to-end test (e2e/mariadb_test.go),
# for hosts without the nbd kernel module:
#
#   start "scripts/e2e-mariadb-start.sh BASE URI0 [URI1 ...]" stop "scripts/e2e-mariadb-stop.sh BASE";
#
# BASE is a directory shared by the nodes of one host; this node works in
# BASE/node$DRBD_MY_NODE_ID (fuse/, mnt/, run/ and the logs) and attaches to
# URI$DRBD_MY_NODE_ID, its own export (nbd://127.0.0.1:PORT/RESOURCE). Steps:
#   1. nbdfuse exposes the export as the file fuse/nbd (waits for its pid file);
#   2. losetup --direct-io=on makes it a block device (its name goes to loop);
#   3. first time only: a device with no signature at all (blkid -p exit 2)
#      gets mkfs.ext4. This is what the test relies on for the first
#      promotion; never point this script at a device with data you keep;
#   4. e2fsck -p (replays the journal after a crash), mount on mnt/;
#   5. first time only: mariadb-install-db into mnt/data;
#   6. mariadbd (--no-defaults, socket run/mysqld.sock, no networking) is
#      started in the background and waited for until it answers a ping
#      (InnoDB crash recovery happens here).
# Any failure undoes what was done (the stop script) and exits non-zero,
# so the promoter demotes the node. Background processes write only to
# files: the promoter reads the command's output until EOF.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
here=$(cd "$(dirname "$0")" && pwd)
base=${1:?usage: e2e-mariadb-start.sh BASE URI0 [URI1 ...]}
shift
id=${DRBD_MY_NODE_ID:-0}
uris=("$@")
uri=${uris[$id]:?no URI for node $id}
n=$base/node$id
ts() { date +%T.%3N; }
log() { echo "$(ts) start[$id]: $*"; }

# Leftovers of a crash of this node (a fuse mount whose nbdfuse died, a
# loop device) go first; the stop script is idempotent.
"$here/e2e-mariadb-stop.sh" "$base" >/dev/null 2>&1 || true

mkdir -p "$n/fuse" "$n/mnt" "$n/run"
chown mysql: "$n/run"
trap 'rc=$?; if [ $rc != 0 ]; then log "failed ($rc), undoing"; "$here/e2e-mariadb-stop.sh" "$base" || true; fi' EXIT

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
fsck=0; e2fsck -p "$loop" || fsck=$?
[ "$fsck" -lt 4 ] || { log "e2fsck -p exit $fsck"; exit 1; }
mount -o noatime "$loop" "$n/mnt"
log "mounted (e2fsck exit $fsck)"

if [ ! -d "$n/mnt/data/mysql" ]; then
  log "no data directory: mariadb-install-db (first promotion)"
  chown mysql: "$n/mnt"
  mariadb-install-db --no-defaults --user=mysql --datadir="$n/mnt/data" \
    --auth-root-authentication-method=normal --skip-test-db >>"$n/install-db.log" 2>&1
fi

sock=$n/run/mysqld.sock
rm -f "$n/run/mysqld.pid"
mariadbd --no-defaults --user=mysql --datadir="$n/mnt/data" --socket="$sock" \
  --pid-file="$n/run/mysqld.pid" --skip-networking --log-error="$n/run/mariadbd.err" \
  --innodb-buffer-pool-size=32M --innodb-log-file-size=16M </dev/null >>"$n/mariadbd.out" 2>&1 &
pid=$!
for _ in $(seq 1200); do
  mariadb-admin --no-defaults --socket="$sock" -uroot ping >/dev/null 2>&1 && { log "mariadbd $pid answers on $sock"; exit 0; }
  kill -0 "$pid" 2>/dev/null || { log "mariadbd exited: $(tail -5 "$n/run/mariadbd.err" 2>/dev/null)"; exit 1; }
  sleep 0.05
done
log "mariadbd did not answer within 60 s"
exit 1
