#!/usr/bin/env bash
# The harness's own ceiling: `vedge bench live-burst` against a trivial static server (nginx
# serving a static copy of the simulator's VOD asset from disk), so the load generator, not the
# server under test, is the limit. Prints the harness summary and its own CPU time.
#
#   benches/peers/ceiling.sh [VIEWERS] [DURATION]      # default 20000 viewers, 30s, scenario vod
#   CONNECTIONS=4096 RAMP=20s JSON=ceiling.json VEDGE=target/release/vedge benches/peers/ceiling.sh
# The viewers share at most CONNECTIONS keep-alive connections (the harness's default, 4096).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VIEWERS=${1:-20000} DURATION=${2:-30s}
VEDGE=${VEDGE:-$ROOT/target/release/vedge}
RUN=$(mktemp -d /tmp/vedge-ceiling.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
            [[ -f $RUN/nginx.pid ]] && kill "$(cat "$RUN/nginx.pid")" 2>/dev/null; sleep 0.5; rm -rf "$RUN"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
OP=$(free_port) SP=$(free_port)
"$VEDGE" origin --listen "127.0.0.1:$OP" > "$RUN/origin.log" 2>&1 & PIDS+=($!)
sleep 0.5
# Dump the VOD asset (both renditions) to disk.
mkdir -p "$RUN/www/vod/c/r0" "$RUN/www/vod/c/r1"
curl -fs "http://127.0.0.1:$OP/vod/c/master.m3u8" -o "$RUN/www/vod/c/master.m3u8"
for r in r0 r1; do
  curl -fs "http://127.0.0.1:$OP/vod/c/$r/media.m3u8" -o "$RUN/www/vod/c/$r/media.m3u8"
  curl -fs "http://127.0.0.1:$OP/vod/c/$r/init.mp4" -o "$RUN/www/vod/c/$r/init.mp4"
  for n in $(seq 0 29); do curl -fs "http://127.0.0.1:$OP/vod/c/$r/seg_$n.m4s" -o "$RUN/www/vod/c/$r/seg_$n.m4s"; done
done
cat > "$RUN/nginx.conf" <<NGX
user root; worker_processes 1; pid $RUN/nginx.pid; error_log $RUN/error.log warn;
worker_rlimit_nofile 65536; events { worker_connections 32768; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000; keepalive_timeout 65s;
       open_file_cache max=1000; server { listen 127.0.0.1:$SP backlog=8192; root $RUN/www; } }
NGX
nginx -c "$RUN/nginx.conf" -p "$RUN/"
sleep 0.3
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); nofile soft $(ulimit -Sn) hard $(ulimit -Hn)"
/usr/bin/time -f "harness CPU: user %U s, sys %S s, wall %e s, max RSS %M KiB" \
  "$VEDGE" bench live-burst --target "http://127.0.0.1:$SP/vod/c/master.m3u8" \
  --viewers "$VIEWERS" --duration "$DURATION" --scenario vod --ramp "${RAMP:-20s}" --mix 1,1 \
  --connections "${CONNECTIONS:-4096}" ${JSON:+--json "$JSON"}
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
