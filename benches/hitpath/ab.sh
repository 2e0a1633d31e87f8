#!/usr/bin/env bash
# Edge CPU per request, two vedge binaries side by side, measured alternately (the box drifts, so
# only pairs taken back to back are compared). Both edges run at once against a static origin on
# 127.0.0.1:9000 (../shared/bench-peers' fixtures: `python3 -m http.server 9000` in
# /tmp/peers/fixtures will do); each measurement is `wrk -t2 -c64` for DUR seconds and the
# edge's user and system CPU from /proc/PID/stat, divided by wrk's request count.
#
#   BASE=/tmp/vedge-old NEW=target/release/vedge benches/hitpath/ab.sh [PAIRS] [PATH] [DUR]
#
# Prints per pair: µs user, µs system, µs total per request and req/s, for each binary.
set -euo pipefail
PAIRS=${1:-6}; URL=${2:-/vod/720p/index.m3u8}; DUR=${3:-4}
: "${BASE:?BASE=path of the first binary}" "${NEW:?NEW=path of the second binary}"
LOGS=${LOGS:-$(mktemp -d)}
# vedge binds with SO_REUSEPORT: a leftover edge on a port would silently take part of the load.
if ss -ltn | grep -qE '127\.0\.0\.1:809[12] '; then echo "port 8091 or 8092 is in use" >&2; exit 1; fi
"$BASE" serve --listen 127.0.0.1:8091 --origin http://127.0.0.1:9000 --ram-size 2GiB --log warn >"$LOGS/base.log" 2>&1 & B=$!
"$NEW" serve --listen 127.0.0.1:8092 --origin http://127.0.0.1:9000 --ram-size 2GiB --log warn >"$LOGS/new.log" 2>&1 & N=$!
trap 'kill $B $N 2>/dev/null || true' EXIT
sleep 1
for p in 8091 8092; do
  for _ in 1 2 3; do curl -s -o /dev/null "http://127.0.0.1:$p$URL"; done
  wrk -t2 -c64 -d1s "http://127.0.0.1:$p$URL" >/dev/null
done
tck=$(getconf CLK_TCK)
one() { # PID PORT
  local s0 s1 r
  read -r -a s0 <<<"$(cut -d' ' -f14,15 "/proc/$1/stat")"
  r=$(wrk -t2 -c64 -d"${DUR}s" "http://127.0.0.1:$2$URL" | awk '/requests in/ {print $1}')
  read -r -a s1 <<<"$(cut -d' ' -f14,15 "/proc/$1/stat")"
  python3 -c "u=(${s1[0]}-${s0[0]})/$tck*1e6/$r; s=(${s1[1]}-${s0[1]})/$tck*1e6/$r; print(f'{u:.2f} {s:.2f} {u+s:.2f} {$r/$DUR:.0f}')"
}
for i in $(seq "$PAIRS"); do
  if (( i % 2 )); then b=$(one $B 8091); n=$(one $N 8092); else n=$(one $N 8092); b=$(one $B 8091); fi
  echo "pair $i base (user system total req/s) $b | new $n"
done
