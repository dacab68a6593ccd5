"""The click persister against a real Tansu broker and real redis-servers.

Clicks are produced the way the edge writes them (``ClickEvent.to_json``,
keyed by buyer) and parked in the fallback stream by the edge's own
``RedisFallback``, so these tests also hold the persister to the edge's formats.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from attribution_worker.click_store.base import StoredClick
from attribution_worker.click_store.redis_store import RedisClickStore
from attribution_worker.persister import (
    _ADVANCE_CURSOR,
    FALLBACK_CURSOR_KEY,
    GROUP_ID,
    ClickPersister,
    CountingMetrics,
    PersisterConfig,
)
from contracts.clicks import ClickEvent, Verdict
from contracts.ids import new_click_id, new_visitor_id
from contracts.records import Record
from contracts.topics import CLICK_FALLBACK_GROUP, CLICK_FALLBACK_STREAM, CLICKS_TOPIC
from devstack.processes import free_port
from devstack.redis_server import RedisServer
from devstack.stack import LocalStack
from edge.delivery.redis_fallback import RedisFallback

pytestmark = pytest.mark.integration

WINDOW_MS = 15 * 86_400_000


class DeadLetters:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes, str]] = []

    async def put(self, source: str, raw: bytes, reason: str) -> None:
        self.items.append((source, raw, reason))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def events(n: int, *, verdicts: Iterable[Verdict] = (Verdict.VALID,),
           ts: int | None = None) -> list[ClickEvent]:
    """``n`` click events as the edge emits them, cycling through ``verdicts``."""
    cycle = list(verdicts)
    base = ts if ts is not None else now_ms() - 60_000
    out = []
    for i in range(n):
        verdict = cycle[i % len(cycle)]
        out.append(ClickEvent(
            click_id=new_click_id(base + i), ts=base + i, verdict=verdict,
            reason="ok" if verdict is Verdict.VALID else verdict.value,
            buyer_key=new_visitor_id(), ip="203.0.113.7", user_agent="Mozilla/5.0 (X11)",
            referer="", promoter_id=f"p{i % 7}", channel_id="live", position_id=None,
            shop_id=None if i % 5 == 0 else f"shop-{i % 3}", product_id="sku-1",
            sub_ids=("a",), target="https://shop.example/", link_sig="ab" * 32,
            link_kid="k1", link_exp=(base + i) // 1000 + 86_400))
    return out


def valid(evs: Iterable[ClickEvent]) -> list[ClickEvent]:
    return [e for e in evs if e.verdict is Verdict.VALID]


async def produce(bootstrap: str, values: Iterable[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        sent = [await producer.send(CLICKS_TOPIC, value, key=key) for key, value in values]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def records_of(evs: Iterable[ClickEvent]) -> list[tuple[bytes | None, bytes]]:
    return [(e.buyer_key.encode(), e.to_json()) for e in evs]


async def until(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def config(bootstrap: str, fallback_url: str | None = None, **kw: object) -> PersisterConfig:
    return PersisterConfig(bootstrap=bootstrap, fallback_redis_url=fallback_url,
                           poll_timeout_ms=200, fallback_block_ms=200, retry_initial_s=0.05,
                           retry_max_s=0.5,
                           # Tansu holds a group join for about half the session timeout.
                           session_timeout_ms=2000, heartbeat_interval_ms=500,
                           **kw)  # type: ignore[arg-type]


async def assert_stored(store: RedisClickStore, evs: Iterable[ClickEvent]) -> None:
    for e in evs:
        want = StoredClick.from_event(e)
        assert await store.get(e.click_id) == want
        if e.shop_id is None:
            assert await store.latest_sitewide(e.buyer_key, e.ts, WINDOW_MS) == want
        else:
            assert await store.latest(e.buyer_key, e.shop_id, e.ts, WINDOW_MS) == want


async def stored_keys(store: RedisClickStore) -> int:
    """Clicks held in the store's buckets."""
    buckets = [k async for k in store.redis.scan_iter(match=f"{store.prefix}h:*", count=1000)]
    return sum([await store.redis.hlen(k) for k in buckets])


@pytest.fixture
async def store(stack: LocalStack) -> AsyncIterator[RedisClickStore]:
    s = RedisClickStore(stack.redis.url, prefix=f"p{uuid.uuid4().hex[:6]}:")
    yield s
    await s.close()


async def committed(bootstrap: str, group: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(CLICKS_TOPIC) or set()
        return {p: await consumer.committed(TopicPartition(CLICKS_TOPIC, p)) or 0
                for p in sorted(parts)}
    finally:
        await asyncio.sleep(0)
        await consumer.stop()


# -- from Kafka ----------------------------------------------------------------------


async def test_valid_clicks_from_kafka_reach_the_store(stack: LocalStack,
                                                       store: RedisClickStore) -> None:
    evs = events(400, verdicts=[Verdict.VALID, Verdict.BOT, Verdict.VALID, Verdict.EXPIRED,
                                Verdict.DUPLICATE])
    bad = [b"not json", b'{"version": 2}', replace(evs[0], click_id="c1").to_json()]
    await produce(stack.broker.bootstrap, [*records_of(evs), *((None, raw) for raw in bad)])
    metrics, dead = CountingMetrics(), DeadLetters()
    persister = ClickPersister(store, config(stack.broker.bootstrap), metrics=metrics,
                               dead_letters=dead)
    await persister.start()
    try:
        await until(lambda: metrics.records_total == len(evs) + len(bad), "every record read")
    finally:
        await persister.stop()
    good = valid(evs)
    assert metrics.written_total == len(good) == 160
    assert metrics.skipped_total == len(evs) - len(good)
    assert metrics.bad_total == 3
    assert metrics.by_source == {CLICKS_TOPIC: 160}
    assert metrics.last_lag == 0
    await assert_stored(store, good)
    assert await stored_keys(store) == 160  # bots, expired and duplicates are not evidence
    assert sorted(raw for _, raw, _ in dead.items) == sorted(bad)
    reasons = " | ".join(reason for _, _, reason in dead.items)
    assert "not JSON" in reasons
    assert "unsupported schema version" in reasons
    assert "click_id" in reasons
    assert all(source == CLICKS_TOPIC and "@" in reason for source, _, reason in dead.items)
    # stop() left every record committed: a restart starts at the end.
    assert sum((await committed(stack.broker.bootstrap, GROUP_ID)).values()) == 403


async def test_restart_resumes_after_the_last_commit(stack: LocalStack,
                                                     store: RedisClickStore) -> None:
    first, second = events(300), events(200)
    await produce(stack.broker.bootstrap, records_of(first))
    metrics = CountingMetrics()
    persister = ClickPersister(store, config(stack.broker.bootstrap), metrics=metrics)
    await persister.start()
    await until(lambda: metrics.written_total == 300, "the first 300")
    await persister.stop()

    await produce(stack.broker.bootstrap, records_of(second))
    again = CountingMetrics()
    persister = ClickPersister(store, config(stack.broker.bootstrap), metrics=again)
    await persister.start()
    try:
        await until(lambda: again.written_total == 200, "the next 200")
        await asyncio.sleep(0.5)
    finally:
        await persister.stop()
    assert again.records_total == 200, "nothing committed was read again"
    await assert_stored(store, first + second)


async def test_duplicates_and_replays_change_nothing(stack: LocalStack,
                                                     store: RedisClickStore) -> None:
    evs = events(250)
    # A failover duplicate: the same events twice in the topic.
    await produce(stack.broker.bootstrap, records_of(evs) + records_of(evs[:100]))
    metrics = CountingMetrics()
    persister = ClickPersister(store, config(stack.broker.bootstrap), metrics=metrics)
    await persister.start()
    await until(lambda: metrics.records_total == 350, "every record")
    await persister.stop()
    before = {e.click_id: await store.get(e.click_id) for e in evs}
    assert await stored_keys(store) == 250

    # A full replay by another group: every click again, nothing changes.
    replay = CountingMetrics()
    persister = ClickPersister(store, config(stack.broker.bootstrap, group_id="replay"),
                               metrics=replay)
    await persister.start()
    try:
        await until(lambda: replay.records_total == 350, "the replay")
    finally:
        await persister.stop()
    assert await stored_keys(store) == 250
    assert {e.click_id: await store.get(e.click_id) for e in evs} == before
    await assert_stored(store, evs)


async def test_a_store_outage_delays_but_loses_nothing(stack: LocalStack,
                                                       tmp_path: Path) -> None:
    with RedisServer(data_dir=tmp_path / "store", appendonly=False) as store_server:
        store = RedisClickStore(store_server.url, timeout_s=0.3)
        metrics = CountingMetrics()
        persister = ClickPersister(store, config(stack.broker.bootstrap), metrics=metrics)
        store_server.pause()  # hung: every write times out
        try:
            await persister.start()
            evs = events(200)
            await produce(stack.broker.bootstrap, records_of(evs))
            await asyncio.sleep(2)
            assert metrics.written_total == 0
            assert sum((await committed(stack.broker.bootstrap, GROUP_ID)).values()) == 0, \
                "nothing is committed before the store has it"
            store_server.resume()
            await until(lambda: metrics.written_total == 200, "the writes after recovery")
        finally:
            await persister.stop()
        await assert_stored(store, evs)
        await store.close()


class FlakyDeadLetters(DeadLetters):
    """Fails its first ``failures`` calls, like a database that is briefly down."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def put(self, source: str, raw: bytes, reason: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("dead-letter table unreachable")
        await super().put(source, raw, reason)


async def test_a_failing_dead_letter_sink_is_retried_not_fatal(stack: LocalStack,
                                                              store: RedisClickStore) -> None:
    evs = events(50)
    await produce(stack.broker.bootstrap, [*records_of(evs), (None, b"junk")])
    metrics, dead = CountingMetrics(), FlakyDeadLetters(failures=3)
    persister = ClickPersister(store, config(stack.broker.bootstrap), metrics=metrics,
                               dead_letters=dead)
    await persister.start()
    try:
        await until(lambda: metrics.records_total == 51, "every record")
    finally:
        await persister.stop()
    assert [raw for _, raw, _ in dead.items] == [b"junk"]
    assert dead.failures == 0
    await assert_stored(store, evs)


# -- from the edge's fallback stream ------------------------------------------------


async def park(fallback: RedisFallback, evs: list[ClickEvent]) -> None:
    """Park clicks the way the edge does while Kafka is down."""
    records: list[Record] = [(e.ts, e.buyer_key.encode(), e.to_json()) for e in evs]
    await fallback.push(records)


async def test_fallback_clicks_reach_the_store_with_the_broker_down(tmp_path: Path) -> None:
    dead_broker = f"127.0.0.1:{free_port()}"  # never started
    with RedisServer(data_dir=tmp_path / "redis", appendonly=False) as server:
        fallback = RedisFallback(server.url, timeout_s=2)
        client = aioredis.Redis.from_url(server.url)
        store = RedisClickStore(server.url, prefix="store:")
        first, second = events(150, verdicts=[Verdict.VALID, Verdict.BOT]), events(60)
        await park(fallback, first[:100])
        await park(fallback, first[100:])
        await client.xgroup_create(CLICK_FALLBACK_STREAM, CLICK_FALLBACK_GROUP, id="0",
                                   mkstream=True)
        await client.xadd(CLICK_FALLBACK_STREAM, {"n": 1, "b": b"torn batch without newline"})
        metrics, dead = CountingMetrics(), DeadLetters()
        persister = ClickPersister(store, config(dead_broker, server.url), metrics=metrics,
                                   dead_letters=dead)
        await persister.start()
        try:
            await until(lambda: metrics.written_total == 75, "the parked valid clicks")
            await park(fallback, second)  # parked while the persister runs
            await until(lambda: metrics.written_total == 135, "clicks parked later")
        finally:
            await persister.stop()
        await assert_stored(store, valid(first) + second)
        assert metrics.by_source == {CLICK_FALLBACK_STREAM: 135}
        assert metrics.skipped_total == 75
        assert [(s, r) for s, r, _ in dead.items] == [(CLICK_FALLBACK_STREAM,
                                                      b"torn batch without newline")]
        assert "newline" in dead.items[0][2]
        # The entries stay for the edge: nothing consumed, nothing pending, all drainable.
        assert await client.xlen(CLICK_FALLBACK_STREAM) == 4
        pending = await client.xpending(CLICK_FALLBACK_STREAM, CLICK_FALLBACK_GROUP)
        assert pending["pending"] == 0
        drained = await fallback.read(count=10)
        assert sum(len(records) for _, records in drained) == 210
        assert await client.get(FALLBACK_CURSOR_KEY) is not None
        # A restarted persister continues after its cursor: nothing is read twice.
        again = CountingMetrics()
        persister = ClickPersister(store, config(dead_broker, server.url), metrics=again)
        await persister.start()
        await asyncio.sleep(0.6)
        await persister.stop()
        assert again.records_total == 0
        await fallback.close()
        await client.aclose()
        await store.close()


async def test_the_shared_fallback_cursor_only_moves_forward(stack: LocalStack) -> None:
    client = aioredis.Redis.from_url(stack.redis.url)
    key = "cursor-test"

    async def advance(entry_id: str) -> bytes | None:
        await client.eval(_ADVANCE_CURSOR, 1, key, entry_id)
        value = await client.get(key)
        assert value is None or isinstance(value, bytes)
        return value

    assert await advance("1700000000000-5") == b"1700000000000-5"
    assert await advance("1700000000000-4") == b"1700000000000-5"  # a slower process
    assert await advance("999999999999-9") == b"1700000000000-5"
    assert await advance("1700000000000-12") == b"1700000000000-12"  # numeric, not text
    assert await advance("1700000000001-0") == b"1700000000001-0"
    await client.aclose()


async def test_clicks_seen_in_both_paths_are_stored_once(stack: LocalStack,
                                                         store: RedisClickStore) -> None:
    """Parked in Redis, later drained into Kafka by the edge: the persister sees both."""
    evs = events(120)
    fallback = RedisFallback(stack.redis.url, timeout_s=2)
    await park(fallback, evs)
    await produce(stack.broker.bootstrap, records_of(evs))
    metrics = CountingMetrics()
    persister = ClickPersister(store, config(stack.broker.bootstrap, stack.redis.url),
                               metrics=metrics)
    await persister.start()
    try:
        await until(lambda: metrics.written_total == 240, "both copies")
    finally:
        await persister.stop()
    assert metrics.by_source == {CLICKS_TOPIC: 120, CLICK_FALLBACK_STREAM: 120}
    assert await stored_keys(store) == 120
    await assert_stored(store, evs)
    await fallback.close()
