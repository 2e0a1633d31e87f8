#!/usr/bin/env bash
# Issue 18 goal 2: disk hits with a working set 8x memory. Every edge (vedge, nginx proxy_cache,
# Varnish file storage, Traffic Server raw cache file) runs alone, with an empty cache, inside a
# cgroup v1 memory group limited to BUDGET (its RAM tier plus the page cache it uses), in front
# of `vedge origin`'s synthetic catalogue (/cat/<id>.ts, 1-2 MiB each, CATALOGUE_GIB in all).
# `vedge bench zipf` asks for objects with Zipf(ZIPF) popularity over CONNS keep-alive
# connections: a warm-up run, then the measured run. Reported per edge: byte hit ratio, origin
# bytes, Gbit/s, edge CPU (utime+stime of every process in the edge's cgroup over the measured
# run), Gbit/s per edge core, p50/p99/max, errors, the cgroup's peak memory and OOM kills.
#
#   benches/disk-peers.sh                                   # the full run (hours of disk I/O)
#   BUDGET=256M CATALOGUE_GIB=1 WARMUP=10s DURATION=10s EDGES="vedge nginx" benches/disk-peers.sh
#
# Environment (defaults):
#   PERF=1              also record a call-graph profile of each edge's measured run ($OUT/EDGE.perf.data)
#   BUDGET=2G           memory.limit_in_bytes of each edge's cgroup (K/M/G suffixes)
#   RAM_MIB=BUDGET/4    RAM tier: vedge ram_size, ATS ram_cache.size (nginx and Varnish file
#                       storage have none but the page cache)
#   CATALOGUE_GIB=16    catalogue size; DISK_GIB=CATALOGUE_GIB/2 (at most 20): each edge's disk
#                       cache (vedge store.size, nginx max_size, Varnish file size, ATS span)
#   ZIPF=1.0 CONNS=64 SEED=1 WARMUP=300s DURATION=120s (WARMUP_REQUESTS=N ends the warm-up
#                       early; DURATION is the measured run)
#   EDGES="vedge nginx varnish ats"
#   VEDGE=path/to/vedge (default: target/release/vedge, built if missing)
#   CACHE_DIR=/tmp/vedge-disk-cache (deleted after each edge)   OUT=benches/results/disk-<ts>
#   PEERS=../shared/bench-peers (ATS configs)
#   CGROUP_PARENT=the caller's own memory cgroup (the edges stay inside whatever holds the caller)
#   VERIFY=1            compare every body byte in the measured run (costs harness CPU)
#   VEDGE_EXTRA         more top-level lines for vedge's config, e.g. a '[server]' table
#   VEDGE_STORE_EXTRA   more lines for vedge's [store] table, e.g. 'admit_window = "0s"'
#
# Needs root (cgroups), nginx-light, varnish, trafficserver, curl, python3. Only processes this
# script started are stopped (by PID); each edge's cgroup is removed after its run.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# ../shared/bench-peers next to the checkout (or next to the worktrees' directory).
if [[ -z ${PEERS:-} ]]; then
  PEERS=$ROOT/../shared/bench-peers
  [[ -d $PEERS ]] || PEERS=$ROOT/../../shared/bench-peers
fi

BUDGET=${BUDGET:-2G}
CATALOGUE_GIB=${CATALOGUE_GIB:-16}
ZIPF=${ZIPF:-1.0} CONNS=${CONNS:-64} SEED=${SEED:-1}
WARMUP=${WARMUP:-300s} DURATION=${DURATION:-120s} WARMUP_REQUESTS=${WARMUP_REQUESTS:-}
EDGES=${EDGES:-"vedge nginx varnish ats"}
CACHE_DIR=${CACHE_DIR:-/tmp/vedge-disk-cache}
OUT=${OUT:-$ROOT/benches/results/disk-$(date -u +%Y%m%d-%H%M%S)}
VERIFY=${VERIFY:-}

log() { echo "[disk $(date -u +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

bytes_of() {  # 2G / 512M / 1024K / plain bytes -> bytes
  local v=${1^^}
  case $v in
    *G) echo $(( ${v%G} << 30 )) ;; *M) echo $(( ${v%M} << 20 )) ;; *K) echo $(( ${v%K} << 10 )) ;;
    *) echo "$v" ;;
  esac
}
BUDGET_BYTES=$(bytes_of "$BUDGET")
RAM_MIB=${RAM_MIB:-$(( BUDGET_BYTES / 4 >> 20 ))}
DISK_GIB=${DISK_GIB:-$(python3 -c "print(max(1, min(20, round($CATALOGUE_GIB / 2))))")}
(( DISK_GIB <= 20 )) || die "DISK_GIB=$DISK_GIB: keep each edge's disk cache at most 20 GiB"
(( RAM_MIB << 20 < BUDGET_BYTES )) || die "RAM_MIB=$RAM_MIB does not fit BUDGET=$BUDGET"

[[ $(id -u) == 0 ]] || die "needs root (cgroup v1 memory groups)"
CGMEM=/sys/fs/cgroup/memory
[[ -f $CGMEM/memory.limit_in_bytes ]] || die "cgroup v1 memory controller not mounted at $CGMEM"
CGROUP_PARENT=${CGROUP_PARENT:-$CGMEM$(awk -F: '$2 == "memory" {print $3}' /proc/self/cgroup)}
[[ -d $CGROUP_PARENT ]] || die "CGROUP_PARENT=$CGROUP_PARENT does not exist"
for e in $EDGES; do
  case $e in
    vedge) ;; nginx) command -v nginx >/dev/null || die "nginx missing (apt-get install nginx-light)" ;;
    varnish) command -v varnishd >/dev/null || die "varnishd missing (apt-get install varnish)" ;;
    ats) command -v traffic_server >/dev/null || die "traffic_server missing (apt-get install trafficserver)"
         [[ -f $PEERS/conf/ats/records.overrides ]] || die "no ATS configs under PEERS=$PEERS" ;;
    *) die "unknown edge $e (vedge nginx varnish ats)" ;;
  esac
done
avail_gib=$(df -BG --output=avail "$(dirname "$CACHE_DIR")" | tail -1 | tr -dc 0-9)
(( avail_gib > DISK_GIB + 2 )) || die "$CACHE_DIR: ${avail_gib} GiB free, DISK_GIB=$DISK_GIB needs more"

if [[ -z ${VEDGE:-} ]]; then
  VEDGE=$ROOT/target/release/vedge
  [[ -x $VEDGE ]] || { log "cargo build --release"; (cd "$ROOT" && cargo build --release --bin vedge) || exit 1; }
fi
mkdir -p "$OUT"
RUN=$(mktemp -d /tmp/vedge-disk-run.XXXXXX)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
PIDS=() CG=""

stop_pid() {  # TERM, then KILL after 10 s
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
}
stop_group() {  # every process left in the edge's cgroup (all started by us), then the group
  [[ -n $CG && -d $CG ]] || return 0
  local p
  for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do stop_pid "$p"; done
  for _ in $(seq 1 50); do [[ -z $(cat "$CG/cgroup.procs" 2>/dev/null) ]] && break; sleep 0.1; done
  rmdir "$CG" 2>/dev/null || log "could not remove $CG"
  CG=""
}
cleanup() {
  stop_group
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  rm -rf "$RUN" "${CACHE_DIR:?}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 300); do curl -s -o /dev/null --max-time 1 "$1" && return 0; sleep 0.1; done; return 1; }
# CPU ticks (utime + stime, all threads) of every process in the cgroup.
cg_ticks() {
  local total=0 p
  for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do
    [[ -r /proc/$p/stat ]] || continue
    # Fields after the ")" of comm: utime is the 12th, stime the 13th.
    total=$(( total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}') ))
  done
  echo "$total"
}
# Runs "$@" inside $CG: the shell joins the group, then execs (children inherit the group).
in_group() { sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" "$@"; }

OP=$(free_port)
"$VEDGE" origin --listen "127.0.0.1:$OP" > "$OUT/origin.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$OP/__stats" || die "origin did not come up"

CMD="BUDGET=$BUDGET RAM_MIB=$RAM_MIB CATALOGUE_GIB=$CATALOGUE_GIB DISK_GIB=$DISK_GIB ZIPF=$ZIPF CONNS=$CONNS SEED=$SEED WARMUP=$WARMUP${WARMUP_REQUESTS:+ WARMUP_REQUESTS=$WARMUP_REQUESTS} DURATION=$DURATION EDGES=\"$EDGES\" benches/disk-peers.sh"
{
  echo "date: $(date -u -Is)"
  echo "command: $CMD"
  echo "cpu: $(lscpu | grep 'Model name' | cut -d: -f2 | xargs), $(nproc) cores; kernel $(uname -r)"
  echo "vedge: $(cd "$ROOT" && git rev-parse --short HEAD) ($VEDGE)"
  for e in $EDGES; do case $e in
    nginx) echo "nginx: $(nginx -v 2>&1 | cut -d/ -f2)" ;;
    varnish) echo "varnish: $(varnishd -V 2>&1 | head -1)" ;;
    ats) echo "ats: $(traffic_server --version 2>/dev/null | head -1)" ;;
  esac; done
  echo "cache dir: $CACHE_DIR ($(df -h --output=source,fstype "$(dirname "$CACHE_DIR")" | tail -1 | xargs))"
} > "$OUT/env.txt"
cat "$OUT/env.txt" >&2
TICKS=$(getconf CLK_TCK)

start_edge() {  # start_edge NAME PORT -> sets EPID (the process to watch)
  local edge=$1 ep=$2 d=$CACHE_DIR/$1
  mkdir -p "$d"
  case $edge in
    vedge)
      cat > "$RUN/vedge.toml" <<TOML
listen = "127.0.0.1:$ep"
origin = "http://127.0.0.1:$OP"
admin_listen = "127.0.0.1:$AP"
admin_token = "disk-peers-metrics-token-0123456789"
ram_size = "${RAM_MIB}MiB"
${VEDGE_EXTRA:-}
[store]
path = "$d/vedge.store"
size = "${DISK_GIB}GiB"
${VEDGE_STORE_EXTRA:-}
TOML
      in_group "$VEDGE" --log warn serve --config "$RUN/vedge.toml" > "$OUT/vedge.log" 2>&1 &
      EPID=$! ;;
    nginx)
      sed "s#@RUN@#$RUN#g; s#@EDGE_PORT@#$ep#g; s#@ORIGIN_PORT@#$OP#g; s#$RUN/nginx-cache#$d#; s#max_size=[0-9a-z]*#max_size=${DISK_GIB}g#" \
        "$HERE/peers/conf/nginx-edge.conf" > "$RUN/nginx.conf"
      grep -q "max_size=${DISK_GIB}g" "$RUN/nginx.conf" || die "nginx template: no max_size to set"
      in_group nginx -c "$RUN/nginx.conf" -p "$RUN/" -e "$RUN/nginx-error.log" || return 1
      sleep 0.3; EPID=$(cat "$RUN/nginx.pid") ;;
    varnish)
      sed "s#@ORIGIN_PORT@#$OP#g" "$HERE/peers/conf/varnish-edge.vcl" > "$RUN/varnish.vcl"
      rm -rf "$RUN/varnish"
      in_group varnishd -a "127.0.0.1:$ep" -T 127.0.0.1:0 -f "$RUN/varnish.vcl" \
        -s "file,$d/storage.bin,${DISK_GIB}G" -n "$RUN/varnish" -P "$RUN/varnish.pid" -j none \
        -p thread_pools=2 -p thread_pool_min=100 -p thread_pool_max=5000 > "$OUT/varnish.log" 2>&1 || return 1
      sleep 0.5; EPID=$(cat "$RUN/varnish.pid") ;;
    ats)
      local a=$RUN/ats
      rm -rf "$a"; mkdir -p "$a"/{etc,var,run} "$OUT/ats-log"
      cp -r /etc/trafficserver/. "$a/etc/"
      # Debian's records.config without the keys we set, then the shared overrides, then ours
      # (later lines win).
      {
        cat "$PEERS/conf/ats/records.overrides"
        echo "CONFIG proxy.config.http.server_ports STRING $ep:ipv4:ip-in=127.0.0.1"
        echo "CONFIG proxy.config.cache.ram_cache.size INT $(( RAM_MIB << 20 ))"
        echo "CONFIG proxy.config.log.logging_enabled INT 0"
      } > "$a/overrides"
      local keys; keys=$(awk '/^CONFIG/{print $2}' "$a/overrides" | sed 's/\./\\./g' | paste -sd'|')
      { grep -vE "^CONFIG ($keys) " /etc/trafficserver/records.config; cat "$a/overrides"; } > "$a/etc/records.config"
      echo "map http://127.0.0.1:$ep/ http://127.0.0.1:$OP/" > "$a/etc/remap.config"
      cp "$PEERS/conf/ats/cache.config" "$a/etc/"
      echo "$d ${DISK_GIB}G" > "$a/etc/storage.config"   # a directory: ATS makes its cache.db there
      : > "$a/etc/plugin.config"
      cat > "$a/runroot.yaml" <<YAML
prefix: $a
exec_prefix: /usr
bindir: /usr/bin
sbindir: /usr/sbin
sysconfdir: $a/etc
datadir: /usr/share/trafficserver
includedir: /usr/include
libdir: /usr/lib/trafficserver
libexecdir: /usr/lib/trafficserver/modules
localstatedir: $a/var
runtimedir: $a/run
logdir: $OUT/ats-log
cachedir: $d
YAML
      in_group traffic_server --run-root="$a/runroot.yaml" > "$OUT/ats.log" 2>&1 &
      EPID=$! ;;
  esac
}

ZARGS=(--catalogue-gib "$CATALOGUE_GIB" --zipf "$ZIPF" --connections "$CONNS")
for edge in $EDGES; do
  EP=$(free_port); AP=$(free_port); while [[ $AP == "$EP" ]]; do AP=$(free_port); done
  rm -rf "${CACHE_DIR:?}"; mkdir -p "$CACHE_DIR"
  CG=$CGROUP_PARENT/vedge-disk-$edge-$$
  mkdir "$CG" || die "cannot create cgroup $CG"
  echo "$BUDGET_BYTES" > "$CG/memory.limit_in_bytes" || die "cannot limit $CG"
  curl -s -o /dev/null "http://127.0.0.1:$OP/__reset"
  log "== $edge on :$EP in $CG (limit $BUDGET, RAM tier ${RAM_MIB} MiB, disk ${DISK_GIB} GiB)"
  if ! start_edge "$edge" "$EP" || ! wait_http "http://127.0.0.1:$EP/__none"; then
    log "$edge did not come up (logs in $OUT)"; stop_group; continue
  fi
  log "$edge: warm-up $WARMUP${WARMUP_REQUESTS:+ or $WARMUP_REQUESTS requests}"
  timeout 7200 "$VEDGE" --log warn bench zipf --target "http://127.0.0.1:$EP" \
    --origin-stats "http://127.0.0.1:$OP/__stats" "${ZARGS[@]}" --seed $((SEED + 1000000)) \
    --duration "$WARMUP" ${WARMUP_REQUESTS:+--requests "$WARMUP_REQUESTS"} \
    --json "$OUT/$edge-warmup.json" > "$OUT/$edge-warmup.txt" 2>&1 || log "$edge: warm-up failed"
  cat "$OUT/$edge-warmup.txt" >&2
  log "$edge: measured run $DURATION"
  # vedge's store counters (reinsertions, bytes written, disk hits) around the measured run.
  [[ $edge == vedge ]] && curl -s "http://127.0.0.1:$AP/metrics" > "$OUT/vedge-metrics-before.txt"
  c0=$(cg_ticks); t0=$(date +%s.%N)
  PERF_PID=
  if [[ -n ${PERF:-} ]]; then   # PERF=1: a call-graph profile of the edge's measured run
    perf record -q -F 499 -g -p "$(paste -sd, "$CG/cgroup.procs")" -o "$OUT/$edge.perf.data" > /dev/null 2>&1 &
    PERF_PID=$!
  fi
  timeout 7200 "$VEDGE" --log warn bench zipf --target "http://127.0.0.1:$EP" \
    --origin-stats "http://127.0.0.1:$OP/__stats" "${ZARGS[@]}" --seed "$SEED" \
    --duration "$DURATION" ${VERIFY:+--verify} --json "$OUT/$edge.json" > "$OUT/$edge.txt" 2>&1 \
    || log "$edge: measured run failed"
  c1=$(cg_ticks); t1=$(date +%s.%N)
  [[ $edge == vedge ]] && curl -s "http://127.0.0.1:$AP/metrics" > "$OUT/vedge-metrics-after.txt"
  if [[ -n $PERF_PID ]]; then kill -INT "$PERF_PID" 2>/dev/null; wait "$PERF_PID" 2>/dev/null || true; fi
  cat "$OUT/$edge.txt" >&2
  alive=1; kill -0 "$EPID" 2>/dev/null || alive=0
  oom_kills=$(awk '$1 == "oom_kill" {print $2}' "$CG/memory.oom_control" 2>/dev/null)
  python3 - "$OUT/$edge.json" <<PY || log "no JSON for $edge"
import json, sys
p = sys.argv[1]
d = json.load(open(p))
stat = dict(l.split() for l in open("$CG/memory.stat"))
d["edge"] = {
    "name": "$edge", "alive_after": $alive == 1,
    # A process that died took its CPU ticks with it: no figure rather than a wrong one.
    "cpu_s": ($c1 - $c0) / $TICKS if $alive == 1 else None, "wall_s": $t1 - $t0,
    "cgroup_limit_bytes": $BUDGET_BYTES,
    "cgroup_max_usage_bytes": int(open("$CG/memory.max_usage_in_bytes").read()),
    "cgroup_failcnt": int(open("$CG/memory.failcnt").read()),
    "oom_kills": int("${oom_kills:-0}"),
    "cache_bytes": int(stat.get("total_cache", 0)), "rss_bytes": int(stat.get("total_rss", 0)),
    "shmem_bytes": int(stat.get("total_shmem", 0)),
}
json.dump(d, open(p, "w"), indent=1)
PY
  stop_group
  rm -rf "${CACHE_DIR:?}"
done

python3 - "$OUT" $EDGES > "$OUT/summary.md" <<'PY'
import json, os, sys
out, edges = sys.argv[1], sys.argv[2:]
env = open(os.path.join(out, "env.txt")).read().splitlines()
print("## Disk hits, working set 8x memory\n")
for l in env:
    print(f"- {l}")
print()
print("| edge | byte hit ratio | origin GiB | Gbit/s | edge CPU cores | Gbit/s per edge core | req/s | p50 ms | p99 ms | max ms | errors | cgroup peak MiB | OOM kills |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for e in edges:
    try:
        d = json.load(open(os.path.join(out, f"{e}.json")))
    except Exception:
        print(f"| {e} | (no result: see {e}.txt) |" + " |" * 11)
        continue
    m, x = d["measured"], d.get("edge", {})
    cpu = x.get("cpu_s")
    cores = cpu / max(m["elapsed_s"], 1e-9) if cpu is not None else None
    per_core = f"{m['gbit_per_s'] / cores:.2f}" if cores else "-"
    bhr = m.get("byte_hit_ratio")
    ob = m.get("origin_bytes")
    dead = "" if x.get("alive_after", True) else " (died)"
    print(f"| {e}{dead} | {bhr if bhr is None else f'{bhr:.4f}'} | "
          f"{'-' if ob is None else f'{ob / 2**30:.2f}'} | {m['gbit_per_s']:.3f} | {'-' if cores is None else f'{cores:.2f}'} | "
          f"{per_core} | {m['requests_per_s']:.0f} | {m['total_ms']['p50']:.1f} | "
          f"{m['total_ms']['p99']:.1f} | {m['total_ms']['max']:.1f} | {m['error_total']} | "
          f"{x.get('cgroup_max_usage_bytes', 0) / 2**20:.0f} | {x.get('oom_kills', '-')} |")
ideal = None
for e in edges:
    try:
        ideal = json.load(open(os.path.join(out, f"{e}.json")))["ideal_byte_hit_ratio_per_gib"]
        break
    except Exception:
        pass
if ideal:
    print("\nIdeal byte hit ratio of a cache holding the most popular objects: " +
          ", ".join(f"{g} GiB {r:.3f}" for g, r in ideal))
print("\nLatency is to the last byte of each 1-2 MiB object. Edge CPU: utime+stime of every process "
      "in the edge's cgroup over the measured run; cores = CPU s / wall s.")
PY
log "wrote $OUT/summary.md"
cat "$OUT/summary.md"
