#!/usr/bin/env bash
# Peer comparison with the live-burst harness: the same scenario against vedge, nginx
# (proxy_cache + proxy_cache_lock) and Varnish, each with an empty cache in front of the same
# `vedge origin`, one after another, then a comparison table in benches/results/harness.md.
#
#   benches/peers/run.sh                                  # segment-storm, 500 viewers, 20 s, 200 ms origin
#   benches/peers/run.sh --edges "vedge nginx" --scenario burst --viewers 2000 --duration 30s
#   SEGMENT_LATENCY=1s benches/peers/run.sh               # slower origin
#
# Needs: cargo (release build), nginx-light, varnish, python3. Only processes this script started
# are stopped (by PID). Raw JSON/HTML per edge: benches/peers/results/<timestamp>/.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EDGES="vedge nginx varnish"
SCENARIO=segment-storm VIEWERS=500 DURATION=20s
OUT=$HERE/results/$(date -u +%Y%m%d-%H%M%S)
MD=$ROOT/benches/results/harness.md
while [[ $# -gt 0 ]]; do
  case $1 in
    --edges) EDGES=$2; shift 2 ;;
    --scenario) SCENARIO=$2; shift 2 ;;
    --viewers) VIEWERS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --md) MD=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown arg $1" >&2; exit 2 ;;
  esac
done
SEGMENT_LATENCY=${SEGMENT_LATENCY:-200ms} MANIFEST_LATENCY=${MANIFEST_LATENCY:-20ms}
RUN=$(mktemp -d /tmp/vedge-peers.XXXXXX)
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
PIDS=()
log() { echo "[peers $(date +%H:%M:%S)] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 100); do curl -s -o /dev/null --max-time 1 "$1" && return 0; sleep 0.1; done; log "ERROR: $1 down"; return 1; }
stop_pid() {  # TERM, then KILL after 10 s
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
}
cleanup() {
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  [[ -f $RUN/nginx.pid ]] && stop_pid "$(cat "$RUN/nginx.pid")"
  [[ -f $RUN/varnish.pid ]] && stop_pid "$(cat "$RUN/varnish.pid")"
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# CPU seconds (user+sys) of a process and its children, from /proc.
cpu_of() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
    [[ -r /proc/$p/stat ]] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

if [[ -z ${VEDGE:-} ]]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --bin vedge) || exit 1
  VEDGE=$ROOT/target/release/vedge
fi
OP=$(free_port)
"$VEDGE" origin --listen "127.0.0.1:$OP" --segment-latency "$SEGMENT_LATENCY" \
  --manifest-latency "$MANIFEST_LATENCY" > "$OUT/origin.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$OP/__stats" || exit 1
{
  echo "date: $(date -u -Is)"; echo "kernel: $(uname -r)"
  echo "cpus: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  echo "nginx: $(nginx -v 2>&1 | cut -d/ -f2)"; echo "varnish: $(varnishd -V 2>&1 | head -1)"
  echo "vedge: $(cd "$ROOT" && git rev-parse --short HEAD)"
  echo "scenario: $SCENARIO viewers: $VIEWERS duration: $DURATION segment-latency: $SEGMENT_LATENCY manifest-latency: $MANIFEST_LATENCY"
} > "$OUT/env.txt"
cat "$OUT/env.txt" >&2

TICKS=$(getconf CLK_TCK)
for edge in $EDGES; do
  EP=$(free_port)
  rm -rf "${RUN:?}/nginx-cache" "$RUN/varnish"
  case $edge in
    vedge)
      "$VEDGE" serve --listen "127.0.0.1:$EP" --origin "http://127.0.0.1:$OP" > "$OUT/vedge-edge.log" 2>&1 &
      EPID=$!; PIDS+=("$EPID") ;;
    nginx)
      mkdir -p "$RUN/nginx-cache"
      sed "s#@RUN@#$RUN#g; s#@EDGE_PORT@#$EP#g; s#@ORIGIN_PORT@#$OP#g" "$HERE/conf/nginx-edge.conf" > "$RUN/nginx.conf"
      nginx -c "$RUN/nginx.conf" -p "$RUN/" -e "$RUN/nginx-error.log" || { log "nginx failed"; continue; }
      sleep 0.3; EPID=$(cat "$RUN/nginx.pid") ;;
    varnish)
      sed "s#@ORIGIN_PORT@#$OP#g" "$HERE/conf/varnish-edge.vcl" > "$RUN/varnish.vcl"
      varnishd -a "127.0.0.1:$EP" -T 127.0.0.1:0 -f "$RUN/varnish.vcl" -s malloc,512m \
        -n "$RUN/varnish" -P "$RUN/varnish.pid" -j none \
        -p thread_pools=2 -p thread_pool_min=300 -p thread_pool_max=5000 > "$OUT/varnish.log" 2>&1 \
        || { log "varnishd failed"; continue; }
      sleep 0.5; EPID=$(cat "$RUN/varnish.pid") ;;
    *) log "unknown edge $edge"; continue ;;
  esac
  wait_http "http://127.0.0.1:$EP/__none" || { log "$edge did not come up"; continue; }
  log "== $edge on :$EP (pid $EPID): $SCENARIO, $VIEWERS viewers, $DURATION"
  c0=$(cpu_of "$EPID"); t0=$(date +%s.%N)
  timeout 600 "$VEDGE" bench live-burst --target "http://127.0.0.1:$EP/live/{run}/master.m3u8" \
    --origin-stats "http://127.0.0.1:$OP/__stats" --viewers "$VIEWERS" --duration "$DURATION" \
    --scenario "$SCENARIO" --json "$OUT/$edge.json" --html "$OUT/$edge.html" 2>&1 | tee "$OUT/$edge.txt" >&2
  c1=$(cpu_of "$EPID"); t1=$(date +%s.%N)
  python3 -c "import json,sys; d=json.load(open('$OUT/$edge.json')); d['edge_cpu_s']=($c1-$c0)/$TICKS; d['wall_s']=$t1-$t0; json.dump(d,open('$OUT/$edge.json','w'))" 2>/dev/null \
    || log "no JSON for $edge"
  case $edge in
    vedge) stop_pid "$EPID" ;;
    nginx) stop_pid "$EPID"; rm -f "$RUN/nginx.pid" ;;
    varnish) stop_pid "$EPID"; rm -f "$RUN/varnish.pid" ;;
  esac
done

HARNESS_MD=$MD python3 "$HERE/table.py" "$OUT" $EDGES > "$MD.tmp" && mv "$MD.tmp" "$MD"
log "wrote $MD (raw: $OUT)"
cat "$MD"
