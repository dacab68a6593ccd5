"""End to end: clicks through the real edge, orders on the topic, decisions out.

Real Tansu, Redis, the edge process and ``cps-attribution run``; the ledger on
SQLite with the Redis click store, and on PostgreSQL with the Bigtable click
store (emulator), so both databases and both click stores are covered; and on
PostgreSQL with Redis with the parts split between two processes
(``--role ingest`` and ``--role attribute``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import make_url

import ledger_db
from contracts.attribution import AttributionType, Evidence
from contracts.cookie import CookieSealer
from contracts.topics import ATTRIBUTIONS_TOPIC, CLICKS_TOPIC, ORDERS_TOPIC
from devstack.bigtable import BigtableEmulator, find_emulator_binary
from devstack.stack import LocalStack
from ledger_db import schema
from tests.integration.attribution_harness import (
    AttributionProcess,
    decisions_by_order,
    decisions_on_topic,
    order,
    order_message,
    produce,
    set_up_master_data,
)
from tests.integration.db import POSTGRES_URL, _postgres_admin
from tests.integration.edge_harness import (
    EdgeProcess,
    Keys,
    get_request,
    mint,
    path_of,
    raw_request,
)

pytestmark = pytest.mark.integration

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0"


@dataclass
class Click:
    click_id: str
    cookie: str  # the sealed cps_attr value, as the trade system copies it
    visitor_id: str


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    topics = {CLICKS_TOPIC: 4, ORDERS_TOPIC: 4, ATTRIBUTIONS_TOPIC: 4}
    with LocalStack(tmp_path / "stack", topics=topics) as local:
        yield local


ONE_PROCESS = ("all",)
TWO_PROCESSES = ("ingest", "attribute")


@pytest.fixture(params=["sqlite+redis", "postgresql+bigtable", "postgresql+redis+split"])
def combo(request: pytest.FixtureRequest, tmp_path: Path
          ) -> Iterator[tuple[str, str, str | None, tuple[str, ...]]]:
    """(database URL, click store, Bigtable emulator host, the processes' roles)."""
    database, store, *split = request.param.split("+")
    roles = TWO_PROCESSES if split else ONE_PROCESS
    if database == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}", store, None, roles
        return
    if store == "bigtable" and find_emulator_binary() is None:
        pytest.skip("the Bigtable emulator (cbtemulator) is not installed")
    admin = _postgres_admin()
    name = f"cps_e2e_{secrets.token_hex(5)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        if store == "redis":
            yield url, store, None, roles
            return
        with BigtableEmulator(log_dir=tmp_path).start() as emulator:
            yield url, store, emulator.emulator_host, roles
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


async def click_as_buyer(edge: EdgeProcess, link: str, buyer: int) -> Click:
    response = await raw_request(edge.port, get_request(path_of(link), [
        ("User-Agent", BROWSER), ("X-Forwarded-For", f"10.9.0.{buyer}")]))
    assert response is not None
    assert response.status == 302
    assert response.verdict == "valid"
    assert response.click_id is not None
    cookie = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
    return Click(response.click_id, cookie, "")


def visitor_of(keys: Keys, click: Click) -> Click:
    sealed = CookieSealer(keys.cookie).unseal(click.cookie)
    assert sealed is not None
    return Click(click.click_id, click.cookie, sealed.visitor_id)


async def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_clicks_and_orders_become_decisions(stack: LocalStack, keys: Keys,
                                                  combo: tuple[str, str, str | None,
                                                               tuple[str, ...]],
                                                  edge_factory: Callable[..., EdgeProcess],
                                                  tmp_path: Path) -> None:
    database_url, store, bigtable_host, roles = combo
    now = time.time_ns() // 1_000_000
    set_up_master_data(database_url, now)
    edge = edge_factory(stack).start()
    shop_link = mint(keys, promoter="p1", channel="live", shop_id="s1")
    sitewide_link = mint(keys, promoter="p2", channel="live")
    by_store = visitor_of(keys, await click_as_buyer(edge, shop_link, 1))
    by_token = visitor_of(keys, await click_as_buyer(edge, shop_link, 2))
    sitewide = visitor_of(keys, await click_as_buyer(edge, sitewide_link, 3))

    services = [AttributionProcess(tmp_path, database_url=database_url,
                                   kafka=stack.broker.bootstrap, redis=stack.redis.url,
                                   cookie_keys=keys.cookie, store=store,
                                   bigtable_host=bigtable_host, name=role, role=role).start()
                for role in roles]
    try:
        created = time.time_ns() // 1_000_000
        paid = created + 1000
        await produce(stack.broker.bootstrap, [
            order_message(order("o-click", created=created, buyer=by_store.visitor_id)),
            order_message(order("o-click", created=created, buyer=by_store.visitor_id,
                                status="paid", paid=paid)),
            # A duplicate of the older snapshot, after the newer one: changes nothing.
            order_message(order("o-click", created=created, buyer=by_store.visitor_id)),
            order_message(order("o-token", created=created, token=by_token.cookie)),
            order_message(order("o-sitewide", created=created, buyer=sitewide.visitor_id)),
            order_message(order("o-self", created=created, shop="s2", fanstype="fan",
                                channel="live")),
            order_message(order("o-none", created=created, buyer="nobody")),
            (b"o-bad", b"{not json"),
        ])
        counts = await decisions_on_topic(stack.broker.bootstrap, 5, timeout_s=90)
    finally:
        codes = [service.stop() for service in services]
    assert codes == [0] * len(services), "\n".join(service.log() for service in services)
    assert all(n == 1 for n in counts.values()), counts
    found = await decisions_by_order(stack.broker.bootstrap)
    assert found["o-click"].attribution_type is AttributionType.CPS
    assert found["o-click"].click_id == by_store.click_id
    assert found["o-click"].promoter_id == "p1"
    assert found["o-token"].evidence is Evidence.TOKEN
    assert found["o-token"].click_id == by_token.click_id
    assert found["o-sitewide"].click_id == sitewide.click_id
    assert found["o-sitewide"].promoter_id == "p2"
    assert found["o-self"].attribution_type is AttributionType.SELF_OPERATED
    assert found["o-none"].attribution_type is AttributionType.NONE
    assert found["o-none"].attempts == 3  # on arrival, after 1 s and after 2 s
    engine = ledger_db.connect(database_url)
    try:
        with engine.connect() as conn:
            status = conn.execute(sqlalchemy.select(schema.orders.c.status).where(
                schema.orders.c.order_id == "o-click")).scalar_one()
            dead = conn.execute(sqlalchemy.select(schema.dead_letters.c.raw)).scalars().all()
            stored = conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(
                schema.attribution_decisions)).scalar_one()
    finally:
        engine.dispose()
    assert status == "paid", "the newer snapshot won over the replayed older one"
    assert dead == [b"{not json"], "the bad message was set aside, raw, and the rest went on"
    assert stored == 5
