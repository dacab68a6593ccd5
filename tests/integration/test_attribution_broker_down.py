"""A click made while the broker is down is attributable before the broker comes back.

The real edge runs with no Kafka at all: its clicks go to the Redis fallback
stream.  The click persister reads that stream (with its own cursor, leaving
the entries for the edge's drain) and writes the click store; an order by the
same buyer is stored and the attributor decides it CPS, with that click, while
there is still no broker.  Real redis-server, edge process, SQLite ledger.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from attribution_worker import pending
from attribution_worker.attributor import Attributor
from attribution_worker.click_store.redis_store import RedisClickStore
from attribution_worker.persister import ClickPersister, PersisterConfig
from attribution_worker.rules import Policy
from contracts.attribution import AttributionType, Evidence
from contracts.cookie import CookieSealer
from contracts.topics import CLICK_FALLBACK_STREAM
from devstack.processes import free_port
from devstack.redis_server import RedisServer
from ledger_db import connect, schema
from tests.integration.attribution_harness import set_up_master_data
from tests.integration.edge_harness import (
    EdgeProcess,
    Keys,
    get_request,
    mint,
    path_of,
    raw_request,
)

pytestmark = pytest.mark.integration

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


async def test_click_parked_in_the_fallback_is_attributed_without_a_broker(
        tmp_path: Path, keys: Keys, edge_factory: Callable[..., EdgeProcess]) -> None:
    no_broker = f"127.0.0.1:{free_port()}"
    with RedisServer(data_dir=tmp_path / "redis", log_dir=tmp_path).start() as server:
        edge = edge_factory(kafka=no_broker, redis=server.url).start()
        response = await raw_request(edge.port, get_request(
            path_of(mint(keys, promoter="p1", channel="live", shop_id="s1")),
            [("User-Agent", BROWSER), ("X-Forwarded-For", "10.7.0.1")]))
        assert response is not None
        assert response.verdict == "valid"
        cookie = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
        sealed = CookieSealer(keys.cookie).unseal(cookie)
        assert sealed is not None
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 20
        while not client.xlen(CLICK_FALLBACK_STREAM):
            assert time.monotonic() < deadline, "the edge parked no click in Redis"
            await asyncio.sleep(0.1)

        store = RedisClickStore(server.url, prefix="down:")
        persister = ClickPersister(store, PersisterConfig(
            bootstrap=no_broker, fallback_redis_url=server.url, poll_timeout_ms=200,
            fallback_block_ms=200, retry_initial_s=0.05))
        await persister.start()
        try:
            deadline = time.monotonic() + 20
            while await store.get(response.click_id or "") is None:
                assert time.monotonic() < deadline, "the persister did not store the click"
                await asyncio.sleep(0.1)
        finally:
            await persister.stop(timeout_s=5)

        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        now = time.time_ns() // 1_000_000
        set_up_master_data(url, now)
        engine = connect(url)
        with engine.begin() as conn:
            conn.execute(schema.orders.insert().values(
                order_id="o-down", shop_id="s1", buyer_key=sealed.visitor_id, status="created",
                created_at=now + 1000, event_ts=now + 1000, updated_at=now + 1000))
            pending.enqueue(conn, [("o-down", now + 1000)])
        attributor = Attributor(engine, store, CookieSealer(keys.cookie), Policy(),
                                schedule_s=(10,))
        assert await attributor.run_once(now_ms=now + 1000) == 1
        decision = pending.decision_of(engine, "o-down")
        engine.dispose()
        await store.close()
        assert decision is not None
        assert decision["attribution_type"] == AttributionType.CPS.value
        assert decision["evidence"] == Evidence.CLICK.value
        assert decision["click_id"] == response.click_id
        # The edge still owns the entries: its drain group will move them into Kafka.
        assert client.xlen(CLICK_FALLBACK_STREAM) >= 1
        client.close()
