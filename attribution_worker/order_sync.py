"""Order sync: the order topic into the ledger database, and new orders into attribution.

A consumer group (``cps-order-sync``) on ``cps.orders.v1``, keyed by ``order_id``
so one order's messages stay on one partition and in order.  Each poll takes up
to ``batch_max`` records; ``order_store.apply_batch`` applies them in one
transaction (snapshots merged by the status machine, bad ones dead-lettered
with their raw bytes), and in that same transaction every order seen for the
first time is queued for attribution (``pending.enqueue``), and a status change of an
attributed order queues its webhook event (``attribution_worker.pushes``).  Offsets are
committed only after the transaction: a crash replays the batch, which the
status machine and the queue's primary key make a no-op.  Several processes
share the partitions; a rebalance at worst replays a batch, harmlessly.

A database outage stops consumption (no poll until the batch is in), so an
outage costs lag, not orders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from attribution_worker import metrics, pending, pushes
from attribution_worker.order_store import IncomingMessage, Outcome, OutcomeKind, apply_batch
from contracts.topics import ORDERS_TOPIC

log = logging.getLogger("cps.attribution.order_sync")

GROUP_ID = "cps-order-sync"


def store_batch(engine: Engine, messages: Sequence[IncomingMessage],
                now_ms: int | None = None) -> list[Outcome]:
    """Apply ``messages`` and queue the new orders for attribution, in one transaction."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    with engine.connect() as connection:
        connection.execution_options(ledger_begin="IMMEDIATE")
        with connection.begin():
            outcomes = apply_batch(connection, messages, now_ms=now_ms)
            pending.enqueue(connection, [(o.order_id, now_ms) for o in outcomes
                                         if o.created and o.order_id is not None])
            pushes.emit_status_changes(connection, outcomes)  # webhooks of attributed orders
    return outcomes


class OrderSync:
    def __init__(self, engine: Engine, bootstrap: str, *, group_id: str = GROUP_ID,
                 batch_max: int = 2000, poll_ms: int = 200, linger_s: float = 0.05,
                 client_id: str = "cps-order-sync") -> None:
        self._engine = engine
        self._bootstrap = bootstrap
        self._group_id = group_id
        self._batch_max = batch_max
        self._poll_ms = poll_ms
        self._linger_s = linger_s
        self._client_id = client_id
        self._stopping = asyncio.Event()
        self.applied = 0
        self.settled = 0  # messages written (applied, ignored or dead-lettered)
        self.on_batch: list[Any] = []  # callables run after each committed batch (wake-ups)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            consumer = AIOKafkaConsumer(
                ORDERS_TOPIC, bootstrap_servers=self._bootstrap, group_id=self._group_id,
                client_id=self._client_id, enable_auto_commit=False,
                auto_offset_reset="earliest", max_poll_records=self._batch_max)
            try:
                await consumer.start()
                await self._consume(consumer)
            except KafkaError as err:
                log.warning("order sync: kafka %s (%s); reconnecting", self._bootstrap, err)
                await self._pause(1.0)
            finally:
                with contextlib.suppress(KafkaError, OSError):
                    await consumer.stop()

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            records = await self._poll(consumer)
            if records:
                if not await self._settle(records):
                    return  # stopping with the batch unwritten: not committed, replayed later
                try:
                    await consumer.commit()
                except CommitFailedError as err:
                    # A rebalance took the partitions: the next owner replays the batch.
                    log.warning("order sync: commit failed (%s): batch will be replayed", err)
                for hook in self.on_batch:
                    hook()
            await self._report_lag(consumer)

    async def _poll(self, consumer: AIOKafkaConsumer) -> list[ConsumerRecord[Any, Any]]:
        """Up to ``batch_max`` records; a trickle is given ``linger_s`` to become a batch.

        Each batch costs a transaction with a fixed dozen statements: at 1,000 orders/s
        one batch per 50 ms keeps that cost small without adding noticeable delay.
        """
        batches = await consumer.getmany(timeout_ms=self._poll_ms, max_records=self._batch_max)
        records = [r for tp in sorted(batches, key=_tp_order) for r in batches[tp]]
        if records and len(records) < self._batch_max and self._linger_s > 0:
            await self._pause(self._linger_s)
            more = await consumer.getmany(timeout_ms=0,
                                          max_records=self._batch_max - len(records))
            records += [r for tp in sorted(more, key=_tp_order) for r in more[tp]]
        return records

    async def _settle(self, records: Sequence[ConsumerRecord[Any, Any]]) -> bool:
        messages = [IncomingMessage(raw=r.value or b"", topic=r.topic, partition=r.partition,
                                    offset=r.offset, key=r.key) for r in records]
        while not self._stopping.is_set():
            try:
                outcomes = await asyncio.to_thread(store_batch, self._engine, messages)
                break
            except SQLAlchemyError as err:
                log.warning("order sync: database write failed (%s); retrying the batch", err)
                await self._pause(1.0)
        else:
            return False
        counts = Counter(o.kind for o in outcomes)
        for kind, n in counts.items():
            metrics.messages.labels(ORDERS_TOPIC, kind.value).inc(n)
        if counts[OutcomeKind.DEAD_LETTERED]:
            metrics.dead_letters.labels(ORDERS_TOPIC).inc(counts[OutcomeKind.DEAD_LETTERED])
        self.applied += counts[OutcomeKind.APPLIED]
        self.settled += len(outcomes)
        return True

    async def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        lag = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                lag += max(0, high - await consumer.position(tp))
        metrics.consumer_lag.labels(ORDERS_TOPIC).set(lag)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def _tp_order(tp: TopicPartition) -> tuple[str, int]:
    return tp.topic, tp.partition
