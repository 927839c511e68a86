"""Request-to-answer latency as the network saw it, from a packet capture: the service's own time
for each HTTP request, without the client's.

A load client on the machine it loads shares the cores with the service, and what it times
includes its own waits for a core. Timed on the wire instead (the moment the request's first
bytes reach the service's port, the moment the answer's status line leaves it), a request's
latency is the service's alone. Capture with tcpdump (root, loopback), the data packets of the
port only, headers enough:

    tcpdump -i lo -s 256 -w storm.pcap 'tcp port 18400 and (tcp[tcpflags] & tcp-push != 0)' &
    python -m benchmarks.load --scenario closed:48:30:3000
    kill %1; python -m benchmarks.wire_latency storm.pcap --port 18400

Reads classic pcap files (Ethernet or Linux cooked captures, IPv4, TCP), HTTP/1.1 without
pipelining (each connection's requests and answers alternate, as every client here sends them).
Prints the count, the share within `--within-ms` and p50 / p99 / max per status as JSON.
"""

from __future__ import annotations

import argparse
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_LINK_HEADER = {1: 14, 113: 16}  # Ethernet (Linux loopback), Linux cooked capture


def packets(path: Path) -> Iterator[tuple[float, int, int, bytes]]:
    """(time, source port, destination port, TCP payload) of each IPv4/TCP packet in a pcap."""
    with path.open("rb") as f:
        header = f.read(24)
        if len(header) < 24:
            raise ValueError(f"{path}: not a pcap file (too short)")
        magic = struct.unpack("<I", header[:4])[0]
        if magic not in (0xA1B2C3D4, 0xA1B23C4D):
            raise ValueError(f"{path}: not a little-endian classic pcap file (pcapng is not read)")
        scale = 1e9 if magic == 0xA1B23C4D else 1e6
        link = struct.unpack("<I", header[20:24])[0]
        if link not in _LINK_HEADER:
            raise ValueError(f"{path}: link type {link} is not read (Ethernet or Linux cooked only)")
        skip = _LINK_HEADER[link]
        while len(record := f.read(16)) == 16:
            sec, frac, captured, _ = struct.unpack("<IIII", record)
            frame = f.read(captured)
            ip = frame[skip:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:  # IPv4, TCP
                continue
            tcp = ip[(ip[0] & 15) * 4 :]
            if len(tcp) < 20:
                continue
            source, dest = struct.unpack(">HH", tcp[:4])
            yield sec + frac / scale, source, dest, tcp[(tcp[12] >> 4) * 4 :]


def exchanges(path: Path, port: int, path_prefix: bytes = b"/") -> list[tuple[float, float, int]]:
    """(request seen, answer seen, status) for each HTTP request to `port` whose path starts with
    `path_prefix`: the request's first data packet to the port, the next status line back on the
    same connection."""
    asked: dict[int, float] = {}
    out = []
    for t, source, dest, payload in packets(path):
        if dest == port and payload[:5] in (b"POST ", b"GET /", b"PUT /"):
            target = payload.split(b" ", 2)[1] if payload.count(b" ") >= 2 else b""
            if target.startswith(path_prefix):
                asked[source] = t
        elif source == port and payload.startswith(b"HTTP/1.") and dest in asked:
            out.append((asked.pop(dest), t, int(payload[9:12])))
    return out


def summary(found: list[tuple[float, float, int]], within_ms: float) -> dict[str, Any]:
    """Per status: requests, share answered within `within_ms`, p50 / p99 / max ms."""
    report: dict[str, Any] = {}
    for status in sorted({s for _, _, s in found}):
        ms = np.array([(b - a) * 1000 for a, b, s in found if s == status])
        report[str(status)] = {
            "requests": int(ms.size),
            f"within_{within_ms:g}ms": round(float((ms <= within_ms).mean()), 4),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1),
        }
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pcap", type=Path, help="A classic pcap file (tcpdump -w).")
    p.add_argument("--port", type=int, default=18400, help="The service's HTTP port (benchmarks.load's local default).")
    p.add_argument("--path", default="/v1/extract", help="Only requests whose path starts with this.")
    p.add_argument("--within-ms", type=float, default=500.0, help="Report the share answered within this.")
    args = p.parse_args(argv)
    report = summary(exchanges(args.pcap, args.port, args.path.encode()), args.within_ms)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
