#!/usr/bin/env bash
# Real players through vedge: builds vedge, starts `vedge origin` (live simulator + this page and
# the player JS via --static) and `vedge serve` in front of it on free loopback ports, then plays in
# headless Chromium (/usr/bin/chromium, no browser download) for ~10 s each (play.mjs):
#   live HLS (hls.js), live DASH (dash.js), and VOD in HLS and DASH (fixtures/vod/ if present:
#   the demo's assets, looped; else the simulator's /vod/ streams);
#   LL-HLS (hls.js lowLatencyMode) and LL-DASH (dash.js low-latency settings) on the simulator's
#   /ll/ streams: 0 stalls, live latency printed against 3 s / 3.5 s (the figure never fails);
#   signed URLs: the VOD fixtures again under /paid/, a `[route.token]` route (EdgeAuth 2.0, a
#   random key per run), in HLS and DASH, each player given only the tokenised master URL; probes
#   without a token and with a forged one must get 403 and be the only refusals on /metrics;
#   live HLS over https: a second edge with a self-signed certificate made by openssl at run time;
#   byte-range HLS (fixtures/vod/hls-byterange: `-hls_flags single_file`, EXT-X-BYTERANGE), played
#   twice with hls.js and checked from the edge's side (play.mjs `ranges=`: every range a 206 with
#   the file's bytes, the second play all HITs, the origin asked once per slice), on the main edge
#   (default cache.slice_size 4 MiB: each rendition's file, 60-330 KB, is under one slice, so the
#   first range's slice fill gets the whole file and later ranges are cut from it) and on a third
#   edge with cache.slice_size = 64KiB (the smallest allowed), where the video files span 2 to 6
#   slices, segment ranges cross slice boundaries and are answered from slices (`detail=slice`).
# Exits non-zero if any case fails; stops only the processes it started (by PID).
#
#   tests/players/run.sh                 # needs: node 20 + npm, chromium (apt), cargo, openssl
#   PLAYERS_DIRECT=1 tests/players/run.sh  # players talk to the origin directly (debugging; no
#                                          # signed or https cases)
#   VEDGE=target/release/vedge tests/players/run.sh   # use that binary, skip the build
#   PLAYERS_ONLY=byterange tests/players/run.sh       # only the cases whose name matches (grep -E)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d)
source "$ROOT/benches/lib.sh"
ON_EXIT+=('rm -rf "$WORK"')

log() { echo "[players $(date +%H:%M:%S)] $*" >&2; }

[[ -x /usr/bin/chromium || -n ${CHROMIUM:-} ]] || { log "ERROR: /usr/bin/chromium missing (apt-get install -y chromium)"; exit 1; }
command -v openssl >/dev/null || { log "ERROR: openssl missing (apt-get install -y openssl)"; exit 1; }
if [[ ! -d $HERE/node_modules/playwright-core ]]; then
  log "npm ci"
  (cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
if [[ -z ${VEDGE:-} ]]; then
  log "cargo build"
  (cd "$ROOT" && cargo build --bin vedge)
  VEDGE=${CARGO_TARGET_DIR:-$ROOT/target}/debug/vedge
fi

OP=$(free_port); EP=$(free_port); AP=$(free_port); TP=$(free_port)
STATICS=(--static "/player/=$HERE/www" --static "/npm/=$HERE/node_modules")
VOD_PATH=/vod/players-vod/master.m3u8
VOD_DASH_PATH=/vod/players-vod/manifest.mpd
if [[ -d $ROOT/fixtures/vod ]]; then
  STATICS+=(--static "/fixtures/vod/=$ROOT/fixtures/vod")
  # hls-fmp4 (the demo's HLS asset) when present; byte-range HLS has its own cases.
  m=$(cd "$ROOT/fixtures/vod" && find . -name master.m3u8 ! -path './hls-byterange/*' | sort | head -1)
  [[ -f $ROOT/fixtures/vod/hls-fmp4/master.m3u8 ]] && m=./hls-fmp4/master.m3u8
  [[ -n $m ]] && VOD_PATH=/fixtures/vod/${m#./}
  # The DASH VOD asset `vedge demo` lists (SegmentTemplate with a SegmentTimeline).
  [[ -f $ROOT/fixtures/vod/dash-timeline/manifest.mpd ]] && VOD_DASH_PATH=/fixtures/vod/dash-timeline/manifest.mpd
fi
# Signed URLs: the same assets under /paid/, which the edge serves only with a token (the origin
# serves them to anyone: the edge is what checks). Without fixtures: the simulator's VOD, which
# --static cannot put under /paid/, so the signed cases fail (say so rather than skip).
PAID_HLS=/paid/${VOD_PATH#/fixtures/vod/}
PAID_DASH=/paid/${VOD_DASH_PATH#/fixtures/vod/}
[[ -d $ROOT/fixtures/vod ]] && STATICS+=(--static "/paid/=$ROOT/fixtures/vod")
"$VEDGE" origin --listen "127.0.0.1:$OP" "${STATICS[@]}" > "$WORK/origin.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$OP/__stats"
BASE=http://127.0.0.1:$OP
ID=p$(date +%s)
CASES=(
  "live-hls=hls:/live/$ID-hls/master.m3u8"
  "live-dash=dash:/live/$ID-dash/manifest.mpd"
  "vod-hls=hls:$VOD_PATH"
  "vod-dash=dash:$VOD_DASH_PATH"
  # /ll/ streams are low latency whatever the origin's flags (benches/harness/src/ll.rs).
  "ll-hls=hls:/ll/$ID-llhls/master.m3u8;ll=3"
  "ll-dash=dash:/ll/$ID-lldash/manifest.mpd;ll=3.5"
)
BYTERANGE_PATH=/fixtures/vod/hls-byterange/master.m3u8
[[ -f $ROOT/fixtures/vod/hls-byterange/master.m3u8 ]] || log "WARNING: no fixtures/vod/hls-byterange (fixtures/make-vod.sh hls-byterange); its cases fail"
if [[ -z ${PLAYERS_DIRECT:-} ]]; then
  TOKEN_KEY=$(openssl rand -hex 32)
  ADMIN_TOKEN=$(openssl rand -hex 16)
  cat > "$WORK/edge.toml" <<TOML
listen = "127.0.0.1:$EP"
origin = "http://127.0.0.1:$OP"
admin_listen = "127.0.0.1:$AP"
admin_token = "$ADMIN_TOKEN"
[[route]]
prefix = "/paid/"
origin = "http://127.0.0.1:$OP"
[route.token]
key = "$TOKEN_KEY"
TOML
  "$VEDGE" serve --config "$WORK/edge.toml" > "$WORK/edge.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$EP/player/index.html" || { cat "$WORK/edge.log" >&2; exit 1; }
  BASE=http://127.0.0.1:$EP
  # The https edge, with a throwaway self-signed certificate for 127.0.0.1.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2> "$WORK/openssl.log" \
    || { cat "$WORK/openssl.log" >&2; exit 1; }
  "$VEDGE" serve --listen "127.0.0.1:$TP" --origin "http://127.0.0.1:$OP" \
    --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" > "$WORK/edge-tls.log" 2>&1 &
  PIDS+=($!)
  wait_http "https://127.0.0.1:$TP/player/index.html" --cacert "$WORK/cert.pem" \
    || { cat "$WORK/edge-tls.log" >&2; exit 1; }
  # Byte-range HLS from slices: an edge whose slices are smaller than the renditions' files.
  SP=$(free_port)
  cat > "$WORK/edge-slices.toml" <<TOML
listen = "127.0.0.1:$SP"
origin = "http://127.0.0.1:$OP"
[cache]
slice_size = "64KiB"
TOML
  "$VEDGE" serve --config "$WORK/edge-slices.toml" > "$WORK/edge-slices.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$SP/player/index.html" || { cat "$WORK/edge-slices.log" >&2; exit 1; }
  CASES+=(
    "byterange-hls=hls:$BYTERANGE_PATH;ranges=$WORK/edge.log"
    "byterange-hls-sliced=hls:http://127.0.0.1:$SP$BYTERANGE_PATH;ranges=$WORK/edge-slices.log;slice=65536"
    "signed-hls=hls:$PAID_HLS;sign=/paid/*"
    "signed-dash=dash:$PAID_DASH;sign=/paid/*"
    "https-hls=hls:https://127.0.0.1:$TP/live/$ID-tls/master.m3u8"
  )
  export TOKEN_KEY ADMIN_TOKEN ADMIN_URL=http://127.0.0.1:$AP
  export FIXTURES=$ROOT/fixtures/vod ORIGIN_URL=http://127.0.0.1:$OP
else
  # Straight from the origin (it honours Range on static files).
  CASES+=("byterange-hls=hls:$BYTERANGE_PATH")
fi
if [[ -n ${PLAYERS_ONLY:-} ]]; then
  mapfile -t CASES < <(printf '%s\n' "${CASES[@]}" | grep -E "^[^=]*(${PLAYERS_ONLY})[^=]*=") || true
  [[ ${#CASES[@]} -gt 0 ]] || { log "ERROR: no case matches PLAYERS_ONLY=$PLAYERS_ONLY"; exit 1; }
fi
log "origin :$OP, players via $BASE, VOD $VOD_PATH $VOD_DASH_PATH"
rc=0
(cd "$HERE" && node play.mjs "$BASE" "${CASES[@]}") || rc=$?
if [[ $rc -ne 0 ]]; then
  log "origin log:"; tail -20 "$WORK/origin.log" >&2
  for f in edge edge-tls edge-slices; do
    [[ -f $WORK/$f.log ]] && { log "$f log:"; tail -20 "$WORK/$f.log" >&2; }
  done
fi
exit $rc
