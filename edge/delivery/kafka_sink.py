"""Click records into Kafka with aiokafka: acks=all, our own batching, bounded waits.

aiokafka's per-message ``send`` costs tens of microseconds (a future, a
partitioner call, accumulator bookkeeping per message); building one
``BatchBuilder`` per partition and handing whole batches over costs a
fraction of that, on the same core that serves redirects.

A delivery either succeeds or fails as a whole per partition, within
``timeout``: aiokafka's own request timeout is set to the same value, so a
batch that has not been acknowledged by then has been given up by aiokafka
too and will not reach Kafka behind our back after we fell back to Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from contracts.records import Record
from contracts.topics import CLICKS_TOPIC, partition_for

log = logging.getLogger("cps.edge.kafka")

_MAX_BATCH_BYTES = 1024 * 1024
_YIELD_EVERY = 256


class KafkaUnavailable(Exception):
    """Kafka could not take (part of) a delivery in time."""


class KafkaSink:
    def __init__(self, bootstrap: str, *, timeout_s: float, client_id: str = "cps-edge",
                 topic: str = CLICKS_TOPIC) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_s
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._partitions = 0
        self._round_robin = itertools.count()

    @property
    def started(self) -> bool:
        return self._producer is not None and self._partitions > 0

    def _new_producer(self) -> AIOKafkaProducer:
        timeout_ms = int(self.timeout_s * 1000)
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self._client_id,
            acks="all",
            # The broker may not support idempotence (Tansu does not); consumers
            # deduplicate by click_id instead.
            enable_idempotence=False,
            linger_ms=0,
            max_batch_size=_MAX_BATCH_BYTES,
            max_request_size=2 * _MAX_BATCH_BYTES,
            request_timeout_ms=timeout_ms,
            retry_backoff_ms=50,
            metadata_max_age_ms=30_000,
        )

    async def start(self) -> bool:
        """Connect and learn the topic's partitions; False (and retry later) if Kafka is down."""
        if self.started:
            return True
        producer = self._producer or self._new_producer()
        self._producer = producer
        try:
            await asyncio.wait_for(producer.start(), self.timeout_s)
            partitions = await asyncio.wait_for(producer.partitions_for(self.topic),
                                                self.timeout_s)
        except (KafkaError, OSError, TimeoutError) as err:
            log.warning("kafka %s not reachable: %s", self.bootstrap, _describe(err))
            await self._discard_producer()
            return False
        self._partitions = len(partitions)
        log.info("kafka %s up: topic %s has %d partitions",
                 self.bootstrap, self.topic, self._partitions)
        return True

    async def probe(self) -> bool:
        """A real metadata round trip: is Kafka answering right now?"""
        if not self.started:
            return await self.start()
        assert self._producer is not None
        try:
            cluster = await asyncio.wait_for(self._producer.client.fetch_all_metadata(),
                                             self.timeout_s)
        except (KafkaError, OSError, TimeoutError):
            return False
        partitions = cluster.partitions_for_topic(self.topic)
        if not partitions:
            return False
        self._partitions = len(partitions)
        return True

    async def send(self, records: Iterable[Record]) -> list[Record]:
        """Deliver ``records``; returns the ones Kafka did not acknowledge (empty = all good)."""
        if not self.started and not await self.start():
            return list(records)
        producer = self._producer
        assert producer is not None
        n = self._partitions
        rr = self._round_robin
        # One pass: partition, append to that partition's batch, and remember
        # which records each batch carries (a failed batch goes to the fallback).
        open_batches: dict[int, tuple[Any, list[Record]]] = {}
        batches: list[tuple[int, Any, list[Record]]] = []
        failed: list[Record] = []
        for n_rec, rec in enumerate(records, 1):
            if not n_rec % _YIELD_EVERY:
                # Let waiting requests run: a big batch must not stall redirects.
                await asyncio.sleep(0)
            ts, key, value = rec
            p = partition_for(key, n) if key else next(rr) % n
            slot = open_batches.get(p)
            if slot is None:
                slot = open_batches[p] = (producer.create_batch(), [])
            if slot[0].append(key=key, value=value, timestamp=ts) is None:
                batches.append((p, *slot))
                slot = open_batches[p] = (producer.create_batch(), [])
                if slot[0].append(key=key, value=value, timestamp=ts) is None:
                    log.error("click record of %d bytes exceeds the batch size", len(value))
                    failed.append(rec)
                    continue
            slot[1].append(rec)
        batches += [(p, batch, recs) for p, (batch, recs) in open_batches.items() if recs]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        pending: list[tuple[asyncio.Future[Any], list[Record]]] = []
        handed = 0
        try:
            # One deadline for the whole hand-over (one timer per round, not a
            # task per batch): send_batch waits only for metadata or a free slot.
            async with asyncio.timeout_at(deadline):
                for p, batch, recs in batches:
                    try:
                        fut = await producer.send_batch(batch, self.topic, partition=p)
                        pending.append((fut, recs))
                    except (KafkaError, OSError) as err:
                        log.warning("kafka enqueue to partition %d failed: %s", p,
                                    _describe(err))
                        failed += recs
                    handed += 1
        except TimeoutError:
            log.warning("kafka did not take %d batches in time", len(batches) - handed)
            for _, _, recs in batches[handed:]:
                failed += recs
        if pending:
            # aiokafka settles every batch within its request timeout; wait for
            # that (plus a grace) so no batch is both in Kafka and in the fallback.
            grace = max(0.0, deadline - loop.time()) + self.timeout_s
            await asyncio.wait([f for f, _ in pending], timeout=grace)
            for fut, recs in pending:
                if not fut.done():
                    fut.cancel()
                    failed += recs
                elif fut.cancelled() or fut.exception() is not None:
                    failed += recs
        return failed

    async def _discard_producer(self) -> None:
        producer, self._producer = self._producer, None
        self._partitions = 0
        if producer is not None:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                await asyncio.wait_for(producer.stop(), self.timeout_s)

    async def stop(self) -> None:
        await self._discard_producer()


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
