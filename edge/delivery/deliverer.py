"""From the request path to Kafka, whatever fails in between.

The request path calls ``submit`` (an append to a bounded deque, nothing
else).  Two background tasks do the rest:

* the **delivery loop** takes whatever the buffer holds and writes it to
  Kafka.  When Kafka fails or does not answer within its timeout, this worker
  switches to *fallback mode*: batches go to the Redis fallback stream, or,
  when Redis fails too (or the spool still holds older clicks), to the local
  disk spool.  A component known to be down is not tried again on this path,
  so a dead broker costs one timeout, not one per batch.
* the **drain loop** probes what is down and moves parked clicks back, each
  store in its own order: Redis entries, then the spool, into Kafka; or the
  spool into Redis while Kafka is still down (freeing local disk).  The worker
  returns to Kafka mode only when nothing of its own is parked, so within one
  process new clicks never overtake parked ones (except when Redis stays down
  while Kafka is back: the spool then drains past entries stranded in Redis,
  which follow when Redis returns).

``submit`` also appends the click to this worker's hand-off ring (a
memory-mapped file, ``edge.delivery.ring``) before the 302 leaves, and the
delivery loop releases each batch from it once the batch is durable (in Kafka,
the Redis stream or the spool).  When the worker dies (SIGKILL, OOM), whatever
it had accepted but not yet delivered (the buffer and the batch in flight) is
still in the ring, and whoever claims its spool directory replays it.

When the buffer or the ring is full (only while every store is failing or
slow), a click goes straight from the request path to the spool: slower, but
never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Collection

from contracts.records import Record, decode_batch, encode_batch
from edge import telemetry
from edge.delivery.kafka_sink import KafkaSink
from edge.delivery.redis_fallback import RedisFallback, RedisUnavailable
from edge.delivery.ring import HandoffRing, NoRing
from edge.delivery.spool import DiskSpool

log = logging.getLogger("cps.edge.delivery")


class Deliverer:
    def __init__(self, kafka: KafkaSink, fallback: RedisFallback, spool: DiskSpool, *,
                 max_events: int, batch_events: int, probe_interval_s: float,
                 linger_s: float = 0.005, ring: HandoffRing | NoRing | None = None) -> None:
        self.kafka = kafka
        self.fallback = fallback
        self.spool = spool
        self._max = max_events
        self._batch = batch_events
        self._probe_interval = probe_interval_s
        self._linger = linger_s
        self._buf: deque[Record] = deque()
        # Records taken from the buffer whose delivery has not finished yet.
        self._inflight: Collection[Record] = deque()
        self._wake = asyncio.Event()
        self._idle = True
        self._closing = False
        self.fallback_mode = True  # until Kafka proved reachable
        self.redis_ok = True
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_wake = asyncio.Event()
        self._gauges_at = 0.0
        self.ring: HandoffRing | NoRing = ring or NoRing()
        self._ring_append = self.ring.append
        self._adopted = 0
        self._set_mode_gauge()

    # -- request path -------------------------------------------------------

    def submit(self, record: Record) -> None:
        buf = self._buf
        if len(buf) < self._max and self._ring_append(record):
            buf.append(record)
            if self._idle:
                self._idle = False
                self._wake.set()
            return
        self._overflow(record)

    def _overflow(self, record: Record) -> None:
        telemetry.overflow.inc()
        try:
            self.spool.append(encode_batch([record]), 1)
            telemetry.delivered.inc(1, "spool")
        except OSError as err:
            telemetry.dropped.inc()
            log.critical("click lost: buffer full and spool failed: %s", err)

    def use_ring(self, ring: HandoffRing | NoRing) -> None:
        """Hand off through ``ring`` from now on (before ``start``: the buffer is empty)."""
        if self._buf:
            raise RuntimeError("use_ring() after clicks were submitted")
        self.ring = ring
        self._ring_append = ring.append

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def ready(self) -> bool:
        """Clicks are being accepted somewhere durable: Kafka, or the Redis fallback."""
        return not self.fallback_mode or self.redis_ok

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self._claim_orphans()
        if await self.kafka.start() and self.spool.is_empty():
            self._set_mode(fallback=False)
        else:
            # Readiness must tell the truth from the first request on.
            self.redis_ok = await self.fallback.ping()
        self._tasks = [asyncio.create_task(self._delivery_loop(), name="cps-delivery"),
                       asyncio.create_task(self._drain_loop(), name="cps-drain")]

    async def close(self, timeout_s: float) -> None:
        """Flush every buffered click somewhere durable, then stop."""
        self._closing = True
        self._wake.set()
        self._drain_wake.set()
        delivery, drain = self._tasks or (None, None)
        if delivery is not None:
            try:
                await asyncio.wait_for(asyncio.shield(delivery), timeout_s)
            except TimeoutError:
                log.warning("shutdown: delivery too slow, spooling %d clicks",
                            len(self._buf) + len(self._inflight))
                delivery.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await delivery
                # Possibly in Kafka already: a duplicate by click id beats a loss.
                if self._inflight:
                    self._to_spool(self._inflight)
                    self.ring.release(len(self._inflight))
                    self._inflight = deque()
        self._spool_rest()
        self.ring.close(remove=self.ring.pending == 0)
        if drain is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drain, self._probe_interval + 2 * self.kafka.timeout_s)
        await self.kafka.stop()
        await self.fallback.close()
        self._update_gauges()

    def _spool_rest(self) -> None:
        while self._buf:
            records = [self._buf.popleft() for _ in range(min(len(self._buf), self._batch))]
            self._to_spool(records)
            self.ring.release(len(records))

    # -- delivery loop -------------------------------------------------------

    async def _delivery_loop(self) -> None:
        buf = self._buf
        while True:
            if not buf:
                if self._closing:
                    return
                self._idle = True
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(buf) < self._batch and not self._closing:
                # A short linger turns a trickle of single clicks into batches.
                await asyncio.sleep(self._linger)
                buf = self._buf
            if len(buf) <= self._batch:
                # Take the whole buffer in O(1); the request path appends to the new one.
                records = buf
                self._buf = deque()
            else:
                records = deque(buf.popleft() for _ in range(self._batch))
            buf = self._buf
            self._inflight = records
            await self._deliver(records)
            # Durable now (Kafka, Redis or the spool): the ring may forget them.
            self.ring.release(len(records))
            self._inflight = deque()
            telemetry.buffer_events.set(len(buf))

    async def _deliver(self, records: Collection[Record]) -> None:
        if not self.fallback_mode:
            started = time.perf_counter_ns()
            failed = await self.kafka.send(records)
            telemetry.kafka_seconds.observe_ns(time.perf_counter_ns() - started)
            telemetry.delivered.inc(len(records) - len(failed), "kafka")
            if not failed:
                return
            telemetry.delivery_errors.inc(1, "kafka")
            log.warning("kafka delivery failed: switching to the fallback")
            self._set_mode(fallback=True)
            records = failed
        await self._park(records)

    async def _park(self, records: Collection[Record]) -> None:
        if self.redis_ok and self.spool.is_empty():
            try:
                await self.fallback.push(records)
                telemetry.delivered.inc(len(records), "redis")
                return
            except RedisUnavailable as err:
                telemetry.delivery_errors.inc(1, "redis")
                log.warning("redis fallback failed (%s): spooling to disk", err)
                self.redis_ok = False
                self._drain_wake.set()
        self._to_spool(records)

    def _to_spool(self, records: Collection[Record]) -> None:
        try:
            self.spool.append(encode_batch(records), len(records))
            telemetry.delivered.inc(len(records), "spool")
        except OSError as err:
            telemetry.delivery_errors.inc(1, "spool")
            telemetry.dropped.inc(len(records))
            log.critical("%d clicks lost: Kafka, Redis and the spool all failed: %s",
                         len(records), err)

    # -- drain loop ------------------------------------------------------------

    async def _drain_loop(self) -> None:
        last_claim = 0.0
        while True:
            try:
                now = time.monotonic()
                if now - last_claim > 10 * self._probe_interval:
                    last_claim = now
                    self._claim_orphans()
                progressed = await self._drain_step()
            except Exception:  # the loop must outlive any bug in one step
                log.exception("drain step failed")
                progressed = False
            await self._refresh_gauges()
            if self._closing:
                return
            if not progressed:
                self._drain_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drain_wake.wait(), self._probe_interval)

    async def _drain_step(self) -> bool:
        if not self.redis_ok:
            self.redis_ok = await self.fallback.ping()
            if self.redis_ok:
                log.info("redis fallback reachable again")
        kafka_ok = not self.fallback_mode or await self.kafka.probe()
        if kafka_ok:
            if self.redis_ok and await self._replay_redis():
                return True
            if await self._replay_spool():
                return True
            if self.fallback_mode and self.spool.is_empty():
                log.info("kafka reachable and fallback drained: delivering to kafka again")
                self._set_mode(fallback=False)
                return True
            return False
        if self.redis_ok:
            return await self._spool_to_redis()
        return False

    async def _replay_redis(self) -> bool:
        try:
            entries = await self.fallback.read()
        except RedisUnavailable as err:
            log.warning("cannot read the redis fallback: %s", err)
            self.redis_ok = False
            return False
        for entry_id, records in entries:
            if not await self._replay_into_kafka(records):
                return False
            try:
                await self.fallback.ack(entry_id, len(records))
            except RedisUnavailable:
                # Kafka has them; the entry will be replayed again: a duplicate
                # by click id, which consumers drop.
                self.redis_ok = False
                return False
            telemetry.replayed.inc(len(records), "redis")
        return bool(entries)

    async def _replay_spool(self) -> bool:
        item = self.spool.peek()
        if item is None:
            return False
        if not await self._replay_into_kafka(decode_batch(item.batch)):
            return False
        self.spool.commit(item)
        telemetry.replayed.inc(item.count, "spool")
        return True

    async def _spool_to_redis(self) -> bool:
        item = self.spool.peek()
        if item is None:
            return False
        try:
            await self.fallback.push(decode_batch(item.batch))
        except RedisUnavailable:
            self.redis_ok = False
            return False
        self.spool.commit(item)
        telemetry.replayed.inc(item.count, "spool_to_redis")
        return True

    async def _replay_into_kafka(self, records: list[Record]) -> bool:
        failed = await self.kafka.send(records)
        if failed:
            telemetry.delivery_errors.inc(1, "kafka")
            if not self.fallback_mode:
                log.warning("kafka failed during replay: switching to the fallback")
                self._set_mode(fallback=True)
            return False
        return True

    def _claim_orphans(self) -> None:
        """Take over dead workers' spools, and the clicks their hand-off rings hold."""
        self.spool.claim_orphans()
        adopted = self.spool.adopted_records
        if adopted > self._adopted:
            telemetry.replayed.inc(adopted - self._adopted, "ring")
            self._adopted = adopted

    # -- state -------------------------------------------------------------------

    def _set_mode(self, *, fallback: bool) -> None:
        self.fallback_mode = fallback
        self._set_mode_gauge()
        if fallback:
            self._drain_wake.set()

    def _set_mode_gauge(self) -> None:
        telemetry.delivery_mode.set(int(not self.fallback_mode), "kafka")
        telemetry.delivery_mode.set(int(self.fallback_mode), "fallback")

    def _update_gauges(self) -> None:
        telemetry.buffer_events.set(len(self._buf))
        telemetry.spool_records.set(self.spool.pending_records)
        telemetry.spool_bytes.set(self.spool.pending_bytes)

    async def _refresh_gauges(self) -> None:
        self._update_gauges()
        now = time.monotonic()
        if self.redis_ok and now - self._gauges_at >= self._probe_interval:
            self._gauges_at = now
            with contextlib.suppress(RedisUnavailable):
                telemetry.fallback_records.set(await self.fallback.pending_clicks())
