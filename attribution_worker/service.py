"""``cps-attribution run``: the click persister, order sync, the attributor and the outbox
publisher in one process, plus a small HTTP server (click queries, ``/metrics``).

Every part scales out by running more processes: the persister and order sync
are consumer groups (the partitions are shared), the attributor claims due
orders with leases, and the outbox publisher runs wherever the publisher lock
is held (``ledger_db.outbox.PublisherLock``), the other processes standing by.

``--role`` splits the parts between processes (``Role``): ``ingest`` runs the
persister and order sync, ``attribute`` the attributor, the outbox publisher
and the housekeeping; ``all`` (the default) runs every part.  One process is
one GIL: order sync and the attributor in one process compete for the same
interpreter (1,600 orders/s from a backlog on the 2-core benchmark machine, quiet;
split, 1,084 against 774 in one process while a neighbour loaded both cores: a gain
unproven on two busy cores; bench/RESULTS.md).  Each process serves its own HTTP port
(``CPS_HTTP_PORT``): metrics are per process, as Prometheus scrapes them.

SIGTERM or SIGINT stops it gracefully: consumers finish the batch in hand
(written, then committed), the attributor finishes its round, the publisher
its batch; then the process exits 0.  Anything cut short by SIGKILL is
replayed by the next owner (uncommitted offsets, expired leases, unmarked
outbox rows found on the topic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import sqlalchemy
import uvicorn
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

import ledger_db
from attribution_worker import metrics, pending
from attribution_worker.attributor import Attributor
from attribution_worker.click_api import create_app
from attribution_worker.click_store import ClickStore, open_click_store
from attribution_worker.order_sync import OrderSync
from attribution_worker.persister import ClickPersister, PersisterConfig
from attribution_worker.rules import Policy
from attribution_worker.settings import AttributionSettings
from contracts.cookie import CookieSealer
from contracts.topics import ATTRIBUTIONS_TOPIC
from ledger_db import outbox, schema
from ledger_db.outbox import PublisherLock

log = logging.getLogger("cps.attribution")

SWEEP_INTERVAL_S = 60.0


class Role(StrEnum):
    """Which parts one ``cps-attribution run`` process runs (module docstring)."""

    ALL = "all"
    INGEST = "ingest"  # click persister + order sync
    ATTRIBUTE = "attribute"  # attributor + outbox publisher + housekeeping

    @property
    def ingests(self) -> bool:
        return self is not Role.ATTRIBUTE

    @property
    def attributes(self) -> bool:
        return self is not Role.INGEST
GAUGE_INTERVAL_S = 5.0


def policy_of(settings: AttributionSettings) -> Policy:
    return Policy(attribution_window_ms=settings.window_ms,
                  cps_grace_ms=settings.cps_exit_grace_s * 1000,
                  cross_shop_attribution=settings.cross_shop_attribution,
                  self_purchase_allowed=settings.self_purchase_allowed)


async def open_store(settings: AttributionSettings) -> ClickStore:
    """The configured click store; it keeps clicks for the window plus a day of margin."""
    return await open_click_store(
        settings.click_store, redis_url=settings.store_redis_url,
        bigtable_project=settings.bigtable_project, bigtable_instance=settings.bigtable_instance,
        bigtable_table=settings.bigtable_table, retention_ms=settings.window_ms + 86_400_000,
        create_table=True)


class DatabaseDeadLetters:
    """The persister's dead letters, into the ledger's ``dead_letters`` table."""

    def __init__(self, engine: sqlalchemy.Engine) -> None:
        self._engine = engine

    async def put(self, source: str, raw: bytes, reason: str) -> None:
        await asyncio.to_thread(self._insert, source, raw, reason)
        metrics.dead_letters.labels(source).inc()

    def _insert(self, source: str, raw: bytes, reason: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(schema.dead_letters.insert().values(
                source=source, raw=raw, reason=reason[:2000],
                received_at=time.time_ns() // 1_000_000))


class PrometheusPersisterMetrics:
    """The persister's counters as Prometheus series."""

    def written(self, source: str, clicks: int) -> None:
        metrics.clicks_written.labels(source).inc(clicks)

    def skipped(self, source: str, records: int) -> None:
        metrics.messages.labels(source, "skipped").inc(records)

    def bad(self, source: str, records: int) -> None:
        metrics.messages.labels(source, "bad").inc(records)

    def batch(self, source: str, records: int, seconds: float) -> None:
        metrics.messages.labels(source, "consumed").inc(records)

    def lag(self, source: str, records: int) -> None:
        metrics.consumer_lag.labels(source).set(records)


class Service:
    def __init__(self, settings: AttributionSettings, role: Role = Role.ALL) -> None:
        self.settings = settings
        self.role = role
        self.engine = ledger_db.connect(settings.database_url)
        self.stop_event = asyncio.Event()
        self.store: ClickStore | None = None
        self.tasks: list[asyncio.Task[Any]] = []

    async def run(self) -> int:
        s = self.settings
        await asyncio.to_thread(ledger_db.migrate, self.engine)
        self.store = await open_store(s)
        server = self._http_server()
        self._install_signals()
        persister = sync = publisher = None
        if self.role.ingests:
            persister = ClickPersister(self.store, PersisterConfig(
                bootstrap=s.kafka_bootstrap, fallback_redis_url=s.redis_url,
                group_id=s.persister_group, batch_max_records=s.consumer_batch_max),
                dead_letters=DatabaseDeadLetters(self.engine),
                metrics=PrometheusPersisterMetrics())
            sync = OrderSync(self.engine, s.kafka_bootstrap, group_id=s.order_sync_group,
                             batch_max=s.consumer_batch_max, poll_ms=s.poll_interval_ms)
            await persister.start()
            self.tasks.append(asyncio.create_task(sync.run(), name="order-sync"))
        if self.role.attributes:
            attributor = Attributor(self.engine, self.store, CookieSealer(s.cookie_keys),
                                    policy_of(s), schedule_s=s.attribution_retry_schedule_s,
                                    batch_max=s.attributor_batch_max)
            producer = outbox.KafkaOutboxProducer(s.kafka_bootstrap)
            publisher = outbox.OutboxPublisher(self.engine, producer,
                                               batch_max=s.outbox_batch_max,
                                               topics=[ATTRIBUTIONS_TOPIC])
            if sync is not None:
                sync.on_batch.append(publisher.wake)
            self.tasks += [
                asyncio.create_task(attributor.run(self.stop_event), name="attributor"),
                asyncio.create_task(self._publish(publisher, producer), name="outbox"),
                asyncio.create_task(self._housekeeping(), name="housekeeping")]
        self.tasks.append(asyncio.create_task(server.serve(), name="http"))
        log.info("attribution service up (role %s): store %s, database %s, kafka %s, "
                 "http %s:%d", self.role.value, s.click_store,
                 self.engine.url.render_as_string(hide_password=True), s.kafka_bootstrap,
                 s.http_host, s.http_port)
        await self.stop_event.wait()
        log.info("attribution service stopping")
        if sync is not None:
            sync.stop()
        if publisher is not None:
            publisher.stop()
        server.should_exit = True
        if persister is not None:
            await persister.stop()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.store.close()
        self.engine.dispose()
        return 0

    async def _publish(self, publisher: outbox.OutboxPublisher,
                       producer: outbox.KafkaOutboxProducer) -> None:
        lock = PublisherLock(self.engine)
        try:
            while not self.stop_event.is_set():
                if await asyncio.to_thread(lock.try_acquire):
                    break
                await self._sleep(1.0)  # another process publishes; stand by
            if not lock.held:
                return
            while not self.stop_event.is_set():
                try:
                    await producer.start()
                    break
                except Exception as err:  # the broker is not there yet
                    log.warning("outbox: kafka not reachable (%s); retrying", err)
                    await producer.stop()
                    await self._sleep(1.0)
            if not self.stop_event.is_set():
                await publisher.run()
        finally:
            await producer.stop()
            await asyncio.to_thread(lock.release)

    async def _housekeeping(self) -> None:
        last_sweep = 0.0
        while not self.stop_event.is_set():
            now = time.monotonic()
            try:
                if now - last_sweep >= SWEEP_INTERVAL_S:
                    last_sweep = now
                    swept = await asyncio.to_thread(pending.sweep, self.engine,
                                                    time.time_ns() // 1_000_000)
                    if swept:
                        log.info("queued %d stored orders that had no attribution yet", swept)
                metrics.pending.set(await asyncio.to_thread(pending.depth, self.engine))
                metrics.outbox_backlog.set(await asyncio.to_thread(outbox.backlog, self.engine))
            except sqlalchemy.exc.SQLAlchemyError as err:
                log.warning("housekeeping: database unavailable (%s)", err)
            await self._sleep(GAUGE_INTERVAL_S)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), seconds)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)

    def _http_server(self) -> uvicorn.Server:
        config = uvicorn.Config(http_app(self), host=self.settings.http_host,
                                port=self.settings.http_port, log_level="warning",
                                access_log=False, lifespan="off")
        return _HttpServer(config)


class _HttpServer(uvicorn.Server):
    """uvicorn inside our event loop; the service, not uvicorn, owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_app(service: Service) -> Starlette:
    async def metrics_endpoint(_: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        try:
            await asyncio.to_thread(_ping, service.engine)
        except sqlalchemy.exc.SQLAlchemyError as err:
            return JSONResponse({"ready": False, "database": str(err)[:200]}, status_code=503)
        return JSONResponse({"ready": True})

    routes: list[Route | Mount] = [Route("/metrics", metrics_endpoint),
                                   Route("/healthz", healthz), Route("/readyz", readyz)]
    routes += click_routes(service)
    return Starlette(routes=routes)


def click_routes(service: Service) -> list[Route | Mount]:
    """The read-only click query API on the service's store (opened before the server)."""
    assert service.store is not None
    return [Mount("/", app=create_app(service.store))]


def _ping(engine: sqlalchemy.Engine) -> None:
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT 1"))
