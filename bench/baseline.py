"""The bare-302 baseline: what the server alone costs for an answer shaped like the edge's.

A raw ASGI app answering every request with a fixed 302, a fixed Location and a
fixed Set-Cookie of the same sizes as a real click's.  Benchmarks run it under
the very same server settings as the edge; the edge's throughput is reported
as a fraction of this.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

_LOCATION = (b"https://shop.example.com/item/42?src=bench&cps_click_id=01a2094966216eab46eb36c463d6"
             b"&cps_promoter=p1234&cps_channel=live-7")
_COOKIE = (b"cps_attr=k1." + b"A" * 171 + b"; Max-Age=1296000; Path=/; HttpOnly; Secure; "
           b"SameSite=Lax")
_START = {"type": "http.response.start", "status": 302, "headers": [
    (b"location", _LOCATION), (b"set-cookie", _COOKIE), (b"cache-control", b"no-store"),
    (b"content-length", b"0")]}
_BODY = {"type": "http.response.body", "body": b""}


async def app(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
              send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(_START)
    await send(_BODY)
