"""Click delivery against real servers: every valid 302 ends up in Kafka, whatever fails.

Counting rule: the load generator records the click id of every ``valid`` 302 it
received; the test reads the whole clicks topic back and compares.  A replay
after a failover may deliver a click twice (the producer cannot be idempotent
on this broker); such duplicates are counted, reported and must share a click id.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from contracts.clicks import ClickEvent, Verdict
from contracts.topics import CLICK_FALLBACK_STREAM, CLICKS_TOPIC
from devstack.kafka_admin import ensure_topic, read_topic
from devstack.processes import free_port
from devstack.redis_server import RedisServer
from devstack.stack import LocalStack
from devstack.tansu import TansuBroker
from tests.integration.edge_harness import (
    EdgeProcess,
    Keys,
    LoadResult,
    click_ids_in,
    click_load,
    mint,
    path_of,
)

pytestmark = pytest.mark.integration

Metrics = dict[str, float]
DELIVERED = 'cps_edge_clicks_delivered_total{path="%s"}'


def links(keys: Keys, n: int = 40) -> list[str]:
    return [path_of(mint(keys, promoter=f"p{i}", channel=f"ch{i % 4}", product_id=str(i)))
            for i in range(n)]


async def until(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def metrics_until(edge: EdgeProcess, what: str, cond: Callable[[Metrics], bool],
                        timeout: float = 30) -> Metrics:
    return await asyncio.to_thread(edge.wait_for, what, cond, timeout)


class BackgroundLoad:
    """Clicks from many buyers in the background until ``finish``."""

    def __init__(self, edge: EdgeProcess, keys: Keys, concurrency: int = 8) -> None:
        self._stop = asyncio.Event()
        self.result = LoadResult()
        self._task = asyncio.create_task(click_load(
            edge.port, links(keys), concurrency=concurrency, stop=self._stop, result=self.result))

    async def more(self, n: int, what: str) -> None:
        """Wait for ``n`` more answers."""
        target = len(self.result.responses) + n
        await until(lambda: len(self.result.responses) >= target, f"{n} clicks {what}")

    async def finish(self) -> LoadResult:
        self._stop.set()
        await self._task
        return self.result


def drained(m: Metrics) -> bool:
    return (m['cps_edge_delivery_mode{mode="kafka"}'] == 1
            and m["cps_edge_fallback_pending_records"] == 0
            and m["cps_edge_spool_pending_records"] == 0
            and m["cps_edge_buffer_events"] == 0)


async def assert_all_in_kafka(bootstrap: str, sent: list[str], *, exact: bool = True) -> int:
    """Every sent valid click id is in Kafka; returns the number of duplicates."""
    records = await read_topic(bootstrap, CLICKS_TOPIC, timeout=30)
    got = click_ids_in(records)
    counts = collections.Counter(got)
    missing = set(sent) - set(got)
    assert not missing, f"{len(missing)} of {len(sent)} valid clicks never reached Kafka"
    if exact:
        assert set(got) == set(sent), f"{len(set(got) - set(sent))} unexpected click ids in Kafka"
    dups = sum(c - 1 for c in counts.values())
    print(f"sent {len(sent)} valid clicks; Kafka holds {len(got)} valid events, "
          f"{len(counts)} distinct, {dups} duplicates (same click id)")
    return dups


async def test_thousands_of_clicks_arrive_exactly_once(stack: LocalStack, keys: Keys,
                                                       edge_factory: Callable[..., EdgeProcess],
                                                       ) -> None:
    edge = edge_factory(stack).start()
    result = await click_load(edge.port, links(keys), total=5000, concurrency=16)
    assert not result.errors
    assert result.by_status() == {302: 5000}
    sent = result.valid_click_ids
    assert len(sent) == len(set(sent)) == 5000
    await metrics_until(edge, "5000 clicks acknowledged by Kafka",
                        lambda m: m[DELIVERED % "kafka"] >= 5000)
    records = await read_topic(stack.broker.bootstrap, CLICKS_TOPIC, timeout=30)
    assert sorted(click_ids_in(records)) == sorted(sent)
    for record in records:
        event = ClickEvent.from_json(record.value)  # the edge speaks the contract
        assert event.verdict is Verdict.VALID
        assert record.key == event.buyer_key.encode()
        assert record.timestamp == event.ts
    m = edge.metrics()
    assert m['cps_edge_requests_total{verdict="valid"}'] == 5000
    assert m[DELIVERED % "redis"] == m[DELIVERED % "spool"] == 0


async def test_broker_then_redis_killed_mid_load_nothing_lost(
        durable_stack: LocalStack, keys: Keys,
        edge_factory: Callable[..., EdgeProcess]) -> None:
    s = durable_stack
    edge = edge_factory(s).start()
    load = BackgroundLoad(edge, keys)
    await load.more(800, "before the kill")

    s.broker.kill()
    await metrics_until(edge, "clicks parked in Redis", lambda m: m[DELIVERED % "redis"] > 0)
    parked = redis.Redis.from_url(s.redis.url).xlen(CLICK_FALLBACK_STREAM)
    assert parked > 0, "the fallback stream holds the clicks while Kafka is dead"
    await load.more(800, "with Kafka dead")

    s.redis.kill()
    await metrics_until(edge, "clicks spooled to disk", lambda m: m[DELIVERED % "spool"] > 0)
    await load.more(800, "with Kafka and Redis dead")

    s.redis.restart()
    s.broker.restart()
    await load.more(500, "after recovery")
    result = await load.finish()

    assert not result.errors, result.errors[:5]
    assert set(result.by_status()) == {302}, "every request got its redirect, outage or not"
    m = await metrics_until(edge, "fallback and spool drained", drained, timeout=60)
    print({k: v for k, v in m.items() if "delivered" in k or "replayed" in k})
    sent = result.valid_click_ids
    assert len(sent) == len(set(sent)) == len(result.responses)
    await assert_all_in_kafka(s.broker.bootstrap, sent)


async def test_kafka_unknown_at_startup_then_appears(tmp_path: Path, keys: Keys,
                                                     edge_factory: Callable[..., EdgeProcess],
                                                     ) -> None:
    kafka_port = free_port()
    with RedisServer(data_dir=tmp_path / "redis", log_dir=tmp_path).start() as rds:
        edge = edge_factory(kafka=f"127.0.0.1:{kafka_port}", redis=rds.url).start()
        status, body = edge.get("/readyz")
        assert status == 200
        assert orjson.loads(body)["delivery"] == "fallback"
        first = await click_load(edge.port, links(keys), total=1000)
        await metrics_until(edge, "clicks parked in Redis",
                            lambda m: m[DELIVERED % "redis"] == 1000)
        broker = TansuBroker(kafka_port, log_dir=tmp_path)
        with broker.start():
            await ensure_topic(broker.bootstrap, CLICKS_TOPIC, 4)
            second = await click_load(edge.port, links(keys), total=1000)
            await metrics_until(edge, "Redis drained into Kafka", drained, timeout=60)
            sent = first.valid_click_ids + second.valid_click_ids
            assert len(sent) == 2000
            await assert_all_in_kafka(broker.bootstrap, sent)


async def test_sigterm_mid_load_with_everything_down_loses_nothing(
        durable_stack: LocalStack, keys: Keys,
        edge_factory: Callable[..., EdgeProcess]) -> None:
    """Shutdown spools what it cannot deliver; the next edge process drains it."""
    s = durable_stack
    edge = edge_factory(s).start()
    load = BackgroundLoad(edge, keys)
    await load.more(500, "first")
    s.broker.kill()
    s.redis.kill()
    await load.more(500, "with everything down")
    code = await asyncio.to_thread(edge.stop)
    result = await load.finish()
    assert code in (0, -15), edge.log()  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "flushing" in edge.log()
    sent = result.valid_click_ids
    assert len(sent) >= 1000

    s.redis.restart()
    s.broker.restart()
    successor = EdgeProcess(edge.tmp, keys, kafka=s.broker.bootstrap, redis=s.redis.url).start()
    try:
        m = await metrics_until(successor, "the predecessor's spool drained", drained, timeout=60)
        assert m['cps_edge_clicks_replayed_total{source="spool"}'] > 0
        # Requests in flight at SIGTERM were answered by the server but may not
        # have reached the client; their clicks are in Kafka too.
        await assert_all_in_kafka(s.broker.bootstrap, sent, exact=False)
    finally:
        successor.stop()


async def test_sigterm_mid_load_flushes_to_kafka(stack: LocalStack, keys: Keys,
                                                 edge_factory: Callable[..., EdgeProcess]) -> None:
    edge = edge_factory(stack).start()
    load = BackgroundLoad(edge, keys, concurrency=16)
    await load.more(2000, "before SIGTERM")
    code = await asyncio.to_thread(edge.stop)
    result = await load.finish()
    assert code in (0, -15)
    sent = result.valid_click_ids
    records = await read_topic(stack.broker.bootstrap, CLICKS_TOPIC, timeout=30)
    got = click_ids_in(records)
    assert set(sent) <= set(got)
    assert len(got) == len(set(got)), "no failover happened, so no duplicates either"
    # At most the requests in flight at shutdown were answered but not read.
    assert len(got) - len(sent) <= 16


async def test_several_workers_share_metrics_and_deliver_every_click(
        stack: LocalStack, keys: Keys, edge_factory: Callable[..., EdgeProcess]) -> None:
    edge = edge_factory(stack, workers=2).start()
    await metrics_until(edge, "both workers up", lambda m: m["cps_edge_workers"] == 2)
    result = await click_load(edge.port, links(keys), total=3000, concurrency=16)
    assert not result.errors
    assert result.by_status() == {302: 3000}
    m = await metrics_until(edge, "3000 clicks delivered",
                            lambda m: m[DELIVERED % "kafka"] >= 3000)
    # Whichever worker answers a scrape, it reports the whole edge.
    for _ in range(10):
        again = edge.metrics()
        assert again['cps_edge_requests_total{verdict="valid"}'] == 3000
        assert again["cps_edge_workers"] == 2
        assert again[DELIVERED % "kafka"] == m[DELIVERED % "kafka"]
    await assert_all_in_kafka(stack.broker.bootstrap, result.valid_click_ids)
