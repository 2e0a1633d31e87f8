#!/usr/bin/env python3
"""benches/peers/run.sh results dir + edge names -> the markdown comparison (benches/results/harness.md)."""
import json, os, sys

out, edges = sys.argv[1], sys.argv[2:]
# Hand-written notes below this marker in the existing harness.md are kept.
MARK = "<!-- notes: kept by table.py -->"
md = os.environ.get("HARNESS_MD", "")
notes = ""
if md and os.path.exists(md):
    old = open(md).read()
    if MARK in old:
        notes = old[old.index(MARK):]
env = open(os.path.join(out, "env.txt")).read().strip()
rows = []
for e in edges:
    p = os.path.join(out, f"{e}.json")
    if not os.path.exists(p):
        rows.append(f"| {e} | run failed (no report) ||||||||||")
        continue
    d = json.load(open(p))
    seg = d["classes"]["segment"]
    o = d.get("origin") or {}
    cpu = d.get("edge_cpu_s")
    cpu_txt = f"{cpu:.1f} s ({cpu / d['elapsed_s']:.2f} cores)" if cpu is not None else "n/a"
    cache = " ".join(f"{k}={v}" for k, v in seg["cache"].items())
    # The harness's own health (reports from before the timer-lag probe have none).
    lag = d.get("timer_lag_ms")
    lag_txt = f"{lag['p99']:.1f}" if lag else "n/a"
    rows.append(
        f"| {e} | {o.get('amplification', float('nan')):.2f} (max {o.get('max_requests_per_object', '?')}, "
        f"{o.get('media_requests', '?')} for {o.get('media_objects', '?')}) "
        f"| {seg['ttfb_ms']['p50']:.1f} / {seg['ttfb_ms']['p99']:.1f} | {seg['total_ms']['p99']:.1f} "
        f"| {d['stalls']} ({d['stalls_per_viewer_hour']:.1f}/viewer-h) "
        f"| {d['bytes_per_s'] / 1e6:.2f} MB/s, {d['requests_per_s']:.0f} req/s | {d['error_total']} "
        f"| {cpu_txt} | {seg['ok']} | {cache} | {lag_txt} |")
print(f"""# Live-burst harness: vedge vs nginx vs Varnish

Produced by `benches/peers/run.sh` (raw JSON and HTML per edge under `benches/peers/results/`). Every
edge starts with an empty cache in front of the same `vedge origin`; the viewers are simulated by
`vedge bench live-burst` on the same machine, so the edge, the origin and the load generator share
the cores.

```
{env}
```

| edge | origin requests per media object (amplification) | segment TTFB p50 / p99 ms | segment full p99 ms | stalls | throughput | errors | edge CPU | segments ok | segment X-Cache | harness timer lag p99 ms |
|---|---|---:|---:|---|---|---:|---|---:|---|---:|
""" + "\n".join(rows) + "\n\nA harness timer lag p99 above 50 ms means the load generator itself was short of CPU: its\nlatencies then include its own delay (see the ceiling below).\n\n" + (notes or MARK + "\n"))
