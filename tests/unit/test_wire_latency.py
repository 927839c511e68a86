"""benchmarks/wire_latency.py: request-to-answer times read from a pcap file written here, packet
by packet, in the format tcpdump writes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from benchmarks.wire_latency import exchanges, main, summary


def _frame(source: int, dest: int, payload: bytes) -> bytes:
    tcp = struct.pack(">HHIIBBHHH", source, dest, 0, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, b"\x7f\0\0\1", b"\x7f\0\0\1")
    return b"\0" * 12 + b"\x08\x00" + ip + tcp  # Ethernet, as Linux captures loopback


def _pcap(path: Path, packets: list[tuple[float, int, int, bytes]], nano: bool = False) -> Path:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 256, 1)]
    for t, source, dest, payload in packets:
        frame = _frame(source, dest, payload)
        frac = round((t % 1) * (1e9 if nano else 1e6))
        out.append(struct.pack("<IIII", int(t), frac, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))
    return path


POST = b"POST /v1/extract HTTP/1.1\r\nHost: x\r\n\r\n{}"


@pytest.mark.parametrize("nano", [False, True])
def test_each_request_is_paired_with_the_next_answer_on_its_connection(tmp_path: Path, nano: bool) -> None:
    packets = [
        (100.000, 5001, 18400, POST),
        (100.010, 5002, 18400, POST),
        (100.020, 5002, 18400, b"more body"),  # a later packet of the same request
        (100.160, 18400, 5002, b"HTTP/1.1 429 Too Many Requests\r\n"),
        (100.200, 5003, 18400, b"GET /readyz HTTP/1.1\r\n\r\n"),  # another path: not counted
        (100.210, 18400, 5003, b"HTTP/1.1 200 OK\r\n"),
        (100.300, 5004, 9999, POST),  # another port
        (100.650, 18400, 5001, b"HTTP/1.1 200 OK\r\n"),
        (100.700, 18400, 5001, b"{'rest': 'of the body'}"),
    ]
    found = exchanges(_pcap(tmp_path / "c.pcap", packets, nano), 18400, b"/v1/extract")
    assert [(s, round(b - a, 3)) for a, b, s in found] == [(429, 0.15), (200, 0.65)]
    report = summary(found, 500)
    assert report["429"] == {"requests": 1, "within_500ms": 1.0, "p50_ms": 150.0, "p99_ms": 150.0, "max_ms": 150.0}
    assert report["200"]["within_500ms"] == 0.0


def test_the_command_reports_and_other_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _pcap(tmp_path / "c.pcap", [(1.0, 7, 80, POST), (1.2, 80, 7, b"HTTP/1.1 429 x\r\n")])
    assert main([str(path), "--port", "80", "--within-ms", "100"])["429"]["within_100ms"] == 0.0
    assert '"429"' in capsys.readouterr().out
    (tmp_path / "not.pcap").write_bytes(b"\x0a\x0d\x0d\x0a" + b"\0" * 40)  # pcapng
    with pytest.raises(ValueError, match="classic pcap"):
        exchanges(tmp_path / "not.pcap", 80)
