"""The attributor against real servers: SQLite and PostgreSQL, the Redis click store, Tansu.

Orders are put in the ledger and queued as order sync does; clicks are written to
a real Redis click store; the attributor decides; the outbox publisher puts the
decisions on the attributions topic.  Delayed attribution is driven by passing
``now_ms`` explicitly (the schedule is in seconds, the test does not wait).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import Engine

from attribution_worker import metrics, pending
from attribution_worker.attributor import Attributor
from attribution_worker.click_store.base import StoredClick
from attribution_worker.click_store.redis_store import RedisClickStore
from attribution_worker.rules import Policy
from contracts.attribution import AttributionDecision, AttributionType, Evidence
from contracts.cookie import CookieSealer
from contracts.ids import new_click_id
from contracts.keys import generate_ring
from contracts.topics import ATTRIBUTIONS_TOPIC
from devstack.kafka_admin import ensure_topic, read_topic
from devstack.redis_server import RedisServer
from devstack.stack import LocalStack
from ledger_db import master_data, schema
from ledger_db.outbox import KafkaOutboxProducer, OutboxPublisher, backlog, unpublished

pytestmark = pytest.mark.integration

T0 = 1_764_000_000_000  # order creation times around here
DAY = 86_400_000
SCHEDULE = (10, 60)  # seconds after first sight: 3 looks in all
COOKIES = generate_ring(("c1",))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("redis")
    with RedisServer(data_dir=folder, log_dir=folder).start() as server:
        yield server.url


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisClickStore]:
    click_store = RedisClickStore(redis_url, prefix=f"t{new_click_id(T0)[-6:]}:",
                                  retention_ms=400 * DAY, clock_ms=lambda: T0)
    yield click_store
    await click_store.close()


def master(engine: Engine) -> None:
    with engine.begin() as conn:
        master_data.add_shop(conn, "s1", now_ms=T0 - 100 * DAY)
        master_data.join_cps(conn, "s1", T0 - 100 * DAY)
        master_data.add_shop(conn, "s2", now_ms=T0 - 100 * DAY)  # never in CPS
        master_data.add_channel(conn, "live", now_ms=T0 - 100 * DAY)
        master_data.authorise_channel(conn, "live", "s1", T0 - 100 * DAY)
        master_data.authorise_channel(conn, "live", "s2", T0 - 100 * DAY)
        master_data.add_promoter(conn, "p1", now_ms=T0 - 100 * DAY)


def put_order(engine: Engine, order_id: str, *, shop: str = "s1", buyer: str | None = "b1",
              created: int = T0, seen: int = T0, fanstype: str | None = None,
              channel: str | None = None, token: str | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(schema.orders.insert().values(
            order_id=order_id, shop_id=shop, buyer_key=buyer, buyer_account=None,
            channel_id=channel, fanstype=fanstype, attribution_token=token, status="created",
            created_at=created, event_ts=created, updated_at=seen))
        pending.enqueue(conn, [(order_id, seen)])


def click(buyer: str = "b1", ts: int = T0 - 1000, shop: str | None = "s1") -> StoredClick:
    return StoredClick(click_id=new_click_id(ts), ts_ms=ts, buyer_key=buyer, promoter_id="p1",
                       channel_id="live", position_id=None, shop_id=shop, product_id=None,
                       sub_ids=(), link_exp=None)


def attributor(engine: Engine, store: RedisClickStore) -> Attributor:
    return Attributor(engine, store, CookieSealer(COOKIES), Policy(), schedule_s=SCHEDULE,
                      batch_max=100)


def decisions(engine: Engine) -> dict[str, AttributionDecision]:
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.select(schema.outbox.c.payload)).scalars().all()
    out = [AttributionDecision.from_json(p) for p in rows]
    assert len(out) == len({d.order_id for d in out}), "one outbox message per decision"
    return {d.order_id: d for d in out}


async def test_click_in_the_store_decides_cps_on_arrival(ledger_engine: Engine,
                                                          store: RedisClickStore) -> None:
    master(ledger_engine)
    found = click()
    await store.put_many([found, click(ts=T0 - 5000)])
    put_order(ledger_engine, "o1")
    assert await attributor(ledger_engine, store).run_once(now_ms=T0) == 1
    decision = decisions(ledger_engine)["o1"]
    assert decision.attribution_type is AttributionType.CPS
    assert decision.click_id == found.click_id  # the latest one
    assert decision.evidence is Evidence.CLICK
    assert decision.attempts == 1
    assert pending.depth(ledger_engine) == 0
    assert pending.decision_of(ledger_engine, "o1") is not None


async def test_no_click_is_retried_on_the_schedule_then_decided(ledger_engine: Engine,
                                                                store: RedisClickStore) -> None:
    master(ledger_engine)
    put_order(ledger_engine, "o-none")
    put_order(ledger_engine, "o-self", fanstype="fan", channel="live")
    put_order(ledger_engine, "o-not-cps", shop="s2", fanstype="fan", channel="live")
    worker = attributor(ledger_engine, store)
    assert await worker.run_once(now_ms=T0) == 3
    # A shop outside CPS has nothing to wait for: self-operated at once.
    assert list(decisions(ledger_engine)) == ["o-not-cps"]
    assert await worker.run_once(now_ms=T0 + 9_999) == 0, "not due before 10 s"
    assert await worker.run_once(now_ms=T0 + 10_000) == 2
    assert list(decisions(ledger_engine)) == ["o-not-cps"], "CPS goes first: still waiting"
    assert await worker.run_once(now_ms=T0 + 60_000) == 2  # the last look decides
    final = decisions(ledger_engine)
    assert final["o-none"].attribution_type is AttributionType.NONE
    assert final["o-self"].attribution_type is AttributionType.SELF_OPERATED
    assert final["o-self"].channel_id == "live"
    assert final["o-none"].attempts == 3
    assert final["o-not-cps"].attempts == 1
    assert pending.depth(ledger_engine) == 0


async def test_a_late_click_is_found_on_a_later_look_and_counted(ledger_engine: Engine,
                                                                 store: RedisClickStore) -> None:
    master(ledger_engine)
    put_order(ledger_engine, "o-late")
    worker = attributor(ledger_engine, store)
    late_before = metrics.late_clicks._value.get()
    await worker.run_once(now_ms=T0)
    late = click(ts=T0 - 50)  # made before the order, stored after the first look
    await store.put_many([late])
    await worker.run_once(now_ms=T0 + 10_000)
    decision = decisions(ledger_engine)["o-late"]
    assert decision.click_id == late.click_id
    assert decision.attempts == 2
    assert metrics.late_clicks._value.get() == late_before + 1


async def test_token_without_store_click_waits_and_the_sealed_click_wins(
        ledger_engine: Engine, store: RedisClickStore) -> None:
    master(ledger_engine)
    sealed = click(buyer="b-token", ts=T0 - 2000)
    token = CookieSealer(COOKIES).seal_fields(sealed.buyer_key, "p1", "live", sealed.click_id,
                                              sealed.ts_ms, sealed.ts_ms + 15 * DAY).decode()
    put_order(ledger_engine, "o-token", buyer=None, token=token)
    worker = attributor(ledger_engine, store)
    await worker.run_once(now_ms=T0)
    assert decisions(ledger_engine) == {}, "the token's click is not in the store yet"
    await store.put_many([sealed])
    await worker.run_once(now_ms=T0 + 10_000)
    decision = decisions(ledger_engine)["o-token"]
    assert decision.evidence is Evidence.TOKEN
    assert decision.click_id == sealed.click_id


async def test_explain_lists_every_candidate(ledger_engine: Engine,
                                             store: RedisClickStore) -> None:
    master(ledger_engine)
    await store.put_many([click(ts=T0 - 16 * DAY)])  # outside the window
    put_order(ledger_engine, "o-explain")
    explanation = await attributor(ledger_engine, store).explain("o-explain")
    assert explanation is not None
    rendered = explanation.render()
    for label in ("store click on shop", "store site-wide click", "attribution token",
                  "fanstype"):
        assert label in rendered
    assert await attributor(ledger_engine, store).explain("no-such-order") is None


async def test_concurrent_attributors_decide_every_order_once(
        ledger_engine: Engine, store: RedisClickStore, redis_url: str) -> None:
    master(ledger_engine)
    await store.put_many([click(buyer=f"b{n}") for n in range(0, 300, 2)])
    for n in range(300):
        put_order(ledger_engine, f"o{n}", buyer=f"b{n}")
    # Three workers as three processes would run them: each with its own click store client.
    stores = [RedisClickStore(redis_url,
                              prefix=store.prefix, retention_ms=400 * DAY, clock_ms=lambda: T0)
              for _ in range(3)]
    workers = [attributor(ledger_engine, own) for own in stores]

    async def drain(worker: Attributor, now: int) -> None:
        while await worker.run_once(now_ms=now):
            pass

    for now in (T0, T0 + 10_000, T0 + 60_000):
        await asyncio.gather(*(drain(w, now) for w in workers))
    for own in stores:
        await own.close()
    found = decisions(ledger_engine)
    assert len(found) == 300
    kinds = collections.Counter(d.attribution_type for d in found.values())
    assert kinds == {AttributionType.CPS: 150, AttributionType.NONE: 150}
    assert sum(w.decided for w in workers) == 300, "no order decided twice"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalStack]:
    with LocalStack(tmp_path / "stack", topics={ATTRIBUTIONS_TOPIC: 2}) as stack:
        yield stack


async def test_outbox_reaches_kafka_once_even_after_a_crash_before_marking(
        ledger_engine: Engine, store: RedisClickStore, broker: LocalStack) -> None:
    master(ledger_engine)
    await store.put_many([click(buyer=f"b{n}") for n in range(40)])
    for n in range(40):
        put_order(ledger_engine, f"o{n}", buyer=f"b{n}")
    await attributor(ledger_engine, store).run_once(now_ms=T0)
    await ensure_topic(broker.broker.bootstrap, ATTRIBUTIONS_TOPIC, 2)
    producer = KafkaOutboxProducer(broker.broker.bootstrap)
    await producer.start()
    try:
        # A publisher that produced 25 rows and died before marking them.
        await producer.send_all(unpublished(ledger_engine, 25))
        assert backlog(ledger_engine) == 40
        survivor = OutboxPublisher(ledger_engine, producer, batch_max=25,
                                   topics=[ATTRIBUTIONS_TOPIC])
        assert await survivor.recover() == 25, "found on the topic, marked, not sent again"
        while await survivor.publish_once():
            pass
    finally:
        await producer.stop()
    assert backlog(ledger_engine) == 0
    records = await read_topic(broker.broker.bootstrap, ATTRIBUTIONS_TOPIC, timeout=20)
    keys = collections.Counter(r.key for r in records)
    assert len(keys) == 40
    assert max(keys.values()) == 1, "each decision on the topic once"
    for record in records:
        decision = AttributionDecision.from_json(record.value)
        assert record.key == decision.order_id.encode()
