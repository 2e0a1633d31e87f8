#!/usr/bin/env python3
"""Edge RSS per 1,000 keep-alive connections: opens N connections to PORT, each sending one GET
for PATH and reading its head (or nothing with --idle), and prints the growth of PID's RSS.

    python3 benches/hitpath/conn-rss.py PORT N PID [--idle] [--path /vod/720p/index.m3u8]

Needs an open-file limit above N (`ulimit -n`) for this process and the edge."""
import argparse
import socket
import time

ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("n", type=int)
ap.add_argument("pid", type=int)
ap.add_argument("--idle", action="store_true", help="connect only, send no request")
ap.add_argument("--path", default="/vod/720p/index.m3u8")
a = ap.parse_args()


def rss_kib():
    with open(f"/proc/{a.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


before = rss_kib()
socks = []
for _ in range(a.n):
    s = socket.create_connection(("127.0.0.1", a.port))
    if not a.idle:
        s.sendall(f"GET {a.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    socks.append(s)
if not a.idle:
    for s in socks:
        s.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("connection closed before the response head")
            head += chunk
time.sleep(1)
after = rss_kib()
print(f"RSS {before} -> {after} KiB over {a.n} connections: "
      f"{(after - before) / a.n * 1000 / 1024:.1f} MiB per 1,000 connections")
