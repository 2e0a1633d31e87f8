#!/usr/bin/env bash
# Tiered deployment (issue 16) on loopback with real processes: the `vedge origin` simulator, then
# three layouts in turn, each started fresh (empty caches, a new origin so its request counts
# start at zero): 1 edge; 3 edges + 1 shield; 3 edges + 2 shields. Edges name the shields in
# `[shield] nodes` (rendezvous hashing per key), shields point at the origin, every node has its
# own `node_id`. `vedge bench live-burst` spreads the viewers over the layout's edges (one
# --target per edge). Prints one markdown table row per layout: origin requests per distinct
# media object (amplification), segment TTFB p50/p99, errors, and the fills of each tier (each
# node's `vedge_origin_fetches_total` on its admin /metrics).
#
# It also checks the tier's rules and fails when one is broken:
#   - each tier keeps exactly one fill per key: the origin saw every media object once (the one
#     shield owning it filled it once), each shield missed a media key at most once and was
#     asked for it at most once per edge (its access log);
#   - Cache-Status of an edge response lists both tiers, the shield's entry first (RFC 9211).
#
#   benches/tier.sh                          # 2,000 viewers, 60 s per layout
#   VIEWERS=50 DURATION=15s benches/tier.sh  # a smoke run
#
# Env: VEDGE (binary; default target/release/vedge), VIEWERS (2000), DURATION (60s),
# SCENARIO (burst), LAYOUTS ("1x0 3x1 3x2": edges x shields), OUT (raw reports and logs;
# default benches/results/tier-<timestamp>), PORT_BASE (18000: origin PORT_BASE, edges
# +81.., shields +91.., their admin listeners +181.. and +191..).
# Needs: curl, python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VEDGE=${VEDGE:-$ROOT/target/release/vedge}
VIEWERS=${VIEWERS:-2000}
DURATION=${DURATION:-60s}
SCENARIO=${SCENARIO:-burst}
LAYOUTS=${LAYOUTS:-"1x0 3x1 3x2"}
PORT_BASE=${PORT_BASE:-18000}
OUT=${OUT:-$ROOT/benches/results/tier-$(date +%Y%m%d-%H%M%S)}
TOKEN=tier-bench
H=127.0.0.1
ORIGIN_PORT=$PORT_BASE

[[ -x $VEDGE ]] || { echo "no vedge binary at $VEDGE (cargo build --release, or set VEDGE)" >&2; exit 1; }
command -v curl >/dev/null && command -v python3 >/dev/null || { echo "needs curl and python3" >&2; exit 1; }
mkdir -p "$OUT"

PIDS=()
stop_all() {
  # Only the processes this script started, by pid.
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT

# wait_up URL WHAT: polls URL (bounded: 10 s) until it answers.
wait_up() {
  local i
  for ((i = 0; i < 100; i++)); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not come up ($1); its log:" >&2
  tail -n 20 "$3" >&2 || true
  exit 1
}

# node NAME PORT ADMIN_PORT SHIELDS: writes NAME's config (SHIELDS: a TOML array, or empty for
# a shield / a lone edge) and starts it.
node() {
  local name=$1 port=$2 admin=$3 shields=$4 dir=$RUN_DIR
  {
    echo "node_id = \"$name\""
    echo "listen = \"$H:$port\""
    echo "admin_listen = \"$H:$admin\""
    echo "admin_token = \"$TOKEN\""
    echo "ram_size = \"1GiB\""
    echo
    echo "[[route]]"
    echo "prefix = \"/\""
    echo "origin = \"http://$H:$ORIGIN_PORT\""
    if [[ -n $shields ]]; then
      echo
      echo "[shield]"
      echo "nodes = $shields"
    fi
  } > "$dir/$name.toml"
  # Shields log their access lines (for the one-fill-per-key check); edges only warnings.
  local log=warn
  [[ $name == shield-* ]] && log="warn,vedge::access=info"
  "$VEDGE" --log "$log" serve --config "$dir/$name.toml" > "$dir/$name.log" 2>&1 &
  PIDS+=($!)
  wait_up "http://$H:$admin/healthz" "$name" "$dir/$name.log"
}

# fills ADMIN_PORT...: the sum of vedge_origin_fetches_total over those nodes.
fills() {
  local sum=0 p v
  for p in "$@"; do
    v=$(curl -fsS --max-time 2 "http://$H:$p/metrics" |
      awk '$1 == "vedge_origin_fetches_total" { print $2 }')
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

echo "| layout | viewers | origin req/object (amplification) | max per object | segment TTFB p50 / p99 ms | errors | fills: edges / shields | checks |"
echo "|---|---|---|---|---|---|---|---|"
status=0
for layout in $LAYOUTS; do
  edges=${layout%x*} shields=${layout#*x}
  RUN_DIR=$OUT/$layout
  mkdir -p "$RUN_DIR"
  "$VEDGE" --log warn origin --listen "$H:$ORIGIN_PORT" > "$RUN_DIR/origin.log" 2>&1 &
  PIDS+=($!)
  wait_up "http://$H:$ORIGIN_PORT/__stats" origin "$RUN_DIR/origin.log"

  shield_list="" shield_admin=()
  for ((s = 1; s <= shields; s++)); do
    node "shield-$s" $((PORT_BASE + 90 + s)) $((PORT_BASE + 190 + s)) ""
    shield_list+="${shield_list:+, }\"http://$H:$((PORT_BASE + 90 + s))\""
    shield_admin+=($((PORT_BASE + 190 + s)))
  done
  targets="" edge_admin=()
  for ((e = 1; e <= edges; e++)); do
    node "edge-$e" $((PORT_BASE + 80 + e)) $((PORT_BASE + 180 + e)) "${shield_list:+[$shield_list]}"
    targets+="${targets:+,}http://$H:$((PORT_BASE + 80 + e))/live/{run}/master.m3u8"
    edge_admin+=($((PORT_BASE + 180 + e)))
  done

  echo "[$(date -u +%H:%M:%S)] layout $edges edge(s) + $shields shield(s): $VIEWERS viewers, $DURATION" >&2
  bench_rc=0
  "$VEDGE" --log warn bench live-burst --target "$targets" \
    --origin-stats "http://$H:$ORIGIN_PORT/__stats" --viewers "$VIEWERS" \
    --scenario "$SCENARIO" --duration "$DURATION" --json "$RUN_DIR/report.json" \
    > "$RUN_DIR/bench.txt" 2>&1 || bench_rc=$?
  if [[ ! -s $RUN_DIR/report.json ]]; then
    echo "| $edges edge(s) + $shields shield(s) | $VIEWERS | - | - | - | - | - | FAIL: bench exited $bench_rc (see $RUN_DIR/bench.txt) |"
    status=1
    stop_all
    continue
  fi
  edge_fills=$(fills "${edge_admin[@]}")
  shield_fills=$( ((shields > 0)) && fills "${shield_admin[@]}" || echo 0)

  # A sample edge response for a media object the run fetched (asked twice: the second is a hit
  # at the edge): Cache-Status must list exactly the shield's entry, then the edge's own.
  sample=$(python3 -c '
import json, sys
o = json.load(open(sys.argv[1])).get("origin") or {}
objs = o.get("per_object") or []
print(objs[0][0] if objs else "")' "$RUN_DIR/report.json")
  cache_status=""
  # The shields' access lines up to here are the run's; the sample below adds its own (and, where
  # live-window retention has already dropped the segment from an edge, a refetch).
  shield_lines=()
  for ((s = 1; s <= shields; s++)); do shield_lines+=("$(wc -l < "$RUN_DIR/shield-$s.log")"); done
  if [[ -n $sample ]]; then
    curl -fsS --max-time 5 -o /dev/null "http://$H:$((PORT_BASE + 81))$sample" || true
    cache_status=$(curl -fsS --max-time 5 -o /dev/null -D - "http://$H:$((PORT_BASE + 81))$sample" |
      tr -d '\r' | awk 'tolower($1) == "cache-status:" { sub(/^[^:]*: */, ""); print }')
  fi

  # The shields' access lines: media path -> (requests, MISSes).
  shield_logs=()
  for ((s = 1; s <= shields; s++)); do shield_logs+=("$RUN_DIR/shield-$s.log:${shield_lines[s - 1]}"); done

  row=$(python3 - "$RUN_DIR/report.json" "$edges" "$shields" "$edge_fills" "$shield_fills" "$cache_status" "$bench_rc" "${shield_logs[@]}" <<'PY'
import json, re, sys
from collections import Counter
report, edges, shields, edge_fills, shield_fills, cache_status, bench_rc = sys.argv[1:8]
logs = sys.argv[8:]
edges, shields = int(edges), int(shields)
r = json.load(open(report))
o = r.get("origin") or {}
seg = (r.get("classes") or {}).get("segment") or {}
ttfb = seg.get("ttfb_ms") or {}
checks = []
amp = o.get("amplification")
maxo = o.get("max_requests_per_object")
if o.get("media_objects", 0) == 0:
    checks.append("FAIL: no media object reached the origin")
elif maxo != 1:
    checks.append(f"FAIL: an object was fetched from the origin {maxo} times")
if shields:
    # One fill per key in the shield tier is the origin's max-per-object above (only shields
    # reach it); one fill per key per edge is this: a key reaches the shields at most once from
    # each edge. (A collapsed follower logs MISS too, so the shields' MISS lines do not count
    # fills.)
    asked = Counter()
    media = re.compile(r"\.(ts|m4s|mp4|aac|m4a|vtt)$")
    for spec in logs:
        log, _, limit = spec.rpartition(":")
        with open(log, errors="replace") as f:
            for n, line in enumerate(f):
                if n >= int(limit):
                    break
                if "vedge::access" not in line:
                    continue
                p = re.search(r"\bpath=(\S+)", line)
                if p and media.search(p.group(1)):
                    asked[p.group(1)] += 1
    if not asked:
        checks.append("FAIL: the shields logged no media request")
    if asked and max(asked.values()) > edges:
        checks.append(f"FAIL: a key reached the shields {max(asked.values())} times from {edges} edges")
    entries = [e.strip() for e in cache_status.split(",") if e.strip()]
    # Every node has the same cdn_id (as deployed), so the entries are told apart by place:
    # the edge appends its own last (a hit: the sample was asked for twice).
    if len(entries) != 2 or "hit" not in entries[-1]:
        checks.append(f"FAIL: Cache-Status does not list the shield then the edge: {cache_status!r}")
if bench_rc != "0":
    checks.append(f"bench exited {bench_rc}")
ok = not any(c.startswith("FAIL") for c in checks)
layout = f"{edges} edge{'s' if edges > 1 else ''}" + (f" + {shields} shield{'s' if shields > 1 else ''}" if shields else "")
amp_s = f"{amp:.2f}" if isinstance(amp, (int, float)) else "-"
print(f"| {layout} | {r.get('viewers')} | {amp_s} ({o.get('media_requests', '-')} / {o.get('media_objects', '-')}) "
      f"| {maxo if maxo is not None else '-'} | {ttfb.get('p50', 0):.1f} / {ttfb.get('p99', 0):.1f} "
      f"| {r.get('error_total', '-')} | {edge_fills} / {shield_fills if shields else '-'} "
      f"| {'ok' if ok else ''}{'; '.join(checks) if checks else ''} |")
sys.exit(0 if ok else 3)
PY
  ) || status=1
  echo "$row"
  [[ -n $cache_status ]] && echo "[$layout] Cache-Status of $sample at edge-1: $cache_status" >&2
  stop_all
done
echo "raw reports and logs: $OUT" >&2
exit $status
