"""One delivery on the wire: Standard Webhooks headers and the POST (httpx).

Headers of every push (https://www.standardwebhooks.com):

* ``webhook-id``: the event id (``evt_...``), the SAME on every retry and redelivery, so
  a receiver deduplicates by it;
* ``webhook-timestamp``: seconds since the epoch when this attempt was signed;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, one per
  active secret, space separated (two while a secret rotates), made by the maintained
  ``standardwebhooks`` package;
* ``content-type: application/json``, ``user-agent: cps-push/1``.

``HttpTransport`` keeps one ``httpx.AsyncClient`` per endpoint URL (HTTP/1.1 keep-alive,
at most 2 connections, ``timeout_s`` = 15 s for connect, write, read and the pool wait
each): httpcore's pool looks at every connection it holds on every request (an expiry
check costing a socket query each), which one shared pool of 21 connections made 29 % of
the worker's CPU; a pool per endpoint holds one.  An
answer is any status code; no answer (timeout, refused, reset, TLS) is an ``Attempt``
with the error and no code.  Redirects are not followed.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

import httpx
from standardwebhooks.webhooks import Webhook

from push_worker.policy import Attempt

DEFAULT_TIMEOUT_S = 15.0
USER_AGENT = "cps-push/1"


class Transport(Protocol):
    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt: ...

    async def aclose(self) -> None: ...


def sign_headers(event_id: str, body: bytes, secrets: Sequence[bytes],
                 now_s: float | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for ``body``, one signature per secret."""
    if not secrets:
        raise ValueError("an endpoint needs at least one active secret to sign with")
    moment = datetime.fromtimestamp(int(time.time() if now_s is None else now_s), UTC)
    signatures = " ".join(Webhook(secret).sign(event_id, moment, body) for secret in secrets)
    return {"webhook-id": event_id, "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": signatures, "content-type": "application/json",
            "user-agent": USER_AGENT}


class HttpTransport:
    def __init__(self, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 connections_per_url: int = 2) -> None:
        self._timeout = httpx.Timeout(timeout_s)
        self._limits = httpx.Limits(max_connections=connections_per_url,
                                    max_keepalive_connections=connections_per_url)
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._tls = ssl.create_default_context()  # one for all: ~10 ms to build each

    def _client(self, url: str) -> httpx.AsyncClient:
        client = self._clients.get(url)
        if client is None:
            client = httpx.AsyncClient(timeout=self._timeout, limits=self._limits,
                                       verify=self._tls, follow_redirects=False)
            self._clients[url] = client
        return client

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        started = time.perf_counter()
        try:
            response = await self._client(url).post(url, content=body, headers=headers)
        except httpx.TimeoutException as err:
            return Attempt(None, f"timeout ({type(err).__name__})", _since(started))
        except httpx.HTTPError as err:
            return Attempt(None, f"{type(err).__name__}: {err}"[:200], _since(started))
        return Attempt(response.status_code, None, _since(started))

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def _since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
