#!/usr/bin/env bash
# A/B benchmark of the NBD data path: twinbd built at BASE (A) against twinbd
# built from the working tree (B), plus nbdkit's file plugin, on one row at a
# time, run INTERLEAVED (A, B, nbdkit, A, B, nbdkit, ...), medians and ratios.
# Each server is a one-node resource (as in scripts/bench.sh) on its own
# sparse file in one temp dir, pre-filled the same way through NBD.
#
# Usage: scripts/bench-ab-nbd.sh [BASE] [ROW...]
#   BASE  git revision for A (default main)
#   ROW   1m | fua32 | fua1 | rw32 | rr32 | fsync1 (default: 1m fua32 fua1)
# Environment: AB_RUNTIME (s, default 10), AB_RUNS (default 5),
#   AB_FILE_SIZE (default 1G), AB_A_BIN / AB_B_BIN (prebuilt binaries instead
#   of building; the report then names them by file name).
# The `twinbd bench` client is always A's binary, so only the server differs.
# Besides the rate, each run reports the server's CPU time per request
# (utime+stime from /proc/PID/stat over the run, divided by the requests
# done; 1 MiB rows count one request per MiB): less sensitive than the rate
# to other load on a shared host.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-main}; shift || true
ROWSEL=("$@"); [ ${#ROWSEL[@]} -gt 0 ] || ROWSEL=(1m fua32 fua1)
RUNTIME=${AB_RUNTIME:-10}
RUNS=${AB_RUNS:-5}
FILE_SIZE=${AB_FILE_SIZE:-1G}
PA=10921 PB=10922 PK=10923

log() { echo "ab: $*" >&2; }
die() { log "$*"; exit 1; }
export PATH=/usr/local/go/bin:$PATH

TMP=$(mktemp -d "${TMPDIR:-/tmp}/twinbd-ab.XXXXXX")
PIDS=()
cleanup() {
  for s in a b; do
    [ -f "$TMP/$s/conf" ] && "$TMP/$s/twinbd" --config "$TMP/$s/conf" --node n --run-dir "$TMP/$s/run" down ab >/dev/null 2>&1 || true
  done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  git worktree remove --force "$TMP/src" >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$TMP/a" "$TMP/b"
if [ -n "${AB_A_BIN:-}" ]; then cp "$AB_A_BIN" "$TMP/a/twinbd"; else
  git worktree add --detach "$TMP/src" "$BASE" >/dev/null 2>&1 || die "no revision $BASE"
  (cd "$TMP/src" && CGO_ENABLED=0 go build -o "$TMP/a/twinbd" ./cmd/twinbd) || die "build A failed"
fi
if [ -n "${AB_B_BIN:-}" ]; then cp "$AB_B_BIN" "$TMP/b/twinbd"; else
  CGO_ENABLED=0 go build -o "$TMP/b/twinbd" ./cmd/twinbd || die "build B failed"
fi
A_REV=$(git rev-parse --short "$BASE"); B_REV="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo +dirty)"
# Prebuilt binaries are named by their file, not by a revision they may not be.
[ -n "${AB_A_BIN:-}" ] && A_REV=$(basename "$AB_A_BIN")
[ -n "${AB_B_BIN:-}" ] && B_REV=$(basename "$AB_B_BIN")
CLIENT=$TMP/a/twinbd

wait_nbd() {
  local i
  for i in $(seq 300); do nbdinfo "nbd://127.0.0.1:$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "no NBD server on port $1"
}

start_twinbd() { # s port replport
  local s=$1 port=$2 rport=$3 d=$TMP/$1 i
  truncate -s "$FILE_SIZE" "$d/img"
  mkdir -p "$d/run"
  cat >"$d/conf" <<EOC
resource ab {
  on n { node-id 0; address 127.0.0.1:$rport; export 127.0.0.1:$port; disk $d/img; meta-disk internal; }
}
EOC
  local tw=("$d/twinbd" --config "$d/conf" --node n --run-dir "$d/run")
  "${tw[@]}" create-md ab >"$d/log" 2>&1 || die "create-md $s"
  "${tw[@]}" daemon >>"$d/log" 2>&1 &
  PIDS+=($!); echo $! >"$d/pid"
  for i in $(seq 100); do "${tw[@]}" up ab >/dev/null 2>&1 && break; sleep 0.1; done
  "${tw[@]}" primary --force ab >/dev/null || die "primary $s"
  wait_nbd "$port"
}

start_twinbd a $PA 7801
start_twinbd b $PB 7802
truncate -s "$FILE_SIZE" "$TMP/nk.img"
nbdkit -f -i 127.0.0.1 -p $PK file "$TMP/nk.img" >"$TMP/nk.log" 2>&1 &
PIDS+=($!); echo $! >"$TMP/nk.pid"
wait_nbd $PK

sa=$(nbdinfo --size nbd://127.0.0.1:$PA); sk=$(nbdinfo --size nbd://127.0.0.1:$PK)
WSET=$(( (sa < sk ? sa : sk) / 1048576 * 1048576 ))
. scripts/bench-lib.sh
for p in $PA $PB $PK; do fio_json $p --rw=write --bs=1m --iodepth=8 >/dev/null; done
sync
log "A=$A_REV B=$B_REV nbdkit $(nbdkit --version | awk '{print $2}'); ${RUNTIME}s x $RUNS runs; working set $WSET"

run_one() { # port row
  local port=$1 row=$2
  case $row in
    1m) fio_json "$port" --runtime="$RUNTIME" --time_based --rw=write --bs=1m --iodepth=8 | metric write_mibs ;;
    rw32) fio_json "$port" --runtime="$RUNTIME" --time_based --rw=randwrite --bs=4k --iodepth=32 | metric write_iops ;;
    rr32) fio_json "$port" --runtime="$RUNTIME" --time_based --rw=randread --bs=4k --iodepth=32 | metric read_iops ;;
    fsync1) fio_json "$port" --runtime="$RUNTIME" --time_based --rw=randwrite --bs=4k --iodepth=1 --fsync=1 | metric write_iops ;;
    fua32|fua1)
      "$CLIENT" bench --json --no-progress --duration "${RUNTIME}s" --size "$WSET" --rw randwrite --bs 4k --fua \
        --iodepth "${row#fua}" "nbd://127.0.0.1:$port/" | metric bench_iops ;;
    *) die "unknown row $row" ;;
  esac
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

for row in "${ROWSEL[@]}"; do
  va=() vb=() vk=() ca=() cb=() ck=()
  for i in $(seq "$RUNS"); do
    for s in a b k; do
      port=$PA; [ $s = b ] && port=$PB; [ $s = k ] && port=$PK
      pid=$(cat "$TMP/$s/pid" 2>/dev/null || cat "$TMP/nk.pid")
      sync
      t0=$(cpu_ticks "$pid")
      v=$(run_one $port "$row")
      t1=$(cpu_ticks "$pid")
      # requests = rate x runtime (MiB/s for 1m: 1 MiB requests)
      c=$(python3 -c "import sys; v,t,hz,rt=map(float,sys.argv[1:]); print('%.1f' % (t/hz*1e6/(v*rt)) if v else 'nan')" "$v" $((t1 - t0)) "$HZ" "$RUNTIME")
      log "$row run $i $s: $v  (server CPU ${c} us/req)"
      case $s in a) va+=("$v"); ca+=("$c");; b) vb+=("$v"); cb+=("$c");; k) vk+=("$v"); ck+=("$c");; esac
    done
  done
  ma=$(median "${va[@]}"); mb=$(median "${vb[@]}"); mk=$(median "${vk[@]}")
  echo "$row: A($A_REV) $ma  B($B_REV) $mb  nbdkit $mk | B/A $(ratio "$mb" "$ma")  A/nbdkit $(ratio "$ma" "$mk")  B/nbdkit $(ratio "$mb" "$mk")"
  echo "  runs A: ${va[*]}; B: ${vb[*]}; nbdkit: ${vk[*]}"
  echo "  server CPU us/req medians: A $(median "${ca[@]}")  B $(median "${cb[@]}")  nbdkit $(median "${ck[@]}")"
done
