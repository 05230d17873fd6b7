#!/usr/bin/env bash
# A/B of the replicated write path: two twinbd builds (A = a base commit,
# B = the working tree, or two given binaries), each running its own pair
# of daemons (alpha Primary, beta Secondary, protocol C over loopback), on
# the same fio row, interleaved A,B,B,A,A,B,... so that drift of this
# shared host hits both alike. Each side's files are fresh (sparse, new
# metadata) and pre-filled the same way (1 MiB writes over the whole
# working set, then sync) before the first run. Reports the runs, the
# medians and B/A.
#
# Usage: scripts/bench-ab.sh [BASE_COMMIT]      (default: main)
#
# Environment:
#   AB_ROW        randwrite (4k randwrite qd32, IOPS; default), seqwrite
#                 (1M write qd8, MiB/s), randread, fsync (4k qd1 fsync=1),
#                 or a quoted list of them ("randwrite seqwrite")
#   AB_RUNS       runs per side and row (default 6)
#   AB_RUNTIME    seconds per run (default 8)
#   AB_FILE_SIZE  backing file size per node (default 1G)
#   AB_PROTOCOL   A, B or C (default C); "none" for a one-node resource
#   AB_BIN_A, AB_BIN_B  use these binaries instead of building
#   AB_PORT_BASE  first of 16 TCP ports (default 12800)
#   AB_GOMAXPROCS GOMAXPROCS for all four daemons (default: Go's)
#   AB_OUT        where the report is appended (default /tmp/twinbd-bench-ab.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

BASE_COMMIT=${1:-main}
ROWS_WANTED=${AB_ROW:-randwrite}
RUNS=${AB_RUNS:-6}
RUNTIME=${AB_RUNTIME:-8}
FILE_SIZE=${AB_FILE_SIZE:-1G}
PROTO=${AB_PROTOCOL:-C}
PORT=${AB_PORT_BASE:-12800}
OUT=${AB_OUT:-/tmp/twinbd-bench-ab.txt}

log() { echo "bench-ab: $*" >&2; }
die() { log "$*"; exit 1; }
for cmd in fio nbdinfo python3; do
  command -v "$cmd" >/dev/null || die "$cmd not found (scripts/deps.sh installs it)"
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/twinbd-bench-ab.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Binaries.
if [ -n "${AB_BIN_A:-}" ]; then
  cp "$AB_BIN_A" "$TMP/twinbd-A"
  DESC_A=$AB_BIN_A
else
  git worktree add -q --detach "$TMP/src-A" "$BASE_COMMIT"
  (cd "$TMP/src-A" && CGO_ENABLED=0 go build -o "$TMP/twinbd-A" ./cmd/twinbd)
  git worktree remove --force "$TMP/src-A"
  DESC_A="$BASE_COMMIT ($(git rev-parse --short "$BASE_COMMIT"))"
fi
if [ -n "${AB_BIN_B:-}" ]; then
  cp "$AB_BIN_B" "$TMP/twinbd-B"
  DESC_B=$AB_BIN_B
else
  CGO_ENABLED=0 go build -o "$TMP/twinbd-B" ./cmd/twinbd
  DESC_B="working tree at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo '+changes')"
fi

# One pair of daemons per side, each with its own config and run dir.
setup_side() { # side port_base
  local side=$1 b=$2 dir=$TMP/$1
  mkdir -p "$dir/run"
  if [ "$PROTO" = none ]; then
    cat >"$dir/twinbd.conf" <<EOF
resource r0 {
  on alpha { node-id 0; address 127.0.0.1:$b; export 127.0.0.1:$((b + 2)); disk $dir/a.img; meta-disk internal; }
}
EOF
  else
    cat >"$dir/twinbd.conf" <<EOF
resource r0 {
  net { protocol $PROTO; shared-secret "bench"; }
  on alpha { node-id 0; address 127.0.0.1:$b; export 127.0.0.1:$((b + 2)); disk $dir/a.img; meta-disk internal; }
  on beta  { node-id 1; address 127.0.0.1:$((b + 1)); export 127.0.0.1:$((b + 3)); disk $dir/b.img; meta-disk internal; }
}
EOF
  fi
  truncate -s "$FILE_SIZE" "$dir/a.img" "$dir/b.img"
  local bin=$TMP/twinbd-$side
  local A=("$bin" --config "$dir/twinbd.conf" --node alpha --run-dir "$dir/run")
  local B=("$bin" --config "$dir/twinbd.conf" --node beta --run-dir "$dir/run")
  "${A[@]}" create-md r0 >/dev/null
  [ "$PROTO" = none ] || "${B[@]}" create-md r0 >/dev/null
  if [ -n "${AB_GOMAXPROCS:-}" ]; then export GOMAXPROCS=$AB_GOMAXPROCS; fi
  "${A[@]}" daemon --up all >"$dir/alpha.log" 2>&1 & PIDS+=($!)
  echo $! >"$dir/alpha.pid"
  if [ "$PROTO" != none ]; then
    "${B[@]}" daemon --up all >"$dir/beta.log" 2>&1 & PIDS+=($!)
    echo $! >"$dir/beta.pid"
  fi
  unset GOMAXPROCS
  local i
  for i in $(seq 100); do "${A[@]}" status >/dev/null 2>&1 && { [ "$PROTO" = none ] || "${B[@]}" status >/dev/null 2>&1; } && break; sleep 0.1; done
  "${A[@]}" primary --force r0
  [ "$PROTO" = none ] || "${A[@]}" wait-sync r0 >/dev/null
}
setup_side A "$PORT"
setup_side B $((PORT + 8))
port_of() { [ "$1" = A ] && echo $((PORT + 2)) || echo $((PORT + 10)); }

WSET=$(( $(nbdinfo --size "nbd://127.0.0.1:$(port_of A)") / 1048576 * 1048576 ))
. scripts/bench-lib.sh
for side in A B; do
  log "pre-filling $side"
  fio_json "$(port_of "$side")" --rw=write --bs=1m --iodepth=8 >/dev/null
done
sync
log "A = $DESC_A; B = $DESC_B; protocol $PROTO; pids A $(cat "$TMP"/A/*.pid | tr '\n' ' ')B $(cat "$TMP"/B/*.pid | tr '\n' ' ')"
[ -n "${AB_PAUSE:-}" ] && { log "pausing: $AB_PAUSE"; sleep "$AB_PAUSE"; }

# cpu_ticks SIDE: utime+stime (clock ticks) of that side's daemons.
cpu_ticks() {
  local t=0 p
  for p in $(cat "$TMP/$1"/*.pid); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)
# ops_of KIND < fio JSON: completed operations of that kind.
ops_of() { python3 -c '
import json, sys
s = sys.stdin.read(); j = json.loads(s[s.index("{"):])
print(j["jobs"][0][sys.argv[1]]["total_ios"])' "$1"; }

REPORT=()
for row in $ROWS_WANTED; do
  case $row in
    randwrite) label="fio 4k randwrite iodepth 32 (IOPS)" metric_name=write_iops kind=write args=(--rw=randwrite --bs=4k --iodepth=32) ;;
    seqwrite) label="fio 1M write iodepth 8 (MiB/s)" metric_name=write_mibs kind=write args=(--rw=write --bs=1m --iodepth=8) ;;
    randread) label="fio 4k randread iodepth 32 (IOPS)" metric_name=read_iops kind=read args=(--rw=randread --bs=4k --iodepth=32) ;;
    fsync) label="fio 4k randwrite iodepth 1 fsync=1 (IOPS)" metric_name=write_iops kind=write args=(--rw=randwrite --bs=4k --iodepth=1 --fsync=1) ;;
    *) die "unknown row $row" ;;
  esac
  va="" vb="" ca="" cb=""
  for i in $(seq "$RUNS"); do
    order="A B"; [ $((i % 2)) = 0 ] && order="B A"
    for side in $order; do
      sync
      t0=$(cpu_ticks "$side")
      fio_json "$(port_of "$side")" --runtime="$RUNTIME" --time_based "${args[@]}" >"$TMP/run.json"
      t1=$(cpu_ticks "$side")
      v=$(metric "$metric_name" <"$TMP/run.json")
      # The daemons' CPU (both nodes) per operation, in microseconds: less
      # sensitive than throughput to what else this host runs.
      c=$(python3 -c 'import sys; t, hz, n = map(float, sys.argv[1:]); print("%.1f" % (t / hz * 1e6 / n))' $((t1 - t0)) "$HZ" "$(ops_of "$kind" <"$TMP/run.json")")
      log "$row run $i $side: $v; daemons' CPU ${c} us/op"
      if [ "$side" = A ]; then va+=" $v" ca+=" $c"; else vb+=" $v" cb+=" $c"; fi
    done
  done
  # shellcheck disable=SC2086
  ma=$(median $va) mb=$(median $vb)
  REPORT+=("$label, protocol $PROTO: A median $ma (runs$va), B median $mb (runs$vb), B/A $(ratio "$mb" "$ma")")
  # shellcheck disable=SC2086
  ma=$(median $ca) mb=$(median $cb)
  REPORT+=("  daemons' CPU per op (us): A median $ma (runs$ca), B median $mb (runs$cb), B/A $(ratio "$mb" "$ma")")
done

{
  echo "== $(date -u +%Y-%m-%dT%H:%MZ) bench-ab: A = $DESC_A, B = $DESC_B; $RUNS runs x ${RUNTIME}s per side, order A,B,B,A,...; files $FILE_SIZE pre-filled; GOMAXPROCS ${AB_GOMAXPROCS:-default}"
  printf '%s\n' "${REPORT[@]}"
} | tee -a "$OUT"
