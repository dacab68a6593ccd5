"""One delivery on the wire: Standard Webhooks headers and the POST (httpx).

Headers of every push (https://www.standardwebhooks.com):

* ``webhook-id``: the event id (``evt_...``), the SAME on every retry and redelivery, so
  a receiver deduplicates by it;
* ``webhook-timestamp``: seconds since the epoch when this attempt was signed;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, one per
  active secret, space separated (two while a secret rotates), made by the maintained
  ``standardwebhooks`` package;
* ``content-type: application/json``, ``user-agent: cps-push/1``.

``HttpTransport`` is one ``httpx.AsyncClient`` (HTTP/1.1 keep-alive, a connection pool
per host, ``timeout_s`` = 15 s for connect, write, read and the pool wait each).  An
answer is any status code; no answer (timeout, refused, reset, TLS) is an ``Attempt``
with the error and no code.  Redirects are not followed.
"""

from __future__ import annotations

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
                 max_connections: int = 512) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), follow_redirects=False,
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections))

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        started = time.perf_counter()
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as err:
            return Attempt(None, f"timeout ({type(err).__name__})", _since(started))
        except httpx.HTTPError as err:
            return Attempt(None, f"{type(err).__name__}: {err}"[:200], _since(started))
        return Attempt(response.status_code, None, _since(started))

    async def aclose(self) -> None:
        await self._client.aclose()


def _since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
