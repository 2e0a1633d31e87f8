#!/usr/bin/env bash
# Live edge, issue 17: LL-HLS collapse and prefetch, measured with the harness.
#
#   VEDGE=target/release/vedge benches/live-prefetch.sh [VIEWERS] [DURATION]
#   MODE=hls SEGMENT_LATENCY=100ms benches/live-prefetch.sh    # plain live HLS, a 100 ms origin
#
# Starts the origin simulator with --ll-hls, then for prefetch "next" and "off" in turn an edge
# in front of it (its own stream name, so the simulator's counters stay apart) and the harness's
# Low-Latency HLS viewers (`vedge bench live-burst --ll --origin-stats`). Prints one markdown
# table: upstream requests per (playlist, msn, part) (max, mean, share of keys seen once; the goal
# is 1), the share of first requests per new media object that were a HIT or joined a fill in
# flight (`Cache-Status` hit / collapsed) and their TTFB p50/p99. Needs python3 (reads the JSON
# reports). Defaults: 200 viewers, 60s (the RESULTS.md run); smoke: `... 4 10s`.
set -euo pipefail
VEDGE=${VEDGE:-target/release/vedge}
VIEWERS=${1:-200}
DURATION=${2:-60s}
SIM_PORT=${SIM_PORT:-9300}
EDGE_PORT=${EDGE_PORT:-9301}
OUT=${OUT:-$(mktemp -d /tmp/live-prefetch.XXXXXX)}
# MODE=ll: LL-HLS (parts, preload hints, blocking reloads); MODE=hls: plain live HLS, where
# prefetch has the most to do (viewers learn of a segment only from the playlist).
MODE=${MODE:-ll}
# The origin's time to a segment's first byte (a packager or a far origin is not loopback).
SEGMENT_LATENCY=${SEGMENT_LATENCY:-0ms}
case $MODE in
  ll) ORIGIN_MODE=(--ll-hls); BENCH_MODE=(--ll); LABEL="LL-HLS" ;;
  hls) ORIGIN_MODE=(); BENCH_MODE=(); LABEL="HLS" ;;
  *) echo "MODE is ll or hls" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/benches/lib.sh"

"$VEDGE" origin --listen "127.0.0.1:$SIM_PORT" "${ORIGIN_MODE[@]}" --segment-latency "$SEGMENT_LATENCY" >"$OUT/origin.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$SIM_PORT/__stats"

for mode in next off; do
  cat >"$OUT/edge-$mode.toml" <<TOML
listen = "127.0.0.1:$EDGE_PORT"
ram_size = "1GiB"

[[route]]
prefix = "/"
origin = "http://127.0.0.1:$SIM_PORT"
prefetch = "$mode"
TOML
  "$VEDGE" serve --config "$OUT/edge-$mode.toml" >"$OUT/edge-$mode.log" 2>&1 &
  epid=$!
  PIDS+=($epid)
  stream="lp-$mode-$$"
  wait_http "http://127.0.0.1:$EDGE_PORT/live/$stream/master.m3u8"
  "$VEDGE" bench live-burst "${BENCH_MODE[@]}" \
    --target "http://127.0.0.1:$EDGE_PORT/live/$stream/master.m3u8" \
    --origin-stats "http://127.0.0.1:$SIM_PORT/__stats" \
    --viewers "$VIEWERS" --duration "$DURATION" \
    --json "$OUT/report-$mode.json" >"$OUT/bench-$mode.log" 2>&1
  kill "$epid"
  wait "$epid" 2>/dev/null || true
done

python3 - "$OUT" "$VIEWERS" "$DURATION" "$LABEL" "$SEGMENT_LATENCY" <<'PY'
import json, sys
out, viewers, duration, label, latency = sys.argv[1:6]
def num(v, fmt):
    return "n/a" if v is None else fmt.format(v)
print(f"{label} viewers: {viewers}, {duration}, origin segment latency {latency}, reports in {out}\n")
print("| prefetch | (playlist,msn,part) keys | upstream per key: max | mean | keys seen once "
      "| media objects | first request HIT/collapsed | first-request TTFB p50 | p99 | errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
for mode in ("next", "off"):
    r = json.load(open(f"{out}/report-{mode}.json"))
    ll = r.get("ll") or {}
    f = r["first_requests"]
    print("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
        mode,
        num(ll.get("blocking_keys"), "{}"),
        num(ll.get("max_origin_requests_per_blocking_key"), "{}"),
        num(ll.get("mean_origin_requests_per_blocking_key"), "{:.2f}"),
        num(ll.get("share_of_blocking_keys_with_one_request"), "{:.1%}"),
        f["objects"],
        "{:.1%}".format(f["share_hit_or_collapsed"]),
        "{:.1f} ms".format(f["ttfb_ms"]["p50"]),
        "{:.1f} ms".format(f["ttfb_ms"]["p99"]),
        r["error_total"],
    ))
PY
