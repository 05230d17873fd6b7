#!/usr/bin/env bash
# make demo: a twinbd pair on loopback with an embedded resource file.
# Nothing external: two sparse backing files, two node daemons (alpha, beta)
# on this host, alpha promoted and serving NBD on 127.0.0.1:10809, a short
# verified write load through it. Stays up until Ctrl-C (DEMO_EXIT=1: stop
# after the load), then brings both nodes down cleanly.
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
  echo "demo files left in $DIR"
}
trap cleanup EXIT

echo "== resource file ($DIR/twinbd.conf)"; tw alpha dump r0
for n in alpha beta; do
  truncate -s "$SIZE" "$DIR/$n.img"
  tw "$n" create-md --force r0
  tw "$n" daemon --log-level warn >"$DIR/$n.log" 2>&1 &
  pids+=($!)
done
for n in alpha beta; do
  for _ in $(seq 100); do tw "$n" up r0 2>/dev/null && break; sleep 0.1; done
done
echo "== alpha: primary --force (the initial sync source)"
tw alpha primary --force r0
tw alpha status r0; tw beta status r0

echo "== 5 s of verified 4 KiB random writes through alpha's NBD export"
"$BIN" bench --rw randwrite --bs 4k --iodepth 16 --duration 5s --verify --no-progress "nbd://127.0.0.1:${NBD_PORT}/r0"
tw alpha status --verbose --statistics r0

if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
cat <<MSG

twinbd is running. Try, in another shell:
  nbdinfo nbd://127.0.0.1:${NBD_PORT}
  $BIN bench --rw randrw --duration 10s nbd://127.0.0.1:${NBD_PORT}
  $BIN --config $DIR/twinbd.conf --node alpha --run-dir $DIR/run status --json
Ctrl-C stops the demo.
MSG
while :; do sleep 3600; done
