#!/usr/bin/env bash
# Ingest throughput next to fio (issue 4): `vedge ingest --store` of a 2 GiB asset from a local
# origin, against fio's sequential O_DIRECT write on the same store file.
#
#   benches/ingest/run.sh [SCRATCH_DIR]        # default /tmp/vedge-ingest-bench; needs ~7 GiB
#   RUNS=3 SEG_MIB=8 SOURCES="nginx origin dir" VEDGE=target/release/vedge benches/ingest/run.sh
#   SOURCES=admin benches/ingest/run.sh        # issue 18 goal 4: push into a RUNNING edge
#
# `admin`: a `vedge serve` with the 4 GiB store and an admin listener, its origin the nginx above;
# `vedge ingest URL --admin` starts a `POST /admin/ingest` job and polls it to the end (the edge
# fetches each segment and streams it into its store). Timed like the others (the client's wall
# time); the edge's peak RSS (VmHWM) is printed after each ingest: it should stay near
# --concurrency write buffers, not grow with the asset.
#
# The asset: master.m3u8 -> v/index.m3u8 -> 2 GiB of random data in SEG_MIB-MiB segments. Sources:
# nginx (sendfile; apt-get install -y nginx-light fio), `vedge origin --static` and the directory
# itself. Each ingest writes a freshly formatted 4 GiB store (formatted beforehand by ingesting a
# one-segment asset, so zero-filling is not timed); the time is the wall time of the whole
# `vedge ingest` process (open, walk, fetch, durable writes, close). Prints MiB/s and the ratio to
# fio (psync, 1 MiB, O_DIRECT, end_fsync). Stops only the servers it started; deletes its data.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${1:-/tmp/vedge-ingest-bench}
RUNS=${RUNS:-3}
SEG_MIB=${SEG_MIB:-8}
SOURCES=${SOURCES:-nginx origin dir}   # which sources to ingest from, in this order each run
TOTAL_MIB=${TOTAL_MIB:-2048}
source "$ROOT/benches/lib.sh"
ON_EXIT+=('rm -rf "$DIR"')
log() { echo "[ingest-bench $(date +%H:%M:%S)] $*" >&2; }
set -E
trap 'log "ERROR: line $LINENO failed: $BASH_COMMAND"' ERR
for t in fio nginx curl python3 /usr/bin/time; do
  command -v $t >/dev/null || [[ -x /usr/sbin/$t ]] || { log "missing $t (apt-get install -y nginx-light fio curl)"; exit 1; }
done
if [[ -z ${VEDGE:-} ]]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --bin vedge)
  VEDGE=$ROOT/target/release/vedge
fi

rm -rf "$DIR"; mkdir -p "$DIR/asset/v" "$DIR/small/v"
STORE=$DIR/bench.store
log "making the asset: $TOTAL_MIB MiB in $SEG_MIB MiB segments"
N=$((TOTAL_MIB / SEG_MIB))
head -c $((TOTAL_MIB << 20)) /dev/urandom | split -b $((SEG_MIB << 20)) -d -a 4 --additional-suffix=.ts - "$DIR/asset/v/seg"
for d in asset small; do
  printf '#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-STREAM-INF:BANDWIDTH=8000000\nv/index.m3u8\n' > "$DIR/$d/master.m3u8"
done
{
  printf '#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-PLAYLIST-TYPE:VOD\n'
  for f in $(cd "$DIR/asset/v" && ls seg*.ts); do printf '#EXTINF:10.0,\n%s\n' "$f"; done
  printf '#EXT-X-ENDLIST\n'
} > "$DIR/asset/v/index.m3u8"
printf '#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\ns.ts\n#EXT-X-ENDLIST\n' > "$DIR/small/v/index.m3u8"
head -c 1000 /dev/urandom > "$DIR/small/v/s.ts"
log "asset: $N segments + 2 playlists"

NP=$(free_port); OP=$(free_port)
mkdir -p "$DIR/nginx/logs"
cat > "$DIR/nginx/nginx.conf" <<EOF
daemon off;
worker_processes auto;
error_log $DIR/nginx/logs/error.log warn;
pid $DIR/nginx/nginx.pid;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path $DIR/nginx;
  proxy_temp_path $DIR/nginx;
  fastcgi_temp_path $DIR/nginx;
  uwsgi_temp_path $DIR/nginx;
  scgi_temp_path $DIR/nginx;
  types { application/vnd.apple.mpegurl m3u8; video/mp2t ts; }
  server { listen 127.0.0.1:$NP; root $DIR/asset; }
}
EOF
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# master_process on (workers need a master); `daemon off` keeps the master our child to stop.
"$NGINX" -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" &
PIDS+=($!)
"$VEDGE" origin --listen "127.0.0.1:$OP" --static "/a/=$DIR/asset" > "$DIR/origin.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$NP/master.m3u8"
wait_http "http://127.0.0.1:$OP/a/master.m3u8"

mibs() { python3 -c "print(f'{$1 / 1048576 / $2:.1f}')"; }

fio_once() {  # sets FIO (MiB/s): fio's sequential O_DIRECT write of 2 GiB on the store file
  rm -f "$STORE"
  FIO=$(fio --name=seqwrite --filename="$STORE" --rw=write --bs=1M --direct=1 --size=${TOTAL_MIB}M \
    --ioengine=psync --numjobs=1 --end_fsync=1 --output-format=json \
    | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["write"]; print("%.1f" % (j["bw_bytes"] / 1048576))')
  echo "fio psync bs=1M O_DIRECT write: $FIO MiB/s"
}
rm -f "$STORE"
FIO_URING=$(fio --name=seqwrite --filename="$STORE" --rw=write --bs=1M --direct=1 --size=${TOTAL_MIB}M \
  --ioengine=io_uring --iodepth=8 --end_fsync=1 --output-format=json \
  | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["write"]; print("%.1f" % (j["bw_bytes"] / 1048576))')
echo "fio io_uring QD8 bs=1M O_DIRECT write (for reference): $FIO_URING MiB/s"
RATIOS=$DIR/ratios
: > "$RATIOS"

ingest_once() {  # ingest_once NAME SOURCE
  rm -f "$STORE"
  "$VEDGE" ingest "$DIR/small/master.m3u8" --store "$STORE" --store-size 4GiB --host bench.local --json > /dev/null 2> "$DIR/format.err" \
    || { cat "$DIR/format.err" >&2; return 1; }
  sync
  local out
  out=$(/usr/bin/time -f "%e %U %S" -o "$DIR/time" \
    "$VEDGE" ingest "$2" --store "$STORE" --store-size 4GiB --host bench.local --json 2> "$DIR/ingest.err") || {
    log "ERROR: ingest $1 failed"; cat "$DIR/ingest.err" >&2; echo "$out" >&2; return 1; }
  local bytes secs user sys
  bytes=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["assets"][0]["stored_bytes"])' <<<"$out")
  read -r secs user sys < "$DIR/time"
  local rate; rate=$(mibs "$bytes" "$secs")
  local ratio; ratio=$(python3 -c "print(f'{100 * $rate / $FIO:.1f}')")
  echo "ingest from $1: $bytes bytes in $secs s = $rate MiB/s = $ratio % of fio psync (vedge CPU: user $user s, sys $sys s)"
  echo "$1 $rate $ratio" >> "$RATIOS"
}

admin_once() {  # a running edge, pushed through its admin API
  rm -f "$STORE"
  local ep ap token=bench-admin-token
  ep=$(free_port); ap=$(free_port)
  cat > "$DIR/edge.toml" <<EOF
listen = "127.0.0.1:$ep"
origin = "http://127.0.0.1:$NP"
admin_listen = "127.0.0.1:$ap"
admin_token = "$token"
[store]
path = "$STORE"
size = "4GiB"
EOF
  "$VEDGE" serve --config "$DIR/edge.toml" --log warn > "$DIR/edge.log" 2>&1 &
  local edge=$!
  for _ in $(seq 1 600); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$ap/" && break
    kill -0 "$edge" 2>/dev/null || { log "ERROR: the edge did not start"; cat "$DIR/edge.log" >&2; return 1; }
    sleep 0.1
  done
  sync
  local out
  out=$(/usr/bin/time -f "%e %U %S" -o "$DIR/time" \
    "$VEDGE" ingest "http://127.0.0.1:$NP/master.m3u8" --admin "http://127.0.0.1:$ap" \
      --admin-token "$token" --json 2> "$DIR/ingest.err") || {
    log "ERROR: admin ingest failed"; cat "$DIR/ingest.err" "$DIR/edge.log" >&2; echo "$out" >&2
    kill "$edge"; wait "$edge" 2>/dev/null || true; return 1; }
  local hwm rss cpu
  hwm=$(awk '/VmHWM/ {print $2, $3}' "/proc/$edge/status")
  rss=$(awk '/VmRSS/ {print $2, $3}' "/proc/$edge/status")
  cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$edge/stat")
  kill "$edge"; wait "$edge" 2>/dev/null || true
  echo "$out" > "$DIR/admin-job.json"
  local bytes secs user sys
  bytes=$(python3 -c '
import json, sys
def find(o):
    if isinstance(o, dict):
        for k in ("stored_bytes", "bytes"):
            if isinstance(o.get(k), int) and o[k] > 0:
                return o[k]
        o = list(o.values())
    if isinstance(o, list):
        for x in o:
            r = find(x)
            if r:
                return r
    return 0
print(find(json.load(open(sys.argv[1]))))' "$DIR/admin-job.json")
  [[ $bytes -gt 0 ]] || { log "no byte count in the job status, see $DIR/admin-job.json; counting the asset"; bytes=$((TOTAL_MIB << 20)); }
  read -r secs user sys < "$DIR/time"
  local rate ratio
  rate=$(mibs "$bytes" "$secs")
  ratio=$(python3 -c "print(f'{100 * $rate / $FIO:.1f}')")
  echo "ingest via the admin API into a running edge: $bytes bytes in $secs s = $rate MiB/s = $ratio % of fio psync (edge CPU $cpu s; edge peak RSS $hwm, RSS after $rss)"
  echo "admin $rate $ratio" >> "$RATIOS"
}

# fio runs before every round: the shared VM's disk speed drifts, so each ingest is compared with
# a fio figure taken seconds before it.
for run in $(seq 1 "$RUNS"); do
  fio_once
  for src in $SOURCES; do
    case $src in
      nginx) ingest_once nginx "http://127.0.0.1:$NP/master.m3u8" ;;
      origin) ingest_once "vedge-origin" "http://127.0.0.1:$OP/a/master.m3u8" ;;
      dir) ingest_once directory "$DIR/asset/master.m3u8" ;;
      admin) admin_once ;;
    esac
  done
done
echo "median over $RUNS runs:"
python3 - "$RATIOS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for src in dict.fromkeys(r[0] for r in rows):
    rates = [float(r[1]) for r in rows if r[0] == src]
    ratios = [float(r[2]) for r in rows if r[0] == src]
    print(f"  {src}: {statistics.median(rates):.1f} MiB/s, {statistics.median(ratios):.1f} % of fio psync "
          f"(runs: {', '.join(f'{x:.1f}' for x in ratios)} %)")
PY
log "origin alone (curl, 8 in parallel, to /dev/null):"
for name in nginx:$NP:/ vedge-origin:$OP:/a/; do
  IFS=: read -r n p prefix <<<"$name"
  t0=$(date +%s.%N)
  (cd "$DIR/asset/v" && ls seg*.ts) | xargs -P 8 -I{} curl -fs -o /dev/null "http://127.0.0.1:$p${prefix}v/{}"
  t1=$(date +%s.%N)
  echo "$n alone: $(mibs $((TOTAL_MIB << 20)) "$(python3 -c "print($t1 - $t0)")") MiB/s"
done
