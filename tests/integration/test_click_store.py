"""One suite, two real backends: a private redis-server and the Bigtable emulator.

Every test runs against both (``store`` is parametrized); the few that look
under the hood (TTLs, the GC rule) are backend-specific.  Clicks are stamped
relative to the wall clock, because Redis expires keys by its own clock.
"""

from __future__ import annotations

import datetime
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attribution_worker.click_api import create_app
from attribution_worker.click_store import open_click_store
from attribution_worker.click_store.base import DAY_MS, ClickStore, ClickStoreError, StoredClick
from attribution_worker.click_store.bigtable_store import (
    BigtableClickStore,
    ensure_table,
    family_max_age,
)
from attribution_worker.click_store.redis_store import RedisClickStore
from devstack.bigtable import INSTALL_HINT, BigtableEmulator, find_emulator_binary
from devstack.processes import free_port
from devstack.redis_server import RedisServer

pytestmark = pytest.mark.integration

RETENTION_MS = 16 * DAY_MS
WINDOW_MS = 15 * DAY_MS
_ids = itertools.count(1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def click(buyer: str, ts: int, shop: str | None = "shop-1", *, seq: int | None = None,
          promoter: str = "p1") -> StoredClick:
    """A click whose id sorts like its ts (as the edge's do), unique per call."""
    n = next(_ids) if seq is None else seq
    return StoredClick(click_id=f"{ts:012x}{n:016x}", ts_ms=ts, buyer_key=buyer,
                       promoter_id=promoter, channel_id="live", position_id=None, shop_id=shop,
                       product_id="sku-9", sub_ids=("s1",), link_exp=ts // 1000 + 86_400)


def new_buyer() -> str:
    return f"buyer-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(data_dir=tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        yield server


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigtableEmulator]:
    if find_emulator_binary() is None:
        pytest.skip(f"Bigtable emulator not installed: {INSTALL_HINT}")
    with BigtableEmulator(log_dir=tmp_path_factory.mktemp("bigtable")) as server:
        yield server


@pytest.fixture(params=["redis", "bigtable"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ClickStore]:
    """A fresh, empty store: its own key prefix on Redis, its own table on Bigtable."""
    opened: ClickStore
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        opened = RedisClickStore(server.url, prefix=f"t{uuid.uuid4().hex[:8]}:",
                                 retention_ms=RETENTION_MS)
    else:
        emu: BigtableEmulator = request.getfixturevalue("emulator")
        opened = await open_click_store(
            "bigtable", bigtable_table=f"clicks-{uuid.uuid4().hex[:8]}",
            retention_ms=RETENTION_MS, emulator_host=emu.emulator_host, create_table=True)
    try:
        yield opened
    finally:
        await opened.close()


# -- the query: window edges, shop vs site-wide, latest wins ---------------------


async def test_window_edges_to_the_millisecond(store: ClickStore) -> None:
    buyer, t = new_buyer(), now_ms() - 1000
    edge_old, edge_new = click(buyer, t - WINDOW_MS), click(buyer, t)
    assert await store.put_many([edge_old, edge_new, click(buyer, t + 1)]) == 3
    assert await store.latest(buyer, "shop-1", t, WINDOW_MS) == edge_new
    # The oldest click exactly on the window's far edge still counts ...
    assert await store.latest(buyer, "shop-1", t - 1, WINDOW_MS - 1) == edge_old
    # ... one millisecond further it does not.
    assert await store.latest(buyer, "shop-1", t - 1, WINDOW_MS - 2) is None
    assert await store.latest(buyer, "shop-1", t - WINDOW_MS, 0) == edge_old


async def test_a_later_click_is_never_returned(store: ClickStore) -> None:
    buyer, t = new_buyer(), now_ms() - 1000
    before, after = click(buyer, t - 5), click(buyer, t + 1)
    await store.put_many([after, before])
    assert await store.latest(buyer, "shop-1", t, WINDOW_MS) == before
    assert await store.latest(buyer, "shop-1", t - 6, WINDOW_MS) is None
    assert await store.latest(buyer, "shop-1", t + 1, WINDOW_MS) == after


async def test_the_latest_click_wins_whatever_the_write_order(store: ClickStore) -> None:
    buyer, t = new_buyer(), now_ms() - 10_000
    clicks = [click(buyer, t - gap) for gap in (5000, 10, 3000, 0, 7000)]
    await store.put_many(clicks[:2])
    await store.put_many(clicks[2:])
    assert await store.latest(buyer, "shop-1", t, WINDOW_MS) == clicks[3]
    assert await store.latest(buyer, "shop-1", t - 1, WINDOW_MS) == clicks[1]
    assert await store.latest(buyer, "shop-1", t - 11, WINDOW_MS) == clicks[2]


async def test_same_millisecond_the_greater_click_id_wins(store: ClickStore) -> None:
    buyer, t = new_buyer(), now_ms() - 1000
    low = click(buyer, t, seq=(1 << 40) + next(_ids))
    high = click(buyer, t, seq=(2 << 40) + next(_ids))
    await store.put_many([high, low])
    assert await store.latest(buyer, "shop-1", t, 0) == high


async def test_shop_and_sitewide_clicks_stay_apart(store: ClickStore) -> None:
    buyer, t = new_buyer(), now_ms() - 1000
    shop_click, sitewide = click(buyer, t - 100, "shop-1"), click(buyer, t - 50, None)
    other_shop = click(buyer, t - 10, "shop-2")
    await store.put_many([shop_click, sitewide, other_shop])
    assert await store.latest(buyer, "shop-1", t, WINDOW_MS) == shop_click
    assert await store.latest(buyer, "shop-2", t, WINDOW_MS) == other_shop
    assert await store.latest_sitewide(buyer, t, WINDOW_MS) == sitewide
    assert await store.latest(buyer, "shop-3", t, WINDOW_MS) is None
    assert await store.latest(new_buyer(), "shop-1", t, WINDOW_MS) is None


async def test_opaque_buyer_keys_do_not_bleed_into_each_other(store: ClickStore) -> None:
    t, tag = now_ms() - 1000, uuid.uuid4().hex[:6]
    # "x#shop-1" as a buyer, site-wide, must not look like buyer "x" on shop-1, etc.
    buyers = [f"{tag}", f"{tag}#shop-1", f"{tag}#*", f"{tag}%23shop-1", f"{tag}%", f"{tag} ü*",
              f"{tag}\t1\t", f"{tag}\n", f"{tag}%09"]
    clicks = {b: click(b, t - i, "shop-1" if i % 2 == 0 else None)
              for i, b in enumerate(buyers)}
    await store.put_many(list(clicks.values()))
    for buyer, c in clicks.items():
        if c.shop_id is None:
            assert await store.latest_sitewide(buyer, t, WINDOW_MS) == c
            assert await store.latest(buyer, "shop-1", t, WINDOW_MS) is None
        else:
            assert await store.latest(buyer, "shop-1", t, WINDOW_MS) == c
            assert await store.latest_sitewide(buyer, t, WINDOW_MS) is None


# -- idempotency and lookups by id ------------------------------------------------


async def test_replays_change_nothing(store: ClickStore) -> None:
    buyer, t = new_buyer(), now_ms() - 1000
    batch = [click(buyer, t - i * 10) for i in range(5)]
    assert await store.put_many(batch) == 5
    again = await store.put_many(batch)  # the same batch twice
    overlap = await store.put_many([batch[0], click(buyer, t - 1000)])  # one click in two batches
    if isinstance(store, RedisClickStore):
        assert (again, overlap) == (0, 1)  # Redis knows which were new
    else:
        assert (again, overlap) == (5, 2)  # Bigtable writes blindly, idempotently
    assert await store.latest(buyer, "shop-1", t, WINDOW_MS) == batch[0]
    for c in batch:
        assert await store.get(c.click_id) == c
    if isinstance(store, RedisClickStore):
        index = store.index_key(buyer, "shop-1")
        assert await store.redis.zcard(index) == 6


async def test_get_by_id(store: ClickStore) -> None:
    c = click(new_buyer(), now_ms() - 1000, None)
    await store.put_many([c])
    assert await store.get(c.click_id) == c
    assert await store.get(f"{c.ts_ms:012x}{'f' * 16}") is None
    assert await store.get("not-a-click-id") is None


async def test_many_buyers(store: ClickStore) -> None:
    t, tag = now_ms() - 60_000, uuid.uuid4().hex[:6]
    clicks = [click(f"{tag}-{i % 300}", t - (i * 7919) % 50_000, f"shop-{i % 4}")
              for i in range(3000)]
    assert await store.put_many(clicks) == 3000
    expected: dict[tuple[str, str | None], StoredClick] = {}
    for c in clicks:
        best = expected.get((c.buyer_key, c.shop_id))
        if best is None or (c.ts_ms, c.click_id) > (best.ts_ms, best.click_id):
            expected[(c.buyer_key, c.shop_id)] = c
    for (buyer, shop), c in list(expected.items())[::7]:
        assert shop is not None
        assert await store.latest(buyer, shop, t, WINDOW_MS) == c


_BUYERS = st.sampled_from(["b", "b#", "b#shop-1", "b%", "%23", "*", "b*#*"])
_SHOPS = st.sampled_from(["shop-1", "shop-2", None])
_CLICKS = st.lists(st.tuples(_BUYERS, _SHOPS, st.integers(0, 40), st.integers(1, 3)),
                   max_size=25)
_QUERIES = st.lists(st.tuples(_BUYERS, _SHOPS, st.integers(0, 45), st.integers(0, 45)),
                    min_size=1, max_size=8)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_CLICKS, queries=_QUERIES)
async def test_latest_matches_a_reference_model(store: ClickStore,
                                                spec: list[tuple[str, str | None, int, int]],
                                                queries: list[tuple[str, str | None, int, int]],
                                                ) -> None:
    # Each example gets its own buyers (a fresh tag), so one store serves them all.
    tag, base = uuid.uuid4().hex[:8], now_ms() - 100_000
    # Ids unique across examples (as on the edge); seq orders clicks of one millisecond.
    clicks = [click(tag + b, base + offset, shop, seq=(seq << 40) + next(_ids))
              for b, shop, offset, seq in spec]
    await store.put_many(clicks)
    for b, shop, at, window in queries:
        fits = [c for c in clicks if c.buyer_key == tag + b and c.shop_id == shop
                and base + at - window <= c.ts_ms <= base + at]
        want = max(fits, key=lambda c: (c.ts_ms, c.click_id), default=None)
        if shop is None:
            got = await store.latest_sitewide(tag + b, base + at, window)
        else:
            got = await store.latest(tag + b, shop, base + at, window)
        assert got == want


# -- expiry -----------------------------------------------------------------------


async def test_a_click_past_retention_is_neither_written_nor_found(store: ClickStore) -> None:
    buyer, t = new_buyer(), now_ms()
    old = click(buyer, t - RETENTION_MS - 1000)
    assert await store.put_many([old]) == 0
    assert await store.get(old.click_id) is None
    assert await store.latest(buyer, "shop-1", old.ts_ms, WINDOW_MS) is None


async def test_redis_keys_expire_with_the_click(redis_server: RedisServer) -> None:
    store = RedisClickStore(redis_server.url, prefix="ttl:", retention_ms=RETENTION_MS)
    try:
        buyer, t = new_buyer(), now_ms()
        older, newer = click(buyer, t - 5 * DAY_MS), click(buyer, t - DAY_MS)
        await store.put_many([newer])
        await store.put_many([older])  # an older click must not shorten the index's life
        assert await store.redis.pexpiretime(store.bucket_key(older.click_id)) == \
            older.ts_ms + RETENTION_MS
        assert await store.redis.pexpiretime(store.bucket_key(newer.click_id)) == \
            newer.ts_ms + RETENTION_MS
        assert await store.redis.pexpiretime(store.index_key(buyer, "shop-1")) == \
            newer.ts_ms + RETENTION_MS
    finally:
        await store.close()


async def test_redis_bucket_outliving_a_click_does_not_return_it(
        redis_server: RedisServer) -> None:
    clock = [now_ms()]
    store = RedisClickStore(redis_server.url, prefix=f"bkt{uuid.uuid4().hex[:6]}:",
                            retention_ms=10 * DAY_MS, clock_ms=lambda: clock[0])
    try:
        buyer, second = new_buyer(), clock[0] // 1000 * 1000
        early, late = click(buyer, second + 10, None), click(buyer, second + 900, None)
        await store.put_many([early, late])
        assert store.bucket_key(early.click_id) == store.bucket_key(late.click_id)
        assert await store.redis.pexpiretime(store.bucket_key(early.click_id)) == \
            late.ts_ms + 10 * DAY_MS
        clock[0] = early.ts_ms + 10 * DAY_MS + 1  # early is past retention, late is not
        assert await store.get(early.click_id) is None
        assert await store.get(late.click_id) == late
        assert await store.latest_sitewide(buyer, early.ts_ms, 0) is None
    finally:
        await store.close()


async def test_redis_index_drops_members_past_retention(redis_server: RedisServer) -> None:
    clock = [now_ms()]
    store = RedisClickStore(redis_server.url, prefix=f"trim{uuid.uuid4().hex[:6]}:",
                            retention_ms=10 * DAY_MS, clock_ms=lambda: clock[0])
    try:
        buyer, t = new_buyer(), clock[0]
        first = click(buyer, t - 9 * DAY_MS)
        await store.put_many([first])
        clock[0] += 2 * DAY_MS  # the first click is now past retention
        await store.put_many([click(buyer, t)])
        assert await store.redis.zrange(store.index_key(buyer, "shop-1"), 0, -1) == \
            [f"{t:012x}".encode() + b"%016x" % (next(_ids) - 1)]
    finally:
        await store.close()


async def test_bigtable_family_has_the_retention_gc_rule(emulator: BigtableEmulator) -> None:
    table_id = f"gc-{uuid.uuid4().hex[:8]}"
    store = await BigtableClickStore.open("cps", "cps", table_id, retention_ms=RETENTION_MS,
                                          emulator_host=emulator.emulator_host, create_table=True)
    await store.close()
    max_age = family_max_age("cps", "cps", table_id, emulator_host=emulator.emulator_host)
    assert max_age == datetime.timedelta(milliseconds=RETENTION_MS)
    # A changed retention is applied to the existing table.
    ensure_table("cps", "cps", table_id, retention_ms=RETENTION_MS + DAY_MS,
                 emulator_host=emulator.emulator_host)
    assert family_max_age("cps", "cps", table_id, emulator_host=emulator.emulator_host) == \
        datetime.timedelta(milliseconds=RETENTION_MS + DAY_MS)


async def test_bigtable_reads_skip_cells_past_retention(emulator: BigtableEmulator) -> None:
    clock = [now_ms()]
    store = await BigtableClickStore.open(
        "cps", "cps", f"exp-{uuid.uuid4().hex[:8]}", retention_ms=10 * DAY_MS,
        emulator_host=emulator.emulator_host, create_table=True, clock_ms=lambda: clock[0])
    try:
        buyer, t = new_buyer(), clock[0]
        old, recent = click(buyer, t - 9 * DAY_MS), click(buyer, t - 8 * DAY_MS, None)
        await store.put_many([old, recent])
        clock[0] += int(1.5 * DAY_MS)  # old is past retention now, recent is not; GC has not run
        assert await store.get(old.click_id) is None
        assert await store.latest(buyer, "shop-1", t, WINDOW_MS) is None
        assert await store.latest_sitewide(buyer, t, WINDOW_MS) == recent
    finally:
        await store.close()


# -- bad arguments, unreachable servers ---------------------------------------------


async def test_bad_query_arguments_name_the_argument(store: ClickStore) -> None:
    with pytest.raises(ValueError, match="shop_id"):
        await store.latest("b", "shop#1", now_ms(), WINDOW_MS)
    with pytest.raises(ValueError, match="at_ms"):
        await store.latest("b", "shop-1", -1, WINDOW_MS)
    with pytest.raises(ValueError, match="window_ms"):
        await store.latest_sitewide("b", now_ms(), -5)
    with pytest.raises(ValueError, match="buyer_key"):
        await store.latest_sitewide("", now_ms(), WINDOW_MS)


async def test_an_unreachable_redis_raises_click_store_error() -> None:
    store = RedisClickStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    try:
        with pytest.raises(ClickStoreError, match="redis"):
            await store.put_many([click(new_buyer(), now_ms())])
        with pytest.raises(ClickStoreError):
            await store.get(click("b", now_ms()).click_id)
    finally:
        await store.close()


async def test_an_unreachable_bigtable_raises_click_store_error(tmp_path: Path) -> None:
    if find_emulator_binary() is None:
        pytest.skip(f"Bigtable emulator not installed: {INSTALL_HINT}")
    store = await BigtableClickStore.open("cps", "cps", "clicks", timeout_s=1.0,
                                          emulator_host=f"127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ClickStoreError, match="bigtable"):
            await store.put_many([replace(click(new_buyer(), now_ms()), shop_id=None)])
    finally:
        await store.close()


# -- the read-only HTTP API, against the real Redis backend ---------------------------


@pytest.fixture
async def api(redis_server: RedisServer) -> AsyncIterator[tuple[httpx.AsyncClient, ClickStore]]:
    store = RedisClickStore(redis_server.url, prefix=f"api{uuid.uuid4().hex[:6]}:",
                            retention_ms=RETENTION_MS)
    transport = httpx.ASGITransport(app=create_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client, store
    await store.close()


async def test_api_latest_and_by_id(api: tuple[httpx.AsyncClient, ClickStore]) -> None:
    client, store = api
    buyer, t = "buyer#1 ü", now_ms() - 5000
    shop_click, sitewide = click(buyer, t - 10, "shop-1"), click(buyer, t - 5, None)
    await store.put_many([shop_click, sitewide, click(buyer, t + 1, "shop-1")])

    answer = await client.get("/clicks/latest", params={"buyer": buyer, "shop": "shop-1",
                                                        "at": t})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == shop_click.to_dict()
    answer = await client.get("/clicks/latest", params={"buyer": buyer, "at": t})
    assert answer.json()["click_id"] == sitewide.click_id
    answer = await client.get("/clicks/latest", params={"buyer": buyer, "shop": "shop-1",
                                                        "at": t, "window_ms": 9})
    assert answer.status_code == 404
    assert "shop-1" in answer.json()["error"]

    answer = await client.get(f"/clicks/{sitewide.click_id}")
    assert answer.status_code == 200
    assert StoredClick(**{**answer.json(), "sub_ids": tuple(answer.json()["sub_ids"])}) == sitewide
    assert (await client.get(f"/clicks/{'0' * 28}")).status_code == 404


@pytest.mark.parametrize(("path", "params", "reason"), [
    ("/clicks/latest", {"at": "1"}, "buyer"),
    ("/clicks/latest", {"buyer": "b"}, "at"),
    ("/clicks/latest", {"buyer": "b", "at": "-1"}, "at"),
    ("/clicks/latest", {"buyer": "b", "at": "1e3"}, "at"),
    ("/clicks/latest", {"buyer": "b", "at": "1", "window_ms": "x"}, "window_ms"),
    ("/clicks/latest", {"buyer": "b", "at": "1", "window_ms": str(RETENTION_MS + 1)},
     "window_ms"),
    ("/clicks/latest", {"buyer": "b", "at": "1", "shop": "a#b"}, "shop"),
    ("/clicks/latest", {"buyer": "b", "at": "1", "buyer_key": "b"}, "buyer_key"),
    ("/clicks/latest", [("buyer", "b"), ("at", "1"), ("at", "2")], "more than once"),
    ("/clicks/NOT-AN-ID", {}, "28 lowercase hex"),
])
async def test_api_bad_parameters_get_400_with_the_reason(
        api: tuple[httpx.AsyncClient, ClickStore], path: str,
        params: Any, reason: str) -> None:
    client, _ = api
    answer = await client.get(path, params=params)
    assert answer.status_code == 400
    assert reason in answer.json()["error"]


async def test_api_is_read_only_and_reports_a_dead_store() -> None:
    store = RedisClickStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    transport = httpx.ASGITransport(app=create_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        assert (await client.post("/clicks/latest")).status_code == 405
        answer = await client.get("/clicks/latest", params={"buyer": "b", "at": "1"})
        assert answer.status_code == 503
        assert "unavailable" in answer.json()["error"]
    await store.close()
