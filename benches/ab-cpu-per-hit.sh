#!/usr/bin/env bash
# Edge CPU per HIT, A/B of vedge binaries and/or configs, interleaved round by round:
#
#   benches/ab-cpu-per-hit.sh ROUNDS PATH LABEL=BIN:CONFIG [LABEL=BIN:CONFIG ...]
#   benches/ab-cpu-per-hit.sh 5 /synth/seg_256k_00.ts \
#       base=/tmp/vedge-base:/tmp/zc-on.toml new=target/release/vedge:/tmp/zc-on.toml
#
# Each round starts every edge in turn on 127.0.0.1:9701 in front of a static origin
# (`python3 -m http.server` over FIXTURES, default /tmp/peers/fixtures from
# ../shared/bench-peers/gen-fixtures.sh; add bodies of other sizes there with
# `head -c $((N*1024)) /dev/urandom > /tmp/peers/fixtures/synth/seg_Nk_x.ts`), primes PATH,
# warms 1 s, runs `wrk -t2 -c64 -d6s` and prints per request, in µs, the edge's CPU (utime+stime
# from /proc), wrk's CPU, and the box's busy time less wrk's (what bench-peers divides by: it
# includes softirq time, which no process is charged with), then one line per label with its
# rounds as edge/wrk/box-wrk. CONFIG is a TOML file (an empty one for
# the defaults). Compare within one invocation only: the box is shared and noisy.
set -u
R=$1; shift; P=$1; shift
FIXTURES=${FIXTURES:-/tmp/peers/fixtures}
tck=$(getconf CLK_TCK)
(cd "$FIXTURES" && exec python3 -m http.server 9700 --bind 127.0.0.1 >/dev/null 2>&1) & OPID=$!
trap 'kill $OPID 2>/dev/null' EXIT
sleep 1
for r in $(seq 1 "$R"); do
  for spec in "$@"; do
    label=${spec%%=*} rest=${spec#*=}
    bin=${rest%%:*} cfg=${rest#*:}
    "$bin" serve -c "$cfg" --listen 127.0.0.1:9701 --origin http://127.0.0.1:9700 \
      --ram-size 2GiB --log warn >/dev/null 2>&1 & EPID=$!
    for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:9701$P" && break; sleep 0.1; done
    for _ in 1 2 3; do curl -s -o /dev/null "http://127.0.0.1:9701$P"; done
    wrk -t2 -c64 -d1s "http://127.0.0.1:9701$P" >/dev/null 2>&1
    c0=$(awk '{print $14+$15}' /proc/$EPID/stat)
    b0=$(awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat)
    TIMEFORMAT='%U %S'
    { time wrk -t2 -c64 -d6s "http://127.0.0.1:9701$P" >/tmp/ab-wrk.out 2>&1; } 2>/tmp/ab-wrk.time
    b1=$(awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat)
    c1=$(awk '{print $14+$15}' /proc/$EPID/stat)
    rps=$(awk '/Requests\/sec/{print $2}' /tmp/ab-wrk.out)
    read -r wu ws </tmp/ab-wrk.time
    awk -v l="$label" -v c=$((c1 - c0)) -v b=$((b1 - b0)) -v w="$(awk -v a="$wu" -v b="$ws" 'BEGIN{print a+b}')" \
      -v hz="$tck" -v rps="$rps" 'BEGIN{n = rps * 6; if (n <= 0) n = -1e9
        printf "%s %.1f/%.1f/%.1f\n", l, c / hz * 1e6 / n, w * 1e6 / n, (b / hz - w) * 1e6 / n}'
    kill $EPID; wait $EPID 2>/dev/null
  done
done | awk '{a[$1] = a[$1] " " $2} END{for (k in a) print k ":" a[k]}'
