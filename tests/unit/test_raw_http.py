"""benchmarks/raw_http.py (the load benchmark's HTTP client) against a real asyncio HTTP server on
loopback: keep-alive reuse, both body framings, a closing server, failures; and the samples
benchmarks.load makes of its answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from benchmarks.load import Sample, Target
from benchmarks.raw_http import RawHttpClient, RawHttpError

Answer = Callable[[bytes, dict[str, str], bytes], Awaitable[bytes | None]]


async def _serve(answer: Answer) -> tuple[asyncio.Server, int, list[bytes], list[int]]:
    """A server that hands each request (request line, headers, body) to `answer`; None: hang up.
    Returns the server, its port, the requests seen and, per request, the connection's number."""
    seen: list[bytes] = []
    conns: list[int] = []
    count = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count[0] += 1
        number = count[0]
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in head[1:] if ":" in h)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen.append(head[0].encode() + b" " + body)
                conns.append(number)
                out = await answer(head[0].encode(), headers, body)
                if out is None:
                    writer.close()
                    return
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen, conns


def _response(status: int, body: bytes, extra: str = "", chunked: bool = False) -> bytes:
    reason = {200: "OK", 429: "Too Many Requests"}.get(status, "X")
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:3], body[3:]) if p) + b"0\r\n\r\n"
        return f"HTTP/1.1 {status} {reason}\r\ntransfer-encoding: chunked\r\n{extra}\r\n".encode() + framed
    return f"HTTP/1.1 {status} {reason}\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_requests_reuse_one_connection_and_read_both_framings() -> None:
    async def answer(line: bytes, headers: dict[str, str], body: bytes) -> bytes:
        assert headers["content-type"] == "application/json"
        assert headers["authorization"] == "Bearer k1"
        doc = json.loads(body)
        return _response(200, json.dumps({"echo": doc["n"]}).encode(), chunked=doc["n"] % 2 == 1)

    async def run() -> None:
        server, port, seen, conns = await _serve(answer)
        async with server, RawHttpClient(f"http://127.0.0.1:{port}/base", api_key="k1", max_connections=2) as c:
            for n in range(4):
                status, _, body = await c.post_json("/v1/extract", {"n": n})
                assert (status, json.loads(body)) == (200, {"echo": n})
        assert [s.split(b" ", 2)[:2] for s in seen] == [[b"POST", b"/base/v1/extract"]] * 4
        assert conns == [1, 1, 1, 1]  # one keep-alive connection for the four

    asyncio.run(run())


def test_a_connection_the_server_closes_is_not_reused_and_a_hang_up_is_an_error() -> None:
    async def answer(line: bytes, headers: dict[str, str], body: bytes) -> bytes | None:
        n = json.loads(body)["n"]
        if n == 2:
            return None  # hangs up without an answer
        return _response(429, b"{}", "retry-after: 3\r\nconnection: close\r\n" if n == 0 else "retry-after: 3\r\n")

    async def run() -> None:
        server, port, _, conns = await _serve(answer)
        async with server, RawHttpClient(f"http://127.0.0.1:{port}") as c:
            status, headers, _ = await c.post_json("/x", {"n": 0})
            assert (status, headers["retry-after"]) == (429, "3")
            await c.post_json("/x", {"n": 1})  # a new connection: the first was closed
            with pytest.raises(RawHttpError):
                await c.post_json("/x", {"n": 2})
        assert conns == [1, 2, 2]

    asyncio.run(run())


def test_only_plain_http_and_no_server_is_an_error() -> None:
    with pytest.raises(ValueError, match="plain http"):
        RawHttpClient("https://127.0.0.1:1")

    async def run() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(RawHttpError):
            await RawHttpClient(f"http://127.0.0.1:{port}").post_json("/x", {})

    asyncio.run(run())


def test_the_load_benchmark_samples_answers_refusals_and_batches() -> None:
    async def answer(line: bytes, headers: dict[str, str], body: bytes) -> bytes:
        doc = json.loads(body)
        assert doc["policy"] == "fast-only" and doc["deadline_ms"] == 3000
        if line.startswith(b"POST /v1/extract/batch"):
            empty = {"error": {"code": "empty_note"}}
            results = [{"note_id": n["note_id"]} if n["text"] else empty for n in doc["notes"]]
            return _response(200, json.dumps({"results": results}).encode())
        if doc["text"] == "busy":
            return _response(429, b'{"error": {}}', "retry-after: 2\r\n")
        return _response(200, json.dumps({"note_id": doc["note_id"]}).encode())

    async def run() -> None:
        server, port, _, _ = await _serve(answer)
        target = Target(f"http://127.0.0.1:{port}", None, "fast-only", False)
        async with server, target.client("http", 4) as c:
            assert isinstance(c, RawHttpClient)
            ok = await target.send(c, [{"text": "Denies pain.", "note_id": "a"}], 3000, "s", False)
            refused = await target.send(c, [{"text": "busy", "note_id": "b"}], 3000, "s", False)
            notes = [{"text": "x", "note_id": "c"}, {"text": "", "note_id": "d"}, {"text": "y", "note_id": "e"}]
            batch = await target.send(c, notes, 3000, "s", True)
        assert (ok.status, ok.notes, ok.retry_after) == (200, 1, None)
        assert (refused.status, refused.notes, refused.retry_after) == (429, 0, 2.0)
        assert (batch.status, batch.notes) == (200, 2)  # the empty note answered with its error
        assert 0 <= ok.sent <= ok.done

    asyncio.run(run())


def test_the_refusing_stand_in_answers_the_services_429_after_its_pause() -> None:
    from benchmarks.refusing_server import start

    async def run() -> list[Sample]:
        server = await start(0, pace_ms=80)
        port = server.sockets[0].getsockname()[1]
        target = Target(f"http://127.0.0.1:{port}", None, "fast-only", False)
        async with server, target.client("http", 2) as c:
            return [await target.send(c, [{"text": "x", "note_id": "n"}], 3000, "s", False) for _ in range(3)]

    samples = asyncio.run(run())
    assert [(s.status, s.retry_after, s.notes) for s in samples] == [(429, 1.0, 0)] * 3
    assert all(s.ms >= 80 for s in samples)  # every answer after the pause, on one kept connection
