#!/usr/bin/env bash
# A/B HIT throughput of two vedge binaries, interleaved, against one static origin:
#   benches/ab-two-binaries.sh BEFORE_BIN AFTER_BIN ROUNDS   (needs wrk, curl, python3 and /tmp/abfix with
#   index.m3u8 and seg_1m.ts)
set -u
B=$1 A=$2 R=${3:-3}
cd /tmp/abfix && python3 -m http.server 9700 --bind 127.0.0.1 >/dev/null 2>&1 & OPID=$!
sleep 1
for r in $(seq 1 $R); do
  for which in before after; do
    bin=$B; [ $which = after ] && bin=$A
    $bin serve --listen 127.0.0.1:9701 --origin http://127.0.0.1:9700 --ram-size 256MiB >/tmp/ab-$which.log 2>&1 & EPID=$!
    for i in $(seq 50); do curl -fs -o /dev/null http://127.0.0.1:9701/index.m3u8 && break; sleep 0.1; done
    for p in /index.m3u8 /seg_1m.ts; do
      curl -s -o /dev/null http://127.0.0.1:9701$p; curl -s -o /dev/null http://127.0.0.1:9701$p
      rps=$(wrk -t2 -c64 -d5s http://127.0.0.1:9701$p 2>/dev/null | awk '/Requests\/sec/{print $2}')
      echo "round=$r bin=$which path=$p req_per_s=$rps"
    done
    kill $EPID; wait $EPID 2>/dev/null
  done
done
kill $OPID
