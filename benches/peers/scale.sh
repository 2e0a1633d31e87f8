#!/usr/bin/env bash
# Scale: `vedge bench live-burst` with 20,000 viewers against vedge in front of `vedge origin`, all
# on this machine. The viewers share a bounded keep-alive pool (`--connections`, default 4096), so
# the run needs a few thousand sockets, not one per viewer; the soft open-file limit is raised to
# the hard one (here and by the harness itself).
#
#   benches/peers/scale.sh                                  # steady, 20000 viewers, 60 s
#   benches/peers/scale.sh --scenario segment-storm --viewers 20000 --duration 30s
#   VEDGE=target/release/vedge benches/peers/scale.sh       # skip the build
#   SEGMENT_DURATION=6s benches/peers/scale.sh              # longer segments: fewer requests/s
#
# Prints the harness summary (which includes its pool wait and timer lag: when the timer lag is
# high, the harness, not the edge, was the limit) and the edge's CPU time. Raw JSON/HTML go to
# benches/peers/results/scale-<timestamp>/. Only processes this script started are stopped.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SCENARIO=steady VIEWERS=20000 DURATION=60s CONNECTIONS=4096 RAMP=
OUT=$HERE/results/scale-$(date -u +%Y%m%d-%H%M%S)
while [[ $# -gt 0 ]]; do
  case $1 in
    --scenario) SCENARIO=$2; shift 2 ;;
    --viewers) VIEWERS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --ramp) RAMP=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown arg $1" >&2; exit 2 ;;
  esac
done
SEGMENT_LATENCY=${SEGMENT_LATENCY:-0ms} SEGMENT_DURATION=${SEGMENT_DURATION:-2s}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
PIDS=()
log() { echo "[scale $(date +%H:%M:%S)] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 100); do curl -s -o /dev/null --max-time 1 "$1" && return 0; sleep 0.1; done; log "ERROR: $1 down"; return 1; }
stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
}
cleanup() { for p in "${PIDS[@]}"; do stop_pid "$p"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

if [[ -z ${VEDGE:-} ]]; then
  log "cargo build --release --bin vedge"
  (cd "$ROOT" && cargo build --release --bin vedge) || exit 1
  VEDGE=$ROOT/target/release/vedge
fi
OP=$(free_port) EP=$(free_port)
"$VEDGE" --log warn origin --listen "127.0.0.1:$OP" --segment-latency "$SEGMENT_LATENCY" \
  --segment-duration "$SEGMENT_DURATION" \
  > "$OUT/origin.log" 2>&1 & PIDS+=($!)
wait_http "http://127.0.0.1:$OP/__stats" || exit 1
# The edge logs at warn: an access line per request would cost it CPU the harness needs.
"$VEDGE" --log warn serve --listen "127.0.0.1:$EP" --origin "http://127.0.0.1:$OP" \
  > "$OUT/vedge-edge.log" 2>&1 & EPID=$!; PIDS+=("$EPID")
wait_http "http://127.0.0.1:$EP/__none" || exit 1
{
  echo "date: $(date -u -Is)"; echo "kernel: $(uname -r)"
  echo "cpus: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  echo "nofile: soft $(ulimit -Sn) hard $(ulimit -Hn)"
  echo "vedge: $(cd "$ROOT" && git rev-parse --short HEAD)"
  echo "scenario: $SCENARIO viewers: $VIEWERS duration: $DURATION connections: $CONNECTIONS segment-latency: $SEGMENT_LATENCY segment-duration: $SEGMENT_DURATION"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/env.txt" >&2
TICKS=$(getconf CLK_TCK)
c0=$(cpu_of "$EPID")
args=(bench live-burst --target "http://127.0.0.1:$EP/live/{run}/master.m3u8"
  --origin-stats "http://127.0.0.1:$OP/__stats" --viewers "$VIEWERS" --duration "$DURATION"
  --scenario "$SCENARIO" --connections "$CONNECTIONS" --json "$OUT/run.json" --html "$OUT/run.html")
[[ -n $RAMP ]] && args+=(--ramp "$RAMP")
log "vedge ${args[*]}"
/usr/bin/time -f "harness CPU: user %U s, sys %S s, wall %e s, max RSS %M KiB" \
  timeout 900 "$VEDGE" "${args[@]}" 2>&1 | tee "$OUT/run.txt"
rc=${PIPESTATUS[0]}
c1=$(cpu_of "$EPID")
echo "edge CPU: $(( (c1 - c0) / TICKS )) s (user+sys of the vedge edge over the run)" | tee -a "$OUT/run.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/run.txt"
exit "$rc"
