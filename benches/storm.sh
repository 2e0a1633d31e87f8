#!/usr/bin/env bash
# Issue 18 goal 5: 20,000 viewers, one connection each, through one edge. First the harness's own
# ceiling (viewers straight at the simulator, no edge), then the segment storm through vedge, with
# the edge's RSS and CPU sampled every second (pidstat). Prints the harness's report lines and the
# edge's peak RSS and CPU per 1,000 connections. The harness spreads its viewers over as many
# processes as each one's open-file limit needs (`--processes auto`: 2 for 20,000 viewers under a
# 20,000-descriptor limit); PROCESSES=N sets the count, and the report lists each process's share,
# timer lag and CPU/RSS.
#
#   benches/storm.sh                       # VIEWERS=20000 DURATION=60s PROCESSES=auto
#   VIEWERS=2000 DURATION=15s benches/storm.sh
#   PROCESSES=4 benches/storm.sh           # the harness's ceiling with more, smaller processes
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VIEWERS=${VIEWERS:-20000}
DURATION=${DURATION:-60s}
PROCESSES=${PROCESSES:-auto}
VEDGE=${VEDGE:-$ROOT/target/release/vedge}
OUT=${OUT:-$ROOT/benches/results/storm-$(date +%Y%m%d-%H%M%S)}
[[ -x $VEDGE ]] || { echo "no vedge at $VEDGE (cargo build --release --bin vedge)"; exit 1; }
command -v pidstat >/dev/null || { echo "pidstat missing (apt-get install -y sysstat)"; exit 1; }
mkdir -p "$OUT"
source "$ROOT/benches/lib.sh"
# 20,000 connections need more than the usual 20,000-descriptor hard limit (root may raise it).
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

OP=$(free_port); EP=$(free_port)
"$VEDGE" origin --listen "127.0.0.1:$OP" > "$OUT/origin.log" 2>&1 &
PIDS+=($!)
printf 'listen = "127.0.0.1:%s"\norigin = "http://127.0.0.1:%s"\n' "$EP" "$OP" > "$OUT/edge.toml"
"$VEDGE" serve --config "$OUT/edge.toml" --log warn > "$OUT/edge.log" 2>&1 &
EDGE=$!
PIDS+=($EDGE)
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$EP/live/warm/master.m3u8" && break; sleep 0.1; done
{ date -u +"date: %Y-%m-%dT%H:%M:%SZ"; lscpu | grep 'Model name'; uname -r; nproc;
  git -C "$ROOT" rev-parse --short HEAD; echo "VIEWERS=$VIEWERS DURATION=$DURATION PROCESSES=$PROCESSES"; } | tee "$OUT/env.txt"

echo "== ceiling: $VIEWERS viewers straight at the simulator" >&2
"$VEDGE" bench live-burst --target "http://127.0.0.1:$OP/live/{run}/master.m3u8" \
  --viewers "$VIEWERS" --duration "$DURATION" --scenario segment-storm --processes "$PROCESSES" \
  --json "$OUT/ceiling.json" > "$OUT/ceiling.txt" 2>&1 || true
tail -30 "$OUT/ceiling.txt"

echo "== through vedge: $VIEWERS viewers" >&2
pidstat -r -u -h -p "$EDGE" 1 > "$OUT/edge-pidstat.txt" &
PS=$!
PIDS+=($PS)
"$VEDGE" bench live-burst --target "http://127.0.0.1:$EP/live/{run}/master.m3u8" \
  --origin-stats "http://127.0.0.1:$OP/__stats" --viewers "$VIEWERS" --duration "$DURATION" \
  --scenario segment-storm --processes "$PROCESSES" --json "$OUT/storm.json" --html "$OUT/storm.html" \
  > "$OUT/storm.txt" 2>&1 || true
kill "$PS" 2>/dev/null || true
tail -30 "$OUT/storm.txt"
python3 - "$OUT" "$VIEWERS" <<'PY' | tee "$OUT/edge-cost.txt"
import sys
out, viewers = sys.argv[1], int(sys.argv[2])
rss, cpu = [], []
cols = None
for line in open(f"{out}/edge-pidstat.txt"):
    f = line.split()
    if line.startswith("#"):
        cols = f[1:]
        continue
    if not cols or len(f) != len(cols):
        continue
    row = dict(zip(cols, f))
    try:
        rss.append(int(row["RSS"]))
        cpu.append(float(row["%CPU"]))
    except (KeyError, ValueError):
        pass
if rss:
    busy = sorted(cpu)[len(cpu) // 2]
    grown = (max(rss) - rss[0]) / 1024
    print(f"edge RSS at start {rss[0] / 1024:.0f} MiB, peak {max(rss) / 1024:.0f} MiB (+{grown / viewers * 1000:.1f} MiB per 1,000 viewers); "
          f"median CPU {busy:.0f} % ({busy / viewers * 1000:.2f} % per 1,000 viewers); max CPU {max(cpu):.0f} %")
PY
