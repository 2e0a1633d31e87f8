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

# vedge with the contract the peer harness expects: /live/* -> slow counting origin (9001), the
# rest -> static origin (9000); manifests 2 s, segments 1 d (vedge's defaults).
"$BIN" serve --listen 127.0.0.1:$PORT --origin http://127.0.0.1:9000 \
    --route /live/=http://127.0.0.1:9001 --ram-size 2GiB --log warn > "$OUT/vedge.log" 2>&1 &
VEDGE=$!
trap 'kill -TERM $VEDGE 2>/dev/null; wait $VEDGE 2>/dev/null || true' EXIT
sleep 0.5
kill -0 $VEDGE || { echo "vedge did not start:"; cat "$OUT/vedge.log"; exit 1; }

"$PEERS/run-all.sh" --edges "$EDGES" --tests "$TESTS" --target vedge=127.0.0.1:$PORT --out "$OUT"
echo "summary: $OUT/summary.md"
