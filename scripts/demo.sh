#!/usr/bin/env bash
# make demo: a twinbd pair on loopback with an embedded resource file.
# Nothing external is needed: two sparse backing files, two node daemons
# (alpha and beta) on this host, each with its own control socket in one run
# directory. alpha is promoted with --force (the initial sync source), the
# initial full sync runs to beta, then a verified write load goes through
# alpha's NBD export on 127.0.0.1:DEMO_PORT and is replicated to beta.
# Stays up until Ctrl-C (DEMO_EXIT=1: stop after the load), then brings
# both nodes down cleanly.
#
# Knobs: DEMO_DIR (working directory), DEMO_SIZE (backing file size, e.g.
# 256M), DEMO_PORT (alpha's NBD port; beta's is +1), DEMO_REPL_PORT (alpha's
# replication port; beta's is +1), DEMO_EXIT=1, BIN (the twinbd binary).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin/twinbd}
DIR=${DEMO_DIR:-$(mktemp -d /tmp/twinbd-demo.XXXXXX)}
SIZE=${DEMO_SIZE:-256M}
NBD_PORT=${DEMO_PORT:-10809}
REPL_PORT=${DEMO_REPL_PORT:-7788}
mkdir -p "$DIR"

cat >"$DIR/twinbd.conf" <<CONF
# twinbd demo: two nodes on one host (node names alpha and beta).
resource r0 {
    net { protocol C; shared-secret "demo-secret"; }
    on alpha { node-id 0; address 127.0.0.1:${REPL_PORT}; export 127.0.0.1:${NBD_PORT};
               disk $DIR/alpha.img; meta-disk internal; }
    on beta  { node-id 1; address 127.0.0.1:$((REPL_PORT + 1)); export 127.0.0.1:$((NBD_PORT + 1));
               disk $DIR/beta.img; meta-disk internal; }
}
CONF

tw() { local node=$1; shift; "$BIN" --config "$DIR/twinbd.conf" --node "$node" --run-dir "$DIR/run" "$@"; }
pids=()
cleanup() {
  echo; echo "== bringing both nodes down"
  for n in alpha beta; do tw "$n" down --force r0 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  echo "demo files left in $DIR (daemon logs: alpha.log, beta.log)"
}
trap cleanup EXIT

echo "== resource file ($DIR/twinbd.conf)"; tw alpha dump r0
for n in alpha beta; do
  truncate -s "$SIZE" "$DIR/$n.img"
  tw "$n" create-md --force r0
  # Not through tw(): $! must be the daemon itself, or cleanup kills only a subshell.
  "$BIN" --config "$DIR/twinbd.conf" --node "$n" --run-dir "$DIR/run" daemon --log-level warn >"$DIR/$n.log" 2>&1 &
  pids+=($!)
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

if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
cat <<MSG

twinbd is running. Try, in another shell:
  nbdinfo nbd://127.0.0.1:${NBD_PORT}
  $BIN bench --rw randrw --duration 10s nbd://127.0.0.1:${NBD_PORT}
  $BIN --config $DIR/twinbd.conf --node alpha --run-dir $DIR/run status --json
  $BIN --config $DIR/twinbd.conf --node beta  --run-dir $DIR/run disconnect r0   # then connect r0, wait-sync r0
Ctrl-C stops the demo.
MSG
while :; do sleep 3600; done
