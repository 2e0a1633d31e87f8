#!/usr/bin/env bash
# HIT throughput and live-burst collapse: vedge next to nginx and Varnish, one after another in one
# run, with the same load (../shared/bench-peers: wrk for HITs, a 500-client burst client for the
# cold segment). Writes the raw data and summary.md under benches/results/peers-<timestamp>/.
#
#   benches/hit-peers.sh                         # nginx, varnish-malloc, vedge; hit + burst
#   EDGES="nginx" TESTS="hit" benches/hit-peers.sh
#   RUNS=1 DURATION=5 benches/hit-peers.sh       # quicker
#
# Needs: nginx-light varnish wrk ffmpeg curl python3 (Debian), a release build of vedge.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/bench-peers}
EDGES=${EDGES:-"nginx varnish-malloc"}
TESTS=${TESTS:-"hit burst"}
OUT=${OUT:-$ROOT/benches/results/peers-$(date +%Y%m%d-%H%M%S)}
PORT=${PORT:-8090}
BIN=$ROOT/target/release/vedge
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release)
mkdir -p "$OUT"

source "$ROOT/benches/vedge-edge.sh"
start_vedge "$BIN" "$PORT" "$OUT/vedge.log"
trap 'kill -TERM $VEDGE 2>/dev/null; wait $VEDGE 2>/dev/null || true' EXIT

"$PEERS/run-all.sh" --edges "$EDGES" --tests "$TESTS" --target vedge=127.0.0.1:$PORT --out "$OUT"
echo "summary: $OUT/summary.md"
