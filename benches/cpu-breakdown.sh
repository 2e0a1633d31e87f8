#!/usr/bin/env bash
# Who spends the CPU of a HIT run: every task's on-CPU time (/proc/*/task/*/schedstat, exact,
# softirq work included where it ran) over one `wrk -t2 -c64 -d6s`, in µs per request, grouped
# as the edge's processes (vedge, nginx, varnish, Traffic Server), ksoftirqd, kworkers and the
# rest; then wrk's own CPU and the box's busy time less wrk's, which bench-peers divides by.
#
#   benches/cpu-breakdown.sh URL [LABEL]
#   benches/cpu-breakdown.sh http://127.0.0.1:8090/synth/seg_4m_00.ts vedge
#
# The edge must be running and the object cached (three requests prime it). Softirq work that
# ran while a CPU was idle belongs to no task: it is in box-wrk and in no group.
set -u
U=$1 L=${2:-edge}
snap() {
  for t in /proc/[0-9]*/task/[0-9]*; do
    read -r ns _ 2>/dev/null < "$t/schedstat" && echo "${t##*/} $(tr ' ' _ < "$t/comm" 2>/dev/null) $ns"
  done
}
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
for _ in 1 2 3; do curl -s -o /dev/null "$U"; done
wrk -t2 -c64 -d1s "$U" >/dev/null 2>&1
snap | sort > /tmp/cpu-breakdown.0; b0=$(busy)
TIMEFORMAT='%U %S'
{ time wrk -t2 -c64 -d6s "$U" > /tmp/cpu-breakdown.wrk 2>&1; } 2> /tmp/cpu-breakdown.time
b1=$(busy); snap | sort > /tmp/cpu-breakdown.1
rps=$(awk '/Requests\/sec/{print $2}' /tmp/cpu-breakdown.wrk)
read -r wu ws < /tmp/cpu-breakdown.time
join /tmp/cpu-breakdown.0 /tmp/cpu-breakdown.1 | awk -v rps="$rps" -v label="$L" \
  -v box=$((b1 - b0)) -v hz="$(getconf CLK_TCK)" -v w="$(awk -v a="$wu" -v b="$ws" 'BEGIN{print a+b}')" '
  {
    d = ($5 - $3) / 1e3; c = $2
    if (c ~ /^wrk/) next
    if (c ~ /^(vedge|nginx|varnish|cache-|\[ET_|traffic_|ET_NET)/) g = "edge"
    else if (c ~ /^ksoftirqd/) g = "ksoftirqd"
    else if (c ~ /^kworker/) g = "kworker"
    else g = "other"
    a[g] += d
  }
  END {
    n = rps * 6
    if (n <= 0) { print label ": wrk made no requests"; exit 1 }
    printf "%s: %.0f req/s; µs per request: wrk %.0f, box-wrk %.0f |", label, rps, w * 1e6 / n, (box / hz - w) * 1e6 / n
    for (g in a) printf " %s %.0f", g, a[g] / n
    print ""
  }'
