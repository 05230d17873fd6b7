#!/usr/bin/env bash
# Promoter stop command paired with scripts/e2e-fs-start.sh; undoes it in
# BASE/node$DRBD_MY_NODE_ID:
#
#   e2e-fs-stop.sh BASE
#
# umount mnt/, losetup -d, fusermount3 -u fuse/, and waits for nbdfuse to
# exit. Idempotent: whatever is not there is skipped, so it also clears
# what a crash of the node left (a dead nbdfuse's mount, a loop device on
# it). Exits non-zero if something could not be undone.
# (The same steps as scripts/e2e-mariadb-stop.sh without the database.)
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
base=${1:?usage: e2e-fs-stop.sh BASE}
id=${DRBD_MY_NODE_ID:-0}
n=$base/node$id
rc=0
log() { echo "$(date +%T.%3N) fs-stop[$id]: $*"; }
alive() { # a zombie (nobody reaps orphans in some containers) counts as gone
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}
waitgone() { # pid tenths-of-a-second
  for _ in $(seq "$2"); do alive "$1" || return 0; sleep 0.1; done
  return 1
}

if mountpoint -q "$n/mnt"; then
  umount "$n/mnt" || { log "umount $n/mnt failed"; rc=1; }
fi

loop=$(cat "$n/loop" 2>/dev/null || true)
if [ -n "$loop" ]; then
  # Ours if it is backed by our fuse file: by name, or (the name of a file
  # on a dead fuse mount reads "/nbd (deleted)") by the fuse mount's device.
  fdev=$(awk -v m="$n/fuse" '$5 == m { print $3 }' /proc/self/mountinfo | tail -1)
  if [ "$(losetup -n -O BACK-FILE "$loop" 2>/dev/null | sed 's/ *$//')" = "$n/fuse/nbd" ] ||
     { [ -n "$fdev" ] && [ "$(losetup -n -O BACK-MAJ:MIN "$loop" 2>/dev/null | tr -d ' ')" = "$fdev" ]; }; then
    losetup -d "$loop" || { log "losetup -d $loop failed"; rc=1; }
  fi
  [ $rc != 0 ] || rm -f "$n/loop"
fi

fpid=$(cat "$n/nbdfuse.pid" 2>/dev/null || true)
if mountpoint -q "$n/fuse" 2>/dev/null || grep -q " $n/fuse fuse" /proc/mounts; then
  ok=0
  for _ in $(seq 50); do # the loop device lets go of the file asynchronously
    fusermount3 -u "$n/fuse" 2>/dev/null && { ok=1; break; }
    sleep 0.1
  done
  if [ $ok = 0 ] && ! alive "$fpid"; then # nbdfuse is dead: the mount is stale
    umount -l "$n/fuse" 2>/dev/null && ok=1
  fi
  [ $ok = 1 ] || { log "fusermount3 -u $n/fuse failed"; rc=1; }
fi
if alive "$fpid"; then
  waitgone "$fpid" 100 || { log "nbdfuse $fpid still running"; rc=1; }
fi
[ $rc != 0 ] || rm -f "$n/nbdfuse.pid"
exit $rc
