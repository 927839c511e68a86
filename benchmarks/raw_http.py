"""A lean HTTP/1.1 load client: what `benchmarks.load` times its HTTP requests with by default.

Why not `clinie.client` (httpx) for load: on this project's 2-core machine the load clients share
the cores with the service, and a client that spends milliseconds of CPU on each request becomes
the slowest part of what it times. Measured (README "Serving"), 48 clients through clinie.client
against the local service: refusals seen on the wire (tcpdump on loopback, request out to answer
back) were all within 0.36 s, while the same requests timed in the client reached 2.3 s (129 of
5,130 past 0.5 s). The client here writes a request and reads its answer with asyncio streams, one
keep-alive connection per caller, a fraction of that CPU; `--client clinie` keeps the product's
client for those who want to time through it.

Plain HTTP only (loopback benchmarks); HTTPS URLs go through clinie.client.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit


class RawHttpError(Exception):
    """No answer: the connection failed, closed early, or the answer could not be read."""


class RawHttpClient:
    """POSTs JSON and reads the answer: (status, headers in lower case, body). Connections are kept
    and reused (at most `max_connections` open); a connection the server closes is dropped."""

    def __init__(self, url: str, api_key: str | None = None, max_connections: int = 64, timeout: float = 330.0):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"RawHttpClient speaks plain http only, not {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def __aenter__(self) -> RawHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        payload = json.dumps(body).encode()
        head = (
            f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n{self._auth}\r\n"
        ).encode()
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
                status, headers, answer = await asyncio.wait_for(self._exchange(conn, head + payload), self.timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                if conn is not None:
                    conn[1].close()
                raise RawHttpError(type(exc).__name__) from None
            if headers.get("connection", "").lower() == "close":
                conn[1].close()
            else:
                self._idle.append(conn)
            return status, headers, answer

    @staticmethod
    async def _exchange(
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        reader, writer = conn
        writer.write(request)
        await writer.drain()
        first, headers = await read_head(reader)
        status = int(first.split(" ", 2)[1])
        if "content-length" in headers:
            return status, headers, await reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, headers, await _chunked(reader)
        raise ValueError("an answer with neither a length nor chunks")


async def read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    """An HTTP/1.1 message's first line and its headers (names in lower case), up to the blank line."""
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return lines[0], headers


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are sent to these requests
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
