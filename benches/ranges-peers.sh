#!/usr/bin/env bash
# Ranges over a cold large file, sliced (issue 15): vedge (`cache.slice_size = "4MiB"`) next to
# nginx with `slice 4m` + proxy_cache, both in front of one nginx origin that serves a random file
# with Range support and logs `$bytes_sent`. A viewer (one keep-alive connection) asks each edge for
# N random 64 KiB ranges (byte offsets, not aligned, from a fixed seed: the same ranges for both),
# then for the same N ranges again ("warm"). Each edge starts with an empty cache. Per edge and
# pass: origin requests and bytes (from the origin's access log), viewer TTFB p50/p99 (request
# sent -> response head read), status codes, and every range's bytes compared with the file.
# Prints a markdown table (and keeps it, with the raw figures, under $OUT when OUT is set).
#
#   benches/ranges-peers.sh                          # 1 GiB file, 1,000 ranges
#   SIZE_MIB=64 N=50 VEDGE=target/debug/vedge benches/ranges-peers.sh   # a smoke run
#
# Env: VEDGE (default target/release/vedge; build it with `cargo build --release --bin vedge`),
# NGINX (/usr/sbin/nginx, needs the slice module: Debian's nginx-light has it), SIZE_MIB (1024),
# N (1000), SEED (15), SLICE_MIB (4), OUT (a directory for the raw results; default: none).
# Disk: the file plus nginx's cache of it (~2 x SIZE_MIB) in $TMPDIR; RAM: vedge's RAM tier is
# sized to hold the file (2 x SIZE_MIB). Loopback ports only; stops only what it started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VEDGE=${VEDGE:-$ROOT/target/release/vedge}
NGINX=${NGINX:-/usr/sbin/nginx}
SIZE_MIB=${SIZE_MIB:-1024}
N=${N:-1000}
SEED=${SEED:-15}
SLICE_MIB=${SLICE_MIB:-4}
RANGE=65536

log() { echo "[ranges $(date +%H:%M:%S)] $*" >&2; }
[[ -x $VEDGE ]] || { log "no vedge at $VEDGE (cargo build --release --bin vedge, or set VEDGE)"; exit 1; }
[[ -x $NGINX ]] || { log "no nginx at $NGINX (apt-get install nginx-light)"; exit 1; }
"$NGINX" -V 2>&1 | grep -q -- --with-http_slice_module || { log "$NGINX lacks the slice module"; exit 1; }
((SIZE_MIB * 1048576 > RANGE)) || { log "SIZE_MIB must be larger than one range"; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vedge-ranges.XXXXXX")
source "$ROOT/benches/lib.sh"
ON_EXIT+=('rm -rf "$WORK"')

# nginx with its own prefix and config: in the foreground (we hold its pid), temp paths and logs
# under $WORK (Debian's compiled-in paths are not ours), workers as root when we are root (the
# files under $WORK are private to us).
nginx_conf() {  # nginx_conf DIR (http block on stdin)
  local dir=$1
  mkdir -p "$dir/tmp" "$dir/logs"
  {
    echo "daemon off;"
    [[ $(id -u) -eq 0 ]] && echo "user root;"
    echo "worker_processes ${2:-auto};"
    echo "pid $dir/nginx.pid;"
    echo "error_log $dir/logs/error.log warn;"
    echo "events { worker_connections 1024; }"
    echo "http {"
    echo "  client_body_temp_path $dir/tmp/body; proxy_temp_path $dir/tmp/proxy;"
    echo "  fastcgi_temp_path $dir/tmp/fastcgi; uwsgi_temp_path $dir/tmp/uwsgi; scgi_temp_path $dir/tmp/scgi;"
    echo "  default_type application/octet-stream;"
    echo "  keepalive_requests 1000000;"
    cat
    echo "}"
  } > "$dir/nginx.conf"
}
start_nginx() {  # start_nginx DIR: sets STARTED
  "$NGINX" -p "$1" -c "$1/nginx.conf" -e "$1/logs/error.log" > "$1/logs/stdout.log" 2>&1 &
  STARTED=$!
  PIDS+=("$STARTED")
}

OP=$(free_port)
mkdir -p "$WORK/www"
log "writing a ${SIZE_MIB} MiB random file"
head -c "$((SIZE_MIB * 1048576))" /dev/urandom > "$WORK/www/big.mp4"
nginx_conf "$WORK/origin" 1 <<CONF
  log_format o '\$status \$bytes_sent "\$http_range"';
  access_log $WORK/origin/logs/access.log o;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  server {
    listen 127.0.0.1:$OP;
    root $WORK/www;
    etag on;
  }
CONF
start_nginx "$WORK/origin"
wait_http "http://127.0.0.1:$OP/big.mp4"
ORIGIN_LOG=$WORK/origin/logs/access.log

# The ranges: N offsets from SEED, the same for both edges and both passes.
python3 - "$SEED" "$N" "$((SIZE_MIB * 1048576))" "$RANGE" > "$WORK/ranges.txt" <<'PY'
import random, sys
seed, n, size, rng = map(int, sys.argv[1:])
r = random.Random(seed)
for _ in range(n):
    a = r.randrange(0, size - rng + 1)
    print(a, a + rng - 1)
PY

# One pass of the viewer over ranges.txt against an edge: one line per range
# (`status ttfb_ms bytes ok`), `ok` = the body is the file's bytes at that range.
viewer() {  # viewer PORT OUTFILE
  python3 - "$1" "$WORK/ranges.txt" "$WORK/www/big.mp4" > "$2" <<'PY'
import http.client, sys, time
port, ranges, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
f = open(path, "rb")
conn = None

def fetch(a, b):
    """(status, ttfb ms, body); one reconnect if the edge closed the keep-alive connection."""
    global conn
    for _ in range(2):
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.connect()
            t0 = time.perf_counter()
            conn.request("GET", "/big.mp4", headers={"Range": f"bytes={a}-{b}"})
            resp = conn.getresponse()
            ttfb = (time.perf_counter() - t0) * 1000
            body = resp.read()
            if resp.will_close:
                conn.close()
                conn = None
            return resp.status, ttfb, body
        except (http.client.HTTPException, OSError):
            if conn is not None:
                conn.close()
            conn = None
    return None

for line in open(ranges):
    a, b = map(int, line.split())
    got = fetch(a, b)
    if got is None:
        print("000 0 0 0")
        continue
    status, ttfb, body = got
    f.seek(a)
    ok = status == 206 and body == f.read(b - a + 1)
    print(f"{status} {ttfb:.3f} {len(body)} {int(ok)}")
PY
}

# Runs both passes against an edge on PORT; writes NAME-{cold,warm}.txt and the origin log lines
# of each pass as NAME-{cold,warm}.origin.
measure() {  # measure NAME PORT
  local pass from
  for pass in cold warm; do
    from=$(stat -c %s "$ORIGIN_LOG")
    log "$1: $pass pass ($N ranges)"
    viewer "$2" "$WORK/$1-$pass.txt"
    sleep 0.5  # nginx writes its access line as the response ends; let the last ones land
    tail -c +"$((from + 1))" "$ORIGIN_LOG" > "$WORK/$1-$pass.origin"
  done
}

SLICE_BYTES=$((SLICE_MIB * 1048576))
RAM_MIB=$((SIZE_MIB * 2 > 256 ? SIZE_MIB * 2 : 256))

# vedge: slices of SLICE_MIB, objects up to twice the file, a RAM tier that holds it; no access
# log (nginx's edge has none either).
VP=$(free_port)
cat > "$WORK/vedge.toml" <<TOML
listen = "127.0.0.1:$VP"
origin = "http://127.0.0.1:$OP"
ram_size = "${RAM_MIB}MiB"
[cache]
slice_size = "${SLICE_MIB}MiB"
max_object_size = "$((SIZE_MIB * 2 > 2048 ? SIZE_MIB * 2 : 2048))MiB"
TOML
"$VEDGE" serve --config "$WORK/vedge.toml" --log warn > "$WORK/vedge.log" 2>&1 &
V=$!
PIDS+=("$V")
wait_http "http://127.0.0.1:$VP/" || { cat "$WORK/vedge.log" >&2; exit 1; }
measure vedge "$VP"
stop_pid "$V"

# nginx: the slice module's documented setup (a cache key and an upstream Range per slice),
# keep-alive to the origin as vedge has.
NP=$(free_port)
nginx_conf "$WORK/nginx-edge" <<CONF
  access_log off;
  proxy_cache_path $WORK/nginx-edge/cache levels=1:2 keys_zone=c:64m max_size=$((SIZE_MIB * 2))m inactive=1d use_temp_path=off;
  upstream origin { server 127.0.0.1:$OP; keepalive 16; }
  server {
    listen 127.0.0.1:$NP;
    location / {
      slice ${SLICE_MIB}m;
      proxy_cache c;
      proxy_cache_key \$uri\$is_args\$args\$slice_range;
      proxy_set_header Range \$slice_range;
      proxy_cache_valid 200 206 1h;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://origin;
    }
  }
CONF
start_nginx "$WORK/nginx-edge"
wait_http "http://127.0.0.1:$NP/"
measure nginx "$NP"

if [[ -n ${OUT:-} ]]; then
  mkdir -p "$OUT"
  cp "$WORK"/*-cold.* "$WORK"/*-warm.* "$WORK/ranges.txt" "$OUT/"
fi

python3 - "$WORK" "$SIZE_MIB" "$N" "$SEED" "$SLICE_BYTES" "$("$VEDGE" --version 2>/dev/null || echo vedge)" "$("$NGINX" -v 2>&1)" <<'PY' | tee "${OUT:-$WORK}/summary.md"
import collections, sys
work, size_mib, n, seed, slice_b, vv, nv = sys.argv[1:]
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")
print(f"{n} random 64 KiB ranges (seed {seed}) over a cold {size_mib} MiB file, slices of "
      f"{int(slice_b) >> 20} MiB; {vv}, {nv.replace('nginx version: ', '')}\n")
print("| edge | pass | origin requests | origin bytes | TTFB p50 ms | TTFB p99 ms | status codes | bytes correct |")
print("|---|---|---:|---:|---:|---:|---|---:|")
for edge in ("vedge", "nginx"):
    for p in ("cold", "warm"):
        rows = [l.split() for l in open(f"{work}/{edge}-{p}.txt") if l.strip()]
        ttfb = [float(r[1]) for r in rows if r[0] != "000"]
        codes = collections.Counter(r[0] for r in rows)
        ok = sum(int(r[3]) for r in rows)
        orig = [l.split() for l in open(f"{work}/{edge}-{p}.origin") if l.strip()]
        obytes = sum(int(o[1]) for o in orig)
        ocodes = collections.Counter(o[0] for o in orig)
        ostat = f" ({', '.join(f'{k}: {v}' for k, v in sorted(ocodes.items()))})" if orig else ""
        print(f"| {edge} | {p} | {len(orig)}{ostat} "
              f"| {obytes:,} ({obytes / 1048576:.1f} MiB) | {pct(ttfb, .5):.2f} | {pct(ttfb, .99):.2f} "
              f"| {', '.join(f'{k}: {v}' for k, v in sorted(codes.items()))} | {ok} / {len(rows)} |")
PY
