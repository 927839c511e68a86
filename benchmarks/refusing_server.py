"""A stand-in for the service that refuses every request: what a load client measures with no
service behind it, on the same machine.

It answers every request with the service's overload answer (429, `code: overloaded`,
`Retry-After`) after the same 150 ms pause the service's refusals take, at a tiny cost of its own;
so refusal times past the pause are the client's. README "Serving" measured clinie.client and
benchmarks/raw_http.py against it:

    python -m benchmarks.refusing_server --port 8111 &
    python -m benchmarks.load --url http://127.0.0.1:8111 --scenario closed:48:12:3000 [--client clinie]
"""

from __future__ import annotations

import argparse
import asyncio
import json

from benchmarks.raw_http import read_head

BODY = json.dumps(
    {"error": {"code": "overloaded", "message": "the service is at capacity; retry after Retry-After seconds"}}
).encode()
ANSWER = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    + f"content-length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pace_s: float) -> None:
    """Each request on the connection (HTTP/1.1, a body of Content-Length bytes) gets the 429."""
    try:
        while True:
            _, headers = await read_head(reader)
            await reader.readexactly(int(headers.get("content-length", "0")))
            await asyncio.sleep(pace_s)
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        writer.close()


async def start(port: int, pace_ms: float = 150.0, host: str = "127.0.0.1") -> asyncio.Server:
    """The server, listening (port 0: any free port)."""
    return await asyncio.start_server(lambda r, w: _refuse(r, w, pace_ms / 1000), host, port, backlog=1024)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8111)
    p.add_argument("--pace-ms", type=float, default=150.0, help="The pause before each refusal (the service's).")
    args = p.parse_args(argv)

    async def run() -> None:
        server = await start(args.port, args.pace_ms)
        print(f"refusing every request on http://127.0.0.1:{args.port} after {args.pace_ms:g} ms", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
