#!/usr/bin/env bash
# Promoter start command for the RabbitMQ end-to-end test
# (e2e/rabbitmq_test.go), the entry after scripts/e2e-fs-start.sh:
#
#   start "scripts/e2e-rabbitmq-start.sh BASE EPMD_PORT AMQP0 DIST0 AMQP1 DIST1" stop "scripts/e2e-rabbitmq-stop.sh BASE";
#
# Starts a private rabbitmq-server (as root, without the Debian wrapper that
# switches to the rabbitmq user) whose data directory (RABBITMQ_MNESIA_BASE)
# is BASE/node$DRBD_MY_NODE_ID/mnt/rabbitmq, on the replicated filesystem.
# The node listens on 127.0.0.1:AMQP$ID (distribution port DIST$ID) and
# registers with the epmd on EPMD_PORT (the test runs it). The Erlang node
# name (twinbd-e2e@localhost) and the cookie (BASE/home) are the same on
# both twinbd nodes: a data directory belongs to a node name, and only one
# twinbd node runs the broker at a time. Logs, configuration and the pid
# file stay in the node directory, off the replicated filesystem. Waits
# (rabbitmqctl wait, 90 s) until the broker runs; on failure it stops what
# it started and exits non-zero.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
here=$(cd "$(dirname "$0")" && pwd)
base=${1:?usage: e2e-rabbitmq-start.sh BASE EPMD_PORT AMQP0 DIST0 AMQP1 DIST1}
epmd=${2:?no epmd port}
shift 2
id=${DRBD_MY_NODE_ID:-0}
ports=("$@")
amqp=${ports[$((2 * id))]:?no AMQP port for node $id}
dist=${ports[$((2 * id + 1))]:?no distribution port for node $id}
n=$base/node$id
log() { echo "$(date +%T.%3N) rabbitmq-start[$id]: $*"; }
mountpoint -q "$n/mnt" || { log "$n/mnt is not mounted"; exit 1; }

mkdir -p "$n/rmq/log" "$n/run" "$base/home"
[ -s "$base/home/.erlang.cookie" ] || { echo twinbd-e2e-cookie >"$base/home/.erlang.cookie"; }
chmod 400 "$base/home/.erlang.cookie"
echo '[].' >"$n/rmq/enabled_plugins"
: >"$n/rmq/rabbitmq-env.conf"
printf 'listeners.tcp.default = 127.0.0.1:%s\n' "$amqp" >"$n/rmq/rabbitmq.conf"
cat >"$n/rmq/env" <<ENV
export HOME=$base/home
export RABBITMQ_NODENAME=twinbd-e2e@localhost
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$amqp
export RABBITMQ_DIST_PORT=$dist
export ERL_EPMD_PORT=$epmd
export RABBITMQ_MNESIA_BASE=$n/mnt/rabbitmq
export RABBITMQ_LOG_BASE=$n/rmq/log
export RABBITMQ_CONFIG_FILE=$n/rmq/rabbitmq
export RABBITMQ_ADVANCED_CONFIG_FILE=$n/rmq/advanced.config
export RABBITMQ_ENABLED_PLUGINS_FILE=$n/rmq/enabled_plugins
export RABBITMQ_CONF_ENV_FILE=$n/rmq/rabbitmq-env.conf
export RABBITMQ_PID_FILE=$n/run/rabbit.pid
ENV
# shellcheck disable=SC1091
. "$n/rmq/env"
mkdir -p "$RABBITMQ_MNESIA_BASE"

"$here/e2e-rabbitmq-stop.sh" "$base" >/dev/null 2>&1 || true # leftovers of a crash
trap 'rc=$?; if [ $rc != 0 ]; then log "failed ($rc), undoing"; "$here/e2e-rabbitmq-stop.sh" "$base" || true; fi' EXIT

# RabbitMQ does not fsync the files it creates at boot (Ra's meta.dets, an
# empty WAL): after a crash of the node that created them the replica has
# them empty, and the broker refuses to boot (not_a_dets_file; upstream
# rabbitmq-server#2249, ra#170, the same as after a power loss). Empty ones
# hold nothing: remove them. The sync -f after the start below makes the
# next boot's files durable in the first place.
find "$RABBITMQ_MNESIA_BASE" -type f \( -name '*.dets' -o -name '*.wal' \) -size 0 -print 2>/dev/null |
  while read -r f; do log "removing empty $f (not fsynced before a crash)"; rm -f "$f"; done

rm -f "$RABBITMQ_PID_FILE" "$n/run/wrapper.pid"
log "rabbitmq-server on 127.0.0.1:$amqp, data $RABBITMQ_MNESIA_BASE"
/usr/lib/rabbitmq/bin/rabbitmq-server </dev/null >>"$n/rmq/server.out" 2>&1 &
echo $! >"$n/run/wrapper.pid"
if ! /usr/lib/rabbitmq/bin/rabbitmqctl wait --timeout 90 "$RABBITMQ_PID_FILE" >>"$n/rmq/wait.out" 2>&1; then
  log "rabbitmq did not start: $(tail -5 "$n/rmq/server.out")"
  exit 1
fi
sync -f "$RABBITMQ_MNESIA_BASE/" || true
log "rabbitmq (pid $(cat "$RABBITMQ_PID_FILE")) runs"
