"""Real local HTTP receivers for the push tests, and a way to fill the webhook outbox.

``Receiver(mode)`` is a ``ThreadingHTTPServer`` on 127.0.0.1 in a daemon thread that
records every request (webhook-id, time, headers, body) and answers by mode:

* ``ok``: 200; with ``secret`` set it verifies the signature with
  ``standardwebhooks.Webhook.verify`` and answers 400 when it fails;
* ``fail_first``: 500 for its first ``failures`` requests, then 200;
* ``hang``: sleeps ``hang_s`` before answering (the worker's timeout fires first);
* ``gone``: 410;
* ``slow``: sleeps ``delay_s`` then 200.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import sqlalchemy
from sqlalchemy import Engine
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from contracts.keys import generate_ring
from contracts.webhooks import EventType, WebhookEvent, make_event
from ledger_db import schema, webhooks
from push_worker import endpoints
from push_worker.endpoints import NewSecret, SecretSealer

RING = generate_ring(("k1",), 32)
SEALER = SecretSealer(RING)


@dataclass(frozen=True, slots=True)
class Received:
    webhook_id: str
    at: float
    headers: dict[str, str]
    body: bytes
    status: int


class Receiver:
    def __init__(self, mode: str = "ok", *, secret: str | None = None, failures: int = 0,
                 hang_s: float = 30.0, delay_s: float = 0.0) -> None:
        self.mode = mode
        self.secret = secret
        self.failures = failures
        self.hang_s = hang_s
        self.delay_s = delay_s
        self.received: list[Received] = []
        self.verified = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                status = receiver.answer(dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        lowered = {k.lower(): v for k, v in headers.items()}
        status = 200
        with self._lock:
            seen = len(self.received)
        if self.mode == "hang":
            time.sleep(self.hang_s)
        elif self.mode == "slow":
            time.sleep(self.delay_s)
        elif self.mode == "gone":
            status = 410
        elif self.mode == "fail_first" and seen < self.failures:
            status = 500
        if self.secret is not None and status == 200:
            try:
                Webhook(self.secret).verify(body, lowered)
                with self._lock:
                    self.verified += 1
            except WebhookVerificationError:
                status = 400
        with self._lock:
            self.received.append(Received(lowered.get("webhook-id", ""), time.monotonic(),
                                          lowered, body, status))
        return status

    def ids(self, status: int | None = 200) -> list[str]:
        with self._lock:
            return [r.webhook_id for r in self.received if status is None or r.status == status]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def add_endpoint(engine: Engine, owner_id: str, url: str,
                 owner_kind: str = "promoter") -> NewSecret:
    with engine.begin() as conn:
        return endpoints.add_endpoint(conn, SEALER, owner_kind=owner_kind, owner_id=owner_id,
                                      url=url, allow_http_localhost=True)


def events_for(promoter_id: str, n: int, start: int = 0,
               channel_id: str | None = None) -> list[WebhookEvent]:
    return [make_event(EventType.ORDER_PAID, f"{promoter_id}-o{i}", "paid",
                       occurred_at_ms=1_000 + i, data={"order_id": f"{promoter_id}-o{i}", "i": i},
                       order_id=f"{promoter_id}-o{i}", promoter_id=promoter_id,
                       channel_id=channel_id)
            for i in range(start, start + n)]


def enqueue(engine: Engine, events: list[WebhookEvent]) -> int:
    with engine.begin() as conn:
        return webhooks.enqueue_events(conn, events)


def delivery_states(engine: Engine) -> dict[str, int]:
    table = schema.webhook_deliveries
    with engine.connect() as conn:
        return dict(conn.execute(sqlalchemy.select(table.c.status, sqlalchemy.func.count())
                                 .group_by(table.c.status)).all())


def wait_for(condition: object, timeout_s: float = 20.0, what: str = "condition") -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class WorkerThread:
    """A ``PushWorker`` on its own event loop in a thread (the tests stay synchronous)."""

    def __init__(self, engine: Engine, **settings: object) -> None:
        import asyncio

        from push_worker.deliver import HttpTransport
        from push_worker.service import PushSettings, PushWorker

        values: dict[str, object] = {"push_secret_keys": RING, "push_timeout_s": 1.0,
                                     "push_retry_schedule_s": (0.2, 0.2, 0.2),
                                     "push_poll_interval_ms": 20, "push_refresh_s": 0.2,
                                     "push_metrics_port": 0, "push_lease_s": 5}
        values.update(settings)
        self.settings = PushSettings(**values)  # type: ignore[arg-type]
        self._loop = asyncio.new_event_loop()
        self.worker = PushWorker(engine, HttpTransport(timeout_s=self.settings.push_timeout_s),
                                 SEALER, self.settings)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._loop.run_until_complete(self.worker.run())

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self.worker.stop)
        self._thread.join(timeout=10)
