"""``cps-push serve``: webhook deliveries from the ledger's outbox to the endpoints.

One asyncio process (uvloop) runs one *lane* per endpoint with due work:

* every ``CPS_PUSH_POLL_INTERVAL_MS`` (200 ms) the dispatcher asks the ledger which
  active endpoints have a due pending delivery (``store.due_endpoints``, one indexed
  query) and starts a lane for each that has none running; endpoints and their
  unsealed secrets are reloaded every ``CPS_PUSH_REFRESH_S`` (1 s);
* a lane claims up to ``CPS_PUSH_CLAIM_MAX`` (32) of its endpoint's deliveries in id
  order (a lease: ``store.claim``), POSTs them ONE AFTER THE OTHER (the next event of an
  endpoint waits for the current one's answer), stops at the first that is not
  delivered (it will be retried first), and records the batch in one transaction;
  it claims again until nothing is due;
* lanes run side by side, so a slow or hanging endpoint holds only its own lane: at
  most ``CPS_PUSH_MAX_IN_FLIGHT`` (256) requests are in flight across all endpoints,
  one per endpoint; nothing is ever waited for across endpoints;
* ``policy.decide`` (pure) says what each answer does: delivered, retry on the schedule
  ``CPS_PUSH_RETRY_SCHEDULE_S`` (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, +0..20 %
  jitter), dead after the last step, the endpoint disabled on ``410 Gone`` or after
  ``CPS_PUSH_DISABLE_AFTER_DAYS`` (5) of failures.

Crashes: a claim's lease is ``CPS_PUSH_LEASE_S`` (default: timeout x claim size + 30 s,
more than a lane can spend on it); a killed worker's claims fall due when it runs out,
and are sent again with the same ``webhook-id``: every event at least once.

Metrics (``push_worker.metrics``) on ``CPS_PUSH_METRICS_PORT`` (9467; 0 = none).  SIGTERM
or SIGINT: lanes finish their request in hand and record it, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

import ledger_db
from contracts.settings import CookieKeys, LogLevel
from ledger_db import schema
from push_worker import endpoints, metrics, store
from push_worker.deliver import DEFAULT_TIMEOUT_S, Transport, sign_headers
from push_worker.policy import (
    DEFAULT_SCHEDULE_S,
    DeliveryState,
    EndpointState,
    Rules,
    Verdict,
    decide,
    parse_schedule,
)

log = logging.getLogger("cps.push")


def _schedule(value: object) -> tuple[float, ...]:
    if isinstance(value, tuple):
        return value
    if not isinstance(value, str):
        raise ValueError("expected comma-separated seconds, e.g. 5,300,1800")
    return parse_schedule(value)


Schedule = Annotated[tuple[float, ...], NoDecode, BeforeValidator(_schedule)]


class PushSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CPS_", extra="ignore", frozen=True,
                                      arbitrary_types_allowed=True)

    database_url: str = ledger_db.DEFAULT_DATABASE_URL
    push_secret_keys: CookieKeys  # AES keys sealing the webhook secrets at rest
    push_timeout_s: Annotated[float, Field(gt=0, le=120)] = DEFAULT_TIMEOUT_S
    push_retry_schedule_s: Schedule = DEFAULT_SCHEDULE_S
    push_disable_after_days: Annotated[float, Field(gt=0)] = 5
    push_max_in_flight: Annotated[int, Field(gt=0, le=10_000)] = 256
    push_claim_max: Annotated[int, Field(gt=0, le=1000)] = 32
    push_lease_s: Annotated[float, Field(ge=0)] = 0  # 0: timeout x claim size + 30 s
    push_poll_interval_ms: Annotated[int, Field(gt=0)] = 200
    push_refresh_s: Annotated[float, Field(gt=0)] = 1.0
    push_allow_http_localhost: bool = False
    push_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9467
    log_level: LogLevel = "info"

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        ledger_db.parse_url(value)
        return value

    @property
    def lease_ms(self) -> int:
        seconds = self.push_lease_s or self.push_timeout_s * self.push_claim_max + 30
        return int(seconds * 1000)

    @property
    def rules(self) -> Rules:
        return Rules(self.push_retry_schedule_s,
                     int(self.push_disable_after_days * 86_400_000))


@dataclass(frozen=True, slots=True)
class Lane:
    endpoint_id: str
    url: str
    secrets: tuple[bytes, ...]
    failing_since_ms: int | None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class PushWorker:
    def __init__(self, engine: Engine, transport: Transport, sealer: endpoints.Sealer,
                 settings: PushSettings, *, jitter: Callable[[], float] = random.random
                 ) -> None:
        self.engine = engine
        self._transport = transport
        self._sealer = sealer
        self._settings = settings
        self._rules = settings.rules
        self._jitter = jitter
        self._stop = asyncio.Event()
        self._in_flight = asyncio.Semaphore(settings.push_max_in_flight)
        self._lanes: dict[str, Lane] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._asleep_until: dict[str, int] = {}  # endpoints whose head waits for a retry
        self._loaded_at = 0.0
        self.delivered = 0

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Dispatch until ``stop``; then wait for the lanes to record what they sent."""
        while not self._stop.is_set():
            try:
                await self._dispatch()
            except SQLAlchemyError as err:
                log.warning("push: database unavailable (%s); retrying", err)
            await self._pause(self._settings.push_poll_interval_ms / 1000)
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _dispatch(self) -> None:
        if time.monotonic() - self._loaded_at >= self._settings.push_refresh_s:
            self._lanes = await asyncio.to_thread(self._load_lanes)
            self._loaded_at = time.monotonic()
            self._asleep_until.clear()  # at most one idle claim per endpoint per refresh
        now = _now_ms()
        due = await asyncio.to_thread(store.due_endpoints, self.engine, now)
        for endpoint_id in sorted(due - self._running.keys()):
            if self._asleep_until.get(endpoint_id, 0) > now:
                continue
            lane = self._lanes.get(endpoint_id)
            if lane is None:
                self._loaded_at = 0.0  # an endpoint added since the last load
                continue
            task = asyncio.create_task(self._run_lane(lane), name=f"push-{endpoint_id}")
            self._running[endpoint_id] = task
            task.add_done_callback(self._lane_done(endpoint_id))

    def _lane_done(self, endpoint_id: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._running.pop(endpoint_id, None)
        return done

    def _load_lanes(self) -> dict[str, Lane]:
        table = schema.webhook_endpoints
        with self.engine.connect() as conn:
            rows = conn.execute(select(table.c.endpoint_id, table.c.url, table.c.failing_since)
                                .where(table.c.status == "active")).all()
            secrets = endpoints.active_secrets(conn, self._sealer, [r[0] for r in rows],
                                               _now_ms())
        return {r[0]: Lane(r[0], r[1], tuple(secrets[r[0]]), r[2]) for r in rows
                if secrets[r[0]]}

    async def _run_lane(self, lane: Lane) -> None:
        try:
            while not self._stop.is_set():
                claim = await asyncio.to_thread(
                    store.claim, self.engine, lane.endpoint_id, _now_ms(),
                    self._settings.push_claim_max, self._settings.lease_ms)
                if not claim.deliveries:
                    if claim.head_due_at_ms is not None:
                        self._asleep_until[lane.endpoint_id] = claim.head_due_at_ms
                    return
                lane, more = await self._send_claim(lane, claim.deliveries)
                if not more:
                    return
        except Exception:  # the lane dies, its leases bring the rows back
            log.exception("push: lane of %s failed", lane.endpoint_id)

    async def _send_claim(self, lane: Lane, claimed: list[store.Claimed]
                          ) -> tuple[Lane, bool]:
        """Send in order until one is not delivered; record; (lane, go on claiming)."""
        outcomes: list[store.Outcome] = []
        failing_since = lane.failing_since_ms
        blocked = False
        for item in claimed:
            if self._stop.is_set():
                break
            started = _now_ms()
            headers = sign_headers(item.event_id, item.payload, lane.secrets)
            async with self._in_flight:
                attempt = await self._transport.post(lane.url, item.payload, headers)
            transition = decide(attempt, DeliveryState(item.attempts),
                                EndpointState(failing_since), self._rules, _now_ms(),
                                self._jitter())
            outcomes.append(store.Outcome(item, attempt, transition, started))
            failing_since = transition.failing_since_ms
            metrics.deliveries.labels(transition.verdict.value).inc()
            metrics.latency.observe(attempt.latency_ms / 1000)
            if transition.verdict is Verdict.DELIVERED:
                self.delivered += 1
            if transition.disable_reason is not None or transition.verdict in (
                    Verdict.RETRY, Verdict.GONE):
                self._asleep_until[lane.endpoint_id] = transition.next_attempt_at_ms or 0
                blocked = True
                break
        unsent = claimed[len(outcomes):]
        await asyncio.to_thread(store.record, self.engine, lane.endpoint_id, outcomes,
                                unsent, _now_ms())
        if outcomes and outcomes[-1].transition.disable_reason is not None:
            log.warning("push: endpoint %s disabled: %s", lane.endpoint_id,
                        outcomes[-1].transition.disable_reason)
        lane = Lane(lane.endpoint_id, lane.url, lane.secrets, failing_since)
        return lane, not blocked and len(claimed) == self._settings.push_claim_max

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def serve(self) -> int:
        """Until SIGTERM or SIGINT (the CLI's ``serve``)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info("push worker up: database %s",
                 self.engine.url.render_as_string(hide_password=True))
        try:
            await self.run()
        finally:
            await self._transport.aclose()
        log.info("push worker stopped")
        return 0
