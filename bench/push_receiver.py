"""A fast local webhook receiver for ``bench.push``: asyncio + httptools, one process.

    python -m bench.push_receiver PORT

``POST /fast/...`` answers 204 at once; ``POST /hang/...`` never answers (the connection
stays open until the client gives up).  It prints ``ready`` once listening and stops on
SIGTERM.  (The benchmark reads arrival times from the ledger's ``delivered_at``.)
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import httptools

_OK = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"


class _Request(asyncio.Protocol):
    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: Any = None
        self._url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # uvloop's TCPTransport is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_message_complete(self) -> None:
        if self._url.startswith(b"/fast") and self._transport is not None:
            self._transport.write(_OK)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Request, "127.0.0.1", port,
                                      backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(int(sys.argv[1])))
