#!/usr/bin/env bash
# What replication costs: twinbd standalone (a resource without a peer)
# against protocols A, B and C with the peer on the same host, on the four
# fio rows of the foundation benchmark; then resync: bytes on the wire
# against dirty bytes, throughput under a rate limit, and a checksum resync
# of identical data. `make bench` runs it after scripts/bench.sh.
#
# All four setups run at once (two daemons: alpha serves every export, beta
# is the peer of the replicated ones) so that rows interleave: for each run,
# each setup in turn. Medians are reported with the ratio to standalone.
# Both daemons and fio share this host's CPUs; on 2 cores that is the
# dominant cost, as the notes in docs/benchmarks.md explain.
#
# Environment:
#   BENCH_RUNTIME     seconds per run (default 10)
#   BENCH_RUNS        runs per setup and row (default 3)
#   BENCH_OUT         markdown result file (default bench-repl-results.md)
#   BENCH_FILE_SIZE   backing file size per node (default 1G)
#   BENCH_RESYNC_RATE rate limit for the rate row (default 40M)
#   BENCH_TMPDIR      where the backing files go (default $TMPDIR or /tmp)
#   BENCH_PORT_BASE   first of 22 consecutive TCP ports used (default 11800)
#   BENCH_GOMAXPROCS  GOMAXPROCS for both daemons (default: Go's, the CPU count)
#   TWINBD_BIN        twinbd binary (default bin/twinbd)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${BENCH_RUNTIME:-10}
RUNS=${BENCH_RUNS:-3}
OUT=${BENCH_OUT:-bench-repl-results.md}
FILE_SIZE=${BENCH_FILE_SIZE:-1G}
RATE=${BENCH_RESYNC_RATE:-40M}
BASE=${BENCH_PORT_BASE:-11800}
TWINBD_BIN=${TWINBD_BIN:-bin/twinbd}

log() { echo "bench-repl: $*" >&2; }
die() { log "$*"; exit 1; }
for cmd in fio nbdinfo python3; do
  command -v "$cmd" >/dev/null || die "$cmd not found (scripts/deps.sh installs it)"
done
[ -x "$TWINBD_BIN" ] || die "$TWINBD_BIN not found: run make build"
TWINBD_BIN=$(realpath "$TWINBD_BIN")

TMP=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/twinbd-bench-repl.XXXXXX")
CONF=$TMP/twinbd.conf
A=("$TWINBD_BIN" --config "$CONF" --node alpha --run-dir "$TMP/run")
B=("$TWINBD_BIN" --config "$CONF" --node beta --run-dir "$TMP/run")
PIDS=()
cleanup() {
  "${A[@]}" down all >/dev/null 2>&1 || true
  "${B[@]}" down all >/dev/null 2>&1 || true
  local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SETUPS=(standalone A B C)
port_of() { # setup -> NBD port on alpha
  case $1 in standalone) echo $((BASE)) ;; A) echo $((BASE + 1)) ;; B) echo $((BASE + 2)) ;; C) echo $((BASE + 3)) ;; rate) echo $((BASE + 4)) ;; csums) echo $((BASE + 5)) ;; esac
}

{
  echo "resource standalone {"
  echo "  on alpha { node-id 0; address 127.0.0.1:$((BASE + 6)); export 127.0.0.1:$(port_of standalone); disk $TMP/standalone.img; meta-disk internal; }"
  echo "}"
  i=7
  for s in A B C rate csums; do
    net="protocol $s; shared-secret \"bench\";" disk=""
    [ "$s" = rate ] && net="protocol C; shared-secret \"bench\";" disk="disk { resync-rate $RATE; }"
    [ "$s" = csums ] && net="protocol C; shared-secret \"bench\"; csums-alg xxhash64;"
    echo "resource p$s {"
    echo "  net { $net }"
    [ -n "$disk" ] && echo "  $disk"
    echo "  on alpha { node-id 0; address 127.0.0.1:$((BASE + i)); export 127.0.0.1:$(port_of "$s"); disk $TMP/$s-a.img; meta-disk internal; }"
    echo "  on beta  { node-id 1; address 127.0.0.1:$((BASE + i + 5)); export 127.0.0.1:$((BASE + i + 10)); disk $TMP/$s-b.img; meta-disk internal; }"
    echo "}"
    i=$((i + 1))
  done
} >"$CONF"
res_of() { [ "$1" = standalone ] && echo standalone || echo "p$1"; }

for f in standalone A-a A-b B-a B-b C-a C-b rate-a rate-b csums-a csums-b; do truncate -s "$FILE_SIZE" "$TMP/$f.img"; done
"${A[@]}" create-md standalone >/dev/null
for s in A B C rate csums; do
  "${A[@]}" create-md "p$s" >/dev/null
  "${B[@]}" create-md "p$s" >/dev/null
done
if [ -n "${BENCH_GOMAXPROCS:-}" ]; then export GOMAXPROCS=$BENCH_GOMAXPROCS; fi
"${A[@]}" daemon --up all >"$TMP/alpha.log" 2>&1 & PIDS+=($!)
"${B[@]}" daemon --up all >"$TMP/beta.log" 2>&1 & PIDS+=($!)
unset GOMAXPROCS
for i in $(seq 100); do "${A[@]}" status >/dev/null 2>&1 && "${B[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
for s in standalone A B C rate csums; do "${A[@]}" primary --force "$(res_of "$s")"; done

# json_field RES PATH... : a value from alpha's status --json
jget() {
  "${A[@]}" status --json "$1" | python3 -c '
import json, sys
v = json.load(sys.stdin)[0]
for k in sys.argv[1:]:
    v = v[int(k)] if k.isdigit() else v[k]
print(v)' "${@:2}"
}
wait_sync() { "${A[@]}" wait-sync "$1" >/dev/null; }
for s in A B C rate csums; do wait_sync "p$s"; done
log "initial syncs done"

WSET=$(( $(nbdinfo --size "nbd://127.0.0.1:$(port_of C)") / 1048576 * 1048576 ))
. scripts/bench-lib.sh

for s in "${SETUPS[@]}"; do
  log "pre-filling $s"
  fio_json "$(port_of "$s")" --rw=write --bs=1m --iodepth=8 >/dev/null
done
sync

ROWS=() RAW=()
row() {
  local label=$1 metric_name=$2; shift 2
  declare -A vals=()
  local i s v
  for i in $(seq "$RUNS"); do
    for s in "${SETUPS[@]}"; do
      sync
      v=$(fio_json "$(port_of "$s")" --runtime="$RUNTIME" --time_based "$@" | metric "$metric_name")
      log "$label run $i $s: $v"
      vals[$s]="${vals[$s]:-} $v"
    done
  done
  local line="| $label" raw="- $label:" m0 m
  # shellcheck disable=SC2086
  m0=$(median ${vals[standalone]})
  for s in "${SETUPS[@]}"; do
    # shellcheck disable=SC2086
    m=$(median ${vals[$s]})
    if [ "$s" = standalone ]; then line+=" | $m"; else line+=" | $m ($(ratio "$m" "$m0"))"; fi
    raw+=" $s${vals[$s]};"
  done
  ROWS+=("$line |")
  RAW+=("$raw")
}

row "fio 4k randwrite iodepth 32 (IOPS)" write_iops --rw=randwrite --bs=4k --iodepth=32
row "fio 4k randread iodepth 32 (IOPS)" read_iops --rw=randread --bs=4k --iodepth=32
row "fio 4k randwrite iodepth 1 fsync=1 (IOPS)" write_iops --rw=randwrite --bs=4k --iodepth=1 --fsync=1
row "fio 1M write iodepth 8 (MiB/s)" write_mibs --rw=write --bs=1m --iodepth=8

# Resync 1: bytes on the wire against dirty bytes. Disconnect, write
# random 4 KiB blocks, reconnect, compare the growth of `sent`.
log "resync: bitmap resync after writes while disconnected"
"${A[@]}" disconnect pC
# --refill_buffers: fresh random (incompressible) data in every write.
fio_json "$(port_of C)" --rw=randwrite --bs=4k --iodepth=16 --number_ios=20000 --randrepeat=1 --refill_buffers >/dev/null
dirty_kib=$(jget pC connections 0 peer_devices 0 out-of-sync)
sent0=$(jget pC connections 0 peer_devices 0 sent)
t0=$(date +%s.%N)
"${A[@]}" connect pC
wait_sync pC
t1=$(date +%s.%N)
sent1=$(jget pC connections 0 peer_devices 0 sent)
wire_kib=$((sent1 - sent0))
RESYNC_ROWS=("| bitmap resync after 20000 random 4 KiB writes while disconnected | dirty $dirty_kib KiB | on the wire $wire_kib KiB ($(ratio "$wire_kib" "$dirty_kib")x dirty) | $(python3 -c "print('%.2f s' % ($t1 - $t0))") |")

# Resync 2: full sync under resync-rate: throughput against the limit.
log "resync: full sync limited to $RATE/s"
t0=$(date +%s.%N) # includes the reconnect that starts the sync
"${B[@]}" invalidate prate
wait_sync prate
t1=$(date +%s.%N)
size_kib=$(jget prate devices 0 size)
rate_b=$(python3 -c "import sys; s=sys.argv[1]; m={'K':1024,'M':1<<20,'G':1<<30}; print(int(float(s[:-1])*m[s[-1]]) if s[-1] in m else int(s))" "$RATE")
tput=$(python3 -c "print('%.1f' % ($size_kib * 1024 / ($t1 - $t0) / 2**20))")
RESYNC_ROWS+=("| full sync of $((size_kib / 1024)) MiB, resync-rate $RATE | $tput MiB/s | $(python3 -c "print('%.0f%%' % (100 * $size_kib * 1024 / ($t1 - $t0) / $rate_b))") of the limit | $(python3 -c "print('%.2f s' % ($t1 - $t0))") |")

# Resync 3: checksum-based full resync of identical data.
log "resync: checksum resync of identical data"
fio_json "$(port_of csums)" --rw=write --bs=1m --iodepth=8 >/dev/null
"${A[@]}" wait-sync pcsums
sent0=$(jget pcsums connections 0 peer_devices 0 sent)
t0=$(date +%s.%N)
"${B[@]}" invalidate pcsums
wait_sync pcsums
t1=$(date +%s.%N)
sent1=$(jget pcsums connections 0 peer_devices 0 sent)
size_kib=$(jget pcsums devices 0 size)
RESYNC_ROWS+=("| checksum resync (csums-alg) of $((size_kib / 1024)) MiB of identical data | $((sent1 - sent0)) KiB on the wire | $(ratio "$((sent1 - sent0))" "$size_kib")x the device | $(python3 -c "print('%.2f s' % ($t1 - $t0))") |")

{
  echo "# What replication costs: standalone vs protocols A, B, C"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, kernel $(uname -r), backing files $FILE_SIZE on $(findmnt -n -o FSTYPE --target "$TMP" 2>/dev/null || stat -f -c %T "$TMP"),"
  echo "working set $WSET bytes, ${RUNTIME}s per run, medians of $RUNS interleaved runs per setup; ratio to standalone in brackets."
  echo "Both nodes run on this host (peer link over loopback) and share its CPUs with fio; daemons' GOMAXPROCS: ${BENCH_GOMAXPROCS:-default ($(nproc))}."
  echo
  echo "| row | standalone | protocol A | protocol B | protocol C |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "| resync | | | time |"
  echo "| --- | ---: | ---: | ---: |"
  printf '%s\n' "${RESYNC_ROWS[@]}"
  echo
  echo "Runs:"
  printf '%s\n' "${RAW[@]}"
} >"$OUT"
cat "$OUT"
log "written to $OUT"
