"""The transactional outbox of every service: Kafka records after their database commit, once.

A service writes its rows (an attribution decision, a charge request, ...) and, in
the same transaction, the records to publish to ``outbox`` (``enqueue_many``: topic,
key, payload).  One publisher per database (``PublisherLock``) publishes every
unpublished row whatever its topic: it reads them in id order (at most
``batch_max``, 1000 by default), produces them with ``acks=all`` (each record carries
its row id in the header ``cps-outbox-id``), waits for every acknowledgement, and only
then marks the rows published.  A crash after the commit and before the produce loses
nothing (the rows are still unpublished); a crash after the produce and before the
mark would publish the batch again, so at start-up the publisher reads the tail of
every partition of the topics of the next ``batch_max`` unpublished rows (plus the
topics it was given), the last ``batch_max`` records of each: one unmarked batch at
most, and marks the rows whose ids it finds there as published.  The result is each
record on its topic once, even across a crash between the two writes; should the tail
be unreadable (the broker's offsets misreport), a batch may appear twice, identical and
keyed, which consumers deduplicate.

Several processes (attribution services, charge services) may run publishers on one
database; one at a time publishes, whichever holds the lock, so every topic receives
rows in id order and never twice; the others stand by (``serve_publisher``) and take
over within a second when it dies.  The lock: PostgreSQL, a session-level advisory lock
on a connection kept open for as long as the process publishes, released by the server
the moment that connection (or the process) dies; SQLite, an ``flock`` on
``<database file>.outbox.lock``, released by the kernel when the process dies
(``ledger_db.locks.DatabaseLock``).  Either
way a crashed publisher's successor takes over with no lease to wait out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import sqlalchemy
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import Engine

from ledger_db import schema
from ledger_db.locks import DatabaseLock

log = logging.getLogger("cps.outbox")

ID_HEADER = "cps-outbox-id"
# An arbitrary, fixed 64-bit key for pg_try_advisory_lock ("CPSOUTBX").
ADVISORY_KEY = 0x4350534F55544258 & 0x7FFFFFFFFFFFFFFF
STANDBY_POLL_S = 1.0
# Rows keep their order in the batch: ids ascend with ORDINALITY.
_PG_ENQUEUE = (
    "INSERT INTO outbox (topic, key, payload, created_at) "
    "SELECT r.topic, convert_to(r.key, 'UTF8'), convert_to(r.payload, 'UTF8'), r.created_at "
    "FROM ROWS FROM (json_to_recordset(%(rows)s::json) AS (topic varchar, key text, "
    "payload text, created_at bigint)) WITH ORDINALITY AS r(topic, key, payload, created_at, n) "
    "ORDER BY r.n")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    topic: str
    key: bytes | None
    payload: bytes


class Producer(Protocol):
    """What the publisher needs of Kafka (aiokafka in production, see ``KafkaProducer``)."""

    async def send_all(self, rows: Sequence[OutboxRow]) -> None:
        """Produce every row (header ``cps-outbox-id``); return once all are acknowledged."""

    async def published_ids(self, topics: Iterable[str], tail: int) -> set[int]:
        """Outbox ids found in the last ``tail`` records of every partition of ``topics``."""


def enqueue_many(connection: sqlalchemy.Connection,
                 messages: Sequence[tuple[str, bytes | None, bytes]]) -> None:
    """Add messages (topic, key, payload) inside the caller's transaction, in this order
    (ids ascend): one JSON parameter on PostgreSQL, one executemany on SQLite."""
    if not messages:
        return
    now = _now_ms()
    if connection.dialect.name == "postgresql":
        # One JSON parameter for the batch (keys and payloads are UTF-8 text here).
        connection.exec_driver_sql(_PG_ENQUEUE, {"rows": orjson.dumps([
            {"topic": topic, "key": None if key is None else key.decode(),
             "payload": payload.decode(), "created_at": now}
            for topic, key, payload in messages]).decode()})
        return
    connection.execute(schema.outbox.insert(), [
        {"topic": topic, "key": key, "payload": payload, "created_at": now}
        for topic, key, payload in messages])


def unpublished(engine: Engine, limit: int) -> list[OutboxRow]:
    table = schema.outbox
    query = (sqlalchemy.select(table.c.id, table.c.topic, table.c.key, table.c.payload)
             .where(table.c.published_at.is_(None)).order_by(table.c.id).limit(limit))
    with engine.connect() as connection:
        return [OutboxRow(*row) for row in connection.execute(query)]


def mark_published(engine: Engine, ids: Iterable[int]) -> int:
    ids = sorted(set(ids))
    if not ids:
        return 0
    table = schema.outbox
    marked = 0
    with engine.begin() as connection:
        # Chunks keep the statement within every dialect's parameter limits.
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            result = connection.execute(
                table.update().where(table.c.id.in_(chunk), table.c.published_at.is_(None))
                .values(published_at=_now_ms()))
            marked += result.rowcount
    return marked


def backlog(engine: Engine) -> int:
    table = schema.outbox
    with engine.connect() as connection:
        return int(connection.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(
            table).where(table.c.published_at.is_(None))).scalar_one())


def next_topics(engine: Engine, limit: int) -> set[str]:
    """The topics of the next ``limit`` unpublished rows (what a crash may have sent)."""
    table = schema.outbox
    head = (sqlalchemy.select(table.c.topic).where(table.c.published_at.is_(None))
            .order_by(table.c.id).limit(limit).subquery())
    with engine.connect() as connection:
        return set(connection.execute(sqlalchemy.select(head.c.topic).distinct()).scalars())


class OutboxPublisher:
    def __init__(self, engine: Engine, producer: Producer, *, batch_max: int = 1000,
                 idle_s: float = 0.2, topics: Sequence[str] = ()) -> None:
        self._engine = engine
        self._producer = producer
        self._batch_max = batch_max
        self._idle_s = idle_s
        self._topics = tuple(topics)
        self._wake = asyncio.Event()
        self._stopping = False
        self.published = 0

    def wake(self) -> None:
        """New rows were committed: publish without waiting for the idle poll."""
        self._wake.set()

    async def recover(self) -> int:
        """Mark rows that reached Kafka before a crash kept them from being marked."""
        topics = set(self._topics) | await asyncio.to_thread(next_topics, self._engine,
                                                             self._batch_max)
        if not topics:
            return 0
        found = await self._producer.published_ids(sorted(topics), self._batch_max)
        marked = await asyncio.to_thread(mark_published, self._engine, found)
        if marked:
            log.warning("outbox: %d rows were on Kafka already (crash before marking them)",
                        marked)
        return marked

    async def publish_once(self) -> int:
        rows = await asyncio.to_thread(unpublished, self._engine, self._batch_max)
        if not rows:
            return 0
        await self._producer.send_all(rows)
        await asyncio.to_thread(mark_published, self._engine, (row.id for row in rows))
        self.published += len(rows)
        return len(rows)

    async def run(self) -> None:
        await self.recover()
        while not self._stopping:
            try:
                sent = await self.publish_once()
            except Exception as err:  # a broker or database hiccup: retry after a pause
                log.warning("outbox: publishing failed (%s); retrying", err)
                sent = 0
                await asyncio.sleep(1.0)
            if sent == 0 and not self._stopping:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._idle_s)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()


class PublisherLock(DatabaseLock):
    """One outbox publisher per database: see the module docstring."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, "outbox", ADVISORY_KEY)


async def serve_publisher(engine: Engine, producer: KafkaOutboxProducer,
                          publisher: OutboxPublisher, stop: asyncio.Event) -> None:
    """Stand by until this process holds the ``PublisherLock``, then publish until ``stop``.

    The broker may be down at start: connecting is retried every ``STANDBY_POLL_S``.
    The lock and the producer are released however this ends.
    """
    lock = PublisherLock(engine)
    try:
        while not stop.is_set() and not await asyncio.to_thread(lock.try_acquire):
            await _wait(stop, STANDBY_POLL_S)  # another process publishes; stand by
        while lock.held and not stop.is_set():
            try:
                await producer.start()
                break
            except Exception as err:  # the broker is not there yet
                log.warning("outbox: kafka not reachable (%s); retrying", err)
                await producer.stop()
                await _wait(stop, STANDBY_POLL_S)
        if lock.held and not stop.is_set():
            await publisher.run()
    finally:
        await producer.stop()
        await asyncio.to_thread(lock.release)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class KafkaOutboxProducer:
    """``Producer`` on aiokafka: acks=all, the row id in a header, tail reads for recovery."""

    def __init__(self, bootstrap: str, *, client_id: str = "cps-outbox",
                 timeout_s: float = 10.0) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, client_id=self._client_id, acks="all",
            enable_idempotence=False, linger_ms=2,
            request_timeout_ms=int(self._timeout_s * 1000))
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send_all(self, rows: Sequence[OutboxRow]) -> None:
        producer = self._producer
        if producer is None:
            raise RuntimeError("KafkaOutboxProducer.start() first")
        futures = [await producer.send(row.topic, row.payload, key=row.key,
                                       headers=[(ID_HEADER, str(row.id).encode())])
                   for row in rows]
        await asyncio.gather(*futures)

    async def published_ids(self, topics: Iterable[str], tail: int) -> set[int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False,
                                    client_id=self._client_id + "-recovery")
        await consumer.start()
        found: set[int] = set()
        try:
            partitions = [TopicPartition(topic, p) for topic in topics
                          for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not partitions:
                return found
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            for tp in partitions:
                consumer.seek(tp, max(0, ends[tp] - tail))
            remaining = {tp for tp in partitions if ends[tp] > 0}
            deadline = time.monotonic() + self._timeout_s
            while remaining and time.monotonic() < deadline:
                batches: dict[Any, Any] = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        found.update(_outbox_id(record.headers))
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        return found


def _outbox_id(headers: Sequence[tuple[str, bytes]] | None) -> list[int]:
    return [int(value) for name, value in headers or () if name == ID_HEADER
            and value.isdigit()]
