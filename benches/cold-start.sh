#!/usr/bin/env bash
# Issue 18 goal 3: the first burst after a fresh start. For each setting of
# `origin_client.preconnect`, RUNS times: start a new vedge (empty cache, no origin connection
# yet), wait until it answers, then 500 viewers ask for one cold segment at once (`vedge bench
# collapse`, the origin answers each segment after 200 ms: ../shared/bench-peers/origin_slow.py)
# followed by SEGMENTS more at a 1 s cadence. The first burst of each process is the figure: its
# TTFB p99 against the origin's 200 ms (goal: <= origin + 15 ms with preconnect on).
#
#   benches/cold-start.sh                       # RUNS=3 N=500 SEGMENTS=3
#   VEDGE=target/release/vedge RUNS=5 benches/cold-start.sh
#
# Needs python3, the peer fixtures (../shared/bench-peers/gen-fixtures.sh, /tmp/peers/fixtures).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/bench-peers}
RUNS=${RUNS:-3}
N=${N:-500}
SEGMENTS=${SEGMENTS:-3}
VEDGE=${VEDGE:-$ROOT/target/release/vedge}
OUT=${OUT:-$ROOT/benches/results/cold-$(date +%Y%m%d-%H%M%S)}
[[ -x $VEDGE ]] || { echo "no vedge at $VEDGE (cargo build --release --bin vedge)"; exit 1; }
[[ -d /tmp/peers/fixtures/live-src ]] || [[ -d /tmp/peers/fixtures ]] || { echo "run $PEERS/gen-fixtures.sh first"; exit 1; }
mkdir -p "$OUT"
source "$ROOT/benches/lib.sh"

OP=$(free_port)
python3 "$PEERS/origin_slow.py" --port "$OP" > "$OUT/origin.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$OP/__stats"
{ date -u +"date: %Y-%m-%dT%H:%M:%SZ"; lscpu | grep 'Model name'; uname -r; nproc;
  git -C "$ROOT" rev-parse --short HEAD; echo "N=$N SEGMENTS=$SEGMENTS RUNS=$RUNS"; } > "$OUT/env.txt"

for ((r = 1; r <= RUNS; r++)); do
  for pre in true false; do
    EP=$(free_port)
    printf 'listen = "127.0.0.1:%s"\norigin = "http://127.0.0.1:%s"\n[origin_client]\npreconnect = %s\n' \
      "$EP" "$OP" "$pre" > "$OUT/edge-$pre.toml"
    "$VEDGE" serve --config "$OUT/edge-$pre.toml" --log warn > "$OUT/edge-$pre-$r.log" 2>&1 &
    edge=$!
    for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$EP/__cold_start_probe" && break; sleep 0.1; done
    sleep 1   # what an operator's health check would leave before traffic
    echo "[$(date +%H:%M:%S)] run $r preconnect=$pre" >&2
    timeout 120 "$VEDGE" bench collapse --target "127.0.0.1:$EP" --n "$N" --segments "$SEGMENTS" \
      --origin-stats "http://127.0.0.1:$OP/__stats" --json "$OUT/pre-$pre-$r.json" \
      > "$OUT/pre-$pre-$r.txt"
    grep -E "^single" "$OUT/pre-$pre-$r.txt" >&2 || true
    kill "$edge"; wait "$edge" 2>/dev/null || true
  done
done

python3 - "$OUT" "$RUNS" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
print("| preconnect | first burst TTFB p50 / p99 ms (median of runs) | p99 per run | on arrival p99 per run | origin requests | later segments: median p99 ms |")
print("|---|---:|---|---|---|---:|")
for pre in ["true", "false"]:
    rs = [json.load(open(f"{out}/pre-{pre}-{r}.json")) for r in range(1, runs + 1)]
    s = [x["single"] for x in rs]
    p50 = statistics.median(x["ttfb_ms"]["p50"] for x in s)
    p99s = [x["ttfb_ms"]["p99"] for x in s]
    arr = [x.get("ttfb_wire_ms", {}).get("p99") for x in s]
    org = [x.get("origin_requests") for x in s]
    seq = [statistics.median(b["ttfb_ms"]["p99"] for b in x["seq"]) for x in rs if x.get("seq")]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    print(f"| {pre} | {p50:.1f} / {statistics.median(p99s):.1f} | {', '.join(map(fmt, p99s))} | "
          f"{', '.join(map(fmt, arr))} | {org} | {statistics.median(seq) if seq else float('nan'):.1f} |")
PY
echo "raw: $OUT" >&2
