# Shared by scripts/bench.sh and scripts/bench-repl.sh (sourced, not run).
# The caller defines die, TMP (scratch dir) and WSET (working set, bytes).

# fio_json port args...: one fio run against the default export; JSON on stdout.
fio_json() {
  local port=$1; shift
  # fio's nbd engine prints "fio: connected to NBD server" before the JSON.
  fio --name=bench --ioengine=nbd --uri="nbd://127.0.0.1:$port/" --size="$WSET" \
      --output-format=json "$@" 2>"$TMP/fio.err" || { cat "$TMP/fio.err" >&2; die "fio failed"; }
}

# metric NAME < fio or twinbd-bench JSON
metric() {
  python3 -c '
import json, sys
name, s = sys.argv[1], sys.stdin.read()
j = json.loads(s[s.index("{"):])
if name == "bench_iops":
    print("%.1f" % j["iops"]); sys.exit()
job = j["jobs"][0]
v = {"write_iops": job["write"]["iops"], "read_iops": job["read"]["iops"],
     "write_mibs": job["write"]["bw_bytes"] / 2**20}[name]
print("%.1f" % v)' "$1"
}

median() { python3 -c 'import statistics, sys; print("%.1f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

# ratio A B: A/B with two decimals, "n/a" when B is 0.
ratio() { python3 -c 'import sys; a, b = map(float, sys.argv[1:]); print("%.2f" % (a / b) if b else "n/a")' "$1" "$2"; }
