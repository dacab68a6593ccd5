"""The click persister: valid clicks from Kafka and the edge's Redis fallback into the click store.

Two readers feed one store, each in batches (one store call per batch):

* **Kafka**: consumer group ``cps-click-persister`` on ``cps.clicks.v1``; up to
  ``batch_max_records`` records per poll, decoded, the valid clicks written in
  one ``put_many``, then the batch's offsets committed.  Commits only follow a
  successful write: at-least-once delivery into an idempotent store (by click
  id) is effectively once.  A failing store or dead-letter sink is retried
  with backoff, without polling further, so lag (not loss) is what an outage
  costs; any other failure restarts the consumer from the last commit.
* **The fallback stream** ``cps:clicks:fallback``, where the edge parks batches
  while Kafka is down: read with plain ``XREAD`` from the persister's own cursor
  (kept in Redis under ``cps:clicks:fallback:persister:cursor``), never through
  the edge's ``cps-click-drain`` group, so entries stay for the edge to drain
  into Kafka.  Clicks stranded there while the broker is down reach the store
  at once; the same clicks arrive again via Kafka later, and the idempotent
  store makes that harmless.  The cursor advances only after the write, and
  only forward; every persister process shares it.

Records that are not JSON, break the click schema (``ClickEvent.from_json``) or
are valid clicks the store cannot hold go to a ``DeadLetterSink`` with their
raw bytes and the reason (by default: logged, truncated) and never block the
batch.  Non-valid verdicts are skipped: they are not evidence.

Throughput (``bench/click_persister.py``, 2-core VM, Redis store, AOF on): ~15
us of this process's CPU per new click (plain consumption ~6 us a record,
decoding ~6 us, building the write ~2-3 us) and 11-18 us of Redis time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from redis.exceptions import RedisError

from attribution_worker.click_store.base import (
    ClickStore,
    ClickStoreError,
    NotStorable,
    StoredClick,
)
from attribution_worker.click_store.decode import decode_click
from contracts.clicks import SchemaError
from contracts.records import BatchFormatError, decode_batch
from contracts.topics import CLICK_FALLBACK_STREAM, CLICKS_TOPIC

log = logging.getLogger("cps.attribution.persister")

GROUP_ID = "cps-click-persister"
FALLBACK_CURSOR_KEY = CLICK_FALLBACK_STREAM + ":persister:cursor"
# Every persister process reads the fallback stream from the one shared cursor
# (their writes are idempotent, so overlapping reads cost only work); the cursor
# only moves forward, so a slow process cannot send the others back.
_ADVANCE_CURSOR = """
local current = redis.call('GET', KEYS[1])
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
if current then
  local cur_ms, cur_seq = parse(current)
  local new_ms, new_seq = parse(ARGV[1])
  if cur_ms and (new_ms < cur_ms or (new_ms == cur_ms and new_seq <= cur_seq)) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""
# Enough of a bad record to recognise it in a log line, not a megabyte of junk.
LOG_RAW_BYTES = 200


class DeadLetterSink(Protocol):
    """Where records nobody can use go, with the raw bytes and why."""

    async def put(self, source: str, raw: bytes, reason: str) -> None: ...


class LoggingDeadLetters:
    """The default sink: one error log line per record, raw bytes truncated."""

    async def put(self, source: str, raw: bytes, reason: str) -> None:
        log.error("unusable click record from %s (%s): %r%s", source, reason,
                  raw[:LOG_RAW_BYTES], "..." if len(raw) > LOG_RAW_BYTES else "")


class PersisterMetrics(Protocol):
    """Hooks the service wires to Prometheus; ``source`` is the topic or stream name."""

    def written(self, source: str, clicks: int) -> None: ...
    def skipped(self, source: str, records: int) -> None: ...
    def bad(self, source: str, records: int) -> None: ...
    def batch(self, source: str, records: int, seconds: float) -> None: ...
    def lag(self, source: str, records: int) -> None: ...


@dataclass
class CountingMetrics:
    """Plain counters (the default; tests and the benchmark read them)."""

    written_total: int = 0
    skipped_total: int = 0
    bad_total: int = 0
    batches_total: int = 0
    records_total: int = 0
    last_lag: int = 0
    by_source: dict[str, int] = field(default_factory=dict)

    def written(self, source: str, clicks: int) -> None:
        self.written_total += clicks
        self.by_source[source] = self.by_source.get(source, 0) + clicks

    def skipped(self, source: str, records: int) -> None:
        self.skipped_total += records

    def bad(self, source: str, records: int) -> None:
        self.bad_total += records

    def batch(self, source: str, records: int, seconds: float) -> None:
        self.batches_total += 1
        self.records_total += records

    def lag(self, source: str, records: int) -> None:
        self.last_lag = records


@dataclass(frozen=True)
class PersisterConfig:
    bootstrap: str
    # The edge's Redis (CPS_REDIS_URL); None: do not read the fallback stream.
    fallback_redis_url: str | None = None
    topic: str = CLICKS_TOPIC
    group_id: str = GROUP_ID
    batch_max_records: int = 5000
    writes_in_flight: int = 2  # batches written concurrently (commits stay in order)
    poll_timeout_ms: int = 500
    fallback_stream: str = CLICK_FALLBACK_STREAM
    fallback_cursor_key: str = FALLBACK_CURSOR_KEY
    fallback_batch_entries: int = 20  # entries hold up to CPS_BATCH_MAX_EVENTS clicks each
    fallback_block_ms: int = 1000
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0
    redis_timeout_s: float = 5.0
    client_id: str = "cps-click-persister"
    # aiokafka's defaults; a dead member's partitions move after session_timeout_ms.
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000


@dataclass
class Decoded:
    """A batch of records sorted into what to store, skip, and set aside."""

    clicks: list[StoredClick] = field(default_factory=list)
    skipped: int = 0
    bad: list[tuple[bytes, str]] = field(default_factory=list)


def decode_records(values: Iterable[tuple[bytes | None, str, int]]) -> Decoded:
    """Sort ``(raw value, place, position)`` triples into what to store, skip, set aside.

    ``place@position`` (topic/partition@offset, stream/entry@line) goes into a
    bad record's reason; it is formatted only then, not for every record.
    """
    triples = list(values)
    out = Decoded()
    decode_values(out, [raw for raw, _, _ in triples],
                  lambda i: f"{triples[i][1]}@{triples[i][2]}")
    return out


def decode_values(out: Decoded, values: Sequence[bytes | None],
                  where: Callable[[int], str]) -> None:
    """Sort ``values`` into ``out``; ``where(i)`` names the i-th for a bad record's reason.

    The persister's inner loop: values as the caller holds them (a Kafka batch's
    record values), no tuple or place string per record.
    """
    clicks = out.clicks
    bad = out.bad
    skipped = 0
    for i, raw in enumerate(values):
        if raw is None:
            bad.append((b"", f"record has no value ({where(i)})"))
            continue
        try:
            click = decode_click(raw)
        except (SchemaError, NotStorable) as err:
            bad.append((raw, f"{err} ({where(i)})"))
            continue
        if click is None:
            skipped += 1
        else:
            clicks.append(click)
    out.skipped += skipped


class _Stopping(Exception):
    """Raised inside a loop when stop() interrupts a retry: nothing is committed."""


class ClickPersister:
    """``await start()``, later ``await stop()``; or ``await run()`` until cancelled."""

    def __init__(self, store: ClickStore, config: PersisterConfig, *,
                 dead_letters: DeadLetterSink | None = None,
                 metrics: PersisterMetrics | None = None) -> None:
        self.store = store
        self.config = config
        self.dead_letters: DeadLetterSink = dead_letters or LoggingDeadLetters()
        self.metrics: PersisterMetrics = metrics or CountingMetrics()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._fallback_redis: aioredis.Redis | None = None

    async def start(self) -> None:
        if self._tasks:
            raise RuntimeError("the persister is already running")
        self._stopping.clear()
        self._tasks.append(asyncio.create_task(self._kafka_loop(), name="persister-kafka"))
        if self.config.fallback_redis_url:
            self._tasks.append(asyncio.create_task(self._fallback_loop(),
                                                   name="persister-fallback"))

    async def run(self) -> None:
        await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the batch in hand (write + commit), then leave the group."""
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- Kafka ---------------------------------------------------------------

    def _new_consumer(self) -> AIOKafkaConsumer:
        cfg = self.config
        return AIOKafkaConsumer(
            cfg.topic, bootstrap_servers=cfg.bootstrap, group_id=cfg.group_id,
            client_id=cfg.client_id, enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            # ~520-byte records: 4 MiB per partition fetch keeps getmany fed at 50k/s.
            max_partition_fetch_bytes=4 * 1024 * 1024)

    async def _kafka_loop(self) -> None:
        delay_s = self.config.retry_initial_s
        while not self._stopping.is_set():
            consumer = self._new_consumer()
            try:
                await consumer.start()
            except KafkaError as err:
                log.warning("kafka %s unreachable (%s); retrying in %.1fs",
                            self.config.bootstrap, err, delay_s)
                await _close_consumer(consumer)
                await self._sleep(delay_s)
                delay_s = min(delay_s * 2, self.config.retry_max_s)
                continue
            self._consumer = consumer
            try:
                await self._consume(consumer)
                delay_s = self.config.retry_initial_s
            except _Stopping:
                pass
            except Exception:
                # Never die silently: a new consumer resumes from the last commit.
                log.exception("kafka consumption failed; restarting the consumer in %.1fs",
                              delay_s)
                await self._sleep(delay_s)
                delay_s = min(delay_s * 2, self.config.retry_max_s)
            finally:
                self._consumer = None
                await _close_consumer(consumer)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        """Poll, decode, write, commit, with the store working while this process decodes.

        Up to ``writes_in_flight`` batches are being written while the next is
        decoded: the store (its own core, or across the network) never waits
        for this process between batches.  Each batch commits only after its
        own write and every earlier batch's commit, so commits stay in order;
        at most ``writes_in_flight + 1`` batches are held.
        """
        cfg = self.config
        in_flight: deque[asyncio.Task[None]] = deque()
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=cfg.poll_timeout_ms,
                                               max_records=cfg.batch_max_records)
                if batch:
                    started = time.perf_counter()
                    decoded = self._decode_kafka(batch)
                    while len(in_flight) >= cfg.writes_in_flight:
                        await in_flight.popleft()
                    previous = in_flight[-1] if in_flight else None
                    in_flight.append(asyncio.create_task(self._store_and_commit(
                        consumer, batch, decoded, started, previous)))
                    # Let it send its write now: getmany may return buffered records
                    # without yielding, and the next decode would run first.
                    await asyncio.sleep(0)
                self.metrics.lag(cfg.topic, await _lag(consumer))
        finally:
            # stop(): finish the batches in hand (write + commit), in order.
            while in_flight:
                await in_flight.popleft()

    def _decode_kafka(self, batch: dict[TopicPartition, list[Any]]) -> Decoded:
        topic = self.config.topic
        out = Decoded()
        for tp, records in batch.items():
            decode_values(out, [record.value for record in records],
                          partial(_kafka_place, topic, tp.partition, records))
        return out

    async def _store_and_commit(self, consumer: AIOKafkaConsumer,
                                batch: dict[TopicPartition, list[Any]], decoded: Decoded,
                                started: float, previous: asyncio.Task[None] | None) -> None:
        topic = self.config.topic
        await self._settle(topic, decoded)
        if previous is not None:
            await previous  # its failure (stop during a retry) is ours: no commit
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as err:
            # Rebalanced while writing: the new owner replays these records, harmlessly.
            log.warning("commit after a rebalance failed (%s); records will be replayed", err)
        except KafkaError as err:
            # The next batch's commit covers these offsets too; if none comes,
            # a restart replays them into the idempotent store.
            log.warning("commit failed (%s); a later commit or a replay covers it", err)
        n_records = sum(len(records) for records in batch.values())
        self.metrics.batch(topic, n_records, time.perf_counter() - started)

    # -- shared --------------------------------------------------------------

    async def _settle(self, source: str, decoded: Decoded) -> None:
        """Dead-letter, write (retrying until it succeeds or stop), count."""
        for raw, reason in decoded.bad:
            # The sink is pluggable (a database table): whatever it raises is retried.
            await self._retry(f"dead-lettering a record from {source}",
                              partial(self.dead_letters.put, source, raw, reason), Exception)
        if decoded.clicks:
            clicks = decoded.clicks
            await self._retry(f"click store write of {len(clicks)} clicks",
                              lambda: self.store.put_many(clicks), ClickStoreError)
        self.metrics.written(source, len(decoded.clicks))
        self.metrics.skipped(source, decoded.skipped)
        self.metrics.bad(source, len(decoded.bad))

    async def _retry(self, what: str, attempt: Callable[[], Awaitable[object]],
                     errors: type[Exception] | tuple[type[Exception], ...]) -> None:
        """``attempt()`` until it succeeds, backing off; ``_Stopping`` if stop() comes first."""
        delay_s = self.config.retry_initial_s
        while True:
            try:
                await attempt()
                return
            except errors as err:
                if self._stopping.is_set():
                    raise _Stopping from None
                log.warning("%s failed (%s: %s); retrying in %.1fs", what,
                            type(err).__name__, err, delay_s)
            await self._sleep(delay_s)
            delay_s = min(delay_s * 2, self.config.retry_max_s)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, cut short by stop()."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- the Redis fallback stream -------------------------------------------

    async def _fallback_loop(self) -> None:
        cfg = self.config
        assert cfg.fallback_redis_url is not None
        # The blocking XREAD must outlast its own block time.
        timeout_s = cfg.redis_timeout_s + cfg.fallback_block_ms / 1000
        client = aioredis.Redis.from_url(cfg.fallback_redis_url, socket_timeout=timeout_s,
                                         socket_connect_timeout=cfg.redis_timeout_s)
        self._fallback_redis = client
        delay_s = cfg.retry_initial_s
        try:
            while not self._stopping.is_set():
                try:
                    await self._fallback_round(client)
                    delay_s = cfg.retry_initial_s
                except (RedisError, OSError, TimeoutError) as err:
                    log.warning("fallback stream unreadable (%s: %s); retrying in %.1fs",
                                type(err).__name__, err, delay_s)
                    await self._sleep(delay_s)
                    delay_s = min(delay_s * 2, cfg.retry_max_s)
                except _Stopping:
                    raise
                except Exception:
                    log.exception("reading the fallback stream failed; retrying in %.1fs",
                                  delay_s)
                    await self._sleep(delay_s)
                    delay_s = min(delay_s * 2, cfg.retry_max_s)
        except _Stopping:
            pass
        finally:
            self._fallback_redis = None
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await client.aclose()

    async def _fallback_round(self, client: aioredis.Redis) -> None:
        cfg = self.config
        cursor = await client.get(cfg.fallback_cursor_key) or b"0-0"
        reply: Any = await client.xread({cfg.fallback_stream: cursor},
                                        count=cfg.fallback_batch_entries,
                                        block=cfg.fallback_block_ms)
        if not reply or self._stopping.is_set():
            return
        entries = [(eid, fields) for eid, fields in reply[0][1]]
        started = time.perf_counter()
        decoded = _decode_entries(cfg.fallback_stream, entries)
        await self._settle(cfg.fallback_stream, decoded)
        await client.eval(_ADVANCE_CURSOR, 1, cfg.fallback_cursor_key, entries[-1][0])
        n_records = len(decoded.clicks) + decoded.skipped + len(decoded.bad)
        self.metrics.batch(cfg.fallback_stream, n_records, time.perf_counter() - started)


def _kafka_place(topic: str, partition: int, records: Sequence[Any], i: int) -> str:
    return f"{topic}/{partition}@{records[i].offset}"


def _decode_entries(stream: str, entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> Decoded:
    values: list[tuple[bytes | None, str, int]] = []
    unreadable: list[tuple[bytes, str]] = []
    for entry_id, fields in entries:
        where = f"{stream}/{entry_id.decode()}"
        try:
            records = decode_batch(fields[b"b"])
        except KeyError:
            unreadable.append((_flatten(fields), f"entry has no 'b' field ({where})"))
            continue
        except BatchFormatError as err:
            unreadable.append((fields[b"b"], f"{err} ({where})"))
            continue
        values.extend((value, where, n) for n, (_ts, _key, value) in enumerate(records))
    decoded = decode_records(values)
    decoded.bad.extend(unreadable)
    return decoded


def _flatten(fields: dict[bytes, bytes]) -> bytes:
    return b" ".join(k + b"=" + v for k, v in fields.items())


async def _lag(consumer: AIOKafkaConsumer) -> int:
    """Records between this consumer's position and the end of its partitions."""
    total = 0
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        with contextlib.suppress(KafkaError, IllegalStateError):
            total += max(highwater - await consumer.position(tp), 0)
    return total


async def _close_consumer(consumer: AIOKafkaConsumer) -> None:
    # aiokafka quirk (see devstack.kafka_admin): stop() right after a failed or
    # fresh start() needs one loop iteration first.
    await asyncio.sleep(0)
    with contextlib.suppress(KafkaError, OSError):
        await consumer.stop()
