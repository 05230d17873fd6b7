#!/usr/bin/env bash
# make demo: a twinbd pair and a witness on loopback with an embedded
# resource file. Nothing external is needed: two sparse backing files, two
# node daemons (alpha and beta) on this host, each with its own control
# socket in one run directory, and a witness (the third vote). alpha is
# promoted with --force (the initial sync source), the initial full sync runs
# to beta, then a verified write load goes through alpha's NBD export on
# 127.0.0.1:DEMO_PORT and is replicated to beta. Then `twinbd bench check`
# writes self-identifying blocks that follow the Primary while alpha is
# killed with kill -9: beta promotes itself (quorum with the witness), runs
# its start list, and the checker shows that no acknowledged write was lost.
# alpha is restarted and resyncs as Secondary. Stays up until Ctrl-C
# (DEMO_EXIT=1: stop at the end), then brings everything down cleanly.
#
# Knobs: DEMO_DIR (working directory), DEMO_SIZE (backing file size, e.g.
# 256M), DEMO_PORT (alpha's NBD port; beta's is +1), DEMO_REPL_PORT (alpha's
# replication port; beta's is +1, the witness +2), DEMO_EXIT=1, BIN (the
# twinbd binary).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin/twinbd}
DIR=${DEMO_DIR:-$(mktemp -d /tmp/twinbd-demo.XXXXXX)}
SIZE=${DEMO_SIZE:-256M}
NBD_PORT=${DEMO_PORT:-10809}
REPL_PORT=${DEMO_REPL_PORT:-7788}
WITNESS=127.0.0.1:$((REPL_PORT + 2))
mkdir -p "$DIR"

cat >"$DIR/twinbd.conf" <<CONF
# twinbd demo: two nodes on one host (node names alpha and beta) and a witness.
resource r0 {
    net { protocol C; shared-secret "demo-secret"; }
    witness ${WITNESS};
    options { quorum majority; on-no-quorum suspend-io; auto-failover yes; }
    # The start list: here one command that logs; in production a mount, a
    # database unit and a virtual IP (docs/promoter.md).
    promoter { start "echo promoted: node \$DRBD_MY_NODE_ID >> $DIR/services.log" stop "echo demoted: node \$DRBD_MY_NODE_ID >> $DIR/services.log"; }
    on alpha { node-id 0; address 127.0.0.1:${REPL_PORT}; export 127.0.0.1:${NBD_PORT};
               disk $DIR/alpha.img; meta-disk internal; }
    on beta  { node-id 1; address 127.0.0.1:$((REPL_PORT + 1)); export 127.0.0.1:$((NBD_PORT + 1));
               disk $DIR/beta.img; meta-disk internal; }
}
CONF

tw() { local node=$1; shift; "$BIN" --config "$DIR/twinbd.conf" --node "$node" --run-dir "$DIR/run" "$@"; }
pids=()
startd() { # node: run its daemon in the background (not through tw(): $! must be the daemon itself)
  "$BIN" --config "$DIR/twinbd.conf" --node "$1" --run-dir "$DIR/run" daemon --log-level warn >>"$DIR/$1.log" 2>&1 &
  pids+=($!)
  eval "pid_$1=$!"
}
cleanup() {
  echo; echo "== bringing both nodes down"
  for n in alpha beta; do tw "$n" down --force r0 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  echo "demo files left in $DIR (logs: alpha.log, beta.log, witness.log, services.log)"
}
trap cleanup EXIT

echo "== resource file ($DIR/twinbd.conf)"; tw alpha dump r0
echo "== witness on $WITNESS (a third, data-less vote)"
"$BIN" --config "$DIR/twinbd.conf" witness --listen "$WITNESS" --state "$DIR/witness.json" --log-level warn >"$DIR/witness.log" 2>&1 &
pids+=($!)
for n in alpha beta; do
  truncate -s "$SIZE" "$DIR/$n.img"
  tw "$n" create-md --force r0
  startd "$n"
done
for n in alpha beta; do
  for _ in $(seq 100); do tw "$n" up r0 2>/dev/null && break; sleep 0.1; done
done
echo "== both nodes up: alpha dials beta (lower node-id dials)"
tw alpha wait-connect --timeout 30s r0
tw alpha status r0; tw beta status r0

echo "== alpha: primary --force (declares alpha's data UpToDate: the initial sync source)"
tw alpha primary --force r0
sleep 0.3
echo "== status during the initial sync"
tw alpha status r0; tw beta status r0

echo "== alpha: wait-sync"
tw alpha wait-sync --timeout 120s r0
echo "== status after the initial sync"
tw alpha status r0; tw beta status r0

echo "== 5 s of verified 4 KiB random writes through alpha's NBD export (replicated to beta)"
"$BIN" bench --rw randwrite --bs 4k --iodepth 16 --duration 5s --verify --no-progress "nbd://127.0.0.1:${NBD_PORT}/r0"
echo "== status after the load"
tw alpha status --verbose --statistics r0; tw beta status r0
echo "== online verify (compares every block with beta)"
tw alpha verify r0

echo
echo "== failover: twinbd bench check writes self-identifying blocks through alpha,"
echo "   following the Primary; in 2 s alpha is killed with kill -9"
"$BIN" bench check --duration 8s --workers 8 --plot "$DIR/failover.svg" "nbd://127.0.0.1:${NBD_PORT}/r0" "nbd://127.0.0.1:$((NBD_PORT + 1))/r0" >"$DIR/check.out" 2>&1 &
checker=$!
sleep 2
t0=$(date +%s%N)
echo "$(date +%T.%3N) kill -9 alpha (pid $pid_alpha)"
kill -9 "$pid_alpha"; wait "$pid_alpha" 2>/dev/null || true
for _ in $(seq 100); do
  role=$(tw beta role r0 2>/dev/null || true)
  [ "$role" = Primary ] && break
  sleep 0.05
done
echo "$(date +%T.%3N) beta is $role ($(( ($(date +%s%N) - t0) / 1000000 )) ms after the kill)"
tw beta status r0
echo "== the checker (it kept writing; now it reads every block back from beta)"
checked=0; wait "$checker" || checked=$?
cat "$DIR/check.out"
[ "$checked" = 0 ] || { echo "demo: the checker found a problem (exit $checked)"; exit 1; }
echo "(the failover timeline is drawn in $DIR/failover.svg)"
echo "== start lists run ($DIR/services.log)"
cat "$DIR/services.log"

echo
echo "== alpha restarts: it comes back Secondary, Outdated at the witness, and resyncs from beta"
startd alpha
for _ in $(seq 100); do tw alpha up r0 2>/dev/null && break; sleep 0.1; done
tw beta wait-sync --timeout 120s r0
tw alpha status r0; tw beta status r0
echo "== online verify (compares every block of beta with alpha)"
tw beta verify r0

if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
cat <<MSG

twinbd is running; beta is Primary now. Try, in another shell:
  nbdinfo nbd://127.0.0.1:$((NBD_PORT + 1))
  $BIN bench --rw randrw --duration 10s nbd://127.0.0.1:$((NBD_PORT + 1))
  $BIN --config $DIR/twinbd.conf --node beta  --run-dir $DIR/run status --json
  $BIN --config $DIR/twinbd.conf --node beta  --run-dir $DIR/run secondary r0   # then primary r0 on alpha: a switchover
Ctrl-C stops the demo.
MSG
while :; do sleep 3600; done
