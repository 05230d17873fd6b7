#!/usr/bin/env bash
# Side-by-side benchmark: twinbd (one node, no peer: the cost of the twinbd
# data path without the network round trip) against nbdkit's file plugin on
# the same kind of backing file. `make bench` runs it.
#
# Each server gets a sparse file of BENCH_FILE_SIZE in one temp dir (same
# filesystem), pre-filled the same way through NBD (sequential 1 MiB writes
# over the working set) so reads hit allocated blocks. Every row runs
# BENCH_RUNS times per server, INTERLEAVED (twinbd, nbdkit, twinbd, ...), and
# reports medians. Rows: fio's nbd engine (which never sends FUA and ignores
# --sync; --fsync=1 makes it FLUSH after every write) and `twinbd bench
# --fua`, which sets FUA on every write.
#
# Environment:
#   BENCH_RUNTIME    seconds per run (default 10)
#   BENCH_RUNS       runs per server and row (default 3)
#   BENCH_OUT        markdown result file (default bench-results.md)
#   BENCH_FILE_SIZE  backing file size (default 1G)
#   BENCH_TMPDIR     where the backing files go (default $TMPDIR or /tmp)
#   TWINBD_BIN       twinbd binary (default bin/twinbd)
#   BENCH_TWINBD_PORT / BENCH_NBDKIT_PORT / BENCH_REPL_PORT  (10909 / 10910 / 7790)
#   BENCH_TWINBD_CMD testing aid only: a shell command serving $FILE over NBD
#                    on 127.0.0.1:$PORT in the foreground, used instead of the
#                    twinbd daemon (the report says so).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${BENCH_RUNTIME:-10}
RUNS=${BENCH_RUNS:-3}
OUT=${BENCH_OUT:-bench-results.md}
FILE_SIZE=${BENCH_FILE_SIZE:-1G}
TWINBD_BIN=${TWINBD_BIN:-bin/twinbd}
TWINBD_PORT=${BENCH_TWINBD_PORT:-10909}
NBDKIT_PORT=${BENCH_NBDKIT_PORT:-10910}
REPL_PORT=${BENCH_REPL_PORT:-7790}

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }

for cmd in fio nbdkit nbdinfo python3; do
  command -v "$cmd" >/dev/null || die "$cmd not found (scripts/deps.sh installs it)"
done
[ -x "$TWINBD_BIN" ] || die "$TWINBD_BIN not found: run make build"
TWINBD_BIN=$(realpath "$TWINBD_BIN")

TMP=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/twinbd-bench.XXXXXX")
CONF=$TMP/twinbd.conf
RUN_DIR=$TMP/run
TW=("$TWINBD_BIN" --config "$CONF" --node benchnode --run-dir "$RUN_DIR")
TWINBD_PID= NBDKIT_PID=

stop_pid() { # pid: TERM, then KILL if it lingers
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  if [ -z "${BENCH_TWINBD_CMD:-}" ] && [ -n "$TWINBD_PID" ]; then
    "${TW[@]}" down bench >/dev/null 2>&1 || true
  fi
  stop_pid "$TWINBD_PID"
  stop_pid "$NBDKIT_PID"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_nbd() { # port logfile: until nbdinfo answers (30 s)
  local port=$1 logf=$2 i
  for i in $(seq 300); do
    nbdinfo "nbd://127.0.0.1:$port" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  [ -f "$logf" ] && tail -20 "$logf" >&2
  die "no NBD server on 127.0.0.1:$port"
}

retry() { # run a command until it succeeds (10 s): the daemon may still be starting
  local i
  for i in $(seq 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  "$@" # once more, showing the error
}

start_nbdkit() {
  truncate -s "$FILE_SIZE" "$TMP/nbdkit.img"
  nbdkit -f -i 127.0.0.1 -p "$NBDKIT_PORT" file "$TMP/nbdkit.img" >"$TMP/nbdkit.log" 2>&1 &
  NBDKIT_PID=$!
  wait_nbd "$NBDKIT_PORT" "$TMP/nbdkit.log"
}

start_twinbd() {
  truncate -s "$FILE_SIZE" "$TMP/twinbd.img"
  if [ -n "${BENCH_TWINBD_CMD:-}" ]; then
    log "BENCH_TWINBD_CMD set: the twinbd column is NOT twinbd"
    PORT=$TWINBD_PORT FILE=$TMP/twinbd.img bash -c "$BENCH_TWINBD_CMD" >"$TMP/twinbd.log" 2>&1 &
    TWINBD_PID=$!
    wait_nbd "$TWINBD_PORT" "$TMP/twinbd.log"
    return
  fi
  mkdir -p "$RUN_DIR"
  cat >"$CONF" <<EOF
resource bench {
  on benchnode { node-id 0; address 127.0.0.1:$REPL_PORT; export 127.0.0.1:$TWINBD_PORT; disk $TMP/twinbd.img; meta-disk internal; }
}
EOF
  "${TW[@]}" create-md bench >"$TMP/twinbd.log" 2>&1 || { cat "$TMP/twinbd.log" >&2; die "create-md failed"; }
  "${TW[@]}" daemon >>"$TMP/twinbd.log" 2>&1 &
  TWINBD_PID=$!
  retry "${TW[@]}" up bench || { tail -20 "$TMP/twinbd.log" >&2; die "up failed"; }
  "${TW[@]}" primary --force bench || { tail -20 "$TMP/twinbd.log" >&2; die "primary failed"; }
  wait_nbd "$TWINBD_PORT" "$TMP/twinbd.log"
}

export_size() { nbdinfo --size "nbd://127.0.0.1:$1"; }

. scripts/bench-lib.sh

ROWS=()
# row LABEL METRIC KIND ARGS...: KIND is fio or bench; runs interleaved.
row() {
  local label=$1 metric_name=$2 kind=$3; shift 3
  local tw=() nk=() i srv port v
  for i in $(seq "$RUNS"); do
    for srv in twinbd nbdkit; do
      port=$TWINBD_PORT; [ "$srv" = nbdkit ] && port=$NBDKIT_PORT
      sync # write back the previous run's dirty pages: neither server pays for the other's
      if [ "$kind" = fio ]; then
        v=$(fio_json "$port" --runtime="$RUNTIME" --time_based "$@" | metric "$metric_name")
      else
        v=$("$TWINBD_BIN" bench --json --no-progress --duration "${RUNTIME}s" --size "$WSET" "$@" \
              "nbd://127.0.0.1:$port/" | metric "$metric_name")
      fi
      log "$label run $i $srv: $v"
      if [ "$srv" = twinbd ]; then tw+=("$v"); else nk+=("$v"); fi
    done
  done
  local mt mn ratio
  mt=$(median "${tw[@]}"); mn=$(median "${nk[@]}")
  ratio=$(ratio "$mt" "$mn")
  ROWS+=("| $label | $mt | $mn | $ratio |")
  RAW+=("- $label: twinbd ${tw[*]}; nbdkit ${nk[*]}")
}
RAW=()

log "temp dir $TMP ($(findmnt -n -o FSTYPE --target "$TMP" 2>/dev/null || stat -f -c %T "$TMP")), ${RUNTIME}s x $RUNS runs per server and row"
start_twinbd
start_nbdkit
size_tw=$(export_size "$TWINBD_PORT"); size_nk=$(export_size "$NBDKIT_PORT")
# The same working set on both: the smaller export (twinbd keeps its
# metadata inside the disk), rounded down to 1 MiB.
WSET=$(( (size_tw < size_nk ? size_tw : size_nk) / 1048576 * 1048576 ))
log "export sizes: twinbd $size_tw, nbdkit $size_nk; working set $WSET bytes"

for port in "$TWINBD_PORT" "$NBDKIT_PORT"; do
  log "pre-filling the export on port $port"
  fio_json "$port" --rw=write --bs=1m --iodepth=8 >/dev/null
done
sync

row "fio 4k randwrite iodepth 32 (IOPS)" write_iops fio --rw=randwrite --bs=4k --iodepth=32
row "fio 4k randread iodepth 32 (IOPS)" read_iops fio --rw=randread --bs=4k --iodepth=32
row "fio 4k randwrite iodepth 1 fsync=1 (IOPS)" write_iops fio --rw=randwrite --bs=4k --iodepth=1 --fsync=1
row "fio 1M write iodepth 8 (MiB/s)" write_mibs fio --rw=write --bs=1m --iodepth=8
row "twinbd bench 4k randwrite --fua iodepth 1 (IOPS)" bench_iops bench --rw randwrite --bs 4k --fua --iodepth 1
row "twinbd bench 4k randwrite --fua iodepth 32 (IOPS)" bench_iops bench --rw randwrite --bs 4k --fua --iodepth 32

{
  echo "# twinbd vs nbdkit (file plugin)"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, kernel $(uname -r), backing files $FILE_SIZE sparse + pre-filled on $(findmnt -n -o FSTYPE --target "$TMP" 2>/dev/null || stat -f -c %T "$TMP"),"
  echo "working set $WSET bytes, ${RUNTIME}s per run, medians of $RUNS interleaved runs per server."
  echo "twinbd: $("$TWINBD_BIN" --version 2>/dev/null || git describe --always --dirty 2>/dev/null || echo unknown), one node, no peer; nbdkit $(nbdkit --version | awk '{print $2}'); $(fio --version)."
  if [ -n "${BENCH_TWINBD_CMD:-}" ]; then
    echo
    echo "**The twinbd column was served by BENCH_TWINBD_CMD (\`$BENCH_TWINBD_CMD\`), not twinbd.**"
  fi
  echo
  echo "| row | twinbd (median) | nbdkit (median) | twinbd / nbdkit |"
  echo "| --- | ---: | ---: | ---: |"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Runs:"
  printf '%s\n' "${RAW[@]}"
} >"$OUT"
cat "$OUT"
log "written to $OUT"
