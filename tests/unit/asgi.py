"""Small pieces for the tests of the proxy's ASGI middlewares."""

from __future__ import annotations

from typing import Any


async def read_body(receive: Any) -> bytes:
    """An ASGI request's whole body, as an inner app reads it."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body
