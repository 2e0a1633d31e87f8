#!/usr/bin/env bash
# Real players through vedge: builds vedge, starts `vedge origin` (live simulator + this page and
# the player JS via --static) and `vedge serve` in front of it on free loopback ports, then plays in
# headless Chromium (/usr/bin/chromium, no browser download) for ~10 s each:
#   live HLS (hls.js), live DASH (dash.js), and VOD in HLS and DASH (fixtures/vod/ if present:
#   the demo's assets, looped; else the simulator's /vod/ streams).
# Exits non-zero if any stream fails; stops only the processes it started (by PID).
#
#   tests/players/run.sh                 # needs: node 20 + npm, chromium (apt), cargo
#   PLAYERS_DIRECT=1 tests/players/run.sh  # players talk to the origin directly (debugging)
#   VEDGE=target/release/vedge tests/players/run.sh   # use that binary, skip the build
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[players $(date +%H:%M:%S)] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {  # wait_http URL
  for _ in $(seq 1 100); do curl -fs -o /dev/null --max-time 1 "$1" && return 0; sleep 0.1; done
  log "ERROR: $1 did not come up"; return 1
}

[[ -x /usr/bin/chromium || -n ${CHROMIUM:-} ]] || { log "ERROR: /usr/bin/chromium missing (apt-get install -y chromium)"; exit 1; }
if [[ ! -d $HERE/node_modules/playwright-core ]]; then
  log "npm ci"
  (cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
if [[ -z ${VEDGE:-} ]]; then
  log "cargo build"
  (cd "$ROOT" && cargo build --bin vedge)
  VEDGE=$ROOT/target/debug/vedge
fi

OP=$(free_port); EP=$(free_port)
STATICS=(--static "/player/=$HERE/www" --static "/npm/=$HERE/node_modules")
VOD_PATH=/vod/players-vod/master.m3u8
VOD_DASH_PATH=/vod/players-vod/manifest.mpd
if [[ -d $ROOT/fixtures/vod ]]; then
  STATICS+=(--static "/fixtures/vod/=$ROOT/fixtures/vod")
  m=$(cd "$ROOT/fixtures/vod" && find . -name master.m3u8 | sort | head -1)
  [[ -n $m ]] && VOD_PATH=/fixtures/vod/${m#./}
  # The DASH VOD asset `vedge demo` lists (SegmentTemplate with a SegmentTimeline).
  [[ -f $ROOT/fixtures/vod/dash-timeline/manifest.mpd ]] && VOD_DASH_PATH=/fixtures/vod/dash-timeline/manifest.mpd
fi
"$VEDGE" origin --listen "127.0.0.1:$OP" "${STATICS[@]}" > "$WORK/origin.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$OP/__stats"
BASE=http://127.0.0.1:$OP
if [[ -z ${PLAYERS_DIRECT:-} ]]; then
  "$VEDGE" serve --listen "127.0.0.1:$EP" --origin "http://127.0.0.1:$OP" > "$WORK/edge.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$EP/player/index.html" || { cat "$WORK/edge.log" >&2; exit 1; }
  BASE=http://127.0.0.1:$EP
fi
log "origin :$OP, players via $BASE, VOD $VOD_PATH $VOD_DASH_PATH"
ID=p$(date +%s)
rc=0
(cd "$HERE" && node play.mjs "$BASE" \
  "live-hls=hls:/live/$ID-hls/master.m3u8" \
  "live-dash=dash:/live/$ID-dash/manifest.mpd" \
  "vod-hls=hls:$VOD_PATH" \
  "vod-dash=dash:$VOD_DASH_PATH") || rc=$?
if [[ $rc -ne 0 ]]; then
  log "origin log:"; tail -20 "$WORK/origin.log" >&2
  [[ -f $WORK/edge.log ]] && { log "edge log:"; tail -20 "$WORK/edge.log" >&2; }
fi
exit $rc
