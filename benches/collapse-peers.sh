#!/usr/bin/env bash
# The collapsed-miss burst measured with vedge's own client (`vedge bench collapse`, hyper on
# tokio) against nginx, Varnish and vedge, edges interleaved run by run: 500 keep-alive viewers
# ask for one cold segment at once (the origin answers after 200 ms), then for 10 more at a 1 s
# cadence. TTFB is reported twice: when the client read the head, and when the head's segment
# arrived at the client's socket (kernel receive stamp; see benches/harness/src/stamp.rs). Same origin and edges as benches/hit-peers.sh (../shared/bench-peers). Writes the raw
# JSON and summary.md under benches/results/collapse-<timestamp>/.
#
#   benches/collapse-peers.sh            # RUNS=3
#
# Needs: nginx-light varnish ffmpeg curl python3 (Debian), a release build of vedge.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/bench-peers}
RUNS=${RUNS:-3}
N=${N:-500}
OUT=${OUT:-$ROOT/benches/results/collapse-$(date +%Y%m%d-%H%M%S)}
PORT=${PORT:-8090}
BIN=$ROOT/target/release/vedge
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release)
mkdir -p "$OUT"

"$PEERS/start-peers.sh" nginx varnish-malloc > "$OUT/peers.log" 2>&1
trap '"$PEERS/stop-peers.sh" >/dev/null 2>&1 || true' EXIT
source "$ROOT/benches/vedge-edge.sh"
start_vedge "$BIN" "$PORT" "$OUT/vedge.log"
trap 'kill -TERM $VEDGE 2>/dev/null; wait $VEDGE 2>/dev/null || true; "$PEERS/stop-peers.sh" >/dev/null 2>&1 || true' EXIT

{ date -u +"date: %Y-%m-%dT%H:%M:%SZ"; uname -r; nproc; git -C "$ROOT" rev-parse --short HEAD; } > "$OUT/env.txt"
for ((r = 1; r <= RUNS; r++)); do
  for edge in nginx=127.0.0.1:8081 varnish=127.0.0.1:8082 vedge=127.0.0.1:$PORT; do
    name=${edge%%=*} addr=${edge#*=}
    echo "[$(date +%H:%M:%S)] run $r: $name" >&2
    timeout 120 "$BIN" bench collapse --target "$addr" --n "$N" \
        --origin-stats http://127.0.0.1:9001/__stats --json "$OUT/$name-$r.json" \
        | tee "$OUT/$name-$r.txt" | grep -E "^single|^seq:" >&2
    sleep 1
  done
done

python3 - "$OUT" "$RUNS" > "$OUT/summary.md" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
print("| edge | origin requests (single, per run) | ok | TTFB p50 / p99 ms | on arrival p50 / p99 ms | total p50 / p99 ms | seq: median per-segment TTFB p99 ms (on arrival) | seq origin requests |")
print("|---|---|---:|---:|---:|---:|---:|---|")
for name in ["nginx", "varnish", "vedge"]:
    rs = [json.load(open(f"{out}/{name}-{r}.json")) for r in range(1, runs + 1)]
    med = lambda f: statistics.median(f(x) for x in rs)
    s = lambda x: x["single"]
    seq_p99 = med(lambda x: statistics.median(b["ttfb_ms"]["p99"] for b in x["seq"]))
    seq_wire = med(lambda x: statistics.median(b["ttfb_wire_ms"]["p99"] for b in x["seq"]))
    seq_origin = sorted({b["origin_requests"] for x in rs for b in x["seq"]})
    print(f"| {name} | {[s(x)['origin_requests'] for x in rs]} | {min(s(x)['ok'] for x in rs)} / {rs[0]['n']} "
          f"| {med(lambda x: s(x)['ttfb_ms']['p50']):.1f} / {med(lambda x: s(x)['ttfb_ms']['p99']):.1f} "
          f"| {med(lambda x: s(x)['ttfb_wire_ms']['p50']):.1f} / {med(lambda x: s(x)['ttfb_wire_ms']['p99']):.1f} "
          f"| {med(lambda x: s(x)['total_ms']['p50']):.1f} / {med(lambda x: s(x)['total_ms']['p99']):.1f} "
          f"| {seq_p99:.1f} ({seq_wire:.1f}) | {seq_origin} |")
    print(f"| | single-object p99 of each run: {[round(s(x)['ttfb_ms']['p99'], 1) for x in rs]} "
          f"(on arrival {[round(s(x)['ttfb_wire_ms']['p99'], 1) for x in rs]}) | | | | | | |")
PY
cat "$OUT/summary.md"
