#!/usr/bin/env bash
# Promoter stop command paired with scripts/e2e-rabbitmq-start.sh:
#
#   e2e-rabbitmq-stop.sh BASE
#
# rabbitmqctl stop (waits for the broker to exit; SIGKILL after 60 s), then
# waits for the wrapper shell. Idempotent: without a live broker it only
# removes stale pid files. Exits non-zero if the broker could not be stopped.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
base=${1:?usage: e2e-rabbitmq-stop.sh BASE}
id=${DRBD_MY_NODE_ID:-0}
n=$base/node$id
rc=0
log() { echo "$(date +%T.%3N) rabbitmq-stop[$id]: $*"; }
alive() { # a zombie counts as gone
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}
waitgone() { # pid tenths-of-a-second
  for _ in $(seq "$2"); do alive "$1" || return 0; sleep 0.1; done
  return 1
}
[ -r "$n/rmq/env" ] || exit 0
# shellcheck disable=SC1091
. "$n/rmq/env"

pid=$(cat "$n/run/rabbit.pid" 2>/dev/null || true)
if alive "$pid"; then
  log "rabbitmqctl stop (pid $pid)"
  timeout 60 /usr/lib/rabbitmq/bin/rabbitmqctl stop "$n/run/rabbit.pid" >>"$n/rmq/stop.out" 2>&1 || kill -TERM "$pid" 2>/dev/null
  if ! waitgone "$pid" 600; then
    log "rabbitmq $pid still running after 60 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    waitgone "$pid" 50 || rc=1
  fi
fi
wpid=$(cat "$n/run/wrapper.pid" 2>/dev/null || true)
if alive "$wpid"; then
  waitgone "$wpid" 50 || { kill -KILL "$wpid" 2>/dev/null; waitgone "$wpid" 20 || rc=1; }
fi
[ $rc != 0 ] || rm -f "$n/run/rabbit.pid" "$n/run/wrapper.pid"
exit $rc
