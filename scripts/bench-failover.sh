#!/usr/bin/env bash
# make bench, failover part: time from kill -9 of the Primary to the first
# write answered by the new Primary, and of a planned switchover (secondary
# --force here, primary there, to the first write answered there), with
# real daemons and a real witness on loopback, default timers (ping-int 1,
# ping-timeout 5), 8 writers of self-identifying 4 KiB blocks following the
# Primary; every run also checks that no answered write was lost.
#
# Knobs: FAILOVER_RUNS (default 10), OUT (report file).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${FAILOVER_RUNS:-10}
OUT=${OUT:-/tmp/twinbd-bench-failover.txt}
export PATH=/usr/local/go/bin:$PATH
echo "== failover: $RUNS runs (plain build bin/twinbd, not -race)"
TWINBD_BIN="$PWD/bin/twinbd" TWINBD_FAILOVER_RUNS="$RUNS" TWINBD_FAILOVER_REPORT="$OUT" \
  go test ./cmd/twinbd -run '^TestFailoverTiming$' -count=1 -timeout 30m -v | grep -E 'run [0-9]+:|^(---|ok|FAIL)' || true
echo "== failover summary ($OUT)"
cat "$OUT"
