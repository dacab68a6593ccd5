"""The Redis click store's batched lookups answer exactly what the single ones answer."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from attribution_worker.click_store.base import StoredClick
from attribution_worker.click_store.redis_store import RedisClickStore
from contracts.ids import new_click_id
from devstack.redis_server import RedisServer

pytestmark = pytest.mark.integration

T0 = time.time_ns() // 1_000_000  # the store expires keys against the real clock
WINDOW = 15 * 86_400_000


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("redis")
    with RedisServer(data_dir=folder, log_dir=folder).start() as server:
        yield server.url


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisClickStore]:
    click_store = RedisClickStore(redis_url, prefix=f"batch{random.randrange(10**9)}:",
                                  clock_ms=lambda: T0)
    yield click_store
    await click_store.close()


async def test_batched_lookups_equal_single_ones(store: RedisClickStore) -> None:
    rng = random.Random(11)
    clicks = []
    for n in range(400):
        ts = T0 - rng.randrange(0, 20 * 86_400_000)
        clicks.append(StoredClick(
            click_id=new_click_id(ts), ts_ms=ts, buyer_key=f"b{n % 40}", promoter_id="p1",
            channel_id="live", position_id=None, shop_id=rng.choice(["s1", "s2", None]),
            product_id=None, sub_ids=(), link_exp=None))
    await store.put_many(clicks)
    queries = [(f"b{rng.randrange(45)}", rng.choice(["s1", "s2", "s3", None]),
                T0 - rng.randrange(0, 10 * 86_400_000), WINDOW) for _ in range(300)]
    one_by_one = [await (store.latest(b, s, at, w) if s is not None else
                         store.latest_sitewide(b, at, w)) for b, s, at, w in queries]
    assert await store.latest_many(queries) == one_by_one
    assert any(found is not None for found in one_by_one)
    assert any(found is None for found in one_by_one)
    ids = [c.click_id for c in rng.sample(clicks, 50)] + [new_click_id(T0), "not-an-id"]
    assert await store.get_many(ids) == [await store.get(i) for i in ids]
    assert await store.latest_many([]) == []
    assert await store.get_many([]) == []
    with pytest.raises(ValueError, match="buyer_key"):
        await store.latest_many([("", None, T0, WINDOW)])
