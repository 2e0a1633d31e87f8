#!/usr/bin/env bash
# Manifest HIT throughput with and without token rewriting (issue 14): the same manifests through
# one vedge, on a plain route (/plain/) and on a `[route.token]` route (/tok/) where every
# response is rewritten to carry the viewer's EdgeAuth 2.0 token (src/auth/propagate.rs).
#
# Manifests, generated here: a 2-hour VOD rendition playlist (1,800 x 4 s segments), a small
# LL-HLS live playlist (10 segments, 4 parts each, preload hint, rendition reports) and a VOD MPD
# with a SegmentList of 1,800 SegmentURLs (the DASH worst case; a SegmentTemplate MPD has a
# handful of URLs). A static origin (python3 -m http.server) serves them; vedge caches them for
# an hour, so after the first request every run is HITs.
#
# Per case: wrk -t$THREADS -c$CONNS -d$DURATION --latency; the edge's CPU from /proc/<pid>/stat
# (utime+stime) over the run. Printed: req/s, edge CPU cores used, req/s per edge core, p99, and
# for the token route the ratio of its req/s per core to the plain route's.
#
# Usage:
#   cargo build --release && benches/token-rewrite.sh
#   VEDGE=target/debug/vedge DURATION=2s benches/token-rewrite.sh      # smoke run
#   NGINX_BIN=/usr/sbin/nginx benches/token-rewrite.sh                     # + nginx static reference
# Env: VEDGE (default target/release/vedge), DURATION (10s), THREADS (2), CONNS (64),
#      PORT_BASE (19400: origin, +1 vedge, +2 nginx), NGINX_BIN (unset: no nginx row; nginx itself reads $NGINX).
#      PERF_DIR (set: a perf profile of the edge during each vedge case, PERF_DIR/<case>.data).
set -euo pipefail

VEDGE=${VEDGE:-target/release/vedge}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
PORT_BASE=${PORT_BASE:-19400}
ORIGIN_PORT=$PORT_BASE
EDGE_PORT=$((PORT_BASE + 1))
NGINX_PORT=$((PORT_BASE + 2))
KEY=7a5c2be9f42a1f32cd889d1cf775f05d0cd162bd2871d00fe705ab28c9bba5a5

[ -x "$VEDGE" ] || { echo "no vedge binary at $VEDGE (cargo build --release, or set VEDGE)"; exit 1; }
command -v wrk >/dev/null || { echo "wrk is needed"; exit 1; }

WORK=$(mktemp -d)
chmod 755 "$WORK"
source "$(cd "$(dirname "$0")/.." && pwd)/benches/lib.sh"
ON_EXIT+=('rm -rf "$WORK"')

# ---- manifests ------------------------------------------------------------------------------
python3 - "$WORK/www" <<'PY'
import os, sys
root = sys.argv[1]
for route in ("plain", "tok"):
    d = os.path.join(root, route)
    os.makedirs(d, exist_ok=True)
    # 2-hour VOD rendition playlist: 1,800 x 4 s fMP4 segments.
    v = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:4", "#EXT-X-PLAYLIST-TYPE:VOD",
         "#EXT-X-MEDIA-SEQUENCE:0", '#EXT-X-MAP:URI="init-720p.mp4"']
    for n in range(1800):
        v += ["#EXTINF:4.000,", f"720p/seg-{n:05d}.m4s"]
    v.append("#EXT-X-ENDLIST")
    open(os.path.join(d, "vod.m3u8"), "w").write("\n".join(v) + "\n")
    # LL-HLS live playlist: 10 segments of 4 parts, a preload hint, two rendition reports.
    l = ["#EXTM3U", "#EXT-X-VERSION:9", "#EXT-X-TARGETDURATION:4",
         "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=3.0",
         "#EXT-X-PART-INF:PART-TARGET=1.0", "#EXT-X-MEDIA-SEQUENCE:1000",
         '#EXT-X-MAP:URI="init.mp4"']
    for n in range(1000, 1010):
        l.append("#EXT-X-PROGRAM-DATE-TIME:2026-12-06T00:00:00.000Z")
        for p in range(4):
            ind = ",INDEPENDENT=YES" if p == 0 else ""
            l.append(f'#EXT-X-PART:DURATION=1.0,URI="seg-{n}.part{p}.m4s"{ind}')
        l += ["#EXTINF:4.000,", f"seg-{n}.m4s"]
    l.append('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="seg-1010.part0.m4s"')
    l.append('#EXT-X-RENDITION-REPORT:URI="../480p/live.m3u8",LAST-MSN=1009,LAST-PART=3')
    l.append('#EXT-X-RENDITION-REPORT:URI="../1080p/live.m3u8",LAST-MSN=1009,LAST-PART=3')
    open(os.path.join(d, "live.m3u8"), "w").write("\n".join(l) + "\n")
    # VOD MPD with an explicit SegmentList (1,800 SegmentURLs).
    segs = "\n".join(f'          <SegmentURL media="720p/seg-{n:05d}.m4s"/>' for n in range(1800))
    mpd = f'''<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT2H"
     minBufferTime="PT2S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">
  <Period id="0">
    <AdaptationSet mimeType="video/mp4" segmentAlignment="true">
      <Representation id="720p" bandwidth="3000000" codecs="avc1.4d401f" width="1280" height="720">
        <SegmentList timescale="1000" duration="4000">
          <Initialization sourceURL="init-720p.mp4"/>
{segs}
        </SegmentList>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>
'''
    open(os.path.join(d, "vod.mpd"), "w").write(mpd)
PY

# ---- EdgeAuth 2.0 token (the akamai-edgeauth generators' algorithm: HMAC-SHA256 over the
# fields joined by '~', with the hex-decoded key) ----------------------------------------------
TOKEN=$(python3 - "$KEY" <<'PY'
import hashlib, hmac, sys, time
key = bytes.fromhex(sys.argv[1])
now = int(time.time())
fields = [f"st={now - 60}", f"exp={now + 86400}", "acl=/tok/*"]
mac = hmac.new(key, "~".join(fields).encode(), hashlib.sha256).hexdigest()
print("~".join(fields) + "~hmac=" + mac)
PY
)

# ---- origin and edge ------------------------------------------------------------------------
(cd "$WORK/www" && exec python3 -m http.server "$ORIGIN_PORT" --bind 127.0.0.1 >/dev/null 2>&1) &
PIDS+=($!)
cat > "$WORK/vedge.toml" <<EOF
listen = "127.0.0.1:$EDGE_PORT"
origin = "http://127.0.0.1:$ORIGIN_PORT"
ram_size = "256MiB"

[cache.ttl.manifest]
default = "1h"

[[route]]
prefix = "/plain/"
origin = "http://127.0.0.1:$ORIGIN_PORT"

[[route]]
prefix = "/tok/"
origin = "http://127.0.0.1:$ORIGIN_PORT"
[route.token]
key = "$KEY"
EOF
"$VEDGE" serve --config "$WORK/vedge.toml" --log warn > "$WORK/vedge.log" 2>&1 &
EDGE_PID=$!
PIDS+=("$EDGE_PID")

NGINX_PID=
if [ -n "${NGINX_BIN:-}" ] && [ -x "$NGINX_BIN" ]; then
  mkdir -p "$WORK/nginx"
  cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes 2;
error_log $WORK/nginx/error.log warn;
pid $WORK/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  types { application/vnd.apple.mpegurl m3u8; application/dash+xml mpd; }
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server { listen 127.0.0.1:$NGINX_PORT; root $WORK/www; }
}
EOF
  env -u NGINX "$NGINX_BIN" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx"
  for _ in $(seq 50); do [ -s "$WORK/nginx/nginx.pid" ] && break; sleep 0.1; done
  NGINX_PID=$(cat "$WORK/nginx/nginx.pid" 2>/dev/null || true)
  [ -n "$NGINX_PID" ] && PIDS+=("$NGINX_PID")
fi

ready=0
for _ in $(seq 100); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$EDGE_PORT/plain/live.m3u8" 2>/dev/null; then ready=1; break; fi
  sleep 0.1
done
[ "$ready" = 1 ] || { echo "vedge did not come up:"; cat "$WORK/vedge.log"; exit 1; }

# The token route must refuse without the token and rewrite with it, or the numbers mean nothing.
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$EDGE_PORT/tok/live.m3u8")
[ "$code" = 403 ] || { echo "token route answered $code without a token, not 403"; exit 1; }
curl -fsS "http://127.0.0.1:$EDGE_PORT/tok/live.m3u8?hdnts=$TOKEN" | grep -q "seg-1009.m4s?hdnts=" \
  || { echo "the token route did not rewrite the playlist"; exit 1; }

# ---- measurement ----------------------------------------------------------------------------
TCK=$(getconf CLK_TCK)
# The CPU ticks (user + system, all threads) process $1 has used; 0 if unknown.
ticks() {
  [ -n "$1" ] || { echo 0; return; }
  # Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
  awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
# The CPU ticks of nginx's master and workers.
nginx_ticks() {
  local t=0 p
  for p in $NGINX_PID $(pgrep -P "$NGINX_PID" 2>/dev/null || true); do t=$((t + $(ticks "$p"))); done
  echo "$t"
}
secs() { local d=$1; case $d in *ms) echo "scale=3; ${d%ms}/1000" | bc ;; *s) echo "${d%s}" ;; *m) echo "${d%m}*60" | bc ;; *) echo "$d" ;; esac; }
RUN_SECS=$(secs "$DURATION")

declare -A PER_CORE
# run NAME URL WHO: one wrk run against URL, with WHO's CPU (vedge | nginx) sampled around it.
run() {
  local name=$1 url=$2 who=$3 before after out rps p99 cores per
  curl -fsS -o /dev/null "$url"   # fill (or warm) the cache first
  if [ "$who" = nginx ]; then before=$(nginx_ticks); else before=$(ticks "$EDGE_PID"); fi
  local prof=
  if [ -n "${PERF_DIR:-}" ] && [ "$who" = vedge ]; then
    # A profile of the edge over the run (perf from Debian's linux-perf).
    mkdir -p "$PERF_DIR"
    perf record -F 999 -g -p "$EDGE_PID" -o "$PERF_DIR/${name// /-}.data" -- sleep "$RUN_SECS" \
      > /dev/null 2>&1 &
    prof=$!
  fi
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$url")
  [ -z "$prof" ] || wait "$prof" || true
  if [ "$who" = nginx ]; then after=$(nginx_ticks); else after=$(ticks "$EDGE_PID"); fi
  rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
  p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
  if echo "$out" | grep -q "Non-2xx"; then
    echo "$name: non-2xx answers:"; echo "$out"; exit 1
  fi
  cores=$(echo "scale=3; ($after - $before) / $TCK / $RUN_SECS" | bc)
  per=$(echo "scale=0; if ($cores > 0) $rps / $cores else 0" | bc)
  PER_CORE[$name]=$per
  printf '%-22s %12s %8s %14s %10s\n' "$name" "$rps" "$cores" "$per" "$p99"
}

printf '# vedge %s, wrk -t%s -c%s -d%s, %s cores\n' "$VEDGE" "$THREADS" "$CONNS" "$DURATION" "$(nproc)"
printf '%-22s %12s %8s %14s %10s\n' case 'req/s' 'cores' 'req/s/core' p99
for m in vod.m3u8 live.m3u8 vod.mpd; do
  run "plain $m" "http://127.0.0.1:$EDGE_PORT/plain/$m" vedge
  run "token $m" "http://127.0.0.1:$EDGE_PORT/tok/$m?hdnts=$TOKEN" vedge
  if [ -n "$NGINX_PID" ]; then
    run "nginx $m" "http://127.0.0.1:$NGINX_PORT/plain/$m" nginx
  fi
done
echo
echo "# token / plain, req/s per edge core"
for m in vod.m3u8 live.m3u8 vod.mpd; do
  p=${PER_CORE["plain $m"]} t=${PER_CORE["token $m"]}
  if [ "$p" -gt 0 ]; then
    printf '%-10s %s\n' "$m" "$(echo "scale=3; $t / $p" | bc)"
  else
    printf '%-10s n/a\n' "$m"
  fi
done
