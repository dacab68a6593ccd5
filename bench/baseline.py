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


def main() -> int:
    """``python -m bench.baseline --server S --port N``: serve it like the edge is served."""
    import argparse

    from edge.cli import serve

    p = argparse.ArgumentParser(prog="python -m bench.baseline")
    p.add_argument("--server", choices=("granian", "uvicorn"), default="granian")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    args = p.parse_args()
    return serve(args.server, "bench.baseline:app", factory=False, host=args.host,
                 port=args.port, workers=1, log_level="warning")


if __name__ == "__main__":
    raise SystemExit(main())
